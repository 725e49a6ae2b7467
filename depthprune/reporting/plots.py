"""The report's figures (matplotlib, Agg backend), each returned as PNG bytes.

Budgets are plotted as the fraction of decoder layers removed; layers are 0-based.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from depthprune.ranking.families import FAMILIES, family  # noqa: E402
from depthprune.ranking.stability import Stability  # noqa: E402
from depthprune.reporting.regimes import CONVERGED, RANKING, STRUCTURE, Series  # noqa: E402
from depthprune.study.metrics import METRICS, Metric  # noqa: E402
from depthprune.study.store import ResultRow  # noqa: E402

REGIME_COLORS = {RANKING: "#f6c28b", CONVERGED: "#d9d9d9", STRUCTURE: "#9ecae1"}
#: methods of a family drawn in colour in the figures by budget (the others grey)
TOP = 4
plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "axes.grid": True, "grid.alpha": 0.3,
                     "figure.dpi": 100, "savefig.dpi": 110})


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int, ncols: int, width: float, height: float):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _budget_ticks(ax, budgets: list[int], num_layers: int) -> None:
    """x ticks at the evaluated budgets: layers removed over the percentage (when few enough)."""
    budgets = sorted(set(budgets))
    if 0 < len(budgets) <= 10:
        ax.set_xticks([100 * b / num_layers for b in budgets],
                      [f"{b}\n{100 * b / num_layers:.0f}%" for b in budgets])


def _shade(ax, series: Series | None) -> None:
    """Shade each budget's regime, from midway to the previous budget to midway to the next."""
    if series is None or not series.budgets:
        return
    xs = [100 * b.fraction for b in series.budgets]
    gaps = np.diff(xs) if len(xs) > 1 else np.array([4.0])
    edges = [xs[0] - gaps[0] / 2] + [(a + b) / 2 for a, b in zip(xs, xs[1:])] + [xs[-1] + gaps[-1] / 2]
    for i, b in enumerate(series.budgets):
        left, right = edges[i], edges[i + 1]
        ax.axvspan(left, right, color=REGIME_COLORS[b.regime], alpha=0.45, lw=0, zorder=0)


