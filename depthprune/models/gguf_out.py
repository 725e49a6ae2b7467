"""GGUF out: prune a GGUF file into a GGUF file that keeps its quantization.

A decoder layer of a GGUF file is the set of tensors ``blk.N.*``, so removing layers needs no
re-quantization: :func:`write_pruned_gguf` copies every kept block's tensors byte-for-byte,
with their quantization types, under their new numbers ``blk.M.*`` (M = 0..N-1 in original
order), copies every other tensor (``token_embd``, ``output``, ``output_norm``, ``rope_freqs``,
...) unchanged, and copies the metadata with three edits:

- ``{arch}.block_count`` is the new layer count;
- every per-layer array (an array-valued ``{arch}.*`` key with one entry per layer, e.g.
  per-layer head counts or feed-forward lengths where an architecture stores them) is
  sliced to the kept layers;
- the pruning record is added under ``depthprune.*`` (see :data:`RECORD_KEYS`).

The tokenizer, chat template and all other keys are copied as they are. The full record also
goes beside the file as ``NAME.pruning.json`` (``pruned.gguf`` -> ``pruned.pruning.json``),
with the sizes before and after. Both are written atomically (:func:`depthprune.outputs.atomic_files`;
the ``.gguf`` is published last). The gguf package's reader and writer do the file format (its
``gguf_new_metadata.py`` script copies a file the same way).

Architectures whose layers are all alike are pruned this way with any plan
(:data:`UNIFORM_ARCHITECTURES`). Where llama.cpp and transformers derive a layer's kind from
its index (Gemma 3: every sixth layer full attention, the rest sliding-window, with their own
RoPE bases), renumbering could change what a kept layer does, and the GGUF metadata has no
per-layer list to slice: :func:`check_layer_pattern` allows exactly the cuts after which every
kept layer has, at its new index, the kind it had (whole periods such as layers 6..11 of 18,
the last layers, ...) and refuses any other in one line naming the nearest cuts that keep the
pattern (:data:`POSITIONAL_ARCHITECTURES`). Other architectures (Gemma 2, Llama 4, ...) are
refused: not tested here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthprune.models.gguf import gguf_quantization, is_gguf, require_gguf_file
from depthprune.outputs import Inputs, OutputExistsError, atomic_files, check_output, file_sha256

#: GGUF architectures (``general.architecture``) whose decoder layers are all of one kind in
#: llama.cpp and transformers, so a renumbered layer computes what it computed before.
#: Checked on files: llama (SmolLM2, tests/helpers/tiny_gguf.py), qwen2 and qwen3 (tests/helpers/tiny_gguf.py).
UNIFORM_ARCHITECTURES = ("llama", "qwen2", "qwen3")
#: Architectures whose compensated (repaired) ``ffn_down`` tensors the writer can replace: the
#: MLP output is added to the stream as it is (no post-norm), one dense down projection per layer.
COMPENSATED_ARCHITECTURES = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class LayerPattern:
    """Layer kinds that a runtime derives from the layer's index: layer ``i`` is ``odd_kind`` when
    ``(i + 1) % period == 0``, else ``kind``, in llama.cpp and in transformers' config defaults."""

    period: int
    kind: str
    odd_kind: str
    #: layer counts at which llama.cpp sets other hyperparameters by model size, which a pruned
    #: file would lose: {count: why}
    size_bound: dict

    def kinds(self, n: int) -> list[str]:
        return [self.odd_kind if (i + 1) % self.period == 0 else self.kind for i in range(n)]


