"""`depthprune demo`: a complete study on the bundled toy Qwen3-VL, then its report.

Every registered ranking method (domain-aware per domain, on all tokens and on the last
token, mixed at three weightings, random at two seeds, ...), budgets from 1 of 16 layers
(6%) to 8 (50%), healing at two budgets when the `heal` extra (trl, peft) is installed, NLL and
generation accuracy on both domains. It is an ordinary sweep (:func:`depthprune.study.sweep.run_study`)
in ``--out``, so running it again resumes. The headline compares math-aware with
general-aware removal at 25% per domain with exact McNemar tests on per-sample correctness;
the full demo measures it on the whole eval split (600 per domain) in a second sweep in
``OUT/headline`` that reuses the grid's scores.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthprune.study.rundir import RunDir
from depthprune.study.store import treatment
from depthprune.study.sweep import SweepResult

FULL_BUDGETS = [0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375, 0.5]
QUICK_BUDGETS = [0.125, 0.25, 0.5]
#: --quick scores (and ablates) the first 64 calibration records per domain, not all 128: the
#: ablation pass (one forward per layer over the calibration split) is a third of its time.
QUICK_CALIB_PER_DOMAIN = 64
HEADLINE_BUDGET = 0.25
#: The full demo re-evaluates the headline pairs (math- vs general-aware at 25%, per signal) on
#: every eval record (600 per domain): the grid's 100 per domain cannot make a 5-point
#: difference significant. An ordinary sweep in OUT/headline (RunDir.headline), reusing the
#: grid's scores.
WEIGHTS = [{"math": 0.5, "general": 0.5}, {"math": 0.75, "general": 0.25}, {"math": 0.25, "general": 0.75}]


def demo_methods(quick: bool) -> list[Any]:
    """Every registered method with the options the toy needs (domains, weights, seeds)."""
    from depthprune.ranking.methods import METHODS
    entries: list[Any] = []
    for name in METHODS:
        if name in ("domain", "ablation", "contrast", "sleb"):
            entries.append({"method": name, "domain": ["math", "general"]})
            if name == "domain" and not quick:
                entries.append({"method": name, "domain": ["math", "general"], "token_group": "last"})
        elif name == "mixed":
            entries.append({"method": name, "weights": WEIGHTS[:1] if quick else WEIGHTS})
        elif name == "random":
            entries.append({"method": name, "seed": [0] if quick else [0, 1]})
        else:
            entries.append(name)
    return entries


def demo_study(data: dict[str, Path], quick: bool, batch_size: int = 32) -> dict[str, Any]:
    """The demo's study as a dict (the same keys as a study YAML file). ``data`` paths follow
    the study rule: relative to the directory the study belongs to (its run directory)."""
    study: dict[str, Any] = {
        "model": "toy", "dtype": "float32", "batch_size": batch_size,
        "calibration": {"data": str(data["calib"]), "ablation": True,
                        "max_samples": QUICK_CALIB_PER_DOMAIN if quick else None},
        "eval": [{"name": "toy", "data": str(data["eval"]), "max_samples": 40 if quick else 100}],
        "methods": demo_methods(quick),
        "budgets": QUICK_BUDGETS if quick else FULL_BUDGETS,
        "metrics": {"accuracy": True, "max_new_tokens": 8},
    }
    from depthprune.healing.recipe import missing_packages
    if missing_packages():  # the `heal` extra is optional: the demo runs without healing then
        return study
    study["heal"] = {"recipe": {"mode": "lora", "steps": 20 if quick else 60, "batch_size": 16},
                     "budgets": [HEADLINE_BUDGET] if quick else [HEADLINE_BUDGET, 0.5],
                     "methods": ["domain:math", "domain:general"]}
    # training-free repair of the healed plans (repaired alone, and repaired then healed)
    study["compensate"] = {"method": "refit", "budgets": study["heal"]["budgets"],
                           "methods": ["domain:math"] if quick else ["domain:math", "domain:general"]}
    return study


def headline_study(data: dict[str, Path], batch_size: int = 32) -> dict[str, Any]:
    """The full demo's headline study: the domain-aware signals per domain at 25%, unhealed, on
    the whole eval split, with the calibration settings of the grid (so its scores are reused).
    ``data`` paths are relative to the headline's own run directory."""
    study = demo_study(data, quick=False, batch_size=batch_size)
    study.pop("heal", None)
    # the recommended signal, also with training-free compensation (refit, calibrated on the plan's domain)
    study["compensate"] = {"method": "refit", "budgets": [HEADLINE_BUDGET], "methods": ["sleb:math", "sleb:general"]}
    study["eval"] = [{"name": "toy", "data": str(data["eval"]), "max_samples": None}]
    study["methods"] = [{"method": m, "domain": ["math", "general"]} for m in ("domain", "contrast", "ablation", "sleb")]
    study["methods"].insert(1, {"method": "domain", "domain": ["math", "general"], "token_group": "last"})
    study["budgets"] = [HEADLINE_BUDGET]
    return study


