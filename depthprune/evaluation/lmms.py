"""Bridge to lmms-eval: standard multimodal benchmarks, results in depthprune's metrics format.

``depthprune eval MODEL --lmms-eval TASKS --out metrics.json`` runs lmms-eval in this process
(``lmms_eval.evaluator.simple_evaluate``) and writes the same files as the built-in
evaluator: ``metrics.json`` (per-"domain" accuracy, 95% Wilson interval, n) and
``metrics.predictions.jsonl`` (one line per sample, with its correctness), so sweeps and
reports treat both alike.

* Domains: each lmms-eval task is one domain, named by the task's ``metadata.domain`` if its
  YAML sets one (so several tasks can pool into e.g. ``math``), else by the task name.
* Correctness: the per-sample value of the task's first metric, when lmms-eval logs one that
  is 0/1 (or a dict holding such a ``score``/``correct``/``acc`` entry). Tasks whose
  per-sample metric is not binary (e.g. ANLS) or not a number (judge-scored submissions)
  are reported under ``lmms_results`` with lmms-eval's aggregate only, and named in a warning.
  No answer NLL (lmms-eval generates only): ``answer_nll`` is null.
* Model family: chosen from the checkpoint's ``model_type`` (:data:`FAMILIES`) so the
  family's own lmms-eval prompts and image handling apply; ``--lmms-model`` overrides it.
  Qwen3-VL (dense and MoE) runs through :class:`DepthpruneQwen3VL`, lmms-eval's own
  ``qwen3_vl`` class with two changes: the checkpoint is loaded by depthprune (refused if it
  does not load exactly; any device/dtype) and ``system_prompt=""`` sends no system turn.
* Offline: lmms-eval runs with ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1``. Hub tasks
  (mmstar, mathvista, ...) need their datasets in the local Hugging Face cache; local tasks
  (``depthprune data lmms-task``, or any YAML with ``dataset_kwargs: {load_from_disk: true}``)
  need nothing.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depthprune import __version__
from depthprune.options import LmmsTasks, ModelSpec
from depthprune.outputs import check_output, inputs_of

#: model_type -> lmms-eval model name (a registered lmms-eval model, or ours below)
FAMILIES = {
    "qwen3_vl": "depthprune_qwen3_vl",
    "qwen3_vl_moe": "depthprune_qwen3_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen2_vl": "qwen2_vl",
    "llava": "llava_hf",
    "llava_onevision": "llava_hf",
}
#: per-sample result keys that hold a 0/1 correctness inside a dict-valued metric
_SCORE_KEYS = ("score", "correct", "acc", "accuracy", "exact_match", "true_false")
TASKS_DIR = Path(__file__).resolve().parent / "lmms_tasks"


class LmmsError(ValueError):
    """lmms-eval cannot run as asked (not installed, unknown task, unsupported model...)."""


def missing_packages() -> list[str]:
    """The modules of the ``lmms`` extra that are not installed (cheap: nothing is imported).
    decord and qwen_vl_utils are imported at module level by lmms-eval's qwen3_vl model."""
    import importlib.util
    return [m for m in ("lmms_eval", "decord", "qwen_vl_utils") if importlib.util.find_spec(m) is None]


def _require_lmms() -> None:
    missing = missing_packages()
    if missing:
        raise LmmsError(f"--lmms-eval needs {', '.join(missing)} (not installed): pip install 'depthprune[lmms]'")


