"""The shape of a study file, as typed pydantic models: every key, its type, its default.

:func:`validate_shape` checks a parsed YAML mapping against :class:`StudyFile` and turns the
first pydantic error into one :class:`StudyError` line naming the file and the key
(``study.yaml: methods[2].weights: ...``). What needs more than the shape — files on disk,
domains in the calibration data, a method's options, budgets against the layer count — is
checked afterwards by :func:`depthprune.study.config.parse_study`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    ValidationError,
    field_validator,
)

from depthprune.compensation.spec import DEFAULT_RIDGE
from depthprune.messages import show as _show  # never an unbounded echo (an alias bomb, a huge list)


class StudyError(ValueError):
    """The study file is malformed; the message names the file and the key."""


NonEmptyStr = Annotated[str, Field(strict=True, min_length=1, pattern=r"\S")]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Paths = list[NonEmptyStr]


def _listify(value: Any) -> Any:
    """A single value where a list is expected becomes a one-element list (``data: calib.jsonl``)."""
    return [value] if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Calibration(_Strict):
    """``calibration:`` the prompts the model is scored on."""

    data: Annotated[Paths, Field(min_length=1)]
    max_samples: PositiveInt | None = None
    max_span: PositiveInt | None = None
    ablation: StrictBool = False

    _data = field_validator("data", mode="before")(_listify)


class JsonlEval(_Strict):
    """An eval set of answered JSONL records (the built-in evaluator)."""

    kind: Literal["jsonl"] = "jsonl"
    data: Annotated[Paths, Field(min_length=1)]
    name: NonEmptyStr | None = None
    max_samples: PositiveInt | None = None
    accuracy: StrictBool = True
    max_new_tokens: PositiveInt | None = None

    _data = field_validator("data", mode="before")(_listify)


class LmmsEval(_Strict):
    """An eval set of lmms-eval tasks."""

    kind: Literal["lmms"]
    tasks: Annotated[list[NonEmptyStr], Field(min_length=1)]
    name: NonEmptyStr = "lmms"
    limit: PositiveInt | None = None
    accuracy: StrictBool = True
    max_new_tokens: PositiveInt | None = None
    include_path: NonEmptyStr | None = None
    domain: NonEmptyStr | None = None

    _tasks = field_validator("tasks", mode="before")(_listify)


def _eval_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind", "jsonl")
        return kind if kind in ("jsonl", "lmms") else None
    return None


EvalSet = Annotated[Union[Annotated[JsonlEval, Tag("jsonl")], Annotated[LmmsEval, Tag("lmms")]],
                    Discriminator(_eval_kind, custom_error_type="eval_kind",
                                  custom_error_message="unknown kind; choose jsonl or lmms")]


def _budget(value: Any) -> Any:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or \
         (isinstance(value, float) and math.isfinite(value) and 0 < value < 1)
    if not ok:
        raise ValueError(f"{_show(value)} is neither a layer count (integer >= 1) nor a fraction in (0, 1)")
    return value


#: A budget: a layer count (integer >= 1) or a fraction of the decoder layers in (0, 1).
Budget = Annotated[Any, AfterValidator(_budget)]


class Protect(_Strict):
    """``protect:`` layers no method may remove (see :class:`depthprune.ranking.protection.Protection`)."""

    allow_deepstack: StrictBool = False
    first: NonNegativeInt = 0
    last: NonNegativeInt = 0


class Metrics(_Strict):
    """``metrics:`` what every cell measures."""

    accuracy: StrictBool = True
    max_new_tokens: PositiveInt = 16


class Heal(_Strict):
    """``heal:`` a healing recipe applied at some budgets."""

    recipe: dict[str, Any] = Field(default_factory=dict)
    budgets: Annotated[list[Budget], Field(min_length=1)]
    methods: list[NonEmptyStr] | None = None
    data: Paths | None = None
    distill: StrictBool = False

    _lists = field_validator("methods", "data", mode="before")(_listify)

    @field_validator("budgets", mode="before")
    @classmethod
    def _budgets(cls, value: Any) -> Any:
        return [value] if not isinstance(value, list) else value


class Compensate(_Strict):
    """``compensate:`` training-free repair of every gap (:mod:`depthprune.compensation`) at some
    budgets, calibrated on each plan's own domain(s) (all calibration domains for a
    domain-agnostic method); with a ``heal`` section, healed cells are also repaired first."""

    method: Literal["lstsq", "refit"] = "refit"
    ridge: Annotated[float, Field(ge=0, allow_inf_nan=False)] = DEFAULT_RIDGE
    tokens: Literal["all", "answer"] = "all"
    #: the fit's calibration domains for every plan (default: each plan's own domain or weights)
    weights: dict[NonEmptyStr, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None
    budgets: Annotated[list[Budget], Field(min_length=1)]
    methods: list[NonEmptyStr] | None = None

    _lists = field_validator("methods", mode="before")(_listify)

    @field_validator("budgets", mode="before")
    @classmethod
    def _budgets(cls, value: Any) -> Any:
        return [value] if not isinstance(value, list) else value

    @field_validator("ridge", mode="before")
    @classmethod
    def _ridge(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class StudyFile(_Strict):
    """A whole study file. Method entries (a name, or a mapping with ``method`` and options) are
    checked against the method registry by :func:`depthprune.study.config.parse_study`."""

    model: NonEmptyStr
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: NonEmptyStr = "cpu"
    device_map: NonEmptyStr | None = None
    trust_remote_code: StrictBool = False
    prompt_format: Literal["auto", "chat", "plain"] = "auto"  # ModelSpec's (test_options checks they agree)
    batch_size: PositiveInt = 8
    calibration: Calibration
    eval: Annotated[list[EvalSet], Field(min_length=1)]
    methods: Annotated[list[Any], Field(min_length=1)]
    budgets: Annotated[list[Budget], Field(min_length=1)]
    protect: Protect = Field(default_factory=Protect)
    heal: Heal | None = None
    compensate: Compensate | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    baseline: StrictBool = True

    @field_validator("calibration", mode="before")
    @classmethod
    def _calibration(cls, value: Any) -> Any:
        return {"data": value} if isinstance(value, (str, list)) else value

    @field_validator("eval", mode="before")
    @classmethod
    def _eval(cls, value: Any) -> Any:
        return [{"data": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("heal", "protect", "metrics", mode="before")
    @classmethod
    def _null_means_default(cls, value: Any, info: Any) -> Any:
        if value is None or (value is False and info.field_name == "heal"):
            return None if info.field_name == "heal" else {}
        return value


REQUIRED = ("model", "calibration", "eval", "methods", "budgets")


def _key(loc: tuple) -> str:
    """``('methods', 2, 'weights')`` -> ``methods[2].weights``; union tags are left out."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i and isinstance(loc[i - 1], int) and part in ("jsonl", "lmms"):
            continue  # the discriminated union's tag, not a key of the file
        else:
            out += ("." if out else "") + str(part)
    return out


