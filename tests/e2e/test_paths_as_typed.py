"""Every command run the way users type it: from another working directory, with relative paths,
``~`` (``--out=~/x`` is not expanded by the shell), spaces and non-ASCII characters in the names.

Each test goes through the CLI (typer's runner, in this process) with the working directory and
HOME of a temporary workspace, and checks that the outputs land where the user pointed, and
nothing lands in a literal ``~`` directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from depthprune.cli import app
from tests.helpers.tiny_models import save_tiny

runner = CliRunner()


def run(*args: object):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    return save_tiny("qwen3", tmp_path_factory.mktemp("llm") / "m")


@pytest.fixture()
def ws(tmp_path, monkeypatch, calib_dir, tiny_llm) -> Path:
    """A workspace: the working directory has a space and accents in its name, HOME is elsewhere;
    the model and data are reachable only by relative paths."""
    cwd, home = tmp_path / "my work é", tmp_path / "hôme dir"
    cwd.mkdir()
    home.mkdir()
    shutil.copytree(calib_dir, cwd / "calib données")
    shutil.copytree(tiny_llm, cwd / "models" / "tiny llm")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    yield cwd
    assert not (cwd / "~").exists(), "a path with ~ was written literally"


MODEL, CALIB = "models/tiny llm", "calib données/text.jsonl"


def home() -> Path:
    return Path("~").expanduser()


def test_score_rank_prune_eval(ws):
    run("score", MODEL, "--data", CALIB, "--out", "~/scores ü/s.json", "--batch-size", "2")
    assert (home() / "scores ü" / "s.json").is_file() and (home() / "scores ü" / "s.safetensors").is_file()
    run("rank", "~/scores ü/s.json", "--method", "domain", "--domain", "math", "--budget", "1",
        "--bootstrap", "0", "--save-plan", "plans/p ü.plan.json")
    assert (ws / "plans" / "p ü.plan.json").is_file()
    run("prune", MODEL, "--plan", "plans/p ü.plan.json", "--out", "~/pruned model")
    assert json.loads((home() / "pruned model" / "pruning.json").read_text())["removed_layers"]
    run("prune", MODEL, "--scores", "~/scores ü/s.json", "--method", "block-influence", "--budget", "1",
        "--out", "pruned/élagué")
    assert (ws / "pruned" / "élagué" / "config.json").is_file()
    run("eval", "~/pruned model", "--data", CALIB, "--out", "out dir/métriques.json", "--max-new-tokens", "2")
    assert (ws / "out dir" / "métriques.json").is_file()


def test_score_ablation_and_diagnose(ws):
    run("score", MODEL, "--data", CALIB, "--out", "s c/s.json", "--batch-size", "4", "--ablation")
    run("diagnose", "s c/s.json", "--out", "~/diagnose/d é.json")
    assert json.loads((home() / "diagnose" / "d é.json").read_text())


def test_heal_with_teacher(ws):
    shutil.copytree(ws / MODEL, home() / "teacher model")
    run("heal", MODEL, "--data", CALIB, "--out", "~/healed é", "--steps", "2", "--batch-size", "2",
        "--teacher", "~/teacher model")
    out = home() / "healed é"
    assert (out / "config.json").is_file() and (out / "healing_log.jsonl").is_file()
    assert not (home() / "healed é.heal-work").exists()


def test_data_commands(ws):
    run("data", "synth", "--out", "~/synth é", "--n-train", "0", "--n-calib", "4", "--n-eval", "4")
    assert (home() / "synth é" / "calib.jsonl").is_file()
    run("data", "text", "--out", "text bench/é", "--n-calib", "2", "--n-eval", "2")
    assert (ws / "text bench" / "é" / "eval.jsonl").is_file()
    pytest.importorskip("datasets")
    run("data", "lmms-task", "--data", CALIB, "--out", "~/lmms task", "--name", "t")
    assert (home() / "lmms task" / "t.yaml").is_file()


def test_sweep_and_report_from_a_study_in_another_folder(ws):
    """Paths inside a study are relative to the study file, the model's included; --out is
    relative to the working directory."""
    (ws / "studies").mkdir()
    study = {"model": f"../{MODEL}", "dtype": "float32", "batch_size": 4,
             "calibration": {"data": f"../{CALIB}"}, "eval": [{"data": f"../{CALIB}", "name": "tiny"}],
             "methods": ["last", {"method": "domain", "domain": "math"}], "budgets": [1],
             "metrics": {"max_new_tokens": 2}}
    (ws / "studies" / "my study é.yaml").write_text(yaml.safe_dump(study, allow_unicode=True), encoding="utf-8")
    run("sweep", "studies/my study é.yaml", "--out", "~/runs/run é")
    assert (home() / "runs" / "run é" / "results.sqlite").is_file()
    run("report", "~/runs/run é", "--out", "reports é/r.html", "--resamples", "2")
    assert (ws / "reports é" / "r.html").is_file() and (ws / "reports é" / "r.md").is_file()


def test_demo_from_a_relative_out(ws, monkeypatch):
    """The README's first command passes a relative --out; the demo's own study must find its
    data (this failed on a fresh clone: the run directory was joined twice). The study is
    reduced to two methods, one budget and a few records so the test stays fast."""
    from depthprune.toy import demo

    real = demo.demo_study

    def reduced(data, quick, batch_size=32):
        study = real(data, quick, batch_size)
        study["calibration"].update(max_samples=4, ablation=False)
        study["eval"][0]["max_samples"] = 4
        study["methods"] = [{"method": "domain", "domain": ["math", "general"]}, "last"]
        study["budgets"] = [0.25]
        study.pop("heal", None)
        return study

    monkeypatch.setattr(demo, "demo_study", reduced)
    res = run("demo", "--quick", "--quiet", "--out", "runs/quick start é")
    out = ws / "runs" / "quick start é"
    assert (out / "report.html").is_file() and (out / "results.sqlite").is_file()
    assert yaml.safe_load((out / "study.yaml").read_text())["model"] == "toy"
    lines = res.output.strip().splitlines()
    assert lines[-1] == f"report -> {Path('runs/quick start é/report.html')}"
    assert lines[-2].startswith("regimes (unhealed): ")
