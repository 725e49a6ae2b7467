"""Shared data for the ablation / SLEB tests."""

from __future__ import annotations

import json
from pathlib import Path


def long_text(path: Path) -> Path:
    """Two-domain text records of about 20 prompt tokens (the tiny models' sliding window is 8)."""
    # digits and operators: the tokens the reloaded tiny word-level tokenizer keeps apart
    questions = {"math": "3 + 4 * 2 - 1 = ( 5 + 6 ) * 7 ?", "general": "9 8 7 , 6 5 4 , 3 2 1 : 0 ?"}
    answers = {"math": "1 1", "general": "4 2"}
    rows = [{"id": f"{d}{i}", "domain": d, "question": f"{i} {questions[d]}" + " 1" * i, "answer": answers[d]}
            for i in range(4) for d in questions]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
