"""The rich tables the CLI prints (printing only; the numbers come from the API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # annotations only: the tables are built from plain results (and --help stays light)
    from depthprune.evaluation.generation import EvalResult
    from depthprune.ranking.plan import Plan
    from depthprune.toy.demo import Headline


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


def stability_line(domain: str, s: Any, plan: Plan, resamples: int) -> str:
    """One line of `rank`'s bootstrap stability of ``plan`` when ``domain``'s samples are resampled."""
    over = "block starts" if plan.method == "angular-block" else "removable layers"
    tau = "" if s.tau is None else (f"; Kendall tau of {s.column} over the {s.layers} {over} "
                                    f"{s.tau[0]:.2f} [{s.tau[1]:.2f}, {s.tau[2]:.2f}]")
    return (f"stability of {domain}: the same {plan.budget} layers in {s.same:.0%} of {resamples} bootstrap "
            f"resamples of that domain; top-k overlap {s.overlap[0]:.2f} [{s.overlap[1]:.2f}, {s.overlap[2]:.2f}]{tau}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def damage_table(result: dict) -> Table:
    """A rich table: one row per compared layer (0-based), one column per domain's damage."""
    table = Table(title="single-layer ablation: rise of answer NLL (nats/token) per domain, layers 0-based")
    table.add_column("layer", justify="right")
    for d in result["domains"]:
        table.add_column(escape(f"dNLL[{d}]"), justify="right")  # "[d]" is not markup
    for row, layer in enumerate(result["layers"]):
        table.add_row(str(layer), *(f"{result['damage'][d][row]:+.4f}" for d in result["domains"]))
    return table


def correlation_table(result: dict) -> Table:
    """A rich table: one row per signal (token group x cos/contrast of a domain), Spearman rho
    with each domain's damage and with its domain-specific part."""
    domains = result["domains"]
    table = Table(title=f"Spearman rho of each similarity signal with ablation damage over "
                        f"{len(result['layers'])} removable layers (higher = better predictor)")
    table.add_column("tokens")
    table.add_column("signal")
    for d in domains:
        table.add_column(escape(f"rho dNLL[{d}]"), justify="right")
    for d in domains if len(domains) > 1 else []:
        table.add_column(escape(f"rho specific[{d}]"), justify="right")
    for s in result["signals"]:
        cells = [_fmt(s["rho"][d]) for d in domains]
        cells += [_fmt(s["rho_specific"].get(d)) for d in domains if len(domains) > 1]
        table.add_row(s["group"], escape(s["signal"]), *cells)
    return table


def format_metrics_table(metrics: dict | EvalResult) -> Table:
    """A rich table of a metrics dict (as written by :func:`depthprune.evaluation.generation.evaluate_path`) or an EvalResult:
    one row per domain and one for all samples; accuracy and CI in percent, NLL in nats/token."""
    if not isinstance(metrics, dict):  # an EvalResult
        metrics = metrics.to_dict()
    table = Table(title=f"{metrics.get('model', 'evaluation')}: {metrics['num_samples']} samples, "
                        f"{metrics['samples_per_second']:.2f} samples/s")
    for name, justify in (("domain", "left"), ("n", "right"), ("accuracy %", "right"),
                          ("95% CI %", "right"), ("answer NLL", "right")):
        table.add_column(name, justify=justify)
    rows = list(metrics["domains"].items()) + [("all", metrics["overall"])]
    for i, (name, m) in enumerate(rows):
        low, high = m["ci95"]
        nll = "n/a" if m["answer_nll"] is None else f"{m['answer_nll']:.3f}"
        table.add_row(name, str(m["n"]), f"{100 * m['accuracy']:.1f}",
                      f"{100 * low:.1f}–{100 * high:.1f}", nll, end_section=i == len(rows) - 2)
    return table


