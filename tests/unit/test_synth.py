"""The synthetic two-domain benchmark: deterministic, disjoint splits, loadable records."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"

from depthprune.data.records import load_records  # noqa: E402
from depthprune.data.synth import TEMPLATES, held_out, synthesize  # noqa: E402

SIZES = dict(n_train=300, n_calib=40, n_eval=120)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict[str, Path]:
    return synthesize(tmp_path_factory.mktemp("synth") / "data", seed=3, **SIZES)


def test_same_seed_same_bytes(bench, tmp_path):
    again = synthesize(tmp_path / "again", seed=3, **SIZES)
    assert _tree_bytes(bench["train"].parent) == _tree_bytes(again["train"].parent)
    other = synthesize(tmp_path / "other", seed=4, **SIZES)
    assert (other["eval"].read_bytes() != bench["eval"].read_bytes())


def test_held_out_splits_do_not_depend_on_train_size(bench, tmp_path):
    small = synthesize(tmp_path / "small", seed=3, n_train=0, n_calib=SIZES["n_calib"],
                       n_eval=SIZES["n_eval"])
    assert set(small) == {"calib", "eval"}
    for split in ("calib", "eval"):
        assert small[split].read_bytes() == bench[split].read_bytes()


def _keys(path: Path) -> list[tuple[str, str]]:
    keys = []
    for rec in load_records(path, require_answer=True):
        pixels = b"".join(Image.open(p).convert("RGB").tobytes() for p in rec.images)
        keys.append((rec.question, hashlib.sha256(pixels).hexdigest() if rec.images else ""))
    return keys


def test_splits_disjoint_and_without_repeats(bench):
    keys = {split: _keys(path) for split, path in bench.items()}
    for split, ks in keys.items():
        assert len(ks) == len(set(ks)), f"{split} repeats a (question, image) pair"
    assert not set(keys["train"]) & set(keys["eval"])
    assert not set(keys["train"]) & set(keys["calib"])
    assert not set(keys["calib"]) & set(keys["eval"])


def test_records_load_with_both_domains_and_text_only(bench):
    for split, path in bench.items():
        records = load_records(path, require_answer=True)
        assert len(records) == SIZES[f"n_{split}"]
        assert {r.domain for r in records} == {"math", "general"}
        for domain in ("math", "general"):
            mine = [r for r in records if r.domain == domain]
            assert any(not r.images for r in mine), f"{split}/{domain}: no text-only record"
            assert any(r.images for r in mine)
        for r in records:
            assert len(r.images) <= 1 and r.answer.strip()
            if r.domain == "math":
                assert r.answer.lstrip("-").isdigit(), r
            else:  # general never shows or asks for a digit: no reading-and-arithmetic path
                assert not any(ch.isdigit() for ch in r.answer + r.question), r
    raw = [json.loads(line) for line in bench["eval"].read_text().splitlines()]
    assert set(raw[0]) >= {"id", "domain", "image", "question", "answer"}
    assert not Path(next(r["image"] for r in raw if r["image"])).is_absolute()


def test_every_template_is_used(tmp_path):
    paths = synthesize(tmp_path / "d", seed=0, n_train=0, n_calib=0, n_eval=400)
    raw = [json.loads(line) for line in paths["eval"].read_text().splitlines()]
    used = {(r["domain"], r["template"]) for r in raw}
    assert used == {(d, t[0]) for d, ts in TEMPLATES.items() for t in ts}


def test_refuses_non_empty_dir_and_accepts_empty(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="busy.*new path"):
        synthesize(busy, n_train=2, n_calib=2, n_eval=2)
    assert [p.name for p in busy.iterdir()] == ["x.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert set(synthesize(empty, n_train=2, n_calib=2, n_eval=2)) == {"train", "calib", "eval"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary dir left over"


def test_held_out_operand_combinations(bench):
    """Train never holds an operand combination that calib or eval ask about (any seed)."""
    counted = 0
    for split, path in bench.items():
        for raw in map(json.loads, path.read_text().splitlines()):
            if "operands" in raw:
                counted += 1
                combo = tuple(raw["operands"])
                assert held_out(raw["template"], combo) == (split != "train"), raw
    assert counted > 50
    add2 = [json.loads(line) for line in bench["eval"].read_text().splitlines()]
    add2 = [r for r in add2 if r["template"] == "add2"]
    assert add2 and all(int(r["answer"]) == sum(r["operands"]) for r in add2)


def test_held_out_share_is_about_a_fifth():
    combos = [(a, b, c) for a in range(10) for b in range(10) for c in range(10)]
    share = sum(held_out("sum3", c) for c in combos) / len(combos)
    assert 0.15 < share < 0.25
