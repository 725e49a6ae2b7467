"""Training-free recovery: per gap, a least-squares repair of the kept layer before it,
calibrated on the user's domain and folded into weights that stay (ReplaceMe-style,
arXiv 2505.02819; domain-aware here). The output is a stock checkpoint with plain removal's
tensor names and shapes.

Removing layers ``first..last`` (a *gap*: a maximal run of removed layers) leaves the residual
stream entering layer ``last + 1`` without everything the gap added. Let ``k = first - 1`` be
the kept layer before the gap, ``A`` what its MLP adds to the stream, ``S`` the pruned model's
stream after layer ``k`` and ``Z`` what layer ``last + 1`` received in the unpruned model. The
MLP of layer ``k`` should have added ``R = Z - S + A``. Two repairs fold exactly into layer
``k``'s down projection:

- ``lstsq`` (ReplaceMe's construction): a ``d x d`` map ``T`` with ``A T ~ R``, folded as
  ``W <- T^T W`` (bias ``b <- b T``; every expert of a MoE layer);
- ``refit``: the down projection itself re-fitted on its own input ``u`` (``u W'^T ~ R``), a
  ``d_ff x d`` least-squares problem with more freedom than ``T`` (``W' = T^T W`` is one of
  its solutions). A MoE layer (one input per expert) gets the ``lstsq`` map instead.

Both are ridge regressions shrunk towards plain removal (``T = I``, ``W' = W``)::

    X = (F^T F + lam I)^-1 (F^T R + lam X0),   lam = ridge * trace(F^T F) / dim(F)

over calibration tokens, each weighted by ``1 / |Z|^2`` so the fit minimises the *relative*
error (a few high-norm tokens such as attention sinks would otherwise decide it, and the final
norm makes the stream's direction what counts). Domains are weighted by ``--domain`` /
``--weights`` (each domain's sums averaged over its own tokens). ``F^T F``, ``F^T R`` and
``|R|^2`` accumulate in float64, so activations are never all in memory. Gaps are fitted in
layer order on the already-repaired model (targets always from the unpruned weights), one pass
over the calibration data per gap, each pass stopping at the layer it needs. The fit's
*relative residual* ``|R - F X|^2 / |R - F X0|^2`` says how much of plain removal's (weighted)
error at the interface remains (1.0: none explained).

Families that normalise the MLP output before adding it (Gemma 3's
``post_feedforward_layernorm``) take neither exactly; there the repair is a diagonal ``T``
(channel-wise scaling, as LinearPatch's) folded into that norm's weight. A gap at the start of
the stack (layer 0 removed) has no kept layer before it and is refused.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from depthprune.compensation.spec import (
    DEFAULT_RIDGE,
    Compensation,
    CompensationError,
    GapFit,
    check_plan,
    gaps,
)
from depthprune.data.records import (
    DataError,
    Record,
    batches,
    cap_per_domain,
    domain_weights,
    encode,
    load_records,
    render_prompt,
)
from depthprune.evaluation.generation import answer_span
from depthprune.models.architectures import find_decoder_layers, input_device
from depthprune.pruning import layers_removed
from depthprune.settings import progress as progress_bar


# --------------------------------------------------------------------------- folding
class Fold:
    """Where layer ``index``'s repair goes: ``features`` (the module whose input or output the
    fit reads), ``added`` (the module whose output is added to the stream) and the weights
    that absorb the solution ``X``, starting from ``prior`` (plain removal)."""

    def __init__(self, layer: nn.Module, index: int, method: str) -> None:
        self.index = index
        norm = getattr(layer, "post_feedforward_layernorm", None)
        if isinstance(norm, nn.Module) and isinstance(getattr(norm, "weight", None), torch.Tensor):
            self.form, self.added, self.features, self.params = "diagonal", norm, norm, [norm.weight]
            return
        mlp = getattr(layer, "mlp", None)
        downs = _down_projections(mlp) if isinstance(mlp, nn.Module) else []
        if not downs:
            raise CompensationError(f"layer {index} ({type(layer).__name__}) has no MLP down projection depthprune "
                                    "can fold a repair into; use --compensate none for this architecture")
        down = getattr(mlp, "down_proj", None)
        if method == "refit" and isinstance(down, nn.Linear):
            self.form, self.added, self.features, self.params = "refit", mlp, down, downs
        else:
            self.form, self.added, self.features, self.params = "map", mlp, mlp, downs

    @property
    def reads_input(self) -> bool:
        """True when the features are the input of ``features`` (the down projection's)."""
        return self.form == "refit"

    def prior(self, dim: int) -> torch.Tensor:
        """Plain removal's solution: I (map), 1 (diagonal), or the down projection's W^T [+ b]."""
        if self.form == "map":
            return torch.eye(dim, dtype=torch.float64)
        if self.form == "diagonal":
            return torch.ones(dim, dtype=torch.float64)
        return self._refit_matrix()

    def _refit_matrix(self) -> torch.Tensor:
        down = self.features
        rows = [down.weight.detach().double().T.cpu()]
        if down.bias is not None:  # the bias as the row of a constant-1 feature
            rows.append(down.bias.detach().double().cpu()[None])
        return torch.cat(rows)

    def apply(self, X: torch.Tensor) -> None:
        """Fold the solution into the weights, in place."""
        with torch.no_grad():
            if self.form == "diagonal":
                _fold_into_norm(self.added, X)
            elif self.form == "refit":
                down = self.features
                d_in = down.weight.shape[1]
                down.weight.copy_(X[:d_in].T.to(device=down.weight.device, dtype=down.weight.dtype))
                if down.bias is not None:
                    down.bias.copy_(X[d_in].to(device=down.bias.device, dtype=down.bias.dtype))
            else:
                fold_map(self.params, X)


def fold_map(params: Sequence[torch.Tensor], T: torch.Tensor) -> None:
    """Fold ``T`` [d, d] into down projections: ``W <- T^T W`` for every ``[..., d, d_ff]``
    weight (each expert of a fused MoE tensor), ``b <- b T`` for a bias; in place."""
    with torch.no_grad():
        for p in params:
            t = T.to(device=p.device, dtype=torch.float64)
            if p.dim() == 1:
                p.copy_((p.double() @ t).to(p.dtype))
            else:
                p.copy_(torch.matmul(t.T, p.double()).to(p.dtype))


def _down_projections(mlp: nn.Module) -> list[torch.Tensor]:
    """The down projections of an MLP (or MoE block), whose outputs sum to what it adds:
    ``down_proj`` Linear layers (weight and bias) and fused ``down_proj`` expert tensors."""
    found: list[torch.Tensor] = []
    for name, module in mlp.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] == "down_proj":
            found += [module.weight] + ([module.bias] if module.bias is not None else [])
        fused = module._parameters.get("down_proj")
        if isinstance(fused, torch.Tensor) and fused.dim() == 3:
            found.append(fused)
    return found


