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
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads HealConfig's fields for --help: no PIL (data.records) at import
    from depthprune.data.records import Record
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
    mode: str = field(default="lora", metadata={"help": "What trains: lora (language-decoder q/k/v/o/gate/up/down projections, merged into the weights on save); full (all decoder layers and the final norm); neighbours (the kept layers next to removed ones, from MODEL's pruning.json); interleaved (INTERLACE-style: the kept layer before each cut, the next one frozen as an anchor); head-last (the LM head, final norm and last --last-layers layers). The vision tower and the embeddings never train (except through a head tied to them in head-last)."})
    #: optimizer steps; None: ``epochs``, or train for ``time_budget`` seconds. Neither steps,
    #: epochs nor time_budget given: ``time_budget`` = DEFAULT_TIME_BUDGET (180 s)
    steps: int | None = field(default=None, metadata={"help": "Optimizer steps, the same on every machine (ignored when --epochs is given; with --time-budget an upper limit). Default: none, train for --time-budget (180 s).", "min": 1})
    #: passes over the data; when set, it replaces ``steps``
    epochs: float | None = field(default=None, metadata={"help": "Passes over the data; replaces --steps.", "min": 0.01})
    #: peak learning rate (AdamW, linear warm-up then cosine decay); None: DEFAULT_LR[mode]
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate, linear warm-up then cosine (default: 1e-3 lora, 2e-4 full/neighbours).", "min": 0.0})
    #: records per optimizer step and device (times ``grad_accum``)
    batch_size: int = field(default=16, metadata={"help": "Records per optimizer step and device.", "min": 1})
    #: gradient accumulation steps
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps.", "min": 1})
    #: fraction of the steps spent warming the learning rate up
    warmup_ratio: float = field(default=0.05, metadata={"cli": False})
    #: LoRA rank and scale (update = alpha / r * B @ A)
    lora_r: int = field(default=16, metadata={"help": "LoRA rank.", "min": 1})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (update scale alpha/r).", "min": 1})
    lora_dropout: float = field(default=0.0, metadata={"cli": False})
    #: weight w of the KL term when a teacher is given: loss = (1 - w) * SFT + w * T^2 * KL
    distill_weight: float = field(default=0.5, metadata={"help": "Weight w of the KL term with --teacher.", "min": 0.0, "max": 1.0})
    #: softmax temperature T of the distillation KL
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T of the distillation KL.", "min": 0.01})
    #: seed of the data order and of the LoRA initialisation
    seed: int = field(default=0, metadata={"help": "Seed of the data order and the LoRA initialisation."})
    #: save a resumable checkpoint every N steps (into the work dir)
    save_steps: int = field(default=50, metadata={"help": "Write a resumable checkpoint every N steps.", "min": 1})
    #: record the loss every N steps
    logging_steps: int = field(default=10, metadata={"cli": False})
    #: bfloat16 mixed precision (GPUs); weights stay in the dtype they were loaded in
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPUs)."})
    #: recompute activations in the backward pass (TRL's default) to save memory; None: on a
    #: GPU only. On CPU memory is rarely the limit and the recompute costs about a quarter of
    #: each step; the recompute is exact, so the trained weights are the same either way
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "Recompute activations in the backward pass to save memory (the trained weights are the same). Default: on a GPU, off on CPU (where it costs about a quarter of each step)."})
    #: wall-clock seconds of training: the learning-rate schedule runs over this time (warm-up
    #: then cosine decay by elapsed time) and training stops when it is spent; ``steps`` (or
    #: ``epochs``) become an upper limit. None: train ``steps`` (or ``epochs``); all three None:
    #: DEFAULT_TIME_BUDGET
    time_budget: float | None = field(default=None, metadata={"help": "Train for this many wall-clock seconds: the learning rate warms up and decays over the time, --steps becomes an upper limit. Default: 180 s when neither --steps nor --epochs is given.", "min": 1.0})
    #: decoder layers "head-last" trains, counted from the last one
    last_layers: int = field(default=3, metadata={"help": "Decoder layers --mode head-last trains, counted from the last.", "min": 1})
    #: share of the records held out of training to measure the answer NLL before and after
    #: (at most 64 records; none when fewer than 20 records are given)
    holdout: float = field(default=0.1, metadata={"help": "Share of the records held out of training to print the answer NLL before and after (at most 64; none below 20 records).", "min": 0.0, "max": 0.5})

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

    @classmethod
    def from_cli(cls, values: dict) -> "HealConfig":
        """The recipe of a command line (its ``--mode`` named in the error)."""
        if values.get("mode") not in HEAL_MODES:
            raise ValueError(f"--mode {values.get('mode')!r}: choose one of {', '.join(HEAL_MODES)}")
        return cls(**values)

    @property
    def lr(self) -> float:
        """The learning rate in use (``learning_rate`` or the mode's default)."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.mode]


@dataclass(frozen=True)
class TrainingFiles:
    """Where a heal keeps its training state: TRL checkpoints in ``work_dir`` (a temporary
    directory if None), continued from the latest complete one with ``resume``; every TRL log
    entry appended to ``log_file`` as a JSON line (default ``work_dir/healing_log.jsonl``)."""

    work_dir: str | os.PathLike | None = None
    resume: bool = False
    log_file: str | os.PathLike | None = None


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
    from depthprune.data.records import DataError
    unanswered = next((r for r in records if r.answer is None or not str(r.answer).strip()), None)
    if unanswered is not None:
        raise DataError(f"{unanswered.source}: record has no 'answer' (or an empty one). Healing "
                        "trains on answers: give every training record an answer")
