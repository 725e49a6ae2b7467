"""Pruned GGUF files in llama.cpp (ik-llama-cpp-python, the `runtime` extra; skipped with the
reason without it): each loads with the pruned layer count, tokenizes the prompts as
transformers does, and its next-token argmax agrees with transformers' reading of the same
file at least as often as the unpruned file's does, on a fixed prompt set.

On the tiny random models some prompts are near ties (top two logits closer than llama.cpp's
rounding: it multiplies quantized weights with 8-bit-quantized activations), where either
file may flip by chance; there the rule is: every disagreement is a near tie, and the largest
logit difference from transformers does not grow with pruning. SmolLM2 is held to the count.

Fast: tiny random Llama / Qwen2 / Qwen3 GGUFs (tests/helpers/tiny_gguf.py), a few seconds.
SmolLM2-135M-Instruct (Q4_1) at 27 and 23 of 30 layers: slow (transformers dequantises each
file in Python; about 6 min on 2 busy cores)."""

from __future__ import annotations

import numpy as np
import pytest

from depthprune import api
from depthprune.models.gguf_out import UNIFORM_ARCHITECTURES
from depthprune.options import CalibrationRun
from tests.helpers.runtimes import QUESTIONS, compare_with_transformers, near_ties, require_llamacpp, tokenize_both
from tests.helpers.tiny_gguf import LAYERS, WORDS, write_tiny_gguf

REMOVE = [1, 3]


def _tiny_prompts(n: int = 24, seed: int = 0) -> list[str]:
    """Fixed word prompts of 2..50 tokens (past 32, so the chunked prefill runs)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 50)))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    require_llamacpp()
    d = tmp_path_factory.mktemp("llamacpp")
    files = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEPTHPRUNE_CACHE", str(d / "cache"))
        for arch in UNIFORM_ARCHITECTURES:
            src = write_tiny_gguf(d / f"{arch}.gguf", arch)
            files[arch] = (src, api.prune(src, REMOVE, d / f"{arch}-pruned.gguf"))
    return files


@pytest.mark.parametrize("arch", UNIFORM_ARCHITECTURES)
def test_pruned_tiny_gguf_agrees_with_transformers_in_llamacpp(tiny_files, arch):
    src, pruned = tiny_files[arch]
    texts = _tiny_prompts()
    ours, theirs = tokenize_both(pruned, texts)
    assert ours == theirs  # llama.cpp reads the copied tokenizer as transformers does
    before = compare_with_transformers(src, ours)
    after = compare_with_transformers(pruned, ours)
    assert (before.llamacpp_layers, after.llamacpp_layers) == (LAYERS, LAYERS - len(REMOVE))
    assert after.transformers_layers == LAYERS - len(REMOVE)
    print(f"{arch}: argmax agreement unpruned {before.agree}/{before.total} (max |logit diff| "
          f"{before.max_abs_diff:.3f}), pruned {after.agree}/{after.total} ({after.max_abs_diff:.3f})")
    # every prompt decided by more than rounding agrees, in both files
    assert before.disagreements_are_near_ties() and after.disagreements_are_near_ties()
    assert after.max_abs_diff <= 1.5 * before.max_abs_diff + 0.05
    # llama.cpp computes the pruned model, not the unpruned one
    assert not np.allclose(after.llamacpp, before.llamacpp, atol=0.5)


@pytest.mark.parametrize("arch", UNIFORM_ARCHITECTURES)
def test_llamacpp_greedy_decoding_of_the_pruned_file(tiny_files, arch):
    """llama.cpp's greedy continuation (KV cache, one token per decode) of the pruned file: each
    token is transformers' argmax after the same prefix (full forward), or a near tie."""
    import torch
    from transformers import AutoModelForCausalLM

    from depthprune.runtimes.llamacpp import LlamaCpp
    _, pruned = tiny_files[arch]
    model = AutoModelForCausalLM.from_pretrained(str(pruned.parent), gguf_file=pruned.name, dtype=torch.float32)
    with LlamaCpp(pruned) as llm:
        prompt = llm.tokenize("what is four plus seven ? the answer is")
        got = llm.greedy(prompt, 40)  # past 32 positions of cache
        noise = 2 * float(np.abs(llm.logits(prompt) - model(torch.tensor([prompt])).logits[0, -1].detach().numpy()).max())
    with torch.no_grad():
        logits = model(torch.tensor([prompt + got])).logits[0, len(prompt) - 1:-1].numpy()
    differ = logits.argmax(1) != np.array(got)
    assert len(got) == 40 and not np.any(differ & ~near_ties(logits, noise)), np.flatnonzero(differ)


def test_unsliced_per_layer_metadata_is_caught(tiny_files, tmp_path):
    """What the check guards against: a file whose per-layer metadata was not sliced (as
    llama.cpp's own --prune-layers leaves it) is refused by llama.cpp or runs wrongly."""
    import gguf

    from depthprune.runtimes.llamacpp import LlamaCpp
    _, pruned = tiny_files["llama"]
    reader = gguf.GGUFReader(str(pruned))
    bad = tmp_path / "unsliced.gguf"
    writer = gguf.GGUFWriter(str(bad), "llama")
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        value = field.contents()
        if field.name == "llama.feed_forward_length":  # a per-layer array of the source's length
            kind, value = gguf.GGUFValueType.ARRAY, [int(value)] * LAYERS
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY and field.name != "llama.feed_forward_length" \
            else (gguf.GGUFValueType.UINT32 if kind == gguf.GGUFValueType.ARRAY else None)
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data)
    writer.close()
    with pytest.raises(RuntimeError, match="Failed to load model"):
        LlamaCpp(bad)