def _fold_into_norm(norm: nn.Module, scale: torch.Tensor) -> None:
    """Scale a norm's output channel-wise by folding ``scale`` into its weight: ``w * s`` for a
    plain RMSNorm, ``(1 + w) * s - 1`` for Gemma's; the form is checked on a probe input."""
    weight = norm.weight
    probe = torch.randn(2, weight.shape[0], dtype=weight.dtype, device=weight.device)
    before = norm(probe).double()
    original = weight.detach().clone()
    s = scale.to(device=weight.device, dtype=torch.float64)
    for candidate in (original.double() * s, (1 + original.double()) * s - 1):
        weight.copy_(candidate.to(weight.dtype))
        if torch.allclose(norm(probe).double(), before * s, rtol=1e-3, atol=1e-5):
            return
    weight.copy_(original)
    raise CompensationError(f"{type(norm).__name__}: its weight does not scale its output channel-wise; "
                            "use --compensate none for this architecture")


# --------------------------------------------------------------------------- calibration tokens
def _answered(record: Record) -> bool:
    return record.answer is not None and bool(str(record.answer).strip())


def _require_answers(records: Sequence[Record]) -> None:
    missing = next((r for r in records if not _answered(r)), None)
    if missing is not None:
        raise DataError(f"{missing.source}: record has no 'answer'; --compensate-tokens answer fits on "
                        "answers (or use --compensate-tokens all)")


