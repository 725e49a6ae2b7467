"""Tiny random-init configs of the real transformers classes, one per supported family.

Each entry: family name -> (config factory, auto class name). Sizes are the smallest that
keep each family's structure (GQA, deepstack, MoE, sliding/full layer types).
"""

from __future__ import annotations

from transformers import (
    Gemma3Config,
    Gemma3TextConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaOnevisionConfig,
    MistralConfig,
    Phi3Config,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen3Config,
    Qwen3VLConfig,
    Qwen3VLMoeConfig,
    SiglipVisionConfig,
)

VOCAB = 512
LAYERS = 6
# special token ids inside the tiny vocabulary (see tests/helpers/tiny_models.py)
IMAGE_ID, VIDEO_ID, VSTART_ID, VEND_ID = 500, 501, 502, 503

_text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=512, tie_word_embeddings=False)


_qwen3_vision = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8,
                     spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                     num_position_embeddings=64, deepstack_visual_indexes=[1, 2, 3])


def qwen3_vl() -> Qwen3VLConfig:
    return Qwen3VLConfig(
        text_config=dict(_text, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(_qwen3_vision),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_start_token_id=VSTART_ID, vision_end_token_id=VEND_ID, tie_word_embeddings=False)


def qwen3_vl_moe() -> Qwen3VLMoeConfig:
    # decoder_sparse_step=2 + mlp_only_layers: a mix of dense and MoE layers, the case where
    # renumbering would silently change which layers are sparse
    return Qwen3VLMoeConfig(
        text_config=dict(_text, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                         decoder_sparse_step=2, mlp_only_layers=[3],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(_qwen3_vision),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_start_token_id=VSTART_ID, vision_end_token_id=VEND_ID, tie_word_embeddings=False)


def _qwen2_vl_like(cls):
    # Qwen2-VL's vision `hidden_size` is the merger's output (= text hidden size);
    # Qwen2.5-VL calls that `out_hidden_size`
    return cls(
        text_config=dict(_text, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64 if cls is Qwen2VLConfig else 32, num_heads=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                           intermediate_size=64, window_size=32, fullatt_block_indexes=[1]),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_start_token_id=VSTART_ID, vision_end_token_id=VEND_ID, tie_word_embeddings=False)


def qwen2_5_vl() -> Qwen2_5_VLConfig:
    return _qwen2_vl_like(Qwen2_5_VLConfig)


def qwen2_vl() -> Qwen2VLConfig:
    return _qwen2_vl_like(Qwen2VLConfig)


_siglip = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               image_size=32, patch_size=8)


def llava() -> LlavaConfig:
    return LlavaConfig(text_config=LlamaConfig(**_text), vision_config=SiglipVisionConfig(**_siglip),
                       image_token_id=IMAGE_ID, vision_feature_layer=-1,
                       vision_feature_select_strategy="full", tie_word_embeddings=False)


def llava_onevision() -> LlavaOnevisionConfig:
    return LlavaOnevisionConfig(
        text_config=Qwen2Config(**_text), vision_config=SiglipVisionConfig(**_siglip),
        image_token_index=IMAGE_ID, video_token_index=VIDEO_ID, vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=[[32, 32]],
        tie_word_embeddings=False)


def gemma3() -> Gemma3Config:
    # sliding and full layers, irregular so that removing layers 3 and 4 leaves a sliced list
    # ([s, f, s, s]) that differs from the unsliced prefix: pruning must slice layer_types
    s, f = "sliding_attention", "full_attention"
    types = [s, f, s, f, s, s]
    return Gemma3Config(
        text_config=dict(_text, layer_types=types, sliding_window=8, query_pre_attn_scalar=16),
        vision_config=dict(_siglip), mm_tokens_per_image=4, image_token_id=IMAGE_ID,
        boi_token_id=VSTART_ID, eoi_token_id=VEND_ID, tie_word_embeddings=False)


def llama() -> LlamaConfig:
    return LlamaConfig(**_text)


def qwen2() -> Qwen2Config:
    # sliding window on the upper layers: layer_types differ along depth
    return Qwen2Config(**_text, use_sliding_window=True, sliding_window=8, max_window_layers=3)


def qwen2_5() -> Qwen2Config:
    # Qwen2.5 (model_type qwen2) as its small checkpoints ship: tied embeddings, q/k/v biases
    return Qwen2Config(**dict(_text, tie_word_embeddings=True), rope_parameters={
        "rope_type": "default", "rope_theta": 1000000.0})


def qwen3() -> Qwen3Config:
    # sliding window from layer 3 up: layer_types differ along depth (qk-norm is built in)
    return Qwen3Config(**_text, use_sliding_window=True, sliding_window=8, max_window_layers=3)


def mistral() -> MistralConfig:
    return MistralConfig(**_text, sliding_window=8)


def smollm() -> LlamaConfig:
    # SmolLM / SmolLM2 (model_type llama): tied embeddings, GQA 3:1, rope_theta 1e5
    return LlamaConfig(**dict(_text, tie_word_embeddings=True, num_attention_heads=6, num_key_value_heads=2,
                              hidden_size=96), rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def phi3() -> Phi3Config:
    # Phi-3.5 / Phi-4-mini style: fused qkv and gate_up projections, partial rotary, longrope
    # (short factors up to original_max_position_embeddings, long factors beyond), a sliding window
    half = int(16 * 0.5) // 2
    return Phi3Config(**_text, sliding_window=8, original_max_position_embeddings=16, eos_token_id=2,
                      pad_token_id=0, bos_token_id=None, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
        "short_factor": [1.0 + 0.1 * i for i in range(half)], "long_factor": [2.0 + 0.5 * i for i in range(half)]})


def gemma3_text() -> Gemma3TextConfig:
    # Gemma 3 text-only (1B): sliding and full layers in an irregular schedule, so that after
    # removing layers 3 and 4 the sliced list ([s, f, s, s]) differs both from its unsliced prefix
    # and from the index-derived default; a RoPE per layer type (local theta 1e4, global 1e6
    # with linear scaling); a small window so prompts cross it
    s, f = "sliding_attention", "full_attention"
    types = [s, f, s, f, s, s]
    return Gemma3TextConfig(**_text, layer_types=types, sliding_window=4, query_pre_attn_scalar=16,
                            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                             "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                "rope_theta": 1000000.0}})


VLM_FAMILIES = {"qwen3_vl": qwen3_vl, "qwen3_vl_moe": qwen3_vl_moe, "qwen2_5_vl": qwen2_5_vl,
                "qwen2_vl": qwen2_vl, "llava": llava, "llava_onevision": llava_onevision,
                "gemma3": gemma3}
#: text families; the name is the family (qwen2_5 and smollm are model_type qwen2 and llama)
LLM_FAMILIES = {"llama": llama, "qwen2": qwen2, "qwen2_5": qwen2_5, "qwen3": qwen3, "mistral": mistral,
                "smollm": smollm, "phi3": phi3, "gemma3_text": gemma3_text}
FAMILIES = {**VLM_FAMILIES, **LLM_FAMILIES}
