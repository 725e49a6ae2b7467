"""A small sweep-like study on the bundled toy model, for the report tests (independent of
`depthprune sweep`): score the toy once, evaluate in-memory pruned variants (layers replaced by
identity, which equals the pruned model), and write one store cell per (method, budget)."""

from __future__ import annotations

import time
from pathlib import Path

from depthprune.data.records import load_records
from depthprune.evaluation.generation import evaluate, wilson_interval
from depthprune.models.loading import load_model
from depthprune.pruning import layers_as_identity
from depthprune.ranking.methods import rank
from depthprune.ranking.plan import RankRequest
from depthprune.scoring.forward import ScoreSettings, score_model
from depthprune.study.rundir import RunDir
from depthprune.study.store import ResultRow, cell_key, open_store, set_meta, write_cell
from depthprune.toy import MODEL_DIR, default_data

DEFAULT_METHODS = (("domain:math", "domain", {"domain": "math"}), ("domain:general", "domain", {"domain": "general"}),
                   ("block-influence", "block-influence", {}), ("spaced", "spaced", {"base": "mixed"}),
                   ("last", "last", {}))


def _per_domain(records, n):
    out, seen = [], {}
    for r in records:
        if seen.get(r.domain, 0) < n:
            out.append(r)
            seen[r.domain] = seen.get(r.domain, 0) + 1
    return out


def build_study(run_dir: Path, budgets=(2, 4), n_calib: int = 8, n_eval: int = 8, methods=DEFAULT_METHODS,
                heal_budgets=(), max_new_tokens: int = 8) -> Path:
    """Write ``run_dir`` with results.sqlite and scores.json; returns run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = default_data(run_dir / "data")
    calib = _per_domain(load_records(data["calib"]), n_calib)
    evals = _per_domain(load_records(data["eval"]), n_eval)
    model, processor = load_model(MODEL_DIR, dtype="float32")
    scores = score_model(model, processor, calib, ScoreSettings(batch_size=8), model_id="toy", progress=False)
    scores.save(run_dir / "scores.json")
    conn = open_store(RunDir(run_dir).store)
    set_meta(conn, {"model": "toy", "num_layers": scores.num_layers, "domains": scores.domains,
                    "protected_layers": scores.protected_layers, "study": {}, "eval_sets": ["eval"],
                    "depthprune_version": "test"})
    cells = [("unpruned", "none", {}, 0, [])]
    for budget in budgets:
        for label, method, options in methods:
            plan = rank(scores, RankRequest(method=method, budget=budget, **options))
            cells.append((label, method, options, budget, plan.remove))
    done: dict[tuple, list] = {}
    for label, method, options, budget, removed in cells:
        key = tuple(removed)
        started = time.perf_counter()
        if key not in done:  # identical plans are evaluated once, as the sweep does
            with layers_as_identity(model, removed):
                done[key] = evaluate(model, processor, evals, batch_size=8, max_new_tokens=max_new_tokens,
                                     progress=False).predictions
        preds = done[key]
        for heal in [None] + ([{"recipe": "fake"}] if budget in heal_budgets else []):
            rows = []
            for domain in sorted({p.domain for p in preds}):
                ps = [p for p in preds if p.domain == domain]
                correct = sum(p.correct for p in ps)
                lo, hi = wilson_interval(correct, len(ps))
                rows.append(ResultRow(cell=cell_key(method, options, budget, heal), method=method, label=label,
                                      options=options, budget=budget, budget_fraction=budget / scores.num_layers,
                                      removed=removed, heal=heal, eval_set="eval", domain=domain, n=len(ps),
                                      accuracy=correct / len(ps), ci_low=lo, ci_high=hi,
                                      nll=sum(p.nll for p in ps) / len(ps),
                                      samples=[(p.id, int(p.correct), p.nll) for p in ps],
                                      seconds=time.perf_counter() - started))
            write_cell(conn, rows)
    conn.close()
    return run_dir
