"""The one output guard (depthprune.outputs.check_output with the run's Inputs): no command may
write an output equal to, inside or containing what it reads — the model, a data file, a
scores pair, a study file — nor a directory output among the folders of data and study files,
--overwrite or not. Each case is one line `error: ...`, exit 2, before any work, with every
input byte-identical and nothing left behind (these commands destroyed inputs before)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.helpers.cli import assert_user_error, run, tree_hash
from tests.helpers.tiny_models import save_tiny


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return save_tiny("qwen3", tmp_path_factory.mktemp("guard") / "model")


@pytest.fixture()
def ws(tmp_path, llm, calib_dir):
    """A model, a data folder with its JSONL and images, and a scores pair, all copies."""
    shutil.copytree(llm, tmp_path / "model")
    shutil.copytree(calib_dir, tmp_path / "data")
    return tmp_path


def _hashes(ws):
    return {name: tree_hash(ws / name) for name in ("model", "data")}


@pytest.mark.parametrize("out", ["model", "data", "model/healed", "data/healed", "."])
def test_heal_never_writes_onto_into_or_around_its_inputs(ws, out):
    before = _hashes(ws)
    res = run("heal", ws / "model", "--data", ws / "data" / "text.jsonl", "--out", ws / out, "--steps", "1",
              "--overwrite")
    assert_user_error(res, "--out", "writing there could destroy it", roots=(ws,))
    assert _hashes(ws) == before
    assert not list(ws.rglob("*.heal-work"))  # refused before training: no work directory anywhere


def test_heal_refuses_a_teacher_inside_the_output(ws):
    out = ws / "out"
    shutil.copytree(ws / "model", out / "teacher")
    res = run("heal", ws / "model", "--data", ws / "data" / "text.jsonl", "--out", out, "--teacher", out / "teacher",
              "--steps", "1", "--overwrite")
    assert_user_error(res, "contains the input", roots=(ws,))
    assert (out / "teacher" / "config.json").is_file()


def test_diagnose_and_prune_count_the_scores_tensors_as_an_input(ws):
    scores = ws / "s" / "scores.json"
    res = run("score", ws / "model", "--data", ws / "data" / "text.jsonl", "--out", scores, "--ablation",
              "--batch-size", "8")
    assert res.exit_code == 0, res.output
    before = tree_hash(ws / "s")
    assert_user_error(run("diagnose", scores, "--out", ws / "s" / "scores.safetensors", "--overwrite"),
                      "is the input", roots=(ws,))
    assert_user_error(run("prune", ws / "model", "--scores", scores, "--method", "block-influence", "--budget", "1",
                          "--out", ws / "s", "--overwrite"), "contains the input", roots=(ws,))
    assert tree_hash(ws / "s") == before


def test_lmms_task_never_replaces_the_folder_of_its_data(ws):
    pytest.importorskip("datasets")
    before = _hashes(ws)
    res = run("data", "lmms-task", "--data", ws / "data" / "calib.jsonl", "--out", ws / "data", "--overwrite")
    assert_user_error(res, "contains the input", roots=(ws,))
    assert _hashes(ws) == before


@pytest.mark.parametrize("out", ["data", "data/run", ".", "model", "model/run", "study", "study/run"])
def test_sweep_never_writes_among_its_inputs(ws, out):
    (ws / "study").mkdir()
    study = {"model": "../model", "dtype": "float32", "calibration": {"data": "../data/text.jsonl"},
             "eval": [{"data": "../data/text.jsonl", "name": "e"}], "methods": ["last"], "budgets": [1]}
    (ws / "study" / "s.yaml").write_text(yaml.safe_dump(study))
    before = _hashes(ws) | {"study": tree_hash(ws / "study")}
    assert_user_error(run("sweep", ws / "study" / "s.yaml", "--out", ws / out), "--out", roots=(ws,))
    assert _hashes(ws) | {"study": tree_hash(ws / "study")} == before
    assert not list(ws.rglob("results.sqlite"))


def test_sweep_with_an_unusable_device_leaves_no_run_directory(ws):
    (ws / "study").mkdir()
    study = {"model": "../model", "device": "banana", "calibration": {"data": "../data/text.jsonl"},
             "eval": [{"data": "../data/text.jsonl"}], "methods": ["last"], "budgets": [1]}
    (ws / "study" / "s.yaml").write_text(yaml.safe_dump(study))
    assert_user_error(run("sweep", ws / "study" / "s.yaml", "--out", ws / "runs" / "r"), "banana", roots=(ws,))
    assert not (ws / "runs").exists()


def test_the_demo_run_directory_owns_its_data(tmp_path):
    """The one exception: a run directory may hold its own data (the demo writes RUN/data)."""
    from depthprune.outputs import check_output, inputs_of
    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "calib.jsonl").write_text(json.dumps({"id": "a"}) + "\n")
    reads = inputs_of(data=[run_dir / "data" / "calib.jsonl"])
    with pytest.raises(ValueError, match="contains the input"):
        check_output(run_dir, True, kind="dir", inputs=reads)
    check_output(run_dir, True, kind="dir", inputs=inputs_of(data=[run_dir / "data" / "calib.jsonl"],
                                                             owned=[run_dir / "data"]))
