"""Which similarity signal to trust on a model: rank correlation with ablation ground truth.

For scores written by ``depthprune score --ablation``, every similarity signal (token group
x domain whose cosine it reads) is compared, over the removable layers, with each domain's
single-layer ablation damage (the rise of that domain's answer NLL when the layer alone is
removed). A signal predicts damage when layers it calls transformative (low input/output
cosine) are the ones whose removal hurts: reported as the Spearman correlation of
``1 - cos`` with the damage (+1 perfect, 0 none, negative misleading).

Two more things decide whether a signal is *domain*-aware, not just "this layer matters":

- ``rho_specific[d]``: correlation with the domain-specific part of the damage,
  ``damage[d] - mean(damage[other domains])`` (does it tell which layers d needs *more*);
- the ``contrast[d]`` signal, ``z(1 - cos[d]) - mean_o z(1 - cos[o])`` (a layer that
  transforms d's tokens more than the others'), z-scored across the removable layers, and
  ``contrast-method[d]`` = ``z(1 - cos[d]) + beta * contrast[d]``, what ``--method contrast``
  ranks by (beta = :data:`CONTRAST_BETA`).
"""

from __future__ import annotations

import math

import torch

from depthprune.scoring.scores import GROUPS, Scores, ScoresError

#: weight of the contrast term of the `contrast` ranking method (which reads it from here; see its
#: docstring and docs/results/domain-checks.md)
CONTRAST_BETA = 0.5


def rankdata(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties given their average rank (as scipy.stats.rankdata)."""
    values = values.double()
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    sorted_values = values[order]
    i = 0
    n = len(values)
    while i < n:
        j = i
        while j + 1 < n and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman rank correlation of two equal-length 1-D tensors (None if either is constant
    or shorter than 3)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: lengths differ ({len(x)} vs {len(y)})")
    if len(x) < 3:
        return None
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return None if denom == 0 else float((rx * ry).sum()) / denom


def _z(values: torch.Tensor) -> torch.Tensor:
    std = values.std(unbiased=False)
    return torch.zeros_like(values) if std == 0 else (values - values.mean()) / std


def diagnose(scores: Scores, layers: list[int] | None = None) -> dict:
    """Rank correlations of every similarity signal with every domain's ablation damage.

    ``layers``: the layers compared (default: all but the architecture's protected ones).
    Returns a JSON-ready dict: ``layers``; ``damage`` {domain: [nats/token per layer in
    ``layers``]}; ``signals``: a list of {group, signal, rho {domain: r}, rho_specific
    {domain: r}} where signal is ``cos[d]`` or ``contrast[d]`` (r is None where undefined).
    Raises ScoresError if the scores hold no ablation.
    """
    if not scores.has_ablation:
        raise ScoresError("the scores hold no single-layer ablation, so there is nothing to "
                          "diagnose against; re-run `depthprune score --ablation`")
    if layers is None:
        layers = [i for i in range(scores.num_layers) if i not in set(scores.protected_layers)]
    idx = torch.tensor(layers, dtype=torch.long)
    domains = scores.domains
    damage = {d: scores.ablation_damage(d)[idx] for d in domains}
    specific = {d: damage[d] - torch.stack([damage[o] for o in domains if o != d]).mean(0)
                for d in domains} if len(domains) > 1 else {}
    signals = []
    for group in GROUPS:
        try:
            dissim = {d: 1 - scores.mean("cos", group, d, 1)[idx] for d in domains}
        except ScoresError:  # no tokens of this group (e.g. image tokens in a text model)
            continue
        named = {f"cos[{d}]": dissim[d] for d in domains}
        if len(domains) > 1:
            for d in domains:
                others = torch.stack([_z(dissim[o]) for o in domains if o != d]).mean(0)
                named[f"contrast[{d}]"] = _z(dissim[d]) - others
                # what `--method contrast` ranks by, in dissimilarity terms
                named[f"contrast-method[{d}]"] = _z(dissim[d]) + CONTRAST_BETA * (_z(dissim[d]) - others)
        for name, values in named.items():
            signals.append({"group": group, "signal": name,
                            "rho": {d: spearman(values, damage[d]) for d in domains},
                            "rho_specific": {d: spearman(values, specific[d]) for d in specific}})
    return {"layers": layers, "domains": domains,
            "damage": {d: [float(v) for v in damage[d]] for d in domains},
            "signals": signals,
            "units": {"damage": "rise of mean answer NLL (nats/token) with the layer alone removed",
                      "rho": "Spearman correlation of 1 - cos (or contrast) with the damage over `layers`"}}


__all__ = ["diagnose", "rankdata", "spearman"]
