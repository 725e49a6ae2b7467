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

from .data import load_records
from .methods import SCORE_FREE, Plan, RankError, RankRequest, rank
from .models import find_decoder_layers, load_model, protected_layers, resolve_model_id
from .pruning import layers_removed, prepare_output_dir, prune_layers, pruning_info, save_pruned
from .scores import Scores
from .scoring import ScoreSettings, cap_per_domain, score_model

PathLike = str | os.PathLike


def _as_list(paths: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def score(model: PathLike, data: PathLike | Sequence[PathLike], out: PathLike | None = None, *,
          batch_size: int = 4, max_samples: int | None = None, max_span: int | None = None,
          dtype: str = "auto", device: str = "cpu", device_map: str | None = None,
          trust_remote_code: bool = False, progress: bool = True, ablation: bool = False) -> Scores:
    """Score every decoder layer of checkpoint ``model`` on calibration JSONL ``data``.

    ``ablation``: also measure every record's answer NLL with each single layer removed
    (:mod:`depthprune.ablation`; one more forward per layer; every record needs an answer).
    Returns the :class:`Scores` (also written to ``out``, a ``.json`` path, if given).
    """
    model = resolve_model_id(model)
    settings = ScoreSettings(batch_size=batch_size, max_samples=max_samples, max_span=max_span)
    records = load_records(_as_list(data))
    if out is not None and not str(out).endswith(".json"):
        raise ValueError(f"{out}: the scores file name must end in .json")
    if ablation:  # before the model loads
        from .ablation import require_answers
        require_answers(cap_per_domain(records, max_samples))
    net, processor = load_model(model, dtype=dtype, device=device, device_map=device_map,
                                trust_remote_code=trust_remote_code)
    scores = score_model(net, processor, records, settings, model_id=str(model), progress=progress)
    scores.settings["data_files"] = [str(p) for p in _as_list(data)]
    if ablation:
        import time

        from .ablation import ablation_nll
        started = time.perf_counter()
        scores.base_nll, scores.ablation_nll = ablation_nll(
            net, processor, cap_per_domain(records, max_samples), batch_size=batch_size, progress=progress)
        scores.settings["ablation"] = {"seconds": round(time.perf_counter() - started, 3),
                                       "measure": "answer NLL, nats/token, one layer removed at a time"}
    if out is not None:
        scores.save(out)
    return scores


def empty_scores(model: torch.nn.Module, model_id: str) -> Scores:
    """Scores with no samples: enough for the score-free methods (last, uniform, random)."""
    n = len(find_decoder_layers(model)[1])
    return Scores(model_id=model_id, num_layers=n, max_span=1, sample_ids=[], sample_domains=[],
                  sums=torch.zeros(0, 2, 4, n, 1, dtype=torch.float64),
                  counts=torch.zeros(0, 4, dtype=torch.int64), protected_layers=protected_layers(model))


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
    return rank(scores, req, score_fn=score_fn)


def manual_plan(num_layers: int, layers: Sequence[int], architecture_protected: list[int],
                allow_deepstack: bool = False, protect_first: int = 0, protect_last: int = 0) -> Plan:
    """A plan removing exactly ``layers`` (0-based), refusing protected ones."""
    from .methods import protected_layers as protected_for
    req = RankRequest(method="manual", budget=len(layers), allow_deepstack=allow_deepstack,
                      protect_first=protect_first, protect_last=protect_last)
    protected = protected_for(num_layers, architecture_protected, req)
    remove = sorted(set(int(i) for i in layers))
    bad = [i for i in remove if not 0 <= i < num_layers]
    if bad or not remove or len(remove) >= num_layers:
        raise RankError(f"--layers {list(layers)}: layers must be distinct, 0-based, within 0..{num_layers - 1}, "
                        "and at least one layer must remain")
    hit = [i for i in remove if i in protected]
    if hit:
        why = ("Qwen3-VL deepstack-injection layers; pass --allow-deepstack to remove them anyway"
               if set(hit) & set(architecture_protected) and not allow_deepstack
               else "protected by --protect-first/--protect-last; lower those")
        raise RankError(f"--layers asks to remove protected layer(s) {hit}: {why}")
    req_dict = {k: v for k, v in vars(req).items()}
    req_dict["layers"] = remove
    return Plan(method="manual", num_layers=num_layers, budget=len(remove), remove=remove,
                protected=protected, reasons={i: "requested with --layers" for i in remove}, columns={},
                request=req_dict)


def prune(model: PathLike, plan_or_scores: Plan | Scores | PathLike | None, out: PathLike, *,
          layers: Sequence[int] | None = None, method: str | None = None, budget: int | float | str | None = None,
          data: PathLike | Sequence[PathLike] | None = None, overwrite: bool = False,
          dtype: str = "auto", device: str = "cpu", device_map: str | None = None,
          trust_remote_code: bool = False, batch_size: int = 4, max_samples: int | None = None,
          progress: bool = True, **plan_kwargs: Any) -> Path:
    """Remove decoder layers from checkpoint ``model`` and save a stock checkpoint to ``out``.

    Pass explicit ``layers``, a :class:`Plan` (or a saved ``.plan.json``), or scores plus ``method`` and
    ``budget`` (and :func:`plan`'s keyword arguments); ``last``/``uniform``/``random`` need
    no scores, ``iterative`` needs ``data``. Returns the output directory.
    """
    model = resolve_model_id(model)
    prepare_output_dir(out, overwrite)  # fail before loading a large model
    net, processor = load_model(model, dtype=dtype, device=device, device_map=device_map,
                                trust_remote_code=trust_remote_code)
    num_layers = len(find_decoder_layers(net)[1])
    if layers is not None:
        plan_or_scores = manual_plan(num_layers, layers, protected_layers(net),
                                     **{k: plan_kwargs[k] for k in ("allow_deepstack", "protect_first",
                                                                    "protect_last") if k in plan_kwargs})
    if isinstance(plan_or_scores, (str, os.PathLike)) and str(plan_or_scores).endswith(".plan.json"):
        plan_or_scores = Plan.load(plan_or_scores)
    if not isinstance(plan_or_scores, Plan):
        if method is None or budget is None:
            raise RankError("prune needs a plan, or a method and a budget (--method, --budget)")
        scores = plan_or_scores
        if scores is None:
            if method not in SCORE_FREE and method != "iterative":
                raise RankError(f"method '{method}' needs scores: pass --scores FILE "
                                "(from `depthprune score`)")
            scores = empty_scores(net, str(model))
        elif not isinstance(scores, Scores):
            scores = Scores.load(scores)
        score_fn: Any = None
        if method == "iterative":
            if data is None:
                raise RankError("method 'iterative' re-scores the model after each removal: pass --data")
            records = load_records(_as_list(data))
            settings = ScoreSettings(batch_size=batch_size, max_samples=max_samples)

            def rescore(removed: list[int]) -> Scores:
                with layers_removed(net, removed):
                    return score_model(net, processor, records, settings, str(model), progress=progress)
            score_fn = rescore
            if not scores.sample_ids:  # no scores given: step 0 scores the full model
                scores = score_fn([])
        plan_or_scores = plan(scores, method, budget, score_fn=score_fn, **plan_kwargs)
    the_plan = plan_or_scores
    if the_plan.num_layers != num_layers:
        raise RankError(f"the plan is for a model of {the_plan.num_layers} decoder layers but {model} "
                        f"has {num_layers}; re-run `depthprune score` on this model")
    if the_plan.scores_model_id and Path(str(the_plan.scores_model_id)).name != Path(str(model)).name:
        warnings.warn(f"scores were computed on '{the_plan.scores_model_id}', pruning '{model}'",
                      stacklevel=2)
    prune_layers(net, the_plan.remove)
    req = the_plan.request
    info = pruning_info(str(model), num_layers, the_plan.remove, the_plan.method, req.get("budget"),
                        extra={"domain": req.get("domain"), "weights": req.get("weights"),
                               "request": req, "protected_layers": the_plan.protected,
                               "reasons": {str(k): v for k, v in the_plan.reasons.items()},
                               "scores_fingerprint": the_plan.scores_fingerprint})
    from .gguf_models import gguf_source
    files_from: PathLike = model
    if gguf_source(net) is not None:  # e.g. {"gguf_file": ".../x.Q4_1.gguf", "quantization": "Q4_1", ...}
        info["gguf_source"] = gguf_source(net)
        files_from = gguf_source(net)["converted_dir"]  # its tokenizer files, copied byte-for-byte
    return save_pruned(net, processor, out, info, source_model=files_from, overwrite=overwrite)


def diagnose(scores: Scores | PathLike, layers: Sequence[int] | None = None) -> dict:
    """How well each similarity signal (token group x domain) predicts each domain's
    single-layer ablation damage: Spearman correlations and the damage table (see
    :func:`depthprune.diagnosis.diagnose`). ``scores`` must come from ``score(..., ablation=True)``."""
    from .diagnosis import diagnose as _diagnose
    if not isinstance(scores, Scores):
        scores = Scores.load(scores)
    return _diagnose(scores, None if layers is None else list(layers))