def set_offline() -> None:
    """Never download: models, tokenizers and datasets come from disk or the local cache."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"


def family_for(model_id: str | os.PathLike, override: str | None = None) -> str:
    """The lmms-eval model name for checkpoint ``model_id`` (``override`` wins)."""
    if override:
        return override
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(str(model_id))
    except (OSError, ValueError) as exc:
        raise LmmsError(f"{model_id}: cannot read its config.json ({exc}). Give a checkpoint directory") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise LmmsError(f"{model_id}: no lmms-eval model family is known for model_type '{model_type}' "
                        f"(known: {', '.join(sorted(FAMILIES))}). Pass --lmms-model NAME, an lmms-eval "
                        "model whose prompts suit this checkpoint")
    return FAMILIES[model_type]


# ----------------------------------------------------------------------------- results
def _sample_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        for key in _SCORE_KEYS:
            if key in value and isinstance(value[key], (bool, int, float)):
                return float(value[key])
    return None


#: keys lmms-eval writes into every logged sample besides the metrics
_SAMPLE_FIELDS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "token_counts",
                  "doc_hash", "input_media"}


def _first_metric(config: dict, sample: dict) -> str | None:
    """The task's first metric (metric_list order) that the sample holds as a number."""
    names = [m["metric"] for m in config.get("metric_list") or [] if isinstance(m, dict) and "metric" in m]
    names += [k for k in sample if k not in names and k not in _SAMPLE_FIELDS]
    return next((n for n in names if n in sample and _sample_value(sample[n]) is not None), None)


def _text(value: Any) -> str:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return "" if value is None or isinstance(value, (list, tuple)) else str(value)


def _question(doc: Any, arguments: Any) -> str:
    if isinstance(doc, dict):
        for key in ("question", "query", "prompt", "problem"):
            if isinstance(doc.get(key), str):
                return doc[key]
    return _text(arguments)


def convert_results(results: dict) -> tuple[list, dict]:
    """lmms-eval's ``simple_evaluate`` output (with ``log_samples``) -> (predictions, extras).

    ``predictions`` are :class:`~depthprune.evaluation.generation.Prediction` objects for every task with
    a binary per-sample metric (domain: the task's ``metadata.domain``, else its name);
    ``extras`` maps each task to lmms-eval's aggregate results, the metric used, the domain,
    and ``per_sample: False`` for tasks left out of the predictions (with the reason).
    """
    from depthprune.evaluation.answers import extract_answer
    from depthprune.evaluation.generation import Prediction
    configs, samples = results.get("configs") or {}, results.get("samples") or {}
    predictions, extras = [], {}
    for task in sorted(set(results.get("results") or {}) | set(samples)):
        config = configs.get(task) or {}
        aggregate = (results.get("results") or {}).get(task, {})
        metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
        domain = str(metadata.get("domain") or task)
        rows = samples.get(task)
        if rows is None:  # a group's aggregate (its tasks are listed on their own)
            extras[task] = {"aggregate": aggregate, "per_sample": False, "reason": "group or no logged samples"}
            continue
        metric = _first_metric(config, rows[0]) if rows else None
        values = [_sample_value(r.get(metric)) for r in rows] if metric else []
        info = {"aggregate": aggregate, "metric": metric, "domain": domain}
        if metric is None or not rows or any(v is None or v not in (0.0, 1.0) for v in values):
            info.update(per_sample=False, reason="per-sample metric is missing or not 0/1")
            extras[task] = info
            continue
        extras[task] = dict(info, per_sample=True)
        for r, value in zip(rows, values):
            output = _text(r.get("resps"))
            filtered = _text(r.get("filtered_resps")) or output
            doc = r.get("doc") if isinstance(r.get("doc"), dict) else {}
            key = doc.get("id", r.get("doc_id"))  # the record's own id when the task keeps one
            predictions.append(Prediction(
                id=f"{task}/{key}", domain=domain, question=_question(doc, r.get("arguments")),
                reference=_text(r.get("target")), output=output, extracted=extract_answer(filtered),
                correct=value == 1.0, nll=float("nan"), answer_tokens=0))
    return predictions, extras


# ----------------------------------------------------------------------------- Qwen3-VL plugin
LMMS_DEFAULT_MAX_PIXELS = 1605632  # lmms-eval's qwen3_vl default cap on an image's pixels


def _limits(size: Any) -> dict[str, int]:
    """From a processor's ``size``: a dict (config JSON) or transformers' ``SizeDict``."""
    def get(key: str) -> Any:
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    low, high = get("shortest_edge"), get("longest_edge")
    if low and high:
        return {"min_pixels": int(low), "max_pixels": int(min(high, LMMS_DEFAULT_MAX_PIXELS))}
    return {}


