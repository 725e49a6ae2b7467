"""Diagnostics of a ranking: bootstrap stability and the per-layer table `rank` prints."""

from __future__ import annotations

import warnings

import torch
from rich.markup import escape
from rich.table import Table

from depthprune.rank.methods import SCORE_FREE, Plan, RankError, RankRequest, domains_used, rank
from depthprune.score.scores import Scores


def bootstrap_stability(scores: Scores, req: RankRequest, n_resamples: int = 100,
                        seed: int = 0) -> dict[str, float]:
    """Per domain the ranking depends on (:func:`~depthprune.rank.methods.domains_used`), the
    fraction (0..1) of bootstrap resamples whose removed set equals the plan's.

    Each resample redraws that domain's samples with replacement, other domains unchanged,
    and re-ranks; a resample that cannot be ranked counts as different. Returns {} for
    methods that do not read the scores (last, uniform, random) and for iterative.
    """
    if req.method in SCORE_FREE or req.method == "iterative":
        return {}
    full = rank(scores, req).remove
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for domain in domains_used(req, scores.domains):
        mine = torch.nonzero(scores.sample_mask(domain)).flatten()
        index = torch.arange(len(scores.sample_ids))
        same = 0
        for _ in range(n_resamples):
            index[mine] = mine[torch.randint(len(mine), (len(mine),), generator=gen)]
            with warnings.catch_warnings():  # allow_deepstack warns once, not per resample
                warnings.simplefilter("ignore")
                try:
                    same += rank(scores.select(index), req).remove == full
                except RankError:  # e.g. a resample without tokens of the group: not the same plan
                    pass
        out[domain] = same / n_resamples
    return out


def plan_table(plan: Plan) -> Table:
    """A rich Table: one row per layer (0-based) with the score columns, removed and why."""
    table = Table(title=f"{plan.method}: remove {plan.budget} of {plan.num_layers} decoder layers "
                        "(layers 0-based)")
    table.add_column("layer", justify="right")
    for name in plan.columns:
        table.add_column(escape(name), justify="right")  # names like cos[math] are not markup
    table.add_column("removed")
    table.add_column("why")
    removed, protected = set(plan.remove), set(plan.protected)
    for layer in range(plan.num_layers):
        cells = []
        for values in plan.columns.values():
            v = values[layer] if layer < len(values) else None
            cells.append("" if v is None else f"{v:.4f}")
        why = plan.reasons.get(layer, "") if layer in removed else ("protected" if layer in protected else "")
        table.add_row(str(layer), *cells, "yes" if layer in removed else "", escape(why))
    return table
