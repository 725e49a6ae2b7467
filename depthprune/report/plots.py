"""The report's figures (matplotlib, Agg backend), each returned as PNG bytes.

Budgets are plotted as the fraction of decoder layers removed; layers are 0-based.
"""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from depthprune.report.regimes import CONVERGED, RANKING, STRUCTURE, Series, Stability  # noqa: E402
from depthprune.study.store import ResultRow  # noqa: E402

REGIME_COLORS = {RANKING: "#f6c28b", CONVERGED: "#d9d9d9", STRUCTURE: "#9ecae1"}
plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "axes.grid": True, "grid.alpha": 0.3,
                     "figure.dpi": 100, "savefig.dpi": 110})


MARKERS = "osv^DPX*<>ph"


def label_colors(labels: list[str]) -> dict[str, tuple]:
    """One stable colour per method label across every figure."""
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(sorted(labels))}


def _style(label: str, colors: dict) -> dict:
    """Colour and marker of a label; markers differ so that coinciding lines stay visible."""
    i = sorted(colors).index(label) if label in colors else 0
    return {"color": colors.get(label, "black"), "marker": MARKERS[i % len(MARKERS)]}


def _dodge(label: str, colors: dict, width: float) -> float:
    """A small horizontal offset per label (total ``width``) so equal values do not hide each other."""
    n = len(colors)
    if n < 2 or label not in colors:
        return 0.0
    return (sorted(colors).index(label) / (n - 1) - 0.5) * width


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


def metric_vs_budget(rows: list[ResultRow], series: list[Series], metric: str, colors: dict) -> bytes:
    """One panel per eval set x domain: ``metric`` ("accuracy" or "nll") vs budget, a line per
    method (healed cells dashed, open markers), the unpruned model dotted, regimes shaded."""
    keys = sorted({(r.eval_set, r.domain) for r in rows})
    fig, axes = _grid(len(keys), 2, 6.4, 4.6)
    unhealed = {(s.eval_set, s.domain): s for s in series if s.heal == "null"}
    for ax, (eval_set, domain) in zip(axes, keys):
        _shade(ax, unhealed.get((eval_set, domain)))
        lines: dict[tuple, list] = defaultdict(list)
        for r in rows:
            if (r.eval_set, r.domain) != (eval_set, domain):
                continue
            value = r.accuracy if metric == "accuracy" else r.nll
            if value is None:
                continue
            value = 100 * value if metric == "accuracy" else value
            if r.budget == 0:
                ax.axhline(value, color="black", ls=":", lw=1.2, zorder=3)
                continue
            lines[(r.label, r.heal is not None)].append((100 * r.budget_fraction, value))
        step = min(np.diff(sorted({p[0] for pts in lines.values() for p in pts})), default=5.0)
        for (label, healed), pts in sorted(lines.items()):
            pts.sort()
            style = _style(label, colors)
            dx = _dodge(label, colors, 0.1 * step)
            ax.plot([p[0] + dx for p in pts], [p[1] for p in pts], ls="--" if healed else "-", ms=5,
                    mfc="white" if healed else style["color"], lw=1.4, zorder=2, **style)
        ax.set_title(f"{domain}  ({eval_set})")
        num_layers = next((round(r.budget / r.budget_fraction) for r in rows if r.budget_fraction > 0), 0)
        if num_layers:
            _budget_ticks(ax, [r.budget for r in rows if r.budget > 0], num_layers)
        ax.set_xlabel("layers removed (count, % of decoder layers)")
        ax.set_ylabel("accuracy (%)" if metric == "accuracy" else "answer NLL (nats/token)\nlower is better")
    handles = [plt.Line2D([], [], ms=5, lw=1.4, label=lab, **_style(lab, colors)) for lab in sorted(colors)]
    if any(r.heal is not None for r in rows):
        handles.append(plt.Line2D([], [], color="grey", ls="--", marker="o", mfc="white",
                                  label="healed (dashed, open)"))
    if any(r.budget == 0 for r in rows):
        handles.append(plt.Line2D([], [], color="black", ls=":", label="unpruned"))
    handles += [Patch(color=c, alpha=0.6, label=f"regime: {name}") for name, c in REGIME_COLORS.items()]
    fig.tight_layout()
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
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


def stability_plot(stability: list[Stability], num_layers: int, sensitive: set[int], colors: dict) -> bytes:
    """Mean top-k overlap and Kendall tau vs budget, one line per score-based ranking;
    budgets that are ranking-sensitive in some series shaded."""
    fig, axes = plt.subplots(1, 2, figsize=(12.8, 4.4), squeeze=False)
    by_label: dict[str, list[Stability]] = defaultdict(list)
    for s in stability:
        by_label[s.label].append(s)
    for ax, what in zip(axes[0], ("overlap", "tau")):
        for b in sensitive:
            x = 100 * b / num_layers
            half = 50 / num_layers
            ax.axvspan(x - half, x + half, color=REGIME_COLORS[RANKING], alpha=0.45, lw=0)
        for label, items in sorted(by_label.items()):
            items = sorted(items, key=lambda s: s.budget)
            pts = [(100 * s.budget / num_layers, getattr(s, what), getattr(s, what + "_sd")) for s in items
                   if getattr(s, what) is not None]
            if not pts:
                continue
            x, y, sd = (np.array(v, dtype=float) for v in zip(*pts))
            dx = _dodge(label, colors, 0.15 * 100 / num_layers)
            yerr = np.vstack([sd, np.maximum(0.0, np.minimum(sd, 1.0 - y))])  # never past 1
            ax.errorbar(x + dx, y, yerr=yerr, ms=5, lw=1.4, capsize=2, elinewidth=0.8, label=label,
                        **_style(label, colors))
        _budget_ticks(ax, [s.budget for s in stability], num_layers)
        ax.set_xlabel("layers removed (count, % of decoder layers)")
        ax.set_ylabel("top-k overlap with full-data plan" if what == "overlap" else "Kendall tau of layer scores")
        ax.set_title("removed set agreement" if what == "overlap" else "per-layer score order agreement")
        ax.set_ylim(-0.05 if what == "overlap" else None, 1.05)
    fig.tight_layout()
    axes[0][1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _png(fig)


def heal_key(row: ResultRow) -> str:
    return json.dumps(row.heal, sort_keys=True)
