"""What removing decoder layers should buy: parameter counts and the expected speed-up.

Two bounds, both recorded in ``pruning.json`` and printed by ``depthprune prune``:

* ``decoder_ideal`` = L / (L - k): the speed-up if all time were spent in decoder layers
  (what the depth-pruning literature quotes). It overstates the whole model's speed-up,
  because embeddings, the LM head and the vision tower are not pruned.
* ``parameter_ratio`` = parameters before / after, over the whole model: the speed-up of a
  memory-bound decode step, which reads every weight once per token (the LM head included,
  the vision tower only counted, not run, for text tokens).

``benchmarks/bench_speed.py`` measures the real speed-up next to both.
"""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def expected_speedup(num_layers: int, removed: int, params_before: int, params_after: int) -> dict:
    """The ``expected_speedup`` record: ideal decoder speed-up L/(L-k) and the whole-model
    parameter ratio, with the counts they come from."""
    if not 0 <= removed < num_layers:
        raise ValueError(f"cannot remove {removed} of {num_layers} decoder layers")
    return {"decoder_ideal": round(num_layers / (num_layers - removed), 4),
            "parameter_ratio": round(params_before / params_after, 4) if params_after else None,
            "parameters_before": int(params_before), "parameters_after": int(params_after),
            "note": "decoder_ideal = L/(L-k) counts decoder layers only; parameter_ratio is the "
                    "whole model's, the bound for memory-bound decoding. Measured: "
                    "benchmarks/bench_speed.py"}


def format_speedup(info: dict) -> str:
    """One line for the CLI: parameters before/after and both expected speed-ups."""
    return (f"parameters {info['parameters_before'] / 1e6:,.1f} M -> {info['parameters_after'] / 1e6:,.1f} M; "
            f"expected speed-up: {info['decoder_ideal']:.3f}x ideal on the decoder (L/(L-k)), "
            f"{info['parameter_ratio']:.3f}x whole-model parameter ratio")
