"""Training a model in place with TRL / peft: batches with answer-only labels, what each mode
trains, the SFT trainer with an optional distillation term, the progress bar and log, and
:func:`heal_model`, which puts them together.

Training examples are the project's JSONL records, rendered through the model's own
processor and chat template exactly as the evaluator renders them
(:func:`depthprune.evaluation.generation.answer_span`). The loss covers the answer's tokens and
the end-of-turn marker that closes them (so the model also learns to stop); prompt, image and
padding tokens are masked out (label -100). Recipes: :mod:`depthprune.healing.recipe`."""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthprune.data.records import DataError, Record, data_fingerprint, encode
from depthprune.evaluation.generation import answer_span
from depthprune.healing.recipe import (
    MAX_TIMED_STEPS,
    NEEDS_REMOVED,
    HealConfig,
    HealError,
    HealStats,
    TrainingFiles,
    require_answers,
)
from depthprune.models.architectures import find_decoder_layers, text_config

# TRL 1.16 reads transformers' renamed `gradient_checkpointing` attributes; the deprecation
# warnings are about its code, not the user's, and would print on every healing run.
warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing` is deprecated")

#: Linear layers LoRA adapts, matched by name inside the language decoder's layers only.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ----------------------------------------------------------------------------- batches
def _label_text(full: str, end: int) -> int:
    """End of the supervised span: the answer plus the template's end-of-turn marker after it
    (e.g. ``<|im_end|>``), without trailing whitespace (the template's newline is not taught)."""
    return max(end, len(full.rstrip()))


def training_batch(processor: Any, records: Sequence[Record]) -> dict[str, torch.Tensor]:
    """Tokenise answered records into one left-padded batch with ``labels``: the token ids on
    the answer and its end-of-turn marker, -100 everywhere else (prompt, image, padding)."""
    spans = [answer_span(processor, r) for r in records]
    texts = [full[:_label_text(full, end)] for full, _, end in spans]
    context = encode(processor, records, texts=[full[:start] for full, start, _ in spans])
    batch = encode(processor, records, texts=texts)
    n_context, n_full = context["attention_mask"].sum(1), batch["attention_mask"].sum(1)
    labels = torch.full_like(batch["input_ids"], -100)
    for i, r in enumerate(records):
        n = int(n_full[i] - n_context[i])
        ids, ctx = batch["input_ids"][i, -int(n_full[i]):], context["input_ids"][i, -int(n_context[i]):]
        if n < 1 or not torch.equal(ids[:len(ctx)], ctx):
            raise DataError(f"{r.source}: the answer's tokens merge with the prompt's in this "
                            "model's chat template, so they cannot be supervised alone")
        labels[i, -n:] = batch["input_ids"][i, -n:]
    out = dict(batch)
    out["labels"] = labels
    return out


class RecordCollator:
    """Data collator for the Trainer: the dataset holds record indices, this turns a list of
    ``{"index": i}`` into :func:`training_batch` of those records."""

    def __init__(self, processor: Any, records: Sequence[Record]) -> None:
        self.processor, self.records = processor, list(records)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return training_batch(self.processor, [self.records[int(f["index"])] for f in features])


# ----------------------------------------------------------------------------- what trains
def neighbour_layers(removed: Sequence[int], original_num_layers: int) -> list[int]:
    """Current (0-based, renumbered) indices of the kept layers directly before or after a
    removed layer or run of removed layers. ``removed`` is in the original numbering."""
    removed_set = set(removed)
    kept = [i for i in range(original_num_layers) if i not in removed_set]
    new_index = {layer: j for j, layer in enumerate(kept)}
    picked = set()
    for r in removed_set:
        below = max((k for k in kept if k < r), default=None)
        above = min((k for k in kept if k > r), default=None)
        picked.update(new_index[k] for k in (below, above) if k is not None)
    return sorted(picked)


def _final_norm(model: nn.Module, layers_path: str) -> str | None:
    root = layers_path.rpartition(".")[0]
    name = f"{root}.norm" if root else "norm"
    try:
        model.get_submodule(name)
    except AttributeError:
        return None
    return name


def interleaved_layers(removed: Sequence[int], original_num_layers: int) -> list[int]:
    """INTERLACE-style choice (arXiv 2511.19676): current (renumbered) indices of the kept layer
    right before each run of removed layers (right after it when the run starts at layer 0);
    the kept layer after a trained one is never trained, so it stays a frozen anchor."""
    removed_set = set(removed)
    kept = [i for i in range(original_num_layers) if i not in removed_set]
    new_index = {layer: j for j, layer in enumerate(kept)}
    picked: set[int] = set()
    for r in sorted(removed_set):
        if r - 1 in removed_set:
            continue  # one trained layer per run of removed layers
        below = max((k for k in kept if k < r), default=None)
        above = min((k for k in kept if k > r), default=None)
        layer = below if below is not None else above
        if layer is not None and new_index[layer] - 1 not in picked:
            picked.add(new_index[layer])
    return sorted(picked)


def _lm_head(model: nn.Module) -> str | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((name for name, module in model.named_modules() if module is head), None) if head is not None else None


def trainable_prefixes(model: nn.Module, mode: str, removed: Sequence[int] | None,
                       last_layers: int = 3) -> list[str]:
    """Parameter-name prefixes trained in the modes that train whole weights (all but lora)."""
    path, layers = find_decoder_layers(model)
    norm = _final_norm(model, path)
    if mode == "full":
        return [f"{path}."] + ([f"{norm}."] if norm else [])
    if mode == "head-last":
        head = _lm_head(model)
        first = max(0, len(layers) - last_layers)
        return [f"{path}.{i}." for i in range(first, len(layers))] + [f"{n}." for n in (norm, head) if n]
    if not removed:
        raise HealError(f"{mode} mode needs the removed layers; this model has none recorded. "
                        "Heal a pruned checkpoint (with pruning.json) or use --mode lora, full or head-last")
    original = len(layers) + len(set(removed))
    picked = neighbour_layers(removed, original) if mode == "neighbours" else interleaved_layers(removed, original)
    return [f"{path}.{i}." for i in picked]


def lora_target_regex(model: nn.Module) -> str:
    """peft ``target_modules`` regex: the projection linears of the language decoder's layers
    (full module names, so the vision tower's ``q_proj``-like modules never match)."""
    path, _ = find_decoder_layers(model)
    return rf"{re.escape(path)}\.\d+\.(?:.*\.)?(?:{'|'.join(LORA_TARGETS)})"


def freeze_for(model: nn.Module, mode: str, removed: Sequence[int] | None, last_layers: int = 3) -> list[str]:
    """Set ``requires_grad`` for the modes that train whole weights; returns the trained names."""
    prefixes = trainable_prefixes(model, mode, removed, last_layers)
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(tuple(prefixes)))
        if param.requires_grad:
            names.append(name)
    return names


# ----------------------------------------------------------------------------- training
def sft_trainer_class() -> type:
    from trl import SFTTrainer

    class DistillSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss mixes in the KL to a frozen teacher on the supervised tokens."""

        def __init__(self, *args: Any, teacher: nn.Module | None = None, distill_weight: float = 0.0,
                     temperature: float = 1.0, clock: "TimeBudget | None" = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.teacher, self.distill_weight, self.temperature = teacher, distill_weight, temperature
            self.clock = clock
            self.kl_log: list[tuple[int, float]] = []

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.clock is None:
                return super().create_scheduler(num_training_steps, optimizer)
            # a time budget: warm-up then cosine decay over the elapsed share of the budget
            from torch.optim.lr_scheduler import LambdaLR
            if self.lr_scheduler is None:
                self.lr_scheduler = LambdaLR(optimizer if optimizer is not None else self.optimizer,
                                             lambda _step: self.clock.lr_factor())
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.teacher is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            outputs = model(**model_inputs, use_cache=False)
            with torch.no_grad():
                t_logits = self.teacher(**model_inputs, use_cache=False).logits
            mask = labels[:, 1:] != -100  # logits at t predict the token at t + 1
            s_logits = outputs.logits[:, :-1][mask].float()
            temp = self.temperature
            # per supervised token; over the whole accumulated batch when the Trainer counts it
            n = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            ce = F.cross_entropy(s_logits, labels[:, 1:][mask], reduction="sum") / n
            kl = F.kl_div(F.log_softmax(s_logits / temp, -1),
                          F.log_softmax(t_logits[:, :-1][mask].float() / temp, -1),
                          log_target=True, reduction="sum") * temp * temp / n
            self.kl_log.append((self.state.global_step, kl.item() * float(n) / float(mask.sum())))
            loss = (1 - self.distill_weight) * ce + self.distill_weight * kl
            return (loss, outputs) if return_outputs else loss

    return DistillSFTTrainer


def checkpoints(work_dir: Path, complete: bool = True) -> list[Path]:
    """TRL's checkpoints in ``work_dir``, oldest first; with ``complete`` only those whose
    ``trainer_state.json`` was written (the Trainer writes it last, so a run killed while saving
    leaves a checkpoint without it)."""
    found = [p for p in work_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    if complete:
        found = [p for p in found if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def trained_layers(model: nn.Module, names: Sequence[str]) -> list[int]:
    """Current 0-based indices of decoder layers with a trained parameter."""
    path, _ = find_decoder_layers(model)
    pattern = re.compile(rf"(?:^|\.){re.escape(path)}\.(\d+)\.")
    return sorted({int(m.group(1)) for n in names if (m := pattern.search(n))})


# ----------------------------------------------------------------------------- progress
class TimeBudget:
    """Wall-clock budget of a run: the learning-rate factor by elapsed share, and when to stop."""

    def __init__(self, seconds: float, warmup_ratio: float = 0.05) -> None:
        self.seconds, self.warmup_ratio, self.started = float(seconds), warmup_ratio, None

    def start(self) -> None:
        """Start the clock (the first training step)."""
        if self.started is None:
            self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since :meth:`start` (0 before)."""
        return 0.0 if self.started is None else time.perf_counter() - self.started

    @property
    def spent(self) -> bool:
        """True once the budget is used up."""
        return self.elapsed >= self.seconds

    def lr_factor(self) -> float:
        """Linear warm-up over the first ``warmup_ratio`` of the time, then cosine decay to 0."""
        warmup_ratio = self.warmup_ratio
        share = min(1.0, self.elapsed / self.seconds)
        if share < warmup_ratio:
            return max(share / warmup_ratio, 1e-3)
        return 0.5 * (1 + math.cos(math.pi * (share - warmup_ratio) / max(1e-9, 1 - warmup_ratio)))


class TrainingLog:
    """A Trainer callback that shows training the way the rest of depthprune shows long work —
    one progress bar with the latest loss (tqdm gives the time left), off under ``--quiet`` —
    and appends every log entry TRL produces (loss, grad_norm, learning_rate, ... and the final
    summary) as one JSON line to ``log_file``, instead of printing dictionaries to stdout.
    With a :class:`TimeBudget` the bar counts seconds and training stops when it is spent."""

    def __init__(self, log_file: Path | None, progress: bool, desc: str = "heal",
                 clock: TimeBudget | None = None) -> None:
        self.log_file, self.progress, self.desc, self.clock, self.bar = log_file, progress, desc, clock, None

    def callback(self) -> Any:
        """The transformers ``TrainerCallback`` instance."""
        from transformers import TrainerCallback
        log = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                from depthprune.settings import progress as progress_bar
                total, unit = ((round(log.clock.seconds), "s") if log.clock else (state.max_steps, "step"))
                log.bar = progress_bar(total=total, initial=0 if log.clock else state.global_step, desc=log.desc,
                                       unit=unit, leave=False, disable=not log.progress, dynamic_ncols=True)
                if log.clock is not None:
                    log.clock.start()

            def on_step_end(self, args, state, control, **kwargs):
                if log.bar is not None:
                    done = min(round(log.clock.elapsed), log.bar.total) if log.clock else state.global_step
                    log.bar.update(done - log.bar.n)
                if log.clock is not None and log.clock.spent:
                    control.should_training_stop = True

            def on_log(self, args, state, control, logs=None, **kwargs):
                logs = dict(logs or {})
                if log.bar is not None and "loss" in logs:
                    log.bar.set_postfix_str(f"loss {float(logs['loss']):.4f}")
                if log.log_file is not None:
                    log.log_file.parent.mkdir(parents=True, exist_ok=True)
                    with log.log_file.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")

            def on_train_end(self, args, state, control, **kwargs):
                if log.bar is not None:
                    log.bar.close()
                    log.bar = None

        return _Callback()


#: The training log's file name (one JSON line per TRL log entry) in the work directory and in
#: the healed checkpoint.
LOG_NAME = "healing_log.jsonl"


# ----------------------------------------------------------------------------- the loop
def _check_inputs(model: nn.Module, processor: Any, records: Sequence[Record], config: HealConfig,
                  teacher: nn.Module | None, removed_layers: list[int] | None) -> None:
    """Everything about a healing request that can fail before training starts."""
    if not records:
        raise HealError("no training records given")
    require_answers(records)
    if config.mode in NEEDS_REMOVED:
        trainable_prefixes(model, config.mode, removed_layers)
    if teacher is not None:
        t_vocab, s_vocab = text_config(teacher).vocab_size, text_config(model).vocab_size
        if t_vocab != s_vocab:
            raise HealError(f"the teacher's vocabulary ({t_vocab} tokens) differs from the model's "
                            f"({s_vocab}); distillation needs the same tokenizer: pass the unpruned "
                            "model this one was pruned from")
    training_batch(processor, records[:1])  # the template renders answers verbatim, or a clear error


def _resume_point(work_dir: Path, resume: bool) -> str | None:
    """The checkpoint to continue from (the latest complete one), or None to start from the
    beginning. A newer, incomplete checkpoint (the run was killed while saving it) is named in
    a warning and left alone."""
    if not resume:
        return None
    found, every = checkpoints(work_dir), checkpoints(work_dir, complete=False)
    if not found:
        warnings.warn(f"{work_dir}: no complete checkpoint to resume from; training from the start", stacklevel=3)
        return None
    incomplete = [p.name for p in every if int(p.name.split("-")[-1]) > int(found[-1].name.split("-")[-1])]
    if incomplete:
        warnings.warn(f"{work_dir}: {', '.join(incomplete)} is incomplete (the run was interrupted while saving "
                      f"it); resuming from {found[-1].name}", stacklevel=3)
    return str(found[-1])


def max_steps_for(config: HealConfig, num_records: int) -> int:
    """Optimizer steps of a run: ``config.steps``, or ``config.epochs`` passes over the records, or
    for a run with only a time budget an upper limit the clock reaches first."""
    if config.epochs is None:
        return int(config.steps) if config.steps is not None else MAX_TIMED_STEPS
    steps_per_epoch = math.ceil(num_records / (config.batch_size * config.grad_accum))
    return max(1, round(config.epochs * steps_per_epoch))


def _sft_config(config: HealConfig, work_dir: Path, max_steps: int) -> Any:
    from trl import SFTConfig
    return SFTConfig(
        output_dir=str(work_dir), max_steps=max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
        lr_scheduler_type="cosine", warmup_steps=round(config.warmup_ratio * max_steps),
        weight_decay=0.0, logging_steps=min(config.logging_steps, max_steps), save_steps=config.save_steps,
        save_total_limit=2, seed=config.seed, data_seed=config.seed, report_to="none",
        disable_tqdm=True, bf16=config.bf16, max_length=None, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=(torch.cuda.is_available() if config.gradient_checkpointing is None
                                else config.gradient_checkpointing),
    )


def _trainer(model: nn.Module, processor: Any, records: Sequence[Record], config: HealConfig, args: Any,
             teacher: nn.Module | None, removed_layers: list[int] | None, log: TrainingLog) -> tuple[Any, list[str]]:
    """The SFT trainer with LoRA (or frozen layers for full / neighbours) and depthprune's
    progress bar; returns it with the names of the parameters it trains."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    peft_config, trained = None, []
    if config.mode == "lora":
        from peft import LoraConfig
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 bias="none", target_modules=lora_target_regex(model), task_type="CAUSAL_LM")
    else:
        trained = freeze_for(model, config.mode, removed_layers, config.last_layers)
    torch.manual_seed(config.seed)  # LoRA initialisation
    trainer = sft_trainer_class()(
        model=model, args=args, train_dataset=Dataset.from_dict({"index": list(range(len(records)))}),
        data_collator=RecordCollator(processor, records), processing_class=processor,
        peft_config=peft_config, teacher=teacher, distill_weight=config.distill_weight if teacher else 0.0,
        temperature=config.temperature, clock=log.clock)
    # transformers prints every log dict (PrinterCallback, or ProgressCallback's bar.write): the
    # terminal gets depthprune's bar with the loss instead, and the dicts go to the log file
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(log.callback())
    if config.mode == "lora":
        trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
        bad = [n for n in trained if "lora_" not in n or any(v in n for v in ("visual", "vision"))]
        if bad:  # the regex makes this impossible; a peft change must not train the vision tower
            raise RuntimeError(f"LoRA would train parameters outside the decoder: {bad[:3]}")
    return trainer, trained


def _recipe_record(model: nn.Module, config: HealConfig, trainer: Any, trained: list[str], n_trained: int,
                   num_records: int, teacher: nn.Module | None, resume_from: str | None) -> dict:
    """The ``recipe`` entry of :class:`HealStats`: the config as run, what trained, versions."""
    import peft
    import transformers
    import trl
    return {**asdict(config), "learning_rate": config.lr, "max_steps": trainer.args.max_steps,
            "num_records": num_records,
            "trained_parameters": n_trained,
            "trained_layers": trained_layers(model, trained),
            "teacher": getattr(getattr(teacher, "config", None), "_name_or_path", None) if teacher else None,
            "loss": ("(1 - w) * SFT + w * T^2 * KL(teacher || student) on answer tokens"
                     if teacher is not None else "SFT cross-entropy on answer tokens + end-of-turn"),
            "resumed_from": Path(resume_from).name if resume_from else None,
            "versions": {"trl": trl.__version__, "peft": peft.__version__,
                         "transformers": transformers.__version__, "torch": torch.__version__}}


def _logged(trainer: Any) -> tuple[list[float], list[float], float]:
    """(loss every logging window, mean distillation KL per window, final loss) of a finished run."""
    log = trainer.state.log_history
    losses = [float(e["loss"]) for e in log if "loss" in e]
    windows: dict[int, list[float]] = {}
    for step, value in getattr(trainer, "kl_log", []):
        windows.setdefault(step // trainer.args.logging_steps, []).append(value)
    kl = [sum(v) / len(v) for _, v in sorted(windows.items())]
    final = losses[-1] if losses else float(log[-1].get("train_loss", float("nan"))) if log else float("nan")
    return losses, kl, final


def holdout_split(records: Sequence[Record], share: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(training, held-out) records: ``share`` of each domain (at most 64 in all, none when
    fewer than 20 records are given), drawn with ``seed``."""
    import random
    n_out = min(64, int(len(records) * share)) if len(records) >= 20 else 0
    if n_out == 0:
        return list(records), []
    rng = random.Random(seed)
    by_domain: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_domain.setdefault(r.domain, []).append(i)
    picked: set[int] = set()
    for idx in by_domain.values():  # proportional per domain, at least one of each
        picked.update(rng.sample(idx, max(1, round(n_out * len(idx) / len(records)))))
    return [r for i, r in enumerate(records) if i not in picked], [r for i, r in enumerate(records) if i in picked]


@torch.no_grad()
def domain_nll(model: nn.Module, processor: Any, records: Sequence[Record], batch_size: int = 8) -> dict[str, float]:
    """Mean teacher-forced answer NLL (nats per answer token) per domain."""
    from depthprune.data.records import batches
    from depthprune.evaluation.generation import answer_nll
    was_training = model.training
    model.eval()
    values: dict[str, list[float]] = {}
    for chunk in batches(records, batch_size):
        for r, (nll, _) in zip(chunk, answer_nll(model, processor, chunk)):
            values.setdefault(r.domain, []).append(nll)
    model.train(was_training)
    return {d: round(math.fsum(v) / len(v), 4) for d, v in sorted(values.items())}


def heal_model(model: nn.Module, processor: Any, records: Sequence[Record], config: HealConfig, *,
               teacher: nn.Module | None = None, removed_layers: list[int] | None = None,
               files: TrainingFiles = TrainingFiles(), progress: bool = True) -> HealStats:
    """Fine-tune `model` IN PLACE (LoRA merged back before returning, so the result is a plain
    model with the same architecture) on `records` (depthprune.data.records.Record list).

    ``config.holdout`` of the records are held out to measure the answer NLL per domain before
    and after (``HealStats.heldout``). ``teacher``: the unpruned model for logit distillation
    (same tokenizer). ``removed_layers``: the layers pruned away (original 0-based numbering),
    needed by ``neighbours`` / ``interleaved``. ``files``: where the TRL checkpoints and the
    log go and whether to resume (:class:`~depthprune.healing.recipe.TrainingFiles`); the
    terminal shows one progress bar with the loss (``progress``). Returns :class:`HealStats`. Raises HealError / DataError for unusable
    inputs, before any training.
    """
    import tempfile
    _check_inputs(model, processor, records, config, teacher, removed_layers)
    train, heldout = holdout_split(records, config.holdout, config.seed)
    before = domain_nll(model, processor, heldout) if heldout else None
    with contextlib.ExitStack() as stack:
        work_dir = Path(files.work_dir if files.work_dir is not None else
                        stack.enter_context(tempfile.TemporaryDirectory(prefix="depthprune-heal-")))
        work_dir.mkdir(parents=True, exist_ok=True)
        resume_from = _resume_point(work_dir, files.resume)
        clock = TimeBudget(config.time_budget, config.warmup_ratio) if config.time_budget is not None else None
        log_file = Path(files.log_file) if files.log_file is not None else work_dir / LOG_NAME
        log = TrainingLog(log_file, progress, clock=clock)
        args = _sft_config(config, work_dir, max_steps_for(config, len(train)))
        was_training = model.training
        trainer, trained = _trainer(model, processor, train, config, args, teacher, removed_layers, log)
        if teacher is not None:
            teacher.eval().requires_grad_(False).to(trainer.args.device)
        n_trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume_from)
        seconds = time.perf_counter() - started
        if config.mode == "lora" and trainer.model.merge_and_unload() is not model:
            raise RuntimeError("peft returned a new model object; healing must happen in place")
        for param in model.parameters():
            param.requires_grad_(True)
        model.train(was_training)
        losses, kl, final = _logged(trainer)
        return HealStats(steps=trainer.state.global_step, seconds=round(seconds, 2), final_loss=final,
                         losses=losses, data_fingerprint=data_fingerprint(records),
                         recipe=_recipe_record(model, config, trainer, trained, n_trained, len(train), teacher,
                                               resume_from),
                         kl=kl, heldout=None if before is None else {
                             "n": len(heldout), "before": before, "after": domain_nll(model, processor, heldout)})
