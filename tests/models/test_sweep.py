"""Sweeps on tiny random-init models of real transformers classes: in-memory pruning is exact,
every cell is stored once, identical plans are evaluated once, a SIGKILLed sweep resumes to the
same store, and two gloo processes give the single-process scores and store."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from depthprune.data.records import EncodingCache, kept_encodings, load_records
from depthprune.evaluation.generation import answer_nll, evaluate, generate_outputs
from depthprune.models.loading import load_model
from depthprune.pruning import prune_layers
from depthprune.scoring.scores import Scores
from depthprune.study.cell import pruned_in_memory
from depthprune.study.store import get_meta, open_store, read_results
from depthprune.study.sweep import run_study
from tests.helpers.tiny_models import save_tiny

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return save_tiny("qwen3", tmp_path_factory.mktemp("llm") / "m")


@pytest.fixture(scope="module")
def eval_file(calib_dir, tmp_path_factory):
    """The text records five times over (distinct ids): enough work per cell to kill mid-run."""
    rows = [json.loads(line) for line in (calib_dir / "text.jsonl").read_text().splitlines()]
    out = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    out.write_text("".join(json.dumps(dict(r, id=f"{r['id']}-{i}")) + "\n" for i in range(5) for r in rows))
    return out


def study_file(tmp_path, model, calib_dir, eval_file, **over) -> Path:
    study = {"model": str(model), "dtype": "float32", "batch_size": 4,
             "calibration": {"data": str(calib_dir / "text.jsonl")},
             "eval": [{"data": str(eval_file), "name": "tiny"}],
             "methods": [{"method": "domain", "domain": ["math", "general"]},
                         {"method": "mixed", "weights": [{"math": 0.5, "general": 0.5}, {"math": 0.9, "general": 0.1}]},
                         "block-influence", "angular-block", "last", "uniform", {"method": "random", "seed": [0, 1, 2]},
                         "spaced", "iterative"],
             "budgets": [1, 2, 3, 4], "metrics": {"max_new_tokens": 4}}
    study.update(over)
    path = tmp_path / "study" / "study.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(study))
    return path


def comparable(run_dir: Path) -> list[tuple]:
    """Every stored row without its timing fields."""
    return [tuple(json.dumps(v, sort_keys=True) for k, v in vars(r).items() if k not in ("seconds", "created"))
            for r in read_results(run_dir / "results.sqlite")]


def test_pruned_in_memory_equals_a_pruned_copy(tmp_path, calib_dir):
    src = save_tiny("qwen3_vl", tmp_path / "vl")
    net, proc = load_model(src, dtype="float32")
    records = load_records([calib_dir / "calib.jsonl"])
    before = generate_outputs(net, proc, records, 6), answer_nll(net, proc, records)
    config_before = net.config.to_dict()
    pruned = prune_layers(copy.deepcopy(net), [3, 5])
    want = generate_outputs(pruned, proc, records, 6), answer_nll(pruned, proc, records)
    with pruned_in_memory(net, [3, 5]):
        got = generate_outputs(net, proc, records, 6), answer_nll(net, proc, records)
    assert got == want  # cached generation and NLL of a truly pruned model
    assert (generate_outputs(net, proc, records, 6), answer_nll(net, proc, records)) == before
    assert net.config.to_dict() == config_before


def test_kept_encodings_give_the_same_evaluation_and_encode_each_batch_once(tmp_path, calib_dir):
    """A sweep's EncodingCache: the same predictions as without it (twice over, the second time
    from kept batches, images included), each batch kept once, nothing past the byte limit."""
    net, proc = load_model(save_tiny("qwen3_vl", tmp_path / "vl"), dtype="float32")
    records = load_records([calib_dir / "calib.jsonl"])
    plain = evaluate(net, proc, records, batch_size=4, max_new_tokens=4, progress=False).predictions
    cache = EncodingCache()
    with kept_encodings(cache):
        runs = [evaluate(net, proc, records, batch_size=4, max_new_tokens=4, progress=False).predictions
                for _ in range(2)]
    assert runs[0] == runs[1] == plain
    # 2 batches, each kept as its prompt and its answered text (the answer's context, the text
    # before the answer, renders as the generation prompt itself: one kept batch serves both)
    # ... and each batch's image features once (the vision tower's output, shared by the prompt
    # and the answered text: pruning never changes the tower), used instead of the pixels
    encoded = [k for k in cache.batches if "image features" not in k]
    features = [k for k in cache.batches if "image features" in k]
    assert len(encoded) == 2 * 2 and len(features) == 2
    assert any("pixel_values" in cache.batches[k] for k in encoded) and cache.bytes > 0
    tower, calls = net.model.visual, []
    hook = tower.register_forward_hook(lambda *_: calls.append(1))
    with kept_encodings(cache):
        assert evaluate(net, proc, records, batch_size=4, max_new_tokens=4, progress=False).predictions == plain
    hook.remove()
    assert calls == []  # every batch's features were kept
    nothing = EncodingCache(limit_bytes=0)
    with kept_encodings(nothing):
        assert evaluate(net, proc, records, batch_size=4, max_new_tokens=4, progress=False).predictions == plain
    assert not nothing.batches


def test_sweep_stores_every_cell_once_and_resumes(tmp_path, llm, calib_dir, eval_file, monkeypatch):
    path = study_file(tmp_path, llm, calib_dir, eval_file, budgets=[1, 3])
    run = tmp_path / "run"
    first = run_study(path, run, quiet=True)
    rows = read_results(run / "results.sqlite")
    cells = {r.cell for r in rows}
    assert first.cells_written == first.cells_total == len(cells) == 1 + 2 * 13
    assert first.plans_evaluated < first.cells_total  # coinciding plans evaluated once
    assert len(rows) == 2 * len(cells)  # one row per domain
    by_removed: dict = {}
    for r in rows:
        assert r.n == {"math": 20, "general": 15}[r.domain] and len(r.samples) == r.n
        assert r.accuracy is not None and r.nll is not None and r.budget == len(r.removed)
        # cells with the same removed layers carry the same evaluation
        by_removed.setdefault((tuple(r.removed), r.domain), set()).add(json.dumps(r.samples))
    assert all(len(v) == 1 for v in by_removed.values())
    meta = get_meta(open_store(run / "results.sqlite"))
    assert {"model", "num_layers", "domains", "protected_layers", "study", "eval_sets",
            "depthprune_version"} <= set(meta)
    assert meta["num_layers"] == 6 and meta["domains"] == ["general", "math"]
    assert Scores.load(run / "scores.json").num_layers == 6 and (run / "study.yaml").is_file()
    # the same command again recomputes nothing (not even `iterative`'s re-scoring: stored
    # plans are reused); a larger grid computes only the new cells
    import depthprune.study.distributed as distributed
    real, calls = distributed.score_parallel, []
    monkeypatch.setattr(distributed, "score_parallel", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run_study(path, run, quiet=True)
    assert again.cells_written == 0 and again.plans_evaluated == 0 and not calls
    assert any(r.method == "iterative" for r in rows)
    bigger = run_study(study_file(tmp_path, llm, calib_dir, eval_file, budgets=[1, 2, 3]), run, quiet=True)
    assert bigger.cells_written == 13 and bigger.cells_skipped == first.cells_total
    # a different model or data in the same run directory is refused
    with pytest.raises(ValueError, match="different"):
        run_study(study_file(tmp_path, llm, calib_dir, eval_file, dtype="bfloat16"), run, quiet=True)


@pytest.mark.slow  # three sweeps, two of them in fresh interpreters
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, llm, calib_dir, eval_file):
    path = study_file(tmp_path, llm, calib_dir, eval_file, budgets=[1, 2, 3])
    reference = tmp_path / "ref"
    run_study(path, reference, quiet=True)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "depthprune.cli", "sweep", str(path), "--out", str(run), "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = run / "results.sqlite"
    total = len({row[0] for row in comparable(reference)})
    done = 0
    while proc.poll() is None:
        if store.is_file():
            done = len(open_store(store).execute("SELECT DISTINCT cell FROM results").fetchall())
            if done >= 3:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    assert 3 <= done < total
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable(run) == comparable(reference)
    assert Scores.load(run / "scores.json").fingerprint() == Scores.load(reference / "scores.json").fingerprint()


def _workers(pid: int) -> list[int]:
    """The sweep's worker processes: children of ``pid`` started by multiprocessing's spawn
    (not its resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(p) for p in path.read_text().split()] if path.is_file() else []
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _gone(pids: list[int], timeout: float = 30.0) -> bool:
    """True once none of ``pids`` is alive (checked until ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists()
                 and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _terminal_sigint() -> None:
    """In the child: SIGINT as a terminal's foreground job gets it. A suite started in the
    background (``cmd &`` from a script) ignores SIGINT, and its children inherit that: the
    Ctrl-C tests then saw sweeps that never stopped."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _sweep_until_stored(path, run, jobs: str, cells: int):
    """Start `depthprune sweep` in a process and wait until ``cells`` cells are stored (or it ends);
    returns the process and its worker processes' pids at that moment."""
    cmd = [sys.executable, "-m", "depthprune.cli", "--quiet", "sweep", str(path), "--out", str(run), "--jobs", jobs]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_terminal_sigint)
    store = run / "results.sqlite"
    while proc.poll() is None:
        if store.is_file() and open_store(store).execute("SELECT COUNT(DISTINCT cell) FROM results").fetchone()[0] >= cells:
            return proc, _workers(proc.pid)
        time.sleep(0.02)
    return proc, []


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_says_what_was_kept(tmp_path, llm, calib_dir, eval_file, jobs):
    """Ctrl-C mid-sweep: exit 130, one line saying the stored cells are kept (not "nothing was
    written", as it said when cells had been stored); with worker processes, they end too."""
    # longer answers: each plan takes long enough that the sweep is still running when Ctrl-C comes
    study = study_file(tmp_path, llm, calib_dir, eval_file, budgets=[1, 2, 3], metrics={"max_new_tokens": 32})
    proc, workers = _sweep_until_stored(study, tmp_path / "run", jobs, cells=1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "interrupted" in lines[0] and "keeps the cells it stored" in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert len(workers) == (2 if jobs == "2" else 0) and _gone(workers)


def test_a_worker_killed_mid_sweep_is_one_error_line_and_the_stored_cells_stay_whole(
        tmp_path, llm, calib_dir, eval_file):
    """A worker process killed (as the out-of-memory killer would): exit 2, one line naming the
    cause and the way on, no traceback, the other worker stopped, and every stored cell whole
    (a row per domain); the same command then completes the store."""
    path = study_file(tmp_path, llm, calib_dir, eval_file, budgets=[1, 2, 3])
    run = tmp_path / "run"
    proc, workers = _sweep_until_stored(path, run, "2", cells=1)
    if workers:
        os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "worker process" in lines[0] and "--jobs" in lines[0], err[-2000:]
    assert "Traceback" not in err and _gone(workers)
    store = run / "results.sqlite"
    rows = open_store(store).execute("SELECT cell, COUNT(*) FROM results GROUP BY cell").fetchall()
    assert rows and all(n == 2 for _, n in rows)
    resumed = subprocess.run(proc.args, env=_env(), capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(read_results(store)) == 2 * (1 + 3 * 13)


def _worker(rank: int, port: int, study: str, out: str, report: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = run_study(study, out, quiet=True)
    Path(report, f"rank{rank}.json").write_text(json.dumps({"written": result.cells_written,
                                                             "plans": result.plans_evaluated}))
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # a single-process sweep, then two spawned interpreters
def test_two_gloo_processes_equal_one(tmp_path, llm, calib_dir, eval_file):
    path = study_file(tmp_path, llm, calib_dir, eval_file, budgets=[1, 2],
                      calibration={"data": str(calib_dir / "text.jsonl")}, batch_size=2)
    single = tmp_path / "single"
    one = run_study(path, single, quiet=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(port, str(path), str(tmp_path / "two"), str(tmp_path)),
                                nprocs=2, join=True)
    a, b = (Scores.load(d / "scores.json") for d in (single, tmp_path / "two"))
    assert b.settings["processes"] == 2 and a.settings["processes"] == 1
    assert a.sample_ids == b.sample_ids and torch.equal(a.sums, b.sums) and torch.equal(a.counts, b.counts)
    assert comparable(tmp_path / "two") == comparable(single)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["plans"] > 0 for r in ranks)  # both processes evaluated cells
    assert sum(r["written"] for r in ranks) == one.cells_written


@pytest.mark.skipif(importlib.util.find_spec("trl") is None,
                    reason="the heal extra (trl) is not installed")
def test_heal_cells_are_stored_beside_unhealed(tmp_path, llm, calib_dir, eval_file):
    path = study_file(tmp_path, llm, calib_dir, eval_file, budgets=[2],
                      methods=[{"method": "domain", "domain": "math"}],
                      heal={"recipe": {"mode": "lora", "steps": 2, "batch_size": 2}, "budgets": [2]})
    run_study(path, tmp_path / "run", quiet=True)
    rows = read_results(tmp_path / "run" / "results.sqlite")
    healed = [r for r in rows if r.heal is not None]
    assert healed and {r.domain for r in healed} == {"math", "general"}
    unhealed = next(r for r in rows if r.heal is None and r.budget == 2)
    assert healed[0].heal["mode"] == "lora" and healed[0].removed == unhealed.removed


@pytest.mark.skipif(importlib.util.find_spec("trl") is None,
                    reason="the heal extra (trl) is not installed")
def test_compensated_cells_beside_plain_and_healed_ones_and_the_model_restored(tmp_path, llm, calib_dir, eval_file):
    """A `compensate:` section adds repaired cells (repaired and healed where a heal section
    applies too), each calibrated on its plan's domain; the plain cells are those of the same
    study without the section (the in-place repair is undone after every repaired cell)."""
    methods = [{"method": "domain", "domain": ["math", "general"]}, "last"]
    heal = {"recipe": {"mode": "lora", "steps": 2, "batch_size": 2}, "budgets": [2], "methods": ["domain:math"]}
    path = study_file(tmp_path, llm, calib_dir, eval_file, budgets=[2], methods=methods, heal=heal,
                      compensate={"method": "refit", "budgets": [2]})
    run_study(path, tmp_path / "run", quiet=True)
    rows = read_results(tmp_path / "run" / "results.sqlite")
    repaired = {(r.label, "mode" in r.heal) for r in rows if r.heal and "compensate" in r.heal}
    assert repaired == {("domain:math", False), ("domain:general", False), ("last", False), ("domain:math", True)}
    weights = {r.label: r.heal["compensate"]["weights"] for r in rows if r.heal and "compensate" in r.heal}
    assert weights == {"domain:math": {"math": 1.0}, "domain:general": {"general": 1.0},
                       "last": {"general": 0.5, "math": 0.5}}
    plain = {(r.label, r.eval_set, r.domain): r for r in rows if r.heal is None and r.budget == 2}
    fixed = next(r for r in rows if r.label == "last" and r.heal and "compensate" in r.heal)
    assert fixed.removed == plain[("last", fixed.eval_set, fixed.domain)].removed
    assert fixed.samples != plain[("last", fixed.eval_set, fixed.domain)].samples  # the repair changed outputs

    (tmp_path / "alone").mkdir()
    alone = study_file(tmp_path / "alone", llm, calib_dir, eval_file, budgets=[2], methods=methods)
    run_study(alone, tmp_path / "alone-run", quiet=True)
    again = {(r.label, r.eval_set, r.domain): r.samples for r in read_results(tmp_path / "alone-run" / "results.sqlite")
             if r.budget == 2}
    assert again == {k: r.samples for k, r in plain.items()}


@pytest.mark.skipif(importlib.util.find_spec("trl") is None,
                    reason="the heal extra (trl) is not installed")
def test_worker_processes_store_what_one_process_stores(tmp_path, llm, calib_dir, eval_file, monkeypatch):
    """``jobs=2`` (two spawned workers, each loading the model) stores the very rows of the
    serial engine: accuracy, NLL and every per-sample outcome, for plain, `sleb`, `iterative`,
    healed and repaired cells. Both at one torch thread per process: across thread counts
    torch's kernels may round differently (a last NLL bit in an odd-sized batch, measured by
    benchmarks/bench_study.py), which is torch's doing, not the engine's."""
    methods = [{"method": "domain", "domain": ["math", "general"]}, {"method": "sleb", "domain": "math"},
               "iterative", "last"]
    heal = {"recipe": {"mode": "lora", "steps": 2, "batch_size": 2}, "budgets": [2], "methods": ["domain:math"]}
    path = study_file(tmp_path, llm, calib_dir, eval_file, budgets=[1, 2], methods=methods, heal=heal,
                      compensate={"method": "refit", "budgets": [2], "methods": ["domain:math", "last"]})
    monkeypatch.setenv("DEPTHPRUNE_THREADS", "1")  # read by the main process and its workers
    threads = torch.get_num_threads()
    try:
        serial = run_study(path, tmp_path / "serial", quiet=True, jobs=1)
        pooled = run_study(path, tmp_path / "pooled", quiet=True, jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert comparable(tmp_path / "pooled") == comparable(tmp_path / "serial")
    assert (pooled.cells_written, pooled.plans_evaluated) == (serial.cells_written, serial.plans_evaluated)
    treated = {(r.label, tuple(sorted(r.heal))) for r in read_results(tmp_path / "pooled" / "results.sqlite") if r.heal}
    assert {("domain:math", ("compensate",)), ("last", ("compensate",)),
            ("domain:math", ("batch_size", "mode", "steps"))} <= treated
    logs = [sorted(p.name for p in (tmp_path / run / "logs").iterdir()) for run in ("serial", "pooled")]
    assert logs[0] == logs[1] and logs[0]  # the heal's training logs, written by a worker
