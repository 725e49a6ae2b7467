"""`depthprune` command line: score, rank, prune, eval, data synth, demo, sweep.

Every command is a thin wrapper over the Python API (depthprune.api and friends). User
errors print one line naming the input and the fix, and exit with status 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Domain-aware depth pruning of Hugging Face VLMs and LLMs. "
                       "Decoder layers are numbered 0-based everywhere.")
data_app = typer.Typer(no_args_is_help=True, help="Data utilities (synthetic benchmark).")
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .data import DataError
    from .methods import RankError
    from .models import ModelError
    from .pruning import PruneError
    from .scores import ScoresError
    return (DataError, RankError, ModelError, PruneError, ScoresError, FileExistsError,
            FileNotFoundError, ValueError)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn known user errors into one red line on stderr and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


# Shared options -------------------------------------------------------------------------
Model = Annotated[str, typer.Argument(help="Checkpoint: a local directory, or a hub id (network used only then); "
                                            "'toy' is the bundled toy Qwen3-VL.")]
DataOpt = Annotated[list[Path], typer.Option("--data", help="JSONL file (repeat for several). Image paths are relative to it.")]
Dtype = Annotated[str, typer.Option(help="Weights dtype: auto (checkpoint's), float32, bfloat16, float16. Similarities are always computed in float32.")]
Device = Annotated[str, typer.Option(help="Device for the whole model, e.g. cpu, cuda, cuda:1.")]
DeviceMap = Annotated[str | None, typer.Option(help="'auto' spreads a model larger than one device (accelerate); overrides --device.")]
TrustRemote = Annotated[bool, typer.Option(help="Allow model code from the checkpoint (off by default: only transformers' own classes run).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")]
Method = Annotated[str, typer.Option(help="Ranking method: domain, mixed, block-influence, angular-block, last, uniform, random, spaced, iterative.")]
Budget = Annotated[str, typer.Option(help="Layers to remove: an integer count, or a fraction in (0, 1) of the decoder layers (rounded, at least 1).")]
Domain = Annotated[str | None, typer.Option(help="Domain label for --method domain (or --base domain).")]
Weights = Annotated[str | None, typer.Option(help="Domain weights for mixed, e.g. math=0.5,general=0.5 (default: equal). Each domain's scores are z-scored across removable layers, weights normalised to sum 1.")]
Base = Annotated[str, typer.Option(help="Score that spaced / iterative use: domain, mixed, block-influence.")]
TokenGroup = Annotated[str, typer.Option(help="Tokens the similarity is averaged over: all, text, image, last.")]
Seed = Annotated[int, typer.Option(help="Seed for --method random and the bootstrap.")]
AllowDeepstack = Annotated[bool, typer.Option(help="Allow removing Qwen3-VL deepstack-injection layers (0..2); moves where visual features are injected.")]
ProtectFirst = Annotated[int, typer.Option(min=0, help="Never remove the first K layers.")]
ProtectLast = Annotated[int, typer.Option(min=0, help="Never remove the last K layers.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing non-empty output.")]


def _plan_kwargs(domain, weights, base, token_group, seed, allow_deepstack, protect_first, protect_last) -> dict:
    from .methods import parse_weights
    return dict(domain=domain, weights=parse_weights(weights) if weights else None, base=base,
                token_group=token_group, seed=seed, allow_deepstack=allow_deepstack,
                protect_first=protect_first, protect_last=protect_last)


@app.command()
@handle_errors
def score(
    model: Model,
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Scores file to write (.json; a .safetensors file is written beside it).")],
    batch_size: BatchSize = 4,
    max_samples: Annotated[int | None, typer.Option(min=1, help="Use at most N records of each domain (first N in file order).")] = None,
    max_span: Annotated[int | None, typer.Option(min=1, help="Longest block (in layers) whose end-to-end similarity is recorded; default half the layers.")] = None,
    dtype: Dtype = "auto", device: Device = "cpu", device_map: DeviceMap = None,
    trust_remote_code: TrustRemote = False,
    overwrite: Overwrite = False,
) -> None:
    """Run calibration prompts through MODEL once and record every layer's similarity statistics."""
    from . import api
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: scores file exists. Choose another --out or pass --overwrite")
    scores = api.score(model, data, out, batch_size=batch_size, max_samples=max_samples, max_span=max_span,
                       dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code)
    counts = ", ".join(f"{d}: {int(scores.sample_mask(d).sum())}" for d in scores.domains)
    out_msg = (f"scored {len(scores.sample_ids)} samples ({counts}) over {scores.num_layers} layers "
               f"in {scores.settings['seconds']:.1f} s -> {out}")
    console.print(out_msg, highlight=False)


