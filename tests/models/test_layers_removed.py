"""Bug 2 of issue 15: in-memory layer removal (single-layer ablation, iterative re-scoring)
must compute what the truly pruned checkpoint computes on families that pick each layer's
attention mask (and, on Gemma3, its RoPE) by position in ``config.layer_types``."""

from __future__ import annotations

import copy

import pytest
import torch

from depthprune.data.records import encode, load_records
from depthprune.evaluation.generation import answer_nll
from depthprune.models.architectures import text_config
from depthprune.models.loading import load_model
from depthprune.pruning import layers_removed, prune_layers, pruning_info, save_pruned
from depthprune.scoring.ablation import ablation_nll
from tests.helpers.ablation import long_text
from tests.helpers.tiny_configs import LAYERS
from tests.helpers.tiny_models import save_tiny


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_ablation_nll_equals_the_saved_and_reloaded_pruned_checkpoint(family, tmp_path):
    src = save_tiny(family, tmp_path / "src")
    model, tok = load_model(src, dtype="float32")
    types = list(text_config(model).layer_types)
    assert len(set(types)) == 2  # sliding and full layers along depth: the case that went wrong
    records = load_records(long_text(tmp_path / "long.jsonl"))
    # prompts longer than the sliding window, so a wrong mask changes the result
    assert int(encode(tok, records)["attention_mask"].sum(1).min()) > 16
    _, ablated = ablation_nll(model, tok, records, batch_size=4, progress=False)
    for layer in range(LAYERS):
        out = tmp_path / f"pruned-{layer}"
        pruned = prune_layers(copy.deepcopy(model), [layer])
        save_pruned(pruned, tok, out, pruning_info(str(src), LAYERS, [layer], "manual", 1), source_model=src)
        reloaded, rtok = load_model(out, dtype="float32")
        want = [nll for nll, _ in answer_nll(reloaded, rtok, records)]
        assert ablated[:, layer].tolist() == pytest.approx(want, abs=1e-5), f"layer {layer}"
    assert list(text_config(model).layer_types) == types  # restored


def test_layers_removed_slices_and_restores_per_layer_config():
    from transformers import AutoModelForCausalLM

    from tests.helpers.tiny_configs import qwen2
    model = AutoModelForCausalLM.from_config(qwen2())
    cfg = text_config(model)
    types, window = list(cfg.layer_types), cfg.max_window_layers
    with layers_removed(model, [1, 4]):
        assert list(cfg.layer_types) == [types[i] for i in (0, 2, 3, 5)]
        assert cfg.max_window_layers == 2 and cfg.num_hidden_layers == LAYERS - 2
    assert list(cfg.layer_types) == types and cfg.max_window_layers == window
    assert cfg.num_hidden_layers == LAYERS and len(model.model.layers) == LAYERS


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_iterative_rescoring_scores_the_pruned_model(family, tmp_path):
    """`iterative` re-scores inside layers_removed: the statistics must be the pruned model's."""
    from depthprune.scoring.forward import ScoreSettings, score_model
    model, tok = load_model(save_tiny(family, tmp_path / "src"), dtype="float32")
    records = load_records(long_text(tmp_path / "long.jsonl"))
    settings = ScoreSettings(batch_size=4, max_span=1)
    want = score_model(prune_layers(copy.deepcopy(model), [1]), tok, records, settings, progress=False)
    with layers_removed(model, [1]):
        got = score_model(model, tok, records, settings, progress=False)
    torch.testing.assert_close(got.sums, want.sums, rtol=0, atol=1e-9)
