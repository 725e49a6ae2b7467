"""A study: the YAML file `depthprune sweep` runs, validated before any model loads.

A study names one model, its calibration data, the eval sets, the ranking methods (with
options; a list-valued option expands into one variant per value), the budgets, and
optionally a healing recipe applied at some budgets. :func:`load_study` checks every key and
raises :class:`StudyError` naming it (``study.yaml: methods[2].weights: ...``);
:func:`expand_cells` turns a study into the grid of cells once the layer count is known.

Example (paths are relative to the study file)::

    model: Qwen/Qwen3-VL-2B-Instruct
    dtype: bfloat16
    device: cuda
    calibration: {data: [calib.jsonl], max_samples: 64}
    eval:
      - {data: eval.jsonl, max_samples: 200}          # built-in evaluator (kind: jsonl)
      - {kind: lmms, tasks: [mmstar, ai2d], limit: 500}
    methods:
      - {method: domain, domain: [math, general]}
      - {method: mixed, weights: [{math: 0.7, general: 0.3}, {math: 0.5, general: 0.5}]}
      - {method: random, seed: [0, 1, 2]}
      - block-influence
    budgets: [0.05, 0.1, 0.25, 0.5]
    heal: {recipe: {mode: lora, steps: 200}, budgets: [0.25], methods: [domain:math]}
    compensate: {method: refit, budgets: [0.25]}     # training-free repair (and before healing)
    metrics: {accuracy: true, max_new_tokens: 16}
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthprune.messages import one_line, show
from depthprune.outputs import file_sha256
from depthprune.ranking.methods import METHODS, unread_options
from depthprune.ranking.plan import RankRequest, parse_weights
from depthprune.ranking.protection import Protection
from depthprune.study.schema import Compensate, Heal, JsonlEval, LmmsEval, StudyError, StudyFile, validate_shape

#: Keys of RankRequest set by the study itself, not per method.
_STUDY_LEVEL = ("method", "budget", "allow_deepstack", "protect_first", "protect_last")


def method_option_keys() -> list[str]:
    """Options a method entry may set: every RankRequest field except the study-level ones
    (so options added by new methods, e.g. `ablation`, pass through)."""
    return [f.name for f in dataclasses.fields(RankRequest) if f.name not in _STUDY_LEVEL]


@dataclass
class EvalSet:
    """One eval set: a JSONL file (built-in evaluator) or lmms-eval tasks."""

    name: str
    kind: str                      # "jsonl" | "lmms"
    paths: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    max_samples: int | None = None  # jsonl: first N per domain; lmms: limit per task
    accuracy: bool = True
    max_new_tokens: int | None = None  # None: the study's metrics.max_new_tokens (lmms: the task's own)
    include_path: str | None = None    # lmms: a directory of local task YAML files
    domain: str | None = None          # lmms: pool every task under this domain (default: each
    #                                    task's metadata.domain, else the task name)


@dataclass
class MethodVariant:
    """One ranking method with fixed options; ``label`` is its display name."""

    method: str
    options: dict[str, Any]
    label: str


@dataclass
class Study:
    """A validated study. ``source`` is the file it came from (for messages); paths are absolute."""

    model: str
    calibration: list[str]
    eval_sets: list[EvalSet]
    methods: list[MethodVariant]
    budgets: list[int | float]
    dtype: str = "auto"
    device: str = "cpu"
    device_map: str | None = None
    trust_remote_code: bool = False
    prompt_format: str = "auto"               # how prompts are written (ModelSpec.prompt_format)
    batch_size: int = 8
    calib_max_samples: int | None = None
    max_span: int | None = None
    ablation: bool = False                    # also measure single-layer ablation (score --ablation)
    protect: Protection = field(default_factory=Protection)
    heal: dict[str, Any] | None = None        # {"recipe": {...}, "budgets": [...], "methods": [...]|None, "data": [...]|None, "distill": bool}
    compensate: dict[str, Any] | None = None  # {"spec": {method, ridge, tokens}, "budgets": [...], "methods": [...]|None, "domains": [...]}
    accuracy: bool = True
    max_new_tokens: int = 16
    baseline: bool = True
    source: str = "study"
    raw: dict[str, Any] = field(default_factory=dict)
    file: str | None = None                    # the study file's absolute path (None: built in memory)

    def reads(self, owned: list[Path] | tuple = ()) -> Any:
        """What the study reads (:class:`depthprune.outputs.Inputs`): the model, every data file
        (with its images), the lmms-eval task folders, the study file; ``owned``: folders inside
        the run directory that belong to it."""
        from depthprune.models.loading import resolve_model_id
        from depthprune.outputs import inputs_of
        data = list(self.calibration) + [p for e in self.eval_sets for p in e.paths]
        data += list((self.heal or {}).get("data") or [])
        return inputs_of(model=resolve_model_id(self.model), data=data, study=self.file, owned=owned,
                         folders=[e.include_path for e in self.eval_sets])

    def identity(self, legacy: bool = False) -> dict[str, Any]:
        """What must not change when a run directory is resumed (it changes every number). Data
        files count by content (sha256 of each file), not by path, so a run directory whose
        data moved with it (the demo's) resumes. ``legacy``: the form stores written before
        2026-12-02 hold (absolute paths), to resume those in place."""
        evals = [dataclasses.asdict(e) for e in self.eval_sets]
        calibration: list[str] = self.calibration
        if not legacy:
            # 16 hex characters: the run identity keeps the short form it always had (runs resume)
            calibration = [file_sha256(p)[:16] for p in self.calibration]
            evals = [e | {"paths": [file_sha256(p)[:16] for p in e["paths"]]} for e in evals]
        out = {"model": self.model, "dtype": self.dtype, "calibration": calibration,
               "calib_max_samples": self.calib_max_samples, "max_span": self.max_span,
               "ablation": self.ablation, "batch_size": self.batch_size, "protect": self.protect.as_study(),
               "eval": evals, "max_new_tokens": self.max_new_tokens}
        if self.prompt_format != "auto":  # absent when auto: stores written before it existed still resume
            out["prompt_format"] = self.prompt_format
        return out if legacy else {"version": 2, **out}


# ------------------------------------------------------------------------- validation
def _err(src: str, key: str, msg: str) -> StudyError:
    return StudyError(f"{src}: {key}: {msg}")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _paths(src: str, key: str, paths: list[str], base: Path) -> list[str]:
    """Absolute paths of ``paths`` (relative to the study file's folder ``base``; ``~`` expanded),
    each an existing file."""
    out = []
    for i, p in enumerate(paths):
        path = (base / Path(p).expanduser()).resolve()
        if not path.is_file():
            raise _err(src, f"{key}[{i}]", f"file {path} not found (paths are relative to the study file)")
        out.append(str(path))
    return out


def _model(src: str, model: str, base: Path) -> str:
    """The study's ``model``: a local path relative to the study file (like every path in it;
    ``~`` expanded) becomes absolute; a name with no such path stays as given (a hub id, or
    the ``toy`` / ``smollm2`` aliases)."""
    path = base / Path(model).expanduser()
    if path.exists():
        return str(path.resolve())
    if Path(model).expanduser().is_absolute() or model.startswith((".", "~")) or model.endswith(".gguf"):
        raise _err(src, "model", f"{path} not found (paths are relative to the study file)")
    return model


def _weights(src: str, key: str, value: Any) -> dict[str, float]:
    try:
        if isinstance(value, str):
            return parse_weights(value)
        if isinstance(value, dict) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value.values()):
            if sum(value.values()) <= 0:
                raise ValueError("weights must not all be zero")
            return {str(k): float(v) for k, v in sorted(value.items())}
        raise ValueError("expected a mapping domain: weight (non-negative numbers), e.g. {math: 0.7, general: 0.3}")
    except ValueError as exc:
        raise _err(src, key, str(exc)) from None


def variant_label(method: str, options: dict[str, Any]) -> str:
    """Display name of a method with options, e.g. ``domain:math``, ``mixed:general=0.3,math=0.7``,
    ``random:seed=1``, ``domain:math@last`` (token group ``last``)."""
    parts = []
    for key, value in sorted(options.items()):
        if key == "token_group":
            continue
        if key == "domain":
            parts.insert(0, str(value))
        elif key == "weights":
            parts.append(",".join(f"{d}={w:g}" for d, w in sorted(value.items())))
        else:
            parts.append(f"{key}={value}")
    label = method + (":" + ",".join(parts) if parts else "")
    if "token_group" in options:
        label += f"@{options['token_group']}"
    return label


def _option(src: str, key: str, opt: str, value: Any, domains: set[str]) -> Any:
    """One value of a method option, checked and normalised."""
    if opt == "weights":
        weights = _weights(src, key, value)
        if set(weights) - domains:
            raise _err(src, key, f"domain(s) {sorted(set(weights) - domains)} not in the calibration "
                                 f"data (domains: {', '.join(sorted(domains))})")
        return weights
    if opt == "domain":
        if not isinstance(value, str) or not value.strip():
            raise _err(src, key, f"expected a non-empty string, got {show(value)}")
        if value not in domains:
            raise _err(src, key, f"domain {show(value)} is not in the calibration data "
                                 f"(domains: {', '.join(sorted(domains))})")
        return value
    if opt == "seed" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise _err(src, key, f"expected an integer >= 0, got {show(value)}")
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise _err(src, key, f"expected a scalar value (or a list of them), got {show(value)}")
    return value


def _check_variant(src: str, key: str, name: str, options: dict[str, Any], domains: set[str]) -> None:
    """Every check of a rank request that needs neither scores nor a model (the one ``rank`` runs:
    e.g. an unknown ``base``, or ``iterative`` on ``base: ablation``), so such a variant stops the
    study before anything loads instead of being skipped, cell by cell, after the scoring pass."""
    from depthprune.ranking.methods import check_request
    from depthprune.ranking.plan import RankError
    try:
        check_request(RankRequest(method=name, budget=1, **options), sorted(domains), where="calibration data")
    except RankError as exc:
        where = next((f"{key}.{opt}" for opt in ("base", "token_group", "domain") if opt in options
                      and opt.replace("_", " ") in str(exc)), key)
        raise _err(src, where, str(exc)) from None


def _methods(src: str, raw: list, domains: set[str]) -> list[MethodVariant]:
    allowed = method_option_keys()
    variants: dict[str, MethodVariant] = {}
    for i, entry in enumerate(raw):
        key = f"methods[{i}]"
        entry = {"method": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "method" not in entry:
            raise _err(src, key, "expected a method name or a mapping with a 'method' key")
        name = entry["method"]
        if not isinstance(name, str) or name not in METHODS:
            raise _err(src, f"{key}.method", f"unknown method {show(name)}; choose one of {', '.join(METHODS)}")
        unknown = sorted(set(entry) - {"method", *allowed})
        if unknown:
            raise _err(src, f"{key}.{unknown[0]}", f"unknown key; allowed here: {', '.join(sorted(['method', *allowed]))}")
        ignored = unread_options(name, {k: v for k, v in entry.items() if k != "method"})
        if ignored:
            raise _err(src, f"{key}.{ignored[0]}", f"method {name!r} does not read {ignored[0]!r}; drop it (it reads: "
                                                   f"{', '.join(METHODS[name].reads) or 'no method options'})")
        axes: list[list[tuple[str, Any]]] = []
        for opt in sorted(k for k in entry if k != "method"):
            values = _as_list(entry[opt])
            if not values:
                raise _err(src, f"{key}.{opt}", "empty list")
            axes.append([(opt, _option(src, f"{key}.{opt}" + (f"[{j}]" if isinstance(entry[opt], list) else ""),
                                       opt, v, domains)) for j, v in enumerate(values)])
        for combo in itertools.product(*axes) if axes else [()]:
            options = dict(combo)  # options given explicitly stay in the label, defaults too
            if name == "domain" and "domain" not in options:
                raise _err(src, f"{key}.domain", "method 'domain' needs a domain, e.g. domain: [math, general]")
            _check_variant(src, key, name, options, domains)
            label = variant_label(name, options)
            variants.setdefault(label, MethodVariant(name, options, label))
    return list(variants.values())


def _eval_sets(src: str, specs: list[JsonlEval | LmmsEval], base: Path) -> list[EvalSet]:
    sets: list[EvalSet] = []
    for i, spec in enumerate(specs):
        key = f"eval[{i}]"
        if isinstance(spec, JsonlEval):
            paths = _paths(src, f"{key}.data", spec.data, base)
            es = EvalSet(spec.name or Path(paths[0]).stem, "jsonl", paths=paths, max_samples=spec.max_samples)
        else:
            from depthprune.evaluation.lmms import missing_packages
            missing = missing_packages()
            if missing:
                raise _err(src, f"{key}.kind", f"lmms-eval sets need the lmms-eval package (missing: "
                                               f"{', '.join(missing)}): pip install 'depthprune[lmms]'")
            if not spec.accuracy:
                raise _err(src, f"{key}.accuracy", "lmms-eval sets measure accuracy only (no answer NLL): "
                                                   "drop accuracy: false or the set")
            es = EvalSet(spec.name, "lmms", tasks=list(spec.tasks), max_samples=spec.limit, domain=spec.domain)
            if spec.include_path is not None:
                include = base / Path(spec.include_path).expanduser()
                if not include.is_dir():
                    raise _err(src, f"{key}.include_path", f"{include}: not a directory of lmms-eval task YAML files")
                es.include_path = str(include.resolve())
        es.accuracy, es.max_new_tokens = spec.accuracy, spec.max_new_tokens
        if any(s.name == es.name for s in sets):
            raise _err(src, f"{key}.name", f"eval set name {show(es.name)} is used twice; give each a distinct name")
        sets.append(es)
    return sets


def _heal(src: str, spec: Heal | None, base: Path, labels: list[str]) -> dict[str, Any] | None:
    if spec is None:
        return None
    from depthprune.healing.recipe import HealConfig, missing_packages
    if missing_packages():
        raise _err(src, "heal", f"healing needs {', '.join(missing_packages())}: pip install 'depthprune[heal]', "
                                "or remove the heal section")
    known = {f.name for f in dataclasses.fields(HealConfig)}
    unknown = sorted(set(spec.recipe) - known)
    if unknown:
        raise _err(src, f"heal.recipe.{unknown[0]}", f"unknown key; allowed here: {', '.join(sorted(known))}")
    try:
        config = HealConfig(**spec.recipe)
    except (ValueError, TypeError) as exc:
        raise _err(src, "heal.recipe", str(exc)) from None
    recipe = dict(spec.recipe)
    if config.time_budget is not None:
        # a recipe without steps or epochs trains for the default time budget: say so in the
        # study's identity, so a run directory healed under another default is not resumed
        recipe["time_budget"] = config.time_budget
    missing = [m for m in spec.methods or [] if m not in labels]
    if missing:
        raise _err(src, "heal.methods", f"{show(missing[0])} is not one of the study's methods ({', '.join(labels)})")
    data = _paths(src, "heal.data", spec.data, base) if spec.data is not None else None
    return {"recipe": dict(sorted(recipe.items())), "budgets": list(spec.budgets), "methods": spec.methods,
            "data": data, "distill": spec.distill}


def _compensate(src: str, spec: Compensate | None, labels: list[str], domains: set[str]) -> dict[str, Any] | None:
    if spec is None:
        return None
    missing = [m for m in spec.methods or [] if m not in labels]
    if missing:
        raise _err(src, "compensate.methods", f"{missing[0]!r} is not one of the study's methods ({', '.join(labels)})")
    if spec.weights is not None:
        unknown = sorted(set(spec.weights) - domains)
        if unknown or not any(w > 0 for w in spec.weights.values()):
            raise _err(src, "compensate.weights", f"give positive weights to calibration domains ({', '.join(sorted(domains))})"
                       + (f"; {unknown[0]!r} is not one" if unknown else ""))
    return {"spec": {"method": spec.method, "ridge": spec.ridge, "tokens": spec.tokens},
            "budgets": list(spec.budgets), "methods": spec.methods, "domains": sorted(domains),
            "weights": spec.weights}


def parse_study(raw: Any, base: Path, source: str = "study") -> Study:
    """Validate a study given as a dict (paths relative to ``base``): its shape with
    :class:`~depthprune.study.schema.StudyFile`, then files, domains, methods and the healing
    recipe. Loads only the calibration records' domain labels, never a model."""
    src = source
    shape: StudyFile = validate_shape(raw, src)
    calib_paths = _paths(src, "calibration.data", shape.calibration.data, base)
    from depthprune.data.records import load_records
    calib_records = load_records(calib_paths)
    if shape.calibration.ablation:  # its answer NLL needs answers: say so before any model loads
        from depthprune.scoring.ablation import require_answers
        require_answers(calib_records)
    eval_sets = _eval_sets(src, shape.eval, base)
    methods = _methods(src, shape.methods, {r.domain for r in calib_records})
    for m in methods:  # measured damage comes from the scoring pass: ask for it up front
        if (m.method == "ablation" or m.options.get("base") == "ablation") and not shape.calibration.ablation:
            raise _err(src, "calibration.ablation", f"method {m.label!r} ranks by single-layer ablation damage: set "
                                                    "calibration.ablation: true (or drop the method)")
    metrics = shape.metrics
    if not metrics.accuracy and any(e.kind == "lmms" for e in eval_sets):
        raise _err(src, "metrics.accuracy", "false leaves the lmms-eval sets nothing to measure (they give "
                                            "accuracy only): set it true or drop those sets")
    return Study(
        model=_model(src, shape.model, base), calibration=calib_paths, eval_sets=eval_sets, methods=methods,
        budgets=list(shape.budgets), dtype=shape.dtype, device=shape.device, device_map=shape.device_map,
        trust_remote_code=shape.trust_remote_code, prompt_format=shape.prompt_format, batch_size=shape.batch_size,
        calib_max_samples=shape.calibration.max_samples, max_span=shape.calibration.max_span,
        ablation=shape.calibration.ablation,
        protect=Protection(shape.protect.allow_deepstack, shape.protect.first, shape.protect.last),
        heal=_heal(src, shape.heal, base, [m.label for m in methods]),
        compensate=_compensate(src, shape.compensate, [m.label for m in methods], {r.domain for r in calib_records}),
        accuracy=metrics.accuracy, max_new_tokens=metrics.max_new_tokens, baseline=shape.baseline,
        source=src, raw=raw)


#: A study file is a page of YAML: larger files, more aliases than a hand-written file needs, and
#: aliases that expand to more than MAX_ALIAS_EXPANSION values beyond those written (a "billion
#: laughs" alias bomb: nested anchors, each repeating the one before) are refused before any
#: Python value is built.
MAX_STUDY_BYTES, MAX_ALIASES, MAX_ALIAS_EXPANSION = 1 << 20, 100, 10_000


def _expanded_size(root: Any) -> tuple[int, int] | None:
    """(values written, values with every alias written out) of a composed YAML node graph,
    counted on the graph (each node once: time and memory grow with the file, not with the
    expansion); None if an alias refers to a node that contains it (an endless value)."""
    import yaml

    def children(node: Any) -> list:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # started, not finished: the ancestors of the node in work
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children(node))
            continue
        if id(node) in sizes:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children(node):
            if id(child) in open_nodes:
                return None
            if id(child) not in sizes:
                stack.append((child, False))
    return len(sizes), sizes[id(root)]


