"""Faults a new user causes in the study commands (the second hardening battery): each is one
line `error: ...` with exit 2 before any work and nothing left behind, or, where the input is
fine, the command does the right thing (a moved run directory resumes)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import stat

import pytest
import yaml

from tests.helpers.cli import assert_user_error, cli_subprocess, run, tree_hash
from tests.helpers.tiny_models import save_tiny


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return save_tiny("qwen3", tmp_path_factory.mktemp("faults") / "model")


def _study(folder, calib_dir, model, **over) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    study = {"model": str(model), "dtype": "float32", "batch_size": 4,
             "calibration": {"data": str(calib_dir / "text.jsonl")},
             "eval": [{"data": str(calib_dir / "text.jsonl"), "name": "e"}],
             "methods": ["last", {"method": "domain", "domain": "math"}], "budgets": [1],
             "metrics": {"max_new_tokens": 2}}
    study.update(over)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.parametrize("args, option", [
    (["heal", "m", "--data", "d.jsonl", "--out", "o", "--steps", "0"], "--steps"),
    (["report", "r", "--resamples", "-1"], "--resamples"),
    (["data", "synth", "--out", "o", "--n-calib", "-1"], "--n-calib"),
    (["score", "m", "--data", "d.jsonl", "--out", "s.json", "--batch-size", "0"], "--batch-size"),
    (["rank", "s.json", "--no-such-flag"], "--no-such-flag"),
    (["prune"], "Missing argument 'model'"),
])
def test_usage_errors_are_one_line_in_a_real_process(tmp_path, args, option):
    res = cli_subprocess(*args, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "╭" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: depthprune ") and option in lines[0], res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, needle", [
    ("model: toy\nmodel: other\n", "line 2: key 'model' is given twice"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefghijk", "bcdefghijkl")),
     "more than 100 YAML aliases"),
    (b"model: \xff\xfe\n", "not UTF-8 text (byte 0xff at offset 7); save the study file as UTF-8"),
])
def test_study_files_that_yaml_would_accept_silently_or_explode_on(tmp_path, text, needle):
    study = tmp_path / "s" / "study.yaml"
    study.parent.mkdir()
    (study.write_bytes if isinstance(text, bytes) else study.write_text)(text)
    assert_user_error(run("sweep", study, "--out", tmp_path / "run"), needle, roots=(tmp_path,))
    assert not (tmp_path / "run").exists()


def _address_space(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def test_a_yaml_alias_bomb_is_one_line_under_a_memory_limit(tmp_path, calib_dir):
    """A method option whose value is an alias bomb (72 aliases, under the alias limit, that expand
    to a billion strings) was repr'd into its error message: out of memory, then a traceback or
    the misleading "lower --batch-size". It is one line naming the file and its aliases, exit 2,
    in a process limited to 4 GiB of address space."""
    inner = "&a0 [" + ", ".join(["lol"] * 10) + "]"
    for i in range(1, 9):
        inner = f"&a{i} [{inner}, " + ", ".join([f"*a{i - 1}"] * 9) + "]"
    data = json.dumps(str(calib_dir / "text.jsonl"))
    study = tmp_path / "my project" / "study.yaml"
    study.parent.mkdir()
    study.write_text(f"model: toy\ncalibration: {{data: {data}}}\neval: [{{data: {data}}}]\n"
                     f"methods: [{{method: domain, domain: {inner}}}]\nbudgets: [1]\n")
    res = cli_subprocess("sweep", study, "--out", tmp_path / "run", preexec=_address_space(4 << 30),
                         env={"OPENBLAS_NUM_THREADS": "1"}, timeout=300)
    assert_user_error(res, "study.yaml: its YAML aliases (*name) expand to", "write the values out", roots=(tmp_path,))
    assert len(res.stderr) < 1000 and not (tmp_path / "run").exists()


def test_options_a_method_does_not_read_are_refused(tmp_path, calib_dir, llm):
    study = _study(tmp_path / "s", calib_dir, llm, methods=[{"method": "last", "seed": 3}])
    assert_user_error(run("sweep", study, "--out", tmp_path / "run"), "methods[0].seed",
                      "method 'last' does not read 'seed'", roots=(tmp_path,))
    assert run("score", llm, "--data", calib_dir / "text.jsonl", "--out", tmp_path / "s" / "s.json").exit_code == 0
    res = run("rank", tmp_path / "s" / "s.json", "--method", "block-influence", "--domain", "math", "--budget", "1")
    assert_user_error(res, "does not read --domain")


def test_ablation_methods_need_the_ablation_pass(tmp_path, calib_dir, llm):
    study = _study(tmp_path / "s", calib_dir, llm, methods=[{"method": "ablation", "domain": "math"}])
    assert_user_error(run("sweep", study, "--out", tmp_path / "run"), "calibration.ablation: true", roots=(tmp_path,))
    assert not (tmp_path / "run").exists()


def test_a_moved_run_directory_resumes_and_records_its_own_data_relatively(tmp_path, calib_dir, llm):
    data = tmp_path / "run" / "data"
    shutil.copytree(calib_dir, data)
    study = _study(tmp_path / "s", calib_dir, llm)
    raw = yaml.safe_load(study.read_text())
    raw["calibration"]["data"] = str(data / "text.jsonl")
    raw["eval"][0]["data"] = str(data / "text.jsonl")
    study.write_text(yaml.safe_dump(raw))
    from depthprune.study.sweep import run_study
    run_study(study, tmp_path / "run", quiet=True, owned=[data])
    written = yaml.safe_load((tmp_path / "run" / "study.yaml").read_text())
    assert written["calibration"]["data"] == ["data/text.jsonl"]  # relative to the run directory
    shutil.move(tmp_path / "run", tmp_path / "moved")
    raw["calibration"]["data"] = str(tmp_path / "moved" / "data" / "text.jsonl")
    raw["eval"][0]["data"] = str(tmp_path / "moved" / "data" / "text.jsonl")
    study.write_text(yaml.safe_dump(raw))
    again = run_study(study, tmp_path / "moved", quiet=True, owned=[tmp_path / "moved" / "data"])
    assert again.cells_written == 0 and again.cells_skipped == again.cells_total  # same content: resumed


def test_report_out_follows_the_overwrite_rule_and_reads_a_read_only_store(tmp_path, calib_dir, llm):
    study = _study(tmp_path / "s", calib_dir, llm)
    assert run("sweep", study, "--out", tmp_path / "run").exit_code == 0
    out = tmp_path / "r" / "mine.html"
    out.parent.mkdir()
    out.write_text("my notes")
    assert_user_error(run("report", tmp_path / "run", "--out", out, "--resamples", "0"), "--overwrite",
                      roots=(tmp_path,))
    assert out.read_text() == "my notes"
    assert run("report", tmp_path / "run", "--out", out, "--resamples", "0", "--overwrite").exit_code == 0
    # a store on a read-only medium: reporting elsewhere needs no write access to the run directory
    for p in [tmp_path / "run", *(tmp_path / "run").rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        if os.access(tmp_path / "run", os.W_OK):
            pytest.skip("running as a user that ignores file permissions (root); read-only not testable")
        before = tree_hash(tmp_path / "run")
        res = run("report", tmp_path / "run", "--out", tmp_path / "r" / "ro.html", "--resamples", "0")
        assert res.exit_code == 0, res.output
        assert tree_hash(tmp_path / "run") == before
    finally:
        for p in [tmp_path / "run", *(tmp_path / "run").rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_a_store_opened_read_only_is_read_without_writing(tmp_path, calib_dir, llm):
    """Opening the store for a report never creates its -wal/-shm files or changes a byte."""
    study = _study(tmp_path / "s", calib_dir, llm)
    assert run("sweep", study, "--out", tmp_path / "run").exit_code == 0
    from depthprune.study.store import open_store_readonly, read_results
    store = tmp_path / "run" / "results.sqlite"
    for extra in ("-wal", "-shm"):
        (tmp_path / "run" / f"results.sqlite{extra}").unlink(missing_ok=True)
    before = store.read_bytes()
    conn = open_store_readonly(store)
    assert read_results(conn)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("INSERT INTO meta (key, value) VALUES ('x', '1')")
    conn.close()
    assert store.read_bytes() == before


def test_quiet_is_quiet_for_every_long_command(tmp_path, calib_dir, llm):
    """--quiet: no progress bar (and no training log dictionaries) from score --ablation, heal,
    sweep, report or data lmms-task; only the result lines."""
    data = calib_dir / "text.jsonl"
    runs = [("score", llm, "--data", data, "--out", tmp_path / "s" / "s.json", "--ablation"),
            ("heal", llm, "--data", data, "--out", tmp_path / "healed", "--steps", "2", "--batch-size", "2")]
    study = _study(tmp_path / "study", calib_dir, llm)
    runs += [("sweep", study, "--out", tmp_path / "run"), ("report", tmp_path / "run", "--resamples", "3")]
    try:
        import datasets  # noqa: F401
        runs.append(("data", "lmms-task", "--data", calib_dir / "calib.jsonl", "--out", tmp_path / "task"))
    except ImportError:
        pass
    for args in runs:
        res = run("--quiet", *args)
        assert res.exit_code == 0, res.output
        assert "%|" not in res.output and "it/s" not in res.output and "{'loss'" not in res.output, (args[0], res.output)


def test_heal_on_a_full_disk_is_one_line_and_leaves_no_work_directory(tmp_path, calib_dir, llm):
    from tests.helpers.cli import file_size_limit
    with file_size_limit(64 * 1024):  # TRL's first checkpoint (the tiny model's weights) does not fit
        res = run("--quiet", "heal", llm, "--data", calib_dir / "text.jsonl", "--out", tmp_path / "healed",
                  "--steps", "2", "--batch-size", "2", "--save-steps", "1")
    assert_user_error(res, "cannot write", roots=(tmp_path,))
    assert list(tmp_path.iterdir()) == []  # neither the output nor healed.heal-work
