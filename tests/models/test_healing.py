"""Healing (depthprune heal): answer-only labels, what each mode trains, LoRA merged into a stock
checkpoint that reloads exactly, distillation, resume, and the one-line bad-input errors.
Tiny random-init models of real transformers classes; a slow test heals the pruned toy."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
from typer.testing import CliRunner

pytest.importorskip("trl")
pytest.importorskip("peft")

from depthprune.cli import app
from depthprune.data.records import load_records
from depthprune.healing.command import heal
from depthprune.healing.recipe import HealConfig, HealError, TrainingFiles
from depthprune.healing.trainer import (
    TimeBudget,
    checkpoints,
    freeze_for,
    heal_model,
    holdout_split,
    interleaved_layers,
    neighbour_layers,
    training_batch,
)
from depthprune.models.loading import load_model
from tests.helpers.tiny_models import save_tiny

runner = CliRunner()
FAST = {"steps": 2, "batch_size": 4, "logging_steps": 1, "save_steps": 1}


def full_with_a_checkpoint_every_step(steps: int) -> HealConfig:
    """A full-mode recipe that saves (and logs) every step: what the resume tests interrupt."""
    return HealConfig(mode="full", **(FAST | {"steps": steps}))


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return save_tiny("qwen3_vl", tmp_path_factory.mktemp("q") / "src")


@pytest.fixture(scope="module")
def pruned(qwen, tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "pruned"
    res = run("prune", qwen, "--layers", "3,4", "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("l") / "src")


def _tensors(path):
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})  # noqa: SIM118 - safe_open is not a dict
    return out


def test_labels_cover_only_the_answer_and_its_end_of_turn(qwen, calib_dir):
    _, processor = load_model(qwen)
    records = load_records(calib_dir / "calib.jsonl")
    batch = training_batch(processor, records)
    tok = processor.tokenizer
    for i, r in enumerate(records):
        supervised = batch["input_ids"][i][batch["labels"][i] != -100]
        assert tok.decode(supervised).replace(" ", "") == f"{r.answer}<|im_end|>"
        # everything before the answer (image tokens included) and the padding is masked
        first = int((batch["labels"][i] != -100).nonzero()[0])
        assert (batch["labels"][i, :first] == -100).all() and first > 0
        assert (batch["labels"][i][batch["attention_mask"][i] == 0] == -100).all()


def test_neighbour_layers_are_the_kept_layers_beside_removed_ones():
    # 8 layers, remove 3,4 and 7: kept 0,1,2,5,6 -> neighbours 2 and 5 (new 2, 3) and 6 (new 4)
    assert neighbour_layers([3, 4, 7], 8) == [2, 3, 4]
    assert neighbour_layers([0], 4) == [0]


def test_interleaved_layers_train_one_layer_before_each_cut_and_leave_an_anchor():
    # 8 layers, remove 3,4 and 7: kept 0,1,2,5,6 (new 0..4); runs start at 3 and 7 ->
    # the kept layers before them are old 2 (new 2) and old 6 (new 4); new 3 stays a frozen anchor
    assert interleaved_layers([3, 4, 7], 8) == [2, 4]
    assert interleaved_layers([0], 4) == [0]  # a cut at the start: the layer after it
    # 6 layers, remove 2 and 4: kept 0,1,3,5; before 2 is new 1, before 4 is new 2 -> adjacent to
    # the trained new 1, so it stays frozen (never two trained neighbours)
    assert interleaved_layers([2, 4], 6) == [1]


def test_head_last_trains_the_head_the_final_norm_and_the_last_layers(llama):
    model, _ = load_model(llama)
    names = freeze_for(model, "head-last", None, last_layers=2)
    n = len(model.model.layers)
    layers = {int(k.split("layers.")[1].split(".")[0]) for k in names if "layers." in k}
    assert layers == {n - 2, n - 1}
    assert "model.norm.weight" in names and any(k.startswith("lm_head.") or "embed_tokens" in k for k in names)


def test_time_budget_schedule_warms_up_then_decays_to_zero():
    clock = TimeBudget(100.0, warmup_ratio=0.05)
    assert clock.elapsed == 0 and not clock.spent
    import time as _time
    for share, want in ((0.025, 0.5), (0.05, 1.0), (0.525, 0.5), (1.0, 0.0)):
        clock.started = _time.perf_counter() - share * 100
        assert clock.lr_factor() == pytest.approx(want, abs=0.02)
    assert clock.spent


def test_a_time_budget_stops_training_and_replaces_the_step_count(llama, calib_dir):
    records = load_records(calib_dir / "text.jsonl")
    model, tok = load_model(llama)
    stats = heal_model(model, tok, records, HealConfig(mode="full", steps=100_000, batch_size=2,
                                                       time_budget=2.0, logging_steps=1), progress=False)
    assert 1 <= stats.steps < 100_000 and stats.recipe["time_budget"] == 2.0


def test_holdout_split_keeps_every_domain_and_reports_nll_before_and_after(llama, calib_dir):
    records = load_records(calib_dir / "text.jsonl") * 5  # 35 records
    train, held = holdout_split(records, 0.2, seed=0)
    assert len(held) == 7 and len(train) == 28 and {r.domain for r in held} == {r.domain for r in records}
    assert holdout_split(records[:19], 0.2, seed=0)[1] == []  # too few records to hold any out
    model, tok = load_model(llama)
    stats = heal_model(model, tok, records, HealConfig(mode="full", holdout=0.2, learning_rate=1e-2, **FAST),
                       progress=False)
    assert stats.heldout["n"] == 7 and set(stats.heldout["before"]) == {"general", "math"}
    assert stats.heldout["after"] != stats.heldout["before"] and stats.recipe["num_records"] == 28


def test_resume_skips_a_checkpoint_left_incomplete_by_a_kill(llama, calib_dir, tmp_path):
    records = load_records(calib_dir / "text.jsonl")
    work = tmp_path / "work"
    model, tok = load_model(llama)
    heal_model(model, tok, records, full_with_a_checkpoint_every_step(3), files=TrainingFiles(work), progress=False)
    (work / "checkpoint-3" / "trainer_state.json").unlink()  # killed while TRL was writing it
    assert [p.name for p in checkpoints(work)] == ["checkpoint-2"]
    model, tok = load_model(llama)
    with pytest.warns(UserWarning, match="checkpoint-3 is incomplete"):
        stats = heal_model(model, tok, records, full_with_a_checkpoint_every_step(3), files=TrainingFiles(work, resume=True),
                           progress=False)
    assert stats.steps == 3 and stats.recipe["resumed_from"] == "checkpoint-2"


def test_lora_heal_merges_into_a_stock_checkpoint_and_spares_the_vision_tower(pruned, calib_dir, tmp_path):
    out = tmp_path / "healed"
    res = run("heal", pruned, "--data", calib_dir / "calib.jsonl", "--out", out, "--steps", "3",
              "--batch-size", "4", "--learning-rate", "0.05", "--save-steps", "1")
    assert res.exit_code == 0, res.output
    before, after = _tensors(pruned), _tensors(out)
    assert set(after) == set(before)  # merged: no lora_A/lora_B/base_layer keys
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("language_model.layers." in k and k.rsplit(".", 2)[-2] in
                           ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                           for k in changed)
    assert not any("visual" in k for k in changed)
    model, loading = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert not any(loading.values())
    assert model.config.text_config.num_hidden_layers == 4
    info = json.loads((out / "pruning.json").read_text())
    assert info["removed_layers"] == [3, 4]  # the prune record is kept
    healing = info["healing"]
    assert healing["steps"] == 3 and healing["recipe"]["mode"] == "lora"
    assert len(healing["data_fingerprint"]) == 16 and healing["final_loss"] == healing["losses"][-1]
    # LoRA trains adapters only: a small fraction of the model's parameters
    assert 0 < healing["recipe"]["trained_parameters"] < sum(p.numel() for p in model.parameters()) / 4
    logged = [json.loads(line) for line in (out / "healing_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == [3]  # logging every min(10, steps) steps
    assert "train_runtime" in logged[-1] and "{'loss'" not in res.output  # the summary too; no dicts printed
    assert (out / "tokenizer.json").read_bytes() == (pruned / "tokenizer.json").read_bytes()
    assert "## Healing" in (out / "README.md").read_text()
    assert not (tmp_path / "healed.heal-work").exists()


def test_healed_checkpoint_reloads_to_the_same_logits(llama, calib_dir, tmp_path):
    model, tok = load_model(llama)
    records = load_records(calib_dir / "text.jsonl")
    heal_model(model, tok, records, HealConfig(mode="full", learning_rate=1e-2, **FAST), progress=False)
    batch = training_batch(tok, records[:2])
    from depthprune.pruning import pruning_info, save_pruned
    save_pruned(model, tok, tmp_path / "m", pruning_info(str(llama), 4, [], "none", 0), source_model=llama)
    reloaded, loading = AutoModelForCausalLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not any(loading.values())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**inputs).logits, model.eval()(**inputs).logits)


def test_full_mode_trains_the_decoder_only(qwen, calib_dir):
    model, processor = load_model(qwen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heal_model(model, processor, load_records(calib_dir / "calib.jsonl"),
               HealConfig(mode="full", learning_rate=1e-2, **FAST), progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(".layers.0." in k for k in changed)
    assert all(k.startswith("model.language_model.layers.") or k == "model.language_model.norm.weight"
               for k in changed), sorted(changed)[:5]
    assert all(p.requires_grad for p in model.parameters())  # left as it was found


def test_neighbours_mode_only_changes_the_neighbour_layers(pruned, calib_dir, tmp_path):
    out = tmp_path / "n"
    res = run("heal", pruned, "--data", calib_dir / "calib.jsonl", "--out", out, "--train-layers",
              "neighbours", "--steps", "2", "--batch-size", "4", "--learning-rate", "0.01")
    assert res.exit_code == 0, res.output
    before, after = _tensors(pruned), _tensors(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # 6 layers, removed 3,4: kept 0,1,2,5 -> neighbours are old 2 and 5 = new 2 and 3
    layers = {int(k.split("layers.")[1].split(".")[0]) for k in changed}
    assert layers == {2, 3} and all("language_model.layers." in k for k in changed)
    assert json.loads((out / "pruning.json").read_text())["healing"]["recipe"]["trained_layers"] == [2, 3]


def test_distillation_adds_the_kl_term(llama, calib_dir, tmp_path):
    records = load_records(calib_dir / "text.jsonl")
    student, tok = load_model(llama)
    teacher, _ = load_model(llama)
    with torch.no_grad():  # make the student differ from its teacher
        for p in student.model.layers[1].parameters():
            p.add_(0.5 * torch.randn_like(p))
    config = HealConfig(mode="lora", distill_weight=1.0, **FAST)
    stats = heal_model(student, tok, records, config, teacher=teacher, progress=False)
    assert len(stats.kl) == 2 and all(k > 0 for k in stats.kl)
    # with w = 1 the loss is the KL alone (T^2-scaled), so the logged losses equal the KL
    assert stats.losses == pytest.approx(stats.kl, rel=1e-4)
    assert "KL" in stats.recipe["loss"]


def test_resume_continues_from_the_latest_checkpoint(llama, calib_dir, tmp_path):
    records = load_records(calib_dir / "text.jsonl")
    work = tmp_path / "work"
    model, tok = load_model(llama)
    heal_model(model, tok, records, full_with_a_checkpoint_every_step(2), files=TrainingFiles(work), progress=False)
    assert (work / "checkpoint-2").is_dir()
    model, tok = load_model(llama)  # "killed" after step 2: now ask for 4 steps, resuming
    stats = heal_model(model, tok, records, full_with_a_checkpoint_every_step(4), files=TrainingFiles(work, resume=True),
                       progress=False)
    assert stats.steps == 4 and stats.recipe["resumed_from"] == "checkpoint-2"
    assert len(stats.losses) == 4  # steps 1-2 from the checkpoint's log, 3-4 trained now


def test_interrupted_run_needs_resume(pruned, calib_dir, tmp_path):
    work = tmp_path / "h.heal-work"
    (work / "checkpoint-5").mkdir(parents=True)
    res = run("heal", pruned, "--data", calib_dir / "calib.jsonl", "--out", tmp_path / "h")
    assert res.exit_code == 2 and "--resume" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("case", ["no-answers", "bad-mode", "neighbours-unpruned", "bad-train-layers"])
def test_bad_inputs_are_one_line_errors(case, qwen, calib_dir, tmp_path):
    data = calib_dir / "calib.jsonl"
    extra: list = []
    if case == "no-answers":
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        data = calib_dir / "noanswer.jsonl"
        data.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "answer"}) for r in rows))
        expect = "no 'answer'"
    elif case == "bad-mode":
        extra, expect = ["--mode", "qlora"], "--mode 'qlora'"
    elif case == "neighbours-unpruned":
        extra, expect = ["--train-layers", "neighbours"], "needs a pruned checkpoint"
    else:
        extra, expect = ["--train-layers", "some"], "--train-layers 'some'"
    res = run("heal", qwen, "--data", data, "--out", tmp_path / "o", *extra)
    assert res.exit_code == 2, res.output
    assert expect in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_config_validation():
    with pytest.raises(HealError, match="unknown heal mode"):
        HealConfig(mode="qlora")
    with pytest.raises(HealError, match="distill_weight"):
        HealConfig(distill_weight=1.5)
    assert HealConfig().lr == 1e-3 and HealConfig(mode="full").lr == 2e-4


def test_the_default_trains_for_a_time_budget_and_a_step_count_replaces_it():
    from depthprune.healing.recipe import DEFAULT_TIME_BUDGET, MAX_TIMED_STEPS
    from depthprune.healing.trainer import max_steps_for
    default = HealConfig()
    assert default.time_budget == DEFAULT_TIME_BUDGET == 180 and default.steps is None
    assert max_steps_for(default, 3000) == MAX_TIMED_STEPS  # the clock, not a step count, ends it
    assert HealConfig(steps=5).time_budget is None and max_steps_for(HealConfig(steps=5), 3000) == 5
    assert HealConfig(epochs=1.0).time_budget is None
    assert max_steps_for(HealConfig(time_budget=10, steps=7), 3000) == 7  # steps: an upper limit


def test_heal_refuses_existing_output_before_loading(qwen, calib_dir, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("keep")
    with pytest.raises(ValueError, match="--overwrite"):
        heal(qwen, calib_dir / "calib.jsonl", tmp_path / "o", HealConfig(**FAST))
    assert (tmp_path / "o" / "x").read_text() == "keep"


def test_gradient_checkpointing_only_on_a_gpu_unless_chosen(tmp_path):
    """TRL turns gradient checkpointing on; on CPU it costs time for the same weights, so the
    default follows the device and an explicit choice wins."""
    import torch

    from depthprune.healing.trainer import _sft_config
    on_gpu = torch.cuda.is_available()
    assert _sft_config(HealConfig(steps=2), tmp_path, 2).gradient_checkpointing is on_gpu
    assert _sft_config(HealConfig(steps=2, gradient_checkpointing=True), tmp_path, 2).gradient_checkpointing is True
    assert _sft_config(HealConfig(steps=2, gradient_checkpointing=False), tmp_path, 2).gradient_checkpointing is False
