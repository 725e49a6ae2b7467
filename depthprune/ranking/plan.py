"""A ranking request, its budget and the plan it produces (and the ``.plan.json`` file).

:class:`RankRequest` says what to rank (method, budget, domain, weights, token group, base,
seed, protection); :func:`resolve_budget` turns a budget into a layer count; a :class:`Plan`
is the answer: the 0-based layers to remove, with a reason each, saved and reloaded as a
``.plan.json`` file for ``prune --plan``. The methods themselves: :mod:`depthprune.ranking.methods`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

# defined once, with the options (and the --layers check beside PlanSource)
from depthprune.options import RankError, RankRequest, check_layer_list, is_int, parse_weights  # noqa: F401

#: Per-layer redundancies that `spaced` and `iterative` can space out or re-score.
BASES = ("domain", "mixed", "block-influence", "ablation")


@dataclass
class Selection:
    """A method's answer: layers to remove and, per layer, why (and the score columns shown)."""

    remove: list[int]
    reasons: dict[int, str]
    # name -> one value per layer (None where the score is undefined, e.g. protected layers)
    columns: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class Plan:
    """Layers to remove from a model of ``num_layers`` decoder layers (0-based, sorted)."""

    method: str
    num_layers: int
    budget: int
    remove: list[int]
    protected: list[int]
    reasons: dict[int, str]
    columns: dict[str, list[float | None]]
    request: dict
    scores_fingerprint: str | None = None
    scores_model_id: str | None = None

    @property
    def keep(self) -> list[int]:
        """Surviving layers in original 0-based numbering."""
        drop = set(self.remove)
        return [i for i in range(self.num_layers) if i not in drop]

    def to_dict(self) -> dict:
        """JSON-ready dict (reason keys as strings) with the derived ``keep`` list added."""
        d = asdict(self)
        d["keep"] = self.keep
        d["reasons"] = {str(k): v for k, v in self.reasons.items()}
        return d

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the plan as JSON (strict: no NaN), atomically; without ``overwrite`` an existing
        file is an OutputError and is never replaced. Returns the path."""
        from depthprune.outputs import write_text_atomic
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n",
                                 overwrite)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a plan written by :meth:`save`, validated: every key present with its type,
        no unknown key, ``remove`` distinct 0-based layers within the model with ``budget``
        and ``keep`` consistent. Raises RankError naming the file and the key."""
        from depthprune.scoring.scores import check_schema, read_json_object
        path = Path(path)
        if path.is_dir() or not path.is_file():
            raise RankError(f"{path}: plan file not found. Write one with `depthprune rank --save-plan`")
        d = read_json_object(path, "plan", RankError)
        check_schema(path, d, _PLAN_SCHEMA, RankError, "plan",
                      optional=("keep", "scores_fingerprint", "scores_model_id", "columns"))
        n = d["num_layers"]
        check_layer_list(d["remove"], n, f"{path}: 'remove'")
        check_layer_list(d["protected"], n, f"{path}: 'protected'", allow_empty=True, allow_all=True)
        if d["budget"] != len(d["remove"]):
            raise RankError(f"{path}: 'budget' is {d['budget']} but 'remove' lists {len(d['remove'])} layers; "
                            "the plan was edited. Make them agree or write the plan again")
        keep = [i for i in range(n) if i not in set(d["remove"])]
        if "keep" in d and d["keep"] != keep:
            raise RankError(f"{path}: 'keep' {d['keep']} is not the complement of 'remove' {d['remove']}; "
                            "the plan was edited. Fix or delete 'keep'")
        _check_request_dict(path, d["request"])
        try:
            reasons = {int(k): str(v) for k, v in d["reasons"].items()}
        except ValueError:
            raise RankError(f"{path}: 'reasons' keys must be layer numbers") from None
        d = {k: v for k, v in d.items() if k != "keep"}
        d["reasons"] = reasons
        d["remove"] = sorted(d["remove"])
        d.setdefault("columns", {})
        return cls(**d)


