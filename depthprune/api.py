"""The public Python API; the CLI is a thin layer over these functions.

    import depthprune as dp
    scores = dp.score("Qwen/Qwen3-VL-2B-Instruct", ["calib.jsonl"], out="scores.json")
    plan = dp.plan(scores, method="domain", domain="math", budget=0.25)
    dp.prune("Qwen/Qwen3-VL-2B-Instruct", plan, out="pruned/")

Layers are 0-based everywhere.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from depthprune.data.records import check_prompt_format, load_records, set_prompt_format
from depthprune.compensation import Compensation
from depthprune.compensation import check_plan as check_compensable
from depthprune.compensation.fit import compensate_model
from depthprune.compensation.fit import prepare as prepare_compensation
from depthprune.models.architectures import ModelError, adapter_for, find_decoder_layers, text_config
from depthprune.models.loading import DTYPES, load_config, load_model, resolve_model_id, validate_device
from depthprune.outputs import check_output, inputs_of
from depthprune.pruning import layers_removed, prune_layers, pruning_info, save_pruned
from depthprune.ranking.methods import SCORE_FREE, check_request
from depthprune.ranking.methods import rank as rank_scores
from depthprune.ranking.plan import Plan, RankError, RankRequest, check_layer_list, resolve_budget
from depthprune.ranking.protection import Protection
from depthprune.scoring.forward import ScoreSettings, cap_per_domain, score_model
from depthprune.scoring.scores import Scores
from depthprune.speed import count_parameters, expected_speedup

PathLike = str | os.PathLike
#: Methods that measure the model while they rank (they need --data), and what they do.
MEASURING = {"iterative": "re-scores the model's cosine similarities",
             "sleb": "re-measures the calibration answer NLL"}


def _as_list(paths: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def score(model: PathLike, data: PathLike | Sequence[PathLike], out: PathLike | None = None, *,
          batch_size: int = 4, max_samples: int | None = None, max_span: int | None = None,
          dtype: str = "auto", device: str = "cpu", device_map: str | None = None,
          trust_remote_code: bool = False, progress: bool = True, overwrite: bool = False,
          ablation: bool = False, ablation_cache_mb: float | None = None, prompt_format: str = "auto") -> Scores:
    """Score every decoder layer of checkpoint ``model`` on calibration JSONL ``data``.

    ``ablation``: also measure every record's answer NLL with each single layer removed
    (:mod:`depthprune.scoring.ablation_cache`: one base pass per batch, each removal resumed from the
    removed layer's cached input; every record needs an answer). ``ablation_cache_mb``: the
    cache's memory limit (default :data:`~depthprune.scoring.ablation_cache.DEFAULT_CACHE_MB`; past
    it the cache spills to a temporary directory). ``prompt_format``: auto, chat or plain
    (:func:`depthprune.data.records.set_prompt_format`), recorded in the scores' settings.
    Returns the :class:`Scores` (also written to ``out``, a ``.json`` path with a
    ``.safetensors`` beside it, if given; existing files only with ``overwrite``). Everything
    cheap (output, data, images, device, config) is checked before the weights load.
    """
    model = resolve_model_id(model)
    settings = ScoreSettings(batch_size=batch_size, max_samples=max_samples, max_span=max_span)
    inputs = inputs_of(model=model, data=_as_list(data))
    if out is not None:
        if not str(out).endswith(".json"):
            raise ValueError(f"--out {out}: the scores file name must end in .json")
        for target in (Path(out), Path(out).with_suffix(".safetensors")):
            check_output(target, overwrite, kind="file", inputs=inputs)
    records = load_records(_as_list(data))
    check_prompt_format(prompt_format, model)
    if ablation_cache_mb is not None and not (ablation and ablation_cache_mb > 0):
        raise ValueError(f"--ablation-cache-mb {ablation_cache_mb}: " + ("must be > 0" if ablation else
                         "applies to --ablation only; add --ablation or drop it"))
    if ablation:  # before the model loads
        from depthprune.scoring.ablation import require_answers
        require_answers(cap_per_domain(records, max_samples))
    num_layers = text_config(_check_model_cheaply(model, dtype, device, device_map,
                                                  trust_remote_code)).num_hidden_layers
    if max_span is not None and max_span > num_layers:
        raise ValueError(f"--max-span {max_span} is more than the model's {num_layers} decoder layers")
    net, processor = load_model(model, dtype=dtype, device=device, device_map=device_map,
                                trust_remote_code=trust_remote_code)
    used_format = set_prompt_format(processor, prompt_format, model)
    scores = score_model(net, processor, records, settings, model_id=str(model), progress=progress)
    scores.settings["data_files"] = [str(p) for p in _as_list(data)]
    scores.settings["prompt_format"] = used_format
    if ablation:
        from depthprune.scoring.ablation_cache import measure_ablation
        measure_ablation(scores, net, processor, cap_per_domain(records, max_samples), batch_size, progress,
                         ablation_cache_mb)
    if out is not None:
        scores.save(out, overwrite=overwrite)
    return scores


def _check_model_cheaply(model: PathLike, dtype: str, device: str, device_map: str | None,
                         trust_remote_code: bool) -> Any:
    """dtype, device and config checks that need no weights; returns the config."""
    if dtype not in DTYPES:
        raise ModelError(f"--dtype {dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
    validate_device(device, device_map)
    return load_config(model, trust_remote_code)


def empty_scores(num_layers: int, model_id: str, architecture_protected: list[int]) -> Scores:
    """Scores with no samples: enough for the score-free methods (last, uniform, random)."""
    n = num_layers
    return Scores(model_id=model_id, num_layers=n, max_span=1, sample_ids=[], sample_domains=[],
                  sums=torch.zeros(0, 2, 4, n, 1, dtype=torch.float64),
                  counts=torch.zeros(0, 4, dtype=torch.int64), protected_layers=list(architecture_protected))


def plan(scores: Scores | PathLike, method: str, budget: int | float | str, *,
         domain: str | None = None, weights: dict[str, float] | None = None, base: str = "mixed",
         token_group: str = "all", seed: int = 0, allow_deepstack: bool = False,
         protect_first: int = 0, protect_last: int = 0, score_fn: Any = None) -> Plan:
    """Choose the layers to remove with ``method`` under ``budget`` (int = layers, float in
    (0, 1) = fraction of decoder layers). Returns a :class:`Plan`; never runs the model
    (except through ``score_fn`` for ``iterative``)."""
    if not isinstance(scores, Scores):
        scores = Scores.load(scores)
    req = RankRequest(method=method, budget=budget, domain=domain, weights=weights, base=base,
                      token_group=token_group, seed=seed, allow_deepstack=allow_deepstack,
                      protect_first=protect_first, protect_last=protect_last)
    return rank_scores(scores, req, score_fn=score_fn)


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


def _given_plan(layers: Sequence[int] | None, plan_or_scores: Any, num_layers: int, arch_protected: list[int],
                flags: dict) -> Plan | None:
    """The plan the caller gave (explicit ``layers``, a Plan or a ``.plan.json``), checked against
    the model; None when a method is to choose one."""
    if layers is not None:
        return manual_plan(num_layers, layers, arch_protected, **flags)
    if isinstance(plan_or_scores, Plan) or (isinstance(plan_or_scores, (str, os.PathLike))
                                            and str(plan_or_scores).endswith(".plan.json")):
        source = "the plan" if isinstance(plan_or_scores, Plan) else str(plan_or_scores)
        loaded = plan_or_scores if isinstance(plan_or_scores, Plan) else Plan.load(plan_or_scores)
        return check_plan(loaded, num_layers, arch_protected, source, **flags)
    return None


def _method_inputs(model: PathLike, plan_or_scores: Any, method: str | None, budget: Any, data: Any,
                   num_layers: int, arch_protected: list[int], max_samples: int | None,
                   plan_kwargs: dict) -> tuple[Scores, list | None]:
    """For a method: its scores (empty for the score-free and measuring methods when none are
    given) and, for ``iterative`` / ``sleb``, their calibration records; every check that needs
    no model."""
    if method is None or budget is None:
        raise RankError("prune needs a plan, or a method and a budget (--method, --budget)")
    req = RankRequest(method=method, budget=budget, **{k: v for k, v in plan_kwargs.items()
                                                       if k in RankRequest.__dataclass_fields__})
    check_request(req)
    resolve_budget(budget, num_layers)
    if plan_or_scores is None:
        if method not in SCORE_FREE and method not in MEASURING:
            raise RankError(f"method '{method}' needs scores: pass --scores FILE (from `depthprune score`)")
        scores = empty_scores(num_layers, str(model), arch_protected)
    else:
        scores = plan_or_scores if isinstance(plan_or_scores, Scores) else Scores.load(plan_or_scores)
        if scores.num_layers != num_layers:
            raise RankError(f"the scores are of a model with {scores.num_layers} decoder layers but "
                            f"{model} has {num_layers}; re-run `depthprune score` on this model")
    if method not in MEASURING:
        return scores, None
    if data is None:
        raise RankError(f"method '{method}' {MEASURING[method]} after each removal: pass --data")
    records = load_records(_as_list(data))
    check_request(req, sorted({r.domain for r in records}), where="data")
    if method == "sleb":  # the objective's domains and their answers
        from depthprune.ranking.sleb import objective_weights
        from depthprune.scoring.ablation import SLEB_NEEDS, require_answers
        records = cap_per_domain(records, max_samples)
        used = objective_weights([r.domain for r in records], req)
        require_answers([r for r in records if r.domain in used], SLEB_NEEDS)
    return scores, records


def _measured_plan(net: Any, processor: Any, model: PathLike, scores: Scores, records: list, method: str,
                   budget: Any, batch_size: int, max_samples: int | None, ablation_cache_mb: float | None,
                   progress: bool, plan_kwargs: dict) -> Plan:
    """The plan of a method that runs the model after each removal: ``sleb`` (answer NLL from
    the prefix cache) or ``iterative`` (the cosines re-scored)."""
    if method == "sleb":
        from depthprune.ranking.sleb import Sleb
        from depthprune.scoring.ablation_cache import DEFAULT_CACHE_MB
        selector = Sleb(net, processor, records, batch_size, cache_mb=ablation_cache_mb or DEFAULT_CACHE_MB,
                        progress=progress)
        return plan(scores, method, budget, score_fn=selector, **plan_kwargs)
    settings = ScoreSettings(batch_size=batch_size, max_samples=max_samples)

    def rescore(removed: list[int]) -> Scores:
        with layers_removed(net, removed):
            return score_model(net, processor, records, settings, str(model), progress=progress)
    if not scores.sample_ids:  # no scores given: step 0 scores the full model
        scores = rescore([])
    return plan(scores, method, budget, score_fn=rescore, **plan_kwargs)


def _save_pruned_checkpoint(net: Any, processor: Any, model: PathLike, the_plan: Plan, num_layers: int,
                            out: PathLike, extra: dict, overwrite: bool) -> tuple[Path, dict]:
    """Prune ``net`` in place and save the stock checkpoint with its ``pruning.json``."""
    from depthprune.models.gguf import gguf_source
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


def prune(model: PathLike, plan_or_scores: Plan | Scores | PathLike | None, out: PathLike, *,
          layers: Sequence[int] | None = None, method: str | None = None, budget: int | float | str | None = None,
          data: PathLike | Sequence[PathLike] | None = None, overwrite: bool = False,
          dtype: str = "auto", device: str = "cpu", device_map: str | None = None,
          trust_remote_code: bool = False, batch_size: int = 4, max_samples: int | None = None,
          progress: bool = True, return_info: bool = False, ablation_cache_mb: float | None = None,
          compensate: Compensation | str | None = None, **plan_kwargs: Any) -> Path | tuple[Path, dict]:
    """Remove decoder layers from checkpoint ``model`` and save a stock checkpoint to ``out``.

    Pass explicit ``layers``, a :class:`Plan` (or a saved ``.plan.json``), or scores plus ``method`` and
    ``budget`` (and :func:`plan`'s keyword arguments); ``last``/``uniform``/``random`` need
    no scores, ``iterative`` and ``sleb`` need ``data`` (``sleb``: records with answers; its
    prefix caches are limited to ``ablation_cache_mb``). Returns the output directory (and, with
    ``return_info``, the ``pruning.json`` dict this call wrote).

    A ``.gguf`` ``out`` (for a GGUF ``model``) writes a GGUF file that keeps the source's
    quantized bytes, with the record in ``NAME.pruning.json`` beside it
    (:mod:`depthprune.models.gguf_out`); the weights are then never dequantised (except for
    ``iterative`` and ``sleb``, which run the model).

    ``compensate``: ``"lstsq"`` or ``"refit"`` (or a :class:`~depthprune.compensation.Compensation`)
    repairs each gap with a least-squares fit on the calibration ``data`` of the domain(s)
    ``domain`` / ``weights`` (all domains equally by default), folded into the kept weights
    (:mod:`depthprune.compensation`); a method then never removes layer 0. ``None`` / ``"none"``:
    plain removal.

    Everything that can be checked without the weights is checked first: the output (never
    the source, inside it or around it), dtype/device, the config, the plan or the scores and
    method, the data. Only then does the model load.
    """
    from depthprune.models.gguf_out import (
        check_gguf_compensation,
        check_gguf_output,
        check_layer_pattern,
        compensated_gguf_tensors,
        gguf_pruning_info,
        is_gguf_output,
        write_pruned_gguf,
    )
    model = resolve_model_id(model)
    if ablation_cache_mb is not None and not (method == "sleb" and ablation_cache_mb > 0):
        raise ValueError(f"--ablation-cache-mb {ablation_cache_mb}: " + ("must be > 0" if method == "sleb" else
                         "applies to --method sleb only; drop it"))
    reads = inputs_of(model=model, data=_as_list(data) if data is not None else [],
                      files=[plan_or_scores if isinstance(plan_or_scores, (str, os.PathLike)) else None])
    gguf_in = check_gguf_output(model, out, overwrite, reads) if is_gguf_output(out) else None
    if gguf_in is None:
        check_output(out, overwrite, kind="dir", inputs=reads)
    config = _check_model_cheaply(model, dtype, device, device_map, trust_remote_code)
    num_layers = text_config(config).num_hidden_layers
    calibration = prepare_compensation(compensate, data, plan_kwargs.get("domain"), plan_kwargs.get("weights"),
                                       max_samples)
    if calibration is not None and gguf_in is not None:
        check_gguf_compensation(gguf_in)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_model warns about untested architectures once
        arch_protected = adapter_for(config).protected(config)
    flags = {k: plan_kwargs[k] for k in ("allow_deepstack", "protect_first", "protect_last") if k in plan_kwargs}
    the_plan = _given_plan(layers, plan_or_scores, num_layers, arch_protected, flags)
    if the_plan is None and calibration is not None:  # a gap's repair folds into the layer before it
        plan_kwargs = dict(plan_kwargs, protect_first=max(plan_kwargs.get("protect_first") or 0, 1))
    if the_plan is None:
        scores, records = _method_inputs(model, plan_or_scores, method, budget, data, num_layers, arch_protected,
                                         max_samples, plan_kwargs)
        if records is None:  # a method on the scores alone: no model needed, fail early
            the_plan = plan(scores, method, budget, **plan_kwargs)
    net = processor = None

    def load() -> tuple[Any, Any]:
        loaded, proc = load_model(model, dtype=dtype, device=device, device_map=device_map,
                                  trust_remote_code=trust_remote_code)
        if len(find_decoder_layers(loaded)[1]) != num_layers:
            raise ModelError(f"{model}: the loaded model has {len(find_decoder_layers(loaded)[1])} decoder "
                             f"layers, its config says {num_layers}")
        return loaded, proc
    if the_plan is None:  # iterative / sleb: the model measures after each removal
        net, processor = load()
        the_plan = _measured_plan(net, processor, model, scores, records, method, budget, batch_size, max_samples,
                                  ablation_cache_mb, progress, plan_kwargs)
    if the_plan.scores_model_id and Path(str(the_plan.scores_model_id)).name != Path(str(model)).name:
        warnings.warn(f"scores were computed on '{the_plan.scores_model_id}', pruning '{model}'", stacklevel=2)
    req = the_plan.request
    extra = {"domain": req.get("domain"), "weights": req.get("weights"), "request": req,
             "protected_layers": the_plan.protected, "reasons": {str(k): v for k, v in the_plan.reasons.items()},
             "scores_fingerprint": the_plan.scores_fingerprint}
    if gguf_in is not None:
        check_layer_pattern(gguf_in, the_plan.remove)  # Gemma 3: only cuts that keep its layer pattern
    replaced: dict = {}
    if calibration is not None:
        check_compensable(the_plan.remove)
        if net is None:
            net, processor = load()
        extra["compensation"] = compensate_model(net, processor, calibration, the_plan.remove, batch_size, progress)
        if gguf_in is not None:
            replaced = compensated_gguf_tensors(net, extra["compensation"], the_plan.remove)
    if gguf_in is not None:  # the kept layers' quantized bytes, copied (the repaired ones written as F32)
        info = gguf_pruning_info(gguf_in, str(model), the_plan.remove, the_plan.method, req.get("budget"),
                                 extra=extra)
        info = write_pruned_gguf(gguf_in, out, info, overwrite=overwrite, progress=progress, replaced=replaced)
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


def rank(scores: PathLike, method: str, budget: int | float | str, *, save_plan: PathLike | None = None,
         overwrite: bool = False, bootstrap: int = 100, **plan_kwargs: Any) -> tuple[Plan, list[tuple[str, Any]]]:
    """`depthprune rank`: the :func:`plan` of ``method`` at ``budget`` from the scores file ``scores``,
    and its bootstrap stability per domain it reads (``bootstrap`` resamples of one domain's
    samples at a time; 0 skips it): ``[(domain, Stability), ...]`` (:mod:`depthprune.ranking.stability`).
    ``save_plan``: write the plan there (a ``.plan.json`` path, checked before any work)."""
    from depthprune.ranking.methods import domains_used
    from depthprune.ranking.stability import ranking_stability
    if save_plan is not None:
        if not str(save_plan).endswith(".plan.json"):
            raise RankError(f"--save-plan {save_plan}: plan files must end in .plan.json")
        check_output(save_plan, overwrite, kind="file", inputs=inputs_of(files=[scores]), option="--save-plan")
    loaded = Scores.load(scores)
    the_plan = plan(loaded, method, budget, **plan_kwargs)
    stability: list[tuple[str, Any]] = []
    if bootstrap:
        options = {k: v for k, v in the_plan.request.items() if k not in ("method", "budget")}
        for dom in domains_used(RankRequest(**the_plan.request), loaded.domains):
            stability += [(dom, s) for s in ranking_stability(loaded, [(method, method, options, the_plan.budget)],
                                                              bootstrap, plan_kwargs.get("seed", 0), domains=[dom])]
    if save_plan is not None:
        the_plan.save(save_plan, overwrite=overwrite)
    return the_plan, stability


def evaluate(model: PathLike, out: PathLike, *, data: PathLike | Sequence[PathLike] | None = None,
             lmms_tasks: Sequence[str] | None = None, include_path: PathLike | None = None, limit: int | None = None,
             lmms_model: str | None = None, lmms_model_args: str | None = None, batch_size: int = 8,
             max_new_tokens: int | None = None, dtype: str = "auto", device: str = "cpu",
             device_map: str | None = None, trust_remote_code: bool = False, overwrite: bool = False,
             prompt_format: str = "auto", baseline: PathLike | None = None) -> dict:
    """`depthprune eval`: greedy generation scored per domain on answered JSONL ``data``
    (:func:`depthprune.evaluation.generation.evaluate_path`), or lmms-eval ``lmms_tasks``
    (:func:`depthprune.evaluation.lmms.run`); exactly one of them. Writes ``out`` (metrics JSON)
    and the per-sample predictions beside it; returns the metrics dict. ``baseline``: the
    unpruned model's metrics file on the same data, for the accuracy retained per domain."""
    if (lmms_tasks is None) == (not data):
        raise ValueError("eval needs exactly one of --data FILE or --lmms-eval TASKS")
    if lmms_tasks is not None:
        if prompt_format != "auto" or baseline is not None:
            raise ValueError("--prompt-format and --baseline apply to --data; lmms-eval tasks format and score "
                             "their own prompts")
        from depthprune.evaluation import lmms
        return lmms.run(model, list(lmms_tasks), out, include_path=include_path, limit=limit, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, dtype=dtype, device=device_map or device,
                        lmms_model=lmms_model, model_args=lmms_model_args, overwrite=overwrite)
    from depthprune.evaluation.generation import evaluate_path
    return evaluate_path(model, data, out, batch_size=batch_size, max_new_tokens=max_new_tokens or 16, dtype=dtype,
                         device=device, device_map=device_map, trust_remote_code=trust_remote_code,
                         overwrite=overwrite, prompt_format=prompt_format, baseline=baseline)


def heal(model: PathLike, data: PathLike | Sequence[PathLike], out: PathLike, config: Any = None, **kwargs: Any) -> Path:
    """`depthprune heal`: brief supervised fine-tuning of ``model`` on answered JSONL ``data``
    into the stock checkpoint ``out``; ``config`` a :class:`depthprune.healing.recipe.HealConfig`
    (default recipe when None). Keyword arguments: :func:`depthprune.healing.checkpoint.heal`."""
    from depthprune.healing.checkpoint import heal as heal_checkpoint
    return heal_checkpoint(model, data, out, config, **kwargs)


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
    returns the task names, the group first (:func:`depthprune.evaluation.lmms.write_task`)."""
    from depthprune.evaluation.lmms import write_task
    return write_task(data, out, name=name, max_new_tokens=max_new_tokens, overwrite=overwrite)
