"""Every benchmark's --small mode runs to its summary (benchmarks rot when nothing runs them:
bench_speed.py crashed after an API change). Slow: each builds models in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), "--small", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_bench_ablation_small():
    out = run("bench_ablation.py", "--skip", "smollm2")
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures[0]["max_nll_diff"] <= 1e-5 and figures[0]["speedup"] > 0 and figures[0]["sleb_k"] == 2
    assert "speed-up" in out and "sleb at 25%" in out


@pytest.mark.slow
def test_bench_scoring_small():
    figures = json.loads(run("bench_scoring.py", "--repeats", "2").strip().splitlines()[-1])
    assert figures["time_ratio"] > 0 and figures["peak_memory_ratio"] > 0


@pytest.mark.slow
def test_bench_speed_small():
    figures = json.loads(run("bench_speed.py", "--no-memory", "--repeats", "1").strip().splitlines()[-1])
    assert [r["layers"] for r in figures["rows"]] == [8, 7, 6, 4]


@pytest.mark.slow
def test_bench_speed_llamacpp_small():
    """--runtime llamacpp on the SmolLM2 GGUF: the pruned copies run with their layer counts (or
    the run says why llama.cpp or SmolLM2 is missing)."""
    figures = json.loads(run("bench_speed.py", "--runtime", "llamacpp").strip().splitlines()[-1])
    if "skipped" in figures:
        pytest.skip(figures["skipped"])
    assert [r["llamacpp_layers"] for r in figures["rows"]] == [30, 27, 23]
    assert all(r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 for r in figures["rows"])


@pytest.mark.slow
def test_bench_speed_vllm_without_vllm_says_why():
    out = run("bench_speed.py", "--runtime", "vllm", "--vllm-python", "/nonexistent/python")
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["runtime"] == "vllm" and "no such file" in figures["skipped"]


@pytest.mark.slow
def test_bench_study_small():
    """Serial and worker engines side by side; at one thread per process (--threads 1) the
    two stores are identical row by row."""
    figures = json.loads(run("bench_study.py").strip().splitlines()[-1])
    assert figures["serial_s"] > 0 and figures["fast_s"] > 0 and figures["cells"] == 8
    assert figures["identical_rows"] and figures["max_nll_diff"] == 0 and figures["correct_differ"] == 0


@pytest.mark.slow
def test_bench_pipelines_small(tmp_path):
    """Every pipeline runs on the toy at 25% and depthprune's pipeline is compared per domain."""
    out = run("bench_pipelines.py", "--out", str(tmp_path / "runs"), "--jobs", "2")
    figures = json.loads(out.strip().splitlines()[-1])
    assert sorted(v["domain"] for v in figures["versus"]) == ["general", "math"]
    assert all(0 <= v["p"] <= 1 and v["best_published"] for v in figures["versus"])
    table = (tmp_path / "runs" / "table.md").read_text()
    for name in ("ShortGPT", "SLEB", "PruneMe + heal", "ReplaceMe", "INTERLACE-style", "last-n", "random",
                 "depthprune (math)", "depthprune (general)"):
        assert f"| {name} |" in table


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_bench_help_prints_usage(script):
    """--help prints and exits 0 (a bare '%' in a help string made bench_pipelines --help crash)."""
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout and "--small" in done.stdout