def mcnemar(a: list[int], b: list[int]) -> tuple[int, int, float]:
    """(only a right, only b right, exact two-sided p) on paired correctness."""
    from depthprune.statistics import mcnemar_exact
    return mcnemar_exact(a, b)


@dataclass
class Headline:
    """Math-aware vs general-aware at one budget, per ranking signal and domain."""

    budget: int
    num_layers: int
    removed: dict[str, list[int]]
    rows: list[dict[str, Any]]


#: (math-aware label, general-aware label) pairs the headline compares, when present.
PAIRS = [(f"{m}:math{g}", f"{m}:general{g}") for m in ("domain", "contrast", "ablation", "sleb") for g in ("", "@last")]


def headline(run_dir: str | Path, budget: float = HEADLINE_BUDGET) -> Headline:
    """Per ranking signal and domain: accuracy of the unpruned model, of math-aware and of
    general-aware removal at ``budget`` (unhealed), and the exact McNemar p-value of the two."""
    from depthprune.ranking.plan import resolve_budget
    from depthprune.study.store import get_meta, open_store, read_results
    conn = open_store(RunDir(run_dir).store)
    n_layers = get_meta(conn)["num_layers"]
    k = resolve_budget(budget, n_layers)
    rows = [r for r in read_results(conn) if r.heal is None or set(r.heal) == {"compensate"}]
    conn.close()
    pick = {(r.label, treatment(r.heal), r.budget, r.eval_set, r.domain): r for r in rows}
    rows_out = []
    removed: dict[str, list[int]] = {}
    for (math_label, gen_label), after in itertools.product(PAIRS, ("none", "refit")):
        for (label, _, _, eval_set, domain), base in sorted(pick.items()):
            if label != "unpruned":
                continue
            math_r = pick.get((math_label, after, k, eval_set, domain))
            gen_r = pick.get((gen_label, after, k, eval_set, domain))
            if math_r is None or gen_r is None or math_r.accuracy is None or gen_r.accuracy is None:
                continue
            removed |= {math_label: math_r.removed, gen_label: gen_r.removed}
            a = {s[0]: s[1] for s in math_r.samples}
            g = {s[0]: s[1] for s in gen_r.samples}
            ids = sorted(set(a) & set(g))
            a_only, g_only, p = mcnemar([a[i] for i in ids], [g[i] for i in ids])
            ranking = math_label.replace(":math", ":*") + ("" if after == "none" else f" + {after}")
            rows_out.append({"ranking": ranking, "eval_set": eval_set, "domain": domain,
                             "n": len(ids), "unpruned": base.accuracy, "math-aware": math_r.accuracy,
                             "general-aware": gen_r.accuracy, "math_only": a_only, "general_only": g_only, "p": p})
    return Headline(k, n_layers, removed, rows_out)


def findings_line(run_dir: str | Path) -> str:
    """One line of what the report found: the regimes of each unhealed series, low to high budget."""
    from depthprune.reporting.regimes import analyze
    from depthprune.study.store import read_results
    parts = []
    for series in analyze(read_results(RunDir(run_dir).store)):
        if series.heal != "null" or not series.runs:
            continue
        runs = ", ".join(f"{label} {100 * a:.0f}%" + ("" if a == b else f"-{100 * b:.0f}%")
                         for label, a, b in series.runs)
        parts.append(f"{series.eval_set}/{series.domain}: {runs}")
    return "regimes (unhealed): " + ("; ".join(parts) if parts else "no budget has two methods to compare")


