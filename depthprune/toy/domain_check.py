"""Does domain-aware pruning keep each domain's own accuracy on unseen data? A paired check.

    python -m depthprune.toy.domain_check --seed 1 --out runs/toy-check [--model DIR]
        [--budget 0.25] [--variant domain@all --variant ablation --variant sleb ...]
        [--benchmark toy|text] [--jobs N] [--ablation]

Runs the ordinary CLI on a benchmark seed of your choice (pick one the model was not trained
or tuned on; the toy was trained on seed 0): ``depthprune data synth`` (``--benchmark toy``,
calib and eval splits only) or ``depthprune data text`` (``--benchmark text``, e.g. with
``--model smollm2``), ``depthprune score``, then per variant ``depthprune prune --method
METHOD --domain math|general`` and ``depthprune eval`` of each pruned model and of the
unpruned one. Variants: METHOD@TOKEN_GROUP of a similarity method (domain, contrast);
``ablation`` (scores with ``--ablation``: the k layers whose removal alone costs the
domain's calib answer NLL least); ``sleb`` (SLEB on the domain's calib answer NLL,
re-measured after every removal). For each variant it compares the math-aware model (A)
with the general-aware one (B) on each domain: accuracy with an exact McNemar test on
per-sample correctness (two-sided binomial test on the discordant pairs), and mean answer
NLL (nats/token): the difference A - B with a paired bootstrap 95% interval and the two-sided
Wilcoxon signed-rank p (the table's "Wilcoxon p").
``results.json`` in ``--out`` holds every figure. Everything runs in float32.

``--ablation`` also prints the single-layer ablation damage: the increase of the mean
teacher-forced answer NLL (nats/token) per domain on the calib split when one layer is
removed (layers 0-2 of the toy carry the deepstack injections; removing one of them moves
the injections, so their damage includes that).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from depthprune.statistics import binomial_two_sided

DOMAINS = ("math", "general")


def paired(pred_a: Path, pred_b: Path, domain: str) -> dict:
    """Accuracy and mean answer NLL of A and B on ``domain`` (records matched by id): exact
    McNemar test of the accuracies; the mean NLL difference A - B with a paired bootstrap 95%
    interval and the Wilcoxon signed-rank p-value."""
    from depthprune.statistics import bootstrap_mean_ci, wilcoxon_paired

    def load(path: Path) -> dict[str, dict]:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {r["id"]: r for r in rows if r["domain"] == domain}
    a, b = load(pred_a), load(pred_b)
    if set(a) != set(b):
        raise ValueError(f"{pred_a} and {pred_b} hold different records; evaluate both on one file")
    ids = sorted(a)
    only_a = sum(a[k]["correct"] and not b[k]["correct"] for k in ids)
    only_b = sum(b[k]["correct"] and not a[k]["correct"] for k in ids)
    out = {"n": len(a), "acc_a": sum(a[k]["correct"] for k in ids) / len(a),
           "acc_b": sum(b[k]["correct"] for k in ids) / len(b), "only_a": only_a, "only_b": only_b,
           "p": binomial_two_sided(only_a, only_a + only_b)}
    nll_a, nll_b = [a[k].get("nll") for k in ids], [b[k].get("nll") for k in ids]
    if None in nll_a or None in nll_b:  # no NLL (or a non-finite one) for some record: accuracy only
        return out | {"nll_a": None, "nll_b": None, "nll_diff": None, "nll_ci": None, "nll_p": None}
    # the mean paired difference with its bootstrap interval (the effect size) and the Wilcoxon
    # signed-rank p-value (a bootstrap p-value cannot go below 1/resamples and is wrong at small n)
    diff, lo, hi = bootstrap_mean_ci([x - y for x, y in zip(nll_a, nll_b)], n_resamples=10000)
    p_nll = wilcoxon_paired(nll_a, nll_b)
    return out | {"nll_a": sum(nll_a) / len(ids), "nll_b": sum(nll_b) / len(ids), "nll_diff": diff,
                  "nll_ci": [lo, hi], "nll_p": p_nll}


#: Greedy answer length of the evaluations per benchmark (toy answers are at most 5 tokens).
MAX_NEW_TOKENS = {"toy": 8, "text": 12}


def benchmark_data_args(benchmark: str, data: Path, seed: int, n_train: int, n_calib: int,
                        n_eval: int) -> list[str]:
    """The ``depthprune data synth`` (toy) or ``data text`` arguments that write a benchmark
    seed's splits into ``data`` (the checks of this package share them)."""
    command = ["data", "synth"] if benchmark == "toy" else ["data", "text"]
    return [*command, "--out", str(data), "--seed", str(seed), "--n-train", str(n_train),
            "--n-calib", str(n_calib), "--n-eval", str(n_eval)]


