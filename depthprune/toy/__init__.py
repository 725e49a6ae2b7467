"""The bundled toy model: a small trained Qwen3-VL and the synthetic data it was trained on.

* :data:`MODEL_DIR` — a stock Hugging Face checkpoint directory
  (``AutoModelForImageTextToText`` / ``AutoProcessor``), weights in bfloat16, with the
  ``training.json`` and ``loss_curve.png`` of the run that made it.
* :func:`default_data` — regenerates the calib and eval splits the model was evaluated
  on (same seed and sizes as its training run, :mod:`depthprune.data.synth`; they never overlap
  its training data).

Rebuild the model with ``python -m depthprune.toy.train`` (see README.md next to this file).
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"
TRAIN_SEED = 0
N_CALIB = 256  # 128 per domain; the sizes of the training run (depthprune.toy.train)
N_EVAL = 1200  # 600 per domain


def default_data(out_dir: str | Path) -> dict[str, Path]:
    """Write the toy's calib and eval splits into the new directory ``out_dir``.

    Returns ``{"calib": path, "eval": path}`` (JSONL files, images beside them). The splits
    are byte-identical to the ones of the training run (eval and calib are drawn before,
    and independently of, the training split).
    """
    from depthprune.data.synth import synthesize

    return synthesize(out_dir, seed=TRAIN_SEED, n_train=0, n_calib=N_CALIB, n_eval=N_EVAL)
