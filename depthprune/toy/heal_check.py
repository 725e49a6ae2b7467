"""Which healing recipe gives back the most accuracy in the same wall-clock time? A paired check.

    python -m depthprune.toy.heal_check --seed 23 --out runs/heal-check [--model toy]
        [--budget 0.25 --budget 0.5] [--plan math --plan general] [--method ablation]
        [--recipe lora --recipe full ...] [--minutes 1 --minutes 3] [--n-train 3000]
        [--benchmark toy|text]

Runs the ordinary CLI on a benchmark seed of your choice (one the toy was not trained or tuned
on; it was trained on seed 0): ``depthprune data synth`` (train, calib and eval splits; with
``--benchmark text``, for a pretrained text model such as ``smollm2``, ``depthprune data text``),
``depthprune score``, per budget and plan domain ``depthprune prune --method METHOD --domain D``,
then per recipe and time budget ``depthprune heal --time-budget SECONDS`` of each pruned model,
and ``depthprune eval`` of everything (unpruned, pruned, healed) on the eval split.

Recipes: ``lora``, ``full``, ``neighbours``, ``interleaved``, ``head-last`` (``--mode``) and
``distill`` (LoRA with the unpruned model as ``--teacher``). For every healed model and domain
it reports the accuracy, the share of the pruning loss given back ((healed - pruned) /
(unpruned - pruned)) with a 95% paired bootstrap interval, and exact McNemar tests against the
pruned model and against LoRA at the same budget. ``results.json`` holds every figure;
``table.md`` the table. Give the machine to this run alone: a time budget buys fewer steps on
a busy machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from depthprune.evaluation.generation import predictions_path
from depthprune.statistics import mcnemar_exact, ratio_ci
from depthprune.toy.domain_check import MAX_NEW_TOKENS, benchmark_data_args

DOMAINS = ("math", "general")
RECIPES = {"lora": ["--mode", "lora"], "full": ["--mode", "full"], "neighbours": ["--mode", "neighbours"],
           "interleaved": ["--mode", "interleaved"], "head-last": ["--mode", "head-last"],
           "distill": ["--mode", "lora", "--teacher", "MODEL"]}


def _cli(threads: int, *args: str) -> None:
    print("$ depthprune " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "depthprune.cli", "--quiet", "--threads", str(threads), *args],
                   check=True)


def _correct(predictions: Path) -> dict[str, dict[str, int]]:
    """Per domain: sample id -> 1/0 correct, from an eval's predictions file."""
    out: dict[str, dict[str, int]] = {d: {} for d in DOMAINS}
    for line in predictions.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row["domain"], {})[row["id"]] = int(bool(row["correct"]))
    return out


def loss_back(unpruned: list[int], pruned: list[int], healed: list[int]) -> tuple[float, float, float]:
    """Share of the pruning loss given back, (healed - pruned) / (unpruned - pruned), and its 95%
    Fieller interval over the paired samples (:func:`~depthprune.statistics.ratio_ci`;
    ``(-inf, inf)`` when the loss itself is within noise; NaN when nothing was lost). The percentile
    bootstrap it replaces dropped the resamples whose loss was <= 0 and undercovered small losses."""
    u, p, h = (np.asarray(x, dtype=float) for x in (unpruned, pruned, healed))
    return ratio_ci(h - p, u - p)


def _finite(obj):  # noqa: ANN001, ANN202 - strict JSON: an undefined or unbounded share is null
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and not np.isfinite(obj) else obj


