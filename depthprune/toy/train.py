"""Train the bundled toy Qwen3-VL from scratch on the synthetic benchmark (CPU, one thread).

    python -m depthprune.toy.train [--out DIR] [--seed S] [--steps N]

Reads top to bottom: build tokenizer/processor/model, synthesize the data, train with
AdamW + warmup/cosine (loss on the answer tokens and the closing ``<|im_end|>`` only,
teacher forcing through the chat template), save in bfloat16, reload the saved directory
in float32 and measure greedy exact-match accuracy on the held-out eval split. The result
(model files, ``training.json``, ``loss_curve.png``) replaces ``--out`` atomically.

Step-paced and deterministic by seed (weights, data, data order, LR schedule): a busy
machine only makes the run take longer, never changes the result.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from depthprune.data import synth
from depthprune.data.records import Record, encode, load_records
from depthprune.evaluation.generation import generate_outputs
from depthprune.outputs import atomic_dir
from depthprune.settings import progress as progress_bar
from depthprune.toy import MODEL_DIR, N_CALIB, N_EVAL, TRAIN_SEED
from depthprune.toy.build import HIDDEN, NUM_LAYERS, build_model, build_processor

N_TRAIN = 4800
STEPS = 300
BATCH = 16
LR = 1e-3
# One thread: on a shared 2-core machine, two OpenMP threads wait on each other whenever one
# is descheduled, and a step took 10x longer than with one (measured 2026-11-24, load ~16).
THREADS = 1
WARMUP = 20
LOG_EVERY = 25
PROBE_EVERY = 150  # greedy accuracy on the first PROBE_N eval records, to see learning happen
PROBE_N = 100
MAX_NEW_TOKENS = 6  # the longest answer ("small purple triangle") is 4-5 tokens


def normalize(text: str) -> str:
    """Exact-match normalisation: strip and lowercase."""
    return text.strip().lower()


def answer_labels(input_ids: torch.Tensor, header: Sequence[int]) -> torch.Tensor:
    """Labels that score only the answer tokens and their ``<|im_end|>``: everything after the
    last assistant header, except the template's final newline. -100 elsewhere."""
    labels = torch.full_like(input_ids, -100)
    n = len(header)
    head = torch.tensor(header)
    for row, ids in enumerate(input_ids):
        starts = [i for i in range(len(ids) - n, -1, -1) if torch.equal(ids[i:i + n], head)]
        if not starts:
            raise ValueError("no assistant header in a training sequence; check the chat template")
        labels[row, starts[0] + n:len(ids) - 1] = ids[starts[0] + n:len(ids) - 1]
    return labels


@torch.no_grad()
def evaluate(model, processor, records: Sequence[Record], batch_size: int = 50,
             max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = True) -> dict:
    """Greedy exact-match accuracy (0-1) per domain and per template, plus ``overall``.

    Stricter than :func:`depthprune.evaluation.generation.evaluate` (no answer extraction): the toy
    must answer in exactly the trained format."""
    model.eval()
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for i in progress_bar(range(0, len(records), batch_size), desc="eval", disable=not progress, leave=False):
        batch = records[i:i + batch_size]
        texts = generate_outputs(model, processor, batch, max_new_tokens)
        for rec, text in zip(batch, texts):
            ok = int(normalize(text) == normalize(rec.answer or ""))
            for key in ("overall", rec.domain, f"{rec.domain}/{rec.extra.get('template', '?')}"):
                hits[key][0] += ok
                hits[key][1] += 1
    return {k: round(h / n, 4) for k, (h, n) in sorted(hits.items())}


