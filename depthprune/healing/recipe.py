"""What a healing run does: its recipe (:class:`HealConfig`), what it reports
(:class:`HealStats`), and the checks that need no model.

Modes (the vision tower, its merger, the token embeddings and the LM head are never trained):

* ``lora`` (default) — peft LoRA on the ``q/k/v/o/gate/up/down_proj`` linears inside the
  language decoder's layers, merged into the weights before returning.
* ``full`` — every weight of the decoder layers and the final norm.
* ``neighbours`` — every weight of the kept layers adjacent to a removed one (the layers
  whose input or output changed when their neighbour was removed); needs the removed layers.

With a teacher (the unpruned model) the loss is ``(1 - w) * SFT + w * T^2 * KL(teacher ||
student)`` on the answer tokens, with softmax temperature ``T`` (Hinton et al.).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from depthprune.data.records import DataError, Record
from depthprune.messages import show


class HealError(ValueError):
    """A healing request cannot be carried out; the message names the input and the fix."""


HEAL_MODES = ("lora", "full", "neighbours", "interleaved", "head-last")
#: Modes that train a subset of the decoder and need the removed layers (from pruning.json).
NEEDS_REMOVED = ("neighbours", "interleaved")
#: Learning rate when ``HealConfig.learning_rate`` is None, per mode.
DEFAULT_LR = {"lora": 1e-3, "full": 2e-4, "neighbours": 2e-4, "interleaved": 2e-4, "head-last": 2e-4}
#: Wall-clock seconds of training when neither steps, epochs nor a time budget is given: the
#: recipe measured on the toy (docs/results/healing.md) gives back most of the pruning loss in it.
DEFAULT_TIME_BUDGET = 180.0
#: Upper limit on the steps of a time-budgeted run given no ``steps`` (the clock stops it first).
MAX_TIMED_STEPS = 1_000_000


@dataclass
class HealConfig:
    """How to heal. Validated on construction (``HealError`` names the bad field)."""

    #: "lora" (merged on save), "full" (decoder layers + final norm), "neighbours" (the kept
    #: layers next to removed ones), "interleaved" (INTERLACE-style: the kept layer before each
    #: cut trains, the one after it stays frozen as an anchor), "head-last" (the LM head, the
    #: final norm and the last ``last_layers`` decoder layers; Lu et al. 2024)
    mode: str = "lora"
    #: optimizer steps; None: ``epochs``, or train for ``time_budget`` seconds. Neither steps,
    #: epochs nor time_budget given: ``time_budget`` = DEFAULT_TIME_BUDGET (180 s)
    steps: int | None = None
    #: passes over the data; when set, it replaces ``steps``
    epochs: float | None = None
    #: peak learning rate (AdamW, linear warm-up then cosine decay); None: DEFAULT_LR[mode]
    learning_rate: float | None = None
    #: records per optimizer step and device (times ``grad_accum``)
    batch_size: int = 16
    #: gradient accumulation steps
    grad_accum: int = 1
    #: fraction of the steps spent warming the learning rate up
    warmup_ratio: float = 0.05
    #: LoRA rank and scale (update = alpha / r * B @ A)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    #: weight w of the KL term when a teacher is given: loss = (1 - w) * SFT + w * T^2 * KL
    distill_weight: float = 0.5
    #: softmax temperature T of the distillation KL
    temperature: float = 2.0
    #: seed of the data order and of the LoRA initialisation
    seed: int = 0
    #: save a resumable checkpoint every N steps (into the work dir)
    save_steps: int = 50
    #: record the loss every N steps
    logging_steps: int = 10
    #: bfloat16 mixed precision (GPUs); weights stay in the dtype they were loaded in
    bf16: bool = False
    #: wall-clock seconds of training: the learning-rate schedule runs over this time (warm-up
    #: then cosine decay by elapsed time) and training stops when it is spent; ``steps`` (or
    #: ``epochs``) become an upper limit. None: train ``steps`` (or ``epochs``); all three None:
    #: DEFAULT_TIME_BUDGET
    time_budget: float | None = None
    #: decoder layers "head-last" trains, counted from the last one
    last_layers: int = 3
    #: share of the records held out of training to measure the answer NLL before and after
    #: (at most 64 records; none when fewer than 20 records are given)
    holdout: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in HEAL_MODES:
            raise HealError(f"unknown heal mode {show(self.mode)}; choose one of {', '.join(HEAL_MODES)}")
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "lora_r": self.lora_r,
                    "lora_alpha": self.lora_alpha, "save_steps": self.save_steps,
                    "logging_steps": self.logging_steps, "temperature": self.temperature}
        if self.steps is None and self.epochs is None and self.time_budget is None:
            self.time_budget = DEFAULT_TIME_BUDGET
        for name in ("steps", "epochs"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        if self.learning_rate is not None:
            positive["learning_rate"] = self.learning_rate
        if self.time_budget is not None:
            positive["time_budget"] = self.time_budget
        positive["last_layers"] = self.last_layers
        for name, value in positive.items():
            if not value > 0:
                raise HealError(f"{name} must be > 0, got {value}")
        for name in ("warmup_ratio", "distill_weight", "lora_dropout"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise HealError(f"{name} must be within [0, 1], got {value}")
        if not 0 <= self.holdout <= 0.5:
            raise HealError(f"holdout must be within [0, 0.5] (a share of the records), got {self.holdout}")

    @property
    def lr(self) -> float:
        """The learning rate in use (``learning_rate`` or the mode's default)."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.mode]


@dataclass
class HealStats:
    """What a healing run did. ``seconds``: wall time of the training loop (this process only,
    when resumed); ``losses``: the training loss every ``logging_steps`` steps (the SFT+KL
    mix when distilling); ``kl``: the distillation KL at the same steps (empty without teacher)."""

    steps: int
    seconds: float
    final_loss: float
    losses: list[float]
    data_fingerprint: str
    recipe: dict
    kl: list[float] = field(default_factory=list)
    #: answer NLL (nats/token) per domain on the held-out records, before and after:
    #: ``{"n": 20, "before": {"math": 2.1, ...}, "after": {...}}``; None without a held-out slice
    heldout: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready form (the ``healing`` entry of ``pruning.json``)."""
        return asdict(self)


def missing_packages() -> list[str]:
    """The training libraries healing needs that are not installed (the ``heal`` extra)."""
    return [m for m in ("trl", "peft", "datasets") if importlib.util.find_spec(m) is None]


def require_answers(records: Sequence[Record]) -> None:
    """Raise DataError naming the first record without a (non-empty) answer."""
    unanswered = next((r for r in records if r.answer is None or not str(r.answer).strip()), None)
    if unanswered is not None:
        raise DataError(f"{unanswered.source}: record has no 'answer' (or an empty one). Healing "
                        "trains on answers: give every training record an answer")