def _name(domain: str, variant: str) -> str:
    """Output name of the ``domain``-aware model of ``variant`` (METHOD@GROUP or ablation)."""
    return f"{domain}-aware-{variant.replace('@', '-')}"


def _cli(*args: str, wait: bool = True) -> subprocess.Popen | None:
    cmd = [sys.executable, "-m", "depthprune.cli", *args]
    print("$ depthprune " + " ".join(args), flush=True)
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    subprocess.run(cmd, check=True)
    return None


def _eval_args(model: str, data: Path, out: Path, batch_size: str, max_new_tokens: int) -> list[str]:
    return ["eval", model, "--data", str(data / "eval.jsonl"), "--out", str(out),
            "--batch-size", batch_size, "--max-new-tokens", str(max_new_tokens), "--dtype", "float32"]


def ablation(scores_file: Path) -> dict:
    """Per layer and domain: mean calib answer NLL with that layer removed minus the intact
    NLL, from the scores file of ``depthprune score --ablation``."""
    from depthprune.scoring.scores import Scores
    scores = Scores.load(scores_file)
    base = {d: float(scores.base_nll[scores.sample_mask(d)].mean()) for d in DOMAINS}
    damage = {d: scores.ablation_damage(d).tolist() for d in DOMAINS}
    return {"base_nll": base, "damage": [{d: round(damage[d][i], 4) for d in DOMAINS}
                                         for i in range(scores.num_layers)]}


