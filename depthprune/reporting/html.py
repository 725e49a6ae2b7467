"""The study report: one self-contained HTML file (plots embedded as PNG) plus Markdown.

    from depthprune.reporting.html import write_report
    html_path = write_report("runs/demo")     # -> runs/demo/report.html (+ report.md)

Reads only the run directory: ``results.sqlite`` (see :mod:`depthprune.study.store`) and, if present,
``scores.json`` (the unpruned model's scores, for score profiles and ranking stability). Never
runs a model. Regime rule and statistics: :mod:`depthprune.reporting.regimes`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from depthprune.outputs import atomic_files, check_output, inputs_of
from depthprune.ranking.protection import Protection
from depthprune.ranking.stability import Stability, ranking_stability, stability_claim
from depthprune.reporting.regimes import RANKING, Series, analyze, ranking_sensitive, regimes_json, rule
from depthprune.reporting.tables import (
    ERROR_CONTROL,
    best_table,
    budget_label,
    floor_lines,
    num,
    pairs_lines,
    pct,
    pval,
    retention_table,
    stability_table,
)
from depthprune.scoring.scores import Scores, ScoresError
from depthprune.statistics import kendall_tau, mcnemar_exact
from depthprune.study.metrics import METRICS
from depthprune.study.rundir import RunDir
from depthprune.study.store import ResultRow, get_meta, open_store_readonly, read_results, treatment

STORE_NAME, SCORES_NAME = RunDir.STORE, RunDir.SCORES
REGIMES_NAME = RunDir.REGIMES


class ReportError(ValueError):
    """The run directory cannot be reported on; the message names it and the fix."""


# ----------------------------------------------------------------------------- loading
def load_run(run_dir: str | os.PathLike) -> tuple[list[ResultRow], dict[str, Any]]:
    """The stored rows and meta of ``run_dir``; ReportError if it is not a run directory or is empty."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory; give the --out directory of `depthprune sweep` or `demo`")
    store = run_dir / STORE_NAME
    if not store.is_file():
        raise ReportError(f"{run_dir}: not a run directory (no {STORE_NAME}); run "
                          f"`depthprune sweep STUDY.yaml --out {run_dir}` first")
    try:
        conn = open_store_readonly(store)
        rows, meta = read_results(conn), get_meta(conn)
        conn.close()
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"{store}: not a depthprune results store ({exc}); point to a sweep's run directory") from None
    if not rows:
        raise ReportError(f"{store}: the store has no results yet; run or resume the sweep that writes it")
    return rows, meta


def _load_scores(run_dir: Path, notes: list[str]) -> Scores | None:
    path = run_dir / SCORES_NAME
    if not path.is_file():
        notes.append(f"No {SCORES_NAME} in the run directory: score profiles and ranking stability are skipped.")
        return None
    try:
        return Scores.load(path)
    except ScoresError as exc:
        notes.append(f"{SCORES_NAME} could not be read ({exc}): score profiles and ranking stability are skipped.")
        return None


def _profiles(scores: Scores) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for domain in scores.domains:
        out[domain] = {}
        for group in ("all", "last"):
            try:
                out[domain][group] = scores.mean("cos", group, domain).tolist()
            except ScoresError:
                continue
    return out


def _ablation(scores: Scores, notes: list[str]) -> dict[str, list[float]] | None:
    """Per domain, mean over samples of the answer-NLL increase when one layer is skipped
    (``ablation_nll[sample, layer] - base_nll[sample]``), if the scores carry it."""
    abl = getattr(scores, "ablation_nll", None)
    if abl is None:
        notes.append("The scores carry no single-layer ablation NLL: the ablation ground truth is not shown.")
        return None
    abl = torch.as_tensor(abl, dtype=torch.float64)
    base = getattr(scores, "base_nll", None)
    if abl.shape != (len(scores.sample_ids), scores.num_layers):
        notes.append(f"ablation_nll has shape {tuple(abl.shape)}, expected [samples, layers]: not shown.")
        return None
    if base is not None:
        abl = abl - torch.as_tensor(base, dtype=torch.float64).reshape(-1, 1)
    return {d: torch.nanmean(abl[scores.sample_mask(d)], 0).tolist() for d in scores.domains}