#: GGUF architectures whose layer kinds follow their position, and the pattern (checked on
#: llama.cpp's source and transformers' configs; tested on tests/helpers/tiny_gguf.py's gemma3):
#: Gemma 3 (``hparams.n_swa_pattern = 6``: layer i slides unless (i + 1) % 6 == 0, with RoPE
#: base 10000 on sliding layers; transformers' ``sliding_window_pattern`` 6 the same).
POSITIONAL_ARCHITECTURES = {
    "gemma3": LayerPattern(6, "sliding-window", "full attention", {
        62: "llama.cpp recognises a 62-layer gemma3 file as Gemma 3 27B, whose attention scale is "
            "1/sqrt(hidden/heads) instead of 1/sqrt(head_dim); the pruned file would be run with the "
            "other scale"}),
}
#: Metadata keys of the pruning record (0-based layer numbers of the source file).
RECORD_KEYS = {
    "depthprune.version": "depthprune version that wrote the file",
    "depthprune.source.file": "file name of the GGUF that was pruned",
    "depthprune.source.sha256": "sha256 of that file",
    "depthprune.source.block_count": "its number of decoder layers",
    "depthprune.removed_layers": "removed layers (0-based, original numbering)",
    "depthprune.kept_layers": "kept layers in their new order (0-based, original numbering)",
    "depthprune.method": "ranking method (manual for --layers)",
    "depthprune.budget": "number of layers removed",
    "depthprune.record": "the whole pruning record as JSON (pruning.json without the file sizes)",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


class GGUFOutputError(ValueError):
    """A GGUF output cannot be made from this input; the message names it and the fix."""


def is_gguf_output(out: str | os.PathLike) -> bool:
    """True if ``--out`` names a ``.gguf`` file (which selects the GGUF output format)."""
    return is_gguf(out)


def record_path(out: str | os.PathLike) -> Path:
    """Where the pruning record of GGUF output ``out`` goes: ``NAME.pruning.json`` beside it."""
    out = Path(out)
    return out.with_name(out.name[: -len(".gguf")] + ".pruning.json")


@dataclass
class GGUFSource:
    """A GGUF file opened for pruning: its reader (a memory map) and the facts read from it."""

    path: Path
    reader: Any  # gguf.GGUFReader
    arch: str
    num_layers: int
    #: bytes of each layer's tensors, and of all tensors outside the layers
    layer_bytes: list[int]
    other_bytes: int
    #: elements (parameters) of each layer's tensors, and outside the layers
    layer_elements: list[int]
    other_elements: int

    @property
    def block_bytes(self) -> int:
        """Bytes of all decoder-layer tensors."""
        return sum(self.layer_bytes)


def open_gguf(path: str | os.PathLike) -> GGUFSource:
    """Open GGUF file ``path`` for pruning and check it can be pruned into a GGUF: an
    architecture of :data:`UNIFORM_ARCHITECTURES` or :data:`POSITIONAL_ARCHITECTURES` (whose
    plans :func:`check_layer_pattern` checks), a ``{arch}.block_count``, and layer tensors
    ``blk.N.*`` for exactly N = 0..block_count-1. Raises GGUFOutputError naming the file."""
    import gguf
    path = Path(path).expanduser()
    require_gguf_file(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, KeyError, OSError) as err:
        raise GGUFOutputError(f"{path}: not a readable GGUF file ({err}). Pass an intact .gguf file") from None
    field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = field.contents() if field is not None else None
    if arch not in UNIFORM_ARCHITECTURES and arch not in POSITIONAL_ARCHITECTURES:
        raise GGUFOutputError(
            f"{path}: GGUF output supports the architectures {', '.join(UNIFORM_ARCHITECTURES)}, whose layers "
            f"are all alike, and {', '.join(POSITIONAL_ARCHITECTURES)} (cuts that keep its layer pattern); "
            f"this file is '{arch}', where renumbering layers may change what they do. "
            "Pass an output directory as --out to get a safetensors checkpoint instead")
    count = reader.get_field(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch))
    if count is None:
        raise GGUFOutputError(f"{path}: has no {arch}.block_count key; it is not a complete GGUF model file")
    n = int(count.contents())
    layer_bytes, layer_elements = [0] * n, [0] * n
    other_bytes = other_elements = 0
    for tensor in reader.tensors:
        m = _BLOCK.match(tensor.name)
        if m is None:
            other_bytes += int(tensor.n_bytes)
            other_elements += int(tensor.n_elements)
            continue
        i = int(m.group(1))
        if i >= n:
            raise GGUFOutputError(f"{path}: holds tensor {tensor.name} but {arch}.block_count is {n}; "
                                  "the file is inconsistent")
        layer_bytes[i] += int(tensor.n_bytes)
        layer_elements[i] += int(tensor.n_elements)
    if 0 in layer_bytes:
        raise GGUFOutputError(f"{path}: layer {layer_bytes.index(0)} of {n} has no blk.* tensors; "
                              "the file is inconsistent")
    return GGUFSource(path, reader, arch, n, layer_bytes, other_bytes, layer_elements, other_elements)


