"""The compensation spec (``--compensate``), light to import (no torch): what the CLI, the API and
study files share. The fit itself is :mod:`depthprune.compensation.fit`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: ``--compensate`` values: plain removal, ReplaceMe's d x d map, or the re-fitted down projection.
METHODS = ("none", "lstsq", "refit")
#: Which calibration tokens the repair is fitted on.
TOKENS = ("all", "answer")
#: Default ridge, relative to the mean eigenvalue of ``F^T F`` (chosen on a development seed of
#: the toy, docs/results/compensation.md); a singular system at a smaller ridge falls back to it.
DEFAULT_RIDGE = 1e-3


class CompensationError(ValueError):
    """The plan or the model cannot be compensated (one line for the CLI)."""


@dataclass(frozen=True)
class Compensation:
    """How the pruning interface is repaired. ``method``: none (plain removal), lstsq
    (ReplaceMe's d x d map) or refit (the kept layer's down projection re-fitted);
    ``ridge``: shrinkage towards plain removal, relative to the mean eigenvalue of the
    features' Gram matrix (0 = plain least squares; a singular system then falls back to
    :data:`DEFAULT_RIDGE`); ``tokens``: all (every token of each record, the answer included
    where there is one) or answer (the answer span and the token before it; needs answers)."""

    method: str = field(default="none", metadata={"flag": "compensate", "help": (
        "Training-free repair of each gap, fitted on --data of --domain/--weights (all domains by default) and "
        "folded into the kept layer before the gap: none (plain removal), lstsq (ReplaceMe's d x d map on that "
        "layer's MLP output) or refit (that layer's down projection re-fitted by least squares). The checkpoint "
        "stays stock; a method then never removes layer 0.")})
    ridge: float = field(default=DEFAULT_RIDGE, metadata={"flag": "compensate-ridge", "min": 0, "help": (
        "Ridge of the --compensate fit, relative to the mean eigenvalue of its Gram matrix; it shrinks the fit "
        "towards plain removal (0: plain least squares).")})
    tokens: str = field(default="all", metadata={"flag": "compensate-tokens", "help": (
        "Calibration tokens the --compensate fit uses: all (every token, answers included) or answer (the "
        "answer span; needs answers).")})
    #: domain weights of the fit, whatever the plan was chosen for; None: --domain / --weights
    weights: dict[str, float] | None = field(default=None, metadata={
        "flag": "compensate-weights", "cli_type": str, "help": (
            "Domains the --compensate fit is calibrated on, e.g. math=1,general=1, whatever --domain chose the "
            "layers for (default: --domain, else --weights, else every domain equally). Choose layers for the "
            "domain you protect, repair on every domain you keep: one command.")})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CompensationError(f"--compensate {self.method!r}: choose one of {', '.join(METHODS)}")
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or \
                not math.isfinite(self.ridge) or self.ridge < 0:
            raise CompensationError(f"--compensate-ridge {self.ridge!r}: give a number >= 0, e.g. {DEFAULT_RIDGE}")
        if self.tokens not in TOKENS:
            raise CompensationError(f"--compensate-tokens {self.tokens!r}: choose one of {', '.join(TOKENS)}")
        if self.weights is not None and (not isinstance(self.weights, dict) or not self.weights or any(
                isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0
                for w in self.weights.values())):
            raise CompensationError(f"--compensate-weights {self.weights!r}: give domain=weight pairs with finite "
                                    "weights >= 0, e.g. math=1,general=1")

    @classmethod
    def from_cli(cls, values: dict) -> "Compensation":
        """The spec of a command line: ``--compensate-weights`` text parsed (``math=1,general=1``)."""
        from depthprune.options import parse_weights
        weights = values.get("weights")
        try:
            parsed = parse_weights(weights) if weights else None
        except ValueError as exc:
            raise CompensationError(f"--compensate-{exc}".replace("e.g. --weights", "e.g. --compensate-weights")) from None
        return cls(**dict(values, weights=parsed))

    @property
    def active(self) -> bool:
        """False for plain removal."""
        return self.method != "none"

    @classmethod
    def of(cls, value: "Compensation | str | None") -> "Compensation":
        """A spec from a spec, a method name, or None (plain removal)."""
        return value if isinstance(value, Compensation) else cls(method=value or "none")

    def label(self) -> str:
        """Short name for tables and cell labels: ``none``, ``refit``, ``lstsq:ridge=0.01``."""
        extra = [f"ridge={self.ridge:g}"] if self.ridge != DEFAULT_RIDGE else []
        extra += [f"tokens={self.tokens}"] if self.tokens != "all" else []
        extra += [f"weights={','.join(f'{d}={w:g}' for d, w in sorted(self.weights.items()))}"] if self.weights else []
        return self.method + (":" + ",".join(extra) if extra and self.active else "")


@dataclass
class GapFit:
    """What was fitted for one gap (0-based layer numbers of the unpruned model)."""

    first: int
    last: int
    folded_into: int
    form: str                 # "map" (d x d), "refit" (down projection), "diagonal" (norm weight)
    relative_residual: float  # |R - F X|^2 / |R - F X0|^2 on the calibration tokens (weighted)
    ridge: float
    tokens: int               # calibration tokens the sums hold
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the terminal."""
        what = {"map": "d x d map", "refit": "re-fitted down projection", "diagonal": "channel scaling"}[self.form]
        return (f"gap {self.first}..{self.last}: {what} in layer {self.folded_into} explains "
                f"{1 - self.relative_residual:.0%} of plain removal's error at the interface "
                f"(relative residual {self.relative_residual:.3f}, {self.tokens} tokens)")


def gaps(remove: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive removed layers, as ``(first, last)`` (inclusive, 0-based)."""
    runs: list[tuple[int, int]] = []
    for layer in sorted(set(remove)):
        if runs and layer == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], layer)
        else:
            runs.append((layer, layer))
    return runs


def check_plan(remove: Sequence[int]) -> None:
    """Refuse what no repair can fold: nothing removed, or layer 0 removed (no layer before it)."""
    if not remove:
        raise CompensationError("--compensate: the plan removes no layer, so there is nothing to compensate; "
                                "remove at least one layer or use --compensate none")
    if 0 in remove:
        raise CompensationError("--compensate: the plan removes layer 0, and a gap's repair is folded into the "
                                "kept layer before it; keep layer 0 (e.g. --protect-first 1) or use --compensate none")


