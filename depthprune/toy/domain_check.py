"""Does domain-aware pruning keep each domain's own accuracy on the toy? A paired check.

    python -m depthprune.toy.domain_check --seed 1 --out runs/toy-check [--model DIR]
        [--budget 0.25] [--variant domain@all --variant contrast@all ...] [--ablation]

Runs the ordinary CLI on a benchmark seed of your choice (pick one the model was not trained
or tuned on; the toy was trained on seed 0): ``depthprune data synth`` (calib and eval
splits only), ``depthprune score``, then per variant (METHOD@TOKEN_GROUP of a domain-aware
method: domain, contrast; or ``ablation``, which scores with ``--ablation``) ``depthprune
prune --method METHOD --domain math|general`` and ``depthprune eval`` of each pruned model
and of the unpruned one. For each variant it compares the math-aware and the general-aware
model on each domain with an exact McNemar test on per-sample correctness (two-sided
binomial test on the discordant pairs) and prints the table; ``results.json`` in ``--out``
holds every figure.

``--ablation`` also measures single-layer ablation damage: the increase of the mean
teacher-forced answer NLL (nats/token) per domain on the calib split when one layer is
skipped in memory (layers 0-2 carry the deepstack injections; skipping one of them moves
the injections, so their damage includes that).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from depthprune.report.statistics import binomial_two_sided

DOMAINS = ("math", "general")


def paired(pred_a: Path, pred_b: Path, domain: str) -> dict:
    """Accuracy of A and B on ``domain`` and the McNemar test of A vs B (records matched by id)."""
    def load(path: Path) -> dict[str, bool]:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {r["id"]: bool(r["correct"]) for r in rows if r["domain"] == domain}
    a, b = load(pred_a), load(pred_b)
    if set(a) != set(b):
        raise ValueError(f"{pred_a} and {pred_b} hold different records; evaluate both on one file")
    only_a = sum(a[k] and not b[k] for k in a)
    only_b = sum(b[k] and not a[k] for k in a)
    return {"n": len(a), "acc_a": sum(a.values()) / len(a), "acc_b": sum(b.values()) / len(b),
            "only_a": only_a, "only_b": only_b, "p": binomial_two_sided(only_a, only_a + only_b)}


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


def _eval_args(model: str, data: Path, out: Path, batch_size: str) -> list[str]:
    # toy answers are at most 5 tokens; 8 new tokens leave room and keep generation short
    return ["eval", model, "--data", str(data / "eval.jsonl"), "--out", str(out),
            "--batch-size", batch_size, "--max-new-tokens", "8", "--dtype", "float32"]


def ablation(model_dir: str | Path, data: Path, batch_size: int = 32) -> dict:
    """Per layer and domain: mean answer NLL with that layer skipped minus the intact NLL."""
    import torch
    from tqdm import tqdm

    from depthprune.data.records import load_records
    from depthprune.evaluate.generation import answer_nll
    from depthprune.models.loading import load_model

    torch.set_num_threads(1)
    model, processor = load_model(str(model_dir), dtype="float32", device="cpu")
    records = load_records(data, require_answer=True)
    lm = model.model.language_model
    layers = lm.layers

    def mean_nll() -> dict[str, float]:
        sums = {d: [0.0, 0] for d in DOMAINS}
        for i in range(0, len(records), batch_size):
            chunk = records[i:i + batch_size]
            for r, (nll, _) in zip(chunk, answer_nll(model, processor, chunk)):
                sums[r.domain][0] += nll
                sums[r.domain][1] += 1
        return {d: s / n for d, (s, n) in sums.items()}

    base = mean_nll()
    damage = []
    for skip in tqdm(range(len(layers)), desc="ablation"):
        lm.layers = torch.nn.ModuleList([m for i, m in enumerate(layers) if i != skip])
        try:
            nll = mean_nll()
        finally:
            lm.layers = layers
        damage.append({d: round(nll[d] - base[d], 4) for d in DOMAINS})
    return {"base_nll": base, "damage": damage}


def main(argv: Sequence[str] | None = None) -> None:
    from depthprune.toy import MODEL_DIR
    from depthprune.toy import N_CALIB, N_EVAL

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True, help="benchmark seed (not the training seed 0)")
    ap.add_argument("--out", type=Path, required=True, help="new directory for everything written")
    ap.add_argument("--model", default=str(MODEL_DIR), help="checkpoint directory (default: the toy)")
    ap.add_argument("--budget", default="0.25")
    ap.add_argument("--variant", action="append", dest="variants",
                    help="METHOD@TOKEN_GROUP (domain, contrast) or ablation; repeatable "
                         "(default: domain@all, domain@last, contrast@all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-calib", type=int, default=None, help="calib records (default: the toy's)")
    ap.add_argument("--n-eval", type=int, default=None, help="eval records (default: the toy's)")
    ap.add_argument("--ablation", action="store_true", help="also measure single-layer ablation damage")
    args = ap.parse_args(argv)
    groups = args.variants or ["domain@all", "domain@last", "contrast@all"]
    for v in groups:
        method, _, group = v.partition("@")
        if not (v == "ablation" or (method in ("domain", "contrast") and group in ("all", "last", "image", "text"))):
            raise SystemExit(f"--variant {v}: use domain@GROUP, contrast@GROUP or ablation")
    out: Path = args.out
    if out.exists():
        raise SystemExit(f"{out}: exists; pass a new --out")
    out.mkdir(parents=True)
    data = out / "data"
    _cli("data", "synth", "--out", str(data), "--seed", str(args.seed), "--n-train", "0",
         "--n-calib", str(args.n_calib or N_CALIB), "--n-eval", str(args.n_eval or N_EVAL))
    bs = str(args.batch_size)
    _cli("score", args.model, "--data", str(data / "calib.jsonl"), "--out", str(out / "scores.json"),
         "--batch-size", bs, *(["--ablation"] if "ablation" in groups else []))
    evals = {"base": args.model}  # name -> checkpoint; identical plans are evaluated once
    alias: dict[str, str] = {}
    removed: dict[str, list[int]] = {}
    for group in groups:
        for domain in DOMAINS:
            name = _name(domain, group)
            method, _, token_group = group.partition("@")
            _cli("prune", args.model, "--scores", str(out / "scores.json"), "--method", method,
                 "--domain", domain, "--budget", args.budget,
                 *(["--token-group", token_group] if token_group else []), "--out", str(out / name))
            removed[name] = json.loads((out / name / "pruning.json").read_text())["removed_layers"]
            same = next((n for n in removed if n != name and removed[n] == removed[name]), None)
            if same is None:
                evals[name] = str(out / name)
            alias[name] = same or name
    # the evaluations run side by side: on a shared machine each process gets its own CPU share
    procs = [_cli(*_eval_args(ckpt, data, out / f"{name}.json", bs), wait=False)
             for name, ckpt in evals.items()]
    results: dict = {"seed": args.seed, "model": args.model, "budget": args.budget,
                     "removed": removed}
    if args.ablation:
        results["ablation"] = ablation(args.model, data / "calib.jsonl", args.batch_size)
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"an evaluation failed (exit {proc.returncode}); see its output above")
    results["base"] = json.loads((out / "base.json").read_text())["domains"]
    for group in groups:  # A = math-aware, B = general-aware, on each domain
        pred = {d: out / f"{alias[_name(d, group)]}.predictions.jsonl" for d in DOMAINS}
        results[group] = {d: paired(pred["math"], pred["general"], d) for d in DOMAINS}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    print(f"\nseed {args.seed}, budget {args.budget}; unpruned: "
          + ", ".join(f"{d} {results['base'][d]['accuracy']:.3f}" for d in DOMAINS))
    print("variant       eval on  math-aware  general-aware  only-M  only-G  McNemar p   removed (M | G)")
    for group in groups:
        for d in DOMAINS:
            r = results[group][d]
            print(f"{group:12s}  {d:7s}  {r['acc_a']:10.3f}  {r['acc_b']:13.3f}  {r['only_a']:6d}  "
                  f"{r['only_b']:6d}  {r['p']:9.2g}   {results['removed'][_name('math', group)]} | "
                  f"{results['removed'][_name('general', group)]}")
    if args.ablation:
        print("\nsingle-layer ablation: answer-NLL increase (nats/token) on calib")
        for i, dmg in enumerate(results["ablation"]["damage"]):
            print(f"layer {i:2d}: math {dmg['math']:+.3f}  general {dmg['general']:+.3f}")


if __name__ == "__main__":
    main()
