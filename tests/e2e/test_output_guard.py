"""The one output guard (depthprune.outputs.check_output with the run's Inputs): no command may
write an output equal to, inside or containing what it reads — the model, a data file or an
image its records name, a scores pair, a study file, a folder read as a whole — --overwrite or
not. Each case is one line `error: ...`, exit 2, before any work, with every input
byte-identical and nothing left behind (these commands destroyed inputs before). Everything
else is allowed: a run directory beside the study file, inside the project folder or inside the
data folder destroys nothing (the natural layout was refused before)."""

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


@pytest.mark.parametrize("out", ["model", "data", "model/healed", "data/imgs", "."])
def test_heal_never_writes_onto_into_or_around_its_inputs(ws, out):
    before = _hashes(ws)
    res = run("heal", ws / "model", "--data", ws / "data" / "calib.jsonl", "--out", ws / out, "--steps", "1",
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


@pytest.mark.parametrize("out", ["data", ".", "model", "model/run", "study", "study/s.yaml"])
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


@pytest.fixture()
def project(tmp_path, llm, calib_dir, monkeypatch):
    """A new user's project folder, with spaces in its name, as the working directory: the model,
    data/ (JSONL files and the images calib.jsonl names), study.yaml next to them (text records)
    and studies/x.yaml (the docs' layout) and vision.yaml (records with images)."""
    root = tmp_path / "my first project"
    shutil.copytree(llm, root / "model")
    shutil.copytree(calib_dir, root / "data")
    study = {"model": "model", "dtype": "float32", "batch_size": 4, "calibration": {"data": "data/text.jsonl"},
             "eval": [{"data": "data/text.jsonl", "name": "e"}], "methods": ["last"], "budgets": [1],
             "metrics": {"max_new_tokens": 2}}
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    (root / "vision.yaml").write_text(yaml.safe_dump(study | {"calibration": {"data": "data/calib.jsonl"}}))
    (root / "studies").mkdir()
    (root / "studies" / "x.yaml").write_text(yaml.safe_dump(study | {
        "model": "../model", "calibration": {"data": "../data/text.jsonl"},
        "eval": [{"data": "../data/text.jsonl", "name": "e"}]}))
    monkeypatch.chdir(root)
    return root


def _project_hashes(root):
    """Of everything the studies read."""
    return {name: tree_hash(root / name) for name in ("model", "data/text.jsonl", "data/calib.jsonl", "data/imgs",
                                                      "study.yaml", "vision.yaml", "studies/x.yaml")}


@pytest.mark.parametrize("study, out", [("study.yaml", "runs/first"),       # the natural layout
                                        ("studies/x.yaml", "runs/x"),       # the docs' layout
                                        ("study.yaml", "data/runs/first")])  # beside the data: nothing read is replaced
def test_a_run_directory_in_the_project_folder_is_allowed(project, study, out):
    before = _project_hashes(project)
    res = run("sweep", study, "--out", out)
    assert res.exit_code == 0, res.output
    assert (project / out / "results.sqlite").is_file()
    assert _project_hashes(project) == before


@pytest.mark.parametrize("study, out", [("study.yaml", "data"), ("study.yaml", "."), ("study.yaml", "study.yaml"),
                                        ("study.yaml", "model/run"), ("studies/x.yaml", "studies"),
                                        ("vision.yaml", "data/imgs")])
def test_outputs_that_could_destroy_an_input_are_refused_in_the_project_folder(project, study, out):
    before = _project_hashes(project)
    err = assert_user_error(run("sweep", study, "--out", out), f"--out {out}:", "writing there could destroy it",
                            roots=(project,))
    assert str(project) in err  # the input is named in full
    assert _project_hashes(project) == before
    assert not list(project.rglob("results.sqlite"))


def test_every_writing_command_follows_the_same_rule_in_the_project_folder(project):
    """Not only sweep: heal's checkpoint directory inside the data folder is allowed (its records and
    images stay), over the images its records name it is refused; so is lmms-task's task folder."""
    before = tree_hash(project / "data")
    assert_user_error(run("heal", "model", "--data", "data/calib.jsonl", "--out", "data/imgs", "--overwrite",
                          "--steps", "1"), "--out data/imgs: contains the input", roots=(project,))
    res = run("--quiet", "heal", "model", "--data", "data/text.jsonl", "--out", "data/healed", "--steps", "1",
              "--batch-size", "2")
    assert res.exit_code == 0, res.output
    assert (project / "data" / "healed" / "config.json").is_file()
    shutil.rmtree(project / "data" / "healed")
    assert tree_hash(project / "data") == before
    pytest.importorskip("datasets")
    assert_user_error(run("data", "lmms-task", "--data", "data/calib.jsonl", "--out", "data/imgs", "--overwrite"),
                      "--out data/imgs: contains the input", roots=(project,))
    assert tree_hash(project / "data") == before
