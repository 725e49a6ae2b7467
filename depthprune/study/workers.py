"""Local worker processes for a sweep's plan evaluations (``depthprune sweep --jobs N``).

Why: on a few CPU cores, N one-thread processes, each evaluating its own plan, get far more
done than one process whose threads share every small matrix product (on the toy, a 128-wide
model, two threads spend most of their time waiting on each other). The main process still
loads the inputs, scores, ranks and computes every plan (those steps build on each other and
are memoised across budgets); the workers only evaluate plans. Each loads the model once,
when it starts, then prunes in memory, repairs in place and restores, or heals a copy, one
plan per task, exactly as the serial engine does (:func:`depthprune.study.cell.evaluate_plan`).

The main process alone writes the store, one transaction per cell as results arrive, so an
interrupted or failed sweep keeps exactly the cells it stored. A plan's outcomes are a pure
function of the weights, the plan and the data, so the store equals the serial engine's
(``tests/models/test_sweep.py`` compares them row by row, per-sample outcomes included).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from depthprune import settings
from depthprune.data.records import set_prompt_format
from depthprune.settings import progress as progress_bar
from depthprune.study.cell import Cell, Sample, evaluate_plan
from depthprune.study.config import Study, StudyError
from depthprune.study.distributed import Context
from depthprune.study.plans import score_functions, searched_plans

#: A worker's memory besides its weights (torch, transformers, activations), and how many
#: copies of the weights it may hold at once (the model, a healed copy, its optimizer state).
WORKER_OVERHEAD_BYTES = 1 << 30
WEIGHT_COPIES = 3


@dataclass(frozen=True, eq=False)  # eq=False: a job is its own identity (its dicts are not hashable)
class PlanJob:
    """One distinct plan to evaluate: removed layers, the treatment (heal recipe and/or
    ``compensate`` entry, None for plain removal) and where a heal writes its training log."""

    remove: tuple[int, ...]
    heal: dict | None
    log_file: Path | None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _available_memory() -> int | None:
    """Bytes the system can still give (MemAvailable), or None where it cannot say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_jobs(jobs: int | None, study: Study, world: int) -> None:
    """Refuse a ``jobs`` value the study cannot use (before any model loads): worker processes
    run on the CPU only, and not under torchrun (its processes already split the plans)."""
    if jobs is None or jobs == 1:
        return
    if jobs < 1:
        raise StudyError(f"--jobs must be >= 1, got {jobs}")
    if study.device != "cpu" or study.device_map is not None:
        where = f"device_map: {study.device_map}" if study.device_map else f"device: {study.device}"
        raise StudyError(f"--jobs {jobs}: worker processes run on the CPU, each with a whole model; with {where} "
                         "leave --jobs out (or launch several processes with torchrun)")
    if world > 1:
        raise StudyError(f"--jobs {jobs} under torchrun: its {world} processes already split the plans; "
                         "leave --jobs out")


