"""Write a tiny random-init Llama, Qwen2, Qwen3 or Gemma 3 as a quantized GGUF file with the gguf
package's own writer, laid out as llama.cpp's converter lays one out (tensor names
``token_embd``, ``blk.N.*``, ``output``; Qwen2's q/k/v biases, Qwen3's q/k norms; Gemma 3's
q/k norms, post-attention and post-feed-forward norms, tied embeddings, a sliding window; a
byte-level BPE tokenizer in ``tokenizer.ggml.*``), so the tests of GGUF in and GGUF out run on
files that transformers loads through its real GGUF path, and llama.cpp loads too.

Block tensors mix the quantization types transformers can dequantize (Q4_0, Q4_1, Q5_0,
Q8_0, F16; norms F32), so "copied with its quantization type" is checked on more than one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HIDDEN, FFN, LAYERS = 64, 128, 6
#: (attention heads, key/value heads, head dim) per architecture; transformers reads no head
#: dim from a Qwen3 GGUF and takes Qwen3Config's default, 128
HEADS = {"llama": (4, 2, 16), "qwen2": (4, 2, 16), "qwen3": (2, 1, 128),
         # Gemma 3: head dim 256, so transformers' default query_pre_attn_scalar (256, not read from
         # a GGUF) is llama.cpp's 1/sqrt(head_dim)
         "gemma3": (2, 1, 256)}
#: Gemma 3's sliding window (tokens): short, so sliding and full layers differ on short prompts
GEMMA3_WINDOW = 8
GEMMA3_LAYERS = 18
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
#: words given whole-word BPE merges, so prompts tokenise into a handful of tokens
WORDS = ("what is the colour of shape how many plus minus answer question red blue green "
         "yes no and which where four seven").split()
#: an array-valued architecture key with one entry per layer (its values are the layer
#: indices, so a sliced copy shows which layers were kept); transformers ignores it
PER_LAYER_KEY = "{arch}.depthprune_test.layer_marker"


def _byte_level_vocab() -> tuple[list[str], list[str]]:
    """Tokens and merges of a small byte-level BPE: the 256 byte symbols plus whole words."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    symbols = bytes_to_unicode()
    tokens = [symbols[b] for b in range(256)]
    merges: list[str] = []
    seen = set(tokens)
    for word in WORDS:
        for spelled in (" " + word, word):
            text = "".join(symbols[b] for b in spelled.encode())
            current = text[0]
            for ch in text[1:]:
                merged = current + ch
                if merged not in seen:
                    merges.append(f"{current} {ch}")
                    tokens.append(merged)
                    seen.add(merged)
                current = merged
    return tokens, merges


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0, chat_template: bool = True,
                    tied: bool = False, layers: int | None = None) -> Path:
    """Write a tiny GGUF of ``arch`` (llama, qwen2, qwen3, gemma3) to ``path`` (random weights from
    ``seed``; ``chat_template``: store a ChatML template, as instruct models do; without it the
    file is a "base model"; ``tied``: no ``output.weight``, always so for gemma3; ``layers``:
    default :data:`LAYERS`, :data:`GEMMA3_LAYERS` for gemma3, three periods of its pattern).
    Returns ``path``."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    gemma = arch == "gemma3"
    n_layers = layers or (GEMMA3_LAYERS if gemma else LAYERS)
    tied = tied or gemma
    rng = np.random.default_rng(seed)
    tokens, merges = _byte_level_vocab()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = tokens + specials
    vocab = len(tokens)
    heads, kv_heads, head_dim = HEADS[arch]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(n_layers)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    if not gemma:
        writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    if gemma:
        writer.add_sliding_window(GEMMA3_WINDOW)
        writer.add_rope_freq_base(1e6)  # the full-attention layers' base; sliding ones use 1e4
    if head_dim * heads != HIDDEN:  # llama.cpp reads the head dim from here (transformers, for Qwen3, does not)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_key_value(PER_LAYER_KEY.format(arch=arch), list(range(n_layers)), gguf.GGUFValueType.ARRAY,
                         sub_type=gguf.GGUFValueType.UINT32)
    writer.add_tokenizer_model("gpt2")
    if arch != "llama":
        writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - len(specials)) + [3] * len(specials))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab - 3)
    writer.add_eos_token_id(vocab - 1)
    writer.add_pad_token_id(vocab - 3)
    writer.add_add_bos_token(False)
    if chat_template:
        writer.add_chat_template(CHATML)

    def add(name: str, shape: tuple[int, ...], qtype: Q, scale: float = 0.08) -> None:
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype == Q.F32:
            writer.add_tensor(name, values)
        elif qtype == Q.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)

    add("token_embd.weight", (vocab, HIDDEN), Q.Q8_0, 0.5)
    kinds = (Q.Q4_1, Q.Q4_0, Q.Q5_0, Q.Q8_0, Q.F16)
    def norm(name: str, size: int) -> None:  # (Gemma stores 1 + w, which llama.cpp multiplies by)
        writer.add_tensor(name, (1 + 0.1 * rng.standard_normal(size)).astype(np.float32))

    for i in range(n_layers):
        kind = kinds[i % len(kinds)]
        writer.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        add(f"blk.{i}.attn_q.weight", (heads * head_dim, HIDDEN), kind)
        add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, HIDDEN), kind)
        add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, HIDDEN), Q.Q8_0)
        add(f"blk.{i}.attn_output.weight", (HIDDEN, heads * head_dim), kind)
        if arch == "qwen2":
            for name, rows in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
                add(f"blk.{i}.attn_{name}.bias", (rows * head_dim,), Q.F32)
        if arch in ("qwen3", "gemma3"):
            for name in ("q", "k"):
                writer.add_tensor(f"blk.{i}.attn_{name}_norm.weight",
                                  (1 + 0.1 * rng.standard_normal(head_dim)).astype(np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        add(f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), kind)
        add(f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), Q.Q4_1)
        add(f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), kind)
        if gemma:
            norm(f"blk.{i}.post_attention_norm.weight", HIDDEN)
            norm(f"blk.{i}.post_ffw_norm.weight", HIDDEN)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    if not tied:
        add("output.weight", (vocab, HIDDEN), Q.Q8_0, 0.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
