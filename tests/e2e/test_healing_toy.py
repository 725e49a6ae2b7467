"""Slow: heal the bundled toy Qwen3-VL after a 25% math-aware prune and check that every
domain gets back at least half of the accuracy it lost, on a data seed it was not trained on."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from depthprune.cli import app

pytest.importorskip("trl")
pytest.importorskip("peft")

#: the layers `score` + `rank --method domain --domain math --budget 0.25` picks on the toy
#: (calib split of seed 7); fixed here so the test does not depend on the scorer
MATH_AWARE_25 = "5,7,10,13"
#: 200 steps of 16 records (the default recipe's batch and LR, twice its 100 steps): on the
#: stage-3 toy the prune costs math 41 points, and 100 steps gave back 48.6% of it (general
#: 61.5%; measured 2026-11-24), just short of the half this test asks for
HEAL_STEPS = 200


def run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.slow
@pytest.mark.parametrize("options", [[], ["--mode", "full"]], ids=["lora", "full"])
def test_heal_recovers_half_of_the_lost_accuracy_on_the_toy(options, tmp_path):
    import torch
    torch.set_num_threads(2)
    run("data", "synth", "--out", tmp_path / "train", "--seed", 7, "--n-train", 3000, "--n-calib", 0,
        "--n-eval", 0)
    run("data", "synth", "--out", tmp_path / "eval", "--seed", 11, "--n-train", 0, "--n-calib", 0)
    run("prune", "toy", "--layers", MATH_AWARE_25, "--out", tmp_path / "pruned")
    run("heal", tmp_path / "pruned", "--data", tmp_path / "train" / "train.jsonl", "--out",
        tmp_path / "healed", "--steps", HEAL_STEPS, *options)
    acc = {}
    for name, path in (("toy", "toy"), ("pruned", tmp_path / "pruned"), ("healed", tmp_path / "healed")):
        run("eval", path, "--data", tmp_path / "eval" / "eval.jsonl", "--out", tmp_path / f"{name}.json",
            "--batch-size", 50, "--dtype", "float32")
        metrics = json.loads((tmp_path / f"{name}.json").read_text())
        acc[name] = {d: m["accuracy"] for d, m in metrics["domains"].items()}
    print(json.dumps(acc))
    for domain in ("math", "general"):
        lost = acc["toy"][domain] - acc["pruned"][domain]
        assert lost > 0.05, acc  # the prune must hurt, or there is nothing to heal
        assert acc["healed"][domain] - acc["pruned"][domain] >= lost / 2, (domain, acc)
