"""Progress suits its destination (depthprune.settings.progress_mode, the one place that decides):
tqdm bars on a terminal; in a log (stderr sent to a file or a pipe, as in every cluster job) a
start line, a few progress lines and an end line per step, never carriage-return lines; nothing
under --quiet."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from depthprune import settings
from tests.helpers.cli import REPO

ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")


def test_score_ablation_writes_a_few_plain_lines_to_a_log(tmp_path):
    """`score --ablation` on the toy left one line of ~150 KB of tqdm updates in its log."""
    from depthprune.data.synth import synthesize
    data = synthesize(tmp_path / "data", seed=0, n_train=0, n_calib=16, n_eval=0)
    log = tmp_path / "score.log"
    with log.open("w") as stderr:
        res = subprocess.run([sys.executable, "-m", "depthprune.cli", "score", "toy", "--data", str(data["calib"]),
                              "--out", str(tmp_path / "s" / "scores.json"), "--ablation"], stdout=subprocess.PIPE,
                             stderr=stderr, text=True, env=ENV, timeout=600)
    text = log.read_text()
    assert res.returncode == 0, text
    lines = text.splitlines()
    assert "\r" not in text and len(lines) <= 50 and max(map(len, lines)) <= 200, text[:2000]
    for step in ("scoring", "ablation (prefix-cached)"):
        assert f"{step}: started, " in text and f"{step}: finished, " in text, text
    assert "%|" not in text and "Loading weights" not in text, text  # no bar, ours or transformers'


def test_a_terminal_gets_a_bar_and_quiet_gets_nothing():
    code = ("import sys; from depthprune import settings; settings.configure(quiet=%s); "
            "bar = settings.progress(total=2, desc='step'); print(type(bar).__module__, bar.disable, "
            "file=sys.stdout)")
    for quiet, expected in ((False, "tqdm"), (True, "tqdm")):
        parent, child = pty.openpty()
        try:
            res = subprocess.run([sys.executable, "-c", code % quiet], stdout=subprocess.PIPE, stderr=child,
                                 text=True, env=ENV, timeout=120)
        finally:
            os.close(child)
            os.close(parent)
        module, disabled = res.stdout.split()
        assert module.startswith(expected) and disabled == str(quiet), res.stdout
    res = subprocess.run([sys.executable, "-c", code % False], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.stdout.split() == ["depthprune.settings", "False"], res.stdout  # a pipe: plain lines


def test_log_lines_are_bounded_whatever_the_number_of_updates(capsys, monkeypatch):
    monkeypatch.setattr(settings.LogProgress, "GAP", 0.0)  # every tenth may write: the bound still holds
    monkeypatch.setattr(settings, "_settings", dict(settings._settings, quiet=False))
    progress = settings.progress
    bar = progress(total=10_000, desc="eval", unit="sample")
    for _ in range(10_000):
        bar.update(1)
        inner = progress(total=3, desc="answer NLL", leave=False)  # nested and short: silent
        inner.update(3)
        inner.close()
    bar.set_postfix(acc="50%")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "eval: started, 10000 samples"
    assert lines[-1].startswith("eval: finished, 10000/10000 samples in ")
    assert lines[-1].endswith(", acc=50%") and len(lines) == 11, lines  # start, nine tenths, end
    settings._settings["quiet"] = True
    progress(total=3, desc="eval").update(3)
    assert capsys.readouterr().err == ""
