"""Single-layer ablation: what removing each decoder layer alone costs each sample.

The ground truth any similarity signal should be judged against (and the perplexity
criterion of Shortened LLaMA, Kim et al. 2024): for every layer ``l``, the teacher-forced
answer NLL (:func:`depthprune.evaluation.generation.answer_nll`) of every calibration record with
layer ``l`` removed in memory (:func:`depthprune.pruning.layers_removed`, exactly what a
pruned checkpoint computes), minus the full model's. One forward per layer and batch: the
reference that :func:`depthprune.scoring.ablation_cache.cached_ablation_nll` (what `score --ablation`
and sweeps use, about half the cost) is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from depthprune.data.records import DataError, Record, batches
from depthprune.evaluation.generation import answer_nll
from depthprune.models.architectures import find_decoder_layers
from depthprune.pruning import layers_removed
from depthprune.settings import progress as progress_bar

#: What needs the answers, and the way out, for :func:`require_answers`'s message.
ABLATION_NEEDS = "single-layer ablation measures the answer's NLL, so every calibration record needs one (or drop --ablation)"
SLEB_NEEDS = ("method sleb measures the answer's NLL, so every calibration record of its domains needs one "
              "(or choose another method)")


def require_answers(records: Sequence[Record], needs: str = ABLATION_NEEDS) -> None:
    """Raise DataError naming the first record without a (non-empty) answer; ``needs`` says why."""
    missing = next((r for r in records if r.answer is None or not str(r.answer).strip()), None)
    if missing is not None:
        raise DataError(f"{missing.source}: record has no 'answer'; {needs}")


def _nll(model: nn.Module, processor: Any, records: Sequence[Record], batch_size: int) -> torch.Tensor:
    values = [nll for chunk in batches(records, batch_size) for nll, _ in answer_nll(model, processor, chunk)]
    return torch.tensor(values, dtype=torch.float64)


@torch.inference_mode()
def ablation_nll(model: nn.Module, processor: Any, records: Sequence[Record], batch_size: int = 4,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample answer NLL (nats/token) of the full model and with each layer removed.

    Returns ``(base [num_samples], ablated [num_samples, num_layers])`` as float64; column
    ``l`` is the model without decoder layer ``l`` (0-based). Raises DataError if a record
    has no answer.
    """
    require_answers(records)
    num_layers = len(find_decoder_layers(model)[1])
    base = _nll(model, processor, records, batch_size)
    columns = []
    for layer in progress_bar(range(num_layers), desc="ablation", unit="layer", disable=not progress):
        with layers_removed(model, [layer]):
            columns.append(_nll(model, processor, records, batch_size))
    return base, torch.stack(columns, dim=1)
