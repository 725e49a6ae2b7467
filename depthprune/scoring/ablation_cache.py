"""Prefix-cached layer removal: measure the answer NLL of many pruned variants from one pass.

Removing decoder layer ``l`` leaves layers ``0..l-1`` computing exactly what they computed
before, so their work need not be repeated. One *base pass* per batch
(:func:`depthprune.evaluation.generation.answer_nll`, with hooks) keeps, for every decoder layer, its
input hidden state and its own call arguments, captured by a forward pre-hook registered
``with_kwargs=True``: the attention mask of its layer type (full or sliding), its position
embeddings (Gemma3 has local and global RoPE), position ids. Measuring the model without
layer ``l`` then resumes from layer ``l``'s input and runs the surviving layers ``l+1..``
with their own captured arguments, which is what a truly pruned checkpoint computes (its
surviving layers keep their types), then the final norm and the LM head on the answer
positions only. Single-layer ablation costs L(L+1)/2 layer forwards per batch instead of
L(L+1); SLEB (:mod:`depthprune.ranking.sleb`) resumes each candidate from its own layer.

Qwen3-VL adds deepstack visual features to the outputs of the layers at list positions
0..2, in place. Those additions are already in the cached inputs of the later layers; only
removing a layer at list position 0..2 of a batch with visual features moves them, and that
case is measured with a full forward of the pruned model instead (exact, not resumed).

Memory: the cache holds ``batch x tokens x hidden x layers`` values of the model's dtype
(:func:`cache_bytes`); the call arguments are shared between layers and small. Past
``cache_mb`` megabytes the remaining layer inputs are written to a temporary directory
and read back when needed (:class:`CacheStore`), with a warning: slower, never wrong.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthprune.data.records import Record
from depthprune.evaluation.generation import answer_nll
from depthprune.models.architectures import find_decoder_layers
from depthprune.pruning import layers_removed

#: Default limit of the in-memory cache (MB); the rest spills to disk.
DEFAULT_CACHE_MB = 4096.0


def cache_bytes(batch: int, tokens: int, hidden: int, layers: int, bytes_per_value: int) -> int:
    """Bytes of the layer-input cache of one batch: ``batch x tokens x hidden x layers`` values."""
    return batch * tokens * hidden * layers * bytes_per_value


class CacheUnsupported(RuntimeError):
    """The model does something between decoder layers that the cache cannot replay."""


class CacheStore:
    """Tensors by key, in memory up to ``limit_mb`` megabytes and on disk past it.

    ``peak_bytes`` is the most held in memory at once, ``spilled_bytes`` the total written
    to disk. Call :meth:`close` (or use as a context manager) to delete the spill files.
    """

    def __init__(self, limit_mb: float = DEFAULT_CACHE_MB) -> None:
        if not limit_mb > 0:
            raise ValueError(f"--ablation-cache-mb must be > 0, got {limit_mb}")
        self.limit = int(limit_mb * 2**20)
        self.used = self.peak_bytes = self.spilled_bytes = 0
        self._memory: dict[Any, torch.Tensor] = {}
        self._disk: dict[Any, tuple[Path, torch.device]] = {}
        self._dir: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "CacheStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def put(self, key: Any, tensor: torch.Tensor) -> None:
        """Keep ``tensor`` (a reference, no copy, while it fits) under ``key``."""
        self.pop(key)
        size = tensor.numel() * tensor.element_size()
        if self.used + size <= self.limit:
            self._memory[key] = tensor
            self.used += size
            self.peak_bytes = max(self.peak_bytes, self.used)
            return
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="depthprune-cache-")
            warnings.warn(f"the layer-input cache exceeds --ablation-cache-mb {self.limit / 2**20:.0f}; the "
                          f"rest is written to {self._dir.name} (slower). Raise the limit or lower "
                          "--batch-size to keep it in memory", stacklevel=2)
        path = Path(self._dir.name) / f"{len(self._disk)}-{abs(hash(key))}.pt"
        torch.save(tensor.detach().cpu(), path)
        self._disk[key] = (path, tensor.device)
        self.spilled_bytes += size

    def get(self, key: Any) -> torch.Tensor:
        """The tensor stored under ``key`` (read back from disk if it was spilled)."""
        if key in self._memory:
            return self._memory[key]
        path, device = self._disk[key]
        return torch.load(path, map_location=device, weights_only=True)

    def pop(self, key: Any) -> None:
        """Forget ``key`` (no error if absent)."""
        tensor = self._memory.pop(key, None)
        if tensor is not None:
            self.used -= tensor.numel() * tensor.element_size()
        spilled = self._disk.pop(key, None)
        if spilled is not None:
            spilled[0].unlink(missing_ok=True)

    def close(self) -> None:
        """Drop every tensor and delete the spill directory."""
        self._memory.clear()
        self._disk.clear()
        self.used = 0
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


@dataclass
class _Call:
    """How one decoder layer was called in the base pass, without its hidden-state input."""

    args: tuple
    kwargs: dict
    positional: bool  # hidden_states was args[0] (else kwargs["hidden_states"])


@dataclass
class BatchCache:
    """One batch's base pass: every surviving layer's input (in the store, key ``(id, layer)``),
    call arguments, the answer targets and the per-sample NLL of the current model.

    ``removed`` are the (original, 0-based) layers absent from the model the cache describes;
    ``deepstack`` is how many list positions get visual features added after them (0 without
    visual features)."""

    batch_id: int
    records: list[Record]
    calls: dict[int, _Call]
    targets: torch.Tensor          # [batch, keep - 1] token ids predicted at the answer positions
    n_answer: list[int]
    base: torch.Tensor             # [batch] float64 NLL (nats/token) of the current model
    removed: set[int] = field(default_factory=set)
    deepstack: int = 0


class PrefixCache:
    """Resume a model from any decoder layer's cached input (see the module docstring).

    ``model`` is in eval mode; ``store`` holds the layer inputs of every live
    :class:`BatchCache` (one per batch for ablation, all of them for SLEB).
    """

    def __init__(self, model: nn.Module, processor: Any, store: CacheStore) -> None:
        self.model, self.processor, self.store = model, processor, store
        path, layers = find_decoder_layers(model)
        self.layers = list(layers)
        self.decoder = model.get_submodule(path.rpartition(".")[0])
        self.norm = getattr(self.decoder, "norm", None)
        self.head = model.get_output_embeddings()
        if not isinstance(self.norm, nn.Module) or not isinstance(self.head, nn.Module):
            raise CacheUnsupported(f"{type(model).__name__}: no final norm next to the decoder layers or no "
                                   "output embeddings")
        # Gemma-style logit soft-capping, where the model's own forward applies it
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self._ids = 0
        self.head_check_tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 5e-2

    # ------------------------------------------------------------------ base pass
    def capture(self, records: Sequence[Record], removed: Sequence[int] = ()) -> BatchCache:
        """Run the model without ``removed`` layers on ``records`` (one batch) and cache it."""
        removed = set(removed)
        self._ids += 1
        batch_id = self._ids
        calls: dict[int, _Call] = {}
        seen: dict[str, Any] = {"last_output": None, "deepstack": 0, "called": 0}
        handles = []

        def pre_hook(index: int):
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                positional = bool(args)
                h = args[0] if positional else kwargs["hidden_states"]
                last, position = seen["last_output"], seen["called"]
                # deepstack adds visual features to a copy of the outputs of list positions 0..n-1
                if last is not None and h.data_ptr() != last.data_ptr() and position - 1 >= seen["deepstack"]:
                    seen["problem"] = f"the input of layer {index} is not the previous layer's output"
                seen["last_output"], seen["called"] = None, position + 1
                self.store.put((batch_id, index), h)
                calls[index] = _Call(args[1:] if positional else args,
                                     {k: v for k, v in kwargs.items() if k != "hidden_states"}, positional)
            return hook

        def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            seen["last_output"] = output[0] if isinstance(output, (tuple, list)) else output

        def decoder_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            embeds = kwargs.get("deepstack_visual_embeds")
            seen["deepstack"] = len(embeds) if embeds is not None else 0

        def norm_hook(module: nn.Module, args: tuple) -> None:
            last = seen["last_output"]
            deepstack_last = seen["called"] <= seen["deepstack"]  # (a model of at most n layers)
            if last is None or (args[0].data_ptr() != last.data_ptr() and not deepstack_last):
                seen["problem"] = "the final norm's input is not the last layer's output"
            seen["final"] = args[0]

        def top_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen["input_ids"] = kwargs.get("input_ids")

        for i, layer in enumerate(self.layers):
            if i not in removed:
                handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
                handles.append(layer.register_forward_hook(post_hook, with_kwargs=True))
        handles.append(self.decoder.register_forward_pre_hook(decoder_hook, with_kwargs=True))
        handles.append(self.norm.register_forward_pre_hook(norm_hook))
        handles.append(self.model.register_forward_pre_hook(top_hook, with_kwargs=True))
        try:
            if removed:
                with layers_removed(self.model, sorted(removed)):
                    result = answer_nll(self.model, self.processor, records)
            else:
                result = answer_nll(self.model, self.processor, records)
            name = type(self.model).__name__
            if seen.get("input_ids") is None or "final" not in seen:
                raise CacheUnsupported(f"{name}: the base pass gave no input_ids or final-norm input")
            if "problem" in seen:
                raise CacheUnsupported(f"{name}: {seen['problem']} (something runs between the decoder "
                                       "layers that the cache cannot replay)")
            n_answer = [n for _, n in result]
            keep = max(n_answer) + 1
            cache = BatchCache(batch_id, list(records), calls, seen["input_ids"][:, -(keep - 1):], n_answer,
                               torch.tensor([nll for nll, _ in result], dtype=torch.float64), removed,
                               seen["deepstack"])
            # the cache's own norm + head on the final hidden state must give the base pass's NLL
            gap = float((self._head_nll(cache, seen["final"]) - cache.base).abs().max())
            if gap > self.head_check_tolerance:
                raise CacheUnsupported(f"{name}: final norm + LM head differ from the model's own forward by "
                                       f"{gap:.2g} nats/token")
        except BaseException:
            for i in range(len(self.layers)):
                self.store.pop((batch_id, i))
            raise
        finally:
            for h in handles:
                h.remove()
        return cache

    def release(self, cache: BatchCache) -> None:
        """Free the layer inputs of ``cache``."""
        for i in range(len(self.layers)):
            self.store.pop((cache.batch_id, i))

    # ------------------------------------------------------------------ resuming
    def _run_layer(self, cache: BatchCache, index: int, h: torch.Tensor) -> torch.Tensor:
        call = cache.calls[index]
        layer = self.layers[index]
        out = layer(h, *call.args, **call.kwargs) if call.positional else \
            layer(*call.args, hidden_states=h, **call.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _head_nll(self, cache: BatchCache, final: torch.Tensor) -> torch.Tensor:
        """Per-sample answer NLL (float64) from the last decoder layer's output, as
        :func:`~depthprune.evaluation.generation.answer_nll` computes it (norm and head on the answer
        positions only)."""
        keep = cache.targets.shape[1] + 1
        logits = self.head(self.norm(final[:, -keep:-1])).float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        targets = cache.targets.to(logits.device)
        token_nll = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return torch.tensor([token_nll[i, -n:].mean().item() for i, n in enumerate(cache.n_answer)],
                            dtype=torch.float64)

    def position(self, cache: BatchCache, layer: int) -> int:
        """List position of original ``layer`` in the model ``cache`` describes."""
        return sum(1 for i in range(layer) if i not in cache.removed)

    def resumable(self, cache: BatchCache, layer: int) -> bool:
        """Whether removing ``layer`` can be measured from the cache (no deepstack injection moves)."""
        return self.position(cache, layer) >= cache.deepstack

    def nll_without(self, cache: BatchCache, layer: int) -> torch.Tensor:
        """Per-sample answer NLL (float64, nats/token) of the cached model with ``layer`` also
        removed: resumed from ``layer``'s input, or a full forward if deepstack would move."""
        if layer in cache.removed:
            raise ValueError(f"layer {layer} is already removed")
        if not self.resumable(cache, layer):
            with layers_removed(self.model, sorted(cache.removed | {layer})):
                return torch.tensor([nll for nll, _ in answer_nll(self.model, self.processor, cache.records)],
                                    dtype=torch.float64)
        h = self.store.get((cache.batch_id, layer))
        for j in range(layer + 1, len(self.layers)):
            if j not in cache.removed:
                h = self._run_layer(cache, j, h)
        return self._head_nll(cache, h)

    def remove(self, cache: BatchCache, layer: int, nll: torch.Tensor | None = None) -> BatchCache:
        """Advance ``cache`` to the model with ``layer`` also removed: the surviving layers
        after it get their new inputs (recomputed from ``layer``'s input; a fresh base pass
        if a deepstack injection moves). ``nll``: its per-sample NLL if already measured.
        Returns the cache to use from now on."""
        if not self.resumable(cache, layer):
            self.release(cache)
            return self.capture(cache.records, cache.removed | {layer})
        after = [j for j in range(layer + 1, len(self.layers)) if j not in cache.removed]
        h = self.store.get((cache.batch_id, layer))
        self.store.pop((cache.batch_id, layer))
        for n, j in enumerate(after):
            self.store.put((cache.batch_id, j), h)
            if n + 1 < len(after) or nll is None:  # the last layer's output is only needed for the NLL
                h = self._run_layer(cache, j, h)
        cache.removed = cache.removed | {layer}
        cache.base = nll if nll is not None else self._head_nll(cache, h)
        del cache.calls[layer]
        return cache


