"""The public Python API; the CLI is a thin layer over these functions.

    import depthprune as dp
    scores = dp.score("Qwen/Qwen3-VL-2B-Instruct", ["calib.jsonl"], out="scores.json")
    plan = dp.plan(scores, method="domain", domain="math", budget=0.25)
    dp.prune("Qwen/Qwen3-VL-2B-Instruct", plan, out="pruned/")

Layers are 0-based everywhere.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from depthprune.compensation import Compensation
from depthprune.compensation import check_plan as check_compensable
from depthprune.compensation.fit import compensate_model
from depthprune.compensation.fit import prepare as prepare_compensation
from depthprune.data.records import load_records
from depthprune.evaluation.generation import evaluate_path, unpruned_accuracy, warn_near_floor
from depthprune.healing.command import heal as heal_checkpoint
from depthprune.healing.recipe import HealConfig
from depthprune.models.architectures import ModelError, adapter_for, find_decoder_layers, text_config
from depthprune.models.gguf import gguf_source
from depthprune.models.gguf_out import (
    check_gguf_compensation,
    check_gguf_output,
    check_layer_pattern,
    compensated_gguf_tensors,
    gguf_pruning_info,
    is_gguf_output,
    write_pruned_gguf,
)
from depthprune.models.loading import check_model, load_spec, resolve_model_id
from depthprune.options import CalibrationRun, LmmsTasks, ModelSpec, RankRequest, ScoreSettings
from depthprune.outputs import check_output, inputs_of
from depthprune.pruning import layers_removed, prune_layers, pruning_info, save_pruned
from depthprune.ranking.methods import METHODS, check_request, domains_used, rescoring
from depthprune.ranking.methods import rank as rank_scores
from depthprune.ranking.plan import Plan, RankError, check_layer_list, resolve_budget
from depthprune.ranking.protection import Protection
from depthprune.ranking.registry import MODEL
from depthprune.ranking.sleb import Sleb, objective_weights
from depthprune.ranking.stability import ranking_stability
from depthprune.scoring.ablation import SLEB_NEEDS, require_answers
from depthprune.scoring.ablation_cache import DEFAULT_CACHE_MB, measure_ablation
from depthprune.scoring.forward import cap_per_domain, score_model
from depthprune.scoring.scores import Scores
from depthprune.settings import quiet
from depthprune.speed import count_parameters, expected_speedup

PathLike = str | os.PathLike


def _as_list(paths: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def score(model: ModelSpec | PathLike, data: PathLike | Sequence[PathLike], out: PathLike | None = None, *,
          settings: ScoreSettings | None = None, ablation: bool = False, ablation_cache_mb: float | None = None,
          overwrite: bool = False, progress: bool = True) -> Scores:
    """Score every decoder layer of ``model`` (a :class:`~depthprune.options.ModelSpec` or a
    checkpoint id) on calibration JSONL ``data``; ``settings``: batch size, samples per domain,
    longest block (:class:`~depthprune.options.ScoreSettings`).

    ``ablation``: also measure every record's answer NLL with each single layer removed
    (:mod:`depthprune.scoring.ablation_cache`: one base pass per batch, each removal resumed from the
    removed layer's cached input; every record needs an answer). ``ablation_cache_mb``: the
    cache's memory limit (default :data:`~depthprune.scoring.ablation_cache.DEFAULT_CACHE_MB`; past
    it the cache spills to a temporary directory). The prompt format used is recorded in the
    scores' settings. Returns the :class:`Scores` (also written to ``out``, a ``.json`` path with a
    ``.safetensors`` beside it, if given; existing files only with ``overwrite``). Everything
    cheap (output, data, images, device, config) is checked before the weights load.
    """
    spec = ModelSpec.of(model)
    settings = settings or ScoreSettings()
    model = resolve_model_id(spec.id)
    inputs = inputs_of(model=model, data=_as_list(data))
    if out is not None:
        if not str(out).endswith(".json"):
            raise ValueError(f"--out {out}: the scores file name must end in .json")
        for target in (Path(out), Path(out).with_suffix(".safetensors")):
            check_output(target, overwrite, kind="file", inputs=inputs)
    records = load_records(_as_list(data))
    if ablation_cache_mb is not None and not (ablation and ablation_cache_mb > 0):
        raise ValueError(f"--ablation-cache-mb {ablation_cache_mb}: " + ("must be > 0" if ablation else
                         "applies to --ablation only; add --ablation or drop it"))
    if ablation:  # before the model loads
        require_answers(cap_per_domain(records, settings.max_samples))
    num_layers = text_config(check_model(spec)).num_hidden_layers
    if settings.max_span is not None and settings.max_span > num_layers:
        raise ValueError(f"--max-span {settings.max_span} is more than the model's {num_layers} decoder layers")
    net, processor, used_format = load_spec(spec)
    scores = score_model(net, processor, records, settings, model_id=str(model), progress=progress)
    scores.settings["data_files"] = [str(p) for p in _as_list(data)]
    scores.settings["prompt_format"] = used_format
    if ablation:
        measure_ablation(scores, net, processor, cap_per_domain(records, settings.max_samples), settings.batch_size,
                         progress, ablation_cache_mb)
        # for `prune --method ablation`'s floor check
        scores.settings["unpruned_accuracy"] = {d: list(v) for d, v in unpruned_accuracy(
            net, processor, records, sorted({r.domain for r in records}), settings.batch_size).items()}
    if out is not None:
        scores.save(out, overwrite=overwrite)
    return scores


def empty_scores(num_layers: int, model_id: str, architecture_protected: list[int]) -> Scores:
    """Scores with no samples: enough for the score-free methods (last, uniform, random)."""
    n = num_layers
    return Scores(model_id=model_id, num_layers=n, max_span=1, sample_ids=[], sample_domains=[],
                  sums=torch.zeros(0, 2, 4, n, 1, dtype=torch.float64),
                  counts=torch.zeros(0, 4, dtype=torch.int64), protected_layers=list(architecture_protected))


def plan(scores: Scores | PathLike, request: RankRequest | str, budget: int | float | str | None = None, *,
         measured: Any = None) -> Plan:
    """Choose the layers to remove as ``request`` says (a :class:`~depthprune.options.RankRequest`,
    or a method name with ``budget``: int = layers, float in (0, 1) = fraction of decoder
    layers). Returns a :class:`Plan`; never runs the model (except through ``measured``, the
    model hook of ``iterative`` or ``sleb``: :func:`depthprune.ranking.methods.rank`)."""
    if not isinstance(scores, Scores):
        scores = Scores.load(scores)
    if not isinstance(request, RankRequest):
        request = RankRequest(method=request, budget=budget)
    elif budget is not None:
        request = dataclasses.replace(request, budget=budget)
    return rank_scores(scores, request, measured=measured)


def manual_plan(num_layers: int, layers: Sequence[int], architecture_protected: list[int],
                allow_deepstack: bool = False, protect_first: int = 0, protect_last: int = 0) -> Plan:
    """A plan removing exactly ``layers`` (0-based): integers, distinct, within the model, at
    least one layer left, none protected. Raises RankError naming --layers."""
    protection = Protection(allow_deepstack, protect_first, protect_last)
    req = RankRequest(method="manual", budget=len(layers), **protection.request_kwargs())
    protected = protection.layers(num_layers, architecture_protected)
    remove = check_layer_list(list(layers), num_layers, f"--layers {','.join(map(str, layers))}")
    protection.check(remove, protected, architecture_protected, "--layers")
    req_dict = {k: v for k, v in vars(req).items()}
    req_dict["layers"] = remove
    return Plan(method="manual", num_layers=num_layers, budget=len(remove), remove=remove,
                protected=protected, reasons={i: "requested with --layers" for i in remove}, columns={},
                request=req_dict)


def check_plan(the_plan: Plan, num_layers: int, architecture_protected: list[int], source: str,
               allow_deepstack: bool = False, protect_first: int = 0, protect_last: int = 0) -> Plan:
    """Validate a given plan (a file or an object) against the model exactly as ``--layers``:
    layer count, integers, distinct, range, and the protection the model needs (the plan's
    own request flags, or the ones passed here, may lift it). Returns the plan."""
    if the_plan.num_layers != num_layers:
        raise RankError(f"{source}: the plan is for a model of {the_plan.num_layers} decoder layers but "
                        f"the model has {num_layers}; rank again on scores of this model")
    remove = check_layer_list(list(the_plan.remove), num_layers, f"{source}: 'remove'")
    protection = Protection.from_request(the_plan.request).union(
        Protection(allow_deepstack, protect_first, protect_last))
    protection.check(remove, protection.layers(num_layers, architecture_protected), architecture_protected, source)
    return the_plan


def _given_plan(source: Any, num_layers: int, arch_protected: list[int], flags: dict) -> Plan | None:
    """The plan the caller gave (a list of layers, a Plan or a ``.plan.json``), checked against
    the model; None when a method is to choose one."""
    if isinstance(source, (list, tuple)):
        return manual_plan(num_layers, source, arch_protected, **flags)
    if isinstance(source, Plan) or (isinstance(source, (str, os.PathLike)) and str(source).endswith(".plan.json")):
        where = "the plan" if isinstance(source, Plan) else str(source)
        loaded = source if isinstance(source, Plan) else Plan.load(source)
        return check_plan(loaded, num_layers, arch_protected, where, **flags)
    return None


def _method_inputs(model: PathLike, source: Any, req: RankRequest | None, calibration: CalibrationRun,
                   num_layers: int, arch_protected: list[int]) -> tuple[Scores, list | None]:
    """For a method: its scores (empty for the score-free and measuring methods when none are
    given) and, for ``iterative`` / ``sleb``, their calibration records; every check that needs
    no model."""
    if req is None or req.method is None or req.budget is None:
        raise RankError("prune needs a plan, or a method and a budget (--method, --budget)")
    method = req.method
    check_request(req)
    spec = METHODS[method]
    resolve_budget(req.budget, num_layers)
    if source is None:
        if spec.reads_scores:
            raise RankError(f"method '{method}' needs scores: pass --scores FILE (from `depthprune score`)")
        scores = empty_scores(num_layers, str(model), arch_protected)
    else:
        scores = source if isinstance(source, Scores) else Scores.load(source)
        if scores.num_layers != num_layers:
            raise RankError(f"the scores are of a model with {scores.num_layers} decoder layers but "
                            f"{model} has {num_layers}; re-run `depthprune score` on this model")
    if spec.needs != MODEL:
        return scores, None
    if calibration.data is None:
        raise RankError(f"method '{method}' {spec.measures} after each removal: pass --data")
    records = load_records(_as_list(calibration.data))
    check_request(req, sorted({r.domain for r in records}), where="data")
    if method == "sleb":  # the objective's domains and their answers
        records = cap_per_domain(records, calibration.max_samples)
        used = objective_weights([r.domain for r in records], req)
        require_answers([r for r in records if r.domain in used], SLEB_NEEDS)
    return scores, records


def _warn_floor_from_scores(scores: Scores, method: str, domain: str | None) -> None:
    """`ablation --domain D`: the unpruned model's accuracy on D's calibration records, measured by
    `score --ablation`, near the floor means the ablation NLL ranking for D is not validated."""
    measured = scores.settings.get("unpruned_accuracy")
    value = measured.get(domain) if isinstance(measured, dict) else None
    if method == "ablation" and isinstance(value, list) and len(value) == 2 and all(isinstance(x, int) for x in value):
        warn_near_floor({domain: (value[0], value[1])}, f"--method ablation --domain {domain}")


def _measured_plan(net: Any, processor: Any, scores: Scores, records: list, req: RankRequest,
                   calibration: CalibrationRun) -> Plan:
    """The plan of a method that runs the model after each removal: ``sleb`` (answer NLL from
    the prefix cache) or ``iterative`` (the cosines re-scored)."""
    progress = not quiet()
    if req.method == "sleb":
        if req.domain:  # a domain the model cannot answer: its NLL objective is gamed
            warn_near_floor(unpruned_accuracy(net, processor, records, [req.domain], calibration.batch_size),
                            f"--method sleb --domain {req.domain}")
        selector = Sleb(net, processor, records, calibration.batch_size,
                        cache_mb=calibration.cache_mb or DEFAULT_CACHE_MB, progress=progress)
        return plan(scores, req, measured=selector)
    settings = ScoreSettings(batch_size=calibration.batch_size, max_samples=calibration.max_samples)

    def rescore(removed: list[int]) -> Scores:
        with layers_removed(net, removed):
            return score_model(net, processor, records, settings, scores.model_id, progress=progress)
    if not scores.sample_ids:  # no scores given: step 0 scores the full model
        scores = rescore([])
    return plan(scores, req, measured=rescoring(rescore))


def _save_pruned_checkpoint(net: Any, processor: Any, model: PathLike, the_plan: Plan, num_layers: int,
                            out: PathLike, extra: dict, overwrite: bool) -> tuple[Path, dict]:
    """Prune ``net`` in place and save the stock checkpoint with its ``pruning.json``."""
    params_before = count_parameters(net)
    prune_layers(net, the_plan.remove)
    speedup = expected_speedup(num_layers, len(the_plan.remove), params_before, count_parameters(net))
    info = pruning_info(str(model), num_layers, the_plan.remove, the_plan.method, the_plan.request.get("budget"),
                        extra=dict(extra, expected_speedup=speedup))
    files_from: PathLike = model
    if gguf_source(net) is not None:  # e.g. {"gguf_file": ".../x.Q4_1.gguf", "quantization": "Q4_1", ...}
        info["gguf_source"] = gguf_source(net)
        files_from = gguf_source(net)["converted_dir"]  # its tokenizer files, copied byte-for-byte
    return save_pruned(net, processor, out, info, source_model=files_from, overwrite=overwrite), info


def prune(model: ModelSpec | PathLike, source: Plan | Scores | PathLike | Sequence[int] | None, out: PathLike, *,
          request: RankRequest | None = None, calibration: CalibrationRun | None = None,
          compensate: Compensation | str | None = None, overwrite: bool = False,
          return_info: bool = False) -> Path | tuple[Path, dict]:
    """Remove decoder layers from ``model`` (a :class:`~depthprune.options.ModelSpec` or a
    checkpoint id) and save a stock checkpoint to ``out``.

    ``source``: explicit 0-based layers (a list), a :class:`Plan` (or a saved ``.plan.json``), or
    scores (a :class:`Scores` or its file) ranked as ``request`` says; ``None`` with a request
    of a score-free method (``last``/``uniform``/``random``) or a measuring one (``iterative``,
    ``sleb``: they need ``calibration.data``, ``sleb`` records with answers; its prefix caches are
    limited to ``calibration.cache_mb``). A given plan or layer list reads only the request's
    protection flags. Returns the output directory (and, with ``return_info``, the
    ``pruning.json`` dict this call wrote).

    A ``.gguf`` ``out`` (for a GGUF ``model``) writes a GGUF file that keeps the source's
    quantized bytes, with the record in ``NAME.pruning.json`` beside it
    (:mod:`depthprune.models.gguf_out`); the weights are then never dequantised (except for
    ``iterative`` and ``sleb``, which run the model).

    ``compensate``: ``"lstsq"`` or ``"refit"`` (or a :class:`~depthprune.compensation.Compensation`)
    repairs each gap with a least-squares fit on the calibration data of the request's domain(s)
    ``domain`` / ``weights`` (all domains equally by default), folded into the kept weights
    (:mod:`depthprune.compensation`); a method then never removes layer 0. ``None`` / ``"none"``:
    plain removal.

    Everything that can be checked without the weights is checked first: the output (never
    the source, inside it or around it), dtype/device, the config, the plan or the scores and
    method, the data. Only then does the model load.
    """
    spec, calibration = ModelSpec.of(model), calibration or CalibrationRun()
    model = resolve_model_id(spec.id)
    measuring = request is not None and request.method == "sleb"
    if calibration.cache_mb is not None and not (measuring and calibration.cache_mb > 0):
        raise ValueError(f"--ablation-cache-mb {calibration.cache_mb}: " + ("must be > 0" if measuring else
                         "applies to --method sleb only; drop it"))
    reads = inputs_of(model=model, data=_as_list(calibration.data) if calibration.data is not None else [],
                      files=[source if isinstance(source, (str, os.PathLike)) else None])
    gguf_in = check_gguf_output(model, out, overwrite, reads) if is_gguf_output(out) else None
    if gguf_in is None:
        check_output(out, overwrite, kind="dir", inputs=reads)
    config = check_model(spec)
    num_layers = text_config(config).num_hidden_layers
    repair = prepare_compensation(compensate, calibration.data, request and request.domain,
                                  request and request.weights, calibration.max_samples)
    if repair is not None and gguf_in is not None:
        check_gguf_compensation(gguf_in)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_model warns about untested architectures once
        arch_protected = adapter_for(config).protected(config)
    the_plan = _given_plan(source, num_layers, arch_protected, request.protection_only() if request else {})
    if the_plan is None and repair is not None:  # a gap's repair folds into the layer before it
        request = dataclasses.replace(request, protect_first=max(request.protect_first or 0, 1))
    if the_plan is None:
        scores, records = _method_inputs(model, source, request, calibration, num_layers, arch_protected)
        if records is None:  # a method on the scores alone: no model needed, fail early
            the_plan = plan(scores, request)
            _warn_floor_from_scores(scores, request.method, request.domain)
    net = processor = None

    def load() -> tuple[Any, Any]:
        loaded, proc, _ = load_spec(spec)
        if len(find_decoder_layers(loaded)[1]) != num_layers:
            raise ModelError(f"{model}: the loaded model has {len(find_decoder_layers(loaded)[1])} decoder "
                             f"layers, its config says {num_layers}")
        return loaded, proc
    if the_plan is None:  # iterative / sleb: the model measures after each removal
        net, processor = load()
        the_plan = _measured_plan(net, processor, scores, records, request, calibration)
    if the_plan.scores_model_id and Path(str(the_plan.scores_model_id)).name != Path(str(model)).name:
        warnings.warn(f"scores were computed on '{the_plan.scores_model_id}', pruning '{model}'", stacklevel=2)
    req = the_plan.request
    extra = {"domain": req.get("domain"), "weights": req.get("weights"), "request": req,
             "protected_layers": the_plan.protected, "reasons": {str(k): v for k, v in the_plan.reasons.items()},
             "scores_fingerprint": the_plan.scores_fingerprint}
    if gguf_in is not None:
        check_layer_pattern(gguf_in, the_plan.remove)  # Gemma 3: only cuts that keep its layer pattern
    replaced: dict = {}
    if repair is not None:
        check_compensable(the_plan.remove)
        if net is None:
            net, processor = load()
        extra["compensation"] = compensate_model(net, processor, repair, the_plan.remove, calibration.batch_size,
                                                 not quiet())
        if gguf_in is not None:
            replaced = compensated_gguf_tensors(net, extra["compensation"], the_plan.remove)
    if gguf_in is not None:  # the kept layers' quantized bytes, copied (the repaired ones written as F32)
        info = gguf_pruning_info(gguf_in, str(model), the_plan.remove, the_plan.method, req.get("budget"),
                                 extra=extra)
        info = write_pruned_gguf(gguf_in, out, info, overwrite=overwrite, progress=not quiet(), replaced=replaced)
        return (Path(out), info) if return_info else Path(out)
    if net is None:
        net, processor = load()
    path, info = _save_pruned_checkpoint(net, processor, model, the_plan, num_layers, out, extra, overwrite)
    return (path, info) if return_info else path


def diagnose(scores: Scores | PathLike, layers: Sequence[int] | None = None, *, out: PathLike | None = None,
             overwrite: bool = False) -> dict:
    """How well each similarity signal (token group x domain) predicts each domain's
    single-layer ablation damage: Spearman correlations and the damage table (see
    :func:`depthprune.scoring.signals.diagnose`). ``scores`` must come from ``score(..., ablation=True)``.
    ``out``: also write the result as JSON there (checked before any work, atomically)."""
    import json

    from depthprune.outputs import write_text_atomic
    from depthprune.scoring.signals import diagnose as _diagnose
    if out is not None:
        check_output(out, overwrite, kind="file",
                     inputs=inputs_of(files=[scores] if isinstance(scores, (str, os.PathLike)) else []))
    if not isinstance(scores, Scores):
        scores = Scores.load(scores)
    result = _diagnose(scores, None if layers is None else list(layers))
    if out is not None:
        write_text_atomic(out, json.dumps(result, indent=1, allow_nan=False), overwrite)
    return result


def rank(scores: PathLike, request: RankRequest | str, budget: int | float | str | None = None, *,
         save_plan: PathLike | None = None, overwrite: bool = False, bootstrap: int = 100
         ) -> tuple[Plan, list[tuple[str, Any]]]:
    """`depthprune rank`: the :func:`plan` of ``request`` from the scores file ``scores``, and its
    bootstrap stability per domain it reads (``bootstrap`` resamples of one domain's samples at
    a time; 0 skips it): ``[(domain, Stability), ...]`` (:mod:`depthprune.ranking.stability`).
    ``save_plan``: write the plan there (a ``.plan.json`` path, checked before any work)."""
    if save_plan is not None:
        if not str(save_plan).endswith(".plan.json"):
            raise RankError(f"--save-plan {save_plan}: plan files must end in .plan.json")
        check_output(save_plan, overwrite, kind="file", inputs=inputs_of(files=[scores]), option="--save-plan")
    loaded = Scores.load(scores)
    the_plan = plan(loaded, request, budget)
    stability: list[tuple[str, Any]] = []
    if bootstrap:
        method = the_plan.request["method"]
        options = {k: v for k, v in the_plan.request.items() if k not in ("method", "budget")}
        for dom in domains_used(RankRequest(**the_plan.request), loaded.domains):
            stability += [(dom, s) for s in ranking_stability(loaded, [(method, method, options, the_plan.budget)],
                                                              bootstrap, the_plan.request.get("seed", 0),
                                                              domains=[dom])]
    if save_plan is not None:
        the_plan.save(save_plan, overwrite=overwrite)
    return the_plan, stability


def evaluate(model: ModelSpec | PathLike, out: PathLike, *, data: PathLike | Sequence[PathLike] | None = None,
             lmms: LmmsTasks | None = None, batch_size: int = 8, max_new_tokens: int | None = None,
             overwrite: bool = False, baseline: PathLike | None = None) -> dict:
    """`depthprune eval`: greedy generation scored per domain on answered JSONL ``data``
    (:func:`depthprune.evaluation.generation.evaluate_path`), or lmms-eval tasks ``lmms``
    (:func:`depthprune.evaluation.lmms.run`); exactly one of them. ``model``: a
    :class:`~depthprune.options.ModelSpec` or a checkpoint id. Writes ``out`` (metrics JSON)
    and the per-sample predictions beside it; returns the metrics dict. ``baseline``: the
    unpruned model's metrics file on the same data, for the accuracy retained per domain."""
    spec = ModelSpec.of(model)
    lmms = lmms if lmms is not None and lmms.tasks else None
    if (lmms is None) == (not data):
        raise ValueError("eval needs exactly one of --data FILE or --lmms-eval TASKS")
    if lmms is not None:
        if spec.prompt_format != "auto" or baseline is not None:
            raise ValueError("--prompt-format and --baseline apply to --data; lmms-eval tasks format and score "
                             "their own prompts")
        from depthprune.evaluation import lmms as lmms_eval  # optional extra (lmms-eval)
        return lmms_eval.run(spec, lmms, out, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             overwrite=overwrite)
    return evaluate_path(spec, data, out, batch_size=batch_size, max_new_tokens=max_new_tokens or 16,
                         overwrite=overwrite, baseline=baseline)