# ----------------------------------------------------------------------------- helpers
def _healing_table(rows: list[ResultRow]) -> tuple[list[str], list[list[str]]]:
    plain = {(r.label, r.budget, r.eval_set, r.domain): r for r in rows if r.heal is None}
    head = ["method", "budget", "after pruning", "eval set / domain", "accuracy plain → after", "NLL plain → after",
            "only plain / only after correct", "p (McNemar)"]
    body = []
    for r in rows:
        if r.heal is None or (r.label, r.budget, r.eval_set, r.domain) not in plain:
            continue
        u = plain[(r.label, r.budget, r.eval_set, r.domain)]
        left = {s[0]: s[1] for s in u.samples if s[1] is not None}
        right = {s[0]: s[1] for s in r.samples if s[1] is not None}
        ids = sorted(set(left) & set(right))
        if ids:
            a_only, b_only, p = mcnemar_exact([left[i] for i in ids], [right[i] for i in ids])
            counts, pv = f"{a_only} / {b_only}", pval(p)
        else:
            counts, pv = "–", "–"
        body.append([r.label, budget_label(r.budget, r.budget_fraction), treatment(r.heal), f"{r.eval_set} / {r.domain}",
                     f"{pct(u.accuracy)} → {pct(r.accuracy)}", f"{num(u.nll)} → {num(r.nll)}", counts, pv])
    return head, body


def _ablation_agreement(profiles: dict, ablation: dict | None, protected: list[int]) -> list[str]:
    """Kendall tau between each domain's all-token cosine and its ablation damage (sign flipped,
    so +1 means the cosine orders layers exactly as the ground truth does)."""
    if not ablation:
        return []
    out = []
    for domain, damage in sorted(ablation.items()):
        cos = profiles.get(domain, {}).get("all")
        if cos is None:
            continue
        keep = [i for i in range(len(cos)) if i not in protected and damage[i] == damage[i]]
        tau = kendall_tau([cos[i] for i in keep], [-damage[i] for i in keep])
        out.append(f"{domain}: Kendall tau between the all-token cosine and the ablation ground truth "
                   f"= {tau:.2f} over {len(keep)} removable layers (+1: the cosine orders layers exactly as "
                   f"the measured damage does).")
    return out


