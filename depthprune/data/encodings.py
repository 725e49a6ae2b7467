"""The encoded batches a sweep keeps: every plan is evaluated on the same eval batches, so the
chat template, image decoding and preprocessing run once per batch, not once per plan
(:func:`depthprune.data.records.kept_encodings`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any


class EncodingCache:
    """Batches :func:`encode` made, kept to be returned again for the same processor, texts and
    images (a sweep evaluates every plan on the same eval batches: the chat template, image
    decoding and preprocessing run once per batch, not once per plan). Holds at most
    ``limit_bytes`` of tensors; past it, new batches are encoded and not kept."""

    def __init__(self, limit_bytes: int = 1 << 30) -> None:
        self.limit_bytes, self.bytes = limit_bytes, 0
        self.batches: dict[tuple, Any] = {}

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self.batches:
            batch = make()
            size = tensor_bytes(batch)
            if self.bytes + size > self.limit_bytes:
                return batch
            self.batches[key], self.bytes = batch, self.bytes + size
        # a shallow copy: a caller's .to(device) replaces the copy's tensors, not the kept ones
        return copy.copy(self.batches[key])

    def derived(self, key: tuple, make: Callable[[], Any]) -> Any:
        """What a model computes from a kept batch and nothing else (the vision tower's image
        features, which pruning, repair and healing never change), made once and kept under the
        same memory limit."""
        if key not in self.batches:
            value = make()
            nbytes = tensor_bytes(value)
            if self.bytes + nbytes > self.limit_bytes:
                return value
            self.batches[key], self.bytes = value, self.bytes + nbytes
        return self.batches[key]


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a batch or a (nested) model output."""
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return value.numel() * value.element_size()
    if isinstance(value, dict) or hasattr(value, "values"):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0