def check_layer_pattern(source: GGUFSource, remove: Sequence[int]) -> None:
    """Refuse removing ``remove`` from ``source`` when its architecture derives layer kinds from
    position (:data:`POSITIONAL_ARCHITECTURES`) and a kept layer would land on an index of another
    kind, or when llama.cpp would read the pruned layer count as another model size. The one-line
    GGUFOutputError names the nearest cuts of the same size that keep the pattern. Other
    architectures: nothing to check."""
    pattern = POSITIONAL_ARCHITECTURES.get(source.arch)
    if pattern is None:
        return
    n, removed = source.num_layers, sorted(set(remove))
    if n in pattern.size_bound and removed:
        raise GGUFOutputError(f"{source.path}: a pruned {n}-layer {source.arch} GGUF cannot be written: "
                              f"{pattern.size_bound[n]}. Pass an output directory as --out to get a "
                              "safetensors checkpoint instead")
    kinds = pattern.kinds(n)
    keep = [i for i in range(n) if i not in set(removed)]
    moved = [(old, new) for new, old in enumerate(keep) if kinds[old] != kinds[new]]
    if not moved:
        return
    old, new = moved[0]
    cuts = "; ".join("--layers " + ",".join(map(str, c)) for c in nearest_pattern_cuts(kinds, removed))
    raise GGUFOutputError(
        f"{source.path}: {source.arch} derives each layer's kind from its position (layer i is "
        f"{pattern.odd_kind} when (i+1) % {pattern.period} == 0, else {pattern.kind}, in llama.cpp and "
        f"transformers), so removing layers {removed} would make {len(moved)} kept layer(s) change kind "
        f"(layer {old}, {kinds[old]}, would become layer {new}, {kinds[new]}). Nearest cuts of "
        f"{len(removed)} layers that keep the pattern: {cuts}; or pass an output directory as --out "
        "(a safetensors checkpoint lists each layer's kind)")


def nearest_pattern_cuts(kinds: Sequence[str], remove: Sequence[int], limit: int = 3) -> list[list[int]]:
    """The cuts of ``len(remove)`` layers after which every kept layer keeps its kind at its new
    index (``kinds[old] == kinds[new]``), nearest to ``remove`` first: fewest layers differing
    from it, then the smallest total shift of the sorted layer numbers. At most ``limit``."""
    n, removed = len(kinds), set(remove)
    m = n - len(removed)
    inf = n + 1
    # best[i][j]: fewest layers of `remove` kept, choosing among layers i.. with j kept so far
    best = [[inf] * (m + 1) for _ in range(n + 1)]
    best[n][m] = 0
    for i in range(n - 1, -1, -1):
        for j in range(m, -1, -1):
            options = [best[i + 1][j]] if (i - j) < len(removed) else []  # remove layer i
            if j < m and kinds[i] == kinds[j]:  # keep layer i as new layer j
                options.append(best[i + 1][j + 1] + (i in removed))
            best[i][j] = min(options, default=inf)
    found: list[list[int]] = []

    def walk(i: int, j: int, cut: list[int]) -> None:
        if len(found) >= 64:
            return
        if i == n:
            found.append(list(cut))
            return
        goal = best[i][j]
        if j < m and kinds[i] == kinds[j] and best[i + 1][j + 1] + (i in removed) == goal:
            walk(i + 1, j + 1, cut)
        if (i - j) < len(removed) and best[i + 1][j] == goal:
            walk(i + 1, j, cut + [i])
    if best[0][0] < inf:
        walk(0, 0, [])
    ref = sorted(removed)
    found.sort(key=lambda c: sum(abs(a - b) for a, b in zip(c, ref)))
    return found[:limit]


def check_gguf_output(model: str | os.PathLike, out: str | os.PathLike, overwrite: bool,
                      inputs: Inputs | Sequence[str | os.PathLike] = ()) -> GGUFSource:
    """Everything about a ``.gguf`` ``--out`` that can be checked before any work: MODEL is a
    GGUF file that can be pruned into one (:func:`open_gguf`), and ``out`` and its
    :func:`record_path` may be written (never onto or into an input). Returns the opened source."""
    if not is_gguf(model):
        raise GGUFOutputError(f"--out {out}: a .gguf output is made from a GGUF model, but {model} is not "
                              "a .gguf file. Pass a GGUF MODEL, or an output directory as --out")
    if not isinstance(inputs, Inputs):
        inputs = Inputs(tuple(Path(p) for p in inputs))
    inputs = inputs + Inputs((Path(model),))
    check_output(out, overwrite, kind="file", inputs=inputs)
    record = record_path(out)
    if (record.exists() or record.is_symlink()) and not overwrite:
        raise OutputExistsError(f"--out {out}: its pruning record {record} exists. Choose another --out "
                                "or pass --overwrite")
    check_output(record, True, kind="file", inputs=inputs)  # overlap, not a directory
    return open_gguf(model)


