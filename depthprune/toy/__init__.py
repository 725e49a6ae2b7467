"""The bundled toy model: a small trained Qwen3-VL and the synthetic data it was trained on.

* :data:`MODEL_DIR` — a stock Hugging Face checkpoint directory
  (``AutoModelForImageTextToText`` / ``AutoProcessor``), weights in bfloat16, with the
  ``training.json`` and ``loss_curve.png`` of the run that made it.
* :func:`default_data` — regenerates the calib and eval splits the model was evaluated
  on (same seed and sizes as its training run; they never overlap its training data), from
  :mod:`depthprune.toy.legacy_synth`, the benchmark design the shipped weights know.

Rebuild the model with ``python -m depthprune.toy.train`` (see README.md next to this file).
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"
TRAIN_SEED = 0
N_CALIB = 128  # 64 per domain
N_EVAL = 400  # 200 per domain


def default_data(out_dir: str | Path) -> dict[str, Path]:
    """Write the toy's calib and eval splits into the new directory ``out_dir``.

    Returns ``{"calib": path, "eval": path}`` (JSONL files, images beside them). The splits
    are byte-identical to the ones of the training run (eval and calib are drawn before,
    and independently of, the training split).
    """
    from depthprune.toy.legacy_synth import synthesize

    return synthesize(out_dir, seed=TRAIN_SEED, n_train=0, n_calib=N_CALIB, n_eval=N_EVAL)
