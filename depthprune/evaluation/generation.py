"""Evaluate a (pruned) model on an answered JSONL: greedy generation scored by rules, plus the
teacher-forced negative log-likelihood of the reference answer.

The answer rules are in :mod:`depthprune.evaluation.answers`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthprune import __version__
from depthprune.data.records import (
    DataError,
    Record,
    batches,
    data_fingerprint,
    encode,
    kept_cache,
    load_records,
    render_prompt,
)
from depthprune.evaluation.answers import extract_answer, score_answer
from depthprune.models.architectures import input_device
from depthprune.models.loading import check_model, load_spec, resolve_model_id
from depthprune.options import ModelSpec
from depthprune.outputs import atomic_files, check_output, inputs_of
from depthprune.settings import progress as progress_bar
from depthprune.statistics import floor_warning, hidden_collapse, near_floor, retention


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (default 95%) of a proportion ``correct/n``, as fractions in [0, 1].
    Unlike the normal approximation it stays inside [0, 1] and is honest at 0% and 100%."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exact bounds at 0% and 100%, where rounding would leave e.g. 5.6e-17
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


# ----------------------------------------------------------------------------- model evaluation
@dataclass(frozen=True)
class Prediction:
    """One sample's outcome. ``nll``: mean negative log-likelihood of the reference answer
    tokens, in nats/token; ``answer_tokens``: how many tokens it averages over."""

    id: str
    domain: str
    question: str
    reference: str
    output: str
    extracted: str
    correct: bool
    nll: float
    answer_tokens: int


@dataclass(frozen=True)
class DomainMetrics:
    """Accuracy (fraction), its 95% Wilson interval, and the mean over samples of the
    per-sample answer NLL (nats/token)."""

    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    answer_nll: float

    @classmethod
    def of(cls, predictions: Sequence[Prediction]) -> "DomainMetrics":
        correct = sum(p.correct for p in predictions)
        return cls(n=len(predictions), correct=correct, accuracy=correct / len(predictions),
                   ci95=wilson_interval(correct, len(predictions)),
                   answer_nll=math.fsum(p.nll for p in predictions) / len(predictions))


@dataclass
class EvalResult:
    """Every sample's prediction, in input order, and the wall-clock seconds they took."""

    predictions: list[Prediction]
    seconds: float

    @property
    def samples_per_second(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def domains(self) -> dict[str, DomainMetrics]:
        names = sorted({p.domain for p in self.predictions})
        return {d: DomainMetrics.of([p for p in self.predictions if p.domain == d]) for d in names}

    @property
    def overall(self) -> DomainMetrics:
        return DomainMetrics.of(self.predictions)

    def to_dict(self) -> dict:
        """The metrics as JSON-ready data (accuracy as a fraction, NLL in nats/token)."""
        return {"num_samples": len(self.predictions), "seconds": round(self.seconds, 3),
                "samples_per_second": round(self.samples_per_second, 3),
                "domains": {d: _json_metrics(m) for d, m in self.domains.items()},
                "overall": _json_metrics(self.overall)}


def finite_or_none(x: float | None) -> float | None:
    """``x``, or None when it is missing, NaN or infinite (JSON has no NaN/inf)."""
    return x if x is not None and math.isfinite(x) else None


def _json_metrics(m: DomainMetrics) -> dict:
    return dict(asdict(m), ci95=list(m.ci95), answer_nll=finite_or_none(m.answer_nll))


def _question_text(record: Record) -> str:
    if record.question is not None:
        return record.question
    return " ".join(p["text"] for m in record.messages if m["role"] == "user"
                    for p in m["content"] if p["type"] == "text")


def _image_features(model: nn.Module, batch: Any) -> Any:
    """``batch`` with its images as the vision tower's output (``mm_encoder_outputs``) instead of
    pixels, computed once per kept batch (:func:`depthprune.data.records.kept_encodings`): a sweep
    evaluates every plan on the same batches, and pruning, repair and healing never change the
    vision tower. Outside a kept block, or for a model without ``mm_encoder_outputs``, the batch
    as it is. The tower runs exactly as ``generate`` runs it, so the outputs are the same."""
    cache, key = kept_cache(), getattr(batch, "kept_images", None)
    encoder = getattr(getattr(model, "base_model", None), "get_image_features", None)
    if (cache is None or key is None or encoder is None or batch.get("pixel_values") is None
            or "mm_encoder_outputs" not in inspect.signature(model.forward).parameters):
        return batch
    arguments = {k: batch[k] for k in inspect.signature(encoder).parameters if k != "kwargs" and k in batch}
    # the tower's identity: a healed copy of the model has its own (with the same weights)
    features = cache.derived((key, "image features", id(encoder.__self__)),
                             lambda: encoder(**arguments, return_dict=True))
    out = {k: v for k, v in batch.items() if k != "pixel_values"}
    return out | {"mm_encoder_outputs": {"image": features}}


@torch.inference_mode()
def generate_outputs(model: nn.Module, processor: Any, records: Sequence[Record],
                     max_new_tokens: int) -> list[str]:
    """Greedy continuations of the records' prompts (one batch), new tokens only, decoded
    without special tokens."""
    tok = getattr(processor, "tokenizer", processor)
    batch = encode(processor, records).to(input_device(model))
    inputs = _image_features(model, batch)
    # Pure greedy whatever the checkpoint's sampling defaults: neutral values (not None)
    # silence transformers' "flags ignored" warning; repetition_penalty would alter argmax.
    out = model.generate(**inputs, do_sample=False, num_beams=1, temperature=1.0, top_p=1.0,
                         top_k=None, repetition_penalty=1.0, max_length=None,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


_SLOT = "DEPTHPRUNEANSWERSLOT"


def answer_span(processor: Any, record: Record) -> tuple[str, int, int]:
    """The rendered answered conversation (in the run's prompt format, see
    :func:`depthprune.data.prompt_format`) and the character span scored in it: the answer
    text and the spaces before it, located by rendering a placeholder answer (a search for
    the answer text could hit the question or the template, e.g. "end" in "<|im_end|>")."""
    full = render_prompt(processor, record, with_answer=True)
    slot = render_prompt(processor, dataclasses.replace(record, answer=_SLOT), with_answer=True)
    prefix, _, suffix = slot.partition(_SLOT)
    answer = full[len(prefix):len(full) - len(suffix)]
    if not (full.startswith(prefix) and full.endswith(suffix) and answer.strip()):
        raise DataError(f"{record.source}: the model's chat template does not render answers "
                        "verbatim, so the answer's tokens cannot be located for its NLL")
    # a space before the answer belongs to its first token in BPE/SentencePiece vocabularies
    # ("?" + " 7"); a template's newline stays in the context
    return full, len(prefix.rstrip(" ")), len(prefix) + len(answer.rstrip())


@torch.inference_mode()
def answer_nll(model: nn.Module, processor: Any, records: Sequence[Record]) -> list[tuple[float, int]]:
    """Teacher-forced ``(mean NLL in nats/token, number of answer tokens)`` per record (one batch).

    The conversation is rendered with the answer as the assistant turn; the scored tokens are
    the answer text's own tokens, conditioned on everything before them. The template's
    end-of-turn suffix (e.g. ``<|im_end|>``) is *not* scored: it differs between templates and
    would mix "knows when to stop" into "knows the answer"; plain (template-free) models score
    the same span, so NLLs compare across models.
    """
    spans = [answer_span(processor, r) for r in records]
    context = encode(processor, records, texts=[full[:start] for full, start, _ in spans])
    batch = encode(processor, records, texts=[full[:end] for full, _, end in spans])
    n_context, n_full = context["attention_mask"].sum(1), batch["attention_mask"].sum(1)
    n_answer = (n_full - n_context).tolist()
    for i, r in enumerate(records):  # left padding: real tokens are each row's last n
        ids, ctx = batch["input_ids"][i, -int(n_full[i]):], context["input_ids"][i, -int(n_context[i]):]
        if n_answer[i] < 1 or not torch.equal(ids[:len(ctx)], ctx):
            warnings.warn(f"{r.source}: the answer's tokens merge with the prompt's; its NLL "
                          "counts the last tokens of the sequence instead", stacklevel=2)
        n_answer[i] = max(n_answer[i], 1)
    keep = max(n_answer) + 1  # logits for the last `keep` positions are all we need
    kwargs = dict(_image_features(model, batch.to(input_device(model))), use_cache=False)
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = keep  # avoids a [batch, tokens, vocab] tensor on big vocabularies
    logits = model(**kwargs).logits[:, -keep:-1].float()
    targets = kwargs["input_ids"][:, -(keep - 1):]
    token_nll = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return [(token_nll[i, -n:].mean().item(), n) for i, n in enumerate(n_answer)]


def evaluate(model: nn.Module, processor: Any, records: Sequence[Record], batch_size: int = 8,
             max_new_tokens: int = 16, progress: bool = True) -> EvalResult:
    """Greedy-generate an answer for every record, score it against the record's answer and
    measure the answer's NLL. Returns an :class:`EvalResult` (predictions in input order).
    Raises DataError naming the record if one has no (or an empty) answer."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not records:
        raise ValueError("no records to evaluate")
    missing = next((r for r in records if r.answer is None or not str(r.answer).strip()), None)
    if missing is not None:  # before any generation: fail fast
        raise DataError(f"{missing.source}: record has no 'answer' or an empty one. "
                        "Evaluation needs a non-empty answer on every record")
    predictions: list[Prediction] = []
    started = time.perf_counter()
    bar = progress_bar(total=len(records), desc="eval", unit="sample", disable=not progress)
    for chunk in batches(records, batch_size):
        outputs = generate_outputs(model, processor, chunk, max_new_tokens)
        for r, output, (nll, n_tokens) in zip(chunk, outputs, answer_nll(model, processor, chunk)):
            predictions.append(Prediction(
                id=r.id, domain=r.domain, question=_question_text(r), reference=str(r.answer),
                output=output, extracted=extract_answer(output),
                correct=score_answer(output, str(r.answer), r.extra.get("choices")),
                nll=nll, answer_tokens=n_tokens))
        bar.update(len(chunk))
        bar.set_postfix(acc=f"{sum(p.correct for p in predictions) / len(predictions):.1%}")
    bar.close()
    return EvalResult(predictions, time.perf_counter() - started)


#: answered records per domain :func:`unpruned_accuracy` generates for (a floor check, not an evaluation)
FLOOR_RECORDS = 32


def unpruned_accuracy(model: nn.Module, processor: Any, records: Sequence[Record], domains: Sequence[str],
                      batch_size: int = 8) -> dict[str, tuple[int, int]]:
    """``domain -> (correct, n)`` of greedy answers on the first :data:`FLOOR_RECORDS` answered
    records of each of ``domains`` (a domain without answered records is left out)."""
    picked = [r for d in domains for r in [r for r in records if r.domain == d and r.answer][:FLOOR_RECORDS]]
    if not picked:
        return {}
    longest = max(len(str(r.answer)) for r in picked)
    result = evaluate(model, processor, picked, batch_size, max_new_tokens=min(32, 4 + longest), progress=False)
    out: dict[str, tuple[int, int]] = {}
    for p in result.predictions:
        right, n = out.get(p.domain, (0, 0))
        out[p.domain] = (right + int(p.correct), n + 1)
    return out


def warn_near_floor(accuracy: dict[str, tuple[int, int]], where: str) -> list[str]:
    """One ``warnings.warn`` line per domain of ``accuracy`` near the floor; returns those domains."""
    low = near_floor(accuracy)
    for d in low:
        warnings.warn(floor_warning(where, d, *accuracy[d]), stacklevel=2)
    return low


def prediction_lines(predictions: Sequence[Prediction]) -> list[str]:
    """One JSON line per prediction (NaN NLLs as null), the predictions file's format."""
    return [json.dumps(dict(asdict(p), nll=finite_or_none(p.nll)), ensure_ascii=False) for p in predictions]


def predictions_path(out: str | os.PathLike) -> Path:
    """Where the per-sample predictions go beside metrics file ``out``: metrics.predictions.jsonl."""
    return Path(out).with_suffix(".predictions.jsonl")


def load_baseline(metrics_file: str | os.PathLike, records: Sequence[Record]) -> dict[str, int]:
    """Per-sample correctness (id -> 1/0) of an earlier ``eval`` run (its metrics file, with the
    predictions beside it), which must cover every record of ``records``. DataError naming the
    file and the fix otherwise."""
    path = Path(metrics_file).expanduser()
    preds = predictions_path(path)
    if not path.is_file() or not preds.is_file():
        raise DataError(f"--baseline {path}: give the metrics file of `depthprune eval` on the unpruned model "
                        f"(with {preds.name} beside it)")
    try:
        rows = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines() if line.strip()]
        correct = {str(r["id"]): int(bool(r["correct"])) for r in rows}
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"--baseline {preds}: not a predictions file of `depthprune eval` ({err})") from None
    missing = [r.id for r in records if r.id not in correct]
    if missing:
        raise DataError(f"--baseline {path}: has no prediction for {len(missing)} of these records (e.g. id "
                        f"{missing[0]!r}); evaluate the unpruned model on the same --data")
    return correct


