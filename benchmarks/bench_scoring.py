"""Cost of a scoring pass (hooks + every statistic the rankers use) next to a plain forward.

The scoring pass is the one :func:`depthprune.scoring.forward.score_model` runs: its forward keywords
(:func:`depthprune.scoring.forward.model_forward_kwargs`: no cache, the LM head on the last position
only) and the similarity hooks. The plain forward is ``model(**inputs, use_cache=False)``,
which computes logits at every position.

Model: random-init Qwen3VLForConditionalGeneration whose text decoder has the shapes of
Qwen3-VL-2B (28 layers, hidden 2048, intermediate 6144, 16 heads, 8 KV heads, vocab
151936; tiny vision tower, text-only prompts), float32, batches of 256-token prompts.

Time: plain and scoring forwards alternate in one process (machines here are noisy; only
the ratio of medians means anything); wall-clock and process CPU time are both reported,
the latter being robust to other processes competing for the cores. Peak memory: each mode runs in its own fresh
subprocess and reports its peak RSS; the ratio is printed for the whole process and for
the increase over the loaded model. Targets: time <= 0.90x (the statistics need no logits,
so skipping most of the LM head must more than pay for the hooks), peak memory <= 1.15x.

    python benchmarks/bench_scoring.py            # Qwen3-VL-2B shapes (about 9 GB RAM)
    python benchmarks/bench_scoring.py --small    # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from qwen3_vl_shapes import qwen3_vl_2b  # the benchmarks' shared stand-in model

TIME_TARGET, MEMORY_TARGET = 0.90, 1.15


def build_model(small: bool, layers: int | None = None):
    """The shared stand-in model (:mod:`qwen3_vl_shapes`), ``layers`` deep if given."""
    return qwen3_vl_2b(small, layers)


def make_batch(model, batch: int, tokens: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.text_config.vocab_size, (batch, tokens), generator=g)
    mask = torch.ones_like(ids)
    mask[0, : tokens // 8] = 0  # some left padding, so masking is exercised
    return {"input_ids": ids, "attention_mask": mask}


def make_runners(model, batch_inputs, max_span: int | None):
    from depthprune.models.architectures import find_decoder_layers
    from depthprune.scoring.forward import SimilarityRecorder, model_forward_kwargs, token_groups
    layers = find_decoder_layers(model)[1]
    span = max_span or (len(layers) + 1) // 2
    recorder = SimilarityRecorder(layers, span)

    @torch.inference_mode()
    def plain():
        model(**batch_inputs, use_cache=False)

    @torch.inference_mode()
    def scoring():
        with recorder:
            recorder.begin_batch(token_groups(batch_inputs, model.config))
            model(**model_forward_kwargs(model, batch_inputs))
            recorder.end_batch()
    return plain, scoring, span


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def memory_child(mode: str, args) -> None:
    """Run one mode in this fresh process; print peak/loaded RSS as JSON."""
    model = build_model(args.small, args.layers)
    inputs = make_batch(model, args.batch, args.tokens)
    plain, scoring, _ = make_runners(model, inputs, args.max_span)
    loaded = rss_bytes()
    fn = plain if mode == "plain" else scoring
    for _ in range(2):
        fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": mode, "loaded": loaded, "peak": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny shapes, for a smoke run")
    ap.add_argument("--layers", type=int, default=None, help="override the decoder depth")
    ap.add_argument("--tokens", type=int, default=256, help="prompt length")
    ap.add_argument("--batch", type=int, default=1, help="prompts per forward")
    ap.add_argument("--repeats", type=int, default=5, help="timed forwards per mode")
    ap.add_argument("--max-span", type=int, default=None, help="spans recorded (default: half the layers)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--memory-child", choices=["plain", "scoring"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args)

    started = time.perf_counter()
    model = build_model(args.small, args.layers)
    inputs = make_batch(model, args.batch, args.tokens)
    plain, scoring, span = make_runners(model, inputs, args.max_span)
    n_layers = model.config.text_config.num_hidden_layers
    print(f"model: Qwen3-VL text decoder, {n_layers} layers, hidden {model.config.text_config.hidden_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, float32; "
          f"batch {args.batch} x {args.tokens} tokens; spans 1..{span}; threads {torch.get_num_threads()}; "
          f"built in {time.perf_counter() - started:.0f} s")
    plain(), scoring()  # warm-up
    times = {"plain": [], "scoring": []}
    cpu = {"plain": [], "scoring": []}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("scoring", scoring)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    t_plain, t_score = statistics.median(times["plain"]), statistics.median(times["scoring"])
    time_ratio = t_score / t_plain
    # CPU time of this process: insensitive to time spent waiting for a core on a busy machine
    cpu_ratio = statistics.median(cpu["scoring"]) / statistics.median(cpu["plain"])
    del model
    mem = {}
    for mode in ("plain", "scoring"):
        cmd = [sys.executable, __file__, "--memory-child", mode, "--tokens", str(args.tokens),
               "--batch", str(args.batch)] + (["--small"] if args.small else []) \
            + (["--layers", str(args.layers)] if args.layers else []) \
            + (["--max-span", str(args.max_span)] if args.max_span else []) \
            + (["--threads", str(args.threads)] if args.threads else [])
        mem[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    peak_ratio = mem["scoring"]["peak"] / mem["plain"]["peak"]
    extra = [mem[m]["peak"] - mem[m]["loaded"] for m in ("plain", "scoring")]
    gib = 2 ** 30
    print(f"time   plain {t_plain:.3f} s  scoring {t_score:.3f} s  (median of {args.repeats}, interleaved)")
    print(f"       ratio {time_ratio:.3f}x  target <= {TIME_TARGET:.2f}x  "
          f"{'MET' if time_ratio <= TIME_TARGET else f'MISSED by {time_ratio - TIME_TARGET:.3f}x'}")
    print(f"       CPU-time ratio {cpu_ratio:.3f}x (process CPU seconds, robust to other load)")
    print(f"memory peak RSS plain {mem['plain']['peak'] / gib:.2f} GiB  scoring {mem['scoring']['peak'] / gib:.2f} GiB")
    print(f"       ratio {peak_ratio:.3f}x  target <= {MEMORY_TARGET:.2f}x  "
          f"{'MET' if peak_ratio <= MEMORY_TARGET else f'MISSED by {peak_ratio - MEMORY_TARGET:.3f}x'}")
    print(f"       above the loaded model: plain +{extra[0] / gib:.3f} GiB, scoring +{extra[1] / gib:.3f} GiB")
    print(json.dumps({"time_ratio": round(time_ratio, 4), "cpu_time_ratio": round(cpu_ratio, 4), "peak_memory_ratio": round(peak_ratio, 4),
                      "plain_s": round(t_plain, 4), "scoring_s": round(t_score, 4),
                      "plain_peak_gib": round(mem["plain"]["peak"] / gib, 3),
                      "scoring_peak_gib": round(mem["scoring"]["peak"] / gib, 3)}))


if __name__ == "__main__":
    main()
