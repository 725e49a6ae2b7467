"""Where a model keeps its decoder layers, which config fields describe them, what to protect.

Discovery is structural (the one ``nn.ModuleList`` named ``layers`` outside the vision
tower whose length is the text config's ``num_hidden_layers``); a family only needs an
entry in :data:`ADAPTERS` when it keeps per-layer facts that slicing cannot fix by itself
(Qwen3-VL deepstack injection, Qwen3-VL-MoE's sparse-layer schedule). To add a family:
add its ``model_type`` to ``ADAPTERS`` (with hooks if it needs them), add a tiny config to
``tests/helpers/tiny_configs.py``, and run ``pytest tests/models/test_architectures.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class ModelError(ValueError):
    """The model cannot be loaded or is not a supported architecture."""


@dataclass(frozen=True)
class Adapter:
    """Family-specific facts. ``vision``: loads with AutoModelForImageTextToText."""

    vision: bool
    #: layers whose removal changes behaviour beyond the layer itself (0-based)
    protected: Callable[[Any], list[int]] = field(default=lambda config: [])
    #: extra config edits after pruning: fn(text_config, kept_layer_modules) -> None
    edit_config: Callable[[Any, list[nn.Module]], None] | None = None


def _deepstack_layers(config: Any) -> list[int]:
    # Qwen3-VL adds deepstack visual features after LM layers 0..len(indexes)-1, by position.
    # (`deepstack_visual_indexes` names ViT blocks and is never edited.)
    return list(range(len(getattr(config.vision_config, "deepstack_visual_indexes", []) or [])))


def _moe_schedule(text_config: Any, kept: list[nn.Module]) -> None:
    # Qwen3-VL-MoE picks dense vs sparse MLP from the layer index at construction. After
    # renumbering, the old schedule would rebuild the wrong kind of MLP on reload, so record
    # each surviving layer's actual kind explicitly.
    dense = [i for i, layer in enumerate(kept) if not hasattr(layer.mlp, "experts")]
    text_config.decoder_sparse_step = 1
    text_config.mlp_only_layers = dense


ADAPTERS: dict[str, Adapter] = {
    "qwen3_vl": Adapter(vision=True, protected=_deepstack_layers),
    "qwen3_vl_moe": Adapter(vision=True, protected=_deepstack_layers, edit_config=_moe_schedule),
    "qwen2_5_vl": Adapter(vision=True),
    "qwen2_vl": Adapter(vision=True),
    "llava": Adapter(vision=True),
    "llava_onevision": Adapter(vision=True),
    "gemma3": Adapter(vision=True),
    # text families: each one is run through tests/models/test_architectures.py (SmolLM is "llama",
    # Qwen2.5 is "qwen2"); their per-layer facts (layer_types, Qwen2's max_window_layers,
    # Gemma 3's per-layer-type RoPE) are sliced by depthprune.pruning.prune_layers
    "llama": Adapter(vision=False),
    "qwen2": Adapter(vision=False),
    "qwen3": Adapter(vision=False),
    "mistral": Adapter(vision=False),
    "phi3": Adapter(vision=False),
    "gemma3_text": Adapter(vision=False),
}


def supported_architectures() -> str:
    """Comma-separated model_type names with a tested adapter."""
    return ", ".join(sorted(ADAPTERS))


def adapter_for(config: Any) -> Adapter:
    """The adapter of ``config.model_type``; untested types that transformers can load as a
    causal LM or image-text-to-text model get a generic adapter and a warning."""
    model_type = getattr(config, "model_type", None)
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )
    vision = model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    if not vision and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(
            f"unknown architecture '{model_type}': depthprune supports {supported_architectures()} "
            "(and other causal LMs / image-text-to-text models found by structure). To add one, "
            "add an entry to depthprune.models.architectures.ADAPTERS and a tiny config to tests/helpers/tiny_configs.py")
    warnings.warn(f"architecture '{model_type}' has no tested adapter; using structural discovery. "
                  "Check the pruned model's outputs before relying on it.", stacklevel=2)
    return Adapter(vision=vision)


def text_config(model_or_config: Any) -> Any:
    """The decoder's config (the text sub-config of a VLM, the config itself of an LLM)."""
    config = getattr(model_or_config, "config", model_or_config)
    return config.get_text_config()


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Dotted path and ModuleList of the language decoder's layers.

    Raises ModelError naming the model type if none or several candidates are found.
    """
    n = text_config(model).num_hidden_layers
    found = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, nn.ModuleList) and name.split(".")[-1] == "layers" and len(mod) == n
             and not any(part in name for part in ("vision", "visual", "audio"))]
    if len(found) != 1:
        raise ModelError(
            f"cannot locate the decoder layers of {type(model).__name__} "
            f"({'none' if not found else ', '.join(p for p, _ in found)} of length {n}). "
            f"Supported: {supported_architectures()}; to add one see depthprune/models/architectures.py (ADAPTERS) and docs/architectures.md")
    return found[0]


def architecture_protected(model: nn.Module) -> list[int]:
    """Layers the architecture protects by default (Qwen3-VL deepstack injection)."""
    return adapter_for(model.config).protected(model.config)


def input_device(model: nn.Module) -> torch.device:
    """Device of the input embeddings (where batches must go, also under device_map)."""
    return model.get_input_embeddings().weight.device