def _lr_at(step: int, steps: int, lr: float, warmup: int = WARMUP) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` to 5% of it at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _plot(curve: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["step"] for c in curve], [c["loss"] for c in curve])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"train loss (mean over {LOG_EVERY} steps)")
    ax.set_title("toy Qwen3-VL training")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass(frozen=True)
class ToyRecipe:
    """One training run of the toy (each field is the ``--flag`` of the same name): seed, optimizer
    steps, batch size, peak learning rate and warm-up steps, synthetic record counts, steps between
    probe evaluations, the decoder's depth and width (from scratch only) and torch threads."""

    seed: int = TRAIN_SEED
    steps: int = STEPS
    batch_size: int = BATCH
    lr: float = LR
    n_train: int = N_TRAIN
    n_eval: int = N_EVAL
    warmup: int = WARMUP
    probe_every: int = PROBE_EVERY
    layers: int = NUM_LAYERS
    hidden: int = HIDDEN
    threads: int = THREADS


def train(out: Path, recipe: ToyRecipe = ToyRecipe(), init: Path | None = None) -> dict:
    """Train as ``recipe`` says (from random weights, or from the checkpoint ``init``), save into
    ``out`` (replaced atomically) and return the ``training.json`` dict."""
    seed, steps, batch_size, lr, warmup = recipe.seed, recipe.steps, recipe.batch_size, recipe.lr, recipe.warmup
    n_train, n_eval, probe_every, threads = recipe.n_train, recipe.n_eval, recipe.probe_every, recipe.threads
    start = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if init is None:
        processor = build_processor()
        model = build_model(processor.tokenizer, layers=recipe.layers, hidden=recipe.hidden)
    else:  # continue from a trained checkpoint (weights upcast to float32, its own tokenizer)
        from transformers import AutoModelForImageTextToText, AutoProcessor
        processor = AutoProcessor.from_pretrained(init)
        model = AutoModelForImageTextToText.from_pretrained(init, dtype=torch.float32)
    header = processor.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.data-", dir=out.parent))
    try:
        paths = synth.synthesize(work / "data", seed=seed, n_train=n_train,
                                 n_calib=N_CALIB, n_eval=n_eval)
        train_recs = load_records(paths["train"], require_answer=True)
        eval_recs = load_records(paths["eval"], require_answer=True)

        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
        order_rng = random.Random(seed)
        order: list[int] = []
        curve, window, probes, done = [], [], [], 0
        model.train()
        bar = progress_bar(range(steps), desc="train")
        for step in bar:
            if len(order) < batch_size:  # a fresh shuffled epoch
                epoch = list(range(len(train_recs)))
                order_rng.shuffle(epoch)
                order += epoch
            batch = [train_recs[i] for i in order[:batch_size]]
            del order[:batch_size]
            inputs = encode(processor, batch, with_answer=True)
            labels = answer_labels(inputs["input_ids"], header)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, steps, lr, warmup)
            loss = model(**inputs, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done = step + 1
            window.append(loss.item())
            if len(window) == LOG_EVERY:
                curve.append({"step": done, "loss": round(sum(window) / len(window), 5),
                              "lr": round(group["lr"], 7), "elapsed_s": round(time.time() - start, 1)})
                bar.set_postfix(loss=curve[-1]["loss"])
                window = []
            if done % probe_every == 0:
                acc = evaluate(model, processor, eval_recs[:PROBE_N], progress=False)
                probes.append({"step": done, **acc})
                tqdm.write(json.dumps(probes[-1]))
                model.train()
        if window:
            curve.append({"step": done, "loss": round(sum(window) / len(window), 5),
                          "lr": round(group["lr"], 7), "elapsed_s": round(time.time() - start, 1)})
        train_s = time.time() - start

        with atomic_dir(out) as model_dir:  # `out` is replaced only once all of it is written
            model.to(torch.bfloat16).save_pretrained(model_dir)
            processor.save_pretrained(model_dir)

            # measure what was saved, as users load it: the bf16 weights upcast to float32
            from transformers import AutoModelForImageTextToText, AutoProcessor
            saved = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
            accuracy = evaluate(saved, AutoProcessor.from_pretrained(model_dir), eval_recs)
            info = {
                "command": " ".join([Path(sys.executable).name, "-m", "depthprune.toy.train", *sys.argv[1:]]),
                "seed": seed, "layers": model.config.text_config.num_hidden_layers,
                "hidden": model.config.text_config.hidden_size, "steps_planned": steps, "steps_done": done,
                "batch_size": batch_size, "lr": lr, "warmup": warmup, "init": str(init) if init else None,
                "n_train": n_train, "n_calib": N_CALIB, "n_eval": n_eval, "threads": torch.get_num_threads(),
                "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - start, 1),
                "torch": torch.__version__, "eval_accuracy_float32": accuracy,
                "probe_accuracy": probes, "loss_curve": curve,
            }
            (model_dir / "training.json").write_text(json.dumps(info, indent=1) + "\n")
            _plot(curve, model_dir / "loss_curve.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=MODEL_DIR, help="model directory to (re)write")
    ap.add_argument("--seed", type=int, default=TRAIN_SEED, help="seed of weights, data and order")
    ap.add_argument("--steps", type=int, default=STEPS, help="optimizer steps (sets the LR schedule)")
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--lr", type=float, default=LR, help="peak learning rate")
    ap.add_argument("--n-train", type=int, default=N_TRAIN, help="synthetic training records")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this trained checkpoint instead of random weights")
    ap.add_argument("--n-eval", type=int, default=N_EVAL, help="held-out eval records measured at the end")
    ap.add_argument("--warmup", type=int, default=WARMUP, help="linear warmup steps")
    ap.add_argument("--probe-every", type=int, default=PROBE_EVERY, help="steps between probe evaluations")
    ap.add_argument("--layers", type=int, default=NUM_LAYERS, help="decoder layers (from scratch only)")
    ap.add_argument("--hidden", type=int, default=HIDDEN, help="decoder width, a multiple of 32 (from scratch only)")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="torch threads; 2 only on otherwise idle cores (see THREADS)")
    args = ap.parse_args(argv)
    recipe = ToyRecipe(**{f.name: getattr(args, f.name) for f in fields(ToyRecipe)})
    info = train(args.out, recipe, init=args.init)
    print(json.dumps({k: info[k] for k in ("train_seconds", "steps_done", "eval_accuracy_float32")},
                     indent=1))
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