def image_limits(model_id: str | os.PathLike) -> dict[str, int]:
    """``min_pixels``/``max_pixels`` for lmms-eval's Qwen image resizing: the checkpoint
    processor's own limits (so images are sized as its processor sizes them), the maximum
    capped at lmms-eval's default. {} if the processor config gives none."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = Path(model_id) / name
        if path.is_file():
            cfg = json.loads(path.read_text())
            limits = _limits((cfg.get("image_processor") or cfg).get("size"))
            if limits:
                return limits
    return {}


_PLUGIN: Any = None


def plugin_class() -> Any:
    """lmms-eval's ``qwen3_vl`` model, loading through depthprune; registered as
    ``depthprune_qwen3_vl``. Differences from the stock class: the checkpoint must load
    exactly (depthprune's loader: no missing/unexpected weights), dense or MoE by config
    (not by name), any ``device``/``dtype`` (stock: bfloat16, ``device_map``), and
    ``system_prompt=""`` (our default) sends no system turn (stock: "You are a helpful
    assistant."), and generation stops on all of the checkpoint's end tokens; prompts,
    image handling and generation are otherwise lmms-eval's own code."""
    global _PLUGIN
    if _PLUGIN is not None:
        return _PLUGIN
    from lmms_eval.api.model import lmms
    from lmms_eval.models.simple.qwen3_vl import Qwen3_VL

    from depthprune.models.loading import load_model

    class DepthpruneQwen3VL(Qwen3_VL):
        def __init__(self, pretrained: str, device: str = "cpu", dtype: str = "auto",
                     batch_size: int | str = 1, use_cache: bool = True, min_pixels: int = 256 * 28 * 28,
                     max_pixels: int = LMMS_DEFAULT_MAX_PIXELS, max_num_frames: int = 32,
                     fps: float | None = None, total_pixels: int | None = None,
                     enable_thinking: bool | None = None, system_prompt: str = "", interleave_visuals: bool = False,
                     reasoning_prompt: str | None = None, trust_remote_code: bool = False, **kwargs: Any) -> None:
            lmms.__init__(self)  # not Qwen3_VL.__init__: it loads the model its own way
            if kwargs:
                raise LmmsError(f"unknown lmms model_args for depthprune_qwen3_vl: {sorted(kwargs)}")
            model, processor = load_model(pretrained, dtype=dtype, device=device,
                                          trust_remote_code=bool(trust_remote_code))
            self._setup(model, processor, batch_size=batch_size, use_cache=use_cache, min_pixels=min_pixels,
                        max_pixels=max_pixels, max_num_frames=max_num_frames, fps=fps,
                        total_pixels=total_pixels, enable_thinking=enable_thinking,
                        system_prompt=system_prompt, interleave_visuals=interleave_visuals,
                        reasoning_prompt=reasoning_prompt)

        @classmethod
        def around(cls, model: Any, processor: Any, **options: Any) -> Any:
            """An instance around an already loaded ``model`` (e.g. a sweep's pruned-in-memory
            copy): nothing is loaded; ``options`` as for the constructor."""
            self = cls.__new__(cls)
            lmms.__init__(self)
            self._setup(model, processor, **options)
            return self

        def _setup(self, model: Any, processor: Any, *, batch_size: int | str = 1, use_cache: Any = True,
                   min_pixels: int = 256 * 28 * 28, max_pixels: int = LMMS_DEFAULT_MAX_PIXELS,
                   max_num_frames: int = 32, fps: float | None = None, total_pixels: int | None = None,
                   enable_thinking: bool | None = None, system_prompt: str = "",
                   interleave_visuals: bool = False, reasoning_prompt: str | None = None) -> None:
            self._model, self._config = model.eval(), model.config
            self.processor = processor
            self._tokenizer = processor.tokenizer
            device = next(model.parameters()).device
            self._device, self.device_map = device, str(device)
            self.max_pixels, self.min_pixels = int(max_pixels), int(min_pixels)
            self.max_num_frames, self.fps, self.total_pixels = int(max_num_frames), fps, total_pixels
            self.enable_thinking = enable_thinking
            self.reasoning_prompt = reasoning_prompt.replace("\\n", "\n") if reasoning_prompt else None
            self.system_prompt, self.interleave_visuals = system_prompt or "", interleave_visuals
            self._max_length, self.batch_size_per_gpu = 2048, int(batch_size)
            self.use_cache = use_cache in (True, "True", "true", 1)
            self._rank, self._world_size = 0, 1

        @property
        def model(self) -> Any:
            return self._model

        def _apply_chat_template(self, batched_messages: list, **kwargs: Any) -> Any:
            # lmms-eval always opens with a system turn; an empty one means none, as in
            # depthprune's own evaluator (a real Qwen3-VL template then adds no default)
            batched_messages = [[m for m in conv if not (m.get("role") == "system" and not m.get("content"))]
                                for conv in batched_messages]
            return super()._apply_chat_template(batched_messages, **kwargs)

        def _build_generate_kwargs(self, gen_kwargs: dict) -> dict:
            # stop on every end token of the checkpoint's generation config (the toy has two),
            # not only the tokenizer's eos, as transformers' generate does by default
            kwargs = super()._build_generate_kwargs(gen_kwargs)
            eos = getattr(self._model.generation_config, "eos_token_id", None)
            if eos is not None:
                kwargs["eos_token_id"] = eos
            return kwargs

    _PLUGIN = DepthpruneQwen3VL
    return _PLUGIN


# ----------------------------------------------------------------------------- running
def _task_configs(manager: Any, name: str, seen: set[str]) -> list[tuple[str, dict]]:
    """(task, YAML config) of ``name`` and, for a group or tag, of every task under it."""
    from lmms_eval.utils import load_yaml_config
    info = manager.task_index.get(name)
    if info is None or name in seen:
        return []
    seen.add(name)
    if info["type"] == "task":
        return [(name, load_yaml_config(info["yaml_path"], mode="simple"))]
    members = info.get("task") if isinstance(info.get("task"), list) else None
    if members is None and info.get("yaml_path") not in (None, -1):
        members = load_yaml_config(info["yaml_path"], mode="simple").get("task") or []
    return [c for m in members or [] if isinstance(m, str) for c in _task_configs(manager, m, seen)]


def _is_cached(dataset: str) -> bool:
    """Whether hub dataset ``dataset`` ("org/name") has a snapshot or a build in the local cache."""
    import datasets
    from huggingface_hub import constants
    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}"
    built = Path(datasets.config.HF_DATASETS_CACHE)
    prefix = dataset.replace("/", "___").lower()
    return hub.is_dir() or (built.is_dir() and any(p.name.lower().startswith(prefix) for p in built.iterdir()))


def check_datasets_offline(manager: Any, tasks: Sequence[str]) -> None:
    """Refuse, before any model loads, tasks whose hub dataset is not in the local cache
    (offline, lmms-eval would retry the network for minutes, then fail with a traceback)."""
    missing = {}
    for task in tasks:
        try:
            configs = _task_configs(manager, task, set())
        except Exception:  # noqa: BLE001 - a config we cannot read here: lmms-eval will say
            continue
        for name, cfg in configs:
            path, kwargs = cfg.get("dataset_path"), cfg.get("dataset_kwargs") or {}
            if not isinstance(path, str) or kwargs.get("load_from_disk") or Path(path).exists():
                continue
            if not _is_cached(path):
                missing[name] = path
    if missing:
        names = ", ".join(f"{t} ({d})" for t, d in sorted(missing.items()))
        raise LmmsError(f"--lmms-eval: task dataset(s) not in the local Hugging Face cache: {names}. depthprune "
                        "runs lmms-eval offline (nothing is downloaded): fetch them once on a machine with "
                        "network, e.g. `huggingface-cli download --repo-type dataset "
                        f"{next(iter(missing.values()))}`, into the same HF_HOME")


def _offline_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps, e.g. tenacity's RetryError) is a failed download."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in (
                "ConnectionError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "DatasetNotFoundError",
                "RetryError"):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def task_manager(tasks: Sequence[str], include_path: str | os.PathLike | None = None,
                 what: str = "--lmms-eval") -> Any:
    """lmms-eval's TaskManager for ``tasks``, once every task is known and its dataset is on
    disk (offline; :func:`check_datasets_offline`). ``what`` names the option in errors."""
    _require_lmms()
    set_offline()
    from lmms_eval.tasks import TaskManager
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        import difflib
        hints = {t: difflib.get_close_matches(t, manager.all_tasks, n=3) for t in unknown}
        raise LmmsError(f"{what}: unknown task(s) " + "; ".join(
            f"{t}" + (f" (did you mean {', '.join(h)}?)" if h else "") for t, h in hints.items())
            + ". Local tasks need an include path (--include-path DIR; in a study, include_path:)")
    check_datasets_offline(manager, tasks)
    return manager


