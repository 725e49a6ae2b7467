"""`sleb`: true SLEB (greedy removal re-measured every step), domain-aware, against a brute
force over truly pruned models; in `prune`, in sweeps, and its errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.data.records import load_records
from depthprune.evaluation.generation import answer_nll
from depthprune.models.loading import load_model
from depthprune.pruning import prune_layers
from depthprune.ranking.methods import METHODS, rank
from depthprune.ranking.plan import RankError, RankRequest
from depthprune.ranking.sleb import Sleb, objective_weights
from depthprune.scoring.ablation_cache import cached_ablation_nll
from tests.helpers.ablation import long_text
from tests.helpers.tiny_models import save_tiny


def brute_force_sleb(model, processor, records, k, candidates, weights):
    """SLEB by definition: every candidate's objective from a deep-copied, truly pruned model."""
    counts = {d: sum(r.domain == d for r in records) for d in weights}
    used = [r for r in records if r.domain in weights]

    def objective(removed):
        pruned = prune_layers(copy.deepcopy(model), removed) if removed else model
        nll = [n for n, _ in answer_nll(pruned, processor, used)]
        return sum(weights[r.domain] / counts[r.domain] * v for r, v in zip(used, nll))

    removed, values = [], [{None: objective([])}]
    for _ in range(k):
        step = {c: objective(removed + [c]) for c in candidates if c not in removed}
        pick = min(step, key=lambda c: (step[c], c))
        removed.append(pick)
        values.append(step)
    return removed, values  # values[0][None]: the unpruned objective; values[n + 1]: step n's


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2"])
def test_sleb_equals_brute_force_over_pruned_models(family, tmp_path):
    model, tok = load_model(save_tiny(family, tmp_path / "m"), dtype="float32")
    records = load_records(long_text(tmp_path / "data" / "long.jsonl"))
    for req, weights in ((RankRequest("sleb", 3, domain="math"), {"math": 1.0}),
                         (RankRequest("sleb", 3, weights={"math": 1, "general": 3}), {"math": 0.25, "general": 0.75})):
        sel = Sleb(model, tok, records, batch_size=3, progress=False)(None, 3, list(range(6)), req)
        want, values = brute_force_sleb(model, tok, records, 3, list(range(6)), weights)
        assert sel.remove == want  # order of removal
        # each step's objective (the reason) and the first step's single-layer damage column
        after = [float(sel.reasons[layer].split("-> ")[1].split(" ")[0]) for layer in want]
        assert after == pytest.approx([values[n + 1][layer] for n, layer in enumerate(want)], abs=1e-4)
        unpruned = values[0][None]
        assert float(sel.reasons[want[0]].split(", ")[1].split(" ->")[0]) == pytest.approx(unpruned, abs=1e-4)
        column = sel.columns[f"dNLL[{req.domain or 'weighted'}] alone"]
        assert column == pytest.approx([values[1][i] - unpruned for i in range(6)], abs=1e-5)


def test_sleb_first_step_is_single_layer_ablation_and_budgets_share_one_search(tmp_path):
    model, tok = load_model(save_tiny("qwen3", tmp_path / "m"), dtype="float32")
    records = load_records(long_text(tmp_path / "data" / "long.jsonl"))
    base, ablated = cached_ablation_nll(model, tok, records, batch_size=4, progress=False)
    math = torch.tensor([r.domain == "math" for r in records])
    sleb = Sleb(model, tok, records, batch_size=4, progress=False)
    req = RankRequest("sleb", 2, domain="general")
    two = sleb(None, 2, [1, 2, 3, 4, 5], req)
    damage = (ablated[~math] - base[~math, None]).mean(0)
    assert two.columns["dNLL[general] alone"][1:] == pytest.approx(damage[1:].tolist(), abs=1e-5)
    assert two.columns["dNLL[general] alone"][0] is None  # not a candidate
    assert two.remove[0] == 1 + int(damage[1:].argmin())
    four = sleb(None, 4, [1, 2, 3, 4, 5], req)  # continues the memoised search
    fresh = Sleb(model, tok, records, batch_size=4, progress=False)(None, 4, [1, 2, 3, 4, 5], req)
    assert four.remove[:2] == two.remove and four.remove == fresh.remove
    assert four.reasons == fresh.reasons
    assert sleb(None, 1, [1, 2, 3, 4, 5], req).remove == two.remove[:1]
    assert four.columns["SLEB step"] == [None] + [float(four.remove.index(i) + 1) if i in four.remove else None
                                                  for i in range(1, 6)]


def test_sleb_on_qwen3_vl_with_images_and_deepstack_layers(tmp_path, calib_dir):
    """Deepstack layers 0-2 (allowed explicitly) are measured by full forwards; the result is
    SLEB's, and the cache is spilled to disk on the way without changing it."""
    model, processor = load_model(save_tiny("qwen3_vl", tmp_path / "m"), dtype="float32")
    records = load_records(calib_dir / "calib.jsonl")
    sleb = Sleb(model, processor, records, batch_size=3, cache_mb=0.02, progress=False)
    with pytest.warns(UserWarning, match="ablation-cache-mb"):
        sel = sleb(None, 3, list(range(6)), RankRequest("sleb", 3, allow_deepstack=True))
    want, _ = brute_force_sleb(model, processor, records, 3, list(range(6)), {"math": 0.5, "general": 0.5})
    assert sel.remove == want
    assert sleb.stats.full_forwards > 0 and sleb.stats.spilled_mb > 0


