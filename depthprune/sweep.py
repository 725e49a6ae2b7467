"""`depthprune sweep STUDY.yaml --out RUN_DIR`: every cell of a study into one results store.

One scoring pass per model (``RUN_DIR/scores.json``, reused on resume), then per distinct plan
(removed layers + healing recipe) one in-memory prune, optional heal, and evaluation; the
rows go to ``RUN_DIR/results.sqlite`` one transaction per cell (:mod:`depthprune.store`), so a
sweep killed at any point (``kill -9`` included) resumes with the same command and recomputes
only the cells that are absent. Under ``torchrun`` the scoring pass is data-parallel and the
distinct plans are dealt round-robin to the processes (:mod:`depthprune.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import __version__
from .study import Cell, Study, StudyError, expand_cells, load_study, study_dict

SCORES_NAME = "scores.json"
STUDY_NAME = "study.yaml"


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
    from .models import ModelError, load_config, resolve_model_id, text_config
    try:
        config = load_config(resolve_model_id(study.model), trust_remote_code=study.trust_remote_code)
    except ModelError as exc:
        raise ModelError(f"{study.source}: model: {exc}") from None
    n = getattr(text_config(config), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ModelError(f"{study.source}: model: {study.model!r} has no num_hidden_layers in its config")
    return n


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_resume(conn: Any, study: Study, out: Path) -> None:
    from .store import get_meta
    before = get_meta(conn).get("study_identity")
    now = json.loads(json.dumps(study.identity()))
    if before is not None and before != now:
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise StudyError(f"{out}: this run directory holds a study with a different {', '.join(changed)}; "
                         "resume only with the same model, data and settings (methods, budgets and "
                         "healing may change), or choose a new --out")


def _load_eval_records(study: Study) -> list[tuple[Any, list]]:
    from .data import load_records
    from .scoring import cap_per_domain
    out = []
    for es in study.eval_sets:
        records = (cap_per_domain(load_records(es.paths, require_answer=True), es.max_samples)
                   if es.kind == "jsonl" else [])
        out.append((es, records))
    return out


def _scores(study: Study, out: Path, net: Any, processor: Any, calib: list, ctx: Any, progress: bool):
    from .data import data_fingerprint
    from .distributed import score_parallel
    from .scores import Scores
    from .scoring import ScoreSettings, cap_per_domain
    settings = ScoreSettings(batch_size=study.batch_size, max_samples=study.calib_max_samples,
                             max_span=study.max_span)
    path = out / SCORES_NAME
    if path.is_file():  # resume: every process reads the same file
        scores = Scores.load(path)
        want = data_fingerprint(cap_per_domain(calib, study.calib_max_samples))
        if scores.settings.get("data_fingerprint") != want:
            raise StudyError(f"{path}: scores of other calibration data; resume with the same "
                             "calibration, or choose a new --out")
        return scores, settings
    scores = score_parallel(net, processor, calib, settings, str(study.model), ctx, progress=progress)
    scores.settings["data_files"] = list(study.calibration)
    if study.ablation and ctx.main:  # ground truth for `ablation`/diagnostics (prefix-cached)
        from .ablation_cache import measure_ablation
        measure_ablation(scores, net, processor, cap_per_domain(calib, study.calib_max_samples),
                         study.batch_size, progress)
    if ctx.main:
        scores.save(path)
    ctx.barrier()
    if study.ablation and not ctx.main:
        scores = Scores.load(path)
    return scores, settings


def _plans(study: Study, cells: list[Cell], scores: Any, score_fns: dict[str, Any], skipped: list[str],
           stored: dict[str, list[int]]) -> dict[str, list[int]]:
    """Removed layers per cell key (the same on every process: pure functions of the scores,
    `iterative`'s re-scoring is collective and `sleb`'s answer comes from rank 0).
    ``score_fns``: method -> the ``score_fn`` :func:`~depthprune.methods.rank` needs for
    it (`iterative`, `sleb`). A method that cannot meet a budget skips that
    cell, with the reason appended to ``skipped``, instead of stopping the study. Cells already
    in the store keep their stored plan (the scores are the same, checked on resume), so a
    resumed `iterative` study does not re-score."""
    from .methods import RankError, RankRequest, rank
    removed: dict[str, list[int]] = {}
    for cell in cells:
        if cell.budget == 0:
            removed[cell.key] = []
            continue
        if cell.key in stored:
            removed[cell.key] = list(stored[cell.key])
            continue
        req = RankRequest(method=cell.variant.method, budget=cell.budget,
                          allow_deepstack=study.protect["allow_deepstack"],
                          protect_first=study.protect["first"], protect_last=study.protect["last"],
                          **cell.variant.options)
        try:
            plan = rank(scores, req, score_fn=score_fns.get(cell.variant.method))
        except RankError as exc:  # e.g. `spaced` cannot remove half the layers without neighbours
            skipped.append(f"{cell.variant.label} at {cell.budget} layers: {exc}")
            continue
        removed[cell.key] = plan.remove
    return removed


def _meta(study: Study, scores: Any, eval_sets: list[tuple[Any, list]], n_cells: int) -> dict[str, Any]:
    from .methods import RankRequest, protected_layers
    req = RankRequest(method="meta", budget=1, allow_deepstack=study.protect["allow_deepstack"],
                      protect_first=study.protect["first"], protect_last=study.protect["last"])
    sets = {}
    for es, records in eval_sets:
        info: dict[str, Any] = {"kind": es.kind, "accuracy": study.accuracy and es.accuracy}
        if es.kind == "jsonl":
            info |= {"files": es.paths, "n": len(records),
                     "domains": {d: sum(r.domain == d for r in records) for d in sorted({r.domain for r in records})}}
        else:
            info |= {"tasks": es.tasks, "limit": es.max_samples, "include_path": es.include_path,
                     "domain": es.domain}
        sets[es.name] = info
    return {"model": str(study.model), "num_layers": scores.num_layers, "domains": scores.domains,
            "protected_layers": protected_layers(scores.num_layers, scores.protected_layers, req),
            "study": study_dict(study), "eval_sets": sets, "depthprune_version": __version__,
            "study_identity": study.identity(), "scores_fingerprint": scores.fingerprint(),
            "cells_total": n_cells}


def _check_lmms_sets(study: Study) -> None:
    """Before the model loads: lmms-eval sets need a Qwen3-VL model (pruned copies live in
    memory and go to lmms-eval through depthprune's qwen3_vl class), known tasks and their
    datasets on disk."""
    lmms_sets = [es for es in study.eval_sets if es.kind == "lmms"]
    if not lmms_sets:
        return
    from . import lmms
    from .models import resolve_model_id
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


def run_study(study: Study | str | os.PathLike, out: str | os.PathLike, *, quiet: bool = False) -> SweepResult:
    """Run (or resume) every cell of ``study`` into the run directory ``out``.

    ``study`` is a :class:`Study` or a YAML path (validated before any model loads). Returns a
    :class:`SweepResult`; results are in ``out/results.sqlite`` (see :mod:`depthprune.store`).
    """
    started = time.perf_counter()
    if not isinstance(study, Study):
        study = load_study(study)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StudyError(f"{out}: exists and is not a directory; choose another --out")
    num_layers = _num_layers(study)
    cells = expand_cells(study, num_layers)  # budgets checked against the layer count
    from .data import load_records
    calib = load_records(study.calibration)
    from .scoring import cap_per_domain
    if any(c.variant.method == "sleb" for c in cells):  # sleb measures answer NLL: fail before any work
        from .ablation import SLEB_NEEDS, require_answers
        require_answers(cap_per_domain(calib, study.calib_max_samples), SLEB_NEEDS)
    eval_sets = _load_eval_records(study)
    heal_records = None
    if study.heal is not None:
        heal_records = load_records(study.heal["data"] or study.calibration, require_answer=True)

    _check_lmms_sets(study)  # before the run directory is created: a refused study leaves nothing

    from .distributed import score_parallel, setup
    from .store import STORE_NAME, completed_cells, open_store, read_results, set_meta, write_cell
    ctx = setup(study.device)
    progress = not quiet and ctx.main
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    # only rank 0 touches the store (any filesystem, any number of nodes); the others send it rows
    conn = open_store(out / STORE_NAME) if ctx.main else None
    problem = None
    if ctx.main:
        try:
            _check_resume(conn, study, out)
        except StudyError as exc:
            problem = str(exc)
    problem = ctx.broadcast(problem)
    if problem:
        raise StudyError(problem)

    from .models import load_model, resolve_model_id
    from .pruning import layers_removed
    net, processor = load_model(resolve_model_id(study.model), dtype=study.dtype, device=ctx.device(study.device),
                                device_map=study.device_map, trust_remote_code=study.trust_remote_code)
    scores, settings = _scores(study, out, net, processor, calib, ctx, progress)
    memo: dict[tuple[int, ...], Any] = {}

    # `iterative` re-scores after each removal; its bases read single layers only (span 1), so
    # the re-scoring records no longer blocks. Collective under torchrun, memoised across budgets.
    rescore_settings = dataclasses.replace(settings, max_span=1)

    def rescore(remove: list[int]) -> Any:
        key = tuple(sorted(remove))
        if key not in memo:
            with layers_removed(net, remove):
                memo[key] = score_parallel(net, processor, calib, rescore_settings, str(study.model), ctx,
                                           progress=False)
        return memo[key]

    from .sleb import Sleb
    sleb = Sleb(net, processor, cap_per_domain(calib, study.calib_max_samples), study.batch_size, progress=progress)

    def sleb_select(k: int, candidates: list[int], req: Any) -> Any:  # rank 0 measures, all get its answer
        from .methods import RankError
        try:
            answer = sleb(k, candidates, req) if ctx.main else None
        except RankError as exc:
            answer = exc
        answer = ctx.broadcast(answer)
        if isinstance(answer, RankError):
            raise answer
        return answer

    skipped: list[str] = []
    stored = ctx.broadcast({r.cell: r.removed for r in read_results(conn)} if ctx.main else None)
    removed = _plans(study, cells, scores, {"iterative": rescore, "sleb": sleb_select}, skipped, stored)
    cells = [c for c in cells if c.key in removed]
    if ctx.main:
        set_meta(conn, _meta(study, scores, eval_sets, len(cells)) | {"skipped_cells": skipped})
        import yaml
        _write_text_atomic(out / STUDY_NAME, yaml.safe_dump(study_dict(study), sort_keys=False))
    ctx.barrier()

    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(len(removed[cell.key]), tuple(removed[cell.key]), json.dumps(cell.heal, sort_keys=True))].append(cell)
    keys = {c.key for c in cells}
    done = ctx.broadcast(completed_cells(conn) if ctx.main else None)
    pending_groups = [g for g in sorted(groups) if any(c.key not in done for c in groups[g])]
    if ctx.world > 1 and any(g[2] != "null" for g in pending_groups):
        # healing trains with accelerate, which would join the group as DDP: one process only
        pending_groups = [g for g in pending_groups if g[2] == "null"]
        skipped.append("healed cells under torchrun (several processes): run the same command in one "
                       "process afterwards to add them")
    mine = pending_groups[ctx.rank::ctx.world]
    result = SweepResult(out, len(cells), 0, len(keys & done), 0, 0.0, notes=skipped)
    bar = tqdm(total=len(keys), initial=len(keys & done), desc="sweep", unit="cell", disable=not progress,
               dynamic_ncols=True)
    from .cells import cell_rows, evaluate_sets, heal_copy, pruned_in_memory
    rounds = -(-len(pending_groups) // ctx.world)
    for i in range(rounds):  # each round: every process evaluates one plan, rank 0 stores them all
        produced: list[list] = []
        if i < len(mine):
            gkey = mine[i]
            pending = [c for c in groups[gkey] if c.key not in done]
            t0 = time.perf_counter()
            remove, heal = list(gkey[1]), pending[0].heal
            bar.set_postfix_str(f"{pending[0].variant.label} k={len(remove)}{' +heal' if heal else ''}")
            if heal is None:
                with pruned_in_memory(net, remove):
                    results = evaluate_sets(net, processor, eval_sets, study.batch_size, study.max_new_tokens,
                                            study.accuracy, progress)
            else:
                student = heal_copy(net, processor, remove, heal, heal_records, study.heal["distill"], progress)
                results = evaluate_sets(student, processor, eval_sets, study.batch_size, study.max_new_tokens,
                                        study.accuracy, progress)
                del student
            seconds = time.perf_counter() - t0
            result.plans_evaluated += 1
            produced = [cell_rows(cell, remove, num_layers, results, seconds) for cell in pending]
            result.cells_written += len(produced)
        for rows_of_rank in ctx.gather(produced):
            for rows in rows_of_rank:
                if ctx.main and write_cell(conn, rows):
                    bar.update(1)
    bar.close()
    ctx.barrier()
    result.seconds = time.perf_counter() - started
    if conn is not None:
        conn.close()
    return result


def summary_line(result: SweepResult) -> str:
    """One line for the CLI."""
    return (f"{result.cells_total} cells ({result.cells_skipped} already stored, {result.cells_written} "
            f"written from {result.plans_evaluated} distinct plans) in {result.seconds:.0f} s "
            f"-> {result.run_dir / 'results.sqlite'}")
