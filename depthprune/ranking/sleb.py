"""`sleb`: SLEB (Song et al. 2024, arXiv 2402.09025), domain-aware.

Greedy: at every step remove the candidate layer whose removal, given the layers already
removed, raises the calibration answer NLL least; re-measure after every removal. The
objective is the mean teacher-forced answer NLL (nats/token,
:func:`depthprune.evaluation.generation.answer_nll`) of the calibration records of ``--domain``, or
with no domain the ``--weights``-weighted mean of the per-domain means (equal weights if
none). Only those domains' records are run.

Each step reuses the prefix cache (:mod:`depthprune.scoring.ablation_cache`) of the model pruned so
far: a candidate is measured from its own layer's cached input (the layers before it are
unchanged), and committing a removal recomputes only the inputs of the layers after it. A
step over ``m`` candidates costs about ``sum over candidates of the surviving layers after
it`` layer forwards per batch, i.e. at most one single-layer ablation pass; k steps cost
about k ablation passes (SLEB's k x L forwards, halved). The order of removals is memoised,
so every budget of a sweep costs what its largest budget costs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from depthprune.data.records import Record, batches, domain_weights
from depthprune.evaluation.generation import answer_nll
from depthprune.models.architectures import find_decoder_layers
from depthprune.pruning import layers_removed
from depthprune.ranking.plan import RankRequest, Selection
from depthprune.scoring.ablation_cache import DEFAULT_CACHE_MB, CacheStats, CacheStore, CacheUnsupported, PrefixCache
from depthprune.settings import progress as progress_bar


def objective_weights(domains: Sequence[str], req: RankRequest) -> dict[str, float]:
    """Domain -> weight of the SLEB objective: ``{req.domain: 1}``, else ``req.weights``
    normalised to sum 1 with zero weights dropped (equal over ``domains`` if None). Raises
    RankError naming a domain that is not in ``domains``."""
    return domain_weights(domains, req.domain, req.weights)


@dataclass
class Step:
    """One removal: the layer, the objective before and after it (nats/token), and the
    objective of every candidate of that step (the first step's is single-layer ablation)."""

    layer: int
    before: float
    after: float
    values: dict[int, float] = field(default_factory=dict)


class Sleb:
    """SLEB on one model and calibration set: ``sleb``'s model hook, passed to ``rank`` as
    ``measured=`` and called like any method, ``sleb(scores, k, candidates, req) -> Selection``
    (the scores are not read: it measures the model).

    ``cache_mb`` limits the prefix caches of all batches together (they live through the
    whole search); past it they spill to disk. ``stats`` collects the cache's figures.
    """

    def __init__(self, model: nn.Module, processor: Any, records: Sequence[Record], batch_size: int = 4,
                 cache_mb: float = DEFAULT_CACHE_MB, progress: bool = True) -> None:
        self.model, self.processor, self.records = model, processor, list(records)
        self.batch_size, self.progress = batch_size, progress
        self.stats = CacheStats(cache_mb)
        self._orders: dict[tuple, list[Step]] = {}

    @torch.inference_mode()
    def __call__(self, scores: Any, k: int, candidates: list[int], req: RankRequest) -> Selection:
        """The k layers SLEB removes first from ``candidates`` (0-based), with a reason each."""
        from depthprune.scoring.ablation import SLEB_NEEDS, require_answers
        weights = objective_weights([r.domain for r in self.records], req)
        records = [r for r in self.records if r.domain in weights]
        require_answers(records, SLEB_NEEDS)
        key = (tuple(weights.items()), tuple(candidates))
        order = self._orders.setdefault(key, [])
        if len(order) < k:
            self._extend(order, k, candidates, records, weights)
        label = req.domain or "weighted"
        steps = order[:k]
        reasons = {s.layer: f"step {n + 1}: raises the calibration answer NLL[{label}] least of "
                            f"{len(candidates) - n} candidates, {s.before:.4f} -> {s.after:.4f} nats/token "
                            f"({s.after - s.before:+.4f})" for n, s in enumerate(steps)}
        first, step_of = steps[0], {s.layer: n + 1 for n, s in enumerate(steps)}
        num_layers = len(find_decoder_layers(self.model)[1])
        columns = {f"dNLL[{label}] alone": [first.values[i] - first.before if i in first.values else None
                                            for i in range(num_layers)],
                   "SLEB step": [float(step_of[i]) if i in step_of else None for i in range(num_layers)]}
        return Selection([s.layer for s in steps], reasons, columns)

    def _extend(self, order: list[Step], k: int, candidates: list[int], records: list[Record],
                weights: dict[str, float]) -> None:
        """Continue the greedy search in ``order`` up to ``k`` removals."""
        counts = {d: sum(r.domain == d for r in records) for d in weights}
        sample_w = torch.tensor([weights[r.domain] / counts[r.domain] for r in records], dtype=torch.float64)
        chunks = list(batches(records, self.batch_size))
        removed = [s.layer for s in order]
        todo = sum(len(candidates) - n for n in range(len(order), k))
        bar = progress_bar(total=todo, desc="sleb", unit="variant", disable=not self.progress)
        with CacheStore(self.stats.limit_mb) as store:
            runner = PrefixCache(self.model, self.processor, store)
            try:
                caches = [runner.capture(chunk, removed) for chunk in chunks]
            except CacheUnsupported as err:
                self.stats.fallback = str(err)
                warnings.warn(f"sleb: the prefix cache cannot replay this model ({err}); measuring every "
                              "candidate with a full forward", stacklevel=3)
                caches = None
            current = float(sample_w @ (torch.cat([c.base for c in caches]) if caches else
                                        self._full_nll(chunks, removed)))
            while len(order) < k:
                values: dict[int, float] = {}
                best: tuple[float, int, list] | None = None
                for c in (c for c in candidates if c not in removed):
                    if caches is not None:
                        per = [runner.nll_without(cache, c) for cache in caches]
                        self.stats.full_forwards += sum(not runner.resumable(cache, c) for cache in caches)
                        nll = torch.cat(per)
                    else:
                        per, nll = [], self._full_nll(chunks, removed + [c])
                    values[c] = float(sample_w @ nll)
                    if best is None or (values[c], c) < best[:2]:
                        best = (values[c], c, per)
                    bar.update(1)
                after, pick, per = best
                order.append(Step(pick, current, after, values))
                bar.set_postfix_str(f"removed {sorted(removed + [pick])}")
                if caches is not None and len(order) < k:
                    caches = [runner.remove(cache, pick, nll) for cache, nll in zip(caches, per)]
                removed.append(pick)
                current = after
                self.stats.update(store)
        bar.close()

    def _full_nll(self, chunks: list[list[Record]], removed: list[int]) -> torch.Tensor:
        """Per-sample NLL of the model without ``removed``, one full forward per batch."""
        with layers_removed(self.model, removed):
            return torch.tensor([nll for chunk in chunks for nll, _ in answer_nll(self.model, self.processor, chunk)],
                                dtype=torch.float64)