def token_batch(processor: Any, records: Sequence[Record], tokens: str) -> tuple[Any, torch.Tensor]:
    """The encoded batch (the answered conversation where a record has an answer, else the
    prompt) and a [B, T] bool mask of the tokens the fit uses."""
    if tokens == "answer":
        _require_answers(records)
    spans = [answer_span(processor, r) if _answered(r) else None for r in records]
    texts = [s[0][:s[2]] if s else render_prompt(processor, r) for s, r in zip(spans, records)]
    batch = encode(processor, records, texts=texts)
    mask = batch["attention_mask"].bool()
    if tokens == "all":
        return batch, mask
    context = encode(processor, records, texts=[s[0][:s[1]] for s in spans])
    n_answer = (mask.sum(1) - context["attention_mask"].sum(1)).clamp(min=1)
    width = mask.shape[1]
    positions = torch.arange(width).expand(len(records), width)
    # left padding: the answer is each row's last n tokens; the token before it predicts the first
    return batch, mask & (positions >= (width - n_answer - 1)[:, None])


# --------------------------------------------------------------------------- one pass per gap
class _Stop(Exception):
    """Raised by a capture hook once a pass has what it needs (the rest of the forward is skipped)."""


@dataclass
class _Sums:
    """Float64 sums over one domain's (weighted) calibration tokens."""

    ff: torch.Tensor
    fr: torch.Tensor
    rr: float = 0.0
    n: int = 0

    def add(self, f: torch.Tensor, r: torch.Tensor, weight: torch.Tensor) -> None:
        fw = f * weight[:, None]
        self.ff += (fw.T @ f).cpu()
        self.fr += (fw.T @ r).cpu()
        self.rr += float((weight[:, None] * r * r).sum())
        self.n += int(f.shape[0])


class _Capture:
    """Hooks that keep tensors where a gap's fit reads them, the last one ending the pass."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}

    def hook(self, module: nn.Module, name: str, read: str, stop: bool = False) -> Any:
        """A handle: ``read`` is "input" (a pre-hook) or "output"."""
        def keep(value: torch.Tensor) -> None:
            self.values[name] = value.detach()
            if stop:
                raise _Stop

        if read == "input":
            return module.register_forward_pre_hook(
                lambda m, args, kwargs: keep(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
        return module.register_forward_hook(
            lambda m, args, out: keep(out[0] if isinstance(out, (tuple, list)) else out))

    def run(self, model: nn.Module, batch: Any, points: list[tuple[nn.Module, str, str, bool]]) -> None:
        """Forward ``batch`` with these capture points until the stopping one."""
        handles = [self.hook(module, name, read, stop) for module, name, read, stop in points]
        try:
            model(**dict(batch.to(input_device(model)), use_cache=False))
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def _unfolded(originals: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Temporarily give the already-repaired tensors their original values (the unpruned model)."""
    repaired = {key: p.detach().clone() for key, (p, _) in originals.items()}
    with torch.no_grad():
        for p, original in originals.values():
            p.copy_(original)
    try:
        yield
    finally:
        with torch.no_grad():
            for key, (p, _) in originals.items():
                p.copy_(repaired[key])


@torch.inference_mode()
def _gap_sums(model: nn.Module, processor: Any, chunks: list[list[Record]], layers: nn.ModuleList,
              gap: tuple[int, int], fold: Fold, remove: list[int], originals: dict, tokens: str,
              bar: Any) -> dict[str, _Sums]:
    """One pass over the calibration batches: a gap's sums, per domain."""
    first, last = gap
    after = last + 1 if last + 1 < len(layers) else None
    cap = _Capture()
    # the stream entering layer `after` (a deepstack injection included), or the stack's last output
    target = (layers[after], "target", "input", True) if after is not None else (layers[last], "target", "output", True)
    stream = (layers[after], "stream", "input", True) if after is not None else (layers[first - 1], "stream", "output", True)
    features = (fold.features, "features", "input" if fold.reads_input else "output", False)
    sums: dict[str, _Sums] = {}
    for chunk in chunks:
        batch, mask = token_batch(processor, chunk, tokens)
        with _unfolded(originals):
            cap.run(model, batch, [target])
        with layers_removed(model, remove):
            cap.run(model, batch, [(fold.added, "added", "output", False), features, stream])
        z, s, a, f = (cap.values[n].double() for n in ("target", "stream", "added", "features"))
        r = z - s + a  # what layer k's MLP (or its normalised output) should have added
        if fold.form == "refit" and fold.features.bias is not None:
            f = torch.cat([f, torch.ones_like(f[..., :1])], dim=-1)
        weight = 1.0 / z.pow(2).sum(-1).clamp_min(1e-12)  # relative error per token
        mask = mask.to(z.device)
        for domain in sorted({rec.domain for rec in chunk}):
            rows = torch.tensor([rec.domain == domain for rec in chunk], device=z.device)
            m = mask & rows[:, None]
            if fold.form == "diagonal":
                f_m, r_m = f[m], r[m]
                entry = sums.setdefault(domain, _Sums(torch.zeros(f.shape[-1], dtype=torch.float64),
                                                      torch.zeros(f.shape[-1], dtype=torch.float64)))
                w = weight[m]
                entry.ff += (w[:, None] * f_m * f_m).sum(0).cpu()
                entry.fr += (w[:, None] * f_m * r_m).sum(0).cpu()
                entry.rr += float((w[:, None] * r_m * r_m).sum())
                entry.n += int(f_m.shape[0])
            else:
                entry = sums.setdefault(domain, _Sums(torch.zeros(f.shape[-1], f.shape[-1], dtype=torch.float64),
                                                      torch.zeros(f.shape[-1], r.shape[-1], dtype=torch.float64)))
                entry.add(f[m], r[m], weight[m])
        cap.values.clear()
        bar.update(1)
    return sums


