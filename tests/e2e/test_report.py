"""The study report from a small real store (toy model scored and evaluated in memory)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.reporting.html import ReportError, _ablation, write_report
from depthprune.scoring.scores import Scores
from depthprune.study.rundir import RunDir
from depthprune.study.store import open_store

STORE_NAME = RunDir.STORE

SECTIONS = ("Findings", "Accuracy vs budget", "Answer NLL vs budget", "Best method per budget",
            "Per-layer score profiles", "Removed layers per method and budget", "Ranking stability", "All results")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.helpers.study_fixture import build_study
    methods = (("domain:math", "domain", {"domain": "math"}), ("block-influence", "block-influence", {}),
               ("spaced", "spaced", {"base": "mixed"}))
    return build_study(tmp_path_factory.mktemp("study") / "run", budgets=(2, 4), n_calib=4, n_eval=4,
                       methods=methods, max_new_tokens=4)


def _copy(run_dir, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("report*"))
    return dest


def test_report_is_self_contained_html_and_markdown(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    path = write_report(run, resamples=5, progress=False)
    assert path == run / "report.html"
    page = path.read_text()
    for section in SECTIONS:
        assert f">{section}</h2>" in page, section
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5  # accuracy, NLL, score profiles, removed-layer grid, stability
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "Regime rule." in page and "domain:math" in page
    md = path.with_suffix(".md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in md
    assert "| budget (layers, %) | regime | p (Holm) | best ranking [95% CI] |" in md and "| 2 (12%) |" in md and "| 4 (25%) |" in md
    assert "ranking-sensitive regime" in md  # the stability claim is checked and stated
    assert "## Accuracy retained" in md and "math kept [95% CI]" in md  # every cell against the unpruned model
    verdicts = json.loads((run / "regimes.json").read_text())
    assert [(x["domain"], x["healed"]) for x in verdicts["series"]] == [("general", False), ("math", False)]
    for series in verdicts["series"]:
        assert [b["budget"] for b in series["budgets"]] == [2, 4]
        for b in series["budgets"]:
            assert b["label"] in ("ranking-sensitive", "converged", "structure-dominated") and 0 <= b["p"] <= 1
            assert isinstance(b["leader"], str) and isinstance(b["spread"], float) and len(b["spread_ci"]) == 2
    assert verdicts["alpha"] == 0.05 and "Holm" in verdicts["rule"]


def test_cli_report_with_out(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html"), "--resamples", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").is_file() and (tmp_path / "r.md").is_file() and (tmp_path / "regimes.json").is_file()
    assert not (run / "report.html").exists() and not (run / "regimes.json").exists()
    assert ">Ranking stability</h2>" not in (tmp_path / "r.html").read_text()  # skipped with 0 resamples


def test_report_without_scores_says_what_it_skipped(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    (run / "scores.json").unlink()
    md = write_report(run, progress=False).with_suffix(".md").read_text()
    assert "No scores.json in the run directory" in md
    assert "## Per-layer score profiles" not in md and "## Best method per budget" in md


def test_ablation_ground_truth_is_shown_when_present(run_dir, tmp_path, monkeypatch):
    real = Scores.load
    scores = real(run_dir / "scores.json")
    n, layers = len(scores.sample_ids), scores.num_layers
    abl = torch.arange(n * layers, dtype=torch.float64).reshape(n, layers) / 100
    base = torch.full((n,), 0.5, dtype=torch.float64)
    math_idx = [i for i, d in enumerate(scores.sample_domains) if d == "math"]

    def with_ablation(path):
        s = real(path)
        s.ablation_nll, s.base_nll = abl, base
        return s

    scores.ablation_nll, scores.base_nll = abl, base
    means = _ablation(scores, [])
    assert means["math"] == pytest.approx((abl[math_idx] - 0.5).mean(0).tolist())
    monkeypatch.setattr(Scores, "load", staticmethod(with_ablation))
    md = write_report(_copy(run_dir, tmp_path), resamples=0, progress=False).with_suffix(".md").read_text()
    assert "Kendall tau between the all-token cosine and the ablation ground truth" in md


@pytest.mark.parametrize("case", ["missing", "no_store", "empty", "not_sqlite"])
def test_cli_errors_are_one_line_exit_2(tmp_path, case):
    target = tmp_path / "run"
    if case != "missing":
        target.mkdir()
    if case == "empty":
        open_store(target / STORE_NAME).close()
    if case == "not_sqlite":
        (target / STORE_NAME).write_text("not a database at all " * 100)
    res = CliRunner().invoke(app, ["report", str(target)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in res.output
    assert str(target.name) in lines[0]
    if case == "missing":
        assert not target.exists()
    with pytest.raises(ReportError):
        write_report(target)


def test_error_store_is_not_created_by_report(tmp_path):
    with pytest.raises(ReportError, match="not a run directory"):
        write_report(tmp_path)
    assert not (tmp_path / STORE_NAME).exists()
    assert sqlite3.sqlite_version  # the stdlib driver the store uses
