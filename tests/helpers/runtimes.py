"""llama.cpp next to transformers on the same GGUF file: the comparison every runtime test
makes, for pruned files now and for compensated ones (changed tensors) later.

:func:`compare_with_transformers` takes a GGUF path and prompts (token ids) and returns
llama.cpp's and transformers' next-token argmax and logits for each prompt, and how many
argmaxes agree. The prompts are token ids, so both runtimes see the same input; the tests
check separately that llama.cpp tokenizes the prompt texts as transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch


def _vllm_check() -> Any:
    """scripts/vllm_check.py, which holds the one list of runtime questions (it runs in vLLM's own
    environment, without depthprune or the tests, so the list lives there)."""
    import importlib.util
    path = Path(__file__).resolve().parents[2] / "scripts" / "vllm_check.py"
    spec = importlib.util.spec_from_file_location("vllm_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: SmolLM2 prompts: every one is over 32 tokens with its chat template (the template adds a
#: system message), so the chunked prefill of depthprune.runtimes.llamacpp is exercised
QUESTIONS = _vllm_check().QUESTIONS[:16]


def require_llamacpp() -> None:
    """Skip the calling test, with the reason and the install command, when llama.cpp cannot run."""
    from depthprune.runtimes.llamacpp import unavailable
    reason = unavailable()
    if reason:
        pytest.skip(reason)


@dataclass
class Comparison:
    llamacpp: np.ndarray       # (prompts, vocab) logits
    transformers: np.ndarray   # (prompts, vocab) logits
    llamacpp_layers: int       # the layer count llama.cpp built
    transformers_layers: int

    @property
    def agree(self) -> int:
        return int((self.llamacpp.argmax(1) == self.transformers.argmax(1)).sum())

    @property
    def total(self) -> int:
        return len(self.llamacpp)

    @property
    def max_abs_diff(self) -> float:
        return float(np.abs(self.llamacpp - self.transformers).max())

    @property
    def near_ties(self) -> np.ndarray:
        """Prompts whose top two transformers logits are closer than twice the largest
        llama.cpp/transformers logit difference: there rounding alone can flip the argmax."""
        return near_ties(self.transformers, self.max_abs_diff)

    def disagreements_are_near_ties(self) -> bool:
        """Every prompt whose argmaxes differ is a near tie (:attr:`near_ties`)."""
        differ = self.llamacpp.argmax(1) != self.transformers.argmax(1)
        return bool(np.all(self.near_ties[differ]))


def near_ties(logits: np.ndarray, noise: float) -> np.ndarray:
    """Rows of ``logits`` whose top two values are closer than ``2 * noise``."""
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) < 2 * noise


def transformers_logits(path: Path, prompts: list[list[int]]) -> tuple[np.ndarray, int]:
    """transformers' reading of GGUF ``path`` (dequantised to float32): next-token logits after
    each prompt, and its layer count."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = np.stack([model(torch.tensor([p])).logits[0, -1].float().numpy() for p in prompts])
    return logits, model.config.num_hidden_layers


def compare_with_transformers(path: Path, prompts: list[list[int]], threads: int = 1) -> Comparison:
    """llama.cpp's and transformers' next-token logits on the same file and prompts."""
    from depthprune.runtimes.llamacpp import LlamaCpp
    with LlamaCpp(path, threads=threads) as llm:
        ours = np.stack([llm.logits(p) for p in prompts])
        layers = llm.n_layer
    theirs, hf_layers = transformers_logits(path, prompts)
    return Comparison(ours, theirs, layers, hf_layers)


def tokenize_both(path: Path, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """The texts tokenized by llama.cpp and by transformers' tokenizer of the same GGUF file
    (special tokens in the text parsed, no BOS added: the texts are complete prompts)."""
    from transformers import AutoTokenizer

    from depthprune.runtimes.llamacpp import LlamaCpp
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with LlamaCpp(path) as llm:
        ours = [llm.tokenize(t, add_bos=False, special=True) for t in texts]
    return ours, [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
