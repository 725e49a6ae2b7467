"""Ranking methods: which decoder layers to remove, from a Scores file alone.

Each method is one small function registered by name with :func:`register`. It receives
the scores, the number of layers to remove, the layers it may remove (protected ones
already excluded) and the request, and returns the layers to remove with a reason each.
Higher redundancy means "remove first". Layers are 0-based everywhere.

:func:`rank` is the entry point: budget -> protected layers -> method -> validated Plan.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from typing import Any

import torch

from depthprune.options import is_int
from depthprune.ranking.plan import BASES, Plan, RankError, RankRequest, Selection, check_budget_spec, resolve_budget
from depthprune.ranking.protection import Protection
from depthprune.ranking.registry import (
    ABLATION,
    MODEL,
    NOTHING,
    REFERENCES,
    REGISTRY,
    STRUCTURE_AWARE,
    MethodFn,
    MethodSpec,
    add,
)
from depthprune.scoring.scores import GROUPS, Scores, ScoresError
from depthprune.scoring.signals import CONTRAST_BETA


def domains_used(req: RankRequest, domains: list[str]) -> list[str]:
    """The domains whose samples the ranking of ``req`` depends on (what bootstrap stability
    is reported for): ``domain`` its one domain, ``mixed`` those with a positive weight,
    pooled methods (block-influence, angular-block) every domain, score-free methods none."""
    if req.method in METHODS and METHODS[req.method].needs == NOTHING:
        return []
    base = req.method if req.method in ("domain", "mixed") else req.base \
        if "base" in METHODS[req.method].reads else "pooled"
    if base == "domain":
        return [d for d in domains if d == req.domain]
    if base == "mixed":
        return [d for d in domains if req.weights is None or req.weights.get(d, 0) > 0]
    return list(domains)


def register(name: str, **spec: Any) -> Callable[[MethodFn], MethodFn]:
    """Decorator: make ``fn`` ranking method ``name``, described by the :class:`MethodSpec`
    fields ``spec`` (family, needs, reads, removes, source, ...): everything about a method is
    written here, at its function."""
    def deco(fn: MethodFn) -> MethodFn:
        add(MethodSpec(name, fn, **spec))
        return fn
    return deco


#: name -> :class:`MethodSpec` (the registry; filled by the ``@register`` lines below).
METHODS = REGISTRY
#: Options every request has; the others are method options, checked against each spec's ``reads``.
COMMON = ("method", "budget", "allow_deepstack", "protect_first", "protect_last")


def method_help() -> str:
    """``--method``'s help: every registered method, those that measure the model last."""
    specs = list(METHODS.values())
    text = "Ranking method: " + ", ".join(s.help_name() for s in specs if s.needs != MODEL)
    measuring = [s.help_name() for s in specs if s.needs == MODEL]
    return text + (f"; with the model and --data (prune only): {', '.join(measuring)}." if measuring else ".")


def methods_table() -> str:
    """The methods table of docs/methods.md (``python -m depthprune.ranking.methods`` prints it;
    tests/unit/test_registry.py checks the page holds it)."""
    head = "| name | removes | published source | needs |\n| --- | --- | --- | --- |\n"
    return head + "\n".join(s.table_row() for s in METHODS.values()) + "\n"


def unread_options(method: str, options: dict) -> list[str]:
    """The options in ``options`` (besides method, budget and protection) that ``method`` does not read."""
    reads = METHODS[method].reads if method in METHODS else ()
    return sorted(k for k in options if k not in COMMON and k not in reads)


# ---------------------------------------------------------------------- shared helpers
def _per_layer(values: dict[int, float], num_layers: int) -> list[float | None]:
    """A full-length column from a {layer: value} dict, None elsewhere."""
    return [float(values[i]) if i in values else None for i in range(num_layers)]


def _top_k(values: dict[int, float], k: int) -> list[int]:
    """The k keys with the largest value; ties go to the lower layer (deterministic)."""
    return sorted(values, key=lambda i: (-values[i], i))[:k]


def _zscore(values: torch.Tensor) -> torch.Tensor:
    """(x - mean) / population std across the entries; all zeros when std == 0."""
    std = values.std(unbiased=False)
    return torch.zeros_like(values) if std == 0 else (values - values.mean()) / std