def _copy_fields(source: GGUFSource, writer: Any, keep: list[int]) -> list[str]:
    """Copy the metadata of ``source`` to ``writer`` with the new block count and every
    per-layer ``{arch}.*`` array sliced to ``keep``; returns the names of the sliced keys."""
    import gguf
    block_count = gguf.Keys.LLM.BLOCK_COUNT.format(arch=source.arch)
    sliced = []
    for field in source.reader.fields.values():
        # the writer adds general.architecture itself; GGUF.* are the reader's virtual fields;
        # an earlier pruning record is replaced by this one
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith(("GGUF.", "depthprune.")):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == block_count:
            value = len(keep)
        elif kind == gguf.GGUFValueType.ARRAY:
            if len(field.types) > 2:
                raise GGUFOutputError(f"{source.path}: key {field.name} is a nested array, which the gguf "
                                      "package cannot copy; this file cannot be pruned into a GGUF")
            if field.name.startswith(f"{source.arch}.") and len(value) == source.num_layers:
                value = [value[i] for i in keep]
                sliced.append(field.name)
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)
    return sliced


def _add_record(writer: Any, source: GGUFSource, info: dict) -> None:
    import gguf
    T = gguf.GGUFValueType
    record = {k: v for k, v in info.items() if k != "gguf_output"}
    writer.add_key_value("depthprune.version", str(info["versions"]["depthprune"]), T.STRING)
    writer.add_key_value("depthprune.source.file", source.path.name, T.STRING)
    writer.add_key_value("depthprune.source.sha256", info["gguf_source"]["sha256"], T.STRING)
    writer.add_key_value("depthprune.source.block_count", source.num_layers, T.UINT32)
    writer.add_key_value("depthprune.removed_layers", list(info["removed_layers"]), T.ARRAY, sub_type=T.UINT32)
    writer.add_key_value("depthprune.kept_layers", list(info["kept_layers"]), T.ARRAY, sub_type=T.UINT32)
    writer.add_key_value("depthprune.method", str(info["method"]), T.STRING)
    writer.add_key_value("depthprune.budget", int(info["budget"]), T.UINT32)
    writer.add_key_value("depthprune.record", json.dumps(record, sort_keys=True), T.STRING)


def check_gguf_compensation(source: GGUFSource) -> None:
    """Refuse, before any work, a compensated GGUF output the writer cannot express: the repaired
    tensors are the kept layers' ``ffn_down`` weights, written as F32."""
    if source.arch not in COMPENSATED_ARCHITECTURES:
        raise GGUFOutputError(f"{source.path}: --compensate with a .gguf output supports {', '.join(COMPENSATED_ARCHITECTURES)}; "
                              f"this file is '{source.arch}'. Write a checkpoint directory, or use --compensate none")


def compensated_gguf_tensors(model: Any, record: dict, remove: Sequence[int]) -> dict[str, Any]:
    """The repaired tensors of a compensated model, by their GGUF names in the pruned file
    (``blk.M.ffn_down.weight``, M the new layer number), as float32 arrays in GGUF's row order
    (the Hugging Face ``down_proj.weight`` layout)."""
    from depthprune.models.architectures import find_decoder_layers
    _, layers = find_decoder_layers(model)
    keep = [i for i in range(len(layers)) if i not in set(remove)]
    out = {}
    for gap in record["gaps"]:
        k = gap["folded_into"]
        if gap["form"] == "diagonal":
            raise GGUFOutputError("a channel-scaling repair (post-norm families) cannot be written into a GGUF yet; "
                                  "write a checkpoint directory")
        weight = layers[k].mlp.down_proj.weight.detach().float().cpu().numpy()
        out[f"blk.{keep.index(k)}.ffn_down.weight"] = weight
    return out


