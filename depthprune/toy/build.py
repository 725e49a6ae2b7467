"""Build the toy model's tokenizer, processor and (untrained) model from scratch.

The toy is the real ``Qwen3VLForConditionalGeneration`` at a small size: 16 decoder
layers (hidden 128), a 4-block vision tower (8 px patches, 2x2 merge) with deepstack
features taken from ViT blocks 1, 2, 3, a byte-level BPE tokenizer with the Qwen special
tokens trained on the synthetic benchmark's text, and a stock ``Qwen3VLProcessor``.
"""

from __future__ import annotations

import random

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

from depthprune.data import synth

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
VOCAB_SIZE = 512
PATCH, MERGE, TEMPORAL = 8, 2, 2
NUM_LAYERS, HIDDEN = 16, 128  # decoder depth and width (``python -m depthprune.toy.train --layers/--hidden``)

# Qwen2's pre-tokenizer split: single digits, words with their leading space, punctuation runs
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen3-VL style chat template (no default system prompt); images and videos become
# <|vision_start|><|image_pad|><|vision_end|>, which the processor expands per image.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _corpus(n: int = 4000) -> list[str]:
    """Text the BPE merges are learned from: questions and answers of every template."""
    rng = random.Random("depthprune-toy-tokenizer")
    lines = ["user", "assistant", "system", "\n"]
    for _ in range(n):
        for templates in synth.TEMPLATES.values():
            _, gen, _ = rng.choice(templates)
            question, answer, _, _ = gen(rng)
            lines += [question, answer, " " + answer]
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (Qwen-style digit splitting) with the Qwen special tokens first (ids 0-6)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=1024, padding_side="left", clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>",
                              "vision_end_token": "<|vision_end|>"},
        chat_template=CHAT_TEMPLATE)


def build_processor() -> Qwen3VLProcessor:
    """Stock Qwen3-VL processor around the toy tokenizer; images are sized to 32x32..128x128 px."""
    sizes = dict(patch_size=PATCH, temporal_patch_size=TEMPORAL, merge_size=MERGE,
                 image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128}, **sizes)
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 32 * 32, "longest_edge": 4 * 128 * 128}, **sizes)
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=build_tokenizer(),
                            video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def build_config(tokenizer: PreTrainedTokenizerFast, layers: int = NUM_LAYERS,
                 hidden: int = HIDDEN) -> Qwen3VLConfig:
    """The toy Qwen3-VL config; special-token ids come from ``tokenizer``.

    ``hidden`` must be a multiple of 32 (heads of 32 dims, so the M-RoPE split stays 6/5/5)."""
    if hidden % 32:
        raise ValueError(f"toy hidden size must be a multiple of 32, got {hidden}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = hidden // 32
    kv_heads = heads // 2 if heads % 2 == 0 else heads  # grouped-query where it divides
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            head_dim=32,
            max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [6, 5, 5], "mrope_interleaved": True},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(
            depth=4, hidden_size=64, intermediate_size=256, num_heads=4, patch_size=PATCH,
            spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL, out_hidden_size=hidden,
            num_position_embeddings=256, deepstack_visual_indexes=[1, 2, 3]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    return config


def build_model(tokenizer: PreTrainedTokenizerFast, layers: int = NUM_LAYERS,
                hidden: int = HIDDEN) -> Qwen3VLForConditionalGeneration:
    """A freshly initialised toy model (seed torch first for reproducible weights)."""
    model = Qwen3VLForConditionalGeneration(build_config(tokenizer, layers=layers, hidden=hidden))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    return model
