"""The ranking-method registry: one :class:`MethodSpec` per method holds everything about it —
its family, what it needs (nothing, scores, ablation scores, or the model and calibration
data), the request options it reads, the row of the docs table (what it removes, its published
source) and its ``--method`` help note — beside the function that selects the layers.

Methods register themselves where they are written (the built-in ones in the methods module,
with its ``register`` decorator); everything that lists or sorts methods (``--method`` help, the
request check, study files, bootstrap stability, the report's families, docs/methods.md's table)
reads the spec. This module is the vocabulary alone: no torch, and it imports no method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from depthprune.options import RankRequest
    from depthprune.ranking.plan import Selection
    from depthprune.scoring.scores import Scores

#: The method families (:mod:`depthprune.ranking.families` says what each means).
RANKINGS, STRUCTURE_AWARE, REFERENCES = "score-based", "structure-aware", "reference"
FAMILIES = (RANKINGS, STRUCTURE_AWARE, REFERENCES)
#: What a method needs to choose its layers (``MethodSpec.needs``).
NOTHING, SCORES, ABLATION, MODEL = "nothing", "scores", "ablation", "model"
_NEEDS_TEXT = {NOTHING: "–", SCORES: "scores", ABLATION: "scores from `score --ablation`",
               MODEL: "the model + `--data` (`prune` only)"}

#: ``select(scores, k, candidates, req) -> Selection``: the k layers to remove from the
#: removable ``candidates`` (0-based), with a reason each. A method that measures the model
#: (``needs == MODEL``) is called with the same signature by the hook its caller binds to the
#: model (``rank(..., measured=hook)``: :func:`~depthprune.ranking.methods.rescoring` for
#: ``iterative``, :class:`~depthprune.ranking.sleb.Sleb` for ``sleb``).
MethodFn = Callable[["Scores", int, list[int], "RankRequest"], "Selection"]


@dataclass(frozen=True)
class MethodSpec:
    """Everything about one ranking method. ``removes``, ``source`` and ``needs_note`` are its row
    of the methods table in docs/methods.md; ``cli_note`` its parenthesis in ``--method``'s
    help; ``measures`` (model methods) what it re-measures after each removal."""

    name: str
    select: MethodFn
    family: str = RANKINGS
    needs: str = SCORES
    reads: tuple[str, ...] = ()
    removes: str = ""
    source: str = "depthprune's own"
    needs_note: str = ""
    cli_note: str = ""
    measures: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.name}: unknown family {self.family!r}")
        if self.needs not in _NEEDS_TEXT:
            raise ValueError(f"method {self.name}: needs is one of {', '.join(_NEEDS_TEXT)}, not {self.needs!r}")

    @property
    def reads_scores(self) -> bool:
        """Its choice depends on the similarity or ablation scores (bootstrap stability is
        reported for it: the stability column)."""
        return self.needs in (SCORES, ABLATION)

    def help_name(self) -> str:
        """Its entry in ``--method``'s help: the name, with its note."""
        return self.name + (f" ({self.cli_note})" if self.cli_note else "")

    def table_row(self) -> str:
        """Its row of the methods table (docs/methods.md)."""
        return (f"| `{self.name}` | {self.removes} | {self.source} | "
                f"{self.needs_note or _NEEDS_TEXT[self.needs]} |")


#: name -> spec, in registration order (the order of every list of methods).
REGISTRY: dict[str, MethodSpec] = {}


def add(spec: MethodSpec) -> MethodSpec:
    """Register ``spec`` under its name (a later registration of the same name replaces it)."""
    REGISTRY[spec.name] = spec
    return spec
