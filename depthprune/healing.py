"""Heal a (pruned) checkpoint: brief supervised fine-tuning with TRL's ``SFTTrainer``.

Training examples are the project's JSONL records (:mod:`depthprune.data`), rendered through
the model's own processor and chat template exactly as the evaluator renders them
(:func:`depthprune.evaluation._answer_span`). The loss covers the answer's tokens and the
end-of-turn marker that closes them (so the model also learns to stop); prompt, image and
padding tokens are masked out (label -100).

What is trained (the vision tower, its merger, the token embeddings and the LM head never are):

* ``lora`` (default) — peft LoRA on the ``q/k/v/o/gate/up/down_proj`` linears inside the
  language decoder's layers, merged into the weights before returning.
* ``full`` — every weight of the decoder layers and the final norm.
* ``neighbours`` — every weight of the kept layers adjacent to a removed one (the layers
  whose input or output changed when their neighbour was removed); needs ``removed_layers``.

With a ``teacher`` (the unpruned model), the loss is ``(1 - w) * SFT + w * T^2 * KL(teacher ||
student)`` on the same answer tokens, with softmax temperature ``T`` (Hinton et al.).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DataError, Record, data_fingerprint
from .models import find_decoder_layers, text_config
from .sft import (
    HealError,
    RecordCollator,
    _checkpoints,
    _freeze_for,
    _sft_trainer_class,
    _trainable_prefixes,
    _trained_layers,
    lora_target_regex,
    neighbour_layers,
    training_batch,
)

# TRL 1.16 reads transformers' renamed `gradient_checkpointing` attributes; the deprecation
# warnings are about its code, not the user's, and would print on every healing run.
warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing` is deprecated")

__all__ = ["HEAL_MODES", "HealConfig", "HealError", "HealStats", "heal", "heal_model",
           "neighbour_layers", "training_batch", "verify_stock_keys", "work_dir_for"]

HEAL_MODES = ("lora", "full", "neighbours")
#: Learning rate when ``HealConfig.learning_rate`` is None, per mode.
DEFAULT_LR = {"lora": 1e-3, "full": 2e-4, "neighbours": 2e-4}


@dataclass
class HealConfig:
    """How to heal. Validated on construction (``HealError`` names the bad field)."""

    #: "lora" (merged on save), "full" (decoder layers + final norm), "neighbours" (only the
    #: kept layers next to removed ones, all their weights)
    mode: str = "lora"
    #: optimizer steps (100 x 16 records heal the 25%-pruned toy, see the README); None: ``epochs``
    steps: int | None = 100
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

    def __post_init__(self) -> None:
        if self.mode not in HEAL_MODES:
            raise HealError(f"unknown heal mode '{self.mode}'; choose one of {', '.join(HEAL_MODES)}")
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "lora_r": self.lora_r,
                    "lora_alpha": self.lora_alpha, "save_steps": self.save_steps,
                    "logging_steps": self.logging_steps, "temperature": self.temperature}
        if self.steps is None and self.epochs is None:
            raise HealError("give steps or epochs")
        for name in ("steps", "epochs"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        if self.learning_rate is not None:
            positive["learning_rate"] = self.learning_rate
        for name, value in positive.items():
            if not value > 0:
                raise HealError(f"{name} must be > 0, got {value}")
        for name in ("warmup_ratio", "distill_weight", "lora_dropout"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise HealError(f"{name} must be within [0, 1], got {value}")

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

    def to_dict(self) -> dict:
        """JSON-ready form (the ``healing`` entry of ``pruning.json``)."""
        return asdict(self)


def require_answers(records: Sequence[Record]) -> None:
    """Raise DataError naming the first record without a (non-empty) answer."""
    unanswered = next((r for r in records if r.answer is None or not str(r.answer).strip()), None)
    if unanswered is not None:
        raise DataError(f"{unanswered.source}: record has no 'answer' (or an empty one). Healing "
                        "trains on answers: give every training record an answer")


def heal_model(model: nn.Module, processor: Any, records: Sequence[Record], config: HealConfig, *,
               teacher: nn.Module | None = None, removed_layers: list[int] | None = None,
               work_dir: str | Path | None = None, resume: bool = False,
               progress: bool = True) -> HealStats:
    """Fine-tune `model` IN PLACE (LoRA merged back before returning, so the result is a plain
    model with the same architecture) on `records` (depthprune.data.Record list).

    ``teacher``: the unpruned model for logit distillation (same tokenizer). ``removed_layers``:
    the layers pruned away (original 0-based numbering), needed by ``neighbours`` mode.
    ``work_dir``: where TRL checkpoints go (a temporary directory if None); ``resume``
    continues from its latest checkpoint. Returns :class:`HealStats`.
    Raises HealError / DataError for unusable inputs, before any training.
    """
    import tempfile

    from datasets import Dataset
    from trl import SFTConfig

    if not records:
        raise HealError("no training records given")
    require_answers(records)
    if config.mode == "neighbours":
        _trainable_prefixes(model, config.mode, removed_layers)  # fail before anything heavy
    if teacher is not None:
        t_vocab, s_vocab = text_config(teacher).vocab_size, text_config(model).vocab_size
        if t_vocab != s_vocab:
            raise HealError(f"the teacher's vocabulary ({t_vocab} tokens) differs from the model's "
                            f"({s_vocab}); distillation needs the same tokenizer: pass the unpruned "
                            "model this one was pruned from")
        teacher.eval().requires_grad_(False)
    training_batch(processor, records[:1])  # the template renders answers verbatim, or a clear error
    fingerprint = data_fingerprint(records)

    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="depthprune-heal-")
        work_dir = tmp.name
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    resume_from = None
    if resume:
        found = _checkpoints(work_dir)
        if found:
            resume_from = str(found[-1])
        else:
            warnings.warn(f"{work_dir}: no checkpoint to resume from; training from the start",
                          stacklevel=2)

    peft_config, trained = None, []
    if config.mode == "lora":
        from peft import LoraConfig
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                 lora_dropout=config.lora_dropout, bias="none",
                                 target_modules=lora_target_regex(model), task_type="CAUSAL_LM")
    else:
        trained = _freeze_for(model, config.mode, removed_layers)
    steps_per_epoch = math.ceil(len(records) / (config.batch_size * config.grad_accum))
    max_steps = config.steps if config.epochs is None else max(1, round(config.epochs * steps_per_epoch))
    log_every = min(config.logging_steps, max_steps)
    args = SFTConfig(
        output_dir=str(work_dir), max_steps=max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
        lr_scheduler_type="cosine", warmup_steps=round(config.warmup_ratio * max_steps),
        weight_decay=0.0, logging_steps=log_every, save_steps=config.save_steps,
        save_total_limit=2, seed=config.seed, data_seed=config.seed, report_to="none",
        disable_tqdm=not progress, bf16=config.bf16, max_length=None, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer_cls = _sft_trainer_class()
    torch.manual_seed(config.seed)  # LoRA initialisation
    was_training = model.training
    trainer = trainer_cls(
        model=model, args=args, train_dataset=Dataset.from_dict({"index": list(range(len(records)))}),
        data_collator=RecordCollator(processor, records), processing_class=processor,
        peft_config=peft_config, teacher=teacher, distill_weight=config.distill_weight if teacher else 0.0,
        temperature=config.temperature)
    if not progress:  # with tqdm off, transformers prints every log dict instead: keep logs clean
        from transformers.trainer_callback import PrinterCallback
        trainer.remove_callback(PrinterCallback)
    if teacher is not None:
        teacher.to(trainer.args.device)
    if config.mode == "lora":
        trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
        bad = [n for n in trained if "lora_" not in n or any(v in n for v in ("visual", "vision"))]
        if bad:  # the regex above makes this impossible; a peft change must not train the vision tower
            raise RuntimeError(f"LoRA would train parameters outside the decoder: {bad[:3]}")
    n_trained = sum(p.numel() for n, p in trainer.model.named_parameters() if p.requires_grad)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started

    if config.mode == "lora":
        merged = trainer.model.merge_and_unload()
        if merged is not model:
            raise RuntimeError("peft returned a new model object; healing must happen in place")
    for param in model.parameters():
        param.requires_grad_(True)
    model.train(was_training)
    log = trainer.state.log_history
    losses = [float(e["loss"]) for e in log if "loss" in e]
    windows: dict[int, list[float]] = {}
    for step, value in getattr(trainer, "kl_log", []):  # mean KL per logging window
        windows.setdefault(step // log_every, []).append(value)
    kl_logged = [sum(v) / len(v) for _, v in sorted(windows.items())]
    final = losses[-1] if losses else float(log[-1].get("train_loss", float("nan"))) if log else float("nan")
    import peft
    import transformers
    import trl
    recipe = {**{k: v for k, v in asdict(config).items()}, "learning_rate": config.lr,
              "max_steps": max_steps, "num_records": len(records),
              "trained_parameters": n_trained,
              "trained_layers": _trained_layers(model, trained),
              "teacher": getattr(getattr(teacher, "config", None), "_name_or_path", None) if teacher else None,
              "loss": ("(1 - w) * SFT + w * T^2 * KL(teacher || student) on answer tokens"
                       if teacher is not None else "SFT cross-entropy on answer tokens + end-of-turn"),
              "resumed_from": Path(resume_from).name if resume_from else None,
              "versions": {"trl": trl.__version__, "peft": peft.__version__,
                           "transformers": transformers.__version__, "torch": torch.__version__}}
    if tmp is not None:
        tmp.cleanup()
    return HealStats(steps=trainer.state.global_step, seconds=round(seconds, 2), final_loss=final,
                     losses=losses, data_fingerprint=fingerprint, recipe=recipe, kl=kl_logged)


# ----------------------------------------------------------------------------- checkpoints
def work_dir_for(out: str | Path) -> Path:
    """The resumable work directory of a heal run writing ``out``: ``OUT.heal-work`` beside it."""
    out = Path(out)
    return out.parent / f"{out.name}.heal-work"


def read_pruning_info(model_dir: str | Path) -> dict | None:
    """The checkpoint's ``pruning.json`` (None if it has none, e.g. a hub id or an unpruned model)."""
    path = Path(model_dir) / "pruning.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HealError(f"{path}: not valid JSON ({err.msg}). Restore it from the prune run") from None


