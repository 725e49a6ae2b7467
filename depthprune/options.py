"""The option objects every surface shares, each defined once: a field here is a ``--flag`` of
the commands that take the object (:mod:`depthprune.cli_options` generates them, help text
included), a keyword of the API (which takes the object itself) and, for :class:`ModelSpec`,
a key of study files (:mod:`depthprune.study.schema` builds those keys from the same fields).

* :class:`ModelSpec` — which checkpoint and how it loads and writes prompts;
* :class:`RankRequest` — what to rank: method, budget, domain / weights, protection, options;
* :class:`CalibrationRun` — the calibration records a command measures on and how it batches them;
* the heal recipe (:class:`depthprune.healing.recipe.HealConfig`) and the compensation spec
  (:class:`depthprune.compensation.spec.Compensation`) are written the same way, beside the code
  that reads them.

Light to import (no torch): the CLI's ``--help`` reads these fields.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: ``--dtype`` values: the checkpoint's own, or one torch dtype for every weight.
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
#: ``--prompt-format`` values (:func:`depthprune.data.records.set_prompt_format` decides ``auto``).
PROMPT_FORMATS = ("auto", "chat", "plain")


class RankError(ValueError):
    """A ranking request cannot be met; the message says why and how to fix it."""


def is_int(v: object) -> bool:
    """True for an int that is not a bool (JSON and YAML booleans are ints in Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def parse_weights(text: str) -> dict[str, float]:
    """Parse ``"math=0.5,general=0.5"`` into ``{"math": 0.5, "general": 0.5}`` (unnormalised)."""
    example = "write them as domain=weight pairs, e.g. --weights math=0.5,general=0.5"
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not name or not value:
            raise RankError(f"weights {text!r}: '{part}' is not domain=weight; {example}")
        try:
            weight = float(value)
        except ValueError:
            raise RankError(f"weights {text!r}: weight '{value}' of {name} is not a number; {example}") from None
        if not math.isfinite(weight) or weight < 0:
            raise RankError(f"weights {text!r}: weight of {name} must be a finite number >= 0")
        if name in out:
            raise RankError(f"weights {text!r}: domain {name} is given twice")
        out[name] = weight
    if not out:
        raise RankError(f"weights {text!r} is empty; {example}")
    return out


def option(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A dataclass field that is also a CLI option: ``help`` is its ``--help`` line; ``cli``
    holds what the option generator needs beyond the field's type (``min``/``max``, ``choices``
    for study files, ``flag``: another option name, ``cli_type``: the type the command line
    reads, ``cli=False``: not on the command line)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint and how to load it: ``id`` a local directory, a hub id, a ``.gguf`` file,
    ``toy`` or ``smollm2``. Checked before any weight loads by
    :func:`depthprune.models.loading.check_model` and loaded by :func:`~depthprune.models.loading.load_spec`."""

    id: str | os.PathLike = option("", "Checkpoint.", cli=False)
    dtype: str = option("auto", "Weights dtype: auto (checkpoint's), float32, bfloat16, float16. Similarities "
                        "are always computed in float32.", choices=DTYPE_NAMES)
    device: str = option("cpu", "Device for the whole model, e.g. cpu, cuda, cuda:1.")
    device_map: str | None = option(None, "'auto' spreads a model larger than one device (accelerate); "
                                    "overrides --device.")
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint (off by default: only "
                                     "transformers' own classes run).")
    prompt_format: str = option("auto", "How prompts are written: chat (the tokenizer's chat template), plain "
                                "(\"Question: ...\\nAnswer: ...\", for base models without a template), or auto "
                                "(chat when the tokenizer has a template, else plain).", choices=PROMPT_FORMATS)

    @classmethod
    def of(cls, model: "ModelSpec | str | os.PathLike") -> "ModelSpec":
        """A spec from a spec or a checkpoint id (every other field at its default)."""
        return model if isinstance(model, ModelSpec) else cls(id=model)


@dataclass
class RankRequest:
    """What to rank. ``budget``: int = layer count, float in (0, 1) = fraction (a string of
    either on the command line, read by :func:`depthprune.ranking.plan.resolve_budget`)."""

    # its --help line lists the registered methods, written when --help is shown (the registry imports torch)
    method: str = option("domain", "Ranking method.", help_from="depthprune.ranking.methods:method_help")
    budget: int | float | str = option("0.25", "Layers to remove: an integer count, or a fraction in (0, 1) of "
                                       "the decoder layers (rounded, at least 1).", cli_type=str)
    domain: str | None = option(None, "Domain label for --method domain / contrast (or --base domain); for "
                                "--method ablation / sleb (without it: --weights over all domains).")
    weights: dict[str, float] | None = option(
        None, "Domain weights for mixed, e.g. math=0.5,general=0.5 (default: equal). Each domain's scores are "
        "z-scored across removable layers, weights normalised to sum 1. For ablation / sleb without --domain: "
        "the weights of the per-domain mean answer NLLs.", cli_type=str)
    base: str = option("mixed", "Score that spaced / iterative use: domain, mixed, block-influence, ablation.")
    token_group: str = option("all", "Tokens the similarity is averaged over: all, text, image, last.")
    seed: int = option(0, "Seed for --method random and the bootstrap.")
    allow_deepstack: bool = option(False, "Allow removing Qwen3-VL deepstack-injection layers (0..2); moves where "
                                   "visual features are injected.")
    protect_first: int = option(0, "Never remove the first K layers.", min=0)
    protect_last: int = option(0, "Never remove the last K layers.", min=0)

    @classmethod
    def from_cli(cls, values: dict[str, Any]) -> "RankRequest":
        """The request of a command line: ``--weights`` text parsed (``math=0.5,general=0.5``)."""
        weights = values.get("weights")
        return cls(**dict(values, weights=parse_weights(weights) if weights else None))

    def protection_only(self) -> dict[str, Any]:
        """The protection flags alone (what a given plan or layer list still reads)."""
        return {"allow_deepstack": self.allow_deepstack, "protect_first": self.protect_first,
                "protect_last": self.protect_last}


@dataclass(frozen=True)
class CalibrationRun:
    """Calibration records a command measures on (``sleb``, ``iterative``, ``--compensate``) and
    how: ``batch_size`` prompts per forward pass, at most ``max_samples`` per domain, the
    layer-input cache of ``sleb`` limited to ``cache_mb`` (default 4096)."""

    data: Sequence[str | os.PathLike] | None = option(
        None, "Calibration JSONL for --method iterative (re-scores after each removal) and sleb (re-measures the "
        "answer NLL; records need answers), and for --compensate.", cli_type=list[Path] | None)
    batch_size: int = option(4, "Prompts per forward pass.", min=1)
    max_samples: int | None = option(None, "Use at most N --data records of each domain (first N in file order).",
                                     min=1)
    cache_mb: float | None = option(
        None, "Memory limit (MB) of sleb's layer-input cache (batch x tokens x hidden x layers values per batch, "
        "all calibration batches); past it the cache spills to a temporary directory. Default 4096.",
        flag="ablation-cache-mb")

    def __post_init__(self) -> None:
        if not self.data:  # the command line's empty --data list: no records
            object.__setattr__(self, "data", None)


@dataclass
class ScoreSettings:
    """Knobs of a scoring pass. ``max_samples`` caps each domain (first N in file order)."""

    batch_size: int = option(4, "Prompts per forward pass.", min=1)
    max_samples: int | None = option(None, "Use at most N records of each domain (first N in file order).", min=1)
    # default: ceil(num_layers / 2), enough for a 50% block
    max_span: int | None = option(None, "Longest block (in layers) whose end-to-end similarity is recorded; "
                                  "default half the layers.", min=1)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max-samples must be >= 1, got {self.max_samples}")
        if self.max_span is not None and self.max_span < 1:
            raise ValueError(f"--max-span must be >= 1, got {self.max_span}")


@dataclass(frozen=True)
class PlanSource:
    """Where ``prune`` gets its layers: a scores file (with a rank request), a ``.plan.json`` file,
    or an explicit list of 0-based layers; at most one of them (none: a score-free or measuring
    method)."""

    scores: Path | None = option(None, "Scores file from `depthprune score`.")
    plan: Path | None = option(None, "Plan file from `depthprune rank --save-plan` (instead of --scores/--method).")
    layers: str | None = option(None, "Remove exactly these 0-based layers, e.g. 5,9,12 (instead of a method).")

    def resolve(self) -> "list[int] | Path | None":
        """What :func:`depthprune.api.prune` takes: the layer list, the plan or scores path, or None."""
        if self.layers is not None:
            if self.plan is not None or self.scores is not None:
                raise ValueError("--layers replaces --scores and --plan: pass only one of them")
            try:
                return [int(x) for x in self.layers.split(",")]
            except ValueError:
                raise ValueError(f"--layers {self.layers!r}: give comma-separated 0-based integers, "
                                 "e.g. 5,9,12") from None
        if self.plan is not None and self.scores is not None:
            raise ValueError("--plan already says which layers to remove: pass --plan or --scores, not both")
        if self.plan is not None and not str(self.plan).endswith(".plan.json"):
            raise ValueError(f"--plan {self.plan}: plan files end in .plan.json (written by "
                             "`depthprune rank --save-plan`)")
        return self.plan if self.plan is not None else self.scores


def check_layer_list(layers: object, num_layers: int, what: str, allow_empty: bool = False,
                     allow_all: bool = False) -> list[int]:
    """Validate a list of 0-based layers: integers (not strings or booleans), distinct, within
    0..num_layers-1, at least one (unless ``allow_empty``) and not all (unless ``allow_all``).
    Returns them sorted.
    Raises RankError starting with ``what`` (the option or file and key)."""
    if not isinstance(layers, (list, tuple)):
        raise RankError(f"{what} must be a list of 0-based layer numbers, got {layers!r}")
    wrong = [x for x in layers if not is_int(x)]
    if wrong:
        raise RankError(f"{what}: {wrong[:3]} are not layer numbers; give 0-based integers, e.g. [5, 9]")
    dupes = sorted({x for x in layers if list(layers).count(x) > 1})
    if dupes:
        raise RankError(f"{what}: layer(s) {dupes} given more than once; list each layer once")
    bad = sorted(x for x in layers if not 0 <= x < num_layers)
    if bad:
        raise RankError(f"{what}: layer(s) {bad} do not exist; the model has layers 0..{num_layers - 1} (0-based)")
    if not layers and not allow_empty:
        raise RankError(f"{what}: no layers given; name at least one 0-based layer")
    if not allow_all and len(layers) >= num_layers:
        raise RankError(f"{what}: cannot remove all {num_layers} decoder layers; keep at least one")
    return sorted(layers)


@dataclass(frozen=True)
class LmmsTasks:
    """lmms-eval tasks to evaluate on instead of JSONL records (``eval --lmms-eval``)."""

    tasks: Sequence[str] | None = option(
        None, "Run these lmms-eval tasks (comma-separated) instead of --data; needs depthprune\\[lmms]. Runs "
        "offline: hub tasks need cached datasets.", flag="lmms-eval", cli_type=str | None)
    include_path: Path | None = option(None, "Directory of extra lmms-eval task YAMLs (e.g. from `depthprune "
                                       "data lmms-task`).")
    limit: int | None = option(None, "lmms-eval: at most N samples per task.", min=1)
    model: str | None = option(None, "lmms-eval model name (default: chosen from the checkpoint's model_type).",
                               flag="lmms-model")
    model_args: str | None = option(None, "Extra lmms-eval model_args, k=v,k=v (e.g. system_prompt=...,"
                                    "max_pixels=...).", flag="lmms-model-args")

    @classmethod
    def from_cli(cls, values: dict[str, Any]) -> "LmmsTasks":
        """``--lmms-eval a,b`` read as the task list."""
        tasks = values.get("tasks")
        return cls(**dict(values, tasks=tasks.split(",") if tasks else None))
