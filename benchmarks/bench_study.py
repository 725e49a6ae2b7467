"""The study engine, serial and with worker processes, side by side on the quick demo's grid.

Both engines run the same study (`depthprune demo --quick`'s grid on the bundled toy: 11
rankings x 3 budgets, healing and refit at 25%, 64 calibration and 40 eval records per domain)
from scratch into fresh run directories, in this process: first ``run_study(jobs=1)``
with ``--threads`` torch threads (the serial engine as it ran before worker processes), then
``run_study(jobs=N)`` (workers with the cores shared out as threads). Wall clock covers the whole
sweep (model load, scoring, ablation, ranking, every plan); only the ratio means anything on
a busy machine, and the load average is printed beside it.

It then compares the two stores row by row: the same cells and removed layers, identical
per-sample correctness, and the largest difference of a per-sample answer NLL (0 when every
row is identical; across thread counts torch's CPU kernels may round a float32 NLL in its
last bit, see docs/study.md#worker-processes).

    python benchmarks/bench_study.py                 # the quick demo's grid (a few minutes)
    python benchmarks/bench_study.py --small         # a smaller grid, about a minute
    python benchmarks/bench_study.py --jobs 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from depthprune.study.config import parse_study
from depthprune.study.store import read_results, treatment
from depthprune.study.sweep import run_study
from depthprune.study.workers import usable_cores
from depthprune.toy import default_data
from depthprune.toy.demo import demo_study


def grid(data: dict[str, Path], small: bool) -> dict:
    """The quick demo's study, or with ``small`` a cut-down one (three rankings, two budgets,
    8 calibration and 12 eval records per domain, refit but no healing)."""
    study = demo_study(data, quick=True)
    if small:
        study["methods"] = [{"method": "domain", "domain": ["math", "general"]}, "last"]
        study["budgets"] = [0.25, 0.5]
        study["calibration"].update(max_samples=8, ablation=False)
        study["eval"][0]["max_samples"] = 12
        study.pop("heal", None)
        study["compensate"] = {"method": "refit", "budgets": [0.25], "methods": ["domain:math"]}
    return study


def timed(study: dict, out: Path, jobs: int) -> tuple[float, object]:
    started = time.perf_counter()
    result = run_study(parse_study(study, out, source="bench study"), out, quiet=True, jobs=jobs)
    return time.perf_counter() - started, result


def compare(a: Path, b: Path) -> dict:
    """How the two stores differ: cells, removed layers, per-sample correctness and NLL."""
    rows_a = {(r.cell, r.eval_set, r.domain): r for r in read_results(a / "results.sqlite")}
    rows_b = {(r.cell, r.eval_set, r.domain): r for r in read_results(b / "results.sqlite")}
    same_cells = rows_a.keys() == rows_b.keys()
    shared = rows_a.keys() & rows_b.keys()
    removed = sum(rows_a[k].removed != rows_b[k].removed for k in shared)
    correct = nll_max = 0.0
    samples = differing = 0
    where: set[str] = set()
    for k in shared:
        for (id_a, c_a, n_a), (id_b, c_b, n_b) in zip(rows_a[k].samples, rows_b[k].samples):
            samples += 1
            correct += c_a != c_b or id_a != id_b
            if n_a is not None and n_b is not None and n_a != n_b:
                differing += 1
                nll_max = max(nll_max, abs(n_a - n_b))
                where.add(f"{rows_a[k].label} k={rows_a[k].budget} {treatment(rows_a[k].heal)}")
    identical = same_cells and all(
        {f: v for f, v in vars(rows_a[k]).items() if f not in ("seconds", "created")}
        == {f: v for f, v in vars(rows_b[k]).items() if f not in ("seconds", "created")} for k in shared)
    return {"identical_rows": identical, "same_cells": same_cells, "rows": len(rows_a),
            "removed_differ": removed, "samples": samples, "correct_differ": int(correct),
            "nll_differ": differing, "max_nll_diff": nll_max, "nll_differ_in": sorted(where)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a cut-down grid, about a minute")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the serial engine (default: the usable cores)")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes of the fast engine (default: automatic)")
    args = ap.parse_args()
    cores = usable_cores()
    torch.set_num_threads(args.threads or cores)
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        root = Path(tmp)
        data = default_data(root / "data")
        study = grid(data, args.small)
        load = os.getloadavg()[0]
        serial_s, serial = timed(study, root / "serial", 1)
        fast_s, fast = timed(study, root / "fast", args.jobs)
        load = max(load, os.getloadavg()[0])
        diff = compare(root / "serial", root / "fast")
    ratio = fast_s / serial_s
    print(f"grid: {'small' if args.small else 'quick demo'}, {serial.cells_total} cells from "
          f"{serial.plans_evaluated} distinct plans; {cores} usable cores; load average up to {load:.1f}")
    print(f"serial engine (jobs=1, {args.threads or cores} threads)  {serial_s:7.1f} s")
    print(f"worker engine (jobs={args.jobs or 'auto'})            {fast_s:7.1f} s   ratio {ratio:.3f}x "
          f"(speed-up {1 / ratio:.2f}x)")
    print(f"stores: {'identical rows' if diff['identical_rows'] else 'rows differ'}; {diff['rows']} rows, "
          f"{diff['samples']} samples: {diff['removed_differ']} removed-layer and {diff['correct_differ']} "
          f"correctness differences, {diff['nll_differ']} NLLs differ (max {diff['max_nll_diff']:.2e})"
          + (f" in {', '.join(diff['nll_differ_in'])}" if diff["nll_differ_in"] else ""))
    print(json.dumps({"serial_s": round(serial_s, 2), "fast_s": round(fast_s, 2), "ratio": round(ratio, 4),
                      "cells": serial.cells_total, "plans": serial.plans_evaluated, "cores": cores,
                      "threads": args.threads or cores, "jobs": args.jobs, "load": round(load, 2), **diff}))


if __name__ == "__main__":
    main()
