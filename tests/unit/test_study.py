"""Study files: validation names the key, before any model loads; the grid expands as written."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.study.cell import expand_cells
from depthprune.study.config import StudyError, load_study


def write(tmp_path, calib_dir, **over):
    study = {"model": "toy", "calibration": {"data": str(calib_dir / "calib.jsonl")},
             "eval": [{"data": str(calib_dir / "calib.jsonl"), "name": "tiny"}],
             "methods": [{"method": "domain", "domain": ["math", "general"]}, "last"],
             "budgets": [1, 0.5]}
    study.update(over)
    path = tmp_path / "study" / "study.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(study))
    return path


def test_expansion_labels_and_cells(tmp_path, calib_dir):
    path = write(tmp_path, calib_dir, methods=[
        {"method": "domain", "domain": ["math", "general"], "token_group": ["all", "last"]},
        {"method": "mixed", "weights": [{"math": 0.7, "general": 0.3}, "math=1,general=1"]},
        {"method": "random", "seed": [0, 1]}, "block-influence", "last"],
        budgets=[1, 0.5, 0.49])
    study = load_study(path)
    labels = [m.label for m in study.methods]
    assert labels == ["domain:math@all", "domain:math@last", "domain:general@all", "domain:general@last",
                      "mixed:general=0.3,math=0.7", "mixed:general=1,math=1", "random:seed=0", "random:seed=1",
                      "block-influence", "last"]
    cells = expand_cells(study, num_layers=16)
    budgets = sorted({c.budget for c in cells})
    assert budgets == [0, 1, 8]  # 0.5 and 0.49 of 16 layers both round to 8: one budget
    assert len(cells) == 1 + 2 * len(labels)
    assert len({c.key for c in cells}) == len(cells)


@pytest.mark.parametrize("over, needle", [
    ({"methods": [{"method": "domain", "domain": "math"}, "last",
                  {"method": "mixed", "weights": {"math": -1}}]}, "methods[2].weights"),
    ({"methods": ["nope"]}, "methods[0].method"),
    ({"methods": [{"method": "domain"}]}, "methods[0].domain"),
    ({"methods": [{"method": "domain", "domain": "chemistry"}]}, "methods[0].domain"),
    ({"methods": [{"method": "last", "colour": 3}]}, "methods[0].colour"),
    ({"budgets": [0.25, 1.5]}, "budgets[1]"),
    ({"budgets": []}, "budgets"),
    ({"eval": [{"data": "missing.jsonl"}]}, "eval[0].data"),
    ({"eval": [{"data": "x.jsonl", "colour": 1}]}, "eval[0].colour"),
    ({"calibration": {"data": "nowhere.jsonl"}}, "calibration.data"),
    ({"dtype": "float8"}, "dtype"),
    ({"protect": {"first": -1}}, "protect.first"),
    ({"batchsize": 3}, "batchsize"),
    ({"batch_size": "4"}, "batch_size: expected an integer >= 1, got '4'"),  # no silent coercion
    ({"eval": [{"kind": "nope"}]}, "eval[0].kind: unknown kind 'nope'"),
    ({"heal": {"budgets": [2.5]}}, "heal.budgets[0]"),
    ({"calibration": {"data": "x.jsonl", "max_samples": 0}}, "calibration.max_samples"),
    ({"protect": {"frist": 1}}, "protect.frist: unknown key; allowed here: allow_deepstack, first, last"),
    # refused before the model loads (issue 26: these ran scoring and the ablation pass, then skipped the cells)
    ({"methods": [{"method": "iterative", "base": "ablation", "domain": "math"}]},
     "methods[0].base: iterative cannot use base 'ablation'"),
    ({"methods": ["last", {"method": "iterative", "base": "nonsense"}]}, "methods[1].base: unknown base 'nonsense'"),
    ({"methods": [{"method": "spaced", "base": "domain"}]}, "methods[0]: method 'spaced' needs --domain"),
    ({"methods": [{"method": "domain", "domain": "math", "token_group": "pixels"}]},
     "methods[0].token_group: unknown token group 'pixels'"),
])
def test_errors_name_the_key(tmp_path, calib_dir, over, needle):
    path = write(tmp_path, calib_dir, **over)
    with pytest.raises(StudyError) as err:
        load_study(path)
    assert f"study.yaml: {needle}" in str(err.value)


def test_lmms_eval_sets_are_validated_up_front(tmp_path, calib_dir):
    path = write(tmp_path, calib_dir, eval=[{"kind": "lmms", "tasks": ["mmstar"]}])
    from depthprune.evaluation.lmms import missing_packages
    if missing_packages():  # lmms-eval or a module its qwen3_vl model imports (decord, ...)
        with pytest.raises(StudyError, match=r"eval\[0\].kind.*need the lmms-eval package"):
            load_study(path)
        return
    assert load_study(path).eval_sets[0].tasks == ["mmstar"]
    path = write(tmp_path, calib_dir, eval=[{"kind": "lmms", "tasks": ["mmstar", "ai2d"], "domain": "general",
                                             "include_path": str(tmp_path)}])
    es = load_study(path).eval_sets[0]
    assert (es.domain, es.include_path, es.max_new_tokens) == ("general", str(tmp_path), None)
    for entry, needle in (({"accuracy": False}, r"eval\[0\].accuracy: lmms-eval sets measure accuracy only"),
                          ({"include_path": "nowhere"}, r"eval\[0\].include_path: .*nowhere: not a directory")):
        path = write(tmp_path, calib_dir, eval=[{"kind": "lmms", "tasks": ["mmstar"], **entry}])
        with pytest.raises(StudyError, match=needle):
            load_study(path)
    path = write(tmp_path, calib_dir, eval=[{"kind": "lmms", "tasks": ["mmstar"]}], metrics={"accuracy": False})
    with pytest.raises(StudyError, match="metrics.accuracy: false leaves the lmms-eval sets nothing"):
        load_study(path)


def test_lmms_eval_sets_need_a_qwen3_vl_model_before_it_loads(tmp_path, calib_dir):
    pytest.importorskip("lmms_eval")
    from depthprune.study.sweep import run_study
    from tests.helpers.tiny_models import save_tiny
    llm = save_tiny("qwen3", tmp_path / "llm")
    path = write(tmp_path, calib_dir, model=str(llm), eval=[{"kind": "lmms", "tasks": ["mmstar"]}])
    with pytest.raises(StudyError, match="lmms-eval sets inside a sweep need a Qwen3-VL model"):
        run_study(path, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_missing_bridges_are_named(tmp_path, calib_dir):
    if importlib.util.find_spec("trl") is None:
        path = write(tmp_path, calib_dir, heal={"recipe": {"mode": "lora"}, "budgets": [1]})
        with pytest.raises(StudyError, match="heal"):
            load_study(path)
    else:
        path = write(tmp_path, calib_dir, heal={"recipe": {"mode": "lora", "stepz": 3}, "budgets": [1]})
        with pytest.raises(StudyError, match=r"heal.recipe.stepz"):
            load_study(path)


def test_a_recipe_without_steps_records_the_default_time_budget_in_the_study(tmp_path, calib_dir):
    pytest.importorskip("trl")
    timed = load_study(write(tmp_path, calib_dir, heal={"recipe": {"mode": "lora"}, "budgets": [1]}))
    assert timed.heal["recipe"] == {"mode": "lora", "time_budget": 180.0}
    stepped = load_study(write(tmp_path, calib_dir, heal={"recipe": {"mode": "lora", "steps": 5}, "budgets": [1]}))
    assert stepped.heal["recipe"] == {"mode": "lora", "steps": 5}


def test_cli_bad_study_is_one_line_exit_2_before_loading(tmp_path, calib_dir):
    path = write(tmp_path, calib_dir, model=str(tmp_path / "no-such-model"),
                 methods=[{"method": "mixed", "weights": "math=x"}])
    res = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert "study.yaml: methods[0].weights" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()
    # a budget the model cannot meet is caught from its config, still before the weights load
    from tests.helpers.tiny_models import save_tiny
    model = save_tiny("qwen3", tmp_path / "m")
    path = write(tmp_path, calib_dir, model=str(model), budgets=[6])
    res = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "budgets[0]" in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_messages_echo_a_huge_value_bounded(calib_dir):
    """A value that is huge when written out (here a million strings, as YAML aliases build it: a
    few lists referring to each other) is shown in a few dozen characters, not repr'd whole."""
    from depthprune.study.config import parse_study
    huge: list = ["lol"] * 10
    for _ in range(5):
        huge = [huge] * 10
    raw = {"model": "toy", "calibration": {"data": str(calib_dir / "calib.jsonl")},
           "eval": [{"data": str(calib_dir / "calib.jsonl")}], "budgets": [1]}
    for methods, key in [([{"method": "domain", "domain": [huge]}], "methods[0].domain[0]: expected a non-empty"),
                         ([{"method": huge}], "methods[0].method: unknown method [[["),
                         ([{"method": "random", "seed": [huge]}], "methods[0].seed[0]: expected an integer")]:
        with pytest.raises(StudyError) as err:
            parse_study(raw | {"methods": methods}, calib_dir, "s.yaml")
        assert key in str(err.value) and len(str(err.value)) < 400, str(err.value)[:400]
    with pytest.raises(StudyError) as err:
        parse_study(raw | {"methods": ["last"], "budgets": [huge]}, calib_dir, "s.yaml")
    assert "budgets[0]" in str(err.value) and len(str(err.value)) < 400


