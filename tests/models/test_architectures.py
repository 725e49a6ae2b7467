"""The invariants every supported architecture must keep, on tiny random-init configs of
the real transformers classes (see tests/helpers/tiny_configs.py)."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from depthprune.data.records import encode
from depthprune.models.architectures import (
    ADAPTERS,
    adapter_for,
    architecture_protected,
    find_decoder_layers,
    text_config,
)
from depthprune.pruning import layers_as_identity, prune_layers, pruning_info, save_pruned
from depthprune.scoring.forward import ScoreSettings, score_model
from tests.helpers.tiny_configs import FAMILIES, LAYERS, LLM_FAMILIES, VLM_FAMILIES
from tests.helpers.tiny_models import load_tiny_family

REMOVE = [3, 4]  # never a protected (deepstack) layer; includes a sliding and a full layer
@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory, calib_dir):
    family = request.param
    src, model, processor, records = load_tiny_family(family, tmp_path_factory.mktemp(family) / "src", calib_dir)
    return family, src, model, processor, records


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


def test_pruned_logits_equal_identity_layers(tiny):
    family, _, model, processor, records = tiny
    batch = encode(processor, records[:3])
    with layers_as_identity(model, REMOVE):
        expected = _logits(model, batch)
    pruned = prune_layers(copy.deepcopy(model), REMOVE)
    assert len(find_decoder_layers(pruned)[1]) == LAYERS - len(REMOVE)
    torch.testing.assert_close(_logits(pruned, batch), expected, rtol=0, atol=1e-6)
    # and the pruned model really differs from the unpruned one
    assert not torch.allclose(_logits(model, batch), expected, atol=1e-4)


def test_pruned_config_and_layer_idx(tiny):
    family, _, model, _, _ = tiny
    original_types = getattr(text_config(model), "layer_types", None)
    pruned = prune_layers(copy.deepcopy(model), REMOVE)
    cfg = text_config(pruned)
    assert cfg.num_hidden_layers == LAYERS - len(REMOVE)
    for new_idx, layer in enumerate(find_decoder_layers(pruned)[1]):
        idxs = {m.layer_idx for m in layer.modules() if hasattr(m, "layer_idx")}
        assert idxs == {new_idx}
    if original_types is not None:
        keep = [i for i in range(LAYERS) if i not in REMOVE]
        assert list(cfg.layer_types) == [original_types[i] for i in keep]
    if family in ("qwen3_vl", "qwen3_vl_moe"):  # ViT block indexes, never edited
        assert list(pruned.config.vision_config.deepstack_visual_indexes) == [1, 2, 3]
        assert architecture_protected(model) == [0, 1, 2]


def test_cached_greedy_generation_equals_uncached_argmax(tiny):
    _, _, model, processor, records = tiny
    pruned = prune_layers(copy.deepcopy(model), REMOVE)
    batch = encode(processor, records[:1])
    steps = 5
    with torch.no_grad():
        out = pruned.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                              use_cache=True)
    prompt_len = batch["input_ids"].shape[1]
    assert out.shape[1] == prompt_len + steps
    for t in range(steps):
        full = dict(batch)
        full["input_ids"] = out[:, : prompt_len + t]
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        if "mm_token_type_ids" in full:
            full["mm_token_type_ids"] = torch.nn.functional.pad(batch["mm_token_type_ids"], (0, t))
        logits = _logits(pruned, full)
        assert int(logits[0, -1].argmax()) == int(out[0, prompt_len + t])


def test_saved_checkpoint_reloads_identically(tiny, tmp_path):
    family, src, model, processor, records = tiny
    pruned = prune_layers(copy.deepcopy(model), REMOVE)
    info = pruning_info(str(src), LAYERS, REMOVE, "test", len(REMOVE))
    out = save_pruned(pruned, processor, tmp_path / "pruned", info, source_model=src)
    auto = AutoModelForImageTextToText if family in VLM_FAMILIES else AutoModelForCausalLM
    reloaded, loading = auto.from_pretrained(out, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    assert not loading.get("mismatched_keys"), loading
    batch = encode(processor, records[:3])
    torch.testing.assert_close(_logits(reloaded.eval(), batch), _logits(pruned, batch), rtol=0, atol=0)
    # saved tensors: exactly the surviving layers, renumbered
    saved = load_file(str(out / "model.safetensors"))
    layer_ids = {int(k.split("layers.")[1].split(".")[0]) for k in saved
                 if "layers." in k and "visual" not in k and "vision" not in k}
    assert layer_ids == set(range(LAYERS - len(REMOVE)))
    # processor/tokenizer files byte-for-byte
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    record = json.loads((out / "pruning.json").read_text())
    assert record["removed_layers"] == REMOVE and record["original_num_layers"] == LAYERS
    assert "0-based" in (out / "README.md").read_text()


def test_non_decoder_tensors_bit_identical(tiny, tmp_path):
    _, src, model, processor, _ = tiny
    pruned = prune_layers(copy.deepcopy(model), REMOVE)
    out = save_pruned(pruned, processor, tmp_path / "p", pruning_info(str(src), LAYERS, REMOVE, "t", 2),
                      source_model=src)
    before = load_file(str(src / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    keep = [i for i in range(LAYERS) if i not in REMOVE]
    # on-disk key layout differs per family (e.g. Gemma 3 saves "language_model.model.layers")
    decoder = re.compile(r"^(?!.*(?:vision|visual)).*?layers\.(\d+)\.")
    for key, tensor in before.items():
        m = decoder.match(key)
        if m is None:
            assert torch.equal(after[key], tensor), key
        elif int(m.group(1)) in keep:
            new_key = key[: m.start(1)] + str(keep.index(int(m.group(1)))) + key[m.end(1):]
            assert torch.equal(after[new_key], tensor), key
    assert len(after) == len(before) - sum(
        1 for k in before if (m := decoder.match(k)) and int(m.group(1)) in REMOVE)


def test_scores_deterministic(tiny):
    _, _, model, processor, records = tiny
    a = score_model(model, processor, records, ScoreSettings(batch_size=2), progress=False)
    b = score_model(model, processor, records, ScoreSettings(batch_size=3), progress=False)
    assert a.num_layers == LAYERS and a.max_span == LAYERS // 2
    # batching/padding-invariant up to float32 matmul noise
    torch.testing.assert_close(a.sums, b.sums, rtol=1e-4, atol=1e-4)
    assert torch.equal(a.counts, b.counts)
    c = score_model(model, processor, records, ScoreSettings(batch_size=2), progress=False)
    assert torch.equal(a.sums, c.sums) and a.fingerprint() == c.fingerprint()


@pytest.mark.parametrize("family", sorted(LLM_FAMILIES))
def test_every_text_family_has_a_tested_adapter(family):
    """Gemma 3 text, Qwen3, Qwen2.5 (qwen2), Llama, Mistral, Phi-3, SmolLM (llama): a table
    entry, no "no tested adapter" warning, and the per-layer facts of the tiny config present
    (so the battery above runs on them)."""
    import warnings
    config = LLM_FAMILIES[family]()
    assert config.model_type in ADAPTERS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert adapter_for(config).vision is False
    if family in ("gemma3_text", "qwen2", "qwen3"):  # sliding and full layers along depth
        assert len(set(config.layer_types)) == 2 and config.sliding_window is not None
    if family == "gemma3_text":  # one RoPE per layer type
        assert set(config.rope_parameters) == {"sliding_attention", "full_attention"}
