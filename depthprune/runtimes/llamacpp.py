"""llama.cpp for GGUF files, through ``ik-llama-cpp-python`` (the optional ``runtime`` extra:
``pip install -e ".[runtime]"``), a build of the ik_llama.cpp fork with a manylinux_2_28 wheel;
the llama.cpp wheels on PyPI need a newer glibc than these machines have.

Everything is driven at the level of llama.cpp's C API (``llama_decode`` on a batch, the logits
of the last position, the runtime's own timings), not its samplers, so a check reads exactly
what llama.cpp computes:

- :func:`next_token_logits` / :func:`next_tokens`: GGUF path + prompts (token ids) -> llama.cpp's
  logits / argmax of the next token after each prompt (each prompt from an empty KV cache);
- :class:`LlamaCpp`: one loaded model and context, for tokenizing, greedy decoding and timing
  (:meth:`LlamaCpp.timed_greedy`: prefill and decode milliseconds as llama.cpp counts them).

**Prompts are decoded in chunks of at most 16 tokens** (:data:`PREFILL_CHUNK`). In
ik-llama-cpp-python 0.1.5 on a CPU with AVX2 but no AVX-512 (the AMD EPYC machines here), a
batch of 32 or more tokens through a **Q4_1** weight gives wrong results (measured: SmolLM2
Q4_1, a 45-token prompt, max |logit - transformers| 0.90 in chunks of up to 31 tokens, 15.2 at
32 and 25.6 at 64, with a different argmax; tiny files whose projections are F16, Q8_0, Q4_0 or
Q5_0 stay within 0.2 in chunks of 16 and 64 tokens, Q4_1 goes from 0.09 to 5.3). Pruned and unpruned files are
affected alike: it is the runtime's kernel, not the file.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "ik_llama_cpp"
INSTALL = 'pip install "ik-llama-cpp-python>=0.1.5"  (or pip install -e ".[runtime]")'
#: the most prompt tokens sent to llama_decode at once (see the module docstring)
PREFILL_CHUNK = 16


def unavailable() -> str | None:
    """Why llama.cpp cannot run here (one line, with the install command), or None."""
    if importlib.util.find_spec(PACKAGE) is None:
        return f"llama.cpp (ik-llama-cpp-python) is not installed: {INSTALL}"
    try:
        _api()
    except (OSError, ImportError, FileNotFoundError) as err:  # the wheel's shared library cannot load
        return f"llama.cpp (ik-llama-cpp-python) is installed but its library does not load ({err})"
    return None


_SILENCED = []


def _api() -> Any:
    """The binding's ctypes API, with llama.cpp's log silenced once (it logs every load to stderr)."""
    from ik_llama_cpp import _ctypes_api as C
    if not _SILENCED:
        callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda *_: None)
        setter = C._lib.llama_log_set
        setter.argtypes, setter.restype = [callback.__class__, ctypes.c_void_p], None
        if not os.environ.get("DEPTHPRUNE_LLAMACPP_LOG"):
            setter(callback, None)
        _SILENCED.append(callback)  # keep the callback alive
        for name, args, res in (("llama_n_layer", [ctypes.c_void_p], ctypes.c_int32),
                                ("llama_model_meta_val_str", [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                                              ctypes.c_size_t], ctypes.c_int32)):
            fn = getattr(C._lib, name)
            fn.argtypes, fn.restype = args, res
    return C


class LlamaCpp:
    """A GGUF file loaded in llama.cpp with one context (one sequence, ``n_ctx`` positions),
    on ``threads`` CPU threads (prefill and decode). Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike, n_ctx: int = 512, threads: int = 1,
                 prefill_chunk: int = PREFILL_CHUNK):
        C = _api()
        from ik_llama_cpp._internals import IkContext, IkModel
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: GGUF file not found")
        self.path = path
        self._C = C
        self._model = IkModel(str(path))  # RuntimeError "Failed to load model" when llama.cpp refuses it
        # flash attention off: the fork's CPU flash-attention kernels assert on some shapes
        # without AVX-VNNI, and plain attention is what the other runtimes are compared with
        self._context = IkContext(self._model, n_ctx=n_ctx, n_threads=threads, flash_attn=False)
        self.n_ctx, self.threads, self.prefill_chunk = n_ctx, threads, prefill_chunk
        self.n_vocab = self._model.n_vocab

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for name in ("_context", "_model"):
            obj = getattr(self, name, None)
            if obj is not None:
                obj.close()
                setattr(self, name, None)

    @property
    def n_layer(self) -> int:
        """The decoder layer count llama.cpp built the model with."""
        return int(self._C._lib.llama_n_layer(self._model.model))

    def metadata(self, key: str) -> str | None:
        """A scalar metadata value as llama.cpp read it (as a string), or None."""
        buf = ctypes.create_string_buffer(1024)
        n = self._C._lib.llama_model_meta_val_str(self._model.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        """llama.cpp's tokenization of ``text`` (``special``: control tokens written in the text
        are parsed as such, as in a chat prompt)."""
        return self._model.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._model.detokenize(list(tokens))

    def _decode(self, tokens: Sequence[int], pos: int) -> None:
        from ik_llama_cpp._internals import make_batch_range
        batch = make_batch_range(list(tokens), pos_start=pos, logits_last=True)
        try:
            ret = self._context.decode(batch)
        finally:
            self._C.llama_batch_free(batch)
        if ret != 0:
            raise RuntimeError(f"{self.path}: llama_decode failed ({ret}) at positions {pos}..{pos + len(tokens)}")

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self._context.get_logits(-1), shape=(self.n_vocab,)).copy()

    def _prefill(self, tokens: Sequence[int]) -> None:
        if not tokens:
            raise ValueError("empty prompt")
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit n_ctx={self.n_ctx}")
        self._context.kv_cache_clear()
        step = min(self.prefill_chunk, self._context._n_ubatch)
        for i in range(0, len(tokens), step):
            self._decode(tokens[i:i + step], i)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """The next-token logits (float32, vocabulary-long) after ``tokens``, from an empty cache."""
        self._prefill(tokens)
        return self._last_logits()

    def greedy(self, tokens: Sequence[int], new_tokens: int, stop: Sequence[int] = ()) -> list[int]:
        """``new_tokens`` greedy (argmax) tokens after ``tokens`` (fewer if one of ``stop`` comes)."""
        return self.timed_greedy(tokens, new_tokens, stop)["tokens"]

    def timed_greedy(self, tokens: Sequence[int], new_tokens: int, stop: Sequence[int] = ()) -> dict:
        """Greedy decoding with llama.cpp's own timings: ``prefill_ms`` (the prompt's decode
        calls), ``decode_ms`` (the one-token decode calls, ``new_tokens - 1`` of them when no
        stop token comes; both wall clock) and the tokens. Argmax is taken in numpy, outside
        llama.cpp's timed calls. Also this process's CPU seconds over the prefill and over the
        decoding loop (``prefill_cpu_s``, ``decode_cpu_s``, argmax included): on a shared
        machine, time spent waiting for a core counts in the wall clock, not here."""
        import time
        C = self._C
        C.llama_reset_timings(self._context.ctx)
        cpu0 = time.process_time()
        self._prefill(tokens)
        cpu1 = time.process_time()
        out: list[int] = []
        pos = len(tokens)
        while True:
            token = int(np.argmax(self._last_logits()))
            out.append(token)
            if len(out) >= new_tokens or token in stop:
                break
            if pos + 1 >= self.n_ctx:
                raise ValueError(f"{len(tokens)} + {new_tokens} tokens do not fit n_ctx={self.n_ctx}")
            self._decode([token], pos)
            pos += 1
        cpu2 = time.process_time()
        t = C.llama_get_timings(self._context.ctx)
        return {"tokens": out, "prefill_ms": t.t_p_eval_ms, "prompt_tokens": t.n_p_eval,
                "decode_ms": t.t_eval_ms, "decode_tokens": t.n_eval,
                "prefill_cpu_s": cpu1 - cpu0, "decode_cpu_s": cpu2 - cpu1}


def next_token_logits(path: str | os.PathLike, prompts: Sequence[Sequence[int]], threads: int = 1,
                      n_ctx: int = 512) -> np.ndarray:
    """llama.cpp's next-token logits after each prompt (token ids), each from an empty KV cache:
    an array ``(len(prompts), vocabulary)``. Works for any GGUF llama.cpp loads: pruned,
    unpruned, or with changed (compensated) tensors."""
    with LlamaCpp(path, n_ctx=n_ctx, threads=threads) as llm:
        return np.stack([llm.logits(p) for p in prompts])


def next_tokens(path: str | os.PathLike, prompts: Sequence[Sequence[int]], threads: int = 1,
                n_ctx: int = 512) -> list[int]:
    """llama.cpp's argmax next token after each prompt (token ids)."""
    return [int(i) for i in next_token_logits(path, prompts, threads, n_ctx).argmax(axis=1)]
