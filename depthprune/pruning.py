"""Apply a plan: delete decoder layers, renumber them, fix the config, save atomically.

The saved directory is a stock Hugging Face checkpoint: safetensors holding exactly the
surviving layers (renumbered 0..N-1), a config whose every per-layer field matches them,
the processor/tokenizer/chat-template files copied byte-for-byte from the source, plus
``pruning.json`` and a model card saying what was removed (0-based, original numbering).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import nn

from depthprune import __version__
from depthprune.models.architectures import adapter_for, find_decoder_layers, text_config
from depthprune.models.loading import is_local
from depthprune.options import RankError, check_layer_list
from depthprune.outputs import atomic_dir, check_output, inputs_of


class PruneError(ValueError):
    """The plan cannot be applied or the output cannot be written."""


#: Config fields holding one entry per decoder layer, sliced with the layers.
PER_LAYER_FIELDS = ("layer_types", "no_rope_layers", "attention_chunk_sizes")
#: The only files copied (byte-for-byte) from the source checkpoint: tokenizer, processor,
#: chat-template and generation-config files. Anything else (training logs, plots, weights,
#: the source's model card) does not describe the pruned model.
COPIED_FILES = re.compile(
    r"^(tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)|"
    r"merges\.txt|[\w.-]+\.model|[\w.-]+\.tiktoken|"
    r"(preprocessor|processor|image_processor|video_preprocessor|feature_extractor)_config\.json|"
    r"chat_template\.(json|jinja)|generation_config\.json)$")
#: Directories copied whole (transformers 5 keeps named chat templates there).
COPIED_DIRS = ("additional_chat_templates",)


def _check_layers(remove: Sequence[int], num_layers: int) -> list[int]:
    try:
        return check_layer_list(list(remove), num_layers, "layers to remove", allow_empty=True)
    except RankError as err:
        raise PruneError(str(err)) from None


def _set_layers(model: nn.Module, path: str, layers: nn.ModuleList) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, layers)


def prune_layers(model: nn.Module, remove: Sequence[int]) -> nn.Module:
    """Delete decoder layers ``remove`` (0-based) from ``model`` in place and return it.

    Renumbers every ``layer_idx`` to 0..N-1 (each attention writes the KV-cache slot of its
    index), sets ``num_hidden_layers`` wherever the config keeps it, slices per-layer
    config lists and lets the family adapter fix what slicing cannot. The vision tower and
    ``vision_config.deepstack_visual_indexes`` are left untouched.
    """
    path, layers = find_decoder_layers(model)
    old_n = len(layers)
    remove = _check_layers(remove, old_n)
    keep = [i for i in range(old_n) if i not in set(remove)]
    kept = [layers[i] for i in keep]
    _set_layers(model, path, nn.ModuleList(kept))
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx

    tcfg = text_config(model)
    for cfg in {id(c): c for c in (model.config, tcfg)}.values():
        if getattr(cfg, "num_hidden_layers", None) == old_n:
            cfg.num_hidden_layers = len(keep)
    for name in PER_LAYER_FIELDS:
        value = getattr(tcfg, name, None)
        if isinstance(value, (list, tuple)) and len(value) == old_n:
            setattr(tcfg, name, type(value)(value[i] for i in keep))
    if isinstance(getattr(tcfg, "max_window_layers", None), int):
        # Qwen2-family: layers below max_window_layers use full attention
        tcfg.max_window_layers = sum(i < tcfg.max_window_layers for i in keep)
    others = [k for k, v in tcfg.to_dict().items()
              if isinstance(v, (list, tuple)) and len(v) == old_n and k not in PER_LAYER_FIELDS]
    if others:
        warnings.warn(f"config fields {others} have one entry per layer but depthprune does not "
                      "know them; they were left as they are. Check them.", stacklevel=2)
    adapter = adapter_for(model.config)
    if adapter.edit_config is not None:
        adapter.edit_config(tcfg, kept)
    layer_types = getattr(tcfg, "layer_types", None)
    for module in model.modules():  # cached facts derived from layer_types at construction
        if hasattr(module, "has_sliding_layers") and layer_types is not None:
            module.has_sliding_layers = "sliding_attention" in layer_types
    return model


class _Identity(nn.Module):
    """A decoder layer that returns its input unchanged (for the identity invariant)."""

    def forward(self, hidden_states: Any = None, *args: Any, **kwargs: Any) -> Any:
        return hidden_states if hidden_states is not None else args[0]


@contextlib.contextmanager
def layers_as_identity(model: nn.Module, layers_to_skip: Sequence[int]) -> Iterator[nn.Module]:
    """Temporarily replace decoder layers with identity (same depth, same indices)."""
    path, layers = find_decoder_layers(model)
    original = list(layers)
    swapped = nn.ModuleList(_Identity() if i in set(layers_to_skip) else m for i, m in enumerate(original))
    _set_layers(model, path, swapped)
    try:
        yield model
    finally:
        _set_layers(model, path, nn.ModuleList(original))


@contextlib.contextmanager
def layers_removed(model: nn.Module, remove: Sequence[int]) -> Iterator[nn.Module]:
    """Temporarily drop decoder layers for cache-free forwards (ablation, iterative re-scoring).

    The layer list, ``num_hidden_layers`` and every per-layer config field are those of the
    pruned model (families such as Qwen2, Qwen3 and Gemma3 pick each layer's attention mask,
    and Gemma3 its RoPE, by position in ``layer_types``), so a forward computes what the
    pruned checkpoint computes. ``layer_idx`` is not renumbered: do not generate with a
    cache inside this context. Everything is restored on exit.
    """
    path, layers = find_decoder_layers(model)
    original = list(layers)
    remove = set(_check_layers(remove, len(original)))
    keep = [i for i in range(len(original)) if i not in remove]
    config = text_config(model)
    saved = {name: getattr(config, name) for name in (*PER_LAYER_FIELDS, "max_window_layers", "num_hidden_layers")
             if hasattr(config, name)}
    flags = [(m, m.has_sliding_layers) for m in model.modules() if hasattr(m, "has_sliding_layers")]
    _set_layers(model, path, nn.ModuleList(original[i] for i in keep))
    config.num_hidden_layers = len(keep)  # find_decoder_layers looks for this length
    for name in PER_LAYER_FIELDS:
        value = saved.get(name)
        if isinstance(value, (list, tuple)) and len(value) == len(original):
            setattr(config, name, type(value)(value[i] for i in keep))
    if isinstance(saved.get("max_window_layers"), int):
        config.max_window_layers = sum(i < saved["max_window_layers"] for i in keep)
    layer_types = getattr(config, "layer_types", None)
    for module, _ in flags:
        if layer_types is not None:
            module.has_sliding_layers = "sliding_attention" in layer_types
    try:
        yield model
    finally:
        for name, value in saved.items():
            setattr(config, name, value)
        for module, value in flags:
            module.has_sliding_layers = value
        _set_layers(model, path, nn.ModuleList(original))


# --------------------------------------------------------------------------- saving
def source_files_dir(model_id: str | os.PathLike) -> Path | None:
    """Directory holding the source checkpoint's processor/tokenizer files (hub ids: the
    local snapshot, downloading only non-weight files), or None if it cannot be found."""
    if is_local(model_id):
        return Path(model_id).expanduser()
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(model_id), ignore_patterns=["*.safetensors", "*.bin", "*.pt",
                                                                      "*.pth", "*.msgpack", "*.h5"]))
    except Exception:  # noqa: BLE001 - offline / gated: fall back to re-saving the processor
        return None


def copy_processor_files(source: Path, dest: Path) -> list[str]:
    """Copy the tokenizer / processor / chat-template / generation-config files of ``source``
    (:data:`COPIED_FILES`, :data:`COPIED_DIRS`) byte-for-byte; returns their names."""
    copied = []
    for f in sorted(source.iterdir()):
        if f.is_file() and COPIED_FILES.match(f.name):
            shutil.copyfile(f, dest / f.name)
            copied.append(f.name)
        elif f.is_dir() and f.name in COPIED_DIRS:
            shutil.copytree(f, dest / f.name, dirs_exist_ok=True)
            copied.append(f.name)
    return copied


def saved_layer_indices(checkpoint_dir: Path) -> set[int]:
    """Decoder-layer indices present in the saved safetensors (vision-tower keys excluded)."""
    pattern = re.compile(r"(?:^|\.)layers\.(\d+)\.")
    found: set[int] = set()
    for shard in checkpoint_dir.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                m = pattern.search(key)
                if m and not any(v in key for v in ("vision", "visual", "audio")):
                    found.add(int(m.group(1)))
    return found


def _compensation_cell(record: dict | None) -> str:
    """The model card's compensation entry: the method and, per gap, where its repair was folded
    and the fit's relative residual."""
    if not record:
        return "none (plain removal)"
    weights = ", ".join(f"{d}={w:g}" for d, w in record["domain_weights"].items())
    per_gap = "; ".join(f"gap {g['first']}..{g['last']} into layer {g['folded_into']} ({g['form']}, relative "
                        f"residual {g['relative_residual']:.3f})" for g in record["gaps"])
    return f"`{record['method']}` fitted on {record['calibration_records']} records ({weights}): {per_gap}"


