"""Issue 6, sections 2 and 3: never run a model that did not load exactly, never lose a file.

Write failures are produced for real with RLIMIT_FSIZE (writes past the limit fail with
EFBIG, as a full disk fails with ENOSPC); concurrency and kill -9 use real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from depthprune.outputs import OutputError, atomic_dir, atomic_files, reclaim_stale
from tests.helpers.cli import assert_user_error, dead_pid, file_size_limit, leftovers, run, spawn, tree_hash
from tests.helpers.tiny_models import save_tiny


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A tiny Qwen3-VL with files a pruned checkpoint must not inherit."""
    path = save_tiny("qwen3_vl", tmp_path_factory.mktemp("models") / "qwen")
    (path / "training.json").write_text("{}")
    (path / "loss_curve.png").write_bytes(b"\x89PNG not really")
    return path


@pytest.fixture(scope="module")
def scored(src, calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores") / "scores.json"
    assert run("--quiet", "score", src, "--data", calib_dir / "calib.jsonl", "--out", out).exit_code == 0
    return out


def _disagreeing(src: Path, dest: Path, delta: int) -> Path:
    shutil.copytree(src, dest)
    config = json.loads((dest / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] += delta
    (dest / "config.json").write_text(json.dumps(config))
    return dest


# ------------------------------------------------------------------ exact loading
def test_config_that_disagrees_with_weights_is_refused(src, calib_dir, tmp_path):
    from depthprune.models.architectures import ModelError
    from depthprune.models.loading import load_model
    more = _disagreeing(src, tmp_path / "more", +1)   # the weights lack layer 6
    fewer = _disagreeing(src, tmp_path / "fewer", -1)  # the weights hold a layer 5 the config lacks
    for model, needle in ((more, "missing from the weights"), (fewer, "in the weights but not in the model")):
        with pytest.raises(ModelError, match="checkpoint and its config disagree") as info:
            load_model(model)
        assert needle in str(info.value) and "layers." in str(info.value)
        before = tree_hash(model)
        assert_user_error(run("score", model, "--data", calib_dir / "calib.jsonl", "--out", tmp_path / "s.json"),
                          model, "disagree", needle, roots=(tmp_path,))
        assert_user_error(run("prune", model, "--layers", "4", "--out", tmp_path / "o"), model, "disagree",
                          roots=(tmp_path,))
        assert tree_hash(model) == before
    shape = tmp_path / "shape"
    shutil.copytree(src, shape)
    config = json.loads((shape / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 128
    (shape / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="of the wrong shape"):
        load_model(shape)
    load_model(src)  # the exact checkpoint loads


# ------------------------------------------------------------------ write failures
def test_write_failures_are_one_line_and_leave_nothing(src, scored, calib_dir, tmp_path):
    before = tree_hash(src)
    calib = calib_dir / "calib.jsonl"
    with file_size_limit(4096):  # the tiny model's weights are far larger
        res = run("--quiet", "prune", src, "--layers", "4", "--out", tmp_path / "pruned")
    assert_user_error(res, tmp_path / "pruned", "cannot write", roots=(tmp_path,))
    with file_size_limit(256):
        res = run("--quiet", "score", src, "--data", calib, "--out", tmp_path / "s.json")
    assert_user_error(res, tmp_path / "s", "cannot write", roots=(tmp_path,))
    with file_size_limit(64):
        res = run("rank", scored, "--domain", "math", "--bootstrap", "0", "--save-plan", tmp_path / "p.plan.json")
    assert_user_error(res, tmp_path / "p.plan.json", "cannot write", roots=(tmp_path,))
    with file_size_limit(64):
        res = run("--quiet", "eval", src, "--data", calib, "--out", tmp_path / "m.json", "--max-new-tokens", "2")
    assert_user_error(res, tmp_path / "m", "cannot write", roots=(tmp_path,))
    with file_size_limit(64):
        res = run("data", "synth", "--out", tmp_path / "synth", "--n-train", "0", "--n-calib", "2", "--n-eval", "2")
    assert_user_error(res, tmp_path / "synth", "cannot write", roots=(tmp_path,))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert tree_hash(src) == before


# ------------------------------------------------------------------ inputs are never outputs
def test_output_never_equal_inside_or_around_the_source(src, calib_dir, tmp_path):
    before = tree_hash(src)
    for out, how in ((src, "is the input"), (src / "pruned", "is inside the input"),
                     (src.parent, "contains the input")):
        for overwrite in ((), ("--overwrite",)):
            assert_user_error(run("prune", src, "--layers", "4", "--out", out, *overwrite), out, how,
                              "--overwrite does not change this")
    for out in (src / "scores.json", src / "config.json"):
        assert_user_error(run("score", src, "--data", calib_dir / "calib.jsonl", "--out", out, "--overwrite"),
                          out, "inside the input")
    data = tmp_path / "m.predictions.jsonl"  # eval --out m.json writes its predictions there
    shutil.copy(calib_dir / "calib.jsonl", data)
    data_before = tree_hash(data)
    assert_user_error(run("eval", src, "--data", data, "--out", tmp_path / "m.json", "--overwrite"),
                      data, "is the input")
    assert tree_hash(src) == before and tree_hash(data) == data_before


# ------------------------------------------------------------------ the --overwrite rule everywhere
def test_every_output_obeys_overwrite(src, scored, calib_dir, tmp_path):
    plan = tmp_path / "p.plan.json"
    plan.write_text("keep me")
    rank = ("rank", scored, "--domain", "math", "--bootstrap", "0", "--save-plan", plan)
    assert_user_error(run(*rank), plan, "--overwrite")
    assert plan.read_text() == "keep me"
    assert run(*rank, "--overwrite").exit_code == 0 and json.loads(plan.read_text())["method"] == "domain"
    beside = tmp_path / "s.safetensors"
    beside.write_text("keep me too")
    assert_user_error(run("score", src, "--data", calib_dir / "calib.jsonl", "--out", tmp_path / "s.json"),
                      beside, "--overwrite")
    assert beside.read_text() == "keep me too" and not (tmp_path / "s.json").exists()
    predictions = tmp_path / "m.predictions.jsonl"
    predictions.write_text("old")
    assert_user_error(run("eval", src, "--data", calib_dir / "calib.jsonl", "--out", tmp_path / "m.json"),
                      predictions, "--overwrite")
    assert predictions.read_text() == "old" and not (tmp_path / "m.json").exists()
    assert not leftovers(tmp_path)


# ------------------------------------------------------------------ the atomic writers themselves
def test_rename_if_absent_never_replaces_an_output_that_appeared(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="appeared while this run was writing"):
        with atomic_dir(out, overwrite=False) as tmp:
            (tmp / "mine.txt").write_text("mine")
            out.mkdir()  # another run finished first
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and not leftovers(tmp_path)
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "mine.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and not leftovers(tmp_path)
    target = tmp_path / "f.json"
    with pytest.raises(OutputError, match="appeared"):
        with atomic_files([tmp_path / "f.safetensors", target], overwrite=False) as (a, b):
            a.write_text("a")
            b.write_text("b")
            target.write_text("theirs")
    assert target.read_text() == "theirs" and not (tmp_path / "f.safetensors").exists()
    assert not leftovers(tmp_path)


def test_temporaries_of_dead_processes_are_reclaimed(tmp_path):
    out = tmp_path / "out"
    pid = dead_pid()
    stale_dir = tmp_path / f".out.tmp-{pid}"
    stale_dir.mkdir()
    (stale_dir / "half.safetensors").write_bytes(b"x")
    stale_file = tmp_path / f".s.json.tmp-{pid}"
    stale_file.write_text("half")
    mine_running = tmp_path / f".out.tmp-{os.getppid()}"  # a live process: never touched
    mine_running.mkdir()
    assert stale_dir in reclaim_stale(out) and not stale_dir.exists() and mine_running.exists()
    with atomic_files([tmp_path / "s.json"], overwrite=False) as (tmp,):
        tmp.write_text("{}")
    assert not stale_file.exists() and (tmp_path / "s.json").read_text() == "{}"


# ------------------------------------------------------------------ what a pruned checkpoint holds
def test_pruned_checkpoint_copies_only_the_allow_list(src, tmp_path):
    res = run("--quiet", "prune", src, "--layers", "4", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    names = {p.name for p in (tmp_path / "o").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors", "pruning.json",
            "README.md"} <= names
    assert not names & {"training.json", "loss_curve.png"}
    for name in names & {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"}:
        assert (tmp_path / "o" / name).read_bytes() == (src / name).read_bytes()


# ------------------------------------------------------------------ real processes
def _layers_on_disk(out: Path) -> int:
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        return len({k.split("layers.")[1].split(".")[0] for k in fh.keys()
                    if "language_model.layers." in k})


@pytest.mark.slow  # two fresh processes import torch: ~40 s on a busy 2-core machine
def test_two_concurrent_prunes_to_one_out(src, tmp_path):
    out = tmp_path / "out"
    procs = {layers: spawn("--quiet", "prune", src, "--layers", layers, "--out", out) for layers in ("4", "3,5")}
    results = {layers: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for layers, p in procs.items()}
    ok = [layers for layers, (code, _, _) in results.items() if code == 0]
    assert len(ok) == 1, results
    loser = next(layers for layers in results if layers not in ok)
    code, _, stderr = results[loser]
    assert code == 2 and "Traceback" not in stderr and str(out) in stderr, stderr
    info = json.loads((out / "pruning.json").read_text())
    assert info["removed_layers"] == [int(x) for x in ok[0].split(",")]
    assert f"removed layers {info['removed_layers']}" in results[ok[0]][1]
    assert _layers_on_disk(out) == info["num_layers"] and not leftovers(tmp_path)


@pytest.mark.slow
def test_two_concurrent_overwriting_prunes_leave_one_whole_output(src, tmp_path):
    out = tmp_path / "out"
    procs = [spawn("--quiet", "prune", src, "--layers", layers, "--out", out, "--overwrite") for layers in ("4", "3,5")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    info = json.loads((out / "pruning.json").read_text())
    assert info["removed_layers"] in ([4], [3, 5]) and _layers_on_disk(out) == info["num_layers"]
    assert not leftovers(tmp_path)


def _kill_when_temp_appears(args: tuple, parent: Path, name: str, timeout: float = 240) -> int:
    """Start the CLI, SIGKILL it the moment its ``.NAME.tmp-PID`` appears; returns the PID."""
    proc = spawn(*args)
    temp = parent / f".{name}.tmp-{proc.pid}"
    deadline = time.monotonic() + timeout
    while not temp.exists():
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert temp.exists()  # what kill -9 leaves behind
    return proc.pid


@pytest.mark.slow  # a fresh process imports torch
def test_kill_9_during_prune_then_next_run_reclaims(src, tmp_path):
    out = tmp_path / "out"
    pid = _kill_when_temp_appears(("--quiet", "prune", src, "--layers", "4", "--out", out), tmp_path, "out")
    assert not out.exists()
    res = run("--quiet", "prune", src, "--layers", "4", "--out", out)
    assert res.exit_code == 0, res.output
    assert not (tmp_path / f".out.tmp-{pid}").exists() and not leftovers(tmp_path)
    assert json.loads((out / "pruning.json").read_text())["removed_layers"] == [4]


def test_kill_9_during_data_synth_then_next_run_reclaims(tmp_path):
    out = tmp_path / "synth"
    pid = _kill_when_temp_appears(("data", "synth", "--out", out, "--n-train", "3000", "--n-calib", "4",
                                   "--n-eval", "4"), tmp_path, "synth")
    assert not out.exists()
    res = run("data", "synth", "--out", out, "--n-train", "0", "--n-calib", "4", "--n-eval", "4")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / f".synth.tmp-{pid}").exists() and not leftovers(tmp_path)
    assert (out / "calib.jsonl").is_file()
