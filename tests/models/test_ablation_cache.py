"""Prefix-cached ablation gives the per-sample NLL of the naive one-forward-per-layer ablation
(itself checked against saved pruned checkpoints in test_layers_removed.py and test_ablation.py)
on every tiny architecture, with images where the family takes them."""

from __future__ import annotations

import pytest
import torch

from depthprune.data.records import load_records
from depthprune.models.loading import load_model
from depthprune.scoring.ablation import ablation_nll
from depthprune.scoring.ablation_cache import CacheStats, CacheStore, cache_bytes, cached_ablation_nll
from tests.helpers.ablation import long_text
from tests.helpers.tiny_configs import FAMILIES, LAYERS
from tests.helpers.tiny_models import load_tiny_family, save_tiny


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory, calib_dir):
    family = request.param
    _, model, processor, records = load_tiny_family(family, tmp_path_factory.mktemp(family) / "src", calib_dir)
    return family, model, processor, records


def test_cached_ablation_equals_naive_on_every_architecture(tiny):
    family, model, processor, records = tiny
    base, naive = ablation_nll(model, processor, records, batch_size=3, progress=False)
    stats = CacheStats(limit_mb=64)
    cbase, cached = cached_ablation_nll(model, processor, records, batch_size=3, progress=False,
                                        cache_mb=64, stats=stats)
    assert stats.fallback is None  # the cache really was used
    assert cached.shape == (len(records), LAYERS)
    torch.testing.assert_close(cbase, base, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-5)
    assert (naive - base[:, None]).abs().max() > 1e-3  # removing a layer changes the NLL
    assert stats.peak_mb > 0 and stats.spilled_mb == 0
    # deepstack: layers 0-2 of a batch with images are measured by a full forward
    batches_with_images = sum(any(r.images for r in records[i:i + 3]) for i in range(0, len(records), 3))
    want = 3 * batches_with_images if family in ("qwen3_vl", "qwen3_vl_moe") else 0
    assert stats.full_forwards == want


@pytest.mark.parametrize("family", ["gemma3", "qwen2", "mistral"])
def test_cached_ablation_equals_naive_past_the_sliding_window(family, tmp_path):
    model, tok = load_model(save_tiny(family, tmp_path / "m"), dtype="float32")
    records = load_records(long_text(tmp_path / "long.jsonl"))  # prompts longer than the window of 8
    base, naive = ablation_nll(model, tok, records, batch_size=3, progress=False)
    stats = CacheStats(64)
    cbase, cached = cached_ablation_nll(model, tok, records, batch_size=3, progress=False, stats=stats)
    assert stats.fallback is None
    torch.testing.assert_close(cbase, base, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-5)


def test_qwen3_vl_text_only_batches_resume_at_deepstack_layers(tmp_path, calib_dir):
    model, processor = load_model(save_tiny("qwen3_vl", tmp_path / "m"), dtype="float32")
    records = load_records(calib_dir / "text.jsonl")
    _, naive = ablation_nll(model, processor, records, batch_size=4, progress=False)
    stats = CacheStats(limit_mb=64)
    _, cached = cached_ablation_nll(model, processor, records, batch_size=4, progress=False, stats=stats)
    assert stats.full_forwards == 0  # no visual features: nothing moves, every layer resumes
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-5)


def test_cache_spills_to_disk_past_its_limit_with_the_same_result(tmp_path, calib_dir):
    model, tok = load_model(save_tiny("llama", tmp_path / "m"), dtype="float32")
    records = load_records(calib_dir / "text.jsonl")
    _, naive = ablation_nll(model, tok, records, batch_size=4, progress=False)
    tokens = 12  # an upper bound on these prompts; one layer input of a batch of 4 is 4*12*64*4 bytes
    limit_mb = cache_bytes(4, tokens, 64, 2, 4) / 2**20  # room for about two layers' inputs
    stats = CacheStats(limit_mb)
    with pytest.warns(UserWarning, match="ablation-cache-mb"):
        _, cached = cached_ablation_nll(model, tok, records, batch_size=4, progress=False, cache_mb=limit_mb,
                                        stats=stats)
    assert stats.spilled_mb > 0 and stats.peak_mb <= limit_mb
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-5)