@app.command()
@handle_errors
def rank(
    scores: Annotated[Path, typer.Argument(help="Scores file from `depthprune score`.")],
    method: Method = "domain", budget: Budget = "0.25", domain: Domain = None, weights: Weights = None,
    base: Base = "mixed", token_group: TokenGroup = "all", seed: Seed = 0,
    allow_deepstack: AllowDeepstack = False, protect_first: ProtectFirst = 0, protect_last: ProtectLast = 0,
    save_plan: Annotated[Path | None, typer.Option(help="Write the plan (.plan.json) for `prune --plan`.")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Resamples for the stability estimate (0: skip).")] = 100,
) -> None:
    """Choose layers to remove from a scores file (no model pass) and print the table."""
    from . import api
    from .diagnostics import bootstrap_stability, plan_table
    from .methods import RankRequest
    from .scores import Scores
    loaded = Scores.load(scores)
    kwargs = _plan_kwargs(domain, weights, base, token_group, seed, allow_deepstack, protect_first, protect_last)
    the_plan = api.plan(loaded, method, budget, **kwargs)
    console.print(plan_table(the_plan))
    console.print(f"remove {the_plan.budget} of {the_plan.num_layers} layers (0-based): "
              f"{', '.join(map(str, the_plan.remove))}", highlight=False)
    if bootstrap:
        stability = bootstrap_stability(loaded, RankRequest(**the_plan.request), n_resamples=bootstrap,
                                        seed=seed)
        for dom, frac in stability.items():
            console.print(f"stability of {dom}: the same {the_plan.budget} layers in {frac:.0%} of "
                      f"{bootstrap} bootstrap resamples of that domain", highlight=False)
    if save_plan is not None:
        if not str(save_plan).endswith(".plan.json"):
            raise ValueError(f"{save_plan}: plan files must end in .plan.json")
        the_plan.save(save_plan)
        console.print(f"plan -> {save_plan}", highlight=False)


@app.command()
@handle_errors
def prune(
    model: Model,
    out_dir: Annotated[Path, typer.Option("--out", help="Output checkpoint directory (written atomically).")],
    scores: Annotated[Path | None, typer.Option(help="Scores file from `depthprune score`.")] = None,
    plan: Annotated[Path | None, typer.Option(help="Plan file from `depthprune rank --save-plan` (instead of --scores/--method).")] = None,
    layers: Annotated[str | None, typer.Option(help="Remove exactly these 0-based layers, e.g. 5,9,12 (instead of a method).")] = None,
    method: Method = "domain", budget: Budget = "0.25", domain: Domain = None, weights: Weights = None,
    base: Base = "mixed", token_group: TokenGroup = "all", seed: Seed = 0,
    allow_deepstack: AllowDeepstack = False, protect_first: ProtectFirst = 0, protect_last: ProtectLast = 0,
    data: Annotated[list[Path] | None, typer.Option("--data", help="Calibration JSONL for --method iterative (re-scores after each removal).")] = None,
    batch_size: BatchSize = 4,
    dtype: Dtype = "auto", device: Device = "cpu", device_map: DeviceMap = None,
    trust_remote_code: TrustRemote = False, overwrite: Overwrite = False,
) -> None:
    """Remove decoder layers from MODEL and save a stock Hugging Face checkpoint."""
    from . import api
    source = plan if plan is not None else scores
    kwargs = {} if plan is not None else _plan_kwargs(domain, weights, base, token_group, seed,
                                                      allow_deepstack, protect_first, protect_last)
    explicit = None
    if layers is not None:
        try:
            explicit = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--layers {layers!r}: give comma-separated 0-based integers, e.g. 5,9,12") from None
        source = None
    result = api.prune(model, source, out_dir, layers=explicit, method=method, budget=budget, data=data or None,
                       overwrite=overwrite, dtype=dtype, device=device, device_map=device_map,
                       trust_remote_code=trust_remote_code, batch_size=batch_size, **kwargs)
    import json
    info = json.loads((result / "pruning.json").read_text())
    console.print(f"removed layers {info['removed_layers']} (0-based) with {info['method']}: "
              f"{info['original_num_layers']} -> {info['num_layers']} layers -> {result}", highlight=False)


@app.command("eval")
@handle_errors
def eval_(
    model: Model,
    data: DataOpt,
    out_file: Annotated[Path, typer.Option("--out", help="Metrics JSON to write; per-sample predictions go beside it.")],
    batch_size: BatchSize = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Generation length limit.")] = 16,
    dtype: Dtype = "auto", device: Device = "cpu", device_map: DeviceMap = None,
    trust_remote_code: TrustRemote = False, overwrite: Overwrite = False,
) -> None:
    """Greedy-generate answers, score them per domain (accuracy, 95% CI) and the answer NLL."""
    from .evaluation import evaluate_path, format_metrics_table
    metrics = evaluate_path(model, data, out_file, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            dtype=dtype, device=device, device_map=device_map,
                            trust_remote_code=trust_remote_code, overwrite=overwrite)
    console.print(format_metrics_table(metrics))
    console.print(f"metrics -> {out_file}", highlight=False)


@data_app.command("synth")
@handle_errors
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to create (must not exist or be empty).")],
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
    n_train: Annotated[int, typer.Option(min=0, help="Training records (0: no train split).")] = 12000,
    n_calib: Annotated[int, typer.Option(min=0, help="Calibration records.")] = 128,
    n_eval: Annotated[int, typer.Option(min=0, help="Evaluation records.")] = 400,
) -> None:
    """Write the two-domain synthetic benchmark (math / general) with train, calib and eval splits.

    Eval and calib do not depend on --n-train: with --seed 0 and the default sizes they are
    the toy model's held-out splits.
    """
    from .synth import synthesize
    paths = synthesize(out_dir, seed=seed, n_train=n_train, n_calib=n_calib, n_eval=n_eval)
    for split, path in paths.items():
        console.print(f"{split}: {path}", highlight=False)