def main(argv: Sequence[str] | None = None) -> None:
    from depthprune.toy import MODEL_DIR, N_CALIB, N_EVAL

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True, help="benchmark seed (not the training seed 0)")
    ap.add_argument("--out", type=Path, required=True, help="new directory for everything written")
    ap.add_argument("--model", default=str(MODEL_DIR), help="checkpoint (default: the toy)")
    ap.add_argument("--benchmark", choices=("toy", "text"), default="toy",
                    help="toy: `data synth` (image + text); text: `data text` (for LLMs such as smollm2)")
    ap.add_argument("--budget", default="0.25")
    ap.add_argument("--variant", action="append", dest="variants",
                    help="METHOD@TOKEN_GROUP (domain, contrast), ablation or sleb; repeatable "
                         "(default: domain@all, domain@last, contrast@all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-calib", type=int, default=None,
                    help="calib records (toy: in all, default the toy's 256; text: per domain, default 40)")
    ap.add_argument("--n-eval", type=int, default=None,
                    help="eval records (toy: in all, default 1200; text: per domain, default 100)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="generation limit (toy 8, text 12)")
    ap.add_argument("--jobs", type=int, default=0, help="evaluations run at once (default 0: all side by side)")
    ap.add_argument("--ablation", action="store_true", help="also print single-layer ablation damage")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run in --out: steps whose outputs exist are not run again")
    args = ap.parse_args(argv)
    groups = args.variants or ["domain@all", "domain@last", "contrast@all"]
    for v in groups:
        method, _, group = v.partition("@")
        if not (v in ("ablation", "sleb") or (method in ("domain", "contrast") and group in ("all", "last", "image", "text"))):
            raise SystemExit(f"--variant {v}: use domain@GROUP, contrast@GROUP, ablation or sleb")
    out: Path = args.out
    if out.exists() and not args.resume:
        raise SystemExit(f"{out}: exists; pass a new --out (or --resume to continue it)")
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if (data / "eval.jsonl").is_file():
        pass  # resumed: the same seed wrote these
    else:
        toy = args.benchmark == "toy"
        _cli(*benchmark_data_args(args.benchmark, data, args.seed, 0, args.n_calib or (N_CALIB if toy else 40),
                                  args.n_eval or (N_EVAL if toy else 100)))
    max_new_tokens = args.max_new_tokens or MAX_NEW_TOKENS[args.benchmark]
    bs, f32 = str(args.batch_size), ("--dtype", "float32")
    needs_ablation = "ablation" in groups or args.ablation
    if not (out / "scores.json").is_file():
        _cli("score", args.model, "--data", str(data / "calib.jsonl"), "--out", str(out / "scores.json"),
             "--batch-size", bs, *f32, *(["--ablation"] if needs_ablation else []))
    evals = {"base": args.model}  # name -> checkpoint; identical plans are evaluated once
    alias: dict[str, str] = {}
    removed: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    for group in groups:
        for domain in DOMAINS:
            name = _name(domain, group)
            method, _, token_group = group.partition("@")
            source = ["--data", str(data / "calib.jsonl")] if method == "sleb" else ["--scores", str(out / "scores.json")]
            started = time.perf_counter()
            if not (out / name / "pruning.json").is_file():
                _cli("prune", args.model, *source, "--method", method, "--domain", domain, "--budget", args.budget,
                     "--batch-size", bs, *f32, *(["--token-group", token_group] if token_group else []),
                     "--out", str(out / name))
                seconds[name] = round(time.perf_counter() - started, 1)
            removed[name] = json.loads((out / name / "pruning.json").read_text())["removed_layers"]
            same = next((n for n in removed if n != name and removed[n] == removed[name]), None)
            if same is None:
                evals[name] = str(out / name)
            alias[name] = same or name
    results: dict = {"seed": args.seed, "benchmark": args.benchmark, "model": args.model, "budget": args.budget,
                     "removed": removed, "prune_seconds": seconds}
    if needs_ablation:
        results["ablation"] = ablation(out / "scores.json")
    # evaluations run side by side (--jobs at a time): each process gets its own CPU share
    pending = [_eval_args(ckpt, data, out / f"{name}.json", bs, max_new_tokens) for name, ckpt in evals.items()
               if not (out / f"{name}.json").is_file()]
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and (args.jobs <= 0 or len(running) < args.jobs):
            running.append(_cli(*pending.pop(0), wait=False))
        proc = running.pop(0)
        if proc.wait() != 0:
            raise SystemExit(f"an evaluation failed (exit {proc.returncode}); see its output above")
    results["base"] = json.loads((out / "base.json").read_text())["domains"]
    for group in groups:  # A = math-aware, B = general-aware, on each domain
        pred = {d: out / f"{alias[_name(d, group)]}.predictions.jsonl" for d in DOMAINS}
        results[group] = {d: paired(pred["math"], pred["general"], d) for d in DOMAINS}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    print(f"\nseed {args.seed} ({args.benchmark}), budget {args.budget}; unpruned: "
          + ", ".join(f"{d} {results['base'][d]['accuracy']:.3f}" for d in DOMAINS))
    print("variant       eval on  math-aware  general-aware  only-M  only-G  McNemar p   NLL M - G (95% CI)      "
          "Wilcoxon p  removed (M | G)")
    for group in groups:
        for d in DOMAINS:
            r = results[group][d]
            ci, p_nll = "-", "-"
            if r["nll_diff"] is not None:
                ci = f"{r['nll_diff']:+.3f} ({r['nll_ci'][0]:+.3f}, {r['nll_ci'][1]:+.3f})"
                p_nll = f"{r['nll_p']:.2g}"
            print(f"{group:12s}  {d:7s}  {r['acc_a']:10.3f}  {r['acc_b']:13.3f}  {r['only_a']:6d}  "
                  f"{r['only_b']:6d}  {r['p']:9.2g}   {ci:24s} {p_nll:>9s}  "
                  f"{results['removed'][_name('math', group)]} | {results['removed'][_name('general', group)]}")
    if args.ablation:
        print("\nsingle-layer ablation: answer-NLL increase (nats/token) on calib")
        for i, dmg in enumerate(results["ablation"]["damage"]):
            print(f"layer {i:2d}: math {dmg['math']:+.3f}  general {dmg['general']:+.3f}")


if __name__ == "__main__":
    main()