def _domain_cos(scores: Scores, domain: str | None, group: str) -> torch.Tensor:
    """Span-1 mean input/output cosine per layer in ``domain``, with a RankError if absent."""
    if domain is None:
        raise RankError(f"this method needs --domain; domains in the scores: {', '.join(scores.domains)}")
    if domain not in scores.domains:
        raise RankError(f"domain '{domain}' is not in the scores; present: {', '.join(scores.domains)}")
    return scores.mean("cos", group, domain, 1)


def _mixed_weights(scores: Scores, weights: dict[str, float] | None) -> dict[str, float]:
    """Weights normalised to sum 1, zero weights dropped; equal over all domains if None."""
    if weights is None:
        return {d: 1 / len(scores.domains) for d in scores.domains}
    unknown = sorted(set(weights) - set(scores.domains))
    if unknown:
        raise RankError(f"weights name domains {unknown} that are not in the scores; present: "
                        f"{', '.join(scores.domains)}")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        raise RankError(f"weights {weights} must be finite and >= 0")
    total = sum(weights.values())
    if total == 0:
        raise RankError(f"weights {weights} are all zero; give at least one domain a positive weight")
    return {d: w / total for d, w in sorted(weights.items()) if w > 0}


def redundancy(scores: Scores, candidates: list[int], req: RankRequest) -> tuple[dict[int, float], dict]:
    """Per-candidate redundancy of ``req.base`` as z-scores across the candidates.

    Returns ({layer: z}, score columns). All bases are put on one scale (z-scores over the
    candidates) so `spaced`/`iterative` mean the same thing whichever base they use:
    "domain" = z of the domain's span-1 cosine, "mixed" = the weighted sum of per-domain
    z-scores (see `mixed`), "block-influence" = z of -BI (= z of the pooled cosine).
    """
    idx = torch.tensor(candidates, dtype=torch.long)
    columns: dict = {}
    if req.base == "domain":
        cos = _domain_cos(scores, req.domain, req.token_group)
        z, columns[f"cos[{req.domain}]"] = _zscore(cos[idx]), cos.tolist()
    elif req.base == "mixed":
        z = torch.zeros(len(candidates), dtype=torch.float64)
        for domain, w in _mixed_weights(scores, req.weights).items():
            cos = _domain_cos(scores, domain, req.token_group)
            z += w * _zscore(cos[idx])
            columns[f"cos[{domain}]"] = cos.tolist()
    elif req.base == "block-influence":
        bi = 1 - scores.mean("cos", req.token_group, None, 1)
        z, columns["BI"] = _zscore(-bi[idx]), bi.tolist()
    elif req.base == "ablation":
        damage, columns = ablation_damage(scores, req)
        z = _zscore(-damage[idx])
    else:
        raise RankError(f"base '{req.base}' is unknown; choose one of {', '.join(BASES)}")
    values = {layer: float(v) for layer, v in zip(candidates, z)}
    columns[f"z[{req.base}]"] = _per_layer(values, scores.num_layers)
    return values, columns


def _ranked_reasons(values: dict[int, float], chosen: list[int], label: str) -> dict[int, str]:
    order = _top_k(values, len(values))
    return {i: f"{label}={values[i]:.4f}, rank {order.index(i) + 1} of {len(values)} candidates" for i in chosen}


# ---------------------------------------------------------------------- methods
@register("domain", reads=("domain", "token_group"), source="arXiv 2603.20275 (domain-aware ranking)",
          removes="the layers with the highest cos[`--domain`] (math-aware, non-math-aware, any label)")