def _share(x: float) -> str:
    return "–" if x != x else ("unbounded" if np.isinf(x) else f"{x:.0%}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True, help="benchmark seed (not 0: the toy's training seed)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--budget", action="append", type=float, help="fractions of layers (default 0.25)")
    ap.add_argument("--plan", action="append", choices=DOMAINS, help="plan domains (default both)")
    ap.add_argument("--method", default="ablation", help="ranking method of the plans (default ablation)")
    ap.add_argument("--recipe", action="append", choices=sorted(RECIPES), help="recipes (default all)")
    ap.add_argument("--minutes", action="append", type=float, help="time budgets (default 1 and 3)")
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16, help="heal batch size")
    ap.add_argument("--benchmark", choices=("toy", "text"), default="toy",
                    help="toy: data synth (n-train per split); text: data text (n-train per domain)")
    ap.add_argument("--max-new-tokens", type=int, help="eval answer length (default 8 toy, 12 text)")
    args = ap.parse_args(argv)
    budgets, plans = args.budget or [0.25], args.plan or list(DOMAINS)
    recipes, minutes = args.recipe or list(RECIPES), args.minutes or [1.0, 3.0]
    out, data = args.out, args.out / "data"
    t = args.threads
    if (data / "eval.jsonl").is_file():
        pass  # resumed: the same seed wrote these
    else:
        toy = args.benchmark == "toy"
        _cli(t, *benchmark_data_args(args.benchmark, data, args.seed, args.n_train, 256 if toy else 40,
                                     1200 if toy else 100))
    max_new_tokens = str(args.max_new_tokens or MAX_NEW_TOKENS[args.benchmark])
    scores = out / "scores.json"
    if not scores.is_file():
        _cli(t, "score", args.model, "--data", str(data / "calib.jsonl"), "--out", str(scores), "--dtype", "float32",
             "--batch-size", "32", *(["--ablation"] if args.method == "ablation" else []))

    def evaluate(model: str, name: str) -> Path:
        metrics = out / "eval" / f"{name}.json"
        if not metrics.is_file():
            _cli(t, "eval", model, "--data", str(data / "eval.jsonl"), "--out", str(metrics), "--batch-size", "32",
                 "--max-new-tokens", max_new_tokens, "--dtype", "float32")
        return predictions_path(metrics)

    base = _correct(evaluate(args.model, "unpruned"))
    results = []
    for budget in budgets:
        for plan in plans:
            pruned_dir = out / f"pruned-{plan}-{budget:g}"
            if not pruned_dir.is_dir():
                _cli(t, "prune", args.model, "--scores", str(scores), "--method", args.method, "--domain", plan,
                     "--budget", str(budget), "--out", str(pruned_dir), "--dtype", "float32")
            removed = json.loads((pruned_dir / "pruning.json").read_text())["removed_layers"]
            pruned = _correct(evaluate(str(pruned_dir), pruned_dir.name))
            healed_by: dict[tuple[str, float], dict] = {}
            for m in minutes:
                for recipe in recipes:
                    name = f"healed-{plan}-{budget:g}-{recipe}-{m:g}min"
                    if not (out / name).is_dir():
                        flags = [args.model if f == "MODEL" else f for f in RECIPES[recipe]]
                        _cli(t, "heal", str(pruned_dir), "--data", str(data / "train.jsonl"), "--out", str(out / name),
                             "--time-budget", str(60 * m), "--steps", "1000000", "--batch-size", str(args.batch_size),
                             "--save-steps", "1000000", *flags)
                    healed_by[(recipe, m)] = _correct(evaluate(str(out / name), name))
                    entry = json.loads((out / name / "pruning.json").read_text())["healing"]
                    for d in DOMAINS:
                        ids = sorted(base[d])
                        u, p, h = ([x[d][i] for i in ids] for x in (base, pruned, healed_by[(recipe, m)]))
                        back, low, high = loss_back(u, p, h)
                        _, _, p_pruned = mcnemar_exact(h, p)
                        lora = healed_by.get(("lora", m))
                        p_lora = mcnemar_exact(h, [lora[d][i] for i in ids])[2] if lora and recipe != "lora" else None
                        results.append({"budget": budget, "plan": plan, "removed": removed, "recipe": recipe,
                                        "minutes": m, "steps": entry["steps"], "domain": d, "n": len(ids),
                                        "unpruned": float(np.mean(u)), "pruned": float(np.mean(p)),
                                        "healed": float(np.mean(h)), "loss_back": back,
                                        "loss_back_ci": [low, high],
                                        "p_vs_pruned": p_pruned, "p_vs_lora": p_lora})
    lines = ["| budget | plan | recipe | min | steps | domain | unpruned | pruned | healed | loss back [95% CI] "
             "| p vs pruned | p vs LoRA |", "|" + "---|" * 12]
    for r in results:
        lo, hi = r["loss_back_ci"]
        lines.append(f"| {r['budget']:.0%} | {r['plan']}-aware | {r['recipe']} | {r['minutes']:g} | {r['steps']} | "
                     f"{r['domain']} | {r['unpruned']:.1%} | {r['pruned']:.1%} | {r['healed']:.1%} | "
                     f"{_share(r['loss_back'])} [{_share(lo)}, {_share(hi)}] | {r['p_vs_pruned']:.2g} | "
                     f"{'' if r['p_vs_lora'] is None else format(r['p_vs_lora'], '.2g')} |")
    (out / "results.json").write_text(json.dumps(_finite(results), indent=1, allow_nan=False))  # NaN/inf: null
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
