"""Training-free compensation (depthprune.compensation) on every tiny family of real transformers
classes: a repair folded into the kept weights computes exactly what the same repair applied
through a hook computes, the identity repair is plain removal, the fitted checkpoint reloads
exactly with plain removal's tensor names and shapes, and bad input is one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from depthprune import api
from depthprune.compensation import DEFAULT_RIDGE, Compensation, CompensationError, gaps
from depthprune.compensation.fit import Calibration, Fold, fit_and_fold
from depthprune.data.records import encode
from depthprune.models.architectures import find_decoder_layers
from depthprune.models.loading import load_model
from depthprune.options import CalibrationRun, RankRequest
from depthprune.pruning import layers_removed, prune_layers, save_pruned
from tests.helpers.cli import assert_user_error, run
from tests.helpers.tiny_configs import FAMILIES
from tests.helpers.tiny_models import load_tiny_family

REMOVE = [3, 4]  # one gap, repaired in layer 2 (never layer 0, never a deepstack layer)
WEIGHTS = {"math": 0.5, "general": 0.5}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory, calib_dir):
    family = request.param
    src, model, processor, records = load_tiny_family(family, tmp_path_factory.mktemp(family) / "src", calib_dir)
    return family, src, model, processor, records


def _pruned_logits(model, batch, remove=REMOVE):
    with torch.no_grad(), layers_removed(model, remove):
        return model(**batch, use_cache=False).logits


def _random_repair(fold: Fold, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if fold.form == "diagonal":
        return 1 + 0.3 * torch.randn(dim, generator=g, dtype=torch.float64)
    return torch.eye(dim, dtype=torch.float64) + 0.3 * torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim ** 0.5


def test_gaps_are_maximal_runs():
    assert gaps([7, 3, 4, 9, 10, 11]) == [(3, 4), (7, 7), (9, 11)]


@pytest.mark.parametrize("method", ["lstsq", "refit"])
def test_the_identity_repair_is_plain_removal(tiny, method):
    _, _, model, processor, records = tiny
    batch = encode(processor, records[:3])
    expected = _pruned_logits(model, batch)
    repaired = copy.deepcopy(model)
    fold = Fold(find_decoder_layers(repaired)[1][2], 2, method)
    fold.apply(fold.prior(model.config.get_text_config().hidden_size))
    torch.testing.assert_close(_pruned_logits(repaired, batch), expected, rtol=0, atol=1e-6)


def test_a_folded_map_equals_the_map_applied_through_a_hook(tiny):
    family, _, model, processor, records = tiny
    batch = encode(processor, records[:3])
    d = model.config.get_text_config().hidden_size
    k = 1 if family == "qwen3_vl_moe" else 2  # the tiny MoE's layer 1 is sparse (its layer 2 dense)
    remove = [k + 1, k + 2]
    hooked, folded = copy.deepcopy(model), copy.deepcopy(model)
    fold = Fold(find_decoder_layers(folded)[1][k], k, "lstsq")
    T = _random_repair(fold, d)
    fold.apply(T)
    target = Fold(find_decoder_layers(hooked)[1][k], k, "lstsq").added

    def apply_T(module, args, output):  # what the layer adds, times T (or channel-scaled)
        out = output[0] if isinstance(output, tuple) else output
        mapped = (out.double() * T if T.dim() == 1 else out.double() @ T).to(out.dtype)
        return (mapped, *output[1:]) if isinstance(output, tuple) else mapped
    handle = target.register_forward_hook(apply_T)
    try:
        expected = _pruned_logits(hooked, batch, remove)
    finally:
        handle.remove()
    got = _pruned_logits(folded, batch, remove)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, _pruned_logits(model, batch, remove), atol=1e-4)  # the map did something
    if family.startswith("gemma3"):
        assert fold.form == "diagonal"  # Gemma normalises the MLP output before adding it
    elif family == "qwen3_vl_moe":
        assert any(p.dim() == 3 for p in fold.params)  # every expert's fused down projection


def test_a_fitted_repair_reloads_exactly_with_plain_removals_tensors(tiny, tmp_path):
    family, src, model, processor, records = tiny
    net = copy.deepcopy(model)
    fits = fit_and_fold(net, processor, Calibration(Compensation("refit"), records, WEIGHTS), REMOVE, batch_size=4)
    assert [(f.first, f.last, f.folded_into) for f in fits] == [(3, 4, 2)]
    assert 0 <= fits[0].relative_residual <= 1 + 1e-9  # shrunk towards plain removal: never worse on calibration
    assert all(torch.isfinite(p).all() for p in net.parameters())
    prune_layers(net, REMOVE)
    out = save_pruned(net, processor, tmp_path / "repaired", {"removed_layers": REMOVE, "source_model": str(src),
                                                             "original_num_layers": 6, "num_layers": 4,
                                                             "method": "manual", "budget": 2, "budget_spec": "2",
                                                             "versions": {"depthprune": "", "transformers": "",
                                                                          "torch": ""}},
                      source_model=src)
    plain = save_pruned(prune_layers(copy.deepcopy(model), REMOVE), processor, tmp_path / "plain",
                        json.loads((out / "pruning.json").read_text()), source_model=src)
    assert _tensor_shapes(out) == _tensor_shapes(plain)
    reloaded, _ = load_model(out, dtype="float32")
    batch = encode(processor, records[:3])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch, use_cache=False).logits, net(**batch, use_cache=False).logits,
                                   rtol=0, atol=1e-6)


def _tensor_shapes(directory):
    shapes = {}
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            shapes |= {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    return shapes


def test_a_layer_without_an_mlp_down_projection_is_refused():
    with pytest.raises(CompensationError, match="no MLP down projection"):
        Fold(nn.Sequential(nn.Linear(4, 4)), 3, "lstsq")


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory, calib_dir):
    return load_tiny_family("qwen3", tmp_path_factory.mktemp("qwen3") / "src", calib_dir)


def test_prune_records_each_gap_and_a_domain_calibrated_repair_differs(qwen3, calib_dir, tmp_path):
    src = qwen3[0]
    data = calib_dir / "text.jsonl"
    infos = {}
    for domain in ("math", "general"):
        _, infos[domain] = api.prune(src, [2, 4, 5], tmp_path / domain, calibration=CalibrationRun(data),
                                     request=RankRequest(domain=domain), compensate="refit", return_info=True)
    record = infos["math"]["compensation"]
    assert [(g["first"], g["last"], g["folded_into"]) for g in record["gaps"]] == [(2, 2, 1), (4, 5, 3)]
    assert record["domain_weights"] == {"math": 1.0} and record["method"] == "refit"
    card = (tmp_path / "math" / "README.md").read_text()
    assert "compensation" in card and "refit" in card
    w = {d: load_model(tmp_path / d, dtype="float32")[0].model.layers[1].mlp.down_proj.weight for d in infos}
    assert not torch.allclose(w["math"], w["general"])


def test_a_singular_fit_falls_back_to_the_default_ridge(qwen3, calib_dir, tmp_path):
    src = qwen3[0]
    res = run("prune", src, "--layers", "3", "--data", calib_dir / "text.jsonl", "--compensate", "refit",
              "--compensate-ridge", "0", "--max-samples", "1", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "singular" in res.output
    gap = json.loads((tmp_path / "out" / "pruning.json").read_text())["compensation"]["gaps"][0]
    assert gap["ridge"] == DEFAULT_RIDGE and "singular" in gap["notes"][0]
    model, _ = load_model(tmp_path / "out", dtype="float32")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_compensate_weights_fit_the_repair_on_other_domains_than_the_plan(qwen3, calib_dir, tmp_path):
    """The recommended recipe in one command: layers chosen for one domain (--domain), the repair
    fitted on every domain kept (--compensate-weights), the same weights as a repair calibrated
    on both domains without --domain."""
    data = calib_dir / "text.jsonl"
    res = run("prune", qwen3[0], "--layers", "2,4", "--domain", "math", "--data", data, "--compensate", "refit",
              "--compensate-weights", "math=1,general=1", "--out", tmp_path / "one")
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "one" / "pruning.json").read_text())["compensation"]
    assert record["domain_weights"] == {"general": 0.5, "math": 0.5}
    assert run("prune", qwen3[0], "--layers", "2,4", "--data", data, "--compensate", "refit",
               "--out", tmp_path / "both").exit_code == 0
    one, both = (load_model(tmp_path / d, dtype="float32")[0].model.layers[1].mlp.down_proj.weight
                 for d in ("one", "both"))
    assert torch.equal(one, both)


@pytest.mark.parametrize("args, needles", [
    (["--layers", "0,3"], ["removes layer 0", "--protect-first 1"]),
    (["--layers", "3", "--compensate-weights", "math"], ["--compensate-weights", "domain=weight"]),
    (["--layers", "3", "--compensate-weights", "physics=1"], ["physics", "not in the calibration data"]),
    (["--layers", "3", "--domain", "physics"], ["physics", "not in the calibration data"]),
    (["--layers", "3", "--no-data"], ["--compensate refit", "--data"]),
    (["--layers", "3", "--compensate-tokens", "words"], ["--compensate-tokens", "all, answer"]),
])
def test_bad_compensation_input_is_one_line(qwen3, calib_dir, tmp_path, args, needles):
    data = [] if "--no-data" in args else ["--data", calib_dir / "text.jsonl"]
    args = [a for a in args if a != "--no-data"]
    res = run("prune", qwen3[0], *args, *data, "--compensate", "refit", "--out", tmp_path / "out")
    assert_user_error(res, *needles, roots=(tmp_path,))
    assert not (tmp_path / "out").exists()


def test_a_plan_with_nothing_removed_is_refused():
    from depthprune.compensation import check_plan
    with pytest.raises(CompensationError, match="removes no layer"):
        check_plan([])
