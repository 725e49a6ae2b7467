"""The lmms-eval round trip, for real and offline: toy benchmark records -> a local lmms-eval
task (datasets.save_to_disk) -> `depthprune eval --lmms-eval` on the toy model and a pruned
toy model, compared sample by sample with the built-in evaluator on the same records."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.options import RankRequest

pytestmark = pytest.mark.slow


def _predictions(metrics_file) -> dict[str, dict]:
    rows = [json.loads(line) for line in metrics_file.with_suffix(".predictions.jsonl").read_text().splitlines()]
    return {r["id"].rsplit("/", 1)[-1]: r for r in rows}  # lmms ids are TASK/RECORD_ID


@pytest.mark.parametrize("pruned", [False, True], ids=["toy", "toy-pruned-25%"])
def test_lmms_eval_matches_builtin_evaluator(tmp_path_factory, pruned):
    pytest.importorskip("lmms_eval")
    from depthprune import api
    from depthprune.data.synth import synthesize
    from depthprune.toy import MODEL_DIR
    tmp = tmp_path_factory.mktemp("lmms")
    data = synthesize(tmp / "data", seed=3, n_train=0, n_calib=0, n_eval=24)["eval"]
    model = MODEL_DIR
    if pruned:
        model = api.prune(MODEL_DIR, None, tmp / "pruned", request=RankRequest("last", 0.25))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "lmms-task", "--data", str(data), "--out", str(tmp / "task"),
                              "--name", "toyq", "--max-new-tokens", "16"])
    assert res.exit_code == 0, res.output
    builtin, lmms = tmp / "builtin.json", tmp / "lmms.json"
    res = runner.invoke(app, ["eval", str(model), "--data", str(data), "--out", str(builtin),
                              "--batch-size", "1", "--max-new-tokens", "16"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", str(model), "--lmms-eval", "toyq", "--include-path", str(tmp / "task"),
                              "--out", str(lmms), "--batch-size", "1"])
    assert res.exit_code == 0, res.output
    a, b = json.loads(builtin.read_text()), json.loads(lmms.read_text())
    pa, pb = _predictions(builtin), _predictions(lmms)
    assert set(pa) == set(pb)
    differ = {k: (pa[k]["output"], pb[k]["output"]) for k in pa
              if (pa[k]["output"].strip(), pa[k]["correct"]) != (pb[k]["output"].strip(), pb[k]["correct"])}
    assert not differ, f"built-in vs lmms-eval outputs differ: {differ}"
    for domain in ("math", "general"):
        for key in ("n", "correct", "accuracy", "ci95"):
            assert a["domains"][domain][key] == b["domains"][domain][key], (domain, key)
    assert b["lmms_eval"]["tasks"] == ["toyq"] and b["domains"]["math"]["answer_nll"] is None


def test_sweep_lmms_set_matches_jsonl_set_per_sample(tmp_path):
    """A study with the same records as a jsonl set and as a local lmms-eval task: every cell
    (unpruned and pruned in memory) gets the same per-sample correctness from both."""
    pytest.importorskip("lmms_eval")
    import yaml

    from depthprune.data.synth import synthesize
    from depthprune.study.store import read_results
    from depthprune.study.sweep import run_study
    data = synthesize(tmp_path / "data", seed=4, n_train=0, n_calib=8, n_eval=12)
    res = CliRunner().invoke(app, ["data", "lmms-task", "--data", str(data["eval"]), "--out",
                                   str(tmp_path / "task"), "--name", "toyq", "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    study = {"model": "toy", "calibration": {"data": str(data["calib"])}, "batch_size": 1,
             "eval": [{"data": str(data["eval"]), "name": "builtin"},
                      {"kind": "lmms", "tasks": ["toyq"], "include_path": "../task", "name": "lmms"}],
             "methods": ["last"], "budgets": [2], "metrics": {"max_new_tokens": 8}}
    (tmp_path / "study").mkdir()  # a run directory may not be inside the study's folder
    (tmp_path / "study" / "study.yaml").write_text(yaml.safe_dump(study))
    result = run_study(tmp_path / "study" / "study.yaml", tmp_path / "run", quiet=True)
    assert result.cells_written == 2  # the baseline and last@2
    rows = read_results(tmp_path / "run" / "results.sqlite")
    by = {(r.cell, r.eval_set, r.domain): r for r in rows}
    for cell in {r.cell for r in rows}:
        for domain in ("math", "general"):
            builtin, lmms = by[(cell, "builtin", domain)], by[(cell, "lmms", domain)]
            assert lmms.n == builtin.n == 6 and lmms.nll is None
            want = {sid: c for sid, c, _ in builtin.samples}
            got = {sid.rsplit("/", 1)[-1]: c for sid, c, _ in lmms.samples}
            assert got == want, (cell, domain)