@dataclass
class CacheStats:
    """What a cached run did: cache peak in memory and spilled to disk (MB), its limit, how
    many (batch, variant) measurements needed a full forward (deepstack), and why the cache
    was not used at all (``fallback``, None when it was)."""

    limit_mb: float
    peak_mb: float = 0.0
    spilled_mb: float = 0.0
    full_forwards: int = 0
    fallback: str | None = None

    def update(self, store: CacheStore) -> None:
        """Take the store's figures."""
        self.peak_mb = max(self.peak_mb, store.peak_bytes / 2**20)
        self.spilled_mb = store.spilled_bytes / 2**20

    def as_dict(self) -> dict:
        """JSON-ready, rounded to 0.1 MB."""
        return {"method": "prefix-cached" if self.fallback is None else "one full forward per layer",
                "cache_limit_mb": self.limit_mb, "cache_peak_mb": round(self.peak_mb, 1),
                "cache_spilled_mb": round(self.spilled_mb, 1), "full_forwards": self.full_forwards,
                **({"fallback": self.fallback} if self.fallback else {})}


@torch.inference_mode()
def cached_ablation_nll(model: nn.Module, processor: Any, records: Sequence[Record], batch_size: int = 4,
                        progress: bool = True, cache_mb: float = DEFAULT_CACHE_MB,
                        stats: CacheStats | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample answer NLL (nats/token) of the full model and with each layer removed, from
    one base pass per batch (see the module docstring); the same numbers as
    :func:`depthprune.scoring.ablation.ablation_nll` in half the layer forwards.

    Returns ``(base [num_samples], ablated [num_samples, num_layers])`` as float64; column
    ``l`` is the model without decoder layer ``l`` (0-based). ``stats`` (optional) receives
    the cache's figures. A model whose layers the cache cannot replay falls back to
    :func:`~depthprune.scoring.ablation.ablation_nll`, with a warning. Raises DataError if a record
    has no answer.
    """
    from depthprune.data.records import batches
    from depthprune.scoring.ablation import ablation_nll, require_answers
    from depthprune.settings import progress as progress_bar
    require_answers(records)
    stats = stats if stats is not None else CacheStats(cache_mb)
    num_layers = len(find_decoder_layers(model)[1])
    chunks = list(batches(records, batch_size))
    bar = progress_bar(total=len(chunks) * num_layers, desc="ablation (prefix-cached)", unit="layer",
                       disable=not progress)
    base, columns = [], []
    try:
        with CacheStore(cache_mb) as store:
            runner = PrefixCache(model, processor, store)
            for chunk in chunks:
                cache = runner.capture(chunk)
                stats.update(store)
                bar.set_postfix_str(f"cache {store.used / 2**20:.0f} MB")
                row = []
                for layer in range(num_layers):
                    stats.full_forwards += not runner.resumable(cache, layer)
                    row.append(runner.nll_without(cache, layer))
                    bar.update(1)
                runner.release(cache)
                base.append(cache.base)
                columns.append(torch.stack(row, dim=1))
            stats.update(store)
    except CacheUnsupported as err:
        bar.close()
        stats.fallback = str(err)
        warnings.warn(f"prefix-cached ablation cannot replay this model ({err}); measuring one full forward "
                      "per layer instead", stacklevel=2)
        return ablation_nll(model, processor, records, batch_size=batch_size, progress=progress)
    bar.close()
    return torch.cat(base), torch.cat(columns)


def measure_ablation(scores: Any, model: nn.Module, processor: Any, records: Sequence[Record], batch_size: int,
                     progress: bool = True, cache_mb: float | None = None) -> None:
    """Fill ``scores.base_nll`` / ``scores.ablation_nll`` with :func:`cached_ablation_nll` of
    ``records`` (the scored ones) and record how in ``scores.settings["ablation"]`` (seconds,
    measure, the cache's figures)."""
    import time
    started = time.perf_counter()
    stats = CacheStats(cache_mb or DEFAULT_CACHE_MB)
    scores.base_nll, scores.ablation_nll = cached_ablation_nll(
        model, processor, records, batch_size=batch_size, progress=progress, cache_mb=stats.limit_mb, stats=stats)
    scores.settings["ablation"] = {"seconds": round(time.perf_counter() - started, 3),
                                   "measure": "answer NLL, nats/token, one layer removed at a time",
                                   **stats.as_dict()}
