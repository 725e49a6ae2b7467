"""The lmms-eval bridge without running a model: result conversion into depthprune's metrics
format, model-family choice, local task writing, and the CLI's input errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.evaluation.generation import EvalResult, wilson_interval
from depthprune.evaluation.lmms import LmmsError, convert_results, family_for, image_limits
from depthprune.toy import MODEL_DIR


def _sample(doc_id, correct, metric="accuracy", doc=None, output="x"):
    return {"doc_id": doc_id, "doc": doc if doc is not None else {"question": f"q{doc_id}"},
            "target": "7", "arguments": [f"q{doc_id}", {"max_new_tokens": 8}],
            "resps": [[output]], "filtered_resps": [output], "token_counts": [None], "doc_hash": "h",
            metric: correct}


def lmms_results() -> dict:
    """The shape `lmms_eval.evaluator.simple_evaluate(..., log_samples=True)` returns."""
    return {
        "results": {"grp": {"alias": "grp", "accuracy,none": 0.5},
                    "t_math": {"alias": "t_math", "accuracy,none": 2 / 3},
                    "t_mc": {"alias": "t_mc", "average,none": 50.0},
                    "t_anls": {"alias": "t_anls", "anls,none": 0.75}},
        "configs": {"t_math": {"metric_list": [{"metric": "accuracy"}], "metadata": {"domain": "math"}},
                    "t_mc": {"metric_list": [{"metric": "average"}]},
                    "t_anls": {"metric_list": [{"metric": "anls"}]}},
        "samples": {
            "t_math": [_sample(0, 1.0, doc={"id": "r0", "question": "2+5?"}, output="The answer is 7."),
                       _sample(1, 0.0), _sample(2, True)],
            # judge-style dict metrics holding a 0/1 score (e.g. mmstar's "average")
            "t_mc": [_sample(0, {"category": "a", "score": 1}, "average"),
                     _sample(1, {"category": "b", "score": 0}, "average")],
            "t_anls": [_sample(0, 0.5, "anls"), _sample(1, 1.0, "anls")],  # not 0/1: aggregate only
        },
    }


def test_convert_results_gives_the_builtin_metrics_format():
    predictions, extras = convert_results(lmms_results())
    assert [p.id for p in predictions] == ["t_math/r0", "t_math/1", "t_math/2", "t_mc/0", "t_mc/1"]
    first = predictions[0]
    assert (first.domain, first.question, first.reference, first.output, first.extracted, first.correct) == \
        ("math", "2+5?", "7", "The answer is 7.", "7", True)
    metrics = EvalResult(predictions, 1.0).to_dict()
    assert set(metrics["domains"]) == {"math", "t_mc"}  # metadata.domain, else the task name
    math = metrics["domains"]["math"]
    assert (math["n"], math["correct"], math["answer_nll"]) == (3, 2, None)
    assert math["ci95"] == list(wilson_interval(2, 3))
    assert metrics["domains"]["t_mc"]["accuracy"] == 0.5
    assert extras["t_anls"]["per_sample"] is False and extras["t_anls"]["aggregate"]["anls,none"] == 0.75
    assert extras["grp"]["per_sample"] is False and extras["t_math"]["metric"] == "accuracy"
    json.dumps(extras)  # goes into metrics.json


def test_convert_results_ignores_logged_fields_that_are_not_metrics():
    results = {"results": {"t": {}}, "configs": {"t": {}}, "samples": {"t": [
        {"doc_id": 0, "doc": {}, "target": "a", "resps": [["a"]], "filtered_resps": ["a"]}]}}
    predictions, extras = convert_results(results)
    assert predictions == [] and extras["t"]["metric"] is None and not extras["t"]["per_sample"]


def test_family_from_the_checkpoint_config(tmp_path):
    from transformers import LlamaConfig
    assert family_for(MODEL_DIR) == "depthprune_qwen3_vl"
    assert family_for(MODEL_DIR, "qwen2_5_vl") == "qwen2_5_vl"
    LlamaConfig(num_hidden_layers=2).save_pretrained(tmp_path)
    with pytest.raises(LmmsError, match="model_type 'llama'.*--lmms-model"):
        family_for(tmp_path)
    # the toy processor's own image limits (64x64 images stay 64x64), capped like lmms-eval
    assert image_limits(MODEL_DIR) == {"min_pixels": 1024, "max_pixels": 16384}
    # a sweep's in-memory model: the same limits from the loaded processor's SizeDict
    from transformers import AutoProcessor

    from depthprune.evaluation.lmms import _limits
    assert _limits(AutoProcessor.from_pretrained(MODEL_DIR).image_processor.size) == image_limits(MODEL_DIR)


def test_eval_cli_input_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "toy", "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 2 and "exactly one of --data FILE or --lmms-eval TASKS" in res.output
    res = runner.invoke(app, ["eval", "toy", "--out", str(tmp_path / "m.json"), "--lmms-eval", "x",
                              "--include-path", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "--include-path" in res.output and "not a directory" in res.output


def test_write_task_round_trips_records(calib_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("yaml")
    from depthprune.data.records import load_records
    from depthprune.evaluation.lmms_task import write_task
    tasks = write_task(calib_dir / "calib.jsonl", tmp_path / "task", name="toyq", max_new_tokens=8)
    assert tasks == ["toyq", "toyq_general", "toyq_math"]
    ds = datasets.load_from_disk(str(tmp_path / "task" / "dataset"))
    records = load_records(calib_dir / "calib.jsonl")
    assert sorted(ds) == ["general", "math"] and sum(len(ds[s]) for s in ds) == len(records)
    by_id = {row["id"]: row for s in ds for row in ds[s]}
    for r in records:
        row = by_id[r.id]
        assert (row["question"], row["answer"], row["domain"]) == (r.question, r.answer, r.domain)
        assert [im.tobytes() for im in row["images"]] == \
            [__import__("PIL.Image").Image.open(p).tobytes() for p in r.images]
    text = (tmp_path / "task" / "toyq_math.yaml").read_text()
    assert "doc_to_text: !function utils.doc_to_text" in text and "domain: math" in text
    with pytest.raises(Exception, match="not empty"):
        write_task(calib_dir / "calib.jsonl", tmp_path / "task", name="toyq")
