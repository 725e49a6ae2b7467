"""Real speed-up of depth pruning: the unpruned model and pruned copies, side by side, in the
runtime chosen by ``--runtime``:

* ``transformers`` (default): the model below, through ``model.generate``;
* ``llamacpp``: a GGUF file (default the ``smollm2`` GGUF, SmolLM2-135M-Instruct Q4_1) and its
  pruned copies (``prune MODEL.gguf --out X.gguf``, depthprune's ``uniform`` plan for each
  ``--cuts`` count) in llama.cpp (ik-llama-cpp-python, the ``runtime`` extra): prefill and
  decode tokens/s from llama.cpp's own timings (prefill in 16-token chunks, see
  depthprune.runtimes.llamacpp), one prompt of random token ids, interleaved repeats;
* ``vllm``: SmolLM2 (dequantised) and its pruned checkpoints (``prune smollm2 --out DIR``) in
  vLLM (CPU unless CUDA is there), run by ``benchmarks/vllm_speed_worker.py`` with the Python of
  vLLM's own environment (``--vllm-python``, ``$VLLM_PYTHON``, or this one if it imports vllm):
  ``--batch`` prompts (default 64) of random token ids, prefill-only and full generates.

Each prints, per variant, prefill and decode tokens/s, their ratio to the unpruned model and
the two ceilings: the decoder-only ideal L/(L-k) and the whole-model parameter ratio (the
embedding and LM head are not pruned). Without llama.cpp or vLLM those runtimes print why and
skip (exit 0).

Model (``--runtime transformers``): random-init ``Qwen3VLForConditionalGeneration`` whose text decoder has the shapes of
Qwen3-VL-2B (28 layers, hidden 2048, intermediate 6144, 16 heads / 8 KV heads, head_dim 128,
vocab 151936, tied embeddings; tiny vision tower, text-only prompts). Pruned copies remove
10%, 25% and 50% of the decoder layers with depthprune's own code path
(``api.plan(..., "uniform")`` + ``pruning.prune_layers``) on copies that share the weight
tensors, so one model's memory serves all variants.

Measured per variant, through ``model.generate`` (greedy, a fixed number of new tokens;
a logits processor timestamps every step, so prefill = start -> first step, decode = first
-> last step, in one call):

* prefill latency (s) and decode tokens/s, wall clock and process CPU time, medians over
  repeats that interleave the variants (the machines here are shared: only ratios measured
  side by side mean anything, and CPU time is robust to waiting for a core);
* parameters (distinct, whole model);
* peak memory: each variant is built pruned (on the meta device, then materialised) in a
  fresh subprocess that runs the same generate; peak RSS on CPU, peak allocated on CUDA.

Each speed-up (unpruned / pruned) is printed with its ratio to the ideal L/(L-k).
Target: decode speed-up >= 0.9 x ideal. The LM head and embeddings are not pruned, so
the whole-model parameter ratio is the realistic bound for memory-bound decoding; it is
printed beside the ideal.

    python benchmarks/bench_speed.py                 # Qwen3-VL-2B shapes on CPU (~9 GB RAM)
    python benchmarks/bench_speed.py --small         # seconds-long smoke run
    python benchmarks/bench_speed.py --device cuda   # auto when CUDA is available (bfloat16)
    python benchmarks/bench_speed.py --vllm          # also vLLM on CUDA (UNTESTED: no GPU here)
    python benchmarks/bench_speed.py --runtime llamacpp --threads 1            # SmolLM2 GGUF, 27 and 23 of 30 layers
    python benchmarks/bench_speed.py --runtime vllm --vllm-python .venv-vllm/bin/python --threads 1
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.90  # decode speed-up >= TARGET x ideal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", choices=("transformers", "llamacpp", "vllm"), default="transformers",
                    help="where to time the variants (default transformers)")
    ap.add_argument("--gguf", default=None, help="llamacpp: the GGUF file (default: smollm2)")
    ap.add_argument("--cuts", default="3,7", help="llamacpp/vllm: layers removed per pruned variant")
    ap.add_argument("--prefill-chunk", type=int, default=16,
                    help="llamacpp: prompt tokens per llama_decode call (16: see depthprune.runtimes.llamacpp)")
    ap.add_argument("--vllm-python", default=None, help="vllm: the Python of vLLM's environment")
    ap.add_argument("--small", action="store_true", help="tiny shapes, for a smoke run")
    ap.add_argument("--fractions", default="0.1,0.25,0.5", help="pruning budgets (fractions of the decoder layers)")
    ap.add_argument("--tokens", type=int, default=None, help="prompt length (default 128 on CPU, 1024 on CUDA)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 16 on CPU, 128 on CUDA)")
    ap.add_argument("--batch", type=int, default=None, help="prompts per generate call (default 1; vllm 64)")
    ap.add_argument("--repeats", type=int, default=3, help="timed generate calls per variant (interleaved)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads and OMP_NUM_THREADS (default 1: the cores are shared)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    ap.add_argument("--vllm", action="store_true", help="also time vLLM on CUDA (untested here)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--memory-only", action="store_true", help="only the peak-memory subprocesses (no timing)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


ARGS = parse_args()
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)  # before torch starts its thread pool
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import qwen3_vl_shapes as shapes  # noqa: E402 - the benchmarks' shared stand-in model
import torch  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

torch.set_num_threads(ARGS.threads)


def meta_model(small: bool):
    """The shared stand-in model (:mod:`qwen3_vl_shapes`, tied embeddings) on the meta device, so
    it can be pruned before materialising."""
    return shapes.meta_model(small, tied=True)


def materialise(model, device: str, dtype: torch.dtype):
    """Random weights, rotary buffers recomputed (:func:`qwen3_vl_shapes.materialise`)."""
    return shapes.materialise(model, device, dtype)


def plan_for(model, fraction: float) -> list[int]:
    """Layers to remove: depthprune's `uniform` method (deepstack layers 0-2 protected)."""
    from depthprune import api
    from depthprune.models.architectures import architecture_protected, text_config
    scores = api.empty_scores(text_config(model).num_hidden_layers, "bench", architecture_protected(model))
    return api.plan(scores, "uniform", fraction).remove