# ----------------------------------------------------------------------------- rendering
CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1320px;margin:24px auto;
padding:0 24px;color:#222;line-height:1.45}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{font-size:16px;margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.rule{background:#f7f7f2;border-left:4px solid #c9c58f;padding:8px 12px;font-size:14px}
.finding{margin:6px 0}.muted{color:#666;font-size:13px}
.regime-ranking-sensitive{background:#fbe3c8!important}.regime-converged{background:#eee!important}
.regime-structure-dominated{background:#d6e8f5!important}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
"""


class _Doc:
    """Builds the HTML and the Markdown side by side."""

    def __init__(self, html_name: str = "report.html") -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.html_name = html_name

    def h(self, level: int, text: str) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"\n{'#' * level} {text}\n")

    def p(self, text: str, cls: str = "") -> None:
        attr = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{attr}>{html.escape(text)}</p>")
        self.md.append(f"{text}\n")

    def bullets(self, items: list[str]) -> None:
        self.html.append("<ul>" + "".join(f'<li class="finding">{html.escape(i)}</li>' for i in items) + "</ul>")
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")

    def table(self, head: list[str], body: list[list[str]], regime_col: int | None = None) -> None:
        cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
        rows = []
        for r in body:
            cls = f' class="regime-{r[regime_col]}"' if regime_col is not None else ""
            rows.append("<tr>" + "".join(f"<td{cls if i == regime_col else ''}>{html.escape(c)}</td>"
                                         for i, c in enumerate(r)) + "</tr>")
        self.html.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        esc = [[c.replace("|", "\\|") for c in r] for r in [head] + body]
        self.md.append("| " + " | ".join(esc[0]) + " |\n|" + "---|" * len(head) + "\n"
                       + "".join("| " + " | ".join(r) + " |\n" for r in esc[1:]))

    def image(self, png: bytes, alt: str) -> None:
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        self.md.append(f"*Figure: {alt} (embedded in {self.html_name}).*\n")

    def raw_details(self, summary: str, head: list[str], body: list[list[str]]) -> None:
        self.html.append(f"<details><summary>{html.escape(summary)}</summary>")
        self.table(head, body)
        self.html.append("</details>")




# ----------------------------------------------------------------------------- the report
def _check_out(run_dir: Path, out: str | os.PathLike | None, overwrite: bool) -> Path:
    """The HTML path. The default (RUN_DIR/report.html, with report.md and regimes.json) is the run
    directory's own and is regenerated each time; an explicit ``--out`` follows the rule of every
    output: its three files are replaced only with ``overwrite``, never an input."""
    run = RunDir(run_dir)
    if out is None:
        return run.report
    out = Path(out).expanduser()
    if out.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"{out}: the report file name must end in .html (the Markdown goes beside it)")
    reads = inputs_of(files=[run.store, run.scores])
    for path in (out, out.with_suffix(".md"), out.parent / REGIMES_NAME):
        check_output(path, overwrite or path == run.report.with_suffix(path.suffix), kind="file", inputs=reads)
    return out


def _stability(rows: list[ResultRow], meta: dict, scores: Scores, resamples: int, seed: int, progress: bool,
               notes: list[str]) -> list[Stability]:
    """Bootstrap stability of every stored ranking, under the study's protection settings."""
    protect = Protection(**((meta.get("study") or {}).get("protect") or {})).request_kwargs()  # stored by `sweep`
    rankings = sorted({(r.label, r.method, json.dumps(r.options, sort_keys=True), r.budget) for r in rows if r.budget > 0})
    skipped: list[str] = []
    stability = ranking_stability(scores, [(lab, m, {**protect, **json.loads(o)}, b) for lab, m, o, b in rankings],
                                  n_resamples=resamples, seed=seed, progress=progress, skipped=skipped)
    if skipped:
        notes.append("Ranking stability not computed for " + "; ".join(skipped) + ".")
    stored = {(r.label, r.budget): r.removed for r in rows}
    mismatched = sorted({s.label for s in stability if stored.get((s.label, s.budget)) != s.full_removed})
    if mismatched:
        notes.append(f"Re-ranking {SCORES_NAME} does not reproduce the stored removed layers of "
                     f"{', '.join(mismatched)}; their stability describes the re-ranked plan.")
    return stability


def _header(doc: _Doc, rows: list[ResultRow], meta: dict, num_layers: int, protected: list[int]) -> None:
    doc.h(1, f"depthprune study: {meta.get('model', '?')}")
    seconds = sum({r.cell: r.seconds for r in rows}.values())
    doc.p(f"{num_layers} decoder layers (0-based), protected {protected or 'none'}; domains "
          f"{', '.join(meta.get('domains') or sorted({r.domain for r in rows}))}; eval sets "
          f"{', '.join(sorted({r.eval_set for r in rows}))}; {len({r.cell for r in rows})} cells, {len(rows)} result "
          f"rows, {seconds:.0f} s of compute stored. depthprune {meta.get('depthprune_version', '?')}; report "
          f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", cls="muted")


def _regimes(doc: _Doc, rows: list[ResultRow], series: list[Series], plots: Any) -> None:
    """The figures by budget and the table of verdicts per series."""
    for metric in METRICS.values():
        if any(metric.of(r) is not None for r in rows):
            doc.h(2, metric.title)
            doc.image(plots.metric_vs_budget(rows, series, metric.name),
                      f"{metric.title.lower()}, by method family and domain")
            doc.p("One panel per family; the best methods of each family in colour, the others grey; the best "
                  "score-based ranking at each budget dashed black in the other panels; shading: the regime.",
                  cls="muted")
    doc.h(2, "Best method per budget")
    doc.p("Plans: variants that remove the same layers count once. Spread: best minus worst score-based plan with "
          "its simultaneous 95% bootstrap interval. p-values: raw (Holm over the report). " + ERROR_CONTROL,
          cls="muted")
    for s in series:
        if s.budgets:
            doc.h(3, f"{s.name} (n = {s.n})")
            doc.table(*best_table(s), regime_col=1)
    pairs = [line for s in series for line in pairs_lines(s)]
    if pairs:
        doc.p("Ranking pairs that differ beyond noise (exact McNemar, or Wilcoxon on NLL; Holm within the budget):")
        doc.bullets(pairs)


def _retention(doc: _Doc, rows: list[ResultRow]) -> list[str]:
    """Accuracy retained per domain by every cell (a table behind a fold); returns the lines of
    the hidden collapses it found, for the findings."""
    head, body, flagged = retention_table(rows)
    if not body:
        return []
    doc.h(2, "Accuracy retained")
    doc.p("Each cell's accuracy as a share of the unpruned model's on the same samples (95% bootstrap interval). "
          "Hidden collapse: a domain keeps under 80% while another keeps 90% or more — the average over domains "
          "hides it.", cls="muted")
    doc.raw_details(f"{len(body)} cells ({len(flagged)} with a hidden collapse)", head, body)
    return flagged


def _healing(doc: _Doc, rows: list[ResultRow]) -> None:
    head, body = _healing_table(rows)
    if not body:
        return
    doc.h(2, "Healing and compensation")
    doc.p("Each healed or compensated cell against the same plan removed plainly, on the same samples.", cls="muted")
    if len(body) > 12:
        doc.raw_details(f"{len(body)} healed or compensated cells", head, body)
    else:
        doc.table(head, body)


def _layers(doc: _Doc, rows: list[ResultRow], scores: Scores | None, num_layers: int, protected: list[int],
            plots: Any) -> None:
    """Score profiles (with the ablation ground truth) and the removed-layer grid."""
    if scores is not None:
        doc.h(2, "Per-layer score profiles")
        profiles = _profiles(scores)
        ablation = _ablation(scores, [])
        doc.image(plots.score_profiles(profiles, ablation, protected), "per-layer score profiles per domain")
        agreement = _ablation_agreement(profiles, ablation, protected)
        doc.p("Mean cosine between each layer's input and output over the calibration samples of each domain "
              "(grey: protected layers). " + (" ".join(agreement) if agreement else
                                              "No single-layer ablation ground truth in the scores."), cls="muted")
    doc.h(2, "Removed layers per method and budget")
    doc.image(plots.removed_grid([r for r in rows if r.heal is None] or rows, num_layers, protected),
              "method x budget grid of removed layers")


def _stability_section(doc: _Doc, stability: list[Stability], series: list[Series], resamples: int,
                       num_layers: int, plots: Any) -> None:
    doc.h(2, "Ranking stability")
    sensitive = {b.budget for s in series for b in s.budgets if b.regime == RANKING}
    doc.image(plots.stability_plot(stability, num_layers, sensitive), "ranking stability per budget")
    doc.p(f"{resamples} bootstrap resamples of the calibration samples (within each domain, the same resamples for "
          "every ranking). Cells: mean top-k overlap of the removed layers with the full-data plan [95% interval] / "
          "mean Kendall tau of the score the method ranks by, over its removable layers (the column and their "
          "count are named). Intervals: percentile bootstrap over the resamples. Score-free methods (last, uniform, "
          "random) and methods that need the model (iterative) are not bootstrapped.", cls="muted")
    doc.table(*stability_table(stability))


def _all_results(doc: _Doc, rows: list[ResultRow]) -> None:
    def ci(r: ResultRow) -> str:
        return f" [{pct(r.ci_low)}, {pct(r.ci_high)}]" if r.ci_low is not None else ""

    head = ["method", "budget", "after pruning", "eval set", "domain", "n", "accuracy [95% CI]", "NLL", "removed", "s"]
    body = [[r.label, budget_label(r.budget, r.budget_fraction), treatment(r.heal), r.eval_set,
             r.domain, str(r.n), pct(r.accuracy) + ci(r), num(r.nll), ",".join(map(str, r.removed)) or "–",
             f"{r.seconds:.1f}"] for r in rows]
    doc.h(2, "All results")
    doc.raw_details(f"{len(rows)} rows", head, body)


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 resamples: int = 50, seed: int = 0, progress: bool = True, overwrite: bool = False) -> Path:
    """Analyse ``run_dir`` and write ``report.html`` (self-contained), ``report.md`` and ``regimes.json``.

    ``out`` is the HTML path (default ``run_dir/report.html``); the Markdown goes to the same path
    with suffix ``.md`` and the machine-readable verdicts (:func:`~depthprune.reporting.regimes.regimes_json`)
    to ``regimes.json`` in the same directory, all three replaced together (an explicit ``out``
    that exists only with ``overwrite``). ``resamples`` bootstrap
    resamples of the calibration samples estimate ranking stability (0: skip). Returns the HTML path.
    Raises ReportError (a ValueError) when ``run_dir`` is not a run directory or its store is empty.
    """
    run_dir = Path(run_dir)
    rows, meta = load_run(run_dir)
    out = _check_out(run_dir, out, overwrite)
    from depthprune.reporting import plots  # matplotlib only when a report is written

    notes: list[str] = []
    scores = _load_scores(run_dir, notes)
    num_layers = int(meta.get("num_layers") or (scores.num_layers if scores else 0)
                     or max(max(r.removed, default=0) for r in rows) + 1)
    protected = list(meta.get("protected_layers") or (scores.protected_layers if scores else []))
    series = analyze(rows)
    checked = scores is not None and resamples > 0
    stability = _stability(rows, meta, scores, resamples, seed, progress, notes) if checked else []
    claim = stability_claim(stability, ranking_sensitive(series)) if checked else "Not checked: ranking stability was not computed."

    doc = _Doc(out.name)
    _header(doc, rows, meta, num_layers, protected)
    collapses = retention_table(rows)[2]
    for line in floor_lines(rows):  # said on the command line too, one warning line each
        warnings.warn(line, stacklevel=2)
        notes.insert(0, line[0].upper() + line[1:] + ".")
    doc.h(2, "Findings")
    doc.bullets([f"{s.name}: {s.verdict}" for s in series if s.budgets] + [
        f"Ranking stability — the paper's claim \"domain-aware rankings are the most stable in the ranking-sensitive "
        f"regime\": {claim}"] + ([f"Hidden collapse in {len(collapses)} cells (a domain under 80% of its accuracy "
                                  f"while another keeps 90%), e.g. " + "; ".join(collapses[:3]) + "."]
                                 if collapses else []) + notes)
    doc.html.append(f'<p class="rule"><b>Regime rule.</b> {html.escape(rule())}</p>')
    doc.md.append(f"> **Regime rule.** {rule()}\n")
    _regimes(doc, rows, series, plots)
    _retention(doc, rows)
    _healing(doc, rows)
    _layers(doc, rows, scores, num_layers, protected, plots)
    if stability:
        _stability_section(doc, stability, series, resamples, num_layers, plots)
    _all_results(doc, rows)

    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>depthprune report: {html.escape(str(meta.get('model', '?')))}</title><style>{CSS}</style></head>"
            "<body>" + "\n".join(doc.html) + "</body></html>")
    verdicts = {"model": meta.get("model"), **regimes_json(series), "stability_claim": claim}
    # the report is derived from the run directory: regenerating it replaces the old one (HTML last)
    with atomic_files([out.with_suffix(".md"), out.parent / REGIMES_NAME, out], overwrite=True) as (md, js, page_tmp):
        md.write_text("\n".join(doc.md).lstrip() + "\n", encoding="utf-8")
        js.write_text(json.dumps(verdicts, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        page_tmp.write_text(page, encoding="utf-8")
    return out


__all__ = ["REGIMES_NAME", "ReportError", "load_run", "write_report"]