# --------------------------------------------------------------------------- the solution
def _combine(per_domain: dict[str, _Sums], weights: dict[str, float]) -> _Sums:
    """Each domain's sums averaged over its own tokens, then weighted."""
    first = next(iter(per_domain.values()))
    out = _Sums(torch.zeros_like(first.ff), torch.zeros_like(first.fr))
    for name, w in weights.items():
        s = per_domain.get(name)
        if s is not None and s.n:
            out.ff += w * s.ff / s.n
            out.fr += w * s.fr / s.n
            out.rr += w * s.rr / s.n
            out.n += s.n
    return out


def _error(s: _Sums, X: torch.Tensor) -> float:
    """|R - F X|^2 (weighted, per token) from the sums (elementwise X for a diagonal fit)."""
    if s.ff.dim() == 1:
        return s.rr - 2 * float((X * s.fr).sum()) + float((X * X * s.ff).sum())
    return s.rr - 2 * float((X * s.fr).sum()) + float((X * (s.ff @ X)).sum())


def solve(s: _Sums, prior: torch.Tensor, ridge: float, notes: list[str]) -> tuple[torch.Tensor, float]:
    """``X = (F^T F + lam I)^-1 (F^T R + lam X0)``, shrunk towards ``prior`` = X0; returns X and the
    ridge used. A singular or non-finite system falls back to :data:`DEFAULT_RIDGE` (noted), and
    then to the prior itself."""
    diagonal = s.ff.dim() == 1
    scale = float((s.ff if diagonal else torch.diagonal(s.ff)).mean()) or 1.0
    for attempt in dict.fromkeys((ridge, max(ridge, DEFAULT_RIDGE))):
        lam = attempt * scale
        if diagonal:
            X = (s.fr + lam * prior) / (s.ff + lam)
        else:
            chol, info = torch.linalg.cholesky_ex(s.ff + lam * torch.eye(s.ff.shape[0], dtype=torch.float64))
            X = torch.cholesky_solve(s.fr + lam * prior, chol) if int(info) == 0 else None
        if X is not None and bool(torch.isfinite(X).all()):
            return X, attempt
        notes.append(f"the system with ridge {attempt:g} is singular" +
                     (f"; fell back to ridge {DEFAULT_RIDGE:g}" if attempt < DEFAULT_RIDGE else ""))
    notes.append("no stable fit: plain removal kept for this gap")
    return prior, float("nan")


@dataclass
class Calibration:
    """What a compensated prune fits on: the spec, the records (each domain capped) and the
    domain weights (summing to 1)."""

    spec: Compensation
    records: list[Record]
    weights: dict[str, float]