def write_pruned_gguf(source: GGUFSource, out: str | os.PathLike, info: dict, overwrite: bool = False,
                      progress: bool = True, replaced: dict[str, Any] | None = None) -> dict:
    """Write ``source`` without the layers ``info["removed_layers"]`` to GGUF file ``out``, and
    ``info`` (extended by a ``gguf_output`` entry: file and tensor sizes before and after, the
    per-layer keys sliced) to :func:`record_path` beside it, atomically. ``info`` is the
    ``pruning.json`` record (:func:`depthprune.pruning.pruning_info`) and must also hold
    ``gguf_source`` (``sha256``). ``replaced``: new tensors by their name in the output (float32
    arrays of the stored tensor's shape, written as F32: a compensated prune's repaired
    projections); every other tensor keeps its bytes. Returns the record written."""
    import gguf

    from depthprune.settings import progress as progress_bar
    out = Path(out)
    removed = set(info["removed_layers"])
    keep = [i for i in range(source.num_layers) if i not in removed]
    new_index = {old: new for new, old in enumerate(keep)}
    reader = source.reader
    tensors = []  # (new name, reader tensor), in the source's order
    for tensor in reader.tensors:
        m = _BLOCK.match(tensor.name)
        if m is None:
            tensors.append((tensor.name, tensor))
        elif int(m.group(1)) in new_index:
            tensors.append((f"blk.{new_index[int(m.group(1))]}.{m.group(2)}", tensor))
    replaced = dict(replaced or {})
    for name, tensor in tensors:
        if name in replaced and tuple(replaced[name].shape) != tuple(int(x) for x in reversed(tensor.shape)):
            raise GGUFOutputError(f"{source.path}: the repaired {name} has shape {tuple(replaced[name].shape)}, "
                                  f"the file's {tensor.name} {tuple(reversed(tensor.shape.tolist()))}")
    unknown = sorted(set(replaced) - {name for name, _ in tensors})
    if unknown:
        raise GGUFOutputError(f"{source.path}: no tensor {unknown[0]} in the pruned file to replace")
    kept_bytes = sum(source.layer_bytes[i] for i in keep) + sum(  # a repaired tensor is F32 now
        replaced[name].nbytes - int(tensor.n_bytes) for name, tensor in tensors if name in replaced)
    with atomic_files([record_path(out), out], overwrite) as (tmp_record, tmp_gguf):
        writer = gguf.GGUFWriter(str(tmp_gguf), source.arch, endianess=reader.endianess)
        try:
            alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
            if alignment is not None:
                writer.data_alignment = int(alignment.contents())
            sliced = _copy_fields(source, writer, keep)
            _add_record(writer, source, info)
            for name, tensor in tensors:  # shapes and types exactly as stored: the bytes are not touched
                if name in replaced:
                    array = replaced[name]
                    writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes, gguf.GGMLQuantizationType.F32)
                    continue
                writer.add_tensor_info(name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                       tensor.tensor_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            bar = progress_bar(total=source.other_bytes + kept_bytes, desc="writing GGUF", unit="B",
                               unit_scale=True, disable=not progress)
            for name, tensor in tensors:
                data = replaced[name] if name in replaced else tensor.data
                writer.write_tensor_data(data, tensor_endianess=reader.endianess)
                bar.update(int(data.nbytes))
            bar.close()
        except OSError as err:  # numpy's tofile names no file: name the GGUF, not the record
            raise OSError(err.errno, err.strerror or str(err), str(tmp_gguf)) from None
        finally:
            writer.close()
        record = dict(info, gguf_output={
            "file": out.name, "format": "gguf", "quantization_kept": True,
            "written_as_f32": sorted(replaced),
            "file_bytes": {"before": source.path.stat().st_size, "after": tmp_gguf.stat().st_size},
            "tensor_bytes": {"before": {"layers": source.block_bytes, "other": source.other_bytes},
                             "after": {"layers": kept_bytes, "other": source.other_bytes}},
            "sliced_per_layer_keys": sliced,
            "metadata_keys": sorted(RECORD_KEYS)})
        tmp_record.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


def gguf_pruning_info(source: GGUFSource, model_id: str, remove: Sequence[int], method: str,
                      budget_spec: Any, extra: dict | None = None) -> dict:
    """The ``pruning.json`` record of pruning ``source`` (as :func:`depthprune.pruning.pruning_info`),
    with ``gguf_source`` (file, sha256, quantization) and ``expected_speedup`` counted from the
    file's tensor elements."""
    from depthprune.pruning import pruning_info
    from depthprune.speed import expected_speedup
    removed = set(remove)
    before = source.other_elements + sum(source.layer_elements)
    after = before - sum(source.layer_elements[i] for i in removed)
    info = pruning_info(model_id, source.num_layers, remove, method, budget_spec, extra=extra)
    info["expected_speedup"] = expected_speedup(source.num_layers, len(removed), before, after)
    info["gguf_source"] = {"gguf_file": str(source.path), "sha256": file_sha256(source.path),
                           "quantization": gguf_quantization(source.reader)}
    return info
