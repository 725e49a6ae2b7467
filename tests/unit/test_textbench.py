"""The text benchmark (`depthprune data text`): deterministic, disjoint splits, checkable answers."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.data.records import load_records
from depthprune.data.textbench import build_splits, write_text_benchmark
from depthprune.evaluation.answers import score_answer


# ---------------------------------------------------------------------- text benchmark
def test_text_benchmark_is_deterministic_disjoint_and_checkable(tmp_path):
    splits = build_splits(seed=3, n_calib=10, n_eval=30)
    assert [len(splits[s]) for s in ("calib", "eval")] == [20, 60]
    for split in splits.values():
        assert {r["domain"] for r in split} == {"math", "general"}
    questions = {s: {r["question"] for r in splits[s]} for s in splits}
    assert not questions["calib"] & questions["eval"]
    assert len(questions["eval"]) == 60  # no repeated question inside a split either
    for r in splits["eval"]:  # the reference, and a sentence giving it, are judged correct
        assert score_answer(r["answer"], r["answer"]) and score_answer(f"The answer is {r['answer']}.", r["answer"])
    math_wrong = next(r for r in splits["eval"] if r["domain"] == "math")
    assert not score_answer(str(int(math_wrong["answer"]) + 1), math_wrong["answer"])
    a = write_text_benchmark(tmp_path / "a", seed=3, n_calib=10, n_eval=30)
    b = write_text_benchmark(tmp_path / "b", seed=3, n_calib=10, n_eval=30)
    assert a["eval"].read_bytes() == b["eval"].read_bytes()
    assert build_splits(seed=4, n_calib=10, n_eval=30) != splits
    with pytest.raises(FileExistsError):
        write_text_benchmark(tmp_path / "a", seed=3)
    with pytest.raises(ValueError, match="distinct general questions"):
        build_splits(n_calib=100, n_eval=100)


def test_text_train_split_is_disjoint_and_leaves_calib_eval_unchanged(tmp_path):
    plain = build_splits(seed=2, n_calib=40, n_eval=100)
    with_train = build_splits(seed=2, n_calib=40, n_eval=100, n_train=80)
    assert with_train["calib"] == plain["calib"] and with_train["eval"] == plain["eval"]
    train = with_train["train"]
    assert [r["domain"] for r in train].count("general") == 80 == [r["domain"] for r in train].count("math")
    held = {r["question"] for split in ("calib", "eval") for r in plain[split]}
    assert not held & {r["question"] for r in train}
    assert len({r["question"] for r in train}) == len(train)
    past = [r for r in train if r["kind"] == "past"]
    assert past and all(score_answer(r["answer"], r["answer"]) for r in past)
    with pytest.raises(ValueError, match="--n-train 500 exceeds"):
        build_splits(n_train=500)
    paths = write_text_benchmark(tmp_path / "t", seed=2, n_calib=4, n_eval=6, n_train=5)
    assert len(load_records(paths["train"], require_answer=True)) == 10


def test_cli_data_text(tmp_path):
    result = CliRunner().invoke(app, ["data", "text", "--out", str(tmp_path / "t"), "--seed", "1",
                                      "--n-calib", "4", "--n-eval", "6"])
    assert result.exit_code == 0, result.output
    records = load_records(tmp_path / "t" / "eval.jsonl", require_answer=True)
    assert len(records) == 12 and records[0].extra["kind"]
    result = CliRunner().invoke(app, ["data", "text", "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and "--overwrite" in result.output
