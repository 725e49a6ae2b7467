"""The Scores file: what one scoring pass measured, per sample, per layer, per span.

This is the contract between the scorer (which fills it from one forward pass) and the
rankers (which never touch the model). Everything is kept as per-sample *sums and counts*,
so that shards from several processes merge by concatenation, domain means are exact, and
rankings can be bootstrapped over samples.

Indexing (0-based everywhere): ``span[l, n-1]`` compares the *input* of decoder layer
``l`` with the *output* of layer ``l+n-1``, i.e. what the block of ``n`` layers starting
at ``l`` does. ``n = 1`` is the layer's own input/output similarity. Entries with
``l + n > num_layers`` are zero and never read.

On disk: ``scores.json`` (metadata, per-domain means, human-readable) plus
``scores.safetensors`` beside it (the per-sample arrays).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from depthprune.options import is_int
from depthprune.outputs import atomic_files, check_output

#: Token groups, in the order of the group axis.
GROUPS = ("all", "text", "image", "last")
#: Statistics, in the order of the stat axis: cosine similarity, and angular distance
#: arccos(cos)/pi (Gromov et al.), each summed over the tokens of a group.
STATS = ("cos", "angle")

SCORES_FORMAT_VERSION = 1


class ScoresError(ValueError):
    """A scores file is missing, malformed, or does not fit the request."""


@dataclass
class Scores:
    """Per-sample similarity sums of one scoring pass.

    ``sums``: float64 ``[num_samples, len(STATS), len(GROUPS), num_layers, max_span]``,
    the sum over a sample's tokens of each statistic. ``counts``: int64
    ``[num_samples, len(GROUPS)]``, the number of tokens of each group in each sample
    (the same for every layer and span).
    """

    model_id: str
    num_layers: int
    max_span: int
    sample_ids: list[str]
    sample_domains: list[str]
    sums: torch.Tensor
    counts: torch.Tensor
    protected_layers: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    #: optional single-layer ablation (``depthprune score --ablation``): float64 ``[num_samples]``
    #: teacher-forced answer NLL of the full model (nats/token), and ``[num_samples, num_layers]``
    #: the same with layer ``l`` removed. Both or neither.
    base_nll: torch.Tensor | None = None
    ablation_nll: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.sample_ids)
        if (self.base_nll is None) != (self.ablation_nll is None):
            raise ScoresError("base_nll and ablation_nll must be given together")
        if self.base_nll is not None:
            if tuple(self.base_nll.shape) != (n,) or tuple(self.ablation_nll.shape) != (n, self.num_layers):
                raise ScoresError(f"ablation arrays have shapes {tuple(self.base_nll.shape)} and "
                                  f"{tuple(self.ablation_nll.shape)}, expected {(n,)} and {(n, self.num_layers)}")
        want = (n, len(STATS), len(GROUPS), self.num_layers, self.max_span)
        if tuple(self.sums.shape) != want:
            raise ScoresError(f"sums has shape {tuple(self.sums.shape)}, expected {want}")
        if tuple(self.counts.shape) != (n, len(GROUPS)):
            raise ScoresError(f"counts has shape {tuple(self.counts.shape)}, expected {(n, len(GROUPS))}")
        if len(self.sample_domains) != n:
            raise ScoresError("sample_domains and sample_ids differ in length")
        if not 1 <= self.max_span <= self.num_layers:
            raise ScoresError(f"max_span {self.max_span} outside 1..{self.num_layers}")

    # ------------------------------------------------------------------ queries
    @property
    def domains(self) -> list[str]:
        """Domain labels present, sorted."""
        return sorted(set(self.sample_domains))

    def sample_mask(self, domain: str | None = None) -> torch.Tensor:
        """Boolean mask over samples of ``domain`` (all samples if None)."""
        if domain is None:
            return torch.ones(len(self.sample_ids), dtype=torch.bool)
        if domain not in self.domains:
            raise ScoresError(f"domain '{domain}' is not in the scores; present: {', '.join(self.domains)}")
        return torch.tensor([d == domain for d in self.sample_domains], dtype=torch.bool)

    def mean(self, stat: str = "cos", group: str = "all", domain: str | None = None,
             span: int = 1, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Token-weighted mean of ``stat`` for blocks of ``span`` layers, per start layer.

        Returns float64 ``[num_layers - span + 1]``; entry ``l`` is the mean over all
        tokens of ``group`` in the selected samples of the statistic between the input of
        layer ``l`` and the output of layer ``l + span - 1``. ``samples`` is an index
        tensor (repeats allowed, for bootstrap) applied after the domain filter.
        Raises ScoresError if the selection has no tokens of ``group``.
        """
        if stat not in STATS or group not in GROUPS:
            raise ScoresError(f"unknown stat/group {stat}/{group}; stats {STATS}, groups {GROUPS}")
        if not 1 <= span <= self.max_span:
            raise ScoresError(f"span {span} outside the scored range 1..{self.max_span}; "
                              "re-run `depthprune score` with a larger --max-span")
        idx = torch.nonzero(self.sample_mask(domain)).flatten()
        if samples is not None:
            idx = idx[samples]
        s, g = STATS.index(stat), GROUPS.index(group)
        total = self.sums[idx, s, g, : self.num_layers - span + 1, span - 1].sum(0)
        count = self.counts[idx, g].sum()
        if count == 0:
            raise ScoresError(f"no '{group}' tokens in {'domain ' + domain if domain else 'the data'}; "
                              "choose another --token-group")
        return total / count

    @property
    def has_ablation(self) -> bool:
        """True if the file holds single-layer ablation NLLs (``score --ablation``)."""
        return self.ablation_nll is not None

    def ablation_damage(self, domain: str | None = None, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the selected samples of (answer NLL with layer ``l`` removed - full
        model's answer NLL), nats/token, float64 ``[num_layers]``: the cost of removing each
        single layer. Raises ScoresError if the scores hold no ablation or no sample."""
        if self.ablation_nll is None:
            raise ScoresError("these scores hold no single-layer ablation; re-run `depthprune score "
                              "--ablation` (the data needs answers)")
        idx = torch.nonzero(self.sample_mask(domain)).flatten()
        if samples is not None:
            idx = idx[samples]
        if len(idx) == 0:
            raise ScoresError(f"no samples in {'domain ' + domain if domain else 'the scores'}")
        return (self.ablation_nll[idx] - self.base_nll[idx, None]).mean(0)

    def select(self, index: torch.Tensor) -> "Scores":
        """The samples at ``index`` (repeats allowed), e.g. a bootstrap resample."""
        idx = index.tolist()
        return Scores(model_id=self.model_id, num_layers=self.num_layers, max_span=self.max_span,
                      sample_ids=[self.sample_ids[i] for i in idx],
                      sample_domains=[self.sample_domains[i] for i in idx],
                      sums=self.sums[index], counts=self.counts[index],
                      protected_layers=self.protected_layers, settings=dict(self.settings),
                      base_nll=None if self.base_nll is None else self.base_nll[index],
                      ablation_nll=None if self.ablation_nll is None else self.ablation_nll[index])

    # ------------------------------------------------------------------ combine
    @staticmethod
    def merge(shards: list["Scores"]) -> "Scores":
        """Concatenate the samples of shards scored with the same model and settings."""
        if not shards:
            raise ScoresError("nothing to merge")
        first = shards[0]
        for other in shards[1:]:
            if (other.model_id, other.num_layers, other.max_span) != (first.model_id, first.num_layers, first.max_span):
                raise ScoresError("cannot merge scores of different models, layer counts or spans")
        ablated = [s.has_ablation for s in shards]
        if any(ablated) and not all(ablated):
            raise ScoresError("cannot merge shards with and without ablation; score every shard with "
                              "--ablation, or none")
        return Scores(
            model_id=first.model_id, num_layers=first.num_layers, max_span=first.max_span,
            sample_ids=[i for s in shards for i in s.sample_ids],
            sample_domains=[d for s in shards for d in s.sample_domains],
            sums=torch.cat([s.sums for s in shards]), counts=torch.cat([s.counts for s in shards]),
            protected_layers=first.protected_layers, settings=dict(first.settings),
            base_nll=torch.cat([s.base_nll for s in shards]) if all(ablated) else None,
            ablation_nll=torch.cat([s.ablation_nll for s in shards]) if all(ablated) else None,
        )

    # ------------------------------------------------------------------ disk
    def fingerprint(self) -> str:
        """sha256 of the arrays and sample labels: identical scores, identical fingerprint."""
        h = hashlib.sha256()
        h.update(json.dumps([self.model_id, self.num_layers, self.max_span, self.protected_layers,
                             self.sample_ids, self.sample_domains]).encode())
        h.update(self.sums.numpy().tobytes())
        h.update(self.counts.numpy().tobytes())
        if self.has_ablation:  # absent: the fingerprint of files written before ablation existed
            h.update(self.base_nll.numpy().tobytes())
            h.update(self.ablation_nll.numpy().tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        """Per-domain per-layer mean cosine of every token group (NaN-free: missing groups omitted)."""
        out: dict = {}
        for domain in self.domains:
            out[domain] = {}
            for group in GROUPS:
                try:
                    out[domain][group] = [round(float(v), 6) for v in self.mean("cos", group, domain)]
                except ScoresError:
                    continue
        return out

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``path`` (JSON) and ``path`` with suffix ``.safetensors``; returns the JSON path.

        Both files are written to temporaries first and published together (the JSON last,
        as the completion mark). Without ``overwrite`` an existing file of either name is an
        OutputError and is never replaced.
        """
        path = Path(path)
        if path.suffix != ".json":
            raise ScoresError(f"{path}: the scores file name must end in .json")
        tensors_path = path.with_suffix(".safetensors")
        for target in (path, tensors_path):
            check_output(target, overwrite, kind="file")
        meta = {
            "format_version": SCORES_FORMAT_VERSION,
            "model_id": self.model_id,
            "num_layers": self.num_layers,
            "max_span": self.max_span,
            "groups": list(GROUPS),
            "stats": list(STATS),
            "indexing": "0-based decoder layers; span[l, n-1] = input of layer l vs output of layer l+n-1",
            "protected_layers": self.protected_layers,
            "settings": self.settings,
            "fingerprint": self.fingerprint(),
            "tensors": tensors_path.name,
            "domains": {d: int(self.sample_mask(d).sum()) for d in self.domains},
            "mean_cosine": self.summary(),
            "sample_ids": self.sample_ids,
            "sample_domains": self.sample_domains,
        }
        tensors = {"sums": self.sums.contiguous(), "counts": self.counts.contiguous()}
        if self.has_ablation:
            meta["ablation_damage"] = {d: [round(float(v), 6) for v in self.ablation_damage(d)]
                                       for d in self.domains}
            tensors.update(base_nll=self.base_nll.contiguous(), ablation_nll=self.ablation_nll.contiguous())
        text = json.dumps(meta, indent=1, allow_nan=False)
        with atomic_files([tensors_path, path], overwrite) as (tmp_st, tmp_json):
            save_file(tensors, str(tmp_st))
            tmp_json.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Scores":
        """Read a scores file written by :meth:`save`; raises ScoresError naming the file (and
        the key) for anything missing, extra, of the wrong type or inconsistent."""
        path = Path(path)
        if path.is_dir():
            raise ScoresError(f"{path}: is a directory; pass the scores .json file written by `depthprune score`")
        if not path.is_file():
            raise ScoresError(f"{path}: scores file not found. Create it with `depthprune score`")
        meta = read_json_object(path, "scores", ScoresError)
        if meta.get("format_version") != SCORES_FORMAT_VERSION:
            raise ScoresError(f"{path}: unsupported scores format {meta.get('format_version')!r}; "
                              f"this depthprune reads version {SCORES_FORMAT_VERSION}. Re-run `depthprune score`")
        check_schema(path, meta, _SCORES_SCHEMA, ScoresError, "scores", optional=("ablation_damage",))
        for key, want in (("groups", list(GROUPS)), ("stats", list(STATS))):
            if meta[key] != want:
                raise ScoresError(f"{path}: '{key}' is {meta[key]}, expected {want}; the file was edited "
                                  "or written by another version. Re-run `depthprune score`")
        if Path(meta["tensors"]).name != meta["tensors"]:
            raise ScoresError(f"{path}: 'tensors' must be a file name beside the JSON, got {meta['tensors']!r}")
        tensors_path = path.parent / meta["tensors"]
        if not tensors_path.is_file():
            raise ScoresError(f"{path}: its tensors file {tensors_path} is missing; keep both files together")
        try:
            tensors = load_file(str(tensors_path))
        except Exception as err:  # noqa: BLE001 - SafetensorError for a truncated/corrupt file
            raise ScoresError(f"{tensors_path}: corrupt or truncated safetensors file "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__}). "
                              "Re-run `depthprune score`") from None
        if set(tensors) not in ({"sums", "counts"}, {"sums", "counts", "base_nll", "ablation_nll"}) \
                or tensors["sums"].dtype != torch.float64 or tensors["counts"].dtype != torch.int64:
            raise ScoresError(f"{tensors_path}: expected float64 'sums' and int64 'counts' tensors, found "
                              f"{ {k: str(v.dtype) for k, v in tensors.items()} }. Re-run `depthprune score`")
        try:
            scores = cls(model_id=meta["model_id"], num_layers=meta["num_layers"], max_span=meta["max_span"],
                         sample_ids=meta["sample_ids"], sample_domains=meta["sample_domains"],
                         sums=tensors["sums"], counts=tensors["counts"],
                         protected_layers=meta["protected_layers"], settings=meta["settings"],
                         base_nll=tensors.get("base_nll"), ablation_nll=tensors.get("ablation_nll"))
        except ScoresError as err:
            raise ScoresError(f"{path}: {err}; the JSON and {tensors_path.name} do not fit together. "
                              "Re-run `depthprune score`") from None
        bad = [i for i in scores.protected_layers if not 0 <= i < scores.num_layers]
        if bad:
            raise ScoresError(f"{path}: protected_layers {bad} outside 0..{scores.num_layers - 1}")
        if scores.fingerprint() != meta["fingerprint"]:
            raise ScoresError(f"{path}: fingerprint mismatch; the JSON was edited, or it and "
                              f"{tensors_path.name} come from different runs. Re-run `depthprune score`")
        return scores