def heal(model_id: str | Path, data: str | Path | Sequence[str | Path], out: str | Path,
         config: HealConfig | None = None, *, teacher_id: str | Path | None = None,
         work_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
         dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
         progress: bool = True, prompt_format: str = "auto") -> Path:
    """Load checkpoint ``model_id``, heal it on the JSONL file(s) ``data`` (:func:`heal_model`)
    and save a stock checkpoint to ``out`` (atomically, like ``prune``), with ``pruning.json``
    (the input's, or a no-removal record) extended by a ``healing`` entry (:class:`HealStats`).

    TRL checkpoints go to ``work_dir`` (default :func:`work_dir_for` ``(out)``), removed on
    success; ``resume`` continues an interrupted run from them. Weights are saved in the input
    checkpoint's dtype. ``prompt_format``: auto, chat or plain
    (:func:`depthprune.data.set_prompt_format`), recorded in the healing recipe. Returns ``out``.
    Every cheap check runs before a model is loaded.
    """
    from .data import check_prompt_format, load_records, set_prompt_format
    from .models import load_model, resolve_model_id
    from .pruning import atomic_dir, prepare_output_dir, pruning_info, save_pruned

    config = config or HealConfig()
    model_id, out = resolve_model_id(model_id), Path(out)
    prepare_output_dir(out, overwrite)
    work = Path(work_dir) if work_dir is not None else work_dir_for(out)
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    records = load_records(paths)
    require_answers(records)
    check_prompt_format(prompt_format, model_id)
    request = {"model": str(model_id), "data_fingerprint": data_fingerprint(records),
               "teacher": str(teacher_id) if teacher_id else None, "config": asdict(config),
               "prompt_format": prompt_format}
    request_file = work / "heal_request.json"
    if work.is_dir() and _checkpoints(work):
        if not resume:
            raise HealError(f"{work}: holds checkpoints of an interrupted heal run. Pass --resume to "
                            f"continue it, or delete {work} to start over")
        if request_file.is_file() and json.loads(request_file.read_text()) != request:
            raise HealError(f"{work}: its checkpoints are from a run with another model, data or "
                            f"recipe. Repeat that run's options, or delete {work} to start over")
    info = read_pruning_info(model_id) if Path(str(model_id)).is_dir() else None
    removed = (info or {}).get("removed_layers") or None
    if config.mode == "neighbours" and not removed:
        raise HealError(f"{model_id}: --train-layers neighbours needs a pruned checkpoint (its "
                        "pruning.json lists the removed layers); this one has none. Heal the "
                        "output of `depthprune prune`, or use --mode lora / full")
    model, processor = load_model(model_id, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    used_format = set_prompt_format(processor, prompt_format, model_id)
    save_dtype = _checkpoint_dtype(model_id)
    teacher = None
    if teacher_id is not None:
        teacher, _ = load_model(resolve_model_id(teacher_id), dtype=dtype, device=device,
                                trust_remote_code=trust_remote_code)
    n_layers = len(find_decoder_layers(model)[1])
    if info is not None and info.get("num_layers") not in (None, n_layers):
        raise HealError(f"{model_id}: pruning.json says {info['num_layers']} layers but the "
                        f"checkpoint has {n_layers}. Re-run `depthprune prune`")
    work.mkdir(parents=True, exist_ok=True)
    request_file.write_text(json.dumps(request, indent=1))
    stats = heal_model(model, processor, records, config, teacher=teacher, removed_layers=removed,
                       work_dir=work, resume=resume, progress=progress)
    if teacher is not None:
        stats.recipe["teacher"] = str(teacher_id)
    stats.recipe["data_files"] = [str(p) for p in paths]
    stats.recipe["prompt_format"] = used_format
    if info is None:
        info = pruning_info(str(model_id), n_layers, [], method="none", budget_spec=0)
    info = dict(info)
    if "healing" in info:  # healing a healed checkpoint: keep the earlier entries
        info["healing_history"] = info.get("healing_history", []) + [info["healing"]]
    info["healing"] = {"source_model": str(model_id), **stats.to_dict()}
    if save_dtype is not None:
        model.to(save_dtype)
    with atomic_dir(out) as tmp:
        saved = save_pruned(model, processor, tmp / "checkpoint", info, source_model=model_id)
        for f in saved.iterdir():
            f.rename(tmp / f.name)
        saved.rmdir()
        verify_stock_keys(tmp, model)
        with (tmp / "README.md").open("a") as fh:
            fh.write(healing_card(info["healing"]))
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    return out


def _checkpoint_dtype(model_id: str | Path) -> torch.dtype | None:
    """The dtype the input checkpoint stores its weights in (from its config.json)."""
    from transformers import AutoConfig
    try:
        name = AutoConfig.from_pretrained(model_id, local_files_only=True).dtype
    except (OSError, ValueError):
        return None
    if isinstance(name, str):
        name = getattr(torch, name, None)
    return name if isinstance(name, torch.dtype) else None


def verify_stock_keys(checkpoint_dir: Path, model: nn.Module) -> None:
    """Raise HealError unless the saved tensors are exactly those of a stock model of this
    config (no LoRA leftovers, nothing missing), so the checkpoint reloads exactly."""
    from safetensors import safe_open
    saved: set[str] = set()
    for shard in checkpoint_dir.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as fh:
            saved.update(fh.keys())
    with torch.device("meta"):
        stock = type(model)(model.config)
    expected = set(stock.state_dict())
    tied = {k for k in expected - saved if "lm_head" in k}  # tied head: saved once, as embeddings
    if saved != expected - tied:
        extra, missing = sorted(saved - expected), sorted(expected - tied - saved)
        raise HealError(f"the healed checkpoint does not match a stock {type(model).__name__}: "
                        f"unexpected {extra[:3]}, missing {missing[:3]}; nothing was written")


def healing_card(entry: dict) -> str:
    """Model-card section stating how the checkpoint was healed."""
    recipe = entry["recipe"]
    teacher = f", distilled from `{recipe['teacher']}`" if recipe.get("teacher") else ""
    return (f"\n## Healing\n\nFine-tuned after pruning with depthprune (`{recipe['mode']}` mode{teacher}): "
            f"{entry['steps']} steps of {recipe['batch_size'] * recipe['grad_accum']} records, "
            f"learning rate {recipe['learning_rate']}, in {entry['seconds']:.0f} s; final training "
            f"loss {entry['final_loss']:.4f}; data fingerprint `{entry['data_fingerprint']}`. "
            "Full recipe under `healing` in `pruning.json`.\n")
