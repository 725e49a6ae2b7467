"""Which layers a plan may not remove: the one owner of the protection settings.

Two sources: the architecture (Qwen3-VL's deepstack-injection layers 0..2, see
:mod:`depthprune.models.architectures`) unless ``allow_deepstack``, and the user's ``first`` /
``last`` counts. The CLI spells them ``--allow-deepstack --protect-first K --protect-last K``, a
rank request and a plan file ``allow_deepstack / protect_first / protect_last``, a study file
``protect: {allow_deepstack, first, last}``; :class:`Protection` converts between them.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Protection:
    """Protection settings: ``first`` / ``last`` layers never removed; the architecture's
    protected layers only with ``allow_deepstack``."""

    allow_deepstack: bool = False
    first: int = 0
    last: int = 0

    @classmethod
    def from_request(cls, request: Any) -> "Protection":
        """From a rank request (object or dict) with ``allow_deepstack/protect_first/protect_last``."""
        get = request.get if isinstance(request, dict) else lambda k, d=None: getattr(request, k, d)
        return cls(bool(get("allow_deepstack", False)), int(get("protect_first", 0) or 0),
                   int(get("protect_last", 0) or 0))

    def request_kwargs(self) -> dict[str, Any]:
        """The fields of a rank request (and of a plan file's ``request``)."""
        return {"allow_deepstack": self.allow_deepstack, "protect_first": self.first, "protect_last": self.last}

    def as_study(self) -> dict[str, Any]:
        """The study file's ``protect`` mapping."""
        return asdict(self)

    def union(self, other: "Protection") -> "Protection":
        """The looser deepstack rule and the larger counts of both (a plan file's own flags
        plus the ones given when it is applied)."""
        return Protection(self.allow_deepstack or other.allow_deepstack, max(self.first, other.first),
                          max(self.last, other.last))

    def layers(self, num_layers: int, architecture_protected: list[int]) -> list[int]:
        """Sorted 0-based layers that may not be removed (warns once when deepstack layers are
        released). Raises RankError for counts outside the model."""
        from depthprune.ranking.plan import RankError
        for flag, n in (("protect_first", self.first), ("protect_last", self.last)):
            if not 0 <= n <= num_layers:
                raise RankError(f"{flag}={n} must be between 0 and the {num_layers} layers of the model")
        out = set(range(self.first)) | set(range(num_layers - self.last, num_layers))
        arch = sorted(set(architecture_protected))
        if arch and self.allow_deepstack:
            warnings.warn(f"allow_deepstack: layers {arch} may be removed; removing a deepstack-injection "
                          "layer moves where visual features are injected (into the next surviving layer), "
                          "which the model was not trained for", UserWarning, stacklevel=3)
        elif arch:
            out |= set(arch)
        return sorted(out)

    def check(self, remove: list[int], protected: list[int], architecture_protected: list[int],
              what: str) -> None:
        """Refuse removing a layer of ``protected``, saying which flag lifts the protection."""
        from depthprune.ranking.plan import RankError
        hit = sorted(set(remove) & set(protected))
        if hit:
            why = ("Qwen3-VL deepstack-injection layers; pass --allow-deepstack to remove them anyway"
                   if set(hit) & set(architecture_protected) and not self.allow_deepstack
                   else "protected by --protect-first/--protect-last; lower those")
            raise RankError(f"{what} asks to remove protected layer(s) {hit}: {why}")
