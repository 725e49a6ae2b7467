"""The report's tables of regime verdicts and ranking stability, as (header, rows) of strings."""

from __future__ import annotations

import re
from collections import defaultdict

from depthprune.ranking.stability import Stability
from depthprune.reporting.regimes import ALPHA, Arm, BudgetStats, Series, arm_ci, size
from depthprune.statistics import floor_warning, hidden_collapse, near_floor, retention
from depthprune.study.store import treatment

ERROR_CONTROL = (f"Error control: the rankings-differ and structure-dominates p-values of every budget of every "
                 f"series form one Holm family (alpha = {ALPHA}); pairs of rankings are tested only where the "
                 f"omnibus test rejected, Holm-corrected over the pairs of that budget.")


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def pval(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def budget_label(b: int, fraction: float) -> str:
    return f"{b} ({100 * fraction:.0f}%)"


def _value(b: BudgetStats, arm: Arm) -> str:
    return b.spec.text(arm.value)


def _bare(b: BudgetStats, x: float) -> str:
    return b.spec.number(x)


def _unit(b: BudgetStats) -> str:
    return b.spec.unit


def _p_pair(raw: float | None, adjusted: float) -> str:
    return "–" if raw is None else f"{pval(raw)} ({pval(adjusted)})"


def best_table(series: Series) -> tuple[list[str], list[list[str]]]:
    """One row per budget: the label and the p-value it rests on, the best ranking with its 95% CI,
    the spread among the rankings with its CI, both tests, the best structure-aware plan and the references."""
    head = ["budget (layers, %)", "regime", "p (Holm)", "best ranking [95% CI]",
            "ranking plans: spread [95% CI]", "rankings differ: p (Holm)", "best structure-aware (their mean vs best ranking)",
            "structure beats all: p (Holm)", "references"]
    body = []
    for b in series.budgets:
        best = b.rankings[0] if b.rankings else None
        ci = arm_ci(b, best) if best is not None else None
        lead = "–" if best is None else f"{best.name}: {_value(b, best)}" + (
            f" [{b.spec.text(ci[0], named=False)}, {b.spec.text(ci[1], named=False)}]" if ci else "")
        tied = [lab for lab in b.tied if best is None or lab not in best.labels]
        lead += f" (tied: {', '.join(tied)})" if tied and b.leader is best else ""
        spread = "–" if b.spread is None else (f"{len(b.rankings)} plans: {_bare(b, b.spread)} [{_bare(b, b.spread_ci[0])}"
                                               f", {_bare(b, b.spread_ci[1])}] {_unit(b)}")
        s = b.structure[0] if b.structure else None
        struct = "–" if s is None else f"{s.name}: {_value(b, s)} ({'+' if (b.margin or 0) >= 0 else ''}{size(b, b.margin)})"
        refs = ", ".join(f"{a.name} {_value(b, a)}" for a in b.references) or "–"
        body.append([budget_label(b.budget, b.fraction), b.regime, pval(b.p), lead, spread,
                     _p_pair(b.p_rankings, b.p_rankings_adj), struct, _p_pair(b.p_structure, b.p_structure_adj), refs])
    return head, body


def pairs_lines(series: Series) -> list[str]:
    """The ranking pairs that differ beyond noise at the ranking-sensitive budgets, one line per budget."""
    out = []
    for b in series.budgets:
        if b.resolved:
            higher = b.higher_is_better
            parts = [f"{p.a if (p.diff > 0) == higher else p.b} > {p.b if (p.diff > 0) == higher else p.a} "
                     f"by {size(b, abs(p.diff))} (p {pval(p.p_holm)})" for p in b.resolved]
            out.append(f"{series.name}, {budget_label(b.budget, b.fraction)}: " + "; ".join(parts))
        elif b.regime == "ranking-sensitive":
            out.append(f"{series.name}, {budget_label(b.budget, b.fraction)}: the rankings differ (omnibus), but no "
                       "single pair is resolved after Holm.")
    return out


def stability_table(stability: list[Stability]) -> tuple[list[str], list[list[str]]]:
    """One row per ranking, one column per budget: mean top-k overlap [95% CI] / mean Kendall tau."""
    budgets = sorted({s.budget for s in stability})
    cells: dict[str, dict[int, Stability]] = defaultdict(dict)
    for s in stability:
        cells[s.label][s.budget] = s
    head = ["ranking", "domain-aware for", "tau on"] + [f"k = {b}" for b in budgets]
    body = []
    for label in sorted(cells, key=lambda lab: (next(iter(cells[lab].values())).target is None, lab)):
        first = next(iter(cells[label].values()))
        column = re.sub(r"span \d+", "span k", first.column) if first.column else None  # angular-block: per budget
        row = [label, first.target or "–", f"{column} ({first.layers})" if column else "–"]
        for b in budgets:
            s = cells[label].get(b)
            if s is None:
                row.append("–")
                continue
            o, t = s.overlap, s.tau
            row.append(f"{o[0]:.2f} [{o[1]:.2f}, {o[2]:.2f}] / " + ("–" if t is None else f"{t[0]:.2f}"))
        body.append(row)
    return head, body


__all__ = ["ERROR_CONTROL", "best_table", "floor_lines", "budget_label", "num", "pairs_lines", "pct", "pval", "stability_table"]


def floor_lines(rows: list) -> list[str]:
    """One line per eval set and domain the unpruned model answers under 10% right
    (:func:`~depthprune.statistics.floor_warning`): comparisons there mean nothing."""
    lines = []
    for r in rows:
        if r.budget == 0 and r.heal is None and r.accuracy is not None:
            answered = [s[1] for s in r.samples if s[1] is not None]
            right = {r.domain: (int(sum(answered)), len(answered))}
            lines += [floor_warning(f"eval set {r.eval_set}", d, *right[d]) for d in near_floor(right)]
    return lines


def retention_table(rows: list) -> tuple[list[str], list[list[str]], list[str]]:
    """Accuracy retained per domain by every stored cell (pruned ÷ the unpruned model on the same
    samples, 95% bootstrap interval), the field's headline figure. Returns the table and one line
    per cell with a hidden collapse (a domain under 80% while another keeps 90% or more)."""
    import json

    base = {(r.eval_set, r.domain): {s[0]: s[1] for s in r.samples if s[1] is not None}
            for r in rows if r.budget == 0 and r.accuracy is not None}
    domains = sorted({d for _, d in base})
    cells: dict[tuple, dict[str, tuple]] = defaultdict(dict)
    for r in rows:
        ref = base.get((r.eval_set, r.domain))
        if r.budget == 0 or r.accuracy is None or not ref:
            continue
        mine = {s[0]: s[1] for s in r.samples if s[1] is not None}
        ids = sorted(set(ref) & set(mine))
        if ids:
            key = (r.budget, r.budget_fraction, r.label, json.dumps(r.heal, sort_keys=True), r.eval_set)
            cells[key][r.domain] = retention([ref[i] for i in ids], [mine[i] for i in ids])
    head = ["budget", "method", "after pruning", "eval set"] + [f"{d} kept [95% CI]" for d in domains] + ["hidden collapse"]
    body, flagged = [], []
    for (budget, fraction, label, heal, eval_set), kept in sorted(cells.items()):
        collapsed = hidden_collapse({d: v[0] for d, v in kept.items()})
        cols = [f"{pct(kept[d][0], 0)} [{pct(kept[d][1], 0)}, {pct(kept[d][2], 0)}]" if d in kept else "–" for d in domains]
        body.append([budget_label(budget, fraction), label, treatment(heal), eval_set, *cols,
                     ", ".join(collapsed) or ""])
        if collapsed:
            flagged.append(f"{label} at {budget_label(budget, fraction)}"
                           f"{f' ({treatment(heal)})' if heal != 'null' else ''} on "
                           f"{eval_set}: {', '.join(collapsed)} keeps "
                           + ", ".join(f"{pct(kept[d][0], 0)}" for d in collapsed) + " of its accuracy while "
                           + ", ".join(f"{d} keeps {pct(v[0], 0)}" for d, v in sorted(kept.items()) if d not in collapsed))
    return head, body, flagged