def pruned_copy(model, remove: list[int]):
    """A pruned copy sharing every weight tensor with ``model`` (no extra weight memory)."""
    from depthprune.pruning import prune_layers
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    clone = copy.deepcopy(model, memo)
    return prune_layers(clone, remove) if remove else clone


class StepClock(LogitsProcessor):
    """Timestamps each generation step (called once per forward, after its logits)."""

    def __init__(self, cuda: bool):
        self.cuda, self.wall, self.cpu = cuda, [], []

    def start(self) -> None:
        self.wall, self.cpu = [time.perf_counter()], [time.process_time()]

    def __call__(self, input_ids, scores):
        if self.cuda:
            torch.cuda.synchronize()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return scores


@torch.inference_mode()
def run_generate(model, inputs: dict, new_tokens: int, clock: StepClock) -> dict:
    """One greedy generate of exactly ``new_tokens``; prefill and per-token decode times."""
    clock.start()
    out = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         eos_token_id=None, pad_token_id=0, logits_processor=LogitsProcessorList([clock]))
    assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    steps = len(clock.wall) - 2  # decode forwards between the first and the last timestamp
    return {"prefill_s": clock.wall[1] - clock.wall[0], "prefill_cpu": clock.cpu[1] - clock.cpu[0],
            "decode_tok_s": steps * inputs["input_ids"].shape[0] / (clock.wall[-1] - clock.wall[1]),
            "decode_cpu_per_tok": (clock.cpu[-1] - clock.cpu[1]) / steps}