def test_error_lines_are_bounded_whatever_the_message():
    from depthprune.cli_errors import error_message
    message, status = error_message(ValueError("what went wrong " + "x " * 10**6 + "the fix"))
    assert status == 2 and len(message) < 2100 and "\n" not in message
    assert message.startswith("what went wrong") and message.endswith("the fix")


def test_demo_study_quick_caps_calibration_and_full_does_not(tmp_path, calib_dir):
    """The demo's two studies parse; --quick scores the first 64 calibration records per domain."""
    from depthprune.study.config import parse_study
    from depthprune.toy.demo import QUICK_BUDGETS, QUICK_CALIB_PER_DOMAIN, demo_study
    data = {"calib": calib_dir / "calib.jsonl", "eval": calib_dir / "calib.jsonl"}
    quick = parse_study(demo_study(data, quick=True), tmp_path, source="demo study")
    full = parse_study(demo_study(data, quick=False), tmp_path, source="demo study")
    assert quick.calib_max_samples == QUICK_CALIB_PER_DOMAIN == 64 and full.calib_max_samples is None
    assert quick.budgets == QUICK_BUDGETS and len(full.budgets) == 8
    assert len(full.methods) > len(quick.methods)


def test_demo_headline_study_reuses_the_grid_calibration(tmp_path, calib_dir):
    """The full demo's headline sweep: domain-aware signals per domain at 25% on every eval
    record, unhealed, with the grid's calibration identity (so the grid's scores are reused)."""
    from depthprune.study.config import parse_study
    from depthprune.toy.demo import demo_study, headline_study
    data = {"calib": calib_dir / "calib.jsonl", "eval": calib_dir / "calib.jsonl"}
    grid = parse_study(demo_study(data, quick=False), tmp_path, source="demo study")
    head = parse_study(headline_study(data), tmp_path, source="demo headline study")
    assert head.budgets == [0.25] and head.heal is None and head.eval_sets[0].max_samples is None
    assert {m.label for m in head.methods} == {f"{m}:{d}{g}" for m, g in (("domain", ""), ("domain", "@last"),
                                                                       ("contrast", ""), ("ablation", ""),
                                                                       ("sleb", ""))
                                              for d in ("math", "general")}
    for key in ("calibration", "calib_max_samples", "ablation", "batch_size", "dtype", "max_span"):
        assert getattr(head, key) == getattr(grid, key), key


