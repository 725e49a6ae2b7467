"""Issue 6, sections 1 and 5: the error handler (one line, --debug traceback), the global
options (--quiet, --threads, --debug and their environment variables) and a --help that
does not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from depthprune import settings
from depthprune.cli import app
from depthprune.cli_errors import handle_errors
from depthprune.cli_errors import show_warning as _show_warning
from tests.helpers.cli import REPO, assert_user_error, cli_subprocess, run, runner
from tests.helpers.tiny_models import save_tiny


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("models") / "llama")


def test_help_does_not_import_torch():
    code = ("import sys, depthprune, depthprune.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'safetensors', 'PIL') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(REPO)}, timeout=120)
    res = cli_subprocess("--help", timeout=120)
    assert res.returncode == 0 and "--quiet" in res.stdout and "--threads" in res.stdout and "--debug" in res.stdout


def test_real_process_error_is_one_line_on_stderr(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    res = cli_subprocess("data", "synth", "--out", afile / "sub", timeout=120)  # no torch import: fast
    assert_user_error(res, afile / "sub", "cannot write")
    assert res.stderr.strip().startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert res.stdout == "" and afile.read_text() == "x"


def _boom() -> None:
    {}["no such key"]


def test_unexpected_errors_keep_the_traceback_one_flag_away(capsys):
    settings.configure(debug=False)
    with pytest.raises(typer.Exit) as info:
        handle_errors(_boom)()
    assert info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected KeyError") and "--debug" in err and "Traceback" not in err
    settings.configure(debug=True)
    try:
        with pytest.raises(typer.Exit):
            handle_errors(_boom)()
    finally:
        settings.configure()
    err = capsys.readouterr().err
    assert "Traceback" in err and "_boom" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_debug_flag_and_env_var_reach_the_handler(tmp_path):
    try:
        assert run("--debug", "rank", tmp_path / "missing.json").exit_code == 2 and settings.debug()
        assert run("rank", tmp_path / "missing.json").exit_code == 2 and not settings.debug()
        res = runner.invoke(app, ["rank", str(tmp_path / "missing.json")], env={"DEPTHPRUNE_DEBUG": "1"})
        assert res.exit_code == 2 and settings.debug()
        # --debug adds the traceback (for bug reports) above the same one-line error
        assert "Traceback" in res.output and res.output.strip().splitlines()[-1].startswith("error: ")
    finally:
        settings.configure()


def test_quiet_hides_progress_bars(llama, calib_dir, tmp_path):
    data = calib_dir / "text.jsonl"
    loud = run("score", llama, "--data", data, "--out", tmp_path / "a.json")
    assert loud.exit_code == 0, loud.output
    assert "scoring" in loud.output and "sample/s" in loud.output
    quiet = run("--quiet", "score", llama, "--data", data, "--out", tmp_path / "b.json")
    assert quiet.exit_code == 0, quiet.output
    assert "scoring" not in quiet.output and "%|" not in quiet.output and "scored 7 samples" in quiet.output
    env_quiet = runner.invoke(app, ["score", str(llama), "--data", str(data), "--out", str(tmp_path / "c.json")],
                              env={"DEPTHPRUNE_QUIET": "1"})
    assert env_quiet.exit_code == 0 and "%|" not in env_quiet.output


def test_threads_option_and_env(tmp_path):
    import torch
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        res = run("--threads", "1", "rank", tmp_path / "missing.json")
        assert res.exit_code == 2 and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        res = runner.invoke(app, ["rank", str(tmp_path / "missing.json")], env={"DEPTHPRUNE_THREADS": "1"})
        assert res.exit_code == 2 and torch.get_num_threads() == 1
        assert run("--threads", "0", "rank", tmp_path / "x.json").exit_code == 2  # typer: min=1
    finally:
        torch.set_num_threads(before)
        settings.configure()


def test_warnings_are_one_line(capsys):
    _show_warning("first line\n  second", UserWarning, "f.py", 1)
    assert capsys.readouterr().err == "warning: first line second\n"


def test_paths_that_look_like_markup_print_as_they_are(tmp_path):
    out = tmp_path / "[/x]" / "synth"
    res = run("data", "synth", "--out", out, "--n-train", "0", "--n-calib", "2", "--n-eval", "2")
    assert res.exit_code == 0, res.output
    assert f"calib: {out / 'calib.jsonl'}" in res.output
    line = assert_user_error(run("rank", tmp_path / "[bold]missing.json"), "[bold]missing.json")
    assert line.startswith("error: ")


def _fails_mid_bar() -> None:
    bar = settings.progress(total=10, desc="working", file=sys.stderr)
    bar.update(3)
    raise ValueError("data.jsonl:3: bad record. Fix it")


def test_error_line_is_not_glued_to_a_progress_bar(capsys):
    settings.configure(quiet=False)
    try:
        with pytest.raises(typer.Exit) as info:
            handle_errors(_fails_mid_bar)()
    finally:
        settings.configure()
    assert info.value.exit_code == 2
    err = capsys.readouterr().err
    assert "working" in err and "\nerror: data.jsonl:3: bad record. Fix it\n" in err