@pytest.mark.slow
def test_pruned_smollm2_agrees_with_transformers_in_llamacpp(smollm2_path, tmp_path):
    require_llamacpp()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in QUESTIONS]
    results = {}
    for name, layers in (("unpruned", None), ("k3", [5, 12, 20]), ("k7", [3, 7, 11, 15, 19, 23, 26])):
        path = smollm2_path if layers is None else api.prune(smollm2_path, layers,
                                                             tmp_path / f"smollm2-{name}.gguf")
        ours, theirs = tokenize_both(path, texts)
        assert ours == theirs and min(map(len, ours)) > 32
        results[name] = compare_with_transformers(path, ours)
        assert results[name].llamacpp_layers == 30 - len(layers or [])
        r = results[name]
        print(f"SmolLM2 {name}: llama.cpp {r.llamacpp_layers} layers, argmax agreement with transformers "
              f"{r.agree}/{r.total}, max |logit diff| {r.max_abs_diff:.3f}")
    assert results["k3"].agree >= results["unpruned"].agree
    # 7 of 30 layers out leaves a flatter model: measured 10/16, every disagreement a top-two margin
    # of at most 0.33 logits where llama.cpp's rounding moved logits by over 1.0 (docs/runtimes.md);
    # held to: every disagreement a near tie, and the logit error no larger than the unpruned file's
    for name in ("unpruned", "k3", "k7"):
        assert results[name].disagreements_are_near_ties()
        assert results[name].max_abs_diff <= 1.5 * results["unpruned"].max_abs_diff + 0.05


@pytest.fixture(scope="module")
def gemma3_files(tmp_path_factory):
    """The tiny Gemma 3 GGUF (18 layers), two cuts that keep its pattern, and a refused cut
    written anyway (the writer without the check) with its safetensors prune beside it."""
    require_llamacpp()
    from depthprune.models.gguf_out import open_gguf, write_pruned_gguf
    d = tmp_path_factory.mktemp("gemma3-llamacpp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEPTHPRUNE_CACHE", str(d / "cache"))
        src = write_tiny_gguf(d / "gemma3.gguf", "gemma3")
        files = {"unpruned": src}
        for name, remove in (("period", [6, 7, 8, 9, 10, 11]), ("last", [16, 17])):
            files[name] = api.prune(src, remove, d / f"{name}.gguf")
        directory, info = api.prune(src, [1, 3], d / "wrong", return_info=True)
        info["gguf_source"] = {"sha256": "0" * 64}
        write_pruned_gguf(open_gguf(src), d / "wrong.gguf", info)
    return files, d / "wrong.gguf", directory


def test_gemma3_cuts_that_keep_the_pattern_agree_in_llamacpp(gemma3_files):
    files, _, _ = gemma3_files
    prompts, _ = tokenize_both(files["unpruned"], _tiny_prompts())
    results = {name: compare_with_transformers(path, prompts) for name, path in files.items()}
    assert {n: r.llamacpp_layers for n, r in results.items()} == {"unpruned": 18, "period": 12, "last": 16}
    for name, r in results.items():
        print(f"gemma3 {name}: argmax agreement {r.agree}/{r.total}, max |logit diff| {r.max_abs_diff:.3f}")
        assert r.disagreements_are_near_ties()
        assert r.max_abs_diff <= 1.5 * results["unpruned"].max_abs_diff + 0.05


def test_gemma3_refused_cut_runs_differently_in_llamacpp(gemma3_files):
    """The cut that the GGUF writer refuses ([1, 3]: full-attention layer 5 lands on sliding
    index 3), written anyway, is run by llama.cpp far from the same plan's safetensors prune."""
    import torch
    from transformers import AutoModelForCausalLM

    from depthprune.runtimes.llamacpp import next_token_logits
    files, wrong, directory = gemma3_files
    prompts, _ = tokenize_both(files["unpruned"], _tiny_prompts())
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.no_grad():
        want = np.stack([model(torch.tensor([p])).logits[0, -1].numpy() for p in prompts])
    noise = compare_with_transformers(files["last"], prompts).max_abs_diff
    got = next_token_logits(wrong, prompts)
    print(f"refused cut in llama.cpp: max |logit diff| {np.abs(got - want).max():.3f} (rounding {noise:.3f}), "
          f"argmax agreement {(got.argmax(1) == want.argmax(1)).sum()}/{len(prompts)}")
    assert np.abs(got - want).max() > 5 * noise


@pytest.mark.parametrize("arch", UNIFORM_ARCHITECTURES)
def test_a_compensated_tiny_gguf_agrees_with_transformers_in_llamacpp(tiny_files, arch, calib_dir, tmp_path):
    """A compensated prune (`--compensate refit`: the repaired ffn_down tensors written as F32,
    every other tensor's bytes kept) loads in llama.cpp and agrees with transformers' reading of
    the same file as the plain pruned file does."""
    src, plain = tiny_files[arch]
    repaired = api.prune(src, REMOVE, tmp_path / f"{arch}-repaired.gguf", calibration=CalibrationRun(calib_dir / "text.jsonl"),
                         compensate="refit")
    ours, _ = tokenize_both(repaired, _tiny_prompts())
    base = compare_with_transformers(plain, ours)
    after = compare_with_transformers(repaired, ours)
    assert after.llamacpp_layers == LAYERS - len(REMOVE)
    assert after.disagreements_are_near_ties()
    assert after.max_abs_diff <= 1.5 * base.max_abs_diff + 0.05
    assert not np.allclose(after.llamacpp, base.llamacpp, atol=1e-3)  # llama.cpp runs the repaired weights
