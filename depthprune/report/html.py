"""The study report: one self-contained HTML file (plots embedded as PNG) plus Markdown.

    from depthprune.report.html import write_report
    html_path = write_report("runs/demo")     # -> runs/demo/report.html (+ report.md)

Reads only the run directory: ``results.sqlite`` (see :mod:`depthprune.study.store`) and, if present,
``scores.json`` (the unpruned model's scores, for score profiles and ranking stability). Never
runs a model. Regime rule and statistics: :mod:`depthprune.report.regimes`.
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

from depthprune.report.regimes import ALPHA, RANKING, RULE, Series, Stability, analyze, ranking_stability, stability_claim
from depthprune.rank.protection import Protection
from depthprune.score.scores import Scores, ScoresError
from depthprune.report.statistics import kendall_tau, mcnemar_exact
from depthprune.study.rundir import RunDir
from depthprune.study.store import ResultRow, get_meta, open_store, read_results

STORE_NAME, SCORES_NAME = RunDir.STORE, RunDir.SCORES


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
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        conn.execute("SELECT 1 FROM results LIMIT 1")
        conn.close()
        conn = open_store(store)
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
def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _budget_label(b: int, fraction: float) -> str:
    return f"{b} ({100 * fraction:.0f}%)"


def _best_table(series: Series) -> tuple[list[str], list[list[str]]]:
    head = ["budget (layers, %)", "regime", "leader", "leader accuracy [95% CI]" if series.budgets and
            series.budgets[0].metric == "accuracy" else "leader NLL [95% CI]", "spread acc (points)",
            "spread NLL", "beats beyond noise", "runner-up", "p vs runner-up", "strongest win (p)"]
    body = []
    for b in series.budgets:
        if b.metric == "accuracy":
            ci = b.acc_ci.get(b.leader)
            lead = _pct(b.accuracy[b.leader]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")
        else:
            ci = b.nll_ci.get(b.leader)
            lead = _num(b.nll[b.leader]) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")
        ru, st = b.runner_up, b.strongest
        body.append([_budget_label(b.budget, b.fraction), b.regime, b.leader, lead,
                     "–" if b.spread_accuracy is None else f"{100 * b.spread_accuracy:.1f}",
                     _num(b.spread_nll), f"{len(b.beaten)} of {len(b.comparisons)}",
                     "–" if ru is None else ru.other, "–" if ru is None else _p(ru.p_holm),
                     "–" if st is None else f"{st.other} ({_p(st.p_holm)})"])
    return head, body


def _healing_table(rows: list[ResultRow]) -> tuple[list[str], list[list[str]]]:
    plain = {(r.label, r.budget, r.eval_set, r.domain): r for r in rows if r.heal is None}
    head = ["method", "budget", "eval set / domain", "accuracy unhealed → healed", "NLL unhealed → healed",
            "only unhealed / only healed correct", "p (McNemar)"]
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
            counts, pv = f"{a_only} / {b_only}", _p(p)
        else:
            counts, pv = "–", "–"
        body.append([r.label, _budget_label(r.budget, r.budget_fraction), f"{r.eval_set} / {r.domain}",
                     f"{_pct(u.accuracy)} → {_pct(r.accuracy)}", f"{_num(u.nll)} → {_num(r.nll)}", counts, pv])
    return head, body


def _stability_table(stability: list[Stability]) -> tuple[list[str], list[list[str]]]:
    budgets = sorted({s.budget for s in stability})
    labels = sorted({s.label for s in stability})
    cell = {(s.label, s.budget): s for s in stability}
    head = ["ranking"] + [f"k = {b}" for b in budgets]
    body = []
    for lab in labels:
        row = [lab]
        for b in budgets:
            s = cell.get((lab, b))
            row.append("–" if s is None else f"{s.overlap:.2f} / {_num(s.tau, 2)}")
        body.append(row)
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
def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 resamples: int = 50, seed: int = 0, progress: bool = True) -> Path:
    """Analyse ``run_dir`` and write ``report.html`` (self-contained) and ``report.md`` beside it.

    ``out`` is the HTML path (default ``run_dir/report.html``); the Markdown goes to the same
    path with suffix ``.md``. ``resamples`` bootstrap resamples of the calibration samples
    estimate ranking stability (0: skip). Returns the HTML path. Raises ReportError (a
    ValueError) when ``run_dir`` is not a run directory or its store is empty.
    """
    run_dir = Path(run_dir)
    rows, meta = load_run(run_dir)
    out = Path(out) if out is not None else RunDir(run_dir).report
    if out.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"{out}: the report file name must end in .html (the Markdown goes beside it)")
    from depthprune.report import plots  # matplotlib only when a report is written

    notes: list[str] = []
    scores = _load_scores(run_dir, notes)
    num_layers = int(meta.get("num_layers") or (scores.num_layers if scores else 0)
                     or max(max(r.removed, default=0) for r in rows) + 1)
    protected = list(meta.get("protected_layers") or (scores.protected_layers if scores else []))
    series = analyze(rows)
    labels = sorted({r.label for r in rows if r.budget > 0})
    colors = plots.label_colors(labels)

    stability: list[Stability] = []
    if scores is not None and resamples > 0:
        # the study's protection settings (stored in meta by `sweep`) apply to every ranking
        protect = Protection(**((meta.get("study") or {}).get("protect") or {})).request_kwargs()
        rankings = sorted({(r.label, r.method, json.dumps(r.options, sort_keys=True), r.budget)
                           for r in rows if r.budget > 0})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rankings = [(lab, m, {**protect, **json.loads(o)}, b) for lab, m, o, b in rankings]
            skipped: list[str] = []
            stability = ranking_stability(scores, rankings, n_resamples=resamples, seed=seed,
                                          progress=progress, skipped=skipped)
        if skipped:
            notes.append("Ranking stability not computed for " + "; ".join(skipped) + ".")
        stored = {(r.label, r.budget): r.removed for r in rows}
        mismatched = sorted({s.label for s in stability if stored.get((s.label, s.budget)) != s.full_removed})
        if mismatched:
            notes.append(f"Re-ranking {SCORES_NAME} does not reproduce the stored removed layers of "
                         f"{', '.join(mismatched)}; their stability describes the re-ranked plan.")
    claim = stability_claim(stability, series) if scores is not None and resamples > 0 else \
        "Not checked: ranking stability was not computed."

    doc = _Doc(out.name)
    model = meta.get("model", "?")
    doc.h(1, f"depthprune study: {model}")
    cells = len({r.cell for r in rows})
    seconds = sum({r.cell: r.seconds for r in rows}.values())
    doc.p(f"{num_layers} decoder layers (0-based), protected {protected or 'none'}; domains "
          f"{', '.join(meta.get('domains') or sorted({r.domain for r in rows}))}; eval sets "
          f"{', '.join(sorted({r.eval_set for r in rows}))}; {cells} cells, {len(rows)} result rows, "
          f"{seconds:.0f} s of compute stored. depthprune {meta.get('depthprune_version', '?')}; report "
          f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", cls="muted")

    doc.h(2, "Findings")
    findings = [f"{s.name}: {s.verdict}" for s in series if s.budgets]
    findings.append(f"Ranking stability — the paper's claim \"domain-aware rankings are the most stable in the "
                    f"ranking-sensitive regime\": {claim}")
    findings += notes
    doc.bullets(findings)
    doc.html.append(f'<p class="rule"><b>Regime rule.</b> {html.escape(RULE)}</p>')
    doc.md.append(f"> **Regime rule.** {RULE}\n")

    if any(r.accuracy is not None for r in rows):
        doc.h(2, "Accuracy vs budget")
        doc.image(plots.metric_vs_budget(rows, series, "accuracy", colors), "accuracy vs budget per method and domain")
    if any(r.nll is not None for r in rows):
        doc.h(2, "Answer NLL vs budget")
        doc.image(plots.metric_vs_budget(rows, series, "nll", colors), "answer NLL vs budget per method and domain")

    doc.h(2, "Best method per budget")
    doc.p(f"Leader = highest accuracy (ties: lower NLL; lowest NLL where accuracy was not measured). "
          f"'Beats beyond noise' counts the methods it beats with Holm-adjusted p < {ALPHA}. p-values are "
          f"Holm-adjusted, leader vs the runner-up (second best) and vs the method it beats most clearly "
          f"(exact McNemar on paired per-sample correctness, or a paired bootstrap of the NLL). "
          f"Spread = best minus worst method at that budget.", cls="muted")
    for s in series:
        if not s.budgets:
            continue
        doc.h(3, f"{s.name} (n = {s.n})")
        doc.table(*_best_table(s), regime_col=1)

    healing = _healing_table(rows)
    if healing[1]:
        doc.h(2, "Healing")
        doc.p("Each healed cell against the same plan unhealed, on the same samples.", cls="muted")
        if len(healing[1]) > 12:
            doc.raw_details(f"{len(healing[1])} healed cells", *healing)
        else:
            doc.table(*healing)

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

    if stability:
        doc.h(2, "Ranking stability")
        sensitive = {b.budget for s in series for b in s.budgets if b.regime == RANKING}
        doc.image(plots.stability_plot(stability, num_layers, sensitive, colors), "ranking stability vs budget")
        doc.p(f"{resamples} bootstrap resamples of the calibration samples (within each domain, paired across "
              "methods). Cells: mean top-k overlap of the removed layers with the full-data plan / mean Kendall "
              "tau of the per-layer scores. Shaded: budgets that are ranking-sensitive in some series. "
              "Score-free methods (last, uniform, random) and iterative (it needs the model) are not "
              "bootstrapped.", cls="muted")
        doc.table(*_stability_table(stability))

    head = ["method", "budget", "heal", "eval set", "domain", "n", "accuracy [95% CI]", "NLL", "removed", "s"]
    def ci(r: ResultRow) -> str:
        return f" [{_pct(r.ci_low)}, {_pct(r.ci_high)}]" if r.ci_low is not None else ""

    body = [[r.label, _budget_label(r.budget, r.budget_fraction), "no" if r.heal is None else "yes", r.eval_set,
             r.domain, str(r.n), _pct(r.accuracy) + ci(r), _num(r.nll), ",".join(map(str, r.removed)) or "–",
             f"{r.seconds:.1f}"] for r in rows]
    doc.h(2, "All results")
    doc.raw_details(f"{len(rows)} rows", head, body)

    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>depthprune report: {html.escape(str(model))}</title><style>{CSS}</style></head><body>"
            + "\n".join(doc.html) + "</body></html>")
    # the report is derived from the run directory: regenerating it replaces the old one
    from depthprune.outputs import write_text_atomic
    write_text_atomic(out, page, overwrite=True)
    write_text_atomic(out.with_suffix(".md"), "\n".join(doc.md).lstrip() + "\n", overwrite=True)
    return out


__all__ = ["ReportError", "load_run", "write_report"]
