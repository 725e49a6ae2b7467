"""Save tiny random-init checkpoints of real transformers classes, with a real tokenizer
(and, for the Qwen-VL families, a real processor), so tests exercise the same loading,
scoring, pruning and saving code as a hub checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, PreTrainedTokenizerFast

from tests.helpers.tiny_configs import FAMILIES, IMAGE_ID, VEND_ID, VIDEO_ID, VLM_FAMILIES, VOCAB, VSTART_ID

WORDS = ("what is the colour of shape circle square triangle red green blue left right top bottom "
         "how many plus minus times sum answer word read image picture number count bigger smaller "
         "yes no a an and or in on at which where").split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer of VOCAB ids; the vision special tokens sit at the ids the
    tiny configs expect."""
    specials = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "[UNK]": 3}
    vocab = dict(specials)
    for tok in WORDS + [str(d) for d in range(10)] + list("?.,:+-*=()") + ["\n"]:
        vocab.setdefault(tok, len(vocab))
    filler = len(vocab)
    while len(vocab) < IMAGE_ID:
        vocab[f"w{filler}"] = len(vocab)
        filler += 1
    for tok, tid in (("<|image_pad|>", IMAGE_ID), ("<|video_pad|>", VIDEO_ID),
                     ("<|vision_start|>", VSTART_ID), ("<|vision_end|>", VEND_ID)):
        vocab[tok] = tid
    while len(vocab) < VOCAB:
        vocab[f"w{len(vocab)}"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|image_pad|>", "<|video_pad|>",
                                   "<|vision_start|>", "<|vision_end|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_processor(family: str, tok: PreTrainedTokenizerFast):
    """A real processor for the Qwen-VL families; None for the others (tokenizer only)."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )
    size = {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}
    image = Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2, size=size)
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        video = Qwen3VLVideoProcessor(patch_size=8, merge_size=2, temporal_patch_size=2, size=size)
        return Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video,
                                chat_template=CHAT_TEMPLATE)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        video = Qwen2VLVideoProcessor(patch_size=8, merge_size=2, temporal_patch_size=2, size=size)
        cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
        return cls(image_processor=image, tokenizer=tok, video_processor=video, chat_template=CHAT_TEMPLATE)
    return None


def save_tiny(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build family's tiny model with ``seed``, save it with tokenizer/processor to ``out_dir``."""
    torch.manual_seed(seed)
    config = FAMILIES[family]()
    cls = AutoModelForImageTextToText if family in VLM_FAMILIES else AutoModelForCausalLM
    model = cls.from_config(config)
    tc = model.config.get_text_config()
    tc.eos_token_id, tc.pad_token_id, tc.bos_token_id = 2, 0, None
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.generation_config.bos_token_id = None
    model.save_pretrained(out_dir)
    tok = make_tokenizer()
    proc = make_processor(family, tok)
    (proc or tok).save_pretrained(out_dir)
    return out_dir


#: Families whose tiny processors take images (the others read text records only).
IMAGE_FAMILIES = {"qwen3_vl", "qwen3_vl_moe", "qwen2_vl", "qwen2_5_vl"}


def load_tiny_family(family: str, out_dir: Path, calib_dir: Path):
    """``family``'s tiny model saved to ``out_dir`` and loaded back in float32, with the
    calibration records it can take: ``(src, model, processor, records)``."""
    from depthprune.data.records import load_records
    from depthprune.models.loading import load_model
    src = save_tiny(family, out_dir)
    model, processor = load_model(src, dtype="float32")
    records = load_records(calib_dir / ("calib.jsonl" if family in IMAGE_FAMILIES else "text.jsonl"))
    return src, model, processor, records
