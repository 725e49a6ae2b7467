"""One cell of a sweep (a method variant at a budget, healed or not) and its evaluation in
memory: prune (and maybe heal) without writing a checkpoint, measure every eval set, and turn
the per-sample outcomes into store rows."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from depthprune.data.records import Record, batches, kept_encodings
from depthprune.evaluation.generation import (
    answer_nll,
    evaluate,
    finite_or_none,
    wilson_interval,
)
from depthprune.models.architectures import find_decoder_layers, text_config
from depthprune.pruning import _set_layers, prune_layers
from depthprune.settings import progress as progress_bar
from depthprune.study.config import EvalSet, MethodVariant, Study, StudyError
from depthprune.study.store import ResultRow, cell_key


@dataclass(frozen=True)
class Cell:
    """One grid point. ``heal`` is the recipe dict or None; ``budget`` a layer count."""

    variant: MethodVariant
    budget: int
    heal: dict[str, Any] | None

    @property
    def key(self) -> str:
        """The stable key the store files the cell under."""
        return cell_key(self.variant.method, self.variant.options, self.budget, self.heal)


# ------------------------------------------------------------------------- the grid
def resolve_budgets(study: Study, num_layers: int, specs: list[int | float] | None = None,
                    key: str = "budgets") -> list[int]:
    """Distinct layer counts of the study's budgets (or ``specs``, the study key ``key``) for a
    model of ``num_layers``."""
    from depthprune.ranking.plan import RankError, resolve_budget
    counts = []
    for i, spec in enumerate(study.budgets if specs is None else specs):
        try:
            counts.append(resolve_budget(spec, num_layers))
        except RankError as exc:
            raise StudyError(f"{study.source}: {key}[{i}]: {exc}") from None
    return sorted(set(counts))


BASELINE = MethodVariant("none", {}, "unpruned")


def expand_cells(study: Study, num_layers: int) -> list[Cell]:
    """Every cell of the study: methods x budgets (plain removal), plus healed cells at the heal
    budgets (for the heal methods, default all), plus repaired cells at the compensate budgets
    (for its methods, default all; repaired and healed where both apply), plus the unpruned
    baseline (budget 0). A repaired cell's ``heal`` holds ``{"compensate": ...}`` (and the
    recipe when it is healed too): what was done after pruning, so it never joins the plain
    cells of a regime comparison."""
    cells = [Cell(BASELINE, 0, None)] if study.baseline else []
    for budget in resolve_budgets(study, num_layers):
        cells += [Cell(v, budget, None) for v in study.methods]
    healed = _treated(study, num_layers, study.heal, "heal")
    cells += [Cell(v, budget, study.heal["recipe"]) for v, budget in healed]
    if study.compensate is not None:
        for v, budget in _treated(study, num_layers, study.compensate, "compensate"):
            repair = {"compensate": compensation_entry(study.compensate, v)}
            cells.append(Cell(v, budget, repair))
            if (v, budget) in healed:
                cells.append(Cell(v, budget, {**repair, **study.heal["recipe"]}))
    return cells


def _treated(study: Study, num_layers: int, section: dict | None, key: str) -> list[tuple[MethodVariant, int]]:
    """(variant, budget) pairs a heal or compensate section applies to."""
    if section is None:
        return []
    names = section["methods"]
    return [(v, budget) for budget in resolve_budgets(study, num_layers, section["budgets"], f"{key}.budgets")
            for v in study.methods if names is None or v.label in names]


def compensation_entry(section: dict, variant: MethodVariant) -> dict[str, Any]:
    """The repair of one variant's cells: the spec and the calibration domains' weights (the
    study's ``compensate.weights``, else the variant's own domain or weights, else every
    calibration domain equally)."""
    from depthprune.data.records import domain_weights
    if section.get("weights"):  # the study's own fit domains, whatever chose the plan
        weights = domain_weights(section["domains"], None, section["weights"])
    else:
        weights = domain_weights(section["domains"], variant.options.get("domain"), variant.options.get("weights"))
    return {**section["spec"], "weights": weights}


#: (sample id, domain, correct 1/0/None, NLL or None) for one eval sample.
Sample = tuple[str, str, int | None, float | None]


@contextlib.contextmanager
def pruned_in_memory(model: nn.Module, remove: Sequence[int]) -> Iterator[nn.Module]:
    """Prune ``model`` in place for the duration of the block, then restore it exactly.

    Unlike :func:`depthprune.pruning.layers_removed` (forwards without a cache only), this runs
    :func:`depthprune.pruning.prune_layers` itself, so ``layer_idx`` and the per-layer config
    fields match the surviving layers and cached generation is correct; on exit the layer
    list, every ``layer_idx`` and the config fields are put back.
    """
    if not remove:
        yield model
        return
    path, layers = find_decoder_layers(model)
    original = list(layers)
    configs = list({id(c): c for c in (model.config, text_config(model))}.values())
    # sub-configs are restored in place (modules hold references to them), not replaced
    saved = [(c, {k: copy.deepcopy(v) for k, v in vars(c).items() if not hasattr(v, "to_dict")})
             for c in configs]
    attrs = [(m, name, getattr(m, name)) for m in model.modules()
             for name in ("layer_idx", "has_sliding_layers") if hasattr(m, name)]
    try:
        prune_layers(model, remove)
        yield model
    finally:
        _set_layers(model, path, nn.ModuleList(original))
        for m, name, value in attrs:
            setattr(m, name, value)
        for c, values in saved:
            vars(c).update(values)


def _nll_only(model: nn.Module, processor: Any, records: Sequence[Record], batch_size: int,
              progress: bool) -> list[Sample]:
    out: list[Sample] = []
    bar = progress_bar(total=len(records), desc="answer NLL", unit="sample", leave=False, disable=not progress)
    for chunk in batches(records, batch_size):
        for r, (nll, _) in zip(chunk, answer_nll(model, processor, chunk)):
            out.append((r.id, r.domain, None, nll))
        bar.update(len(chunk))
    bar.close()
    return out


def evaluate_sets(model: nn.Module, processor: Any, sets: Sequence[tuple[EvalSet, list[Record]]],
                  batch_size: int, max_new_tokens: int, accuracy: bool, progress: bool) -> dict[str, list[Sample]]:
    """Per eval set, every sample's outcome: answer NLL always, generation correctness when
    ``accuracy`` and the set asks for it. lmms-eval sets go through ``depthprune.evaluation.lmms``."""
    results: dict[str, list[Sample]] = {}
    for es, records in sets:
        max_new = es.max_new_tokens or max_new_tokens
        if es.kind == "lmms":  # accuracy only (validated: lmms sets need metrics.accuracy)
            from depthprune.evaluation import lmms
            samples = lmms.sweep_samples(
                model, processor, es.tasks, include_path=es.include_path, limit=es.max_samples,
                batch_size=batch_size, max_new_tokens=es.max_new_tokens)
            results[es.name] = [(sid, es.domain or dom, c, nll) for sid, dom, c, nll in samples]
        elif accuracy and es.accuracy:
            res = evaluate(model, processor, records, batch_size=batch_size, max_new_tokens=max_new,
                           progress=progress)
            results[es.name] = [(p.id, p.domain, int(p.correct), p.nll) for p in res.predictions]
        else:
            results[es.name] = _nll_only(model, processor, records, batch_size, progress)
    return results


def heal_copy(model: nn.Module, processor: Any, remove: Sequence[int], recipe: dict[str, Any],
              records: Sequence[Record], progress: bool,
              log_file: str | Path | None = None, teacher: nn.Module | None = None) -> nn.Module:
    """A pruned, healed deep copy of ``model`` (the original is untouched); the training log
    goes to ``log_file`` (JSON lines). ``teacher``: the model it distils from (None: no distillation)."""
    from depthprune.healing.recipe import HealConfig, TrainingFiles
    from depthprune.healing.trainer import heal_model
    student = prune_layers(copy.deepcopy(model), remove)
    if log_file is not None:
        Path(log_file).unlink(missing_ok=True)  # a cell interrupted earlier starts its log again
    heal_model(student, processor, records, HealConfig(**recipe), teacher=teacher,
               removed_layers=list(remove), files=TrainingFiles(log_file=log_file), progress=progress)
    return student


def evaluate_plan(net: nn.Module, processor: Any, study: Study, inputs: Any, remove: list[int], heal: dict | None,
                  log_file: Path | None = None, progress: bool = False) -> dict[str, list[Sample]]:
    """Every eval set's per-sample outcomes for one plan: pruned in memory (``net`` is restored
    after), repaired in place and restored (a ``compensate`` entry in ``heal``), or pruned and
    healed on a copy (training log to ``log_file``). ``inputs``: the sweep's loaded records
    (``eval_sets``, ``calib``, ``heal_records``) and its ``encodings`` (an EncodingCache kept
    across plans). A pure function of the weights, the plan and the data, so any process
    holding the same model gives the same outcomes."""
    def measure(model: nn.Module) -> dict[str, list[Sample]]:
        with kept_encodings(inputs.encodings):
            return evaluate_sets(model, processor, inputs.eval_sets, study.batch_size, study.max_new_tokens,
                                 study.accuracy, progress)
    recipe = dict(heal or {})
    repair = recipe.pop("compensate", None)
    start = None  # the model healing starts from: a repaired copy, when the cell is repaired
    with contextlib.ExitStack() as stack:
        if repair is not None:  # folded into the kept layers in place, restored on exit
            stack.enter_context(_repaired(net, processor, study, inputs.calib, remove, repair, progress))
        if not recipe:
            with pruned_in_memory(net, remove):
                return measure(net)
        if repair is not None:
            start = copy.deepcopy(net)
    student = heal_copy(start or net, processor, remove, recipe, inputs.heal_records, progress,
                        log_file=log_file, teacher=net if study.heal["distill"] else None)
    return measure(student)


def _repaired(net: nn.Module, processor: Any, study: Study, calib: list[Record], remove: list[int], repair: dict,
              progress: bool) -> Any:
    """A context in which ``net``'s kept layers carry the compensation of ``remove`` (fitted on the
    study's calibration records, each domain capped like scoring)."""
    from depthprune.compensation import Compensation
    from depthprune.compensation.fit import compensated
    from depthprune.scoring.forward import cap_per_domain
    spec = Compensation(repair["method"], repair["ridge"], repair["tokens"])
    return compensated(net, processor, cap_per_domain(calib, study.calib_max_samples), remove,
                       repair["weights"], spec, study.batch_size, progress)