def _list_of(check):  # noqa: ANN001, ANN202 - tiny schema combinator
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


#: key -> (check, description) for every key of a scores JSON file.
_SCORES_SCHEMA = {
    "format_version": (is_int, "an integer"),
    "model_id": (lambda v: isinstance(v, str), "a string"),
    "num_layers": (lambda v: is_int(v) and v >= 1, "a positive integer"),
    "max_span": (lambda v: is_int(v) and v >= 1, "a positive integer"),
    "groups": (_list_of(lambda x: isinstance(x, str)), "a list of strings"),
    "stats": (_list_of(lambda x: isinstance(x, str)), "a list of strings"),
    "indexing": (lambda v: isinstance(v, str), "a string"),
    "protected_layers": (_list_of(is_int), "a list of integers"),
    "settings": (lambda v: isinstance(v, dict), "an object"),
    "fingerprint": (lambda v: isinstance(v, str), "a string"),
    "tensors": (lambda v: isinstance(v, str) and v != "", "a file name"),
    "domains": (lambda v: isinstance(v, dict), "an object"),
    "mean_cosine": (lambda v: isinstance(v, dict), "an object"),
    "sample_ids": (_list_of(lambda x: isinstance(x, str)), "a list of strings"),
    "sample_domains": (_list_of(lambda x: isinstance(x, str)), "a list of strings"),
    # optional: written by `score --ablation` (per-domain mean damage, for people reading the file)
    "ablation_damage": (lambda v: isinstance(v, dict), "an object"),
}


