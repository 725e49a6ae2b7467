"""Single-layer ablation: what removing each decoder layer alone costs each sample.

The ground truth any similarity signal should be judged against (and the perplexity
criterion of Shortened LLaMA, Kim et al. 2024): for every layer ``l``, the teacher-forced
answer NLL (:func:`depthprune.evaluate.generation.answer_nll`) of every calibration record with
layer ``l`` removed in memory (:func:`depthprune.pruning.layers_removed`, exactly what a
pruned checkpoint computes), minus the full model's. One forward per layer and batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from depthprune.data.records import DataError, Record, batches
from depthprune.evaluate.generation import answer_nll
from depthprune.models.architectures import find_decoder_layers
from depthprune.pruning import layers_removed


def require_answers(records: Sequence[Record]) -> None:
    """Raise DataError naming the first record without a (non-empty) answer."""
    missing = next((r for r in records if r.answer is None or not str(r.answer).strip()), None)
    if missing is not None:
        raise DataError(f"{missing.source}: record has no 'answer'; single-layer ablation measures "
                        "the answer's NLL, so every calibration record needs one (or drop --ablation)")


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
    for layer in tqdm(range(num_layers), desc="ablation", unit="layer", disable=not progress):
        with layers_removed(model, [layer]):
            columns.append(_nll(model, processor, records, batch_size))
    return base, torch.stack(columns, dim=1)


def add_ablation(scores: Any, model: nn.Module, processor: Any, records: Sequence[Record], batch_size: int = 4,
                 progress: bool = True) -> Any:
    """Measure :func:`ablation_nll` on ``records`` (the records ``scores`` was computed on) and
    attach it to ``scores`` (``base_nll``, ``ablation_nll`` and ``settings["ablation"]``, with
    its wall seconds). Returns ``scores``. The one place `score --ablation` and a study's
    ``calibration.ablation`` measure it."""
    import time
    started = time.perf_counter()
    scores.base_nll, scores.ablation_nll = ablation_nll(model, processor, records, batch_size=batch_size,
                                                        progress=progress)
    scores.settings["ablation"] = {"seconds": round(time.perf_counter() - started, 3),
                                   "measure": "answer NLL, nats/token, one layer removed at a time"}
    return scores
