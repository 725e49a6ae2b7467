"""``depthprune data lmms-task``: answered JSONL records as a local lmms-eval task directory
(a ``datasets.save_to_disk`` dataset, depthprune's scoring rules, one task YAML per domain)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depthprune.evaluation.lmms import TASKS_DIR, LmmsError
from depthprune.outputs import atomic_dir, check_output, inputs_of


def _safe(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_").lower() or "x"


def _dataset(rows: list[dict], features: Any, fingerprint: str) -> Any:
    """A datasets.Dataset of ``rows``, built from an Arrow table with a given fingerprint:
    ``Dataset.from_list`` would hash the whole table (slow for images, and it fails with
    some dill/pyarrow pairs); the records' fingerprint identifies the content already."""
    import datasets
    import pyarrow as pa
    batch = features.encode_batch({k: [r[k] for r in rows] for k in features})
    table = pa.Table.from_pydict(batch, schema=features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=fingerprint)


def write_task(data: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike,
               name: str = "depthprune_local", max_new_tokens: int = 16, overwrite: bool = False) -> list[str]:
    """Turn answered JSONL records into a local lmms-eval task directory (for ``--include-path``).

    Writes ``out_dir/dataset`` (``datasets.save_to_disk``, one split per domain, images
    embedded as PNG bytes), ``utils.py`` (prompt = the question, scoring = depthprune's rules)
    and one task YAML per domain, ``{name}_{domain}``, plus a group ``{name}`` of them all.
    Returns the task names (the group first). Records must use ``question`` (not ``messages``).
    """
    import datasets
    import yaml

    from depthprune.data.records import DataError, data_fingerprint, load_records
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    out = check_output(out_dir, overwrite, kind="dir", inputs=inputs_of(data=paths))
    records = load_records(paths, require_answer=True)
    bad = next((r for r in records if r.messages is not None), None)
    if bad is not None:
        raise DataError(f"{bad.source}: lmms-task needs 'question' records (the task prompt is the question "
                        "text); rewrite 'messages' as 'question' + 'image'")
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise LmmsError(f"--name {name!r}: use letters, digits and underscores (a task name)")
    features = datasets.Features({"id": datasets.Value("string"), "domain": datasets.Value("string"),
                                  "question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "choices": datasets.Sequence(datasets.Value("string")),
                                  "images": datasets.Sequence(datasets.Image())})
    splits: dict[str, list[dict]] = {}
    for r in records:
        choices = r.extra.get("choices") or []
        if isinstance(choices, dict):
            choices = [choices[k] for k in sorted(choices)]
        splits.setdefault(_safe(r.domain), []).append({
            "id": r.id, "domain": r.domain, "question": r.question, "answer": str(r.answer),
            "choices": [str(c) for c in choices],
            "images": [{"bytes": Path(p).read_bytes(), "path": None} for p in r.images]})
    domains = {_safe(r.domain): r.domain for r in records}
    fingerprint = data_fingerprint(records)
    with atomic_dir(out) as tmp:
        ds = datasets.DatasetDict({s: _dataset(rows, features, f"{fingerprint}-{s}") for s, rows in splits.items()})
        ds.save_to_disk(str(tmp / "dataset"))
        shutil.copyfile(TASKS_DIR / "utils.py", tmp / "utils.py")
        tasks = []
        for split, domain in domains.items():
            task = f"{name}_{split}"
            config = {
                "task": task, "dataset_path": str((out / "dataset").resolve()),
                "dataset_kwargs": {"load_from_disk": True}, "test_split": split,
                "output_type": "generate_until",
                "doc_to_visual": "!function utils.doc_to_visual", "doc_to_text": "!function utils.doc_to_text",
                "doc_to_target": "!function utils.doc_to_target",
                "generation_kwargs": {"max_new_tokens": max_new_tokens, "temperature": 0, "do_sample": False},
                "process_results": "!function utils.process_results",
                "metric_list": [{"metric": "accuracy", "aggregation": "mean", "higher_is_better": True}],
                "metadata": {"domain": domain, "version": 1,
                             "source": [str(Path(p).resolve()) for p in paths]},
            }
            text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
            # lmms-eval resolves functions through the `!function` tag, which must stay unquoted
            text = re.sub(r"'(!function [\w.]+)'", r"\1", text)
            (tmp / f"{task}.yaml").write_text(text, encoding="utf-8")
            tasks.append(task)
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump({"group": name, "task": tasks}, sort_keys=False))
    return [name, *tasks]
