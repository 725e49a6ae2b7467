"""The ranking-method registry: one :class:`MethodSpec` per method holds everything about it —
its family, what it needs (nothing, scores, ablation scores, or the model and calibration
data), the request options it reads, the row of the docs table (what it removes, its published
source) and its ``--method`` help note — beside the function that selects the layers.

A method registers itself with :func:`depthprune.ranking.methods.register`; everything that
lists or sorts methods (``--method`` help, ``check_request``, study files, bootstrap stability,
the report's families, docs/methods.md's table) reads the spec. Light to import (no torch):
:func:`methods` loads the built-in methods (:mod:`depthprune.ranking.methods`) on first use.
"""

from __future__ import annotations

import importlib
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


def methods() -> dict[str, MethodSpec]:
    """Every registered method, the built-in ones loaded on first use."""
    importlib.import_module("depthprune.ranking.methods")
    return REGISTRY


def spec_of(name: str) -> MethodSpec | None:
    """The spec of method ``name``, or None (e.g. ``manual``: a plan given as a layer list)."""
    return methods().get(name)


def method_help() -> str:
    """``--method``'s help: every registered method, those that measure the model last."""
    def named(spec: MethodSpec) -> str:
        return spec.name + (f" ({spec.cli_note})" if spec.cli_note else "")
    specs = list(methods().values())
    text = "Ranking method: " + ", ".join(named(s) for s in specs if s.needs != MODEL)
    measuring = [named(s) for s in specs if s.needs == MODEL]
    return text + (f"; with the model and --data (prune only): {', '.join(measuring)}." if measuring else ".")


def methods_table() -> str:
    """The methods table of docs/methods.md (a test checks the page holds it)."""
    head = "| name | removes | published source | needs |\n| --- | --- | --- | --- |\n"
    return head + "\n".join(s.table_row() for s in methods().values()) + "\n"


def family(method: str) -> str:
    """The family of method ``method``; a name no spec has (``manual``, ``none``) counts as a
    score-based ranking."""
    spec = spec_of(method)
    return spec.family if spec is not None else RANKINGS


def members(family_name: str) -> list[str]:
    """The registered methods of one family, in registration order."""
    return [name for name, spec in methods().items() if spec.family == family_name]


if __name__ == "__main__":  # prints the methods table of docs/methods.md (from the imported module's registry)
    from depthprune.ranking.registry import methods_table as table
    print(table(), end="")
