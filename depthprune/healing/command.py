"""`depthprune heal MODEL --data D --out OUT`: load a checkpoint, heal it
(:func:`depthprune.healing.trainer.heal_model`) and save a stock checkpoint, resumable from the
TRL checkpoints in ``OUT.heal-work``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthprune.data.records import check_prompt_format, data_fingerprint, load_records, set_prompt_format
from depthprune.healing.recipe import NEEDS_REMOVED, HealConfig, HealError, TrainingFiles, require_answers
from depthprune.healing.trainer import LOG_NAME, checkpoints, heal_model
from depthprune.models.architectures import find_decoder_layers
from depthprune.models.loading import load_model, resolve_model_id
from depthprune.options import ModelSpec
from depthprune.outputs import (
    WRITE_ERRNOS,
    OutputError,
    atomic_dir,
    check_output,
    describe_oserror,
    inputs_of,
    io_failure,
)
from depthprune.pruning import pruning_info, save_pruned
from depthprune.settings import quiet


def work_dir_for(out: str | Path) -> Path:
    """The resumable work directory of a heal run writing ``out``: ``OUT.heal-work`` beside it."""
    out = Path(out)
    return out.parent / f"{out.name}.heal-work"


def read_pruning_info(model_dir: str | Path) -> dict | None:
    """The checkpoint's ``pruning.json`` (None if it has none, e.g. a hub id or an unpruned model)."""
    path = Path(model_dir) / "pruning.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HealError(f"{path}: not valid JSON ({err.msg}). Restore it from the prune run") from None