def run_demo(out: str | Path, quick: bool = False, quiet: bool = False, batch_size: int = 32,
             report: bool = True, overwrite: bool = False, jobs: int | None = None
             ) -> tuple[SweepResult, Headline, Path | None, list[str]]:
    """Run (or resume) the demo study in ``out``; returns the sweep result, the headline, the
    report path (None with ``report=False``) and notes for the user. ``overwrite`` first deletes
    what an earlier demo wrote there (:meth:`RunDir.clear`) and starts over. ``jobs``: worker
    processes for the plans (:func:`depthprune.study.sweep.run_study`)."""
    from depthprune.reporting.html import write_report
    from depthprune.study.config import parse_study
    from depthprune.study.sweep import run_study
    from depthprune.study.workers import beside
    from depthprune.toy import default_data
    run = RunDir(out)
    if overwrite:
        run.clear()
    # A study's paths are relative to the study's directory, here the run directory, so the
    # generated study names its data relative to ``out`` (and stays valid if ``out`` moves).
    data = {split: Path(RunDir.DATA) / f"{split}.jsonl" for split in ("calib", "eval")}
    if not all((run.path / p).is_file() for p in data.values()):
        run.path.mkdir(parents=True, exist_ok=True)
        default_data(run.data)
    study = parse_study(demo_study(data, quick, batch_size), run.path, source="demo study")
    result = run_study(study, run.path, quiet=quiet, owned=[run.data], jobs=jobs)
    notes = [f"skipped {s}" for s in result.notes]
    if study.heal is None:
        notes.append("healing skipped: install depthprune[heal] (trl, peft, datasets) to add the healed cells")
    if quick:
        report_path = write_report(run.path, progress=not quiet) if report else None
        return result, headline(run.path), report_path, notes
    with contextlib.ExitStack() as stack:
        # the report reads only the grid: with worker processes it is written beside the
        # headline sweep (whose own process mostly waits), not after it
        pending = (stack.enter_context(beside(write_report, run.path, progress=False))
                   if report and jobs != 1 else None)
        _headline_sweep(run, data, batch_size, quiet, jobs)
        report_path = pending.result() if pending else write_report(run.path, progress=not quiet) if report else None
    return result, headline(run.headline.path), report_path, notes


def _headline_sweep(run: RunDir, data: dict[str, Path], batch_size: int, quiet: bool, jobs: int | None) -> None:
    """The full demo's headline study in ``OUT/headline``, with the grid's scores."""
    from depthprune.scoring.scores import Scores
    from depthprune.study.config import parse_study
    from depthprune.study.sweep import run_study
    headline_run = run.headline
    headline_run.path.mkdir(exist_ok=True)
    if not headline_run.scores.is_file():  # same calibration: score once
        Scores.load(run.scores).save(headline_run.scores)  # both files, published together
    headline_data = {split: Path("..") / p for split, p in data.items()}  # relative to OUT/headline
    study = parse_study(headline_study(headline_data, batch_size), headline_run.path, source="demo headline study")
    run_study(study, headline_run.path, quiet=quiet, jobs=jobs, known_plans=searched_in_grid(run, study))


def searched_in_grid(run: RunDir, headline: Any) -> dict[str, list[int]]:
    """The grid's plans for the headline's searched cells (`sleb` at 25%, plain and repaired):
    the same scores, calibration records and settings give the same search, so the headline
    does not repeat it (about half a minute of the full demo)."""
    from depthprune.study.cell import expand_cells
    from depthprune.study.plans import SEARCHED
    from depthprune.study.store import get_meta, open_store, read_results
    conn = open_store(run.store)
    try:
        num_layers = get_meta(conn)["num_layers"]
        grid = {(r.method, json.dumps(r.options, sort_keys=True), r.budget): r.removed
                for r in read_results(conn) if r.heal is None and r.method in SEARCHED}
    finally:
        conn.close()
    plans = {}
    for cell in expand_cells(headline, num_layers):
        found = grid.get((cell.variant.method, json.dumps(cell.variant.options, sort_keys=True), cell.budget))
        if cell.variant.method in SEARCHED and found is not None:
            plans[cell.key] = found
    return plans
