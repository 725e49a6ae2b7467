"""End to end on the bundled toy Qwen3-VL: `depthprune demo --quick` runs a whole study (every
method, three budgets), prints the headline, and a second run resumes without recomputing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from depthprune.cli import app


@pytest.mark.slow
def test_demo_quick_study_on_toy_and_resume(tmp_path):
    from depthprune.ranking.methods import METHODS
    from depthprune.study.store import get_meta, open_store, read_results
    from depthprune.toy import MODEL_DIR
    if not (MODEL_DIR / "model.safetensors").is_file():
        pytest.fail(f"bundled toy weights missing in {MODEL_DIR}; run python -m depthprune.toy.train")
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "McNemar" in res.output and "math-aware" in res.output
    rows = read_results(out / "results.sqlite")
    meta = get_meta(open_store(out / "results.sqlite"))
    assert meta["num_layers"] == 16 and meta["protected_layers"] == [0, 1, 2]
    assert {r.method for r in rows} >= set(METHODS) | {"none"}  # every registered method ran
    assert {r.budget for r in rows if r.heal is None} == {0, 2, 4, 8}
    base = {r.domain: r for r in rows if r.label == "unpruned"}
    assert base["general"].accuracy >= 0.35 and base["math"].accuracy >= 0.65  # 47.5% / 80% measured (stage-3 toy)
    for r in rows:
        assert r.n == 40 and len(r.samples) == 40 and not set(r.removed) & {0, 1, 2}
    assert (out / "report.html").is_file() and (out / "results.sqlite").is_file()
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--quiet"])
    assert again.exit_code == 0, again.output
    assert "0 written" in again.output and len(read_results(out / "results.sqlite")) == len(rows)
    print(json.dumps({r.label: r.accuracy for r in rows if r.budget == 4 and r.domain == "math"}))
