"""Method families, the unit the regime rule reasons about, and what "domain-aware" means.

* **score-based rankings** — remove the layers a per-layer score calls most redundant: ``domain``,
  ``mixed``, ``contrast``, ``ablation``, ``block-influence``, ``iterative``, ``sleb`` and any other
  method registered with this family (the default);
* **structure-aware** — the layout of the removed set is part of the method: ``spaced`` (never two
  neighbours), ``uniform`` (evenly spaced), ``angular-block`` (one contiguous block);
* **references** — ``random`` and ``last``: reported beside the others, never what a verdict rests on.

Each method's family is a field of its spec (:class:`depthprune.ranking.registry.MethodSpec`).
A method is **domain-aware** when it reads one domain's scores: ``domain:d``, ``contrast:d``,
``ablation:d``, ``sleb:d`` (any method given a ``domain``), and ``spaced``/``iterative`` on a
domain base (``base: domain``, or ``base: ablation`` with a domain).
"""

from __future__ import annotations

from typing import Any

from depthprune.ranking.methods import METHODS
from depthprune.ranking.registry import FAMILIES, RANKINGS, REFERENCES, STRUCTURE_AWARE


def family(method: str) -> str:
    """The family of method ``method`` (its spec's); a name no spec has (``manual``, ``none``)
    counts as a score-based ranking."""
    spec = METHODS.get(method)
    return spec.family if spec is not None else RANKINGS


def members(family_name: str) -> list[str]:
    """The registered methods of one family, in registration order."""
    return [name for name, spec in METHODS.items() if spec.family == family_name]


def target_domain(method: str, options: dict[str, Any]) -> str | None:
    """The one domain whose scores the method reads (it is domain-aware for it), else None: a
    method that does not read ``domain``, or reads it only for a domain base (``spaced``,
    ``iterative``) whose base is pooled."""
    domain = options.get("domain")
    spec = METHODS.get(method)
    if domain is None or spec is None or "domain" not in spec.reads:
        return None
    if "base" in spec.reads and options.get("base", "mixed") not in ("domain", "ablation"):
        return None
    return str(domain)


__all__ = ["FAMILIES", "REFERENCES", "RANKINGS", "STRUCTURE_AWARE", "family", "members", "target_domain"]
