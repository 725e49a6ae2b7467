"""The honest stand-in every benchmark measures: a random-init Qwen3-VL whose text decoder has the
shapes of Qwen3-VL-2B (28 layers, hidden 2048, intermediate 6144, 16 heads, 8 KV heads, vocab
151936; a tiny vision tower), or tiny shapes for ``--small`` smoke runs."""

from __future__ import annotations

import torch

TOKENS = {"image_token_id": 150, "video_token_id": 151, "vision_start_token_id": 152, "vision_end_token_id": 153}


def text_shapes(small: bool, layers: int | None = None, tied: bool = False) -> dict:
    """The text config: Qwen3-VL-2B's shapes, or tiny ones; ``layers`` overrides the depth."""
    text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                 "mrope_section": [24, 20, 20], "mrope_interleaved": True})
    if small:
        text.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                     "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    if layers:
        text["num_hidden_layers"] = layers
    if tied:
        text["tie_word_embeddings"] = True
    return text


def meta_model(small: bool, layers: int | None = None, tied: bool = False):
    """The model on the meta device (no memory yet), e.g. to prune before materialising."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    text = text_shapes(small, layers, tied)
    config = Qwen3VLConfig(
        text_config=text, **({"tie_word_embeddings": True} if tied else {}),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           out_hidden_size=text["hidden_size"], deepstack_visual_indexes=[0, 1, 2]), **TOKENS)
    with torch.device("meta"):
        return Qwen3VLForConditionalGeneration(config)


def materialise(model, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """Random weights (N(0, 0.02)) without the slow per-module initialisers; rotary frequencies
    recomputed as ``__init__`` does, RMSNorm weights 1 as trained models have them; eval mode."""
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
        for m in model.modules():
            if isinstance(getattr(m, "inv_freq", None), torch.Tensor):
                fresh = type(m)(m.config).to(device)
                m.inv_freq.copy_(fresh.inv_freq)
                if isinstance(getattr(m, "original_inv_freq", None), torch.Tensor):
                    m.original_inv_freq.copy_(fresh.inv_freq)
                if hasattr(fresh, "attention_scaling"):
                    m.attention_scaling = fresh.attention_scaling
            if type(m).__name__.endswith("RMSNorm") and hasattr(m, "weight"):
                m.weight.data.fill_(1.0)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.to(dtype).eval()


def qwen3_vl_2b(small: bool = False, layers: int | None = None, tied: bool = False, dtype: torch.dtype = torch.float32):
    """The materialised model, float32, in eval mode."""
    return materialise(meta_model(small, layers, tied), dtype=dtype)
