"""Method families, the unit the regime rule reasons about, and what "domain-aware" means.

* **score-based rankings** — remove the layers a per-layer score calls most redundant: ``domain``,
  ``mixed``, ``contrast``, ``ablation``, ``block-influence``, ``iterative``, and any other
  registered method (e.g. ``sleb``) that is neither structure-aware nor a reference;
* **structure-aware** — the layout of the removed set is part of the method: ``spaced`` (never two
  neighbours), ``uniform`` (evenly spaced), ``angular-block`` (one contiguous block);
* **references** — ``random`` and ``last``: reported beside the others, never what a verdict rests on.

A method is **domain-aware** when it reads one domain's scores: ``domain:d``, ``contrast:d``,
``ablation:d``, ``sleb:d`` (any method given a ``domain``), and ``spaced``/``iterative`` on a
domain base (``base: domain``, or ``base: ablation`` with a domain).
"""

from __future__ import annotations

from typing import Any

RANKINGS, STRUCTURE_AWARE, REFERENCES = "score-based", "structure-aware", "reference"
FAMILIES = (RANKINGS, STRUCTURE_AWARE, REFERENCES)
STRUCTURE_METHODS = ("spaced", "uniform", "angular-block")
REFERENCE_METHODS = ("random", "last")
#: methods whose `domain` option is ignored unless their base reads one domain
_BASED = ("spaced", "iterative")
_POOLED = ("mixed", "block-influence", "angular-block", "uniform", "random", "last", "none")


def family(method: str) -> str:
    """The family of a registry method name: :data:`RANKINGS`, :data:`STRUCTURE_AWARE` or
    :data:`REFERENCES` (unknown names are score-based rankings: a new method reads scores)."""
    if method in STRUCTURE_METHODS:
        return STRUCTURE_AWARE
    if method in REFERENCE_METHODS:
        return REFERENCES
    return RANKINGS


def target_domain(method: str, options: dict[str, Any]) -> str | None:
    """The one domain whose scores the method reads (it is domain-aware for it), else None."""
    domain = options.get("domain")
    if domain is None or method in _POOLED:
        return None
    if method in _BASED and options.get("base", "mixed") not in ("domain", "ablation"):
        return None
    return str(domain)


__all__ = ["FAMILIES", "REFERENCES", "REFERENCE_METHODS", "RANKINGS", "STRUCTURE_AWARE", "STRUCTURE_METHODS",
           "family", "target_domain"]
