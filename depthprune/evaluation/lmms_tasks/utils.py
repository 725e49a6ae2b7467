"""lmms-eval task functions for records in depthprune's JSONL format (see ``depthprune.evaluation.lmms``).

``depthprune data lmms-task`` copies this file next to the task YAML files it writes, where
lmms-eval's ``!function utils.NAME`` finds it. Scoring is depthprune's own rule-based
:func:`depthprune.evaluation.answers.score_answer`, so a sample is correct under lmms-eval exactly
when the built-in evaluator would count the same output correct.
"""

from __future__ import annotations

from typing import Any


def doc_to_visual(doc: dict) -> list:
    """The record's images (PIL, RGB), in prompt order; [] for a text-only record."""
    return [im.convert("RGB") for im in doc.get("images") or []]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The record's question, unchanged (the model's chat template adds the rest)."""
    return doc["question"]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def process_results(doc: dict, results: list[str]) -> dict[str, Any]:
    """``accuracy``: 1.0 if depthprune's rules find the reference in the output, else 0.0."""
    from depthprune.evaluation.answers import score_answer
    return {"accuracy": float(score_answer(results[0], doc["answer"], doc.get("choices") or None))}
