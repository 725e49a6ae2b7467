"""One forward pass, forward hooks on every decoder layer, every statistic the rankers need.

Why hooks and not ``output_hidden_states``: the last hidden state HF returns is after the
final norm, and on Qwen3-VL the states after layers 0..2 include the deepstack addition.
A hook registered ``with_kwargs=True`` sees each layer's true input and output.

Per layer ``l`` the hook L2-normalises the layer's input (kept in a ring buffer of the
last ``max_span`` inputs) and output, in float32, and adds, for every span ``n`` up to
``max_span``, the cosine and angular distance between the input of layer ``l-n+1`` and the
output of layer ``l`` to per-sample, per-token-group sums. Padding is masked out. The cost
is ``max_span`` multiply-adds per hidden unit and token (one batched op per layer): small
next to a decoder layer. Extra memory: the ring buffer, ``max_span x batch x tokens x
hidden`` float32 values.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthprune import __version__
from depthprune.data.records import Record, batches, cap_per_domain, data_fingerprint, encode
from depthprune.models.architectures import architecture_protected, find_decoder_layers, input_device
from depthprune.options import ScoreSettings
from depthprune.scoring.scores import GROUPS, STATS, Scores
from depthprune.settings import progress as progress_bar


def token_groups(batch: Any, config: Any) -> torch.Tensor:
    """0/1 float32 weights ``[len(GROUPS), batch, tokens]``: all, text, image, last token.

    Image tokens are the model's image/video placeholder ids (where visual features sit).
    """
    mask = batch["attention_mask"].bool()
    ids = batch["input_ids"]
    image = torch.zeros_like(mask)
    for name in ("image_token_id", "video_token_id", "image_token_index", "video_token_index"):
        tid = getattr(config, name, None)
        if isinstance(tid, int):
            image |= ids == tid
    image &= mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last_pos = torch.where(mask, positions, -1).max(dim=1).values
    last = positions == last_pos[:, None]
    return torch.stack([mask, mask & ~image, image, last & mask]).float()


class SimilarityRecorder:
    """Forward hooks that turn each batch's layer inputs/outputs into per-sample sums.

    Use as a context manager; call :meth:`begin_batch` with the token-group weights before
    each forward and :meth:`end_batch` after it to collect ``(sums, counts)`` on the CPU.
    """

    def __init__(self, layers: nn.ModuleList, max_span: int) -> None:
        self.layers = layers
        self.max_span = max_span
        self.handles: list[Any] = []
        self.weights: torch.Tensor | None = None

    def __enter__(self) -> "SimilarityRecorder":
        for idx, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(self._hook(idx), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def begin_batch(self, weights: torch.Tensor) -> None:
        self.weights = weights
        self.ring: torch.Tensor | None = None  # [max_span, B, T, H] normalised layer inputs
        self.batch_sums: torch.Tensor | None = None  # [B, stats, groups, layers, spans]

    def _hook(self, idx: int):
        span = self.max_span
        # the input of layer j lives in ring slot j % span (each new input evicts the one no
        # later span reaches); precompute which slots hold a real start for this layer and
        # where their sums go, so the hook itself runs a dozen tensor ops
        slots = [s for s in range(span) if idx - (idx - s) % span >= 0]
        starts = [idx - (idx - s) % span for s in slots]
        lengths = [idx - j for j in starts]  # span - 1, the index on the span axis
        all_slots = len(slots) == span

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self.weights is None:  # the model ran outside a scoring batch
                return
            # a dozen small memory-bound ops: on one thread. Several threads gain nothing on
            # them and, on a busy machine, wait on each other at every op (measured: the
            # statistics of 28 layers at Qwen3-VL-2B width, on a busy 2-core machine: 5.7 s on 2
            # threads, 1.0 s on one; elementwise and per-token arithmetic: the same sums)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self._record(idx, slots, starts, lengths, all_slots, args, kwargs, output)
            finally:
                torch.set_num_threads(threads)
        return hook

    def _record(self, idx: int, slots: list[int], starts: list[int], lengths: list[int], all_slots: bool,
                args: tuple, kwargs: dict, output: Any) -> None:
        """One layer's statistics of the current batch, into ``batch_sums``."""
        num_layers, span = len(self.layers), self.max_span
        h_in = args[0] if args else kwargs["hidden_states"]
        h_out = output[0] if isinstance(output, (tuple, list)) else output
        device = h_out.device
        if self.ring is None or self.ring.device != device:
            # layers may sit on several devices under device_map="auto": follow them
            ring = torch.zeros(span, *h_in.shape, dtype=torch.float32, device=device)
            if self.ring is not None:
                ring.copy_(self.ring)
            self.ring = ring
            self.weights = self.weights.to(device)
            if self.batch_sums is None:
                self.batch_sums = torch.zeros(h_in.shape[0], len(STATS), len(GROUPS), num_layers,
                                              span, dtype=torch.float32, device=device)
            self.batch_sums = self.batch_sums.to(device)
        self.ring[idx % span] = F.normalize(h_in.detach().float(), dim=-1)
        u_out = F.normalize(h_out.detach().float(), dim=-1)
        b, t, h = u_out.shape
        ring = self.ring.view(span, b * t, h)
        if not all_slots:
            ring = ring[slots]
        # every span ending here in one batched dot product: [tokens, 1, S]
        cos = torch.bmm(u_out.view(b * t, 1, h), ring.permute(1, 2, 0)).view(b, t, -1).clamp_(-1.0, 1.0)
        both = torch.stack([cos, torch.arccos(cos).div_(math.pi)])  # [stat, B, T, S]
        # sum over the tokens of each group: [B, stat, G, S]
        self.batch_sums[:, :, :, starts, lengths] = torch.einsum("gbt,kbts->bkgs", self.weights, both)

    def end_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``(sums, counts)`` of the batch just run, as float64 / int64 on CPU."""
        sums = self.batch_sums.double().cpu()
        counts = self.weights.sum(-1).T.round().long().cpu()  # [B, G]
        self.weights, self.ring, self.batch_sums = None, None, None
        return sums, counts


def model_forward_kwargs(model: nn.Module, batch: Any) -> dict:
    """The batch as keyword arguments for a scoring forward: no cache, and the LM head on the
    last position only (``logits_to_keep=1``, where the model's forward takes it): the
    statistics need no logits, and the head (151,936 x 2,048 on Qwen3-VL-2B) is a large share
    of a forward over every position. The decoder layers compute exactly what they compute
    in a plain forward."""
    kwargs = dict(batch, use_cache=False)
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    return kwargs


@torch.inference_mode()
def score_model(model: nn.Module, processor: Any, records: Sequence[Record],
                settings: ScoreSettings | None = None, model_id: str = "",
                progress: bool = True) -> Scores:
    """Score every decoder layer of ``model`` on ``records`` in one pass over the data.

    Returns :class:`Scores` holding per-sample sums of the cosine and angular distance
    between each layer's input and the output of each layer up to ``max_span`` deeper.
    """
    settings = settings or ScoreSettings()
    records = cap_per_domain(records, settings.max_samples)
    _, layers = find_decoder_layers(model)
    num_layers = len(layers)
    max_span = min(settings.max_span or math.ceil(num_layers / 2), num_layers)
    device = input_device(model)
    all_sums, all_counts = [], []
    started = time.perf_counter()
    bar = progress_bar(total=len(records), desc="scoring", unit="sample", disable=not progress)
    with SimilarityRecorder(layers, max_span) as recorder:
        for chunk in batches(records, settings.batch_size):
            batch = encode(processor, chunk).to(device)
            recorder.begin_batch(token_groups(batch, model.config))
            model(**model_forward_kwargs(model, batch))
            sums, counts = recorder.end_batch()
            all_sums.append(sums)
            all_counts.append(counts)
            bar.update(len(chunk))
    bar.close()
    elapsed = time.perf_counter() - started
    import transformers
    return Scores(
        model_id=model_id or getattr(model.config, "_name_or_path", ""),
        num_layers=num_layers, max_span=max_span,
        sample_ids=[r.id for r in records], sample_domains=[r.domain for r in records],
        sums=torch.cat(all_sums), counts=torch.cat(all_counts),
        protected_layers=architecture_protected(model),
        settings={
            "batch_size": settings.batch_size, "max_samples": settings.max_samples,
            "max_span": max_span, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "data_fingerprint": data_fingerprint(records), "num_samples": len(records),
            "seconds": round(elapsed, 3), "depthprune": __version__,
            "transformers": transformers.__version__, "torch": torch.__version__,
            "similarity_precision": "float32",
        },
    )