def retention_of(predictions: Sequence[Prediction], base: dict[str, int]) -> dict:
    """``{"retention": {domain: {"kept", "ci95"}}, "hidden_collapse": [domains], "floor_domains":
    [domains]}`` of these predictions against the baseline's per-sample correctness; a domain the
    baseline gets under 10% right is warned about (:func:`warn_near_floor`)."""
    by_domain: dict[str, tuple[list[int], list[int]]] = {}
    for p in predictions:
        b, m = by_domain.setdefault(p.domain, ([], []))
        b.append(base[p.id])
        m.append(int(p.correct))
    kept = {d: retention(b, m) for d, (b, m) in sorted(by_domain.items())}
    floor = warn_near_floor({d: (sum(b), len(b)) for d, (b, _) in by_domain.items()}, "--baseline")
    return {"floor_domains": floor, "retention": {d: {"kept": finite_or_none(k), "ci95": [finite_or_none(lo), finite_or_none(hi)]}
                          for d, (k, lo, hi) in kept.items()},
            "hidden_collapse": hidden_collapse({d: v[0] for d, v in kept.items()})}


def evaluate_path(model: ModelSpec, data_paths: str | os.PathLike | Sequence[str | os.PathLike],
                  out: str | os.PathLike, batch_size: int = 8, max_new_tokens: int = 16, *,
                  overwrite: bool = False, progress: bool = True, baseline: str | os.PathLike | None = None) -> dict:
    """Load the checkpoint of ``model`` (its :class:`~depthprune.options.ModelSpec`), evaluate it on the JSONL file(s) ``data_paths`` and write the
    metrics JSON ``out`` and the per-sample :func:`predictions_path` JSONL beside it.

    The model's ``prompt_format``: auto, chat or plain (:func:`depthprune.data.set_prompt_format`); the
    format used is recorded as ``prompt_format`` in the metrics. ``baseline``: the metrics file
    of the unpruned source evaluated on the same data; the metrics then hold ``retention`` (per
    domain, accuracy kept = this / baseline with a 95% bootstrap interval) and
    ``hidden_collapse`` (:func:`depthprune.statistics.hidden_collapse`).

    Returns the metrics dict that was written. Raises OutputError if an output exists and
    ``overwrite`` is False (also if one appeared during the run), DataError for a bad record,
    ModelError for a bad device or checkpoint; all of these before the model loads.
    """
    spec = ModelSpec.of(model)
    model_id = resolve_model_id(spec.id)
    out = Path(out).expanduser()
    paths = [data_paths] if isinstance(data_paths, (str, os.PathLike)) else list(data_paths)
    inputs = inputs_of(model=model_id, data=paths, files=[baseline, predictions_path(baseline) if baseline else None])
    if out.suffix != ".json":
        raise ValueError(f"--out {out}: the metrics file name must end in .json")
    for path in (out, predictions_path(out)):
        check_output(path, overwrite, kind="file", inputs=inputs)
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"--batch-size and --max-new-tokens must be >= 1, "
                         f"got {batch_size} and {max_new_tokens}")
    records = load_records(paths, require_answer=True)
    base = load_baseline(baseline, records) if baseline is not None else None
    check_model(spec)
    model, processor, used_format = load_spec(spec)
    result = evaluate(model, processor, records, batch_size, max_new_tokens, progress)
    import transformers
    metrics = {
        "model": str(model_id), "data_files": [str(p) for p in paths], "prompt_format": used_format,
        "data_fingerprint": data_fingerprint(records), "predictions_file": predictions_path(out).name,
        **result.to_dict(),
        "units": {"accuracy": "fraction correct", "ci95": "95% Wilson interval of accuracy",
                  "answer_nll": "mean over samples of the answer tokens' mean NLL, nats/token"},
        "settings": {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "decoding": "greedy",
                     "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                     "depthprune": __version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
    }
    if base is not None:
        metrics |= retention_of(result.predictions, base) | {"baseline": str(baseline)}
    lines = prediction_lines(result.predictions)
    text = json.dumps(metrics, indent=1, allow_nan=False) + "\n"
    # both or neither; the metrics file last, as the completion mark
    with atomic_files([predictions_path(out), out], overwrite) as (tmp_predictions, tmp_metrics):
        tmp_predictions.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp_metrics.write_text(text, encoding="utf-8")
    return metrics