def _checked_predictions(results: dict, tasks: Sequence[str], left_out_note: str) -> tuple[list, dict]:
    """:func:`convert_results`, warning about tasks without a 0/1 per-sample metric (what
    happens to them: ``left_out_note``) and refusing a run that gave no per-sample result."""
    predictions, extras = convert_results(results)
    left_out = [t for t, e in extras.items() if not e["per_sample"] and "metric" in e]
    if left_out:
        warnings.warn(f"lmms-eval task(s) {left_out} have no 0/1 per-sample metric: {left_out_note}", stacklevel=3)
    if not predictions:
        raise LmmsError(f"lmms-eval tasks {list(tasks)} gave no per-sample 0/1 results to convert; their aggregates: "
                        + json.dumps({t: e['aggregate'] for t, e in extras.items()}, default=str))
    return predictions, extras


def sweep_samples(model: Any, processor: Any, tasks: Sequence[str], *, include_path: str | os.PathLike | None = None,
                  limit: int | None = None, batch_size: int = 1, max_new_tokens: int | None = None,
                  manager: Any = None) -> list[tuple[str, str, int, None]]:
    """Run lmms-eval ``tasks`` on an in-memory Qwen3-VL ``model`` (a sweep's pruned copy) and
    return every sample as (id ``TASK/DOC_ID``, domain, correct 0/1, None): the sample tuples
    of :mod:`depthprune.study.cell`. lmms-eval measures no NLL; tasks without a 0/1 per-sample
    metric are left out with a warning, as in :func:`run`. ``max_new_tokens`` None keeps each
    task's own generation length."""
    manager = manager or task_manager(tasks, include_path, what="study eval set")
    from lmms_eval import evaluator
    limits = _limits(getattr(getattr(processor, "image_processor", None), "size", None))
    lm = plugin_class().around(model, processor, batch_size=batch_size, **limits)
    try:
        results = evaluator.simple_evaluate(
            model=lm, tasks=list(tasks), limit=limit, batch_size=batch_size, device=str(lm.device),
            task_manager=manager, log_samples=True, bootstrap_iters=0,  # the report does its own statistics
            gen_kwargs=f"max_new_tokens={max_new_tokens}" if max_new_tokens else None, verbosity="ERROR")
    finally:
        model.eval()
    predictions, _ = _checked_predictions(results, tasks, "left out of the sweep")
    return [(p.id, p.domain, int(p.correct), None) for p in predictions]


