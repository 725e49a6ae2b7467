"""The rich tables the CLI prints (printing only; the numbers come from the API)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from depthprune.rank.plan import Plan


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
