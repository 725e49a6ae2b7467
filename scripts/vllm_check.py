"""Pruned checkpoints in vLLM (CPU) next to transformers: scripts/vllm_check.sh runs the three steps.

    python scripts/vllm_check.py prepare DIR   # depthprune's environment: prune, transformers fp32 greedy outputs
    python scripts/vllm_check.py vllm DIR      # vLLM's environment: load each checkpoint, count its layers, greedy
    python scripts/vllm_check.py compare DIR   # either: DIR/report.md, exit 1 unless every check holds

Models (``prepare``): SmolLM2-135M-Instruct (the ``smollm2`` GGUF, dequantised) pruned at 3 and 7
layers (``--layers`` spread over the depth) and the bundled toy Qwen3-VL pruned at 25%
(``--method uniform``), each a stock checkpoint written by ``depthprune prune``; the unpruned
SmolLM2 conversion as the baseline. Prompts: chat-templated questions (token ids, so both
runtimes see the same input), and for the toy also questions about images of its synthetic
benchmark. ``vllm`` imports nothing from depthprune (vLLM pins its own torch): it reads
``DIR/plan.json`` and writes ``DIR/vllm.json`` with the layer count of the model vLLM built
(counted inside its worker through ``collective_rpc``), the greedy tokens, or the error lines.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

SMOLLM2_CUTS = {"smollm2-k3": [5, 12, 20], "smollm2-k7": [3, 7, 11, 15, 19, 23, 26]}
QUESTIONS = ["What is 2 + 3?", "Name a colour of the sky.", "What is the capital of France?",
             "What is 7 times 8?", "What do bees make?", "What is the opposite of hot?",
             "How many legs does a spider have?", "What is the plural of mouse?",
             "Tom has 3 apples and buys 4 more. How many apples does he have?",
             "What animal says moo?", "What is frozen water called?", "What is 15 minus 6?",
             "Which planet is the largest in our solar system?", "What is a young cat called?",
             "Write one word that rhymes with cat.", "What do you use to cut paper?",
             "What is 9 plus 10?", "What colour is grass?", "What is the capital of Japan?",
             "Name a fruit that is yellow."]
NEW_TOKENS = 24
TOY_PROMPTS = 8  # text-only and image prompts each


# --- prepare: depthprune's environment ------------------------------------------------------

def prepare(out: Path) -> None:
    import torch

    from depthprune import api
    from depthprune.options import RankRequest
    from depthprune.models.gguf import converted_checkpoint, smollm2_path
    from depthprune.models.loading import load_model
    from depthprune.toy import MODEL_DIR, default_data
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out.mkdir(parents=True, exist_ok=True)
    models = {"smollm2": str(converted_checkpoint(smollm2_path()))}
    for name, layers in SMOLLM2_CUTS.items():
        if not (out / name / "config.json").is_file():
            api.prune("smollm2", layers, out / name)
        models[name] = str(out / name)
    if not (out / "toy-25pct" / "config.json").is_file():
        api.prune("toy", None, out / "toy-25pct", request=RankRequest("uniform", 0.25))
    models["toy-25pct"] = str(out / "toy-25pct")

    plan: dict = {"new_tokens": NEW_TOKENS, "models": {}}
    _, tok = load_model(models["smollm2"])
    text_prompts = [{"id": f"q{i}", "token_ids": tok.apply_chat_template(
        [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=False)}
        for i, q in enumerate(QUESTIONS)]
    for name in ("smollm2", *SMOLLM2_CUTS):
        plan["models"][name] = {"path": models[name], "prompts": text_prompts,
                                "layers": json.loads((Path(models[name]) / "config.json").read_text())["num_hidden_layers"]}
    toy_prompts = _toy_prompts(out, default_data)
    toy_config = json.loads((out / "toy-25pct" / "config.json").read_text())
    plan["models"]["toy-25pct"] = {"path": models["toy-25pct"], "prompts": toy_prompts,
                                   "layers": toy_config["text_config"]["num_hidden_layers"], "vision": True}
    for name, entry in plan["models"].items():
        entry["transformers"] = _transformers_greedy(entry)
        print(f"prepare: {name} ({entry['layers']} layers): transformers fp32 greedy on {len(entry['prompts'])} prompts")
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    _ = MODEL_DIR


def _toy_prompts(out: Path, default_data) -> list[dict]:
    """Toy prompts: the first eval questions of each kind, once with their image and once as text only."""
    data = out / "toy-data"
    if not (data / "eval.jsonl").is_file():
        default_data(data)
    rows = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines()]
    with_image = [r for r in rows if r.get("image")][:TOY_PROMPTS]
    prompts = []
    for r in with_image:
        prompts.append({"id": f"{r['id']}-image", "question": r["question"], "image": str(data / r["image"])})
        prompts.append({"id": f"{r['id']}-text", "question": r["question"], "image": None})
    return prompts


def _messages(prompt: dict) -> list[dict]:
    content = ([{"type": "image"}] if prompt.get("image") else []) + [{"type": "text", "text": prompt["question"]}]
    return [{"role": "user", "content": content}]


def _transformers_greedy(entry: dict) -> list[list[int]]:
    """transformers' float32 greedy tokens for every prompt of ``entry`` (without the prompt)."""
    import torch
    from PIL import Image

    from depthprune.models.loading import load_model
    model, proc = load_model(entry["path"], dtype="float32")
    outputs = []
    for p in entry["prompts"]:
        if entry.get("vision"):
            text = proc.apply_chat_template(_messages(p), add_generation_prompt=True, tokenize=False)
            images = [Image.open(p["image"]).convert("RGB")] if p.get("image") else None
            inputs = proc(text=[text], images=images, return_tensors="pt")
            p["prompt_text"] = text
        else:
            inputs = {"input_ids": torch.tensor([p["token_ids"]])}
        with torch.no_grad():
            ids = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
        outputs.append(ids[0, inputs["input_ids"].shape[1]:].tolist())
    return outputs