def _check_request_dict(path: Path, req: dict) -> None:
    """The plan's ``request`` (the RankRequest it was made from, plus ``layers`` for manual
    plans): known keys only, each of its type. Raises RankError naming the file and key."""
    types = {"method": (str,), "budget": (int, float, str), "domain": (str, type(None)),
             "weights": (dict, type(None)), "base": (str,), "token_group": (str,), "seed": (int,),
             "allow_deepstack": (bool,), "protect_first": (int,), "protect_last": (int,), "layers": (list,)}
    unknown = sorted(set(req) - set(types))
    if unknown:
        raise RankError(f"{path}: unknown key(s) {unknown} in 'request'; the plan was edited or written by "
                        "another version. Restore it or write it again")
    for key, value in req.items():
        ok = isinstance(value, types[key]) and (key == "allow_deepstack" or not isinstance(value, bool))
        if key in ("protect_first", "protect_last") and ok:
            ok = value >= 0
        if not ok:
            raise RankError(f"{path}: 'request.{key}' has the wrong type or value ({json.dumps(value)[:40]}); "
                            "restore the plan file or write it again")


def _opt_str(v: object) -> bool:
    return v is None or isinstance(v, str)


_PLAN_SCHEMA = {
    "method": (lambda v: isinstance(v, str) and v != "", "a method name"),
    "num_layers": (lambda v: is_int(v) and v >= 1, "a positive integer"),
    "budget": (lambda v: is_int(v), "an integer"),
    "remove": (lambda v: isinstance(v, list), "a list of 0-based layer numbers"),
    "protected": (lambda v: isinstance(v, list), "a list of 0-based layer numbers"),
    "reasons": (lambda v: isinstance(v, dict), "an object {layer: reason}"),
    "columns": (lambda v: isinstance(v, dict), "an object"),
    "request": (lambda v: isinstance(v, dict), "an object"),
    "scores_fingerprint": (_opt_str, "a string or null"),
    "scores_model_id": (_opt_str, "a string or null"),
    "keep": (lambda v: isinstance(v, list), "a list of 0-based layer numbers"),
}


# ---------------------------------------------------------------------- request parsing
def resolve_budget(budget: int | float | str, num_layers: int | None) -> int:
    """Number of decoder layers to remove.

    An int (or "4") is a layer count; a float in (0, 1) (or "0.25") is a fraction of
    ``num_layers``, rounded half up to the nearest integer and at least 1. An integer-valued
    float >= 2 ("4.0") is read as a count. Raises RankError for anything else.
    """
    count_text = f"a layer count 1..{num_layers - 1}" if num_layers else "a whole layer count"
    fix = f"give {count_text} or a fraction in (0, 1) such as 0.25"
    num_layers = num_layers or 2**62  # form only: the count is checked once the model is known
    value: int | float = budget  # type: ignore[assignment]
    if isinstance(budget, str):
        text = budget.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise RankError(f"budget {budget!r} is not a number; {fix}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RankError(f"budget {budget!r} has type {type(budget).__name__}; {fix}")
    if isinstance(value, float):
        if not math.isfinite(value) or value <= 0:
            raise RankError(f"budget {budget!r} must be positive; {fix}")
        if value < 1:
            count = max(1, math.floor(value * num_layers + 0.5))
        elif value == 1.0:
            # 1.0 reads both as "one layer" and "100%": refuse to guess.
            raise RankError(f"budget {budget!r} is ambiguous; write 1 for one layer, or a fraction below 1")
        elif value.is_integer():
            count = int(value)
        else:
            raise RankError(f"budget {budget!r} is neither a whole layer count nor a fraction below 1; {fix}")
    else:
        count = value
    if count <= 0:
        raise RankError(f"budget {budget!r} must be positive; {fix}")
    if count >= num_layers:
        raise RankError(f"budget {budget!r} would remove {count} of {num_layers} layers, leaving none; {fix}")
    return count


def check_budget_spec(budget: int | float | str) -> None:
    """Check a budget's form before the layer count is known (before any model loads):
    a positive whole count or a fraction in (0, 1). Raises RankError like :func:`resolve_budget`."""
    resolve_budget(budget, None)
