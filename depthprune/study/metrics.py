"""The metrics a study stores per result row and the report compares, each defined once: its
name (the :class:`~depthprune.study.store.ResultRow` field, the ``metric`` of regimes.json),
where it sits in a stored sample, whether higher is better, whether its per-sample outcomes are
0/1 (exact paired tests) and how it is written. The store, the regime rule, the tables and the
plots read these; a new metric is a new :class:`Metric` here plus its column in the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One metric of a result row. ``sample_index``: its position in a stored sample
    ``(sample_id, correct, nll)``; ``binary``: per-sample outcomes are 0/1 (paired sign tests,
    Wilson intervals) rather than real numbers (Wilcoxon, t intervals); ``scale``, ``digits``,
    ``unit``, ``prefix`` and ``suffix``: how a value and a difference are shown (accuracy 0.5:
    ``50.0%``, a difference of 0.5: ``50.0 points``; an NLL: ``NLL 1.234``)."""

    name: str
    sample_index: int
    higher_is_better: bool
    binary: bool
    scale: float
    unit: str
    digits: int
    title: str
    axis: str
    prefix: str = ""
    suffix: str = ""

    def of(self, row: Any) -> float | None:
        """The metric's value in a result row (None: not measured)."""
        return getattr(row, self.name)

    def sort_key(self, value: float) -> float:
        """Sorts values best first."""
        return -value if self.higher_is_better else value

    def best(self, values: Iterable[float]) -> float:
        """The best of ``values``."""
        return (max if self.higher_is_better else min)(values)

    def gain(self, difference: float) -> float:
        """``a - b`` turned into how much better a is than b (positive: better)."""
        return difference if self.higher_is_better else -difference

    def shown(self, value: float) -> float:
        """A value on the scale it is shown on (accuracy in percent)."""
        return self.scale * value

    def number(self, value: float) -> str:
        """A value or difference as a bare number on its scale: ``50.0``, ``1.234``."""
        return f"{self.scale * value:.{self.digits}f}"

    def text(self, value: float | None, named: bool = True) -> str:
        """A value as the tables show it: ``50.0%``, ``NLL 1.234`` (``named=False``: ``1.234``)."""
        if value is None:
            return "–"
        return (self.prefix if named else "") + self.number(value) + self.suffix

    def in_words(self, difference: float | None) -> str:
        """A difference of this metric in words: ``4.0 points``, ``0.120 nats``."""
        return "–" if difference is None else f"{self.number(difference)} {self.unit}"


ACCURACY = Metric("accuracy", 1, higher_is_better=True, binary=True, scale=100, unit="points", digits=1,
                  title="Accuracy vs budget", axis="accuracy (%)", suffix="%")
NLL = Metric("nll", 2, higher_is_better=False, binary=False, scale=1, unit="nats", digits=3,
             title="Answer NLL vs budget", axis="answer NLL (nats/token)\nlower is better", prefix="NLL ")
#: name -> metric, in the order the regime rule prefers them.
METRICS = {m.name: m for m in (ACCURACY, NLL)}


def compared_on(rows: Sequence[Any]) -> Metric:
    """The metric the regime rule compares ``rows`` on: the first of :data:`METRICS` every row
    has (generation accuracy, else the answer NLL, always measured)."""
    return next((m for m in METRICS.values() if all(m.of(r) is not None for r in rows)), NLL)