def model_card(info: dict) -> str:
    """Markdown model card stating what was removed and how (0-based layer numbers)."""
    removed = ", ".join(map(str, info["removed_layers"]))
    weights = info.get("weights")
    lines = [
        "---",
        f"base_model: {info['source_model']}" if not is_local(info["source_model"]) else "base_model: null",
        "tags: [depthprune, depth-pruning, pruned]",
        "---",
        f"# {info['source_model']} — depth-pruned with depthprune",
        "",
        f"This checkpoint is `{info['source_model']}` with **{len(info['removed_layers'])} of "
        f"{info['original_num_layers']} decoder layers removed** ({info['num_layers']} remain).",
        "",
        "| field | value |", "| --- | --- |",
        f"| method | `{info['method']}` |",
        f"| budget | {info['budget']} layers (requested: {info['budget_spec']}) |",
        f"| removed layers (0-based, original numbering) | {removed} |",
        f"| domain | {info.get('domain') or '-'} |",
        f"| weights | {json.dumps(weights) if weights else '-'} |",
        f"| scores fingerprint | {info.get('scores_fingerprint') or '-'} |",
        f"| compensation | {_compensation_cell(info.get('compensation'))} |",
        f"| depthprune / transformers / torch | {info['versions']['depthprune']} / "
        f"{info['versions']['transformers']} / {info['versions']['torch']} |",
        "",
        "Surviving layers are renumbered 0..N-1; the vision tower is unchanged. The model has not "
        "been healed (fine-tuned) unless stated elsewhere; expect quality loss. Full details in "
        "`pruning.json`.",
        "",
    ]
    return "\n".join(lines)