def read_yaml(path: Path, what: str = "study file") -> Any:
    """Parse a YAML file strictly: UTF-8 text of at most 1 MiB, no key given twice in a mapping
    (YAML would keep the last silently), at most :data:`MAX_ALIASES` aliases, expanding to at
    most :data:`MAX_ALIAS_EXPANSION` values more than the file writes out. StudyError names the
    file, the line and the fix."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                StrictLoader.aliases += 1
                if StrictLoader.aliases > MAX_ALIASES:
                    raise StudyError(f"{path}: more than {MAX_ALIASES} YAML aliases (*name); write the values out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise StudyError(f"{path}: line {key_node.start_mark.line + 1}: key {show(key)} is given "
                                     "twice in one mapping; keep one")
                seen.add(key)
            return super().construct_mapping(node, deep)

    if not path.is_file():
        raise StudyError(f"{path}: {what} not found")
    if path.stat().st_size > MAX_STUDY_BYTES:
        raise StudyError(f"{path}: {path.stat().st_size} bytes is not a {what} (at most {MAX_STUDY_BYTES})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StudyError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                         f"save the {what} as UTF-8") from None
    loader = StrictLoader(text)  # noqa: S506 - a SafeLoader subclass
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size is None:
            raise StudyError(f"{path}: a YAML alias (*name) refers to the value that contains it (an endless "
                             "value); write the values out")
        written, expanded = size
        if expanded - written > MAX_ALIAS_EXPANSION:
            raise StudyError(f"{path}: its YAML aliases (*name) expand to {expanded:,} values, {written:,} written "
                             f"out (at most {MAX_ALIAS_EXPANSION:,} more allowed); write the values out")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    except RecursionError:
        raise StudyError(f"{path}: YAML nested too deeply to be a {what}; flatten it") from None
    except StudyError:
        raise
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise StudyError(f"{path}: not valid YAML ({one_line(str(exc), 200)})") from None
    finally:
        loader.dispose()


def load_study(path: str | Path) -> Study:
    """Read and validate a study YAML file; raises StudyError naming the file and key."""
    path = Path(path).expanduser()
    study = parse_study(read_yaml(path), path.parent.resolve(), source=path.name)
    study.file = str(path.resolve())
    return study


def relative_to(path: str, base: Path | None) -> str:
    """``path`` relative to ``base`` when it lies inside it (a run directory's own data), else as it is."""
    if base is None:
        return path
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return path


def study_dict(study: Study, base: Path | None = None) -> dict[str, Any]:
    """The validated study as plain data, for study.yaml and the store's meta: paths are absolute,
    or relative to ``base`` (the run directory) for files inside it, so the file is a valid study
    there and a moved run directory still finds its own data."""
    rel = [relative_to(p, base) for p in study.calibration]
    out: dict[str, Any] = {
        "model": study.model, "dtype": study.dtype, "device": study.device, "device_map": study.device_map,
        "trust_remote_code": study.trust_remote_code, "prompt_format": study.prompt_format,
        "batch_size": study.batch_size, "calibration": {"data": rel, "max_samples": study.calib_max_samples,
                        "max_span": study.max_span, "ablation": study.ablation},
        "eval": [({"kind": "jsonl", "name": e.name, "data": [relative_to(p, base) for p in e.paths],
                   "max_samples": e.max_samples}
                  if e.kind == "jsonl" else {"kind": "lmms", "name": e.name, "tasks": e.tasks,
                                             "include_path": e.include_path, "domain": e.domain,
                                             "limit": e.max_samples}) | {"accuracy": e.accuracy,
                                                                         "max_new_tokens": e.max_new_tokens}
                 for e in study.eval_sets],
        "methods": [{"method": m.method, **m.options} for m in study.methods],
        "budgets": study.budgets, "protect": study.protect.as_study(), "metrics": {"accuracy": study.accuracy,
                                                                        "max_new_tokens": study.max_new_tokens},
        "baseline": study.baseline,
    }
    if study.heal is not None:
        out["heal"] = {k: v for k, v in study.heal.items() if v is not None}
    if study.compensate is not None:
        out["compensate"] = {**study.compensate["spec"], "budgets": study.compensate["budgets"]} | (
            {"methods": study.compensate["methods"]} if study.compensate["methods"] else {}) | (
            {"weights": study.compensate["weights"]} if study.compensate.get("weights") else {})
    return json.loads(json.dumps(out))