# --- vllm: vLLM's environment ----------------------------------------------------------------

def _count_layers(worker) -> int:
    """Inside vLLM's worker: the decoder layers of the model it built (the largest ModuleList
    named ``...layers`` outside the vision tower, pipeline placeholders not counted)."""
    import torch
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    best = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layers") and "visual" not in name:
            best = max(best, sum(type(m).__name__ != "PPMissingLayer" for m in module))
    return best


def run_vllm(out: Path) -> None:
    """Each model in its own process (``vllm-one``), so a failing engine takes nothing else down."""
    import subprocess
    plan = json.loads((out / "plan.json").read_text())
    only = os.environ.get("VLLM_CHECK_ONLY")
    results = {}
    for name in plan["models"]:
        if only and name not in only.split(","):
            continue
        one = out / f"vllm-{name}.json"
        one.unlink(missing_ok=True)
        started = time.time()
        done = subprocess.run([sys.executable, __file__, "vllm-one", str(out), name], capture_output=True, text=True)
        (out / f"vllm-{name}.log").write_text(done.stdout + done.stderr)
        if one.is_file():
            results[name] = json.loads(one.read_text())
            if "error" in results[name]:  # vLLM logs the root cause (often in a subprocess) before it raises
                results[name]["error_lines"] = _error_lines(done.stdout + done.stderr)
        else:  # the process died before it could record anything
            results[name] = {"error": f"vLLM process exited {done.returncode}", "seconds": round(time.time() - started, 1),
                             "traceback_tail": (done.stdout + done.stderr)[-3000:]}
        r = results[name]
        print(f"vllm: {name}: " + (f"built {r['layers']} layers, {r['seconds']} s" if "layers" in r
                                   else r["error"].splitlines()[0]), flush=True)
    import vllm  # (only for its version)
    results["vllm_version"] = vllm.__version__
    (out / "vllm.json").write_text(json.dumps(results, indent=1))


def _error_lines(log: str, limit: int = 6) -> list[str]:
    """The distinct ``SomethingError: ...`` lines of a log, last ones first-to-last, without vLLM's prefix."""
    import re
    found: list[str] = []
    for line in log.splitlines():
        m = re.search(r"\b(\w*(Error|Exception)): .*", line)
        if m and m.group(0) not in found:
            found.append(m.group(0)[:300])
    return found[-limit:]