def test_compensate_weights_fit_every_plan_on_the_given_domains(tmp_path, calib_dir):
    """`compensate.weights`: the repair of every plan calibrated on those domains (the
    recommended recipe: layers chosen for one domain, repaired on every domain kept); without
    it each plan's own domain; a domain not in the calibration data is refused by name."""
    from depthprune.study.config import study_dict
    section = {"method": "refit", "budgets": [1], "weights": {"math": 1, "general": 1}}
    study = load_study(write(tmp_path, calib_dir, compensate=section))
    repaired = {c.variant.label: c.heal["compensate"]["weights"] for c in expand_cells(study, 16) if c.heal}
    assert repaired == {"domain:math": {"general": 0.5, "math": 0.5}, "domain:general": {"general": 0.5, "math": 0.5},
                        "last": {"general": 0.5, "math": 0.5}}
    assert study_dict(study, tmp_path / "study")["compensate"]["weights"] == {"math": 1.0, "general": 1.0}
    own = load_study(write(tmp_path, calib_dir, compensate={"method": "refit", "budgets": [1]}))
    assert {c.variant.label: c.heal["compensate"]["weights"] for c in expand_cells(own, 16) if c.heal}[
        "domain:math"] == {"math": 1.0}
    with pytest.raises(StudyError, match=r"compensate.weights.*'physics' is not one"):
        load_study(write(tmp_path, calib_dir, compensate=section | {"weights": {"physics": 1}}))
