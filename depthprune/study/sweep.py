"""`depthprune sweep STUDY.yaml --out RUN_DIR`: every cell of a study into one results store.

One scoring pass per model (``RUN_DIR/scores.json``, reused on resume), then per distinct plan
(removed layers + healing recipe) one in-memory prune, optional heal, and evaluation; the
rows go to ``RUN_DIR/results.sqlite`` one transaction per cell (:mod:`depthprune.study.store`), so a
sweep killed at any point (``kill -9`` included) resumes with the same command and recomputes
only the cells that are absent. Under ``torchrun`` the scoring pass is data-parallel and the
distinct plans are dealt round-robin to the processes (:mod:`depthprune.study.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthprune import __version__
from depthprune.data.encodings import EncodingCache
from depthprune.data.records import set_prompt_format
from depthprune.outputs import check_output, write_text_atomic
from depthprune.settings import progress as progress_bar
from depthprune.study.cell import Cell, expand_cells
from depthprune.study.config import (
    Study,
    StudyError,
    load_study,
    relative_to,
    study_dict,
)
from depthprune.study.plans import SEARCHED, removed_layers, score_functions
from depthprune.study.rundir import RunDir
from depthprune.study.workers import PlanJob, PlanPool, check_jobs, resolve_jobs, worker_threads


@dataclass
class SweepResult:
    """What one process did: cells in the study, cells it evaluated (and sent to the store),
    cells already stored when it started, distinct plans it evaluated, notes (skipped cells)."""

    run_dir: Path
    cells_total: int
    cells_written: int
    cells_skipped: int
    plans_evaluated: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def _num_layers(study: Study) -> int:
    """Decoder layers from the config alone (no weights loaded; a .gguf file's own header)."""
    from depthprune.models.architectures import ModelError, text_config
    from depthprune.models.loading import load_config, resolve_model_id
    try:
        config = load_config(resolve_model_id(study.model), trust_remote_code=study.trust_remote_code)
    except ModelError as exc:
        raise ModelError(f"{study.source}: model: {exc}") from None
    n = getattr(text_config(config), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ModelError(f"{study.source}: model: {study.model!r} has no num_hidden_layers in its config")
    return n


def _check_resume(conn: Any, study: Study, out: Path) -> None:
    from depthprune.study.store import get_meta
    before = get_meta(conn).get("study_identity")
    now = json.loads(json.dumps(study.identity(legacy=before is not None and "version" not in before)))
    if before is not None and before != now:
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise StudyError(f"{out}: this run directory holds a study with a different {', '.join(changed)}; "
                         "resume only with the same model, data and settings (methods, budgets and "
                         "healing may change), or choose a new --out")


def _load_eval_records(study: Study) -> list[tuple[Any, list]]:
    from depthprune.data.records import load_records
    from depthprune.scoring.forward import cap_per_domain
    out = []
    for es in study.eval_sets:
        records = (cap_per_domain(load_records(es.paths, require_answer=True), es.max_samples)
                   if es.kind == "jsonl" else [])
        out.append((es, records))
    return out


def _scores(study: Study, run: RunDir, net: Any, processor: Any, calib: list, ctx: Any, progress: bool):
    from depthprune.data.records import data_fingerprint
    from depthprune.scoring.forward import ScoreSettings, cap_per_domain
    from depthprune.scoring.scores import Scores
    from depthprune.study.distributed import score_parallel
    settings = ScoreSettings(batch_size=study.batch_size, max_samples=study.calib_max_samples,
                             max_span=study.max_span)
    path = run.scores
    if path.is_file():  # resume: every process reads the same file
        scores = Scores.load(path)
        want = data_fingerprint(cap_per_domain(calib, study.calib_max_samples))
        if scores.settings.get("data_fingerprint") != want:
            raise StudyError(f"{path}: scores of other calibration data; resume with the same "
                             "calibration, or choose a new --out")
        return scores, settings
    scores = score_parallel(net, processor, calib, settings, str(study.model), ctx, progress=progress)
    scores.settings["data_files"] = [relative_to(p, run.path) for p in study.calibration]
    if study.ablation and ctx.main:  # ground truth for `ablation`/diagnostics (prefix-cached)
        from depthprune.scoring.ablation_cache import measure_ablation
        measure_ablation(scores, net, processor, cap_per_domain(calib, study.calib_max_samples),
                         study.batch_size, progress)
    if ctx.main:
        scores.save(path)
    ctx.barrier()
    if study.ablation and not ctx.main:
        scores = Scores.load(path)
    return scores, settings


def _meta(study: Study, scores: Any, eval_sets: list[tuple[Any, list]], n_cells: int, run: RunDir,
          identity: dict[str, Any]) -> dict[str, Any]:
    """The store's run-level facts; paths inside the run directory are recorded relative to it."""
    sets = {}
    for es, records in eval_sets:
        info: dict[str, Any] = {"kind": es.kind, "accuracy": study.accuracy and es.accuracy}
        if es.kind == "jsonl":
            info |= {"files": [relative_to(p, run.path) for p in es.paths], "n": len(records),
                     "domains": {d: sum(r.domain == d for r in records) for d in sorted({r.domain for r in records})}}
        else:
            info |= {"tasks": es.tasks, "limit": es.max_samples, "include_path": es.include_path,
                     "domain": es.domain}
        sets[es.name] = info
    return {"model": str(study.model), "num_layers": scores.num_layers, "domains": scores.domains,
            "protected_layers": study.protect.layers(scores.num_layers, scores.protected_layers),
            "study": study_dict(study, run.path), "eval_sets": sets, "depthprune_version": __version__,
            "study_identity": identity, "scores_fingerprint": scores.fingerprint(),
            "cells_total": n_cells}


def _check_lmms_sets(study: Study) -> None:
    """Before the model loads: lmms-eval sets need a Qwen3-VL model (pruned copies live in
    memory and go to lmms-eval through depthprune's qwen3_vl class), known tasks and their
    datasets on disk."""
    lmms_sets = [es for es in study.eval_sets if es.kind == "lmms"]
    if not lmms_sets:
        return
    from depthprune.evaluation import lmms
    from depthprune.models.loading import resolve_model_id
    try:
        family = lmms.family_for(resolve_model_id(study.model))
    except lmms.LmmsError:
        family = None
    if family != "depthprune_qwen3_vl":
        raise StudyError(f"{study.source}: eval: lmms-eval sets inside a sweep need a Qwen3-VL model; for "
                         f"{study.model} run the study on jsonl sets and evaluate the pruned checkpoints you "
                         "pick with `depthprune eval --lmms-eval`")
    for es in lmms_sets:
        lmms.task_manager(es.tasks, es.include_path, what=f"{study.source}: eval set {es.name!r}")


@dataclass
class _Inputs:
    """Everything a study reads besides the model, loaded and checked before the model is."""

    num_layers: int
    cells: list[Cell]
    calib: list
    eval_sets: list[tuple[Any, list]]
    heal_records: list | None
    #: the eval batches encoded so far, reused by every plan (each worker fills its own copy)
    encodings: EncodingCache = field(default_factory=EncodingCache)

    @classmethod
    def load(cls, study: Study) -> "_Inputs":
        from depthprune.data.records import load_records
        from depthprune.models.loading import validate_device
        try:  # before the run directory exists: a refused study leaves nothing behind
            validate_device(study.device, study.device_map)
        except ValueError as exc:
            raise StudyError(f"{study.source}: device: {exc}") from None
        num_layers = _num_layers(study)
        cells = expand_cells(study, num_layers)  # budgets checked against the layer count
        heal_records = (load_records(study.heal["data"] or study.calibration, require_answer=True)
                        if study.heal is not None else None)
        calib = load_records(study.calibration)
        if any(c.variant.method == "sleb" for c in cells):  # sleb measures answer NLL: fail before any work
            from depthprune.scoring.ablation import SLEB_NEEDS, require_answers
            from depthprune.scoring.forward import cap_per_domain
            require_answers(cap_per_domain(calib, study.calib_max_samples), SLEB_NEEDS)
        inputs = cls(num_layers, cells, calib, _load_eval_records(study), heal_records)
        _check_lmms_sets(study)  # before the run directory is created: a refused study leaves nothing
        return inputs


def _open_store(run: RunDir, study: Study, ctx: Any) -> Any:
    """Create the run directory and open its store (rank 0 only: the others send it rows);
    refuse a run directory that holds another study, on every process."""
    from depthprune.study.store import open_store
    if ctx.main:
        run.path.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    conn = open_store(run.store) if ctx.main else None
    problem = None
    if ctx.main:
        try:
            _check_resume(conn, study, run.path)
        except StudyError as exc:
            problem = str(exc)
    problem = ctx.broadcast(problem)
    if problem:
        raise StudyError(problem)
    return conn


@dataclass
class _Writer:
    """Rank 0's side of a sweep: every evaluated plan's cells into the store, one transaction
    per cell, and the counts of what this process evaluated."""

    conn: Any
    bar: Any
    result: SweepResult
    num_layers: int

    def rows(self, cells: list[Cell], remove: list[int], results: dict[str, list], seconds: float) -> list[list]:
        """The store rows of ``cells`` (one plan's), counted as this process's work."""
        from depthprune.study.cell import cell_rows
        self.result.plans_evaluated += 1
        self.result.cells_written += len(cells)
        self.bar.set_postfix_str(f"{cells[0].variant.label} k={len(remove)}{' +heal' if cells[0].heal else ''}")
        return [cell_rows(c, remove, self.num_layers, results, seconds) for c in cells]

    def store(self, rows: list) -> None:
        from depthprune.study.store import write_cell
        if self.conn is not None and write_cell(self.conn, rows):
            self.bar.update(1)

    def add(self, cells: list[Cell], remove: list[int], results: dict[str, list], seconds: float) -> None:
        for rows in self.rows(cells, remove, results, seconds):
            self.store(rows)


def _evaluate_in_rounds(net: Any, processor: Any, study: Study, inputs: _Inputs, run: RunDir,
                        todo: dict[tuple, list[Cell]], ctx: Any, writer: _Writer, progress: bool) -> None:
    """The serial engine, and torchrun's: the pending plans dealt round-robin to the processes;
    in each round every process evaluates one plan and rank 0 stores every process's cells."""
    from depthprune.study.cell import evaluate_plan
    groups = list(todo)
    mine = groups[ctx.rank::ctx.world]
    for i in range(-(-len(groups) // ctx.world)):
        produced: list[list] = []
        if i < len(mine):
            cells, remove = todo[mine[i]], list(mine[i][1])
            heal = cells[0].heal
            t0 = time.perf_counter()
            results = evaluate_plan(net, processor, study, inputs, remove, heal,
                                    log_file=run.heal_log(remove, heal) if heal else None, progress=progress)
            produced = writer.rows(cells, remove, results, time.perf_counter() - t0)
        for rows_of_rank in ctx.gather(produced):
            for rows in rows_of_rank:
                writer.store(rows)


@dataclass
class _Sweep:
    """One sweep's state once the model is loaded: scores, plans, then every pending plan
    evaluated (here, in torchrun's rounds, or by worker processes) and stored."""

    study: Study
    rundir: RunDir
    inputs: _Inputs
    net: Any
    processor: Any
    ctx: Any
    conn: Any
    progress: bool
    #: plans decided by an earlier sweep on the same scores and calibration (cell key -> removed
    #: layers): not searched again (the demo's headline takes the grid's `sleb` plans)
    reused: Mapping[str, list[int]] = field(default_factory=dict)

    def run(self, done: set[str], jobs: int, stack: contextlib.ExitStack, started: float) -> SweepResult:
        study, ctx, conn = self.study, self.ctx, self.conn
        scores, settings = _scores(study, self.rundir, self.net, self.processor, self.inputs.calib, ctx, self.progress)
        pool = None
        if jobs > 1:
            # started after scoring, which runs on every core here: workers starting beside it
            # would leave its threads waiting on each other (on 2 busy cores, many times slower)
            pool = stack.enter_context(PlanPool(study, self.inputs, jobs, worker_threads(jobs)))
            pool.start(jobs)
        skipped: list[str] = []
        removed = self.plans(scores, settings, skipped, pool)
        cells = [c for c in self.inputs.cells if c.key in removed]
        self.write_meta(scores, len(cells), skipped)
        # cells whose plans coincide (same removed layers, same healing) are evaluated once
        groups: dict[tuple, list[Cell]] = defaultdict(list)
        for cell in cells:
            plan = removed[cell.key]
            groups[(len(plan), tuple(plan), json.dumps(cell.heal, sort_keys=True))].append(cell)
        keys = {c.key for c in cells}
        pending_groups = [g for g in sorted(groups) if any(c.key not in done for c in groups[g])]
        if ctx.world > 1 and any(g[2] != "null" for g in pending_groups):
            # healing trains with accelerate, which would join the group as DDP: one process only
            pending_groups = [g for g in pending_groups if g[2] == "null"]
            skipped.append("healed cells under torchrun (several processes): run the same command in one "
                           "process afterwards to add them")
        result = SweepResult(self.rundir.path, len(cells), 0, len(keys & done), 0, 0.0, notes=skipped)
        bar = progress_bar(total=len(keys), initial=len(keys & done), desc="sweep", unit="cell",
                           disable=not self.progress, dynamic_ncols=True)
        todo = {g: [c for c in groups[g] if c.key not in done] for g in pending_groups}
        self.evaluate(todo, _Writer(conn if ctx.main else None, bar, result, self.inputs.num_layers), pool)
        bar.close()
        ctx.barrier()
        result.seconds = time.perf_counter() - started
        return result

    def evaluate(self, todo: dict[tuple, list[Cell]], writer: _Writer, pool: PlanPool | None) -> None:
        """Every pending plan (group key -> its cells still to store), by the workers of
        ``pool`` or in this process (torchrun's rounds); ``writer`` stores each plan's cells."""
        if pool is None:
            _evaluate_in_rounds(self.net, self.processor, self.study, self.inputs, self.rundir, todo, self.ctx,
                                writer, self.progress)
            return
        group_of = {PlanJob(g[1], cells[0].heal, self.rundir.heal_log(list(g[1]), cells[0].heal)
                            if cells[0].heal else None): g for g, cells in todo.items()}
        for job, results, seconds in pool.evaluate(list(group_of)):
            writer.add(todo[group_of[job]], list(job.remove), results, seconds)

    def plans(self, scores: Any, settings: Any, skipped: list[str], pool: PlanPool | None) -> dict[str, list[int]]:
        """Every cell's removed layers (:func:`depthprune.study.plans.removed_layers`); with worker
        processes, each `iterative` / `sleb` variant is searched in one of them, side by side."""
        from depthprune.study.store import read_results
        stored = self.ctx.broadcast({r.cell: r.removed for r in read_results(self.conn)} if self.ctx.main else None)
        known: dict[str, list[int] | str] = {**self.reused, **stored}
        if pool is not None:
            variants: dict[str, list[Cell]] = defaultdict(list)
            for cell in self.inputs.cells:
                if cell.variant.method in SEARCHED and cell.budget > 0 and cell.key not in known:
                    variants[cell.variant.label].append(cell)
            known |= pool.search(scores, settings, list(variants.values()), self.progress)
        fns = score_functions(self.net, self.processor, self.inputs.calib, self.study, settings, self.ctx,
                              self.progress)
        return removed_layers(self.study, self.inputs.cells, scores, fns, skipped, known)

    def write_meta(self, scores: Any, n_cells: int, skipped: list[str]) -> None:
        """The store's run-level facts and ``RUN_DIR/study.yaml`` (rank 0)."""
        from depthprune.study.store import get_meta, set_meta
        if self.ctx.main:
            # a legacy store keeps its form of the identity
            identity = get_meta(self.conn).get("study_identity") or self.study.identity()
            set_meta(self.conn, _meta(self.study, scores, self.inputs.eval_sets, n_cells, self.rundir, identity)
                     | {"skipped_cells": skipped})
            import yaml
            text = yaml.safe_dump(study_dict(self.study, self.rundir.path), sort_keys=False)
            write_text_atomic(self.rundir.study, text, overwrite=True)
        self.ctx.barrier()


def run_study(study: Study | str | os.PathLike, out: str | os.PathLike, *, quiet: bool = False,
              owned: Sequence[str | os.PathLike] = (), jobs: int | None = None,
              known_plans: Mapping[str, list[int]] | None = None) -> SweepResult:
    """Run (or resume) every cell of ``study`` into the run directory ``out``.

    ``study`` is a :class:`Study` or a YAML path (validated before any model loads). ``out``
    may not be, be inside or contain anything the study reads (the model, the data files and
    their images, the study file: :func:`depthprune.outputs.check_output`), except ``owned``
    folders inside it (the demo's own data). ``jobs``: worker processes that evaluate the plans
    (:mod:`depthprune.study.workers`; 1: this process alone; None: one per usable core, on
    the CPU). ``known_plans``: removed layers of cells (by key) that an earlier sweep with the
    same scores and calibration already searched, used instead of searching again. Returns a
    :class:`SweepResult`; results are in ``out/results.sqlite`` (see :mod:`depthprune.study.store`).
    """
    from depthprune.models.loading import load_model, resolve_model_id
    from depthprune.study.distributed import setup
    from depthprune.study.store import completed_cells
    started = time.perf_counter()
    study = study if isinstance(study, Study) else load_study(study)
    run = RunDir(out)
    inputs = _Inputs.load(study)
    check_output(run.path, True, kind="dir", inputs=study.reads(owned=[Path(o) for o in owned]))  # resumable
    ctx = setup(study.device)
    check_jobs(jobs, study, ctx.world)
    conn = _open_store(run, study, ctx)
    net, processor = load_model(resolve_model_id(study.model), dtype=study.dtype, device=ctx.device(study.device),
                                device_map=study.device_map, trust_remote_code=study.trust_remote_code)
    set_prompt_format(processor, study.prompt_format, study.model)
    done = ctx.broadcast(completed_cells(conn) if ctx.main else None)
    n_jobs = resolve_jobs(jobs, study, ctx.world, sum(c.key not in done for c in inputs.cells),
                          sum(p.nbytes for p in net.parameters()))
    with contextlib.ExitStack() as stack:  # closes the worker processes, at once after an error
        sweep = _Sweep(study, run, inputs, net, processor, ctx, conn, not quiet and ctx.main, dict(known_plans or {}))
        result = sweep.run(done, n_jobs, stack, started)
    if conn is not None:
        conn.close()
    return result


def summary_line(result: SweepResult) -> str:
    """One line for the CLI."""
    return (f"{result.cells_total} cells ({result.cells_skipped} already stored, {result.cells_written} "
            f"written from {result.plans_evaluated} distinct plans) in {result.seconds:.0f} s "
            f"-> {RunDir(result.run_dir).store}")