def heal(model: ModelSpec | str | Path, data: str | Path | Sequence[str | Path], out: str | Path,
         config: HealConfig | None = None, *, teacher: str | Path | None = None, resume: bool = False,
         overwrite: bool = False, work_dir: str | Path | None = None) -> Path:
    """Load the checkpoint of ``model`` (its :class:`~depthprune.options.ModelSpec`), heal it on the JSONL file(s) ``data`` (:func:`heal_model`)
    and save a stock checkpoint to ``out`` (atomically, like ``prune``), with ``pruning.json``
    (the input's, or a no-removal record) extended by a ``healing`` entry (:class:`HealStats`).

    TRL checkpoints go to ``work_dir`` (default :func:`work_dir_for` ``(out)``), removed on
    success; ``resume`` continues an interrupted run from them. Weights are saved in the input
    checkpoint's dtype. The spec's ``prompt_format`` (auto, chat or plain,
    :func:`depthprune.data.records.set_prompt_format`) is recorded in the healing recipe;
    ``teacher``: the unpruned checkpoint to distil from, loaded like ``model``. Returns
    ``out``. Every cheap check runs before a model is loaded.
    """
    config, model = config or HealConfig(), ModelSpec.of(model)
    teacher_id, prompt_format = teacher, model.prompt_format
    dtype, device, trust_remote_code = model.dtype, model.device, model.trust_remote_code
    model_id = model.id
    model_id, out = resolve_model_id(model_id), Path(out).expanduser()
    work = Path(work_dir).expanduser() if work_dir is not None else work_dir_for(out)
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    reads = inputs_of(model=model_id, data=paths) + inputs_of(model=teacher_id)
    check_output(out, overwrite, kind="dir", inputs=reads)
    check_output(work, True, kind="dir", inputs=reads, option="the heal work directory")
    records = load_records(paths)
    require_answers(records)
    check_prompt_format(prompt_format, model_id)
    request = {"model": str(model_id), "data_fingerprint": data_fingerprint(records),
               "teacher": str(teacher_id) if teacher_id else None, "config": asdict(config),
               "prompt_format": prompt_format}
    request_file = work / "heal_request.json"
    _check_resume(work, request_file, request, resume)
    info = read_pruning_info(model_id) if Path(str(model_id)).is_dir() else None
    removed = (info or {}).get("removed_layers") or None
    if config.mode in NEEDS_REMOVED and not removed:
        raise HealError(f"{model_id}: --mode {config.mode} needs a pruned checkpoint (its "
                        "pruning.json lists the removed layers); this one has none. Heal the "
                        "output of `depthprune prune`, or use --mode lora, full or head-last")
    net, processor = load_model(model_id, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    used_format = set_prompt_format(processor, prompt_format, model_id)
    save_dtype = _checkpoint_dtype(model_id)
    teacher_net = None
    if teacher_id is not None:
        teacher_net, _ = load_model(resolve_model_id(teacher_id), dtype=dtype, device=device,
                                trust_remote_code=trust_remote_code)
    n_layers = len(find_decoder_layers(net)[1])
    if info is not None and info.get("num_layers") not in (None, n_layers):
        raise HealError(f"{model_id}: pruning.json says {info['num_layers']} layers but the "
                        f"checkpoint has {n_layers}. Re-run `depthprune prune`")
    work.mkdir(parents=True, exist_ok=True)
    request_file.write_text(json.dumps(request, indent=1))
    if not resume:  # a fresh run's log starts empty (a resumed one continues its file)
        (work / LOG_NAME).unlink(missing_ok=True)
    try:
        stats = heal_model(net, processor, records, config, teacher=teacher_net, removed_layers=removed,
                           files=TrainingFiles(work, resume), progress=not quiet())
    except Exception as err:  # noqa: BLE001 - only a failed write (a full disk while TRL saves) is handled here
        why = io_failure(err) or (describe_oserror(err) if isinstance(err, OSError) and err.errno in WRITE_ERRNOS
                                  else None)
        if why is None:
            raise
        shutil.rmtree(work, ignore_errors=True)
        raise OutputError(f"{work}: cannot write the training checkpoints ({why}); they were removed and "
                          f"nothing was written to {out}") from None
    stats.recipe |= {"data_files": [str(p) for p in paths], "prompt_format": used_format}
    if teacher_net is not None:
        stats.recipe["teacher"] = str(teacher_id)
    info = _with_healing(info, model_id, n_layers, stats)
    if save_dtype is not None:
        net.to(save_dtype)
    _save_healed(net, processor, model_id, out, work, info)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _check_resume(work: Path, request_file: Path, request: dict, resume: bool) -> None:
    """Refuse a work directory holding another run's checkpoints, or this run's without --resume."""
    if work.is_dir() and checkpoints(work, complete=False):
        if not resume:
            raise HealError(f"{work}: holds checkpoints of an interrupted heal run. Pass --resume to "
                            f"continue it, or delete {work} to start over")
        if request_file.is_file() and json.loads(request_file.read_text()) != request:
            raise HealError(f"{work}: its checkpoints are from a run with another model, data or "
                            f"recipe. Repeat that run's options, or delete {work} to start over")


def _with_healing(info: dict | None, model_id: str | Path, n_layers: int, stats: Any) -> dict:
    """The input's ``pruning.json`` (or a no-removal record) with a ``healing`` entry; a healed
    checkpoint healed again keeps its earlier entries in ``healing_history``."""
    info = dict(info if info is not None else pruning_info(str(model_id), n_layers, [], method="none", budget_spec=0))
    if "healing" in info:
        info["healing_history"] = info.get("healing_history", []) + [info["healing"]]
    info["healing"] = {"source_model": str(model_id), **stats.to_dict()}
    return info


def _save_healed(model: nn.Module, processor: Any, model_id: str | Path, out: Path, work: Path, info: dict) -> None:
    """The healed stock checkpoint, atomically, with its training log and model card."""
    with atomic_dir(out) as tmp:
        saved = save_pruned(model, processor, tmp / "checkpoint", info, source_model=model_id)
        for f in saved.iterdir():
            f.rename(tmp / f.name)
        saved.rmdir()
        if (work / LOG_NAME).is_file():  # the full training log travels with the checkpoint
            shutil.copyfile(work / LOG_NAME, tmp / LOG_NAME)
        verify_stock_keys(tmp, model)
        with (tmp / "README.md").open("a") as fh:
            fh.write(healing_card(info["healing"]))


def _checkpoint_dtype(model_id: str | Path) -> torch.dtype | None:
    """The dtype the input checkpoint stores its weights in (from its config.json)."""
    from transformers import AutoConfig
    try:
        name = AutoConfig.from_pretrained(model_id, local_files_only=True).dtype
    except (OSError, ValueError):
        return None
    if isinstance(name, str):
        name = getattr(torch, name, None)
    return name if isinstance(name, torch.dtype) else None


def verify_stock_keys(checkpoint_dir: Path, model: nn.Module) -> None:
    """Raise HealError unless the saved tensors are exactly those of a stock model of this
    config (no LoRA leftovers, nothing missing), so the checkpoint reloads exactly."""
    from safetensors import safe_open
    saved: set[str] = set()
    for shard in checkpoint_dir.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as fh:
            saved.update(fh.keys())
    with torch.device("meta"):
        stock = type(model)(model.config)
    expected = set(stock.state_dict())
    tied = {k for k in expected - saved if "lm_head" in k}  # tied head: saved once, as embeddings
    if saved != expected - tied:
        extra, missing = sorted(saved - expected), sorted(expected - tied - saved)
        raise HealError(f"the healed checkpoint does not match a stock {type(model).__name__}: "
                        f"unexpected {extra[:3]}, missing {missing[:3]}; nothing was written")


def healing_card(entry: dict) -> str:
    """Model-card section stating how the checkpoint was healed."""
    recipe = entry["recipe"]
    teacher = f", distilled from `{recipe['teacher']}`" if recipe.get("teacher") else ""
    return (f"\n## Healing\n\nFine-tuned after pruning with depthprune (`{recipe['mode']}` mode{teacher}): "
            f"{entry['steps']} steps of {recipe['batch_size'] * recipe['grad_accum']} records, "
            f"learning rate {recipe['learning_rate']}, in {entry['seconds']:.0f} s; final training "
            f"loss {entry['final_loss']:.4f}; data fingerprint `{entry['data_fingerprint']}`. "
            "Full recipe under `healing` in `pruning.json`.\n")