_SECTIONS = {"calibration": Calibration, "protect": Protect, "metrics": Metrics, "heal": Heal,
             "compensate": Compensate}


def _allowed(loc: tuple) -> list[str]:
    """The keys allowed in the mapping that holds ``loc``'s last key."""
    parent = loc[:-1]
    if not parent:
        return sorted(StudyFile.model_fields)
    if len(parent) == 1 and parent[0] in _SECTIONS:
        return sorted(_SECTIONS[parent[0]].model_fields)
    if len(parent) == 3 and parent[0] == "eval":
        return sorted((LmmsEval if parent[2] == "lmms" else JsonlEval).model_fields)
    return []


def _message(error: dict) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "eval_kind":
        return f"unknown kind {_show(value.get('kind') if isinstance(value, dict) else value)}; choose jsonl or lmms"
    if kind == "extra_forbidden":
        allowed = _allowed(loc)
        return "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return "missing" + (f" (required keys: {', '.join(REQUIRED)})" if len(loc) == 1 else "")
    if kind in ("int_type", "greater_than_equal", "int_parsing", "int_from_float"):
        low = ctx.get("ge", 1)
        return f"expected an integer >= {low}, got {_show(value)}"
    if kind == "bool_type":
        return f"expected true or false, got {_show(value)}"
    if kind in ("string_type", "string_too_short", "string_pattern_mismatch"):
        return f"expected a non-empty string, got {_show(value)}"
    if kind == "literal_error":
        return f"{_show(value)}: choose {ctx.get('expected', '')}"
    if kind == "too_short":
        return "empty list; give at least one entry"
    if kind == "list_type":
        return f"expected a list, got {_show(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_show(value)}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']} (got {_show(value)})"


def validate_shape(raw: Any, source: str) -> StudyFile:
    """``raw`` (parsed YAML) as a :class:`StudyFile`; StudyError naming the first bad key."""
    if not isinstance(raw, dict):
        raise StudyError(f"{source}: expected a YAML mapping with keys {', '.join(REQUIRED)}")
    try:
        return StudyFile.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        key = _key(error["loc"]) + (".kind" if error["type"] == "eval_kind" and isinstance(error.get("input"), dict)
                                    else "")
        raise StudyError(f"{source}: {key + ': ' if key else ''}{_message(error)}") from None
