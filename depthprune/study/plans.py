"""The removed layers of every cell of a sweep: pure functions of the scores for most methods;
`iterative` re-scores and `sleb` measures answer NLLs, on the model, memoised across budgets.

Used by the sweep's own process and by its worker processes (:mod:`depthprune.study.workers`
searches each `iterative` / `sleb` variant in a worker, beside the others)."""

from __future__ import annotations

import dataclasses
from typing import Any

from depthprune.study.cell import Cell
from depthprune.study.config import Study

#: Methods whose ranking runs the model (a ``score_fn``), not the scores alone.
SEARCHED = ("iterative", "sleb")


def removed_layers(study: Study, cells: list[Cell], scores: Any, score_fns: dict[str, Any], skipped: list[str],
                   known: dict[str, list[int] | str]) -> dict[str, list[int]]:
    """Removed layers per cell key (the same on every process: pure functions of the scores,
    `iterative`'s re-scoring is collective and `sleb`'s answer comes from rank 0).
    ``score_fns``: method -> its model hook, :func:`~depthprune.ranking.methods.rank`'s ``measured``, for
    it (`iterative`, `sleb`). A method that cannot meet a budget skips that
    cell, with the reason appended to ``skipped``, instead of stopping the study. ``known``:
    cells whose plan is already known, as removed layers or the reason the cell is skipped:
    cells already in the store keep their stored plan (the scores are the same, checked on
    resume), so a resumed `iterative` study does not re-score; and plans searched by worker
    processes."""
    from depthprune.ranking.methods import rank
    from depthprune.ranking.plan import RankError, RankRequest
    removed: dict[str, list[int]] = {}
    for cell in cells:
        if cell.budget == 0:
            removed[cell.key] = []
            continue
        if cell.key in known:
            plan = known[cell.key]
            if isinstance(plan, str):
                skipped.append(plan)
            else:
                removed[cell.key] = list(plan)
            continue
        req = RankRequest(method=cell.variant.method, budget=cell.budget, **study.protect.request_kwargs(),
                          **cell.variant.options)
        try:
            plan = rank(scores, req, measured=score_fns.get(cell.variant.method))
        except RankError as exc:  # e.g. `spaced` cannot remove half the layers without neighbours
            skipped.append(f"{cell.variant.label} at {cell.budget} layers: {exc}")
            continue
        removed[cell.key] = plan.remove
    return removed


def searched_plans(study: Study, cells: list[Cell], scores: Any, score_fns: dict[str, Any]
                   ) -> dict[str, list[int] | str]:
    """:func:`removed_layers` of ``cells``, a skipped cell as its reason (for ``known``)."""
    skipped: list[str] = []
    plans: dict[str, list[int] | str] = dict(removed_layers(study, cells, scores, score_fns, skipped, {}))
    reasons = iter(skipped)
    for cell in cells:
        if cell.key not in plans:
            plans[cell.key] = next(reasons)
    return plans


def score_functions(net: Any, processor: Any, calib: list, study: Study, settings: Any, ctx: Any,
                    progress: bool) -> dict[str, Any]:
    """The ``score_fns`` of :func:`removed_layers`: `iterative`'s re-scoring and `sleb`'s search."""
    from depthprune.ranking.methods import rescoring
    return {"iterative": rescoring(rescorer(net, processor, calib, settings, str(study.model), ctx)),
            "sleb": sleb_selector(net, processor, calib, study, ctx, progress)}


def rescorer(net: Any, processor: Any, calib: list, settings: Any, model_id: str, ctx: Any) -> Any:
    """`iterative`'s score function: the scores with some layers removed. Its bases read single
    layers only (span 1), so re-scoring records no blocks. Collective under torchrun, memoised
    across budgets."""
    from depthprune.pruning import layers_removed
    from depthprune.study.distributed import score_parallel
    memo: dict[tuple[int, ...], Any] = {}
    span_one = dataclasses.replace(settings, max_span=1)

    def rescore(remove: list[int]) -> Any:
        key = tuple(sorted(remove))
        if key not in memo:
            with layers_removed(net, remove):
                memo[key] = score_parallel(net, processor, calib, span_one, model_id, ctx, progress=False)
        return memo[key]
    return rescore


def sleb_selector(net: Any, processor: Any, calib: list, study: Study, ctx: Any, progress: bool) -> Any:
    """`sleb`'s selection function: rank 0 measures (prefix-cached answer NLL), every process
    gets its answer."""
    from depthprune.ranking.plan import RankError
    from depthprune.ranking.sleb import Sleb
    from depthprune.scoring.forward import cap_per_domain
    sleb = Sleb(net, processor, cap_per_domain(calib, study.calib_max_samples), study.batch_size, progress=progress)

    def select(scores: Any, k: int, candidates: list[int], req: Any) -> Any:
        try:
            answer = sleb(scores, k, candidates, req) if ctx.main else None
        except RankError as exc:
            answer = exc
        answer = ctx.broadcast(answer)
        if isinstance(answer, RankError):
            raise answer
        return answer
    return select