def headline_table(h: Headline) -> Any:
    """The headline as a rich table."""
    from rich.table import Table
    table = Table(title=f"toy Qwen3-VL, {h.budget} of {h.num_layers} layers removed ({h.budget / h.num_layers:.0%}), "
                        "unhealed (+ refit: compensated, training-free): math-aware vs general-aware")
    for col in ("ranking", "domain", "n", "unpruned", "math-aware", "general-aware", "only math-aware right",
                "only general-aware right", "McNemar p (exact)"):
        table.add_column(col, justify="left" if col in ("ranking", "domain") else "right")
    for r in h.rows:
        table.add_row(r["ranking"], r["domain"], str(r["n"]), f"{r['unpruned']:.1%}", f"{r['math-aware']:.1%}",
                      f"{r['general-aware']:.1%}", str(r["math_only"]), str(r["general_only"]), f"{r['p']:.3g}")
    table.caption = "removed (0-based): " + "; ".join(f"{name}: {','.join(map(str, layers))}"
                                                       for name, layers in h.removed.items())
    return table


def prune_lines(info: dict, result: Any) -> list[str]:
    """What ``prune`` prints: the layers removed, the compensation fits, the expected speed-up
    and, for a GGUF output, its size."""
    from depthprune.compensation import GapFit
    from depthprune.models.gguf_out import record_path
    from depthprune.speed import format_speedup
    lines = [f"removed layers {info['removed_layers']} (0-based) with {info['method']}: "
             f"{info['original_num_layers']} -> {info['num_layers']} layers -> {result}"]
    if "compensation" in info:
        record = info["compensation"]
        lines.append(f"compensation {record['method']} on {record['calibration_records']} records "
                     f"({', '.join(f'{d}={w:g}' for d, w in record['domain_weights'].items())}) in "
                     f"{record['seconds']:.1f} s:")
        lines += ["  " + GapFit(**gap).line() for gap in record["gaps"]]
    lines.append(format_speedup(info["expected_speedup"]))
    if "gguf_output" in info:
        size = info["gguf_output"]["file_bytes"]
        lines.append(f"GGUF {size['before'] / 2**20:,.1f} MiB -> {size['after'] / 2**20:,.1f} MiB, quantization "
                     f"kept ({info['gguf_source']['quantization']}); record -> {record_path(result)}")
    return lines


def eval_lines(metrics: dict, out_file: Any) -> list[str]:
    """What ``eval`` prints below its table: the accuracy retained per domain, a hidden
    collapse, where the metrics went."""
    lines = []
    for domain, r in (metrics.get("retention") or {}).items():
        kept, (low, high) = r["kept"], r["ci95"]
        lines.append(f"{domain}: {'n/a' if kept is None else f'{kept:.0%}'} of the unpruned accuracy kept"
                     + ("" if low is None else f" [95% CI {low:.0%}, {high:.0%}]"))
    if metrics.get("hidden_collapse"):
        lines.append(f"warning: hidden collapse: {', '.join(metrics['hidden_collapse'])} keeps under 80% of its "
                     "accuracy while another domain keeps 90% or more")
    lines.append(f"metrics -> {out_file}")
    return lines


def heal_lines(result: Any, distilled: bool) -> list[str]:
    """What ``heal`` prints: the run (from the healed checkpoint's ``pruning.json``) and the
    held-out answer NLL before and after."""
    import json
    from pathlib import Path
    entry = json.loads((Path(result) / "pruning.json").read_text())["healing"]
    lines = [f"healed ({entry['recipe']['mode']}{', distilled' if distilled else ''}, "
             f"{entry['recipe']['prompt_format']} prompts): "
             f"{entry['steps']} steps in {entry['seconds']:.0f} s, final loss "
             f"{entry['final_loss']:.4f} -> {result}"]
    if entry.get("heldout"):
        held = entry["heldout"]
        lines.append(f"answer NLL on {held['n']} held-out records (nats/token): " + ", ".join(
            f"{d} {held['before'][d]:.3f} -> {held['after'][d]:.3f}" for d in held["before"]))
    else:
        lines.append("answer NLL not measured: fewer than 20 records (or --holdout 0) leave no held-out slice")
    return lines