def make_inputs(vocab: int, batch: int, tokens: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab, (batch, tokens), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def settings(args: argparse.Namespace) -> tuple[str, torch.dtype, int, int]:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    tokens = args.tokens or (1024 if cuda else 128)
    new_tokens = args.new_tokens or (128 if cuda else 16)
    if new_tokens < 2:
        raise SystemExit("--new-tokens must be >= 2 (decode is timed between the first and last token)")
    return device, dtype, tokens, new_tokens


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: build the model pruned by fraction index ``args.memory_child``
    (-1: unpruned) on meta, materialise, generate once; print peak memory as JSON."""
    device, dtype, tokens, new_tokens = settings(args)
    model = meta_model(args.small)
    if args.memory_child >= 0:
        from depthprune.pruning import prune_layers
        fraction = [float(f) for f in args.fractions.split(",")][args.memory_child]
        prune_layers(model, plan_for(model, fraction))
    model = materialise(model, device, dtype)
    inputs = make_inputs(model.config.text_config.vocab_size, args.batch, tokens, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    loaded = torch.cuda.memory_allocated(device) if cuda else rss_bytes()
    run_generate(model, inputs, new_tokens, StepClock(cuda))
    peak = torch.cuda.max_memory_allocated(device) if cuda else rss_high_water()
    print(json.dumps({"loaded": loaded, "peak": peak}))


def rss_high_water() -> int:
    """Peak RSS of this process image (VmHWM). Not ru_maxrss: Linux carries that over
    fork+exec from the parent, so a child of a process that once held the full model
    would report the parent's peak."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def peak_memory(args: argparse.Namespace, n_variants: int) -> list[dict]:
    """Peak memory of each variant, each in its own subprocess, one after another."""
    results = []
    for index in range(-1, n_variants - 1):
        cmd = [sys.executable, __file__, "--memory-child", str(index), "--fractions", args.fractions,
               "--batch", str(args.batch), "--threads", str(args.threads), "--device", args.device]
        for flag in ("tokens", "new_tokens", "dtype"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        cmd += ["--small"] if args.small else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def vllm_times(variants: list[tuple[str, object]], args: argparse.Namespace, tokens: int,
               new_tokens: int) -> dict[str, dict]:
    """UNTESTED (no GPU where this was written): save each variant as a checkpoint (bfloat16,
    with the toy's tokenizer/processor files so vLLM's Qwen3-VL processor can start; prompts
    are token ids, so the vocabulary is never used) and time prefill and decode in vLLM."""
    import gc

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from depthprune.pruning import copy_processor_files
    from depthprune.toy import MODEL_DIR
    g = torch.Generator().manual_seed(0)
    prompts = [TokensPrompt(prompt_token_ids=torch.randint(100, 150000, (tokens,), generator=g).tolist())
               for _ in range(args.batch)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in variants:
            path = os.path.join(tmp, name)
            model.to(torch.bfloat16).save_pretrained(path)
            from pathlib import Path
            copy_processor_files(MODEL_DIR, Path(path))
            llm = LLM(model=path, skip_tokenizer_init=True, dtype="bfloat16", max_model_len=tokens + new_tokens + 8,
                      gpu_memory_utilization=0.35, limit_mm_per_prompt={"image": 0, "video": 0}, seed=0)
            timings = {"prefill": [], "full": []}
            for _ in range(args.repeats + 1):  # the first is a warm-up
                for key, n in (("prefill", 1), ("full", new_tokens + 1)):
                    params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0, ignore_eos=True,
                                            detokenize=False)
                    t0 = time.perf_counter()
                    llm.generate(prompts, params, use_tqdm=False)
                    timings[key].append(time.perf_counter() - t0)
            prefill = statistics.median(timings["prefill"][1:])
            decode = statistics.median(timings["full"][1:]) - prefill
            results[name] = {"prefill_s": prefill, "decode_tok_s": new_tokens * args.batch / decode}
            del llm
            gc.collect()
            torch.cuda.empty_cache()
    return results


def memory_only(args: argparse.Namespace, fractions: list[float]) -> None:
    """Peak memory of every variant (fresh subprocesses), with ratios to the ideal."""
    meta = meta_model(args.small)
    n_layers = meta.config.text_config.num_hidden_layers
    ks = [0] + [len(plan_for(meta, f)) for f in fractions]
    mem = peak_memory(args, len(ks))
    print(f"peak memory ({'CUDA allocated' if settings(args)[0].startswith('cuda') else 'RSS high-water'}), "
          f"{n_layers} layers, each variant built pruned in its own process; threads {args.threads}")
    rows = []
    for k, m in zip(ks, mem):
        ideal = n_layers / (n_layers - k)
        ratio = mem[0]["peak"] / m["peak"]
        weights = mem[0]["loaded"] / m["loaded"]
        rows.append({"removed": k, "ideal": round(ideal, 4), "peak_gib": round(m["peak"] / 2**30, 3),
                     "loaded_gib": round(m["loaded"] / 2**30, 3), "peak_ratio": round(ratio, 4),
                     "loaded_ratio": round(weights, 4)})
        print(f"  k={k:>2}: loaded {m['loaded'] / 2**30:6.2f} GiB (ratio {weights:.3f} = {weights / ideal:.3f} x ideal)"
              f"  peak {m['peak'] / 2**30:6.2f} GiB (ratio {ratio:.3f} = {ratio / ideal:.3f} x ideal)")
    print(json.dumps({"memory": rows}))


def try_vllm(variants: list, args: argparse.Namespace, tokens: int, new_tokens: int) -> dict | None:
    """vLLM timings, or None (with the reason printed) when vLLM is not installed."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        print(f"vLLM: not installed ({exc})")
        return None
    return vllm_times([(name.split()[0].replace("%", "pct"), m) for name, _, m in variants], args, tokens,
                      new_tokens)


def _runtime_settings(args: argparse.Namespace) -> tuple[int, int, int, int]:
    """(batch, prompt tokens, new tokens, repeats) of the llamacpp / vllm runtimes."""
    if args.small:
        return args.batch or (4 if args.runtime == "vllm" else 1), args.tokens or 32, args.new_tokens or 16, 1
    return (args.batch or (64 if args.runtime == "vllm" else 1), args.tokens or 128, args.new_tokens or 128,
            args.repeats)


def _cut_plans(num_layers: int, cuts: str) -> list[list[int]]:
    """depthprune's ``uniform`` plan for each count in ``cuts``."""
    from depthprune import api
    scores = api.empty_scores(num_layers, "bench", [])
    return [api.plan(scores, "uniform", int(k)).remove for k in cuts.split(",")]


def _ratio_rows(base: dict, variants: list[dict], n_layers: int) -> list[dict]:
    """Per variant: speed-ups over the unpruned one and the two ceilings."""
    rows = []
    for v in variants:
        k = len(v["removed"])
        row = dict(v, layers=n_layers - k, ideal=round(n_layers / (n_layers - k), 4),
                   prefill_speedup=round(v["prefill_tok_s"] / base["prefill_tok_s"], 4),
                   decode_speedup=round(v["decode_tok_s"] / base["decode_tok_s"], 4))
        if "decode_cpu_tok_s" in v:  # llama.cpp: also from process CPU time
            row["prefill_cpu_speedup"] = round(v["prefill_cpu_tok_s"] / base["prefill_cpu_tok_s"], 4)
            row["decode_cpu_speedup"] = round(v["decode_cpu_tok_s"] / base["decode_cpu_tok_s"], 4)
        rows.append(row)
    return rows


def _print_runtime_table(title: str, rows: list[dict]) -> None:
    print(title)
    print(f"{'variant':<12}{'layers':>7}{'prefill tok/s':>14}{'speed-up':>9}{'decode tok/s':>13}{'speed-up':>9}"
          f"{'ideal L/(L-k)':>14}{'param ratio':>12}{'decode/ideal':>13}{'decode/params':>14}")
    for r in rows:
        print(f"{r['variant']:<12}{r['layers']:>7}{r['prefill_tok_s']:>14.1f}{r['prefill_speedup']:>9.3f}"
              f"{r['decode_tok_s']:>13.1f}{r['decode_speedup']:>9.3f}{r['ideal']:>14.3f}{r['param_ratio']:>12.3f}"
              f"{r['decode_speedup'] / r['ideal']:>13.3f}{r['decode_speedup'] / r['param_ratio']:>14.3f}")
    if "decode_cpu_speedup" in rows[0]:
        print("from process CPU time (robust to waiting for a core on a shared machine):")
        for r in rows:
            print(f"{r['variant']:<12}{r['layers']:>7}{r['prefill_cpu_tok_s']:>14.1f}{r['prefill_cpu_speedup']:>9.3f}"
                  f"{r['decode_cpu_tok_s']:>13.1f}{r['decode_cpu_speedup']:>9.3f}{r['ideal']:>14.3f}"
                  f"{r['param_ratio']:>12.3f}{r['decode_cpu_speedup'] / r['ideal']:>13.3f}"
                  f"{r['decode_cpu_speedup'] / r['param_ratio']:>14.3f}")
    print("speed-up = pruned / unpruned tokens/s (medians of interleaved repeats); ideal = decoder-only "
          "L/(L-k); param ratio = whole-model parameters unpruned / pruned (embedding and head stay)")


def llamacpp_main(args: argparse.Namespace) -> None:
    """``--runtime llamacpp``: the GGUF and its pruned copies in llama.cpp, side by side."""
    from depthprune.runtimes.llamacpp import LlamaCpp, unavailable
    reason = unavailable()
    src = None
    if reason is None:
        from depthprune.models.architectures import ModelError
        from depthprune.models.gguf import smollm2_path
        try:
            src = Path(args.gguf) if args.gguf else smollm2_path()
        except ModelError as err:
            reason = str(err)
    if reason:
        print(f"llama.cpp: skipped: {reason}")
        print(json.dumps({"runtime": "llamacpp", "skipped": reason}))
        return
    from depthprune import api
    from depthprune.models.gguf_out import open_gguf
    batch, tokens, new_tokens, repeats = _runtime_settings(args)
    if batch != 1:
        raise SystemExit("--runtime llamacpp times one prompt at a time (--batch 1)")
    n_layers = open_gguf(src).num_layers
    with tempfile.TemporaryDirectory() as tmp:
        variants = [{"variant": "unpruned", "removed": [], "path": src, "param_ratio": 1.0}]
        for remove in _cut_plans(n_layers, args.cuts):
            out, info = api.prune(src, remove, Path(tmp) / f"k{len(remove)}.gguf",
                                  return_info=True)
            variants.append({"variant": f"k={len(remove)}", "removed": remove, "path": out,
                             "param_ratio": info["expected_speedup"]["parameter_ratio"]})
        llms = {v["variant"]: LlamaCpp(v["path"], n_ctx=tokens + new_tokens + 8, threads=args.threads,
                                       prefill_chunk=args.prefill_chunk) for v in variants}
        import random
        rng = random.Random(0)
        prompt = [rng.randrange(100, llms["unpruned"].n_vocab) for _ in range(tokens)]
        runs: dict[str, list[dict]] = {name: [] for name in llms}
        for round_ in range(repeats + 1):  # round 0 warms up
            for name, llm in llms.items():
                r = llm.timed_greedy(prompt, new_tokens)
                if round_:
                    runs[name].append(r)
        layers = {name: llm.n_layer for name, llm in llms.items()}
        for llm in llms.values():
            llm.close()
    for v in variants:
        rs = runs[v["variant"]]
        v["prefill_tok_s"] = statistics.median(r["prompt_tokens"] / r["prefill_ms"] * 1000 for r in rs)
        v["decode_tok_s"] = statistics.median(r["decode_tokens"] / r["decode_ms"] * 1000 for r in rs)
        v["prefill_cpu_tok_s"] = statistics.median(r["prompt_tokens"] / r["prefill_cpu_s"] for r in rs)
        v["decode_cpu_tok_s"] = statistics.median(r["decode_tokens"] / r["decode_cpu_s"] for r in rs)
        v["llamacpp_layers"] = layers[v["variant"]]
        v["path"] = str(v["path"]) if v["variant"] == "unpruned" else v["path"].name
        assert v["llamacpp_layers"] == n_layers - len(v["removed"]), v
    rows = _ratio_rows(variants[0], variants, n_layers)
    _print_runtime_table(
        f"llama.cpp (ik-llama-cpp-python), {src.name}, {n_layers} layers; 1 prompt of {tokens} random tokens "
        f"(prefill in {args.prefill_chunk}-token chunks), {new_tokens} greedy tokens; threads {args.threads}; "
        f"repeats {repeats} (interleaved, after a warm-up); tokens/s from llama.cpp's timings", rows)
    print(json.dumps({"runtime": "llamacpp", "model": src.name, "threads": args.threads, "tokens": tokens,
                      "new_tokens": new_tokens, "repeats": repeats, "prefill_chunk": args.prefill_chunk,
                      "num_layers": n_layers, "rows": rows}))


def vllm_main(args: argparse.Namespace) -> None:
    """``--runtime vllm``: SmolLM2 and its pruned checkpoints in vLLM, side by side (worker:
    benchmarks/vllm_speed_worker.py, in vLLM's Python)."""
    import importlib.util
    python = args.vllm_python or os.environ.get("VLLM_PYTHON") or (
        sys.executable if importlib.util.find_spec("vllm") else None)
    reason = None
    if python is None:
        reason = ("vLLM is not installed here; pass --vllm-python (or set VLLM_PYTHON) to the Python of its "
                  "environment (bash scripts/vllm_check.sh builds one in .venv-vllm)")
    elif not Path(python).exists() and python != sys.executable:
        reason = f"--vllm-python {python}: no such file"
    if reason is None:
        from depthprune.models.architectures import ModelError
        from depthprune.models.gguf import converted_checkpoint, smollm2_path
        try:
            base = converted_checkpoint(smollm2_path())
        except ModelError as err:
            reason = str(err)
    if reason:
        print(f"vLLM: skipped: {reason}")
        print(json.dumps({"runtime": "vllm", "skipped": reason}))
        return
    from depthprune import api
    batch, tokens, new_tokens, repeats = _runtime_settings(args)
    config = json.loads((base / "config.json").read_text())
    n_layers = config["num_hidden_layers"]
    dtype = args.dtype or "bfloat16"
    with tempfile.TemporaryDirectory() as tmp:
        variants = [{"variant": "unpruned", "removed": [], "param_ratio": 1.0}]
        paths = {"unpruned": str(base)}
        for remove in _cut_plans(n_layers, args.cuts):
            out, info = api.prune("smollm2", remove, Path(tmp) / f"k{len(remove)}",
                                  return_info=True)
            name = f"k={len(remove)}"
            variants.append({"variant": name, "removed": remove,
                             "param_ratio": info["expected_speedup"]["parameter_ratio"]})
            paths[name] = str(out)
        result = Path(tmp) / "timings.json"
        spec = {"variants": paths, "dtype": dtype, "batch": batch, "tokens": tokens, "new_tokens": new_tokens,
                "repeats": repeats, "vocab": config["vocab_size"], "seed": 0, "out": str(result)}
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), VLLM_CPU_KVCACHE_SPACE=os.environ.get(
            "VLLM_CPU_KVCACHE_SPACE", "1"), TOKENIZERS_PARALLELISM="false")
        worker = Path(__file__).resolve().parent / "vllm_speed_worker.py"
        # vLLM's own log (stdout and stderr) goes to this run's stderr; the timings come in `result`
        done = subprocess.run([python, str(worker), json.dumps(spec)], stdout=sys.stderr, env=env)
        if done.returncode != 0 or not result.is_file():
            raise SystemExit(f"vLLM worker failed (exit {done.returncode}); its log is above")
        timings = json.loads(result.read_text())["variants"]
    for v in variants:
        v.update({k: timings[v["variant"]][k] for k in ("prefill_tok_s", "decode_tok_s")})
    rows = _ratio_rows(variants[0], variants, n_layers)
    _print_runtime_table(
        f"vLLM ({python}), SmolLM2-135M-Instruct (dequantised), {n_layers} layers, {dtype}; {batch} prompts x "
        f"{tokens} random tokens, {new_tokens} new tokens; OMP_NUM_THREADS={args.threads}; repeats {repeats} "
        "(interleaved, after a warm-up)", rows)
    print(json.dumps({"runtime": "vllm", "dtype": dtype, "threads": args.threads, "batch": batch, "tokens": tokens,
                      "new_tokens": new_tokens, "repeats": repeats, "num_layers": n_layers, "rows": rows,
                      "runs": {n: t["runs"] for n, t in timings.items()}}))