def _family_styles(rows: list[ResultRow], metric: Metric) -> dict[str, dict[str, dict]]:
    """Per family, per label: colour and marker for the :data:`TOP` best methods of the family (mean
    over every unhealed pruned row, so a method keeps its colour in every panel), grey for the rest."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        v = metric.of(r)
        if r.budget > 0 and v is not None:
            values[family(r.method)][r.label].append(v if r.heal is None else np.nan)
    out: dict[str, dict[str, dict]] = {}
    for fam, by_label in values.items():
        score = {lab: np.nanmean(v) if np.isfinite(v).any() else np.nan for lab, v in by_label.items()}
        order = sorted(score, key=lambda lab: (np.isnan(score[lab]), metric.sort_key(np.nan_to_num(score[lab])), lab))
        out[fam] = {lab: ({"color": plt.get_cmap("tab10")(i), "marker": "osv^"[i], "lw": 1.8, "zorder": 3}
                          if i < TOP else {"color": "#b0b0b0", "marker": ".", "lw": 0.9, "zorder": 2})
                    for i, lab in enumerate(order)}
    return out


def _best_ranking(rows: list[ResultRow], metric: Metric) -> list[tuple[float, float]]:
    """(percent removed, value) of the best unhealed score-based ranking at each budget of ``rows``."""
    best: dict[float, float] = {}
    for r in rows:
        v = metric.of(r)
        if r.budget > 0 and r.heal is None and v is not None and family(r.method) == FAMILIES[0]:
            x = 100 * r.budget_fraction
            best[x] = metric.best((best.get(x, v), v))
    return [(x, metric.shown(v)) for x, v in sorted(best.items())]


def metric_vs_budget(rows: list[ResultRow], series: list[Series], metric_name: str) -> bytes:
    """Small multiples: one row per eval set x domain, one column per method family; ``metric``
    ("accuracy" or "nll") vs budget. The :data:`TOP` best methods of a family in colour, the others
    grey; healed cells dashed with open markers; the unpruned model dotted; the best score-based
    ranking per budget dashed black in the other families' panels; regimes shaded."""
    metric = METRICS[metric_name]
    keys = sorted({(r.eval_set, r.domain) for r in rows})
    styles = _family_styles(rows, metric)
    fams = [f for f in FAMILIES if f in styles]
    fig, axes = plt.subplots(len(keys), len(fams), figsize=(4.9 * len(fams), 3.9 * len(keys)), squeeze=False,
                             sharey="row")
    unhealed = {(s.eval_set, s.domain): s for s in series if not s.healed}
    num_layers = next((round(r.budget / r.budget_fraction) for r in rows if r.budget_fraction > 0), 0)
    for row_axes, (eval_set, domain) in zip(axes, keys):
        mine = [r for r in rows if (r.eval_set, r.domain) == (eval_set, domain)]
        for ax, fam in zip(row_axes, fams):
            _shade(ax, unhealed.get((eval_set, domain)))
            lines: dict[tuple, list] = defaultdict(list)
            for r in mine:
                value = metric.of(r)
                if value is None:
                    continue
                value = metric.shown(value)
                if r.budget == 0:
                    ax.axhline(value, color="black", ls=":", lw=1.2, zorder=4, label="unpruned")
                elif family(r.method) == fam:
                    lines[(r.label, r.heal is not None)].append((100 * r.budget_fraction, value))
            grey = 0
            for (label, healed), pts in sorted(lines.items(), key=lambda kv: -styles[fam][kv[0][0]]["zorder"]):
                style = dict(styles[fam][label])
                coloured = style["zorder"] == 3
                grey += not coloured and not healed
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--" if healed else "-", ms=5 if coloured else 4,
                        mfc="white" if healed else style["color"],
                        label=(label + (" healed" if healed else "")) if coloured else None, **style)
            if grey:
                ax.plot([], [], color="#b0b0b0", lw=0.9, label=f"{grey} other{'s' if grey > 1 else ''} (grey)")
            best = _best_ranking(mine, metric)
            if fam != FAMILIES[0] and best:
                ax.plot(*zip(*best), color="black", ls="--", lw=1.2, zorder=4, label="best score-based ranking")
            ax.set_title(f"{fam}: {domain} ({eval_set})", fontsize=11)
            if num_layers:
                _budget_ticks(ax, [r.budget for r in rows if r.budget > 0], num_layers)
            ax.set_xlabel("layers removed (count, %)", fontsize=10)
            ax.legend(fontsize=7.5, loc="best", framealpha=0.85)
        row_axes[0].set_ylabel(metric.axis)
    fig.tight_layout()
    fig.legend(handles=[Patch(color=c, alpha=0.6, label=f"regime: {name}") for name, c in REGIME_COLORS.items()],
               loc="upper center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return _png(fig)


def score_profiles(profiles: dict[str, dict[str, list[float]]], ablation: dict[str, list[float]] | None,
                   protected: list[int]) -> bytes:
    """Per-layer mean input/output cosine per domain, one panel per token group, and beside them
    the ablation ground truth (mean NLL increase when the layer alone is skipped) if measured."""
    groups = sorted({g for by_group in profiles.values() for g in by_group}, key=["all", "text", "image", "last"].index)
    panels = [("cos", g) for g in groups] + ([("ablation", None)] if ablation else [])
    fig, axes = _grid(len(panels), 3, 4.6, 3.4)
    domain_colors = {d: plt.get_cmap("Dark2")(i) for i, d in enumerate(sorted(profiles))}
    for ax, (kind, group) in zip(axes, panels):
        for layer in protected:
            ax.axvspan(layer - 0.5, layer + 0.5, color="#eeeeee", zorder=0, lw=0)
        source = {d: v[group] for d, v in profiles.items() if group in v} if kind == "cos" else ablation
        for domain, values in sorted(source.items()):
            ax.plot(range(len(values)), values, marker="o", ms=3, color=domain_colors.get(domain, "black"),
                    label=domain)
        ax.set_xlabel("decoder layer (0-based)")
        free = [v[i] for v in source.values() for i in range(len(v)) if i not in protected and v[i] == v[i]]
        if kind == "cos" and free and protected:  # fit the removable layers; protected ones may leave the axis
            low, high = min(free), max(free)
            pad = 0.08 * (high - low or 0.01)
            ax.set_ylim(low - pad, high + pad)
        if kind == "cos":
            ax.set_title(f"cos(input, output), {group} tokens")
            ax.set_ylabel("mean cosine (high = redundant)")
        else:
            ax.set_title("ablation: skip one layer")
            ax.set_ylabel("answer NLL increase (nats/token)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def removed_grid(rows: list[ResultRow], num_layers: int, protected: list[int]) -> bytes:
    """Small multiples, one per method: which layers (x) each budget (y) removes."""
    plans: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for r in rows:
        if r.budget > 0:
            plans[r.label][r.budget] = r.removed
    labels = sorted(plans)
    budgets = sorted({b for p in plans.values() for b in p})
    fig, axes = _grid(len(labels), 4, 3.6, 1.3 + 0.22 * len(budgets))
    cmap = ListedColormap(["white", "#f2f2f2", "#c0392b"])
    for ax, label in zip(axes, labels):
        grid = np.zeros((len(budgets), num_layers))
        grid[:, protected] = 1
        for i, b in enumerate(budgets):
            for layer in plans[label].get(b, []):
                grid[i, layer] = 2
            if b not in plans[label]:
                grid[i, :] = np.where(grid[i] == 1, 1, 0)
        # one mesh (not per-cell ticks/gridlines): cheap to draw, cell borders included
        ax.pcolormesh(grid, cmap=cmap, vmin=0, vmax=2, edgecolors="#dddddd", linewidth=0.5)
        ax.invert_yaxis()
        ax.grid(False)
        ax.set_title(label, fontsize=9)
        ax.set_yticks(np.arange(len(budgets)) + 0.5, [str(b) for b in budgets], fontsize=7)
        step = max(1, num_layers // 8)
        ax.set_xticks(np.arange(0, num_layers, step) + 0.5, [str(i) for i in range(0, num_layers, step)])
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("layer (0-based)", fontsize=8)
        ax.set_ylabel("layers removed", fontsize=8)
    fig.legend(handles=[Patch(color="#c0392b", label="removed"), Patch(color="#f2f2f2", label="protected")],
               loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, -0.04))
    fig.tight_layout()
    return _png(fig)


def stability_plot(stability: list[Stability], num_layers: int, sensitive: set[int]) -> bytes:
    """One panel per budget: each bootstrapped ranking's mean top-k overlap with the full-data plan and
    its 95% interval; domain-aware rankings in colour, the others grey-blue; budgets that are
    ranking-sensitive in some series shaded."""
    budgets = sorted({s.budget for s in stability})
    labels = sorted({s.label for s in stability},
                    key=lambda lab: (next(s.target for s in stability if s.label == lab) is None, lab), reverse=True)
    fig, axes = _grid(len(budgets), 4, 3.4, 0.9 + 0.24 * len(labels))
    cell = {(s.label, s.budget): s for s in stability}
    for i, (ax, b) in enumerate(zip(axes, budgets)):
        if b in sensitive:
            ax.set_facecolor(REGIME_COLORS[RANKING] + "55")
        for y, label in enumerate(labels):
            s = cell.get((label, b))
            if s is None:
                continue
            mean, low, high = s.overlap
            color = "#d95f02" if s.target else "#5b6f8f"
            ax.errorbar([mean], [y], xerr=[[mean - low], [high - mean]], fmt="o", ms=4.5, color=color, capsize=2)
        ax.set_yticks(range(len(labels)), labels if i % 4 == 0 else [""] * len(labels), fontsize=8)
        ax.set_xlim(-0.03, 1.03)
        ax.set_title(f"k = {b} ({100 * b / num_layers:.0f}%)" + (", ranking-sensitive" if b in sensitive else ""),
                     fontsize=10)
        ax.set_xlabel("top-k overlap with full-data plan", fontsize=9)
    fig.legend(handles=[plt.Line2D([], [], color="#d95f02", marker="o", ls="", label="domain-aware"),
                        plt.Line2D([], [], color="#5b6f8f", marker="o", ls="", label="other score-reading method")],
               loc="upper center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout()
    return _png(fig)