def test_store_keeps_in_memory_then_spills_and_cleans_up():
    store = CacheStore(limit_mb=1.5 / 1024)  # 1.5 KiB
    a, b = torch.arange(256, dtype=torch.float32), torch.ones(256)  # 1 KiB each
    store.put("a", a)
    with pytest.warns(UserWarning, match="written to"):
        store.put("b", b)
    assert store.get("a") is a and torch.equal(store.get("b"), b) and store.spilled_bytes == 1024
    spill_dir = store._dir.name
    store.pop("a")
    assert store.used == 0
    store.close()
    import os
    assert not os.path.exists(spill_dir)
    with pytest.raises(ValueError, match="ablation-cache-mb"):
        CacheStore(0)


def test_layer_hooks_are_replayed_and_changes_between_layers_fall_back(tmp_path, calib_dir):
    model, tok = load_model(save_tiny("llama", tmp_path / "m"), dtype="float32")
    records = load_records(calib_dir / "text.jsonl")
    layers = model.model.layers
    # a forward hook is part of its layer's call: the cache replays it
    handle = layers[2].register_forward_hook(lambda m, a, out: out * 1.5)
    try:
        _, naive = ablation_nll(model, tok, records, batch_size=4, progress=False)
        stats = CacheStats(64)
        _, cached = cached_ablation_nll(model, tok, records, batch_size=4, progress=False, stats=stats)
    finally:
        handle.remove()
    assert stats.fallback is None
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-5)
    # a pre-hook changes layer 3's input away from layer 2's output, which removing layer 3
    # would skip: the cache cannot replay that and measures full forwards instead
    handle = layers[3].register_forward_pre_hook(lambda m, args: (args[0] * 1.5, *args[1:]))
    try:
        _, naive = ablation_nll(model, tok, records, batch_size=4, progress=False)
        stats = CacheStats(64)
        with pytest.warns(UserWarning, match="cannot replay"):
            _, cached = cached_ablation_nll(model, tok, records, batch_size=4, progress=False, stats=stats)
    finally:
        handle.remove()
    assert stats.fallback is not None and "layer 3" in stats.fallback
    torch.testing.assert_close(cached, naive, rtol=0, atol=0)


def test_cli_score_ablation_uses_the_cache_and_checks_its_limit_first(tmp_path, calib_dir):
    from typer.testing import CliRunner

    from depthprune.cli import app
    from depthprune.scoring.scores import Scores
    runner = CliRunner()
    data = str(calib_dir / "text.jsonl")
    for extra, message in ((["--ablation", "--ablation-cache-mb", "0"], "must be > 0"),
                           (["--ablation-cache-mb", "10"], "applies to --ablation only")):
        result = runner.invoke(app, ["score", str(tmp_path / "no-model"), "--data", data, "--out",
                                     str(tmp_path / "s.json"), *extra])
        assert result.exit_code == 2 and message in result.output  # before the (missing) model is read
    model = save_tiny("qwen2", tmp_path / "m")
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["score", str(model), "--data", data, "--out", str(out), "--ablation",
                                 "--ablation-cache-mb", "16", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(out)
    info = scores.settings["ablation"]
    assert info["method"] == "prefix-cached" and info["cache_limit_mb"] == 16 and info["cache_peak_mb"] > 0
    net, tok = load_model(model, dtype="float32")
    _, naive = ablation_nll(net, tok, load_records(calib_dir / "text.jsonl"), batch_size=4, progress=False)
    torch.testing.assert_close(scores.ablation_nll, naive, rtol=0, atol=1e-5)