def main() -> None:
    args = ARGS
    if args.runtime == "llamacpp":
        return llamacpp_main(args)
    if args.runtime == "vllm":
        return vllm_main(args)
    args.batch = args.batch or 1
    if args.memory_child is not None:
        return memory_child(args)
    device, dtype, tokens, new_tokens = settings(args)
    cuda = device.startswith("cuda")
    fractions = [float(f) for f in args.fractions.split(",")]
    if args.memory_only:
        return memory_only(args, fractions)
    started = time.perf_counter()
    model = materialise(meta_model(args.small), device, dtype)
    n_layers = model.config.text_config.num_hidden_layers
    variants = [("unpruned", [], model)]
    for f in fractions:
        remove = plan_for(model, f)
        variants.append((f"{f:.0%} (k={len(remove)})", remove, pruned_copy(model, remove)))
    print(f"model: Qwen3-VL{' (small)' if args.small else '-2B text shapes'}, {n_layers} decoder layers, "
          f"hidden {model.config.text_config.hidden_size}, {dtype}, device {device}; batch {args.batch} x "
          f"{tokens} prompt tokens, {new_tokens} new tokens; repeats {args.repeats} (interleaved); "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} torch threads={torch.get_num_threads()}; "
          f"built in {time.perf_counter() - started:.0f} s; RSS {rss_bytes() / 2**30:.2f} GiB with all variants")
    for name, remove, _ in variants[1:]:
        print(f"  {name}: remove layers {remove} (0-based, depthprune 'uniform')")
    inputs = make_inputs(model.config.text_config.vocab_size, args.batch, tokens, device)
    clock = StepClock(cuda)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for _, _, m in variants:  # warm-up
        run_generate(m, inputs, new_tokens, clock)
    for _ in range(args.repeats):
        for name, _, m in variants:
            runs[name].append(run_generate(m, inputs, new_tokens, clock))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    params = {name: sum(p.numel() for p in m.parameters()) for name, _, m in variants}
    plans = [(name, remove) for name, remove, _ in variants]
    vllm_result = None
    if args.vllm and cuda:
        vllm_result = try_vllm(variants, args, tokens, new_tokens)
    del variants, model, m  # free the weights before the memory subprocesses build their own
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    memory = None
    if not args.no_memory:
        memory = dict(zip(runs, peak_memory(args, len(plans))))

    base = med["unpruned"]
    rows = []
    for name, remove in plans:
        k = len(remove)
        ideal = n_layers / (n_layers - k)
        m = med[name]
        row = {"variant": name, "removed": k, "layers": n_layers - k, "ideal": round(ideal, 4),
               "params": params[name], "param_ratio": round(params["unpruned"] / params[name], 4),
               "prefill_s": round(m["prefill_s"], 4),
               "prefill_speedup": round(base["prefill_s"] / m["prefill_s"], 4),
               "prefill_cpu_speedup": round(base["prefill_cpu"] / m["prefill_cpu"], 4),
               "decode_tok_s": round(m["decode_tok_s"], 3),
               "decode_speedup": round(m["decode_tok_s"] / base["decode_tok_s"], 4),
               "decode_cpu_speedup": round(base["decode_cpu_per_tok"] / m["decode_cpu_per_tok"], 4)}
        if memory:
            row["peak_gib"] = round(memory[name]["peak"] / 2**30, 3)
            row["memory_ratio"] = round(memory["unpruned"]["peak"] / memory[name]["peak"], 4)
        rows.append(row)
    clock_kind = "wall" if cuda else "CPU-time"
    print(f"\n{'variant':<14}{'layers':>7}{'ideal':>7}{'params M':>10}{'(x ideal)':>10}"
          f"{'prefill s':>11}{'speed-up':>9}{'x ideal':>8}{'CPU x id':>9}"
          f"{'decode tok/s':>13}{'speed-up':>9}{'x ideal':>8}{'CPU x id':>9}"
          + (f"{'peak GiB':>9}{'ratio':>7}{'x ideal':>8}" if memory else ""))
    for r in rows:
        i = r["ideal"]
        line = (f"{r['variant']:<14}{r['layers']:>7}{i:>7.3f}{r['params'] / 1e6:>10.1f}{r['param_ratio'] / i:>10.3f}"
                f"{r['prefill_s']:>11.3f}{r['prefill_speedup']:>9.3f}{r['prefill_speedup'] / i:>8.3f}"
                f"{r['prefill_cpu_speedup'] / i:>9.3f}{r['decode_tok_s']:>13.3f}{r['decode_speedup']:>9.3f}"
                f"{r['decode_speedup'] / i:>8.3f}{r['decode_cpu_speedup'] / i:>9.3f}")
        if memory:
            line += f"{r['peak_gib']:>9.2f}{r['memory_ratio']:>7.3f}{r['memory_ratio'] / i:>8.3f}"
        print(line)
    print("speed-up = unpruned / pruned (time) or pruned / unpruned (tokens/s); 'x ideal' divides by "
          "L/(L-k); 'CPU x id' uses process CPU time instead of wall time; params '(x ideal)' is the "
          "whole-model parameter ratio over the ideal, the bound for memory-bound decoding")
    verdicts = {}
    for r in rows[1:]:
        achieved = (r["decode_speedup"] if cuda else r["decode_cpu_speedup"]) / r["ideal"]
        verdicts[r["variant"]] = round(achieved, 4)
        status = "MET" if achieved >= TARGET else f"MISSED by {TARGET - achieved:.3f}"
        print(f"target decode speed-up >= {TARGET} x ideal ({clock_kind}): {r['variant']}: "
              f"{achieved:.3f} x ideal -> {status} (parameter-ratio bound {r['param_ratio'] / r['ideal']:.3f} x ideal)")
    result = {"device": device, "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
              "tokens": tokens, "new_tokens": new_tokens, "batch": args.batch, "repeats": args.repeats,
              "num_layers": n_layers, "rows": rows, "decode_x_ideal": verdicts, "target": TARGET}
    if args.vllm and not cuda:
        print("vLLM: skipped (needs CUDA)")
    elif vllm_result is not None:
        names = list(vllm_result)
        for (name, remove), key in zip(plans, names):
            ideal = n_layers / (n_layers - len(remove))
            speed = vllm_result[key]["decode_tok_s"] / vllm_result[names[0]]["decode_tok_s"]
            print(f"vLLM {name}: prefill {vllm_result[key]['prefill_s']:.4f} s, decode "
                  f"{vllm_result[key]['decode_tok_s']:.1f} tok/s, decode speed-up {speed:.3f} = "
                  f"{speed / ideal:.3f} x ideal")
        result["vllm"] = vllm_result
    print(json.dumps(result))


if __name__ == "__main__":
    main()