def run(model: ModelSpec, lmms: LmmsTasks, out: str | os.PathLike, *, batch_size: int = 1,
        max_new_tokens: int | None = None, overwrite: bool = False) -> dict:
    """Evaluate the checkpoint of ``model`` (its ``device_map``, else its ``device``; its dtype)
    on the lmms-eval tasks ``lmms`` (names, task folder, limit, lmms-eval model and its
    ``model_args``) and write ``out`` (metrics JSON)
    and its predictions JSONL beside it, as :func:`depthprune.evaluation.generation.evaluate_path` does.

    ``max_new_tokens`` overrides every task's generation length (the ``*_reasoning`` tasks
    default to thousands of tokens); ``model_args`` ("k=v,k=v") are passed to the lmms-eval
    model after depthprune's own (``pretrained``, ``device``...), so they win.
    Returns the metrics dict.
    """
    from depthprune.evaluation.generation import EvalResult, prediction_lines, predictions_path
    from depthprune.models.loading import resolve_model_id
    from depthprune.outputs import atomic_files
    model_id = resolve_model_id(model.id)
    include_path, limit, lmms_model, model_args = lmms.include_path, lmms.limit, lmms.model, lmms.model_args
    dtype, device = model.dtype, model.device_map or model.device
    out = Path(out)
    for path in (out, predictions_path(out)):  # cheap checks before anything loads
        check_output(path, overwrite, kind="file", inputs=inputs_of(model=model_id, folders=[include_path]))
    tasks = [t.strip() for t in lmms.tasks or () if t.strip()]
    if not tasks:
        raise LmmsError("--lmms-eval: give task names, e.g. --lmms-eval mmstar,ai2d")
    if include_path is not None and not Path(include_path).is_dir():
        raise LmmsError(f"--include-path {include_path}: not a directory of task YAML files")
    if limit is not None and limit < 1:
        raise LmmsError(f"--limit must be >= 1, got {limit}")
    family = family_for(model_id, lmms_model)
    manager = task_manager(tasks, include_path)
    from lmms_eval import evaluator
    from lmms_eval.utils import simple_parse_args_string
    args: dict[str, Any] = {"pretrained": str(model_id)}
    if family == "depthprune_qwen3_vl":
        args.update(device=device, dtype=dtype, **image_limits(model_id))
    else:
        args["device_map"] = device
    args.update(simple_parse_args_string(model_args or ""))  # the user's model_args win
    arg_text = ",".join(f"{k}={v}" for k, v in args.items())
    gen_kwargs = f"max_new_tokens={max_new_tokens}" if max_new_tokens else None
    lm: Any = family
    if family == "depthprune_qwen3_vl":  # our class: built here, handed to lmms-eval as an object
        lm = plugin_class()(**{"batch_size": batch_size, **args})
    started = time.perf_counter()
    try:
        results = evaluator.simple_evaluate(model=lm, model_args=arg_text, tasks=tasks, limit=limit,
                                            batch_size=batch_size, device=device, task_manager=manager,
                                            log_samples=True, gen_kwargs=gen_kwargs)
    except Exception as exc:
        if not _offline_failure(exc):
            raise
        raise LmmsError(f"lmms-eval could not load a dataset or model offline ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}). Hub tasks need their dataset in the "
                        "local Hugging Face cache (download it once where there is network); "
                        "depthprune runs lmms-eval with HF_HUB_OFFLINE=1") from None
    seconds = time.perf_counter() - started
    predictions, extras = _checked_predictions(
        results, tasks, "only their lmms-eval aggregate is kept (metrics.json 'lmms_results'), not per-domain accuracy")
    result = EvalResult(predictions, seconds)
    import lmms_eval
    import torch
    import transformers
    metrics = {
        "model": str(model_id), "data_files": [], "data_fingerprint": None,
        "predictions_file": predictions_path(out).name, **result.to_dict(),
        "units": {"accuracy": "fraction correct (lmms-eval per-sample metric)",
                  "ci95": "95% Wilson interval of accuracy", "answer_nll": "not measured by lmms-eval (null)"},
        "lmms_eval": {"tasks": tasks, "include_path": str(include_path) if include_path else None,
                      "limit": limit, "model": family, "model_args": arg_text, "gen_kwargs": gen_kwargs,
                      "version": getattr(lmms_eval, "__version__", None)},
        "lmms_results": {t: {k: v for k, v in e.items()} for t, e in extras.items()},
        "settings": {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "decoding": "greedy",
                     "evaluator": "lmms-eval", "depthprune": __version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
    }
    lines = prediction_lines(predictions)
    # published together, the metrics last, under the same --overwrite rule as `eval --data`
    with atomic_files([predictions_path(out), out], overwrite) as (tmp_predictions, tmp_metrics):
        tmp_predictions.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp_metrics.write_text(json.dumps(metrics, indent=1, allow_nan=False, default=str) + "\n",
                               encoding="utf-8")
    return metrics
