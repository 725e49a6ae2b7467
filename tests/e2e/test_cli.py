"""The CLI end to end on a tiny Qwen3-VL (score -> rank -> prune), and every bad-input error:
clear message naming the input, exit status 2, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.scoring.scores import Scores
from tests.helpers.tiny_models import save_tiny

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return save_tiny("qwen3_vl", tmp_path_factory.mktemp("q") / "src")


@pytest.fixture(scope="module")
def scored(qwen, calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "scores.json"
    res = run("score", qwen, "--data", calib_dir / "calib.jsonl", "--out", out, "--batch-size", "2")
    assert res.exit_code == 0, res.output
    return out


def test_score_rank_prune_end_to_end(qwen, scored, tmp_path):
    scores = Scores.load(scored)
    assert scores.domains == ["general", "math"] and scores.protected_layers == [0, 1, 2]
    res = run("rank", scored, "--method", "domain", "--domain", "math", "--budget", "0.25",
              "--save-plan", tmp_path / "p.plan.json", "--bootstrap", "20")
    assert res.exit_code == 0, res.output
    assert "0-based" in res.output and "stability of math" in res.output
    plan = json.loads((tmp_path / "p.plan.json").read_text())
    assert plan["budget"] == 2 and not set(plan["remove"]) & {0, 1, 2}  # round(0.25 * 6) = 2
    res = run("prune", qwen, "--scores", scored, "--method", "mixed", "--weights", "math=0.5,general=0.5",
              "--budget", "0.25", "--out", tmp_path / "pruned")
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "pruned" / "pruning.json").read_text())
    assert info["num_layers"] == 4 and info["weights"] == {"math": 0.5, "general": 0.5}
    model, loading = AutoModelForImageTextToText.from_pretrained(tmp_path / "pruned", output_loading_info=True)
    assert not any(loading.values())
    assert model.config.text_config.num_hidden_layers == 4
    # a saved plan gives the same checkpoint as ranking again
    res = run("prune", qwen, "--plan", tmp_path / "p.plan.json", "--out", tmp_path / "from_plan")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "from_plan" / "pruning.json").read_text())["removed_layers"] == plan["remove"]


def test_score_free_and_iterative_methods(qwen, calib_dir, tmp_path):
    res = run("prune", qwen, "--method", "last", "--budget", "1", "--out", tmp_path / "last")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "last" / "pruning.json").read_text())["removed_layers"] == [4]
    res = run("prune", qwen, "--method", "iterative", "--base", "domain", "--domain", "math",
              "--budget", "2", "--data", calib_dir / "calib.jsonl", "--out", tmp_path / "it")
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "it" / "pruning.json").read_text())["removed_layers"]) == 2


def test_explicit_layers_and_protection(qwen, tmp_path):
    res = run("prune", qwen, "--layers", "1,4", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "deepstack" in res.output and "--allow-deepstack" in res.output
    assert not (tmp_path / "x").exists()
    res = run("prune", qwen, "--layers", "1,4", "--allow-deepstack", "--out", tmp_path / "y")
    assert res.exit_code == 0, res.output


def _bad(res, *needles):
    assert res.exit_code == 2, res.output
    for needle in needles:
        assert needle in res.output, res.output


def test_bad_data_errors(qwen, tmp_path):
    def write(lines):
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return path
    ok = json.dumps({"id": "a", "domain": "math", "question": "what is 2 plus 2 ?"})
    cases = [
        ([ok, "{not json"], ["bad.jsonl:2", "malformed JSON"]),
        ([json.dumps({"id": "a", "domain": "math", "image": "missing.png", "question": "q"})],
         ["bad.jsonl:1", "missing.png", "not found"]),
        ([json.dumps({"id": "a", "domain": " ", "question": "q"})], ["bad.jsonl:1", "domain"]),
        ([ok, ok], ["bad.jsonl:2", "duplicate id"]),
    ]
    for lines, needles in cases:
        out = tmp_path / "s.json"
        _bad(run("score", qwen, "--data", write(lines), "--out", out), *needles)
        assert not out.exists()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = write([json.dumps({"id": "a", "domain": "math", "image": "broken.png", "question": "q"})])
    _bad(run("score", qwen, "--data", path, "--out", tmp_path / "s.json"), "broken.png", "cannot be read")


def test_bad_model_and_budget_errors(qwen, scored, tmp_path):
    _bad(run("score", tmp_path / "nope", "--data", "x.jsonl", "--out", tmp_path / "s.json"), "x.jsonl")
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    _bad(run("prune", vit, "--method", "last", "--budget", "1", "--out", tmp_path / "o"),
         "unknown architecture 'vit'", "qwen3_vl", "ADAPTERS")
    _bad(run("rank", scored, "--budget", "6"), "budget")
    _bad(run("rank", scored, "--method", "domain", "--domain", "math", "--budget", "4"),
         "only 3 of 6", "--allow-deepstack")
    _bad(run("rank", scored, "--method", "domain", "--domain", "physics", "--budget", "1"), "physics")
    _bad(run("rank", tmp_path / "none.json"), "not found")


def test_existing_output_refused_and_untouched(qwen, scored, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _bad(run("prune", qwen, "--method", "last", "--budget", "1", "--out", out), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    _bad(run("score", qwen, "--data", "x.jsonl", "--out", scored), "--overwrite")
    res = run("prune", qwen, "--method", "last", "--budget", "1", "--out", out, "--overwrite")
    assert res.exit_code == 0 and not (out / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".taken")]  # no temp left


def test_failed_save_leaves_nothing(qwen, tmp_path, monkeypatch):
    from depthprune import pruning
    monkeypatch.setattr(pruning, "saved_layer_indices", lambda d: {99})  # simulate a bad save
    res = run("prune", qwen, "--method", "last", "--budget", "1", "--out", tmp_path / "o")
    _bad(res, "expected 0..4")
    assert list(tmp_path.iterdir()) == []


def test_scores_reload_gives_same_plan(scored):
    import depthprune as dp
    a = dp.plan(Scores.load(scored), "mixed", 2)
    b = dp.plan(scored, "mixed", 2)
    assert a.remove == b.remove and a.scores_fingerprint == b.scores_fingerprint
    assert torch.equal(Scores.load(scored).sums, Scores.load(scored).sums)


def test_eval_command_writes_metrics(qwen, calib_dir, tmp_path):
    out = tmp_path / "m.json"
    res = run("eval", qwen, "--data", calib_dir / "calib.jsonl", "--out", out, "--batch-size", "4",
              "--max-new-tokens", "3")
    assert res.exit_code == 0, res.output
    metrics = json.loads(out.read_text())
    assert set(metrics["domains"]) == {"math", "general"}
    assert (tmp_path / "m.predictions.jsonl").is_file()
    _bad(run("eval", qwen, "--data", calib_dir / "calib.jsonl", "--out", out), "--overwrite")


def test_eval_baseline_prints_accuracy_retained_per_domain(tmp_path):
    """Retention (pruned accuracy ÷ the unpruned model's on the same records, with a CI) and the
    hidden-collapse flag, on the bundled toy at 25% so that the numbers mean something."""
    from depthprune.toy import default_data
    data = default_data(tmp_path / "data")
    small = tmp_path / "small.jsonl"  # 30 records per domain: enough to see the ratio
    rows = [json.loads(line) for line in data["eval"].read_text().splitlines()]
    picked = [r for d in ("math", "general") for r in [x for x in rows if x["domain"] == d][:30]]
    small.write_text("".join(json.dumps(dict(r, image=str(data["eval"].parent / r["image"]) if r.get("image") else None))
                             + "\n" for r in picked))
    base, pruned = tmp_path / "out" / "base.json", tmp_path / "out" / "pruned.json"
    assert run("eval", "toy", "--data", small, "--out", base, "--max-new-tokens", "8").exit_code == 0
    assert run("prune", "toy", "--layers", "3,5,7,10", "--out", tmp_path / "p").exit_code == 0
    res = run("eval", tmp_path / "p", "--data", small, "--out", pruned, "--max-new-tokens", "8", "--baseline", base)
    assert res.exit_code == 0, res.output
    metrics = json.loads(pruned.read_text())
    b = json.loads(base.read_text())
    for d in ("math", "general"):
        kept = metrics["retention"][d]
        assert kept["kept"] == pytest.approx(metrics["domains"][d]["accuracy"] / b["domains"][d]["accuracy"])
        assert kept["ci95"][0] <= kept["kept"] <= kept["ci95"][1]
        assert f"{d}: {kept['kept']:.0%} of the unpruned accuracy kept" in res.output
    assert isinstance(metrics["hidden_collapse"], list)
    _bad(run("eval", tmp_path / "p", "--data", small, "--out", tmp_path / "x.json", "--baseline", tmp_path / "none.json"),
         "--baseline", "unpruned model")


def test_data_synth_command(tmp_path):
    res = run("data", "synth", "--out", tmp_path / "d", "--seed", "3", "--n-train", "30",
              "--n-calib", "6", "--n-eval", "10")
    assert res.exit_code == 0, res.output
    sizes = {split: len((tmp_path / "d" / f"{split}.jsonl").read_text().splitlines())
             for split in ("train", "calib", "eval")}
    assert sizes == {"train": 30, "calib": 6, "eval": 10}
    _bad(run("data", "synth", "--out", tmp_path / "d"), "not empty")


def test_toy_alias_evaluates_the_bundled_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local directory called "toy" here
    assert run("data", "synth", "--out", "d", "--n-train", "0", "--n-calib", "2", "--n-eval", "6").exit_code == 0
    res = run("eval", "toy", "--data", "d/eval.jsonl", "--out", "m.json", "--max-new-tokens", "4")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["model"].endswith("toy/model") and sum(d["n"] for d in metrics["domains"].values()) == 6
