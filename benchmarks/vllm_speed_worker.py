"""vLLM's side of ``bench_speed.py --runtime vllm``, run with the Python of vLLM's environment
(vLLM pins its own torch, so it lives apart from depthprune's). Imports nothing from
depthprune. Reads a JSON spec from argv[1] and writes the timings as JSON to the spec's
``out`` file after every timed round (vLLM logs to stdout, so stdout is not used for results).

Spec: {"variants": {name: checkpoint dir}, "dtype", "batch", "tokens", "new_tokens", "repeats",
"vocab", "seed"}. Every variant is loaded once (one engine each), then the variants are timed
in turn, ``repeats`` rounds after a warm-up round: a prefill-only generate (1 new token) and a
full one (``new_tokens + 1``), both on the same ``batch`` prompts of ``tokens`` random token ids,
with prefix caching off. Prefill = the first; decode = full - prefill, for ``new_tokens`` steps.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time


def main() -> None:
    spec = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    rng = random.Random(spec["seed"])
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(100, spec["vocab"]) for _ in range(spec["tokens"])])
               for _ in range(spec["batch"])]
    engines = {}
    for name, path in spec["variants"].items():
        t0 = time.perf_counter()
        engines[name] = LLM(model=path, dtype=spec["dtype"], max_model_len=spec["tokens"] + spec["new_tokens"] + 8,
                            enable_prefix_caching=False, skip_tokenizer_init=True, seed=0)
        print(f"vllm worker: loaded {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    times: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "full": []} for n in engines}
    for round_ in range(spec["repeats"] + 1):  # round 0 is the warm-up
        for name, llm in engines.items():
            for key, n in (("prefill", 1), ("full", spec["new_tokens"] + 1)):
                params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0, ignore_eos=True, detokenize=False)
                t0 = time.perf_counter()
                llm.generate(prompts, params, use_tqdm=False)
                if round_:
                    times[name][key].append(time.perf_counter() - t0)
        if round_:
            write(spec, times, round_)
        print(f"vllm worker: round {round_} done", file=sys.stderr, flush=True)


def write(spec: dict, times: dict, rounds: int) -> None:
    out = {"rounds": rounds, "variants": {}}
    for name, t in times.items():
        prefill = statistics.median(t["prefill"])
        decode = statistics.median(t["full"]) - prefill
        out["variants"][name] = {"prefill_s": prefill, "prefill_tok_s": spec["batch"] * spec["tokens"] / prefill,
                                 "decode_s": decode, "decode_tok_s": spec["batch"] * spec["new_tokens"] / decode,
                                 "runs": t}
    with open(spec["out"], "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":  # vLLM's engine processes re-import the main module (spawn)
    main()
