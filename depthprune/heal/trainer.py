"""The pieces of healing that talk to TRL / peft: training batches with answer-only labels,
what each mode trains, and the SFT trainer with an optional distillation term.
See :mod:`depthprune.heal.healing` for the recipe and the public API."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthprune.data.records import DataError, Record, encode
from depthprune.evaluate.generation import _answer_span
from depthprune.models.architectures import find_decoder_layers

#: Linear layers LoRA adapts, matched by name inside the language decoder's layers only.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class HealError(ValueError):
    """A healing request cannot be carried out; the message names the input and the fix."""


# ----------------------------------------------------------------------------- batches
def _label_text(full: str, end: int) -> int:
    """End of the supervised span: the answer plus the template's end-of-turn marker after it
    (e.g. ``<|im_end|>``), without trailing whitespace (the template's newline is not taught)."""
    return max(end, len(full.rstrip()))


def training_batch(processor: Any, records: Sequence[Record]) -> dict[str, torch.Tensor]:
    """Tokenise answered records into one left-padded batch with ``labels``: the token ids on
    the answer and its end-of-turn marker, -100 everywhere else (prompt, image, padding)."""
    spans = [_answer_span(processor, r) for r in records]
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


def _trainable_prefixes(model: nn.Module, mode: str, removed: Sequence[int] | None) -> list[str]:
    """Parameter-name prefixes trained in ``full`` / ``neighbours`` mode."""
    path, layers = find_decoder_layers(model)
    if mode == "full":
        norm = _final_norm(model, path)
        return [f"{path}."] + ([f"{norm}."] if norm else [])
    if not removed:
        raise HealError("neighbours mode needs the removed layers; this model has none recorded. "
                        "Heal a pruned checkpoint (with pruning.json) or use --mode lora/full")
    picked = neighbour_layers(removed, len(layers) + len(set(removed)))
    return [f"{path}.{i}." for i in picked]


def lora_target_regex(model: nn.Module) -> str:
    """peft ``target_modules`` regex: the projection linears of the language decoder's layers
    (full module names, so the vision tower's ``q_proj``-like modules never match)."""
    path, _ = find_decoder_layers(model)
    return rf"{re.escape(path)}\.\d+\.(?:.*\.)?(?:{'|'.join(LORA_TARGETS)})"


def _freeze_for(model: nn.Module, mode: str, removed: Sequence[int] | None) -> list[str]:
    """Set ``requires_grad`` for full / neighbours mode; returns the trained parameter names."""
    prefixes = _trainable_prefixes(model, mode, removed)
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(tuple(prefixes)))
        if param.requires_grad:
            names.append(name)
    return names


# ----------------------------------------------------------------------------- training
def _sft_trainer_class() -> type:
    from trl import SFTTrainer

    class DistillSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss mixes in the KL to a frozen teacher on the supervised tokens."""

        def __init__(self, *args: Any, teacher: nn.Module | None = None, distill_weight: float = 0.0,
                     temperature: float = 1.0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.teacher, self.distill_weight, self.temperature = teacher, distill_weight, temperature
            self.kl_log: list[tuple[int, float]] = []

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


def _checkpoints(work_dir: Path) -> list[Path]:
    return sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                  if p.name.split("-")[-1].isdigit() else -1)


def _trained_layers(model: nn.Module, names: Sequence[str]) -> list[int]:
    """Current 0-based indices of decoder layers with a trained parameter."""
    path, _ = find_decoder_layers(model)
    pattern = re.compile(rf"(?:^|\.){re.escape(path)}\.(\d+)\.")
    return sorted({int(m.group(1)) for n in names if (m := pattern.search(n))})
