"""GGUF in, GGUF out, on tiny quantized GGUF files the tests write themselves (tests/helpers/tiny_gguf.py):
the pruned file keeps every kept tensor's bytes and quantization type, transformers loads it
with the logits of depthprune's safetensors output of the same plan, from every plan source,
under the output rules of every other command."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from depthprune import api
from depthprune.models.gguf_out import RECORD_KEYS, UNIFORM_ARCHITECTURES, record_path
from depthprune.options import CalibrationRun
from tests.helpers.cli import assert_user_error, file_size_limit, leftovers, run, tree_hash
from tests.helpers.tiny_gguf import LAYERS, PER_LAYER_KEY, write_tiny_gguf

REMOVE = [1, 3]  # a Q4_0 and a Q8_0 layer of the tiny file (the types vary by layer)
PROMPTS = ["what is four plus seven ? the answer is", "which colour is the shape ? red or blue"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory with tiny GGUF files of every uniform architecture; conversions cached inside."""
    d = tmp_path_factory.mktemp("gguf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEPTHPRUNE_CACHE", str(d / "cache"))
        for arch in UNIFORM_ARCHITECTURES:
            write_tiny_gguf(d / f"{arch}.gguf", arch)
        yield d


def _gguf_logits(path):
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return _logits(model, tok)


def _logits(model, tok):
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits


def _dir_logits(path):
    model, info = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info
    return _logits(model, AutoTokenizer.from_pretrained(str(path)))


@pytest.mark.parametrize("arch", UNIFORM_ARCHITECTURES)
def test_pruned_gguf_loads_with_the_logits_of_the_safetensors_output(workdir, arch):
    src = workdir / f"{arch}.gguf"
    out, info = api.prune(src, REMOVE, workdir / f"{arch}-pruned.gguf",
                          return_info=True)
    directory = api.prune(src, REMOVE, workdir / f"{arch}-pruned")
    pruned = _gguf_logits(out)
    # both dequantise the same bytes: equal to float32 rounding (in practice bit-identical)
    torch.testing.assert_close(pruned, _dir_logits(directory), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(pruned, _gguf_logits(src), atol=1e-3)  # and layers really went
    model = AutoModelForCausalLM.from_pretrained(str(workdir), gguf_file=out.name)
    assert model.config.num_hidden_layers == LAYERS - len(REMOVE)
    assert info["removed_layers"] == REMOVE and info["gguf_source"]["quantization"] == "Q4_1"


def _tensors(path):
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("arch", UNIFORM_ARCHITECTURES)
def test_a_compensated_gguf_loads_with_the_logits_of_the_compensated_safetensors_output(workdir, arch, calib_dir):
    src = workdir / f"{arch}.gguf"
    data = calib_dir / "text.jsonl"
    out, info = api.prune(src, REMOVE, workdir / f"{arch}-repaired.gguf", calibration=CalibrationRun(data), compensate="refit", return_info=True)
    directory = api.prune(src, REMOVE, workdir / f"{arch}-repaired", calibration=CalibrationRun(data), compensate="refit")
    repaired = _gguf_logits(out)
    torch.testing.assert_close(repaired, _dir_logits(directory), rtol=1e-3, atol=1e-3)
    plain = api.prune(src, REMOVE, workdir / f"{arch}-plain-for-repair.gguf")
    assert not torch.allclose(repaired, _gguf_logits(plain), atol=1e-3)  # the repair is in the file
    # the repaired projections (folded into layers 0 and 2, now 0 and 1) are F32; every other tensor keeps its bytes
    written = info["gguf_output"]["written_as_f32"]
    assert written == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    after, before = _tensors(out), _tensors(plain)
    assert set(after) == set(before)
    for name in after:
        if name in written:
            assert after[name].tensor_type == gguf.GGMLQuantizationType.F32
            assert list(after[name].shape) == list(before[name].shape)
        else:
            assert np.array_equal(after[name].data.view(np.uint8), before[name].data.view(np.uint8)), name


def test_kept_tensors_are_byte_identical_under_their_new_numbers(workdir):
    src = workdir / "llama.gguf"
    out = api.prune(src, REMOVE, workdir / "bytes.gguf")
    before, after = _tensors(src), _tensors(out)
    keep = [i for i in range(LAYERS) if i not in REMOVE]
    expected = {}
    for name in before:
        if not name.startswith("blk."):
            expected[name] = name
        elif int(name.split(".")[1]) in keep:
            _, i, rest = name.split(".", 2)
            expected[f"blk.{keep.index(int(i))}.{rest}"] = name
    assert set(after) == set(expected)
    types = set()
    for new, old in expected.items():
        a, b = after[new], before[old]
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape), new
        assert np.array_equal(a.data.view(np.uint8), b.data.view(np.uint8)), new
        types.add(a.tensor_type.name)
    assert {"Q4_1", "Q5_0", "Q8_0", "F16", "F32"} <= types  # (layer 1, the Q4_0 one, was removed)


