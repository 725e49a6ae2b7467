"""Training-free recovery of a pruned model: per gap, a least-squares repair folded into the kept
weights (:mod:`depthprune.compensation.fit`); the spec and its checks (:mod:`depthprune.compensation.spec`)
import without torch."""

from depthprune.compensation.spec import (
    DEFAULT_RIDGE,
    METHODS,
    TOKENS,
    Compensation,
    CompensationError,
    GapFit,
    check_plan,
    gaps,
)

__all__ = ["DEFAULT_RIDGE", "METHODS", "TOKENS", "Compensation", "CompensationError", "GapFit", "check_plan", "gaps"]
