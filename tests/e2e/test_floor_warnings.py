"""A domain the unpruned model cannot answer (accuracy under 10%) gets one warning line wherever a
domain-aware comparison would be read: `eval --baseline`, `prune --method sleb/ablation --domain D`
and the report. A random-init tiny Qwen3-VL answers nothing (the floor); the bundled toy answers
math 71% and general 54% (no warning)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.reporting.tables import floor_lines
from depthprune.scoring.scores import Scores
from depthprune.statistics import FLOOR_ACCURACY, floor_warning, near_floor
from tests.helpers.tiny_models import save_tiny

runner = CliRunner()
FLOOR = "near the floor"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny("qwen3_vl", tmp_path_factory.mktemp("floor") / "src")


def test_near_floor_is_below_ten_percent():
    assert FLOOR_ACCURACY == 0.10
    assert near_floor({"math": (3, 100), "general": (57, 100), "ocr": (10, 100), "empty": (0, 0)}) == ["math"]
    line = floor_warning("--baseline", "math", 3, 100)
    assert "3/100 (3%)" in line and "domain 'math'" in line and "\n" not in line


def test_eval_baseline_warns_on_a_floor_domain(tiny, calib_dir, tmp_path):
    base = tmp_path / "base.json"
    data = calib_dir / "calib.jsonl"
    assert run("eval", tiny, "--data", data, "--out", base, "--max-new-tokens", "4").exit_code == 0
    res = run("eval", tiny, "--data", data, "--out", tmp_path / "again.json", "--max-new-tokens", "4",
              "--baseline", base)
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "again.json").read_text())
    assert metrics["floor_domains"] == ["general", "math"]
    assert res.output.count(FLOOR) == 2 and "warning: --baseline: the unpruned model answers 0/" in res.output


def test_eval_baseline_on_the_toy_does_not_warn(tmp_path):
    from depthprune.toy import default_data
    data = default_data(tmp_path / "data")
    rows = [json.loads(line) for line in data["eval"].read_text().splitlines()]
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(dict(r, image=str(data["eval"].parent / r["image"]) if r.get("image") else None))
                             + "\n" for d in ("math", "general") for r in [x for x in rows if x["domain"] == d][:20]))
    base = tmp_path / "base.json"
    assert run("eval", "toy", "--data", small, "--out", base, "--max-new-tokens", "8").exit_code == 0
    res = run("eval", "toy", "--data", small, "--out", tmp_path / "again.json", "--max-new-tokens", "8",
              "--baseline", base)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "again.json").read_text())["floor_domains"] == [] and FLOOR not in res.output


def test_prune_sleb_for_a_floor_domain_warns(tiny, calib_dir, tmp_path):
    res = run("prune", tiny, "--method", "sleb", "--domain", "math", "--budget", "1", "--data",
              calib_dir / "calib.jsonl", "--out", tmp_path / "p", "--batch-size", "2")
    assert res.exit_code == 0, res.output
    assert res.output.count(FLOOR) == 1 and "--method sleb --domain math" in res.output


def test_prune_sleb_on_the_toy_does_not_warn(tmp_path):
    from depthprune.toy import default_data
    data = default_data(tmp_path / "data")
    res = run("prune", "toy", "--method", "sleb", "--domain", "math", "--budget", "1", "--data", data["calib"],
              "--max-samples", "16", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert FLOOR not in res.output


def test_prune_ablation_for_a_floor_domain_warns(tiny, calib_dir, tmp_path):
    scores = tmp_path / "scores.json"
    res = run("score", tiny, "--data", calib_dir / "calib.jsonl", "--out", scores, "--ablation", "--batch-size", "2")
    assert res.exit_code == 0, res.output
    measured = Scores.load(scores).settings["unpruned_accuracy"]
    assert set(measured) == {"general", "math"} and all(right == 0 and n > 0 for right, n in measured.values())
    res = run("prune", tiny, "--scores", scores, "--method", "ablation", "--domain", "general", "--budget", "1",
              "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert res.output.count(FLOOR) == 1 and "--method ablation --domain general" in res.output
    res = run("prune", tiny, "--scores", scores, "--method", "block-influence", "--budget", "1", "--out", tmp_path / "q")
    assert res.exit_code == 0 and FLOOR not in res.output  # a domain-agnostic method: nothing to warn about


def _row(domain, correct, budget=0, heal=None):
    return SimpleNamespace(budget=budget, heal=heal, accuracy=sum(correct) / len(correct), eval_set="toy",
                           domain=domain, samples=[(f"{domain}{i}", c, 1.0) for i, c in enumerate(correct)])


def test_report_lines_name_each_floor_domain_of_the_unpruned_model():
    rows = [_row("math", [1] * 3 + [0] * 97), _row("general", [1] * 57 + [0] * 43),
            _row("math", [0] * 100, budget=4), _row("general", [0] * 100, heal={"mode": "lora"})]
    lines = floor_lines(rows)
    assert len(lines) == 1 and lines[0].startswith("eval set toy: the unpruned model answers 3/100 (3%)")
