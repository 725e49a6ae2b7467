"""How much of the pruning loss does training-free compensation give back? A paired check.

    python -m depthprune.toy.compensation_check --seed 8128 --out runs/compensation-check
        [--model toy] [--benchmark toy|text] [--budget 0.25 ...] [--method sleb --method block-influence]
        [--compensate refit --compensate lstsq] [--threads 1] [--jobs 2]

Runs the ordinary CLI on a benchmark seed of your choice (one the toy was not trained or tuned
on; it was trained on seed 0 and compensation's default ridge was chosen on seed 2024):
``depthprune data synth`` (or ``data text``), ``depthprune score`` when a method needs scores,
per budget, method and plan domain ``depthprune prune --method METHOD [--domain D]`` (plain
removal), then the same layers again with ``--compensate C`` calibrated on the plan's domain,
on the other domain and on both (``--weights math=1,general=1``), and ``depthprune eval`` of
everything on the eval split. Domain-aware methods (``sleb``, ``ablation``, ``domain``) get a
math-aware and a general-aware plan; the others one plan, compensated on both domains.

For every compensated model and domain it reports the accuracy, the share of the pruning loss
given back ((compensated - plain) / (unpruned - plain)) with its 95% Fieller interval,
the exact McNemar test against plain removal, and the fit's time (from ``pruning.json``).
``results.json`` holds every figure, ``table.md`` the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from depthprune.statistics import mcnemar_exact
from depthprune.toy.domain_check import MAX_NEW_TOKENS, benchmark_data_args
from depthprune.toy.heal_check import _correct, _finite, _share, loss_back

DOMAINS = ("math", "general")
#: Methods whose plan is chosen for one domain (the others are domain-agnostic).
DOMAIN_AWARE = ("sleb", "ablation", "domain", "contrast")
CALIBRATIONS = {"math": ["--domain", "math"], "general": ["--domain", "general"],
                "both": ["--weights", "math=1,general=1"]}


def _cli(threads: int, *args: str, wait: bool = True) -> subprocess.Popen | None:
    print("$ depthprune " + " ".join(args), flush=True)
    cmd = [sys.executable, "-m", "depthprune.cli", "--quiet", "--threads", str(threads), *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return None


def _plans(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(name, method, plan domain or '') for every budget and method."""
    out = []
    for budget in args.budget:
        for method in args.method:
            for domain in (DOMAINS if method in DOMAIN_AWARE else ("",)):
                tag = f"{domain}-aware" if domain else "agnostic"
                out.append((f"{method}-{tag}-{budget}", method, domain))
    return out


def _prune_all(args: argparse.Namespace, data: Path, out: Path) -> dict[str, dict]:
    """Prune every plan plainly, then every compensation of its layers; returns name -> info."""
    calib, infos = str(data / "calib.jsonl"), {}
    common = ["--batch-size", str(args.batch_size), "--dtype", "float32"]
    if any(m not in ("sleb", "last", "uniform", "random") for m in args.method) and not (out / "scores.json").is_file():
        _cli(args.threads, "score", args.model, "--data", calib, "--out", str(out / "scores.json"),
             *common, *(["--ablation"] if "ablation" in args.method else []))
    for name, method, domain in _plans(args):
        budget = name.rsplit("-", 1)[1]
        source = ["--data", calib] if method == "sleb" else ["--scores", str(out / "scores.json")]
        if not (out / name / "pruning.json").is_file():
            _cli(args.threads, "prune", args.model, *source, "--method", method, "--budget", budget,
                 *(["--domain", domain] if domain else []), *common, "--out", str(out / name))
        infos[name] = json.loads((out / name / "pruning.json").read_text())
        layers = ",".join(map(str, infos[name]["removed_layers"]))
        calibrations = (domain, [d for d in DOMAINS if d != domain][0], "both") if domain else ("both",)
        for comp in args.compensate:
            for cal in calibrations:
                if comp != args.compensate[0] and cal != "both":
                    continue  # the other repairs: calibrated on both domains only
                target = out / f"{name}+{comp}-{cal}"
                if not (target / "pruning.json").is_file():
                    _cli(args.threads, "prune", args.model, "--layers", layers, "--data", calib, "--compensate", comp,
                         *CALIBRATIONS[cal], *common, "--out", str(target))
                infos[target.name] = json.loads((target / "pruning.json").read_text())
    return infos