def save_pruned(model: nn.Module, processor: Any, out_dir: str | Path, info: dict,
                source_model: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Save a pruned ``model`` as a stock checkpoint in ``out_dir``, atomically.

    ``info`` is written to ``pruning.json`` (and summarised in the model card). Processor
    files come byte-for-byte from ``source_model`` when it can be found, else the in-memory
    processor is saved. Raises PruneError if the saved safetensors do not hold exactly the
    surviving layers. Returns the output directory.
    """
    out = check_output(out_dir, overwrite, kind="dir", inputs=inputs_of(model=source_model))
    _, layers = find_decoder_layers(model)
    source = source_files_dir(source_model) if source_model is not None else None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if source is not None and source.is_dir():
            copy_processor_files(source, tmp)
        elif processor is not None:
            processor.save_pretrained(tmp)
        found = saved_layer_indices(tmp)
        if found != set(range(len(layers))):
            raise PruneError(f"saved checkpoint holds decoder layers {sorted(found)}, expected "
                             f"0..{len(layers) - 1}; nothing was written to {out}")
        (tmp / "pruning.json").write_text(json.dumps(info, indent=1))
        (tmp / "README.md").write_text(model_card(info))
    return out


def pruning_info(model_id: str, original_num_layers: int, remove: Sequence[int], method: str,
                 budget_spec: Any, extra: dict | None = None) -> dict:
    """The ``pruning.json`` record: counts, removed layers (0-based), method, versions."""
    import torch
    import transformers
    remove = sorted(remove)
    info = {
        "source_model": str(model_id),
        "original_num_layers": original_num_layers,
        "num_layers": original_num_layers - len(remove),
        "removed_layers": remove,
        "kept_layers": [i for i in range(original_num_layers) if i not in set(remove)],
        "indexing": "0-based, original numbering",
        "method": method,
        "budget": len(remove),
        "budget_spec": str(budget_spec),
        "versions": {"depthprune": __version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
    }
    info.update(extra or {})
    return info