def run_vllm_one(out: Path, name: str) -> None:
    # collective_rpc sends _count_layers (a function of this file) to vLLM's worker process, which
    # vLLM only does by pickle when allowed: our own function, to our own local worker
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    plan = json.loads((out / "plan.json").read_text())
    entry = plan["models"][name]
    params = SamplingParams(temperature=0.0, max_tokens=plan["new_tokens"])
    started = time.time()
    try:
        kwargs = dict(model=entry["path"], dtype="float32", max_model_len=1024, seed=0)
        if entry.get("vision"):
            kwargs["limit_mm_per_prompt"] = {"image": 1, "video": 0}
        llm = LLM(**kwargs)
        layers = llm.collective_rpc(_count_layers)
        if entry.get("vision"):
            from PIL import Image
            prompts = [{"prompt": p["prompt_text"],
                        **({"multi_modal_data": {"image": Image.open(p["image"]).convert("RGB")}}
                           if p.get("image") else {})} for p in entry["prompts"]]
        else:
            prompts = [TokensPrompt(prompt_token_ids=p["token_ids"]) for p in entry["prompts"]]
        outs = llm.generate(prompts, params, use_tqdm=False)
        result = {"layers": layers, "outputs": [list(o.outputs[0].token_ids) for o in outs],
                  "seconds": round(time.time() - started, 1)}
    except Exception as err:  # noqa: BLE001 - recorded: the report says exactly why
        result = {"error": f"{type(err).__name__}: {err}".strip(),
                  "traceback_tail": "".join(traceback.format_exception(err))[-3000:],
                  "seconds": round(time.time() - started, 1)}
    (out / f"vllm-{name}.json").write_text(json.dumps(result, indent=1))


# --- compare ---------------------------------------------------------------------------------

def _strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos else ids


def compare(out: Path) -> int:
    plan = json.loads((out / "plan.json").read_text())
    got = json.loads((out / "vllm.json").read_text())
    lines = [f"vLLM {got.get('vllm_version')} (CPU, float32) vs transformers float32 greedy, "
             f"{plan['new_tokens']} new tokens", "",
             "| model | layers (config) | layers vLLM built | prompts | greedy outputs equal | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    ok = True
    for name, entry in plan["models"].items():
        r = got.get(name)
        if r is None or "error" in r:
            ok = False
            why = "not run" if r is None else r["error"].splitlines()[0][:200]
            lines.append(f"| {name} | {entry['layers']} | failed: {why} | {len(entry['prompts'])} | - | "
                         f"{r.get('seconds', '-') if r else '-'} |")
            continue
        eos = {2, 0}
        equal = [_strip_eos(a, eos) == _strip_eos(b, eos) for a, b in zip(r["outputs"], entry["transformers"])]
        kinds = ""
        if entry.get("vision"):
            img = [e for e, p in zip(equal, entry["prompts"]) if p.get("image")]
            txt = [e for e, p in zip(equal, entry["prompts"]) if not p.get("image")]
            kinds = f" (image {sum(img)}/{len(img)}, text {sum(txt)}/{len(txt)})"
        layers_ok = all(n == entry["layers"] for n in r["layers"])
        ok &= layers_ok and all(equal)
        lines.append(f"| {name} | {entry['layers']} | {r['layers'][0]}{'' if layers_ok else ' (MISMATCH)'} | "
                     f"{len(equal)} | {sum(equal)}/{len(equal)}{kinds} | {r['seconds']} |")
    failures = {n: r for n, r in got.items() if isinstance(r, dict) and "error" in r}
    for name, r in failures.items():
        lines += ["", f"{name} failed in vLLM. Error lines of its log:", "", "```", *r.get("error_lines", []), "```",
                  "", "The end of the traceback:", "", "```", r["traceback_tail"].strip()[-1200:], "```"]
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    print(report)
    print("vllm_check: " + ("every model loaded with its layer count and matched transformers" if ok else
                            "FAILED (see above)"))
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["vllm-one"] and len(argv) == 3:
        run_vllm_one(Path(argv[1]), argv[2])
        return 0
    if len(argv) != 2 or argv[0] not in ("prepare", "vllm", "compare"):
        print("usage: python scripts/vllm_check.py prepare|vllm|compare DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    if argv[0] == "prepare":
        prepare(out)
    elif argv[0] == "vllm":
        run_vllm(out)
    else:
        return compare(out)
    return 0


if __name__ == "__main__":  # vLLM's engine processes re-import this file (spawn): keep work here
    sys.exit(main(sys.argv[1:]))
