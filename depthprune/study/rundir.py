"""The run directory of a study (`depthprune sweep --out RUN_DIR`, `depthprune demo --out`): the
one place that knows its file names.

    RUN_DIR/
      study.yaml            the validated study as run (paths relative to RUN_DIR where inside it)
      scores.json           the unpruned model's scores (+ scores.safetensors), reused on resume
      results.sqlite        the results store (depthprune.study.store), one transaction per cell
      logs/heal-*.jsonl     the training log of every healed plan
      report.html           `depthprune report` (+ report.md, regimes.json)
      data/, headline/      the demo's data and its headline sweep (an ordinary run directory)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any


class RunDir:
    """Paths inside one run directory; ``path`` may be relative (to the working directory)."""

    STORE = "results.sqlite"
    SCORES = "scores.json"
    STUDY = "study.yaml"
    LOGS = "logs"
    REPORT = "report.html"
    REGIMES = "regimes.json"
    DATA = "data"
    HEADLINE = "headline"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def store(self) -> Path:
        """The SQLite results store."""
        return self.path / self.STORE

    @property
    def scores(self) -> Path:
        """The scores file (its tensors are in ``scores.safetensors`` beside it)."""
        return self.path / self.SCORES

    @property
    def study(self) -> Path:
        """The study as run."""
        return self.path / self.STUDY

    @property
    def report(self) -> Path:
        """The default HTML report (the Markdown goes beside it as ``report.md``)."""
        return self.path / self.REPORT

    @property
    def regimes(self) -> Path:
        """The machine-readable regime verdicts written with the report."""
        return self.path / self.REGIMES

    @property
    def data(self) -> Path:
        """The demo's data directory."""
        return self.path / self.DATA

    @property
    def headline(self) -> "RunDir":
        """The demo's headline sweep, itself a run directory."""
        return RunDir(self.path / self.HEADLINE)

    def heal_log(self, removed: list[int], recipe: dict[str, Any]) -> Path:
        """Training log of one healed plan: its removed layers and a short hash of the recipe."""
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
        return self.path / self.LOGS / f"heal-{'-'.join(map(str, removed)) or 'none'}-{digest}.jsonl"

    def written_by_depthprune(self) -> list[Path]:
        """Every file and folder depthprune writes here (that exist), for ``demo --overwrite``."""
        store = [self.store.with_name(self.STORE + s) for s in ("", "-wal", "-shm")]
        names = [*store, self.scores, self.scores.with_suffix(".safetensors"), self.study, self.report,
                 self.report.with_suffix(".md"), self.regimes, self.path / self.LOGS, self.data,
                 self.path / self.HEADLINE]
        return [p for p in names if p.exists() or p.is_symlink()]

    def clear(self) -> None:
        """Delete what :meth:`written_by_depthprune` lists; anything else in the folder stays."""
        for p in self.written_by_depthprune():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