def _evaluate(args: argparse.Namespace, data: Path, out: Path, models: dict[str, str]) -> None:
    """Evaluate every model on the eval split, ``--jobs`` processes at a time."""
    pending = [["eval", ckpt, "--data", str(data / "eval.jsonl"), "--out", str(out / f"{name}.json"),
                "--batch-size", str(args.batch_size), "--max-new-tokens", str(MAX_NEW_TOKENS[args.benchmark]),
                "--dtype", "float32"] for name, ckpt in models.items() if not (out / f"{name}.json").is_file()]
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            running.append(_cli(args.threads, *pending.pop(0), wait=False))
        proc = running.pop(0)
        if proc.wait() != 0:
            raise SystemExit(f"an evaluation failed (exit {proc.returncode}); see its output above")


def main(argv: list[str] | None = None) -> None:
    from depthprune.toy import MODEL_DIR, N_CALIB, N_EVAL
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True, help="benchmark seed (not 0, the toy's training seed)")
    ap.add_argument("--out", type=Path, required=True, help="new directory (or an interrupted run's, resumed)")
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--benchmark", choices=("toy", "text"), default="toy")
    ap.add_argument("--budget", action="append", help="layer counts or fractions of layers (default 0.25)")
    ap.add_argument("--method", action="append", help="ranking methods (default sleb and block-influence)")
    ap.add_argument("--compensate", action="append", help="repairs (default refit, then lstsq on both domains)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-calib", type=int, default=None, help="calib records (toy: all, default 256; text: per domain, 40)")
    ap.add_argument("--n-eval", type=int, default=None, help="eval records (toy: all, default 1200; text: per domain, 100)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each command")
    ap.add_argument("--jobs", type=int, default=2, help="evaluations run at once")
    args = ap.parse_args(argv)
    args.budget = args.budget or ["0.25"]
    args.method = args.method or ["sleb", "block-influence"]
    args.compensate = args.compensate or ["refit", "lstsq"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "eval.jsonl").is_file():
        toy = args.benchmark == "toy"
        _cli(args.threads, *benchmark_data_args(args.benchmark, data, args.seed, 0,
                                                args.n_calib or (N_CALIB if toy else 40),
                                                args.n_eval or (N_EVAL if toy else 100)))
    infos = _prune_all(args, data, out)
    _evaluate(args, data, out, {"unpruned": args.model, **{n: str(out / n) for n in infos}})
    results = table(out, infos)
    (out / "results.json").write_text(json.dumps(_finite({"seed": args.seed, "model": args.model, **results}),
                                                 indent=1, allow_nan=False) + "\n")
    print((out / "table.md").read_text())


def table(out: Path, infos: dict[str, dict]) -> dict:
    """Every compensated model against its plain prune, per domain; writes ``table.md``."""
    from depthprune.evaluation.generation import predictions_path
    correct = {name: _correct(predictions_path(out / f"{name}.json")) for name in ["unpruned", *infos]}
    nll = {name: _mean_nll(predictions_path(out / f"{name}.json")) for name in ["unpruned", *infos]}
    rows, lines = {}, ["| model | removed | fit s | domain | unpruned | plain | compensated | loss back (95% CI) "
                       "| McNemar p vs plain | answer NLL unpruned / plain / compensated |",
                       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, info in infos.items():
        if "+" not in name:
            continue
        plain = name.split("+")[0]
        rows[name] = {}
        for d in DOMAINS:
            ids = sorted(correct["unpruned"][d])
            u, p, c = ([correct[m][d][i] for i in ids] for m in ("unpruned", plain, name))
            back, low, high = loss_back(u, p, c)
            only_c, only_p, p_value = mcnemar_exact(c, p)
            acc = {k: sum(v) / len(v) for k, v in (("unpruned", u), ("plain", p), ("compensated", c))}
            rows[name][d] = {**acc, "loss_back": back, "ci": [low, high], "only_compensated": only_c,
                             "only_plain": only_p, "p": p_value, "n": len(ids),
                             "nll": {m: nll[m][d] for m in ("unpruned", plain, name)}}
            r = rows[name][d]
            lines.append(f"| {name} | {','.join(map(str, info['removed_layers']))} | "
                         f"{info['compensation']['seconds']:.0f} | {d} | {r['unpruned']:.3f} | {r['plain']:.3f} | "
                         f"{r['compensated']:.3f} | {_share(back)} ({_share(low)}, {_share(high)}) | {r['p']:.2g} | "
                         f"{nll['unpruned'][d]:.3f} / {nll[plain][d]:.3f} / {nll[name][d]:.3f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    return {"rows": rows, "removed": {n: i["removed_layers"] for n, i in infos.items()}}


def _mean_nll(predictions: Path) -> dict[str, float]:
    """Mean answer NLL (nats/token) per domain from an eval's predictions file."""
    values: dict[str, list[float]] = {}
    for line in predictions.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("nll") is not None:
                values.setdefault(row["domain"], []).append(float(row["nll"]))
    return {d: sum(v) / len(v) for d, v in values.items()}


if __name__ == "__main__":
    main()
