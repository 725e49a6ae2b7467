"""The scoring pass runs the LM head on one position only (issue 16 item 4) and its
statistics are those of a plain forward."""

from __future__ import annotations

import pytest
import torch

from depthprune.data.records import encode, load_records
from depthprune.models.architectures import find_decoder_layers
from depthprune.models.loading import load_model
from depthprune.scoring.forward import ScoreSettings, SimilarityRecorder, score_model, token_groups
from tests.helpers.tiny_models import save_tiny


@pytest.mark.parametrize("family, data", [("qwen3_vl", "calib.jsonl"), ("llama", "text.jsonl"),
                                          ("gemma3", "text.jsonl")])
def test_scoring_skips_the_lm_head_and_keeps_every_statistic(family, data, tmp_path, calib_dir):
    model, processor = load_model(save_tiny(family, tmp_path / "m"), dtype="float32")
    records = load_records(calib_dir / data)
    head_rows = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: head_rows.append(args[0].shape[:-1].numel()))
    try:
        scores = score_model(model, processor, records, ScoreSettings(batch_size=len(records)), progress=False)
    finally:
        handle.remove()
    assert head_rows == [len(records)]  # one position per sample, not batch x tokens
    # the same sums as a plain forward over every position
    _, layers = find_decoder_layers(model)
    batch = encode(processor, records)
    with torch.inference_mode(), SimilarityRecorder(layers, scores.max_span) as recorder:
        recorder.begin_batch(token_groups(batch, model.config))
        logits = model(**batch, use_cache=False).logits
        sums, counts = recorder.end_batch()
    assert logits.shape[1] == batch["input_ids"].shape[1]
    torch.testing.assert_close(scores.sums, sums, rtol=0, atol=1e-6)
    assert torch.equal(scores.counts, counts)