def test_metadata_copied_with_block_count_sliced_arrays_and_the_record(workdir):
    src = workdir / "llama.gguf"
    out, info = api.prune(src, REMOVE, workdir / "meta.gguf", return_info=True)
    a, b = gguf.GGUFReader(str(out)).fields, gguf.GGUFReader(str(src)).fields
    keep = [i for i in range(LAYERS) if i not in REMOVE]
    per_layer = PER_LAYER_KEY.format(arch="llama")
    for name, field in b.items():
        if name.startswith("GGUF."):
            continue
        assert a[name].types == field.types, name
        if name == "llama.block_count":
            assert a[name].contents() == LAYERS - len(REMOVE)
        elif name == per_layer:
            assert a[name].contents() == keep  # the marker's values are the original indices
        else:  # tokenizer (tokens, merges, types, chat template) and every other key: unchanged
            assert a[name].contents() == field.contents(), name
    assert set(a) - set(b) == set(RECORD_KEYS)
    assert a["depthprune.removed_layers"].contents() == REMOVE
    assert a["depthprune.kept_layers"].contents() == keep
    assert a["depthprune.source.sha256"].contents() == info["gguf_source"]["sha256"]
    assert a["depthprune.source.block_count"].contents() == LAYERS
    sidecar = json.loads(record_path(out).read_text())
    assert sidecar == info and sidecar["gguf_output"]["sliced_per_layer_keys"] == [per_layer]
    assert json.loads(a["depthprune.record"].contents()) == {k: v for k, v in info.items() if k != "gguf_output"}
    import hashlib
    assert info["gguf_source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_size_is_the_kept_layers_plus_the_unchanged_tensors(workdir):
    src = workdir / "llama.gguf"
    out, info = api.prune(src, REMOVE, workdir / "size.gguf", return_info=True)
    before, after = _tensors(src), _tensors(out)
    layer_bytes = [sum(int(t.n_bytes) for n, t in before.items() if n.startswith(f"blk.{i}.")) for i in range(LAYERS)]
    other = sum(int(t.n_bytes) for n, t in before.items() if not n.startswith("blk."))
    kept = sum(b for i, b in enumerate(layer_bytes) if i not in REMOVE)
    assert sum(int(t.n_bytes) for n, t in after.items() if n.startswith("blk.")) == kept
    assert sum(int(t.n_bytes) for n, t in after.items() if not n.startswith("blk.")) == other
    header = gguf.GGUFReader(str(out)).data_offset  # metadata (tokenizer, record) and tensor infos
    alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    assert out.stat().st_size <= header + kept + other + alignment * len(after)
    assert out.stat().st_size < src.stat().st_size
    sizes = info["gguf_output"]
    assert sizes["file_bytes"] == {"before": src.stat().st_size, "after": out.stat().st_size}
    assert sizes["tensor_bytes"]["after"] == {"layers": kept, "other": other}


def test_every_plan_source_through_the_cli(workdir, calib_dir):
    """--layers, --plan (from rank --save-plan on `score MODEL.gguf`), --scores with a method,
    --method iterative: each .gguf output equals the safetensors output of the same source and plan."""
    src = workdir / "llama.gguf"
    scores, plan = workdir / "scores.json", workdir / "cli.plan.json"
    res = run("score", src, "--data", calib_dir / "text.jsonl", "--out", scores)
    assert res.exit_code == 0, res.output
    res = run("rank", scores, "--method", "block-influence", "--budget", "2", "--save-plan", plan, "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    sources = {"layers": ["--layers", "2,4"], "plan": ["--plan", plan],
               "scores": ["--scores", scores, "--method", "angular-block", "--budget", "2"],
               # iterative runs the (dequantised) model to re-score, then writes from the file's bytes
               "iterative": ["--method", "iterative", "--budget", "2", "--data", calib_dir / "text.jsonl"]}
    for name, args in sources.items():
        out = workdir / f"cli-{name}.gguf"
        res = run("prune", src, *args, "--out", out)
        assert res.exit_code == 0, res.output
        assert "quantization kept (Q4_1)" in res.output and str(record_path(out)) in res.output
        res = run("prune", src, *args, "--out", workdir / f"cli-{name}")
        assert res.exit_code == 0, res.output
        torch.testing.assert_close(_gguf_logits(out), _dir_logits(workdir / f"cli-{name}"), rtol=1e-6, atol=1e-6)
        record = json.loads(record_path(out).read_text())
        from_dir = json.loads((workdir / f"cli-{name}" / "pruning.json").read_text())
        assert record["removed_layers"] == from_dir["removed_layers"]
    assert json.loads(record_path(workdir / "cli-plan.gguf").read_text())["method"] == "block-influence"
    assert json.loads(record_path(workdir / "cli-iterative.gguf").read_text())["method"] == "iterative"


def test_output_rules(workdir, tmp_path):
    src = workdir / "llama.gguf"
    digest = tree_hash(src)
    assert_user_error(run("prune", src, "--layers", "1", "--out", src), "is the input", roots=(workdir,))
    assert_user_error(run("prune", workdir / "llama-pruned", "--layers", "1", "--out", tmp_path / "x.gguf"),
                      "a .gguf output is made from a GGUF model", roots=(tmp_path,))
    out = tmp_path / "p.gguf"
    assert run("prune", src, "--layers", "1", "--out", out).exit_code == 0
    assert_user_error(run("prune", src, "--layers", "2", "--out", out), "file exists", "--overwrite",
                      roots=(tmp_path,))
    res = run("prune", src, "--layers", "2", "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert gguf.GGUFReader(str(out)).fields["depthprune.removed_layers"].contents() == [2]
    (tmp_path / "r.pruning.json").write_text("{}")  # the record's name is taken: refused too
    assert_user_error(run("prune", src, "--layers", "2", "--out", tmp_path / "r.gguf"), "r.pruning.json",
                      "--overwrite", roots=(tmp_path,))
    assert not (tmp_path / "r.gguf").exists()
    # a plan that is wrong for the model: refused before anything is written
    assert_user_error(run("prune", src, "--layers", "9", "--out", tmp_path / "q.gguf"), "--layers",
                      roots=(tmp_path,))
    assert not (tmp_path / "q.gguf").exists() and tree_hash(src) == digest


def test_full_disk_leaves_nothing(workdir, tmp_path):
    src = workdir / "llama.gguf"
    with file_size_limit(100_000):  # the output is ~200 kB
        res = run("prune", src, "--layers", "1", "--out", tmp_path / "full.gguf")
    assert_user_error(res, "full.gguf", roots=(tmp_path,))
    assert not list(tmp_path.iterdir()) and not leftovers(tmp_path)