def resolve_jobs(jobs: int | None, study: Study, world: int, plans: int, weight_bytes: int) -> int:
    """How many worker processes evaluate ``plans`` pending plans: ``jobs`` when given (1 = the
    serial engine, in this process), else as many as there are usable cores, plans and room in
    memory for a worker each (on the CPU, without torchrun; else 1)."""
    check_jobs(jobs, study, world)
    if jobs is None:
        if study.device != "cpu" or study.device_map is not None or world > 1:
            return 1
        jobs = usable_cores()
        available = _available_memory()
        if available is not None:
            jobs = min(jobs, available // (WORKER_OVERHEAD_BYTES + WEIGHT_COPIES * weight_bytes))
    return max(1, min(jobs, plans))


def worker_threads(jobs: int) -> int:
    """Torch threads per worker: ``--threads`` when given, else the usable cores shared out."""
    return settings.threads() or max(1, usable_cores() // jobs)


# --------------------------------------------------------------------------- in a worker
_worker: dict[str, Any] = {}


def _start_worker(study: Study, inputs: Any, threads: int) -> None:
    """A worker's start: its settings, then the model, loaded once for every plan it gets."""
    from depthprune.models.loading import load_model, resolve_model_id
    _ignore_sigint()  # the main process stops the workers on Ctrl-C and keeps the stored cells
    settings.configure(quiet=True, threads=threads)
    torch.set_num_threads(threads)
    net, processor = load_model(resolve_model_id(study.model), dtype=study.dtype, device=study.device,
                                trust_remote_code=study.trust_remote_code)
    set_prompt_format(processor, study.prompt_format, study.model)  # as the main process does
    _worker.update(net=net, processor=processor, study=study, inputs=inputs)


def _ready() -> int:
    """A first task: the worker has started and loaded the model."""
    return os.getpid()


def _search(scores: Any, settings: Any, cells: list[Cell]) -> dict[str, list[int] | str]:
    """In a worker: the plans of one `iterative` / `sleb` variant's cells, every budget
    (memoised across them, as in the sweep's own process)."""
    study, inputs = _worker["study"], _worker["inputs"]
    fns = score_functions(_worker["net"], _worker["processor"], inputs.calib, study, settings, Context(),
                          progress=False)
    return searched_plans(study, cells, scores, fns)


def _run_plan(job: PlanJob) -> tuple[dict[str, list[Sample]], float, list[tuple[str, type[Warning]]]]:
    """In a worker: one plan's outcomes, its seconds, and the warnings it raised (the main
    process shows them, as the serial engine would)."""
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        results = evaluate_plan(_worker["net"], _worker["processor"], _worker["study"], _worker["inputs"],
                                list(job.remove), job.heal, log_file=job.log_file)
    return results, time.perf_counter() - started, [(str(w.message), w.category) for w in caught]


# --------------------------------------------------------------------------- in the main process
def _outcome(future: Future) -> Any:
    """A task's result; its exception as raised in the worker (a user error stays one); a
    worker that died as a StudyError saying what to do."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise StudyError("a worker process of the sweep died (out of memory?); the stored cells are kept: run "
                         "the same command again with fewer --jobs (1: no workers) to resume") from None


def _close(executor: ProcessPoolExecutor, stop: bool) -> None:
    """Wait for ``executor``'s work, or with ``stop`` (an error, Ctrl-C) end its processes now."""
    if not stop:
        executor.shutdown(wait=True)
        return
    executor.shutdown(wait=False, cancel_futures=True)
    # concurrent.futures has no public way to stop running tasks before Python 3.14
    # (ProcessPoolExecutor.terminate_workers): end the processes it started
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()


def _ignore_sigint() -> None:
    # Ctrl-C is the main process's to handle (it stops this one); a terminal sends it to every
    # process of the group, and a second traceback would be noise
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _beside_start() -> None:
    _ignore_sigint()
    torch.set_num_threads(1)  # it runs beside busy workers: more threads would wait on each other


@contextlib.contextmanager
def beside(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Future]:
    """``fn(*args, **kwargs)`` in a spawned one-thread process beside this one, as a Future
    (e.g. the demo's report while its headline sweep runs); the process ends with the block,
    at once after an error or Ctrl-C."""
    executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_beside_start)
    try:
        yield executor.submit(fn, *args, **kwargs)
    except BaseException:
        _close(executor, stop=True)
        raise
    _close(executor, stop=False)


def _cost_rank(job: PlanJob) -> int:
    """0 for a healed plan (it trains), 1 for a repaired one (it fits), 2 for plain removal."""
    if job.heal is None:
        return 2
    return 1 if set(job.heal) == {"compensate"} else 0


class PlanPool:
    """``jobs`` spawned worker processes evaluating plans; a context manager that stops them
    on leaving (after an error or Ctrl-C, at once: running plans are abandoned, their cells
    stay absent from the store and a resumed sweep computes them)."""

    def __init__(self, study: Study, inputs: Any, jobs: int, threads: int) -> None:
        # spawn, not fork: a forked copy of a process that has run torch's thread pools can hang
        self.executor = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start_worker, initargs=(study, inputs, threads))

    def __enter__(self) -> "PlanPool":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        _close(self.executor, stop=exc_type is not None)

    def start(self, jobs: int) -> None:
        """Start the ``jobs`` workers now (they load the model while this process scores)
        rather than at the first plan: the executor spawns a worker per task submitted while
        none is idle."""
        for _ in range(jobs):
            self.executor.submit(_ready)

    def search(self, scores: Any, settings: Any, variants: list[list[Cell]], progress: bool
               ) -> dict[str, list[int] | str]:
        """The plans of `iterative` / `sleb` cells, one task per variant (its cells, every budget),
        the variants side by side: cell key -> removed layers, or the reason it is skipped."""
        futures = [self.executor.submit(_search, scores, settings, cells) for cells in variants]
        plans: dict[str, list[int] | str] = {}
        bar = progress_bar(total=len(futures), desc="plan search (workers)", unit="variant",
                           disable=not progress or not futures)
        for future in as_completed(futures):
            plans |= _outcome(future)
            bar.update(1)
        bar.close()
        return plans

    def evaluate(self, jobs: list[PlanJob]) -> Iterator[tuple[PlanJob, dict[str, list[Sample]], float]]:
        """Every job's ``(job, outcomes, seconds)``, in the order they finish. The most costly
        plans (healed, then repaired) go first, so no worker is left with a long one at the end."""
        order = sorted(jobs, key=_cost_rank)
        pending: dict[Future, PlanJob] = {self.executor.submit(_run_plan, job): job for job in order}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                results, seconds, caught = _outcome(future)
                for message, category in caught:
                    warnings.warn(message, category, stacklevel=2)
                yield job, results, seconds