def cell_rows(cell: Cell, removed: list[int], num_layers: int, results: dict[str, list[Sample]],
              seconds: float) -> list[ResultRow]:
    """One row per (eval set, domain) for ``cell``, with the per-sample outcomes for paired tests."""
    rows = []
    for eval_set, samples in results.items():
        for domain in sorted({s[1] for s in samples}):
            mine = [s for s in samples if s[1] == domain]
            correct = [s[2] for s in mine]
            nlls = [x for x in (finite_or_none(s[3]) for s in mine) if x is not None]
            acc = ci = None
            if correct and all(c is not None for c in correct):
                k = sum(correct)  # type: ignore[arg-type]
                acc, ci = k / len(mine), wilson_interval(k, len(mine))
            rows.append(ResultRow(
                cell=cell.key, method=cell.variant.method, label=cell.variant.label,
                options=cell.variant.options, budget=cell.budget, budget_fraction=cell.budget / num_layers,
                removed=list(removed), heal=cell.heal, eval_set=eval_set, domain=domain, n=len(mine),
                accuracy=acc, ci_low=None if ci is None else ci[0], ci_high=None if ci is None else ci[1],
                nll=math.fsum(nlls) / len(nlls) if nlls else None,
                samples=[(s[0], s[2], finite_or_none(s[3])) for s in mine], seconds=round(seconds, 3)))
    return rows