def _domain(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """The k candidates with the highest span-1 cosine in ``req.domain``."""
    cos = _domain_cos(scores, req.domain, req.token_group)
    values = {i: float(cos[i]) for i in candidates}
    chosen = _top_k(values, k)
    return Selection(chosen, _ranked_reasons(values, chosen, f"cos[{req.domain}]"),
                     {f"cos[{req.domain}]": cos.tolist()})


@register("mixed", reads=("weights", "token_group"), source="arXiv 2603.20275 (mixed ranking)",
          removes="the highest weighted sum Σ_d w_d·z(cos[d]); weights (`--weights`, default equal over all "
                  "domains) normalised to sum 1, zero weights dropped")
def _mixed(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """The k candidates with the highest weighted sum of per-domain z-scores.

    Normalisation: for each domain d, the candidates' span-1 cosines are standardised
    across the candidates, z_d = (cos_d - mean) / std (population std; z_d = 0 if std = 0),
    so a domain whose cosines are all close to 1 does not dominate by scale. Weights are
    divided by their sum, and combined = sum_d w_d * z_d. ``req.weights = None`` means
    equal weights over every domain in the scores.
    """
    values, columns = redundancy(scores, candidates, replace(req, base="mixed"))
    chosen = _top_k(values, k)
    return Selection(chosen, _ranked_reasons(values, chosen, "combined z"), columns)


@register("block-influence", reads=("token_group",), source="ShortGPT (Men et al. 2024, arXiv 2403.03853)",
          removes="ShortGPT: the lowest BI_l = 1 − E[cos(input_l, output_l)], token-weighted over all tokens of all "
                  "domains pooled (not an average of domain means)")
def _block_influence(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """ShortGPT: BI_l = 1 - token-weighted mean cos(input_l, output_l) over all tokens of all
    domains pooled (not an average of domain means); remove the k lowest BI."""
    bi = 1 - scores.mean("cos", req.token_group, None, 1)
    values = {i: -float(bi[i]) for i in candidates}
    chosen = _top_k(values, k)
    order = _top_k(values, len(values))
    reasons = {i: f"BI={bi[i]:.4f}, {order.index(i) + 1}. lowest of {len(values)} candidates" for i in chosen}
    return Selection(chosen, reasons, {"BI": bi.tolist()})


@register("angular-block", family=STRUCTURE_AWARE, needs_note="scores with `--max-span` ≥ n",
          source="Gromov et al. 2024, arXiv 2403.17887 (the PruneMe implementation)",
          removes="the contiguous block l..l+n−1 of removable layers with the smallest mean over samples of the "
                  "last-token angular distance arccos(cos(h_l, h_{l+n}))/π (mean of per-sample angles)")
def _angular_block(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """Gromov et al. / PruneMe: remove the contiguous block l..l+k-1 of candidates with the
    smallest d(l) = mean over samples of arccos(cos(h_l, h_{l+k}))/pi on the last token.

    Always uses the last token of every domain pooled (its published definition), whatever
    ``req.token_group`` and ``req.domain`` say. The mean is of per-sample angles, not the
    angle of the mean cosine.
    """
    if k > scores.max_span:
        raise RankError(f"angular-block removes a block of {k} layers but the scores only hold spans up to "
                        f"{scores.max_span}; re-run `depthprune score` with --max-span {k} or more")
    d = scores.mean("angle", "last", None, k)
    allowed = set(candidates)
    starts = [s for s in range(scores.num_layers - k + 1) if all(s + j in allowed for j in range(k))]
    if not starts:
        raise RankError(f"no run of {k} consecutive removable layers exists (removable: {candidates}); "
                        "lower the budget or protect fewer layers")
    best = min(starts, key=lambda s: (float(d[s]), s))
    chosen = list(range(best, best + k))
    reason = f"block {best}..{best + k - 1}: angular distance {d[best]:.4f}, smallest of {len(starts)} blocks"
    column = _per_layer({s: float(d[s]) for s in range(len(d))}, scores.num_layers)
    return Selection(chosen, {i: reason for i in chosen}, {f"angle[span {k}]": column})


@register("last", family=REFERENCES, needs=NOTHING, source="baseline",
          removes="the deepest n removable layers, never the final one")
def _last(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """The deepest k candidates, never the final layer."""
    pool = [i for i in candidates if i != scores.num_layers - 1]
    if k > len(pool):
        raise RankError(f"last: only {len(pool)} removable layers besides the final one; lower the budget")
    chosen = pool[-k:]
    return Selection(chosen, {i: "among the deepest removable layers (final layer kept)" for i in chosen})


@register("uniform", family=STRUCTURE_AWARE, needs=NOTHING, source="baseline",
          removes="n evenly spaced layers: the centres of n equal bins of the m removable layers, candidate "
                  "index ⌊(2j+1)·m/(2n)⌋")
def _uniform(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """k evenly spaced candidates: split the m sorted candidates into k equal bins and take
    the one at the centre of each, i.e. candidate index floor((2j + 1) * m / (2k)), j < k."""
    m = len(candidates)
    chosen = [candidates[(2 * j + 1) * m // (2 * k)] for j in range(k)]
    return Selection(chosen, {c: f"evenly spaced: centre of bin {j + 1} of {k}" for j, c in enumerate(chosen)})


@register("random", family=REFERENCES, needs=NOTHING, reads=("seed",), source="baseline",
          removes="a uniform sample of n removable layers from `random.Random(--seed)`")
def _random(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """A uniform sample of k candidates from ``random.Random(req.seed)``."""
    chosen = random.Random(req.seed).sample(sorted(candidates), k)
    return Selection(chosen, {i: f"random sample (seed {req.seed})" for i in chosen})


def ablation_damage(scores: Scores, req: RankRequest) -> tuple[torch.Tensor, dict]:
    """Per-layer single-layer ablation damage (nats/token, see :meth:`Scores.ablation_damage`)
    of ``req.domain``, or with no domain the ``req.weights``-weighted sum over domains (equal
    weights if None; damages share one unit, so they are not z-scored). Returns (damage
    [num_layers], score columns)."""
    if not scores.has_ablation:
        raise RankError("ablation needs single-layer ablation in the scores: re-run `depthprune score "
                        "--ablation` (the calibration records need answers)")
    if req.domain is not None:
        if req.domain not in scores.domains:
            raise RankError(f"domain '{req.domain}' is not in the scores; present: {', '.join(scores.domains)}")
        damage = scores.ablation_damage(req.domain)
        return damage, {f"dNLL[{req.domain}]": damage.tolist()}
    damage = torch.zeros(scores.num_layers, dtype=torch.float64)
    columns = {}
    for domain, w in _mixed_weights(scores, req.weights).items():
        part = scores.ablation_damage(domain)
        damage += w * part
        columns[f"dNLL[{domain}]"] = part.tolist()
    columns["dNLL[weighted]"] = damage.tolist()
    return damage, columns


@register("ablation", needs=ABLATION, reads=("domain", "weights"), cli_note="needs `score --ablation`",
          source="Shortened LLaMA's perplexity criterion (Kim et al. 2024, arXiv 2402.02834)",
          removes="the layers whose removal *alone* raises `--domain`'s answer NLL least (without `--domain`: the "
                  "`--weights`-weighted mean over domains, in nats, not z-scored)")
def _ablation(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """Shortened-LLaMA PPL criterion: the k candidates whose removal alone raises the answer
    NLL least, in ``req.domain`` (or, with no domain, the ``req.weights``-weighted mean over
    domains). Needs scores from `depthprune score --ablation`."""
    damage, columns = ablation_damage(scores, req)
    values = {i: -float(damage[i]) for i in candidates}
    chosen = _top_k(values, k)
    order = _top_k(values, len(values))
    label = f"dNLL[{req.domain or 'weighted'}]"
    reasons = {i: f"{label}={damage[i]:+.4f} nats, {order.index(i) + 1}. smallest of {len(values)} candidates"
               for i in chosen}
    return Selection(chosen, reasons, columns)




@register("contrast", reads=("domain", "token_group"),
          source="depthprune's own (evidence in [results/domain-checks.md](results/domain-checks.md))",
          removes="the highest z(cos[d]) + 0.5·(z(cos[d]) − mean over other domains o of z(cos[o])): redundant "
                  "for `--domain` *and* used by the other domains; needs two or more domains")
def _contrast(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """Domain-aware with a contrast term: the k candidates most redundant for ``req.domain``
    *and* most used by the other domains.

    score = z_d + beta * (z_d - mean over other domains o of z_o), with z the span-1 cosine
    of ``req.token_group`` standardised across the candidates (as `mixed`) and beta =
    :data:`CONTRAST_BETA`. beta = 0 is `domain`; the contrast term alone predicts which layers
    a domain needs *more* than the others, but not which it needs at all (docs/results/domain-checks.md, "Ablation
    ground truth"), hence the sum.
    """
    own = _domain_cos(scores, req.domain, req.token_group)
    idx = torch.tensor(candidates, dtype=torch.long)
    others = [d for d in scores.domains if d != req.domain]
    if not others:
        raise RankError(f"contrast needs at least two domains; the scores hold only '{req.domain}'")
    z_own = _zscore(own[idx])
    columns = {f"cos[{req.domain}]": own.tolist()}
    z_other = torch.zeros_like(z_own)
    for domain in others:
        cos = _domain_cos(scores, domain, req.token_group)
        z_other += _zscore(cos[idx]) / len(others)
        columns[f"cos[{domain}]"] = cos.tolist()
    combined = z_own + CONTRAST_BETA * (z_own - z_other)
    values = {layer: float(v) for layer, v in zip(candidates, combined)}
    columns["contrast score"] = _per_layer(values, scores.num_layers)
    chosen = _top_k(values, k)
    return Selection(chosen, _ranked_reasons(values, chosen, "contrast score"), columns)


def best_spaced(values: dict[int, float], k: int) -> list[int]:
    """Exactly k layers maximising the sum of ``values`` with no two removed layers adjacent.

    Exact dynamic programme over the sorted candidates: best[i][j] = best sum choosing j
    of the first i candidates; taking candidate i skips candidate i-1 when they are
    neighbouring layers. Raises RankError if no such choice of k exists.
    """
    layers = sorted(values)
    n, neg = len(layers), -math.inf
    best = [[0.0] + [neg] * k for _ in range(n + 1)]
    for i in range(1, n + 1):
        layer = layers[i - 1]
        prev = i - 2 if i >= 2 and layers[i - 2] == layer - 1 else i - 1
        for j in range(1, k + 1):
            best[i][j] = max(best[i - 1][j], best[prev][j - 1] + values[layer])
    if best[n][k] == neg:
        raise RankError(f"spaced never removes two neighbours (adjacent layers): the removable layers {layers} allow at "
                        f"most {_max_non_adjacent(layers)}, not {k}. With protected layers (e.g. Qwen3-VL "
                        "deepstack layers 0..2) a 50% budget is out of its reach; lower the budget or "
                        "use another method")
    chosen, i, j = [], n, k
    while j > 0:  # walk back: prefer skipping when it is as good, which is deterministic
        if best[i - 1][j] == best[i][j]:
            i -= 1
            continue
        chosen.append(layers[i - 1])
        i, j = (i - 2 if i >= 2 and layers[i - 2] == layers[i - 1] - 1 else i - 1), j - 1
    return sorted(chosen)


def _max_non_adjacent(layers: list[int]) -> int:
    """Largest number of pairwise non-adjacent layers (greedy from the left is optimal)."""
    count, last = 0, -2
    for layer in layers:
        if layer - last > 1:
            count, last = count + 1, layer
    return count


@register("spaced", family=STRUCTURE_AWARE, reads=("base", "domain", "weights", "token_group"),
          source="INTERLACE-like (arXiv 2511.19676); not INTERLACE's own triplet score",
          needs_note="scores (`--base ablation`: scores from `score --ablation`)",
          removes="spacing-aware: the set with the largest total `--base` redundancy with no two removed layers "
                  "adjacent (exact dynamic programming)")
def _spaced(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """Spacing-aware (INTERLACE-like): k candidates with the largest total ``req.base``
    redundancy (z-scores, see :func:`redundancy`) such that no two are adjacent layers."""
    values, columns = redundancy(scores, candidates, req)
    chosen = best_spaced(values, k)
    return Selection(chosen, {i: f"{req.base} z={values[i]:+.3f}; neighbours kept" for i in chosen}, columns)


@register("iterative", needs=MODEL, reads=("base", "domain", "weights", "token_group"),
          cli_note="iterative cosine re-scoring", measures="re-scores the model's cosine similarities",
          source="depthprune's own; it re-measures cosines, not damage (SLEB is `sleb`)",
          removes="iterative cosine re-scoring: remove the most redundant layer under `--base`, re-score the "
                  "pruned model's similarities on `--data`, repeat n times")
def _iterative(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """Iterative cosine re-scoring; needs the model (see :func:`iterative_selection`)."""
    raise RankError("iterative needs the model and data: use `depthprune prune MODEL --data ... "
                    "--method iterative` (it re-scores after every removal); a scores file alone is not enough")


@register("sleb", needs=MODEL, reads=("domain", "weights"), measures="re-measures the calibration answer NLL",
          cli_note="SLEB: removes the layer that raises the calibration answer NLL of --domain, or the --weights "
                   "mixture, least, re-measured after every removal",
          source="SLEB (Song et al. 2024, arXiv 2402.09025), with the answer NLL of the chosen domain for perplexity",
          needs_note="the model + answered `--data` (`prune` only; in sweeps and the demo)",
          removes="SLEB, domain-aware: repeatedly remove the layer whose removal, given the layers already "
                  "removed, raises the calibration answer NLL of `--domain` (or the `--weights` mixture, equal "
                  "without it) least, re-measured after every removal from the prefix cache")
def _sleb(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
    """SLEB (arXiv 2402.09025), domain-aware: remove the layer whose removal raises the
    calibration answer NLL of ``req.domain`` (or the ``req.weights`` mixture) least, re-measure,
    repeat. Needs the model (see :class:`depthprune.ranking.sleb.Sleb`)."""
    raise RankError("sleb measures the model after every removal: use `depthprune prune MODEL --data "
                    "CALIB.jsonl --method sleb --domain D` (or --weights); a scores file alone is not enough")


def iterative_selection(rescore: Callable[[list[int]], Scores], num_layers: int, k: int,
                        candidates: list[int], req: RankRequest) -> Selection:
    """Iterative cosine re-scoring: remove the most redundant remaining candidate (by
    ``req.base``'s similarity scores), re-score the pruned model, repeat k times. Not SLEB,
    which re-measures the loss (method ``sleb``).

    ``rescore(removed)`` returns Scores of the model with the original 0-based layers
    ``removed`` deleted; its layer j is the j-th surviving original layer. It is called k
    times, with 0..k-1 layers removed. Redundancy is that of ``req.base`` (as `spaced`).
    Returns the removed original layers with the step at which each went.
    """
    removed: list[int] = []
    reasons: dict[int, str] = {}
    columns: dict = {}
    for step in range(k):
        scores = rescore(list(removed))
        surviving = [i for i in range(num_layers) if i not in removed]
        if scores.num_layers != len(surviving):
            raise RankError(f"rescore({removed}) returned scores of {scores.num_layers} layers, "
                            f"expected {len(surviving)}")
        local = [surviving.index(c) for c in candidates if c not in removed]
        values, step_columns = redundancy(scores, local, req)
        pick = surviving[_top_k(values, 1)[0]]
        if step == 0:  # the full model's view, already in original numbering
            columns = step_columns
        z = values[surviving.index(pick)]
        reasons[pick] = f"step {step + 1}: most redundant remaining ({req.base} z={z:+.3f})"
        removed.append(pick)
    return Selection(removed, reasons, columns)


def rescoring(rescore: Callable[[list[int]], Scores]) -> MethodFn:
    """``iterative``'s model hook for :func:`rank` (``measured=``): its selection, with
    ``rescore(removed)`` scoring the model without ``removed``. Step 0 reuses the scores ``rank``
    was given (the full model's) instead of a forward pass."""
    def select(scores: Scores, k: int, candidates: list[int], req: RankRequest) -> Selection:
        return iterative_selection(lambda removed: rescore(removed) if removed else scores, scores.num_layers, k,
                                   candidates, req)
    return select


# ---------------------------------------------------------------------- entry point
def check_request(req: RankRequest, domains: list[str] | None = None, where: str = "scores") -> None:
    """Validate everything in ``req`` that needs neither scores nor a model (method, token
    group, base, budget form, protection counts, weights, and the domain against ``domains``
    when known), so a bad option fails before anything expensive. Raises RankError."""
    if req.method not in METHODS:
        raise RankError(f"unknown method '{req.method}'; choose one of {', '.join(METHODS)}")
    if req.token_group not in GROUPS:
        raise RankError(f"unknown token group '{req.token_group}'; choose one of {', '.join(GROUPS)}")
    if req.base not in BASES:
        raise RankError(f"unknown base '{req.base}'; choose one of {', '.join(BASES)}")
    defaults = {f.name: f.default for f in fields(RankRequest)}
    ignored = [k for k in unread_options(req.method, {k: v for k, v in asdict(req).items() if v != defaults.get(k)})
               if k != "layers"]
    if ignored:
        raise RankError(f"method '{req.method}' does not read {', '.join('--' + k.replace('_', '-') for k in ignored)}; "
                        f"drop {'it' if len(ignored) == 1 else 'them'} (it reads: "
                        f"{', '.join(METHODS[req.method].reads) or 'no method options'})")
    if req.method == "iterative" and req.base == "ablation":  # its re-scoring pass measures cosines only
        raise RankError("iterative cannot use base 'ablation': it re-scores cosines after each removal and "
                        "cannot re-measure ablation damage; use --method ablation (damage measured once on "
                        "the full model) or iterative with --base domain, mixed or block-influence")
    check_budget_spec(req.budget)
    for name in ("protect_first", "protect_last"):
        if not is_int(getattr(req, name)) or getattr(req, name) < 0:
            raise RankError(f"--{name.replace('_', '-')} must be a whole number >= 0")
    needs_domain = req.method == "domain" or (req.method in ("spaced", "iterative") and req.base == "domain")
    if needs_domain and req.domain is None:
        raise RankError(f"method '{req.method}' needs --domain"
                        + (f"; domains in the {where}: {', '.join(domains)}" if domains else ""))
    if domains is not None and needs_domain and req.domain not in domains:
        raise RankError(f"domain '{req.domain}' is not in the {where}; present: {', '.join(domains)}")
    if domains is not None and req.weights is not None:
        unknown = sorted(set(req.weights) - set(domains))
        if unknown:
            raise RankError(f"weights name domains {unknown} that are not in the {where}; present: "
                            f"{', '.join(domains)}")


def rank(scores: Scores, req: RankRequest, measured: MethodFn | None = None) -> Plan:
    """Choose the layers to remove; returns a validated Plan (sorted 0-based layers).

    ``measured``: for a method that measures the model (its spec's ``needs`` is ``model``), its
    selection bound to the model — :func:`rescoring` for ``iterative``,
    :class:`depthprune.ranking.sleb.Sleb` for ``sleb``; without it such a method says what it needs.
    """
    n = scores.num_layers
    k = resolve_budget(req.budget, n)
    check_request(req, scores.domains if scores.sample_ids else None)
    protected = Protection.from_request(req).layers(n, scores.protected_layers)
    candidates = [i for i in range(n) if i not in protected]
    if k > len(candidates):
        lifts = [flag for flag, on in (("--allow-deepstack", scores.protected_layers and not req.allow_deepstack),
                                       ("a smaller --protect-first", req.protect_first),
                                       ("a smaller --protect-last", req.protect_last)) if on]
        raise RankError(f"budget {req.budget!r} asks for {k} layers but only {len(candidates)} of {n} are "
                        f"removable; protected: {protected}. Lower the budget"
                        + "".join(f" or use {flag}" for flag in lifts))
    try:
        spec = METHODS[req.method]
        select = measured if measured is not None and spec.needs == MODEL else spec.select
        sel = select(scores, k, candidates, req)
    except ScoresError as err:
        raise RankError(f"{req.method}: {err}") from None
    remove = sorted(int(i) for i in sel.remove)
    if len(remove) != k or len(set(remove)) != k or not set(remove) <= set(candidates):
        raise RankError(f"method {req.method} returned {sel.remove}, expected {k} distinct removable layers "
                        f"(protected: {protected}); this is a bug in the method")
    return Plan(method=req.method, num_layers=n, budget=k, remove=remove, protected=protected,
                reasons={i: sel.reasons.get(i, "") for i in remove}, columns=sel.columns,
                request=asdict(req), scores_fingerprint=scores.fingerprint(), scores_model_id=scores.model_id)


if __name__ == "__main__":  # the methods table of docs/methods.md, from the registry this run filled
    from depthprune.ranking.methods import methods_table as table
    print(table(), end="")