@app.command()
@handle_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory: the study's data, scores, results.sqlite and report.html. Run again with the same --out to resume.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="Fewer budgets (12%, 25%, 50%), variants and eval records (what the end-to-end test runs).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass (scoring and eval).")] = 32,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over: delete the demo files already in --out (data, scores, results, report) instead of resuming.")] = False,
) -> None:
    """A complete study on the bundled toy Qwen3-VL: every method, budgets 6% to 50%, healing at two budgets; writes the store and report, prints the headline."""
    from .demo import headline_table, run_demo
    from .sweep import summary_line
    if overwrite and out_dir.is_dir():
        import shutil
        for name in ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm", "scores.json",
                     "scores.safetensors", "study.yaml", "report.html", "report.md"):
            (out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(out_dir / "data", ignore_errors=True)
    result, head, report_path, notes = run_demo(out_dir, quick=quick, quiet=quiet, batch_size=batch_size)
    console.print(headline_table(head))
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    console.print(summary_line(result), highlight=False)
    if report_path is not None:
        console.print(f"report -> {report_path}", highlight=False)


@app.command()
@handle_errors
def sweep(
    study_file: Annotated[Path, typer.Argument(help="Study YAML: model, calibration, eval sets, methods, budgets, heal, metrics (format in README, section depthprune sweep).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory (created; an existing one is resumed: stored cells are not recomputed).")],
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run every cell of a study (method x budget x heal) into RUN_DIR/results.sqlite; resumable, and data-parallel under torchrun."""
    from .sweep import run_study, summary_line
    result = run_study(study_file, out_dir, quiet=quiet)
    for note in result.notes:
        console.print(f"note: skipped {note}", highlight=False)
    console.print(summary_line(result), highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