def test_objective_weights_and_registration():
    assert "sleb" in METHODS and "iterative" in METHODS
    assert objective_weights(["math", "general"], RankRequest("sleb", 1, domain="math")) == {"math": 1.0}
    assert objective_weights(["math", "general"], RankRequest("sleb", 1)) == {"general": 0.5, "math": 0.5}
    assert objective_weights(["math", "general"], RankRequest("sleb", 1, weights={"math": 3, "general": 0})) == \
        {"math": 1.0}
    with pytest.raises(RankError, match="'code' is not in the calibration data"):
        objective_weights(["math"], RankRequest("sleb", 1, domain="code"))
    with pytest.raises(RankError, match="all zero"):
        objective_weights(["math"], RankRequest("sleb", 1, weights={"math": 0}))
    from depthprune.api import empty_scores
    with pytest.raises(RankError, match="sleb measures the model"):
        rank(empty_scores(6, "m", []), RankRequest("sleb", 2, domain="math"))


def test_cli_prune_sleb(tmp_path):
    model = save_tiny("qwen2", tmp_path / "m")
    data = long_text(tmp_path / "data" / "long.jsonl")
    runner = CliRunner()
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", str(model), "--method", "sleb", "--domain", "math", "--budget", "2",
                                 "--data", str(data), "--out", str(out), "--dtype", "float32",
                                 "--ablation-cache-mb", "8"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "pruning.json").read_text())
    net, tok = load_model(model, dtype="float32")
    want, _ = brute_force_sleb(net, tok, load_records(data), 2, list(range(6)), {"math": 1.0})
    assert info["removed_layers"] == sorted(want) and info["method"] == "sleb"
    assert "step 1" in info["reasons"][str(want[0])]


@pytest.mark.parametrize("args, message", [
    (["--domain", "math"], "re-measures the calibration answer NLL after each removal: pass --data"),
    (["--domain", "code", "--data", "DATA"], "domain 'code' is not in the calibration data"),
    (["--domain", "math", "--data", "NOANSWER"], "method sleb measures the answer's NLL"),
    (["--domain", "math", "--data", "DATA", "--ablation-cache-mb", "0"], "must be > 0"),
])
def test_cli_prune_sleb_errors_before_the_model_loads(tmp_path, args, message):
    data = long_text(tmp_path / "data" / "long.jsonl")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[0].pop("answer")
    (tmp_path / "data" / "noanswer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [str(data) if a == "DATA" else str(tmp_path / "data" / "noanswer.jsonl") if a == "NOANSWER" else a for a in args]
    (tmp_path / "m").mkdir()  # a directory with no config: loading it would fail with another message
    from transformers import Qwen2Config
    Qwen2Config(num_hidden_layers=6).save_pretrained(tmp_path / "m")
    result = CliRunner().invoke(app, ["prune", str(tmp_path / "m"), "--method", "sleb", "--budget", "2",
                                      "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_sweep_runs_sleb_once_per_domain_and_resumes_without_measuring(tmp_path, monkeypatch):
    import yaml

    import depthprune.ranking.sleb as sleb_module
    from depthprune.study.store import read_results
    from depthprune.study.sweep import run_study
    model = save_tiny("qwen2", tmp_path / "m")
    data = long_text(tmp_path / "data" / "long.jsonl")
    study = {"model": str(model), "dtype": "float32", "batch_size": 4, "calibration": {"data": str(data)},
             "eval": [{"data": str(data), "name": "tiny"}],
             "methods": [{"method": "sleb", "domain": ["math", "general"]}, "iterative"],
             "budgets": [1, 3], "metrics": {"max_new_tokens": 2}}
    path = tmp_path / "study" / "study.yaml"  # a run directory may not be inside the study's folder
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(study))
    searches = []
    real = sleb_module.Sleb._extend
    monkeypatch.setattr(sleb_module.Sleb, "_extend", lambda self, *a: searches.append((len(a[0]), a[1])) or real(self, *a))
    run_study(path, tmp_path / "run", quiet=True, jobs=1)  # in this process, where the counter is
    # (removals already known, removals wanted) per call: budget 1 for both domains, then each
    # domain's search continues from its first removal (it is not restarted)
    assert searches == [(0, 1), (0, 1), (1, 3), (1, 3)]
    rows = {(r.label, r.budget): r.removed for r in read_results(tmp_path / "run" / "results.sqlite")}
    net, tok = load_model(model, dtype="float32")
    for domain in ("math", "general"):
        want, _ = brute_force_sleb(net, tok, load_records(data), 3, list(range(6)), {domain: 1.0})
        assert rows[(f"sleb:{domain}", 3)] == sorted(want) and rows[(f"sleb:{domain}", 1)] == want[:1]
    searches.clear()
    again = run_study(path, tmp_path / "run", quiet=True, jobs=1)
    assert again.cells_written == 0 and searches == []
    # a second study on the same scores (the demo's headline) takes the first one's plans instead
    # of searching again: its sleb cells are the first run's, and nothing is measured
    from depthprune.study.store import cell_key
    known = {cell_key("sleb", {"domain": d}, 3, None): rows[(f"sleb:{d}", 3)] for d in ("math", "general")}
    study |= {"methods": [{"method": "sleb", "domain": ["math", "general"]}], "budgets": [3]}
    path.write_text(yaml.safe_dump(study))
    second = run_study(path, tmp_path / "second", quiet=True, jobs=1, known_plans=known)
    assert second.cells_written == 3 and searches == []  # unpruned + sleb per domain
    reused = {(r.label, r.budget): r.removed for r in read_results(tmp_path / "second" / "results.sqlite")}
    assert all(reused[(f"sleb:{d}", 3)] == rows[(f"sleb:{d}", 3)] for d in ("math", "general"))
