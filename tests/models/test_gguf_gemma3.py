"""Gemma 3 into GGUF: llama.cpp and transformers derive each layer's attention (every sixth
full, the rest sliding-window with their own RoPE base) from its index, so only cuts after
which every kept layer keeps its kind at its new index are written (whole periods, the last
layers, ...). Those equal the safetensors prune of the same file (whose config lists each
layer's kind); every other cut is refused in one line naming the nearest cuts that work, and
the test shows what it would have done. llama.cpp runs: tests/runtimes/test_llamacpp.py."""

from __future__ import annotations

import gguf
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from depthprune import api
from depthprune.models.gguf_out import (
    POSITIONAL_ARCHITECTURES,
    check_layer_pattern,
    nearest_pattern_cuts,
    open_gguf,
    write_pruned_gguf,
)
from tests.helpers.cli import assert_user_error, run, tree_hash
from tests.helpers.tiny_gguf import GEMMA3_LAYERS, write_tiny_gguf

PROMPTS = ["what is four plus seven ? the answer is yes and no and red blue green",
           "which colour is the shape ? red or blue"]
#: cuts that keep the pattern: a whole period, a run of six not aligned to one, the last layers
ALLOWED = {"period": [6, 7, 8, 9, 10, 11], "unaligned": [2, 3, 4, 5, 6, 7], "last": [16, 17]}


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEPTHPRUNE_CACHE", str(d / "cache"))
        yield write_tiny_gguf(d / "gemma3.gguf", "gemma3")


@pytest.fixture(scope="module")
def unpruned_logits(gemma3):
    return _logits_of_gguf(gemma3)


def _logits_of_gguf(path):
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return _logits(model, path)


def _logits_of_dir(path, source):
    model, info = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info
    return _logits(model, source)


def _logits(model, source):
    """Logits on PROMPTS, tokenized by the tokenizer of GGUF ``source`` (the same ids for every model)."""
    tok = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits


@pytest.mark.parametrize("cut", ALLOWED)
def test_cuts_that_keep_the_pattern_equal_the_safetensors_prune(gemma3, unpruned_logits, cut):
    remove = ALLOWED[cut]
    out = api.prune(gemma3, remove, gemma3.parent / f"{cut}.gguf")
    directory = api.prune(gemma3, remove, gemma3.parent / cut)
    got, want = _logits_of_gguf(out), _logits_of_dir(directory, gemma3)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, unpruned_logits, atol=1e-3)
    config = AutoConfig.from_pretrained(str(out.parent), gguf_file=out.name)
    assert config.num_hidden_layers == GEMMA3_LAYERS - len(remove)
    kinds = POSITIONAL_ARCHITECTURES["gemma3"].kinds(GEMMA3_LAYERS)
    kept = [i for i in range(GEMMA3_LAYERS) if i not in remove]
    assert [t.startswith("full") for t in config.layer_types] == [kinds[i].startswith("full") for i in kept]


def test_other_cuts_are_refused_naming_the_nearest_that_work(gemma3, tmp_path):
    digest = tree_hash(gemma3)
    res = run("prune", gemma3, "--layers", "1,3", "--out", tmp_path / "bad.gguf")
    line = assert_user_error(res, "gemma3", "(i+1) % 6", "layer 5, full attention, would become layer 3",
                             "--layers 12,17", "output directory", roots=(tmp_path,))
    assert not (tmp_path / "bad.gguf").exists() and tree_hash(gemma3) == digest
    # each cut it names works
    for cut in line.split("keep the pattern: ")[1].split(";")[:-1]:
        layers = cut.strip().removeprefix("--layers ")
        assert run("prune", gemma3, "--layers", layers, "--out", tmp_path / f"{layers}.gguf").exit_code == 0
    # a directory output takes any cut (its config lists every layer's kind)
    assert run("prune", gemma3, "--layers", "1,3", "--out", tmp_path / "dir").exit_code == 0
    # a plan from a method is checked the same way
    res = run("prune", gemma3, "--method", "uniform", "--budget", "3", "--out", tmp_path / "u.gguf")
    assert_user_error(res, "Nearest cuts of 3 layers", roots=(tmp_path,))


def test_what_a_refused_cut_would_do(gemma3, tmp_path):
    """Written anyway (the writer without the check), a cut that moves a full-attention layer
    onto a sliding index gives other logits than the same plan as a safetensors checkpoint:
    transformers and llama.cpp would run kept layers as the other kind."""
    remove = [1, 3]
    source = open_gguf(gemma3)
    with pytest.raises(ValueError, match="change kind"):
        check_layer_pattern(source, remove)
    directory, info = api.prune(gemma3, remove, tmp_path / "dir", return_info=True)
    info["gguf_source"] = {"sha256": "0" * 64}
    write_pruned_gguf(source, tmp_path / "wrong.gguf", info)
    got, want = _logits_of_gguf(tmp_path / "wrong.gguf"), _logits_of_dir(directory, gemma3)
    assert (got - want).abs().max() > 1e-2


def test_a_62_layer_gemma3_is_refused(tmp_path):
    """llama.cpp reads a 62-layer gemma3 as the 27B and gives it another attention scale; any
    pruned count would lose it."""
    src = write_tiny_gguf(tmp_path / "g62.gguf", "gemma3", layers=62)
    assert_user_error(run("prune", src, "--layers", "56,57,58,59,60,61", "--out", tmp_path / "p.gguf"),
                      "62-layer gemma3", "27B", "attention scale", roots=(tmp_path,))


def test_nearest_pattern_cuts():
    kinds = POSITIONAL_ARCHITECTURES["gemma3"].kinds(18)
    assert nearest_pattern_cuts(kinds, [6, 7, 8, 9, 10, 11]) == [[6, 7, 8, 9, 10, 11]]  # allowed: itself
    assert nearest_pattern_cuts(kinds, [5]) == [[17]]  # one layer: only the last one can go
    # two layers: the last full layer and a sliding one after the second full one
    assert nearest_pattern_cuts(kinds, [1, 3]) == [[12, 17], [13, 17], [14, 17]]
    # five of the six asked for, then the smallest shift (each of these differs by one layer, one place)
    assert nearest_pattern_cuts(kinds, [0, 1, 2, 3, 4, 6]) == [[0, 1, 2, 3, 5, 6], [0, 1, 2, 3, 4, 5],
                                                               [0, 1, 2, 4, 5, 6]]
    kinds34 = POSITIONAL_ARCHITECTURES["gemma3"].kinds(34)
    for cut in nearest_pattern_cuts(kinds34, [3, 9, 14, 20, 25, 30, 31]):
        kept = [i for i in range(34) if i not in cut]
        assert len(cut) == 7 and all(kinds34[old] == kinds34[new] for new, old in enumerate(kept))


def test_unsupported_architectures_are_refused(tmp_path):
    """Architectures whose layers are neither alike nor a tested pattern (here Gemma 2):
    refused, with the fix."""
    path = tmp_path / "gemma2.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma2")
    writer.add_block_count(4)
    for i in range(4):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", torch.ones(32).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_user_error(run("prune", path, "--layers", "1", "--out", tmp_path / "g.gguf"), "'gemma2'",
                      "output directory", roots=(tmp_path,))
    assert not (tmp_path / "g.gguf").exists()