def read_json_object(path: Path, what: str, error: type[ValueError]) -> dict:
    """The JSON object in ``path``; ``error`` (naming the file) if unreadable, not JSON, or not an object."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not a {what} file (not valid UTF-8 at byte {err.start})") from None
    except OSError as err:
        raise error(f"{path}: cannot read the {what} file ({err.strerror or err})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not a {what} JSON file ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise error(f"{path}: not a {what} JSON file (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: a {what} file holds one JSON object, found a {type(obj).__name__}") from None
    return obj


def check_schema(path: Path, obj: dict, schema: dict, error: type[ValueError], what: str,
                  optional: tuple[str, ...] = ()) -> None:
    """Refuse missing, extra (possibly misspelt) and wrongly typed keys, naming them."""
    missing = [k for k in schema if k not in obj and k not in optional]
    extra = sorted(set(obj) - set(schema))
    if missing or extra:
        parts = ([f"missing key(s) {missing}"] if missing else []) + ([f"unknown key(s) {extra}"] if extra else [])
        raise error(f"{path}: {' and '.join(parts)}; the {what} file was edited or written by another "
                    f"version. Restore it or write it again")
    for key, (check, desc) in schema.items():
        if key in obj and not check(obj[key]):
            raise error(f"{path}: '{key}' must be {desc}, got {json.dumps(obj[key])[:60]}; restore the "
                        f"{what} file or write it again")


def angular_distance(cos: torch.Tensor) -> torch.Tensor:
    """arccos(cos)/pi in [0, 1], with cos clamped to [-1, 1] (rounding can exceed it)."""
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


__all__ = ["GROUPS", "STATS", "Scores", "ScoresError", "angular_distance"]