def fit_and_fold(model: nn.Module, processor: Any, calibration: Calibration, remove: Sequence[int],
                 batch_size: int = 4, progress: bool = True, originals: dict | None = None) -> list[GapFit]:
    """Fit each gap's repair of ``remove`` on the ``calibration`` records (domains weighted by its
    weights, its spec's method, ridge and tokens) and fold it into ``model``'s kept weights, in
    place; the layers themselves are not removed (prune them afterwards). Returns one
    :class:`GapFit` per gap, in layer order. ``originals`` (a dict) receives every changed tensor
    with its original value (:func:`compensated` restores them)."""
    records, weights, spec = calibration.records, calibration.weights, calibration.spec
    remove = sorted(set(remove))
    check_plan(remove)
    _, layers = find_decoder_layers(model)
    used = [r for r in records if weights.get(r.domain, 0) > 0]
    if not used:
        raise DataError(f"--compensate: no calibration record of the domain(s) {', '.join(sorted(weights))}")
    chunks = list(batches(used, batch_size))
    originals = {} if originals is None else originals
    fits = []
    bar = progress_bar(total=len(gaps(remove)) * len(chunks), desc="compensating", unit="batch", disable=not progress)
    for first, last in gaps(remove):
        fold = Fold(layers[first - 1], first - 1, spec.method)
        combined = _combine(_gap_sums(model, processor, chunks, layers, (first, last), fold, remove, originals,
                                      spec.tokens, bar), weights)
        prior = fold.prior(combined.ff.shape[0])
        notes: list[str] = []
        X, ridge_used = solve(combined, prior, spec.ridge, notes)
        plain = _error(combined, prior)
        residual = max(_error(combined, X), 0.0) / plain if plain > 0 else 1.0
        if spec.method == "refit" and fold.form == "map":
            notes.append("a MoE layer: the d x d map instead of a re-fitted down projection")
        for p in fold.params:
            originals.setdefault(id(p), (p, p.detach().clone()))
        fold.apply(X)
        for note in notes:
            warnings.warn(f"compensation, gap {first}..{last}: {note}", stacklevel=2)
        fits.append(GapFit(first, last, first - 1, fold.form, residual, ridge_used, combined.n, notes))
    bar.close()
    return fits


@contextlib.contextmanager
def compensated(model: nn.Module, processor: Any, records: Sequence[Record], remove: Sequence[int],
                weights: dict[str, float], spec: Compensation, batch_size: int = 4,
                progress: bool = True) -> Iterator[list[GapFit]]:
    """:func:`fit_and_fold` for the duration of the block (yields the fits); on exit every changed
    tensor gets its original value back, so one model serves many repaired cells of a sweep."""
    originals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        yield fit_and_fold(model, processor, Calibration(spec, list(records), weights), remove, batch_size, progress,
                           originals)
    finally:
        with torch.no_grad():
            for p, original in originals.values():
                p.copy_(original)


def compensate_model(model: nn.Module, processor: Any, calibration: "Calibration", remove: Sequence[int],
                     batch_size: int = 4, progress: bool = True) -> dict:
    """:func:`fit_and_fold` with a :class:`Calibration` (from :func:`prepare`), timed; returns the
    ``compensation`` record of ``pruning.json`` (the spec, domain weights, seconds, one entry
    per gap)."""
    started = time.perf_counter()
    fits = fit_and_fold(model, processor, calibration, remove, batch_size, progress)
    spec = calibration.spec
    return {"method": spec.method, "ridge": spec.ridge, "tokens": spec.tokens, "domain_weights": calibration.weights,
            "calibration_records": sum(r.domain in calibration.weights for r in calibration.records),
            "seconds": round(time.perf_counter() - started, 2), "gaps": [asdict(f) for f in fits]}


# --------------------------------------------------------------------------- for `prune`
def prepare(compensate: "Compensation | str | None", data: Any, domain: str | None,
            weights: dict[str, float] | None, max_samples: int | None = None) -> Calibration | None:
    """Check a compensated prune's inputs before any model loads (None for plain removal):
    the spec, calibration ``data`` (JSONL paths), the domain(s) to fit on (the spec's own
    ``weights``, else ``domain`` or ``weights``; every domain of the data equally when none is
    given) and, for
    ``tokens=answer``, the answers."""
    spec = Compensation.of(compensate)
    if not spec.active:
        return None
    if not data:
        raise CompensationError(f"--compensate {spec.method} is fitted on calibration prompts: pass --data "
                                "FILE.jsonl (records as for `depthprune score`), or use --compensate none")
    records = cap_per_domain(load_records([data] if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__")
                                          else list(data)), max_samples)
    if spec.weights is not None:  # the repair's own domains, whatever chose the layers
        domain, weights = None, spec.weights
    fit_weights = domain_weights([r.domain for r in records], domain, weights)
    if spec.tokens == "answer":
        _require_answers([r for r in records if r.domain in fit_weights])
    return Calibration(spec, records, fit_weights)