def heal(model: ModelSpec | PathLike, data: PathLike | Sequence[PathLike], out: PathLike,
         recipe: HealConfig | None = None, *, teacher: PathLike | None = None, resume: bool = False,
         overwrite: bool = False) -> Path:
    """`depthprune heal`: brief supervised fine-tuning of ``model`` (a
    :class:`~depthprune.options.ModelSpec` or a checkpoint id, then loaded in float32) on
    answered JSONL ``data`` into the stock checkpoint ``out``; ``recipe`` a
    :class:`depthprune.healing.recipe.HealConfig` (default recipe when None); ``teacher``: the
    unpruned model to distil from; ``resume``: continue an interrupted run
    (:func:`depthprune.healing.command.heal`)."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec(id=model, dtype="float32")
    return heal_checkpoint(spec, data, out, recipe, teacher=teacher, resume=resume, overwrite=overwrite)


def sweep(study: PathLike, out: PathLike, *, quiet: bool = False, jobs: int | None = None) -> Any:
    """`depthprune sweep`: every cell of the study file ``study`` into the run directory ``out``
    (resumable), its plans evaluated by ``jobs`` worker processes (None: one per usable core on
    the CPU; 1: in this process); returns a :class:`depthprune.study.sweep.SweepResult`."""
    from depthprune.study.sweep import run_study
    return run_study(study, out, quiet=quiet, jobs=jobs)


def report(run_dir: PathLike, out: PathLike | None = None, *, resamples: int = 50, seed: int = 0,
           progress: bool = True, overwrite: bool = False) -> Path:
    """`depthprune report`: the regime report of a run directory (HTML, Markdown, regimes.json);
    returns the HTML path (:func:`depthprune.reporting.html.write_report`)."""
    from depthprune.reporting.html import write_report
    return write_report(run_dir, out, resamples=resamples, seed=seed, progress=progress, overwrite=overwrite)


def demo(out: PathLike = "runs/demo", *, quick: bool = False, quiet: bool = False, batch_size: int = 32,
         overwrite: bool = False, jobs: int | None = None) -> Any:
    """`depthprune demo`: the whole study on the bundled toy in ``out`` (resumable) and its
    report, its plans evaluated by ``jobs`` worker processes (as :func:`sweep`); returns
    ``(SweepResult, Headline, report path, notes)`` (:func:`depthprune.toy.demo.run_demo`)."""
    from depthprune.toy.demo import run_demo
    return run_demo(out, quick=quick, quiet=quiet, batch_size=batch_size, overwrite=overwrite, jobs=jobs)


def synth_data(out: PathLike, *, seed: int = 0, n_train: int = 4800, n_calib: int = 256,
               n_eval: int = 1200) -> dict[str, Path]:
    """`depthprune data synth`: the toy's two-domain image benchmark in the new directory ``out``;
    returns ``{split: JSONL path}``."""
    from depthprune.data.synth import synthesize
    check_output(out, overwrite=False)
    return synthesize(out, seed=seed, n_train=n_train, n_calib=n_calib, n_eval=n_eval)


def text_data(out: PathLike, *, seed: int = 0, n_calib: int = 40, n_eval: int = 100, n_train: int = 0,
              overwrite: bool = False) -> dict[str, Path]:
    """`depthprune data text`: the two-domain text benchmark in ``out``; returns ``{split: path}``."""
    from depthprune.data.textbench import write_text_benchmark
    return write_text_benchmark(out, seed=seed, n_calib=n_calib, n_eval=n_eval, n_train=n_train,
                                overwrite=overwrite)


def lmms_task(data: PathLike | Sequence[PathLike], out: PathLike, *, name: str = "depthprune_local",
              max_new_tokens: int = 16, overwrite: bool = False) -> list[str]:
    """`depthprune data lmms-task`: answered JSONL records as a local lmms-eval task directory;
    returns the task names, the group first (:func:`depthprune.evaluation.lmms_task.write_task`)."""
    from depthprune.evaluation.lmms_task import write_task
    return write_task(data, out, name=name, max_new_tokens=max_new_tokens, overwrite=overwrite)
