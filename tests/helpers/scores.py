"""Scores files with known signals, for tests of the methods and diagnostics."""

from __future__ import annotations

import torch

from depthprune.scoring.scores import GROUPS, STATS, Scores

ALL = GROUPS.index("all")


def scores_with(cos: dict[str, list[float]], damage: dict[str, list[float]], per_domain: int = 2,
                protected: list[int] | None = None) -> Scores:
    """Scores whose per-domain "all"-token cosine is ``cos[d]`` and whose single-layer ablation
    damage is ``damage[d]`` (base NLL 1.0 for every sample)."""
    domains = [d for d in cos for _ in range(per_domain)]
    n, num_layers = len(domains), len(next(iter(cos.values())))
    sums = torch.zeros(n, len(STATS), len(GROUPS), num_layers, 1, dtype=torch.float64)
    counts = torch.zeros(n, len(GROUPS), dtype=torch.int64)
    counts[:, ALL] = 3
    for i, d in enumerate(domains):
        sums[i, 0, ALL, :, 0] = torch.tensor(cos[d], dtype=torch.float64) * 3
    base = torch.ones(n, dtype=torch.float64)
    ablated = torch.stack([1.0 + torch.tensor(damage[d], dtype=torch.float64) for d in domains])
    return Scores(model_id="m", num_layers=num_layers, max_span=1, sample_ids=[f"s{i}" for i in range(n)],
                  sample_domains=domains, sums=sums, counts=counts, protected_layers=protected or [],
                  base_nll=base, ablation_nll=ablated)
