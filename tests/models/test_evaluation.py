"""Evaluator: rule-based answer extraction/scoring on real-looking outputs, Wilson intervals,
and generation + answer NLL on tiny random-init Qwen3-VL (with images) and Llama (text)."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math

import pytest
import torch
from rich.console import Console

from depthprune.cli_output import format_metrics_table
from depthprune.data.records import DataError, encode, load_records, render_prompt
from depthprune.evaluation import generation as evaluation
from depthprune.evaluation.answers import extract_answer, last_number, normalize_text, parse_number, score_answer
from depthprune.evaluation.generation import (
    EvalResult,
    Prediction,
    answer_nll,
    evaluate,
    evaluate_path,
    predictions_path,
    wilson_interval,
)
from depthprune.models.loading import load_model
from depthprune.options import ModelSpec
from tests.helpers.tiny_configs import FAMILIES, VLM_FAMILIES
from tests.helpers.tiny_models import save_tiny


# ----------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("output, expected", [
    ("\\boxed{12}", "12"),
    ("We add them: 3 + 4 = 7. So the result is \\boxed{7}.", "7"),
    ("First \\boxed{3}, but correcting myself: \\boxed{4}", "4"),                  # last boxed
    ("$\\boxed{\\frac{1}{2}}$", "1/2"),                                            # nested braces
    ("\\boxed{\\text{red}}", "red"),
    ("\\boxed{x^{2}+1}", "x^{2}+1"),
    ("The answer is \\boxed{12", "12"),                                            # cut by max_new_tokens
    ("The answer is 8.", "8"),
    ("The answer is 3.5.", "3.5"),                                                 # decimal point kept
    ("The final answer is: **B**", "B"),
    ("Answer: (C) triangle", "(C) triangle"),
    ("answer:\n42", "42"),
    ("The answer to 3 plus 4 is 7. Let me know if you need more help.", "7"),
    ("I think the answer is 6. Wait, the answer is 7.", "7"),                      # last one
    ("It is red.", "It is red"),
    ("red!!", "red"),
    ("\"blue\"", "blue"),
    ("7<|im_end|>\n<|im_start|>user\nwhat is 2 plus 2?", "7"),                    # chat leftovers
    ("assistant\nThe shape is green", "The shape is green"),
    ("7\n\nQuestion: what is 2 plus 2?\nAnswer: 4", "7"),                          # base model rambling
    ("<start_of_turn>model\nblue<end_of_turn>", "blue"),
    ("\n\nQuestion: what is 2 plus 2?\nAnswer: 4", ""),                            # only a made-up turn
    ("<think>3 plus 4, maybe 8?</think>\nThe answer is 7", "7"),
    ("Let me think. 3 plus 4 is 7.</think> 7", "7"),
    ("The answer is 50\\%.", "50%"),
    ("", ""),
])
def test_extract_answer(output, expected):
    assert extract_answer(output) == expected


def test_extract_answer_is_idempotent():
    for text in ("\\boxed{12}", "The answer is 8.", "It is red.", "(B) blue", "1/2"):
        once = extract_answer(text)
        assert extract_answer(once) == once


@pytest.mark.parametrize("text, value", [
    ("7", 7), ("7.0", 7), ("1,000", 1000), ("-3", -3), ("\u22123", -3), ("1/2", 0.5),
    ("\\frac{3}{4}", 0.75), ("$5", 5), ("50%", 50), ("1e3", 1000), (".5", 0.5), ("seven", 7),
    ("Twenty-one", 21), ("minus two", -2), ("12.", 12),
    ("1/0", None), ("red", None), ("7 apples", None), ("1,2", None), ("one hundred", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_last_number_takes_digits_not_words():
    assert last_number("3 plus 4 equals 7, one answer") == 7
    assert last_number("x-5 and 1,000 ducks") == 1000
    assert last_number("no digits, seven") is None


def test_normalize_text():
    assert normalize_text("  The  Eiffel-Tower! ") == "eiffel tower"
    assert normalize_text("It isn't A red one.") == "it isnt red one"


# ----------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("prediction, reference, expected", [
    # numbers
    ("The answer is 8", "7", False),
    ("The answer is 7", "7", True),
    ("\\boxed{12}", "12", True),
    ("\\boxed{12}", "13", False),
    ("7.0", "7", True),
    ("7.0000001", "7", True),                     # within 1e-6
    ("7.001", "7", False),
    ("1,000", "1000", True),
    ("$1,000", "1000", True),
    ("-3", "-3", True),
    ("3", "-3", False),
    ("1/2", "0.5", True),
    ("0.5", "1/2", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("Seven.", "7", True),                        # number word as the whole answer
    ("3 plus 4 equals 7.", "7", True),            # last number
    ("7 is wrong, it is 8", "7", False),          # last number, not first
    ("There are seven circles.", "7", False),     # words count only as the whole answer
    ("I don't know", "7", False),
    ("50%", "50", True),
    ("0", "0", True),
    ("1e-7", "0", True),                          # absolute tolerance
    # strings
    ("It is red.", "red", True),
    ("Red", "red", True),
    ("The shape is red.", "red", True),
    ("reddish", "red", False),
    ("It is not red.", "red", False),
    ("blue", "red", False),
    ("The Eiffel Tower", "eiffel tower", True),
    ("the colour of the shape in the picture on the left is a bright shade of red", "red", False),
    ("Yes, it is.", "yes", True),
    ("No, it is not.", "no", True),
    ("No.", "yes", False),
    ("<|im_start|>assistant\nred<|im_end|>", "red", True),
    ("", "red", False),
    # a bare letter reference without choices
    ("B", "B", True),
    ("(B)", "B", True),
    ("The answer is (b).", "B", True),
    ("B) blue", "B", True),
    ("A square", "B", False),
    ("C", "B", False),
])
def test_score_answer(prediction, reference, expected):
    assert score_answer(prediction, reference) is expected


@pytest.mark.parametrize("prediction, reference, expected", [
    ("B", "blue", True),
    ("(b)", "blue", True),
    ("Option B", "B", True),
    ("The answer is B. blue", "B", True),
    ("blue", "B", True),
    ("It is blue.", "B", True),
    ("A", "B", False),
    ("red", "B", False),
    ("It is not red, it is blue.", "blue", False),   # negated mention: conservatively wrong
    ("B, because the sky is blue", "B", True),
    ("The choices are unclear", "B", False),
    ("dark red", "dark red", True),
    ("The shape is dark red.", "C", True),          # "red" inside "dark red" is no second pick
    ("red", "C", False),
    ("A circle", "A", False),                       # article, not letter A
])
def test_score_answer_multiple_choice(prediction, reference, expected):
    choices = ["red", "blue", "dark red"]
    assert score_answer(prediction, reference, choices) is expected


def test_score_answer_choices_dict_and_numeric_options():
    assert score_answer("B", "blue", {"A": "red", "B": "blue"})
    assert score_answer("3 plus 4 is 7", "7", ["3", "4", "7"])   # no option picked: numeric rule
    assert not score_answer("3 plus 4 is 8", "7", ["3", "4", "7", "8"])
    assert score_answer("(C)", "7", ["3", "4", "7"])


def test_wilson_interval():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1 and wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # narrower with more data, always containing the point estimate
    assert wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0] < high - low
    for k in range(8):
        lo, hi = wilson_interval(k, 7)
        assert 0 <= lo <= k / 7 <= hi <= 1


# ----------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module", params=["qwen3_vl", "llama"])
def tiny(request, tmp_path_factory, calib_dir):
    """(family, checkpoint dir, model, processor, records): Qwen3-VL with images, Llama text only.

    Answers of different token lengths so left padding differs inside a batch."""
    family = request.param
    src = save_tiny(family, tmp_path_factory.mktemp(family) / "src")
    model, processor = load_model(src, dtype="float32")
    records = load_records(calib_dir / ("calib.jsonl" if family == "qwen3_vl" else "text.jsonl"))
    longer = ["7", "red", "3 plus 4 is 7", "red square", "the answer is 7", "it is red", "4"]
    records = [dataclasses.replace(r, answer=a) for r, a in zip(records, longer)]
    return family, src, model, processor, records


@pytest.fixture(scope="module")
def evaluated(tiny) -> EvalResult:
    _, _, model, processor, records = tiny
    return evaluate(model, processor, records, batch_size=3, max_new_tokens=6)


def test_evaluate_structure(tiny, evaluated):
    records, result = tiny[-1], evaluated
    assert [p.id for p in result.predictions] == [r.id for r in records]
    for p, r in zip(result.predictions, records):
        assert isinstance(p.output, str)                        # random weights: garbage
        assert p.extracted == extract_answer(p.output)
        assert p.correct is score_answer(p.output, r.answer)
        assert math.isfinite(p.nll) and p.nll > 0 and p.answer_tokens >= 1
        assert p.reference == r.answer and p.domain == r.domain and p.question == r.question
    domains = result.domains
    assert set(domains) == {"math", "general"}
    assert sum(m.n for m in domains.values()) == len(records) == result.overall.n
    for m in [*domains.values(), result.overall]:
        assert 0 <= m.ci95[0] <= m.accuracy <= m.ci95[1] <= 1
        assert m.accuracy == m.correct / m.n and m.answer_nll > 0
    assert result.samples_per_second > 0
    json.dumps(result.to_dict(), allow_nan=False)


def test_batch_size_does_not_change_results(tiny, evaluated):
    _, _, model, processor, records = tiny
    one = evaluate(model, processor, records, batch_size=1, max_new_tokens=6)
    three = evaluated
    assert [p.output for p in one.predictions] == [p.output for p in three.predictions]
    for a, b in zip(one.predictions, three.predictions):
        assert a.answer_tokens == b.answer_tokens
        assert a.nll == pytest.approx(b.nll, abs=1e-4)


@pytest.mark.parametrize("index, answer", [(2, None), (0, "im_end")])
def test_nll_equals_hand_computation(tiny, index, answer):
    """Mean -log p(answer token | everything before) over the answer's own tokens, computed
    from the model's logits on the unpadded answered conversation. "im_end" checks that the
    answer is not looked for inside the template's "<|im_end|>"."""
    _, _, model, processor, records = tiny
    record = records[index] if answer is None else dataclasses.replace(records[index], answer=answer)
    tok = getattr(processor, "tokenizer", processor)
    batch = encode(processor, [record], with_answer=True)
    ids = batch["input_ids"][0].tolist()
    answer_ids = tok(record.answer, add_special_tokens=False)["input_ids"]
    start = len(ids) - 1 - len(answer_ids)               # the template ends "<|im_end|>" (+ "\n",
    assert ids[start:start + len(answer_ids)] == answer_ids  # which this vocabulary drops)
    assert tok.convert_ids_to_tokens(ids[-1]) == "<|im_end|>"  # not scored
    with torch.no_grad():
        logp = torch.log_softmax(model(**batch, use_cache=False).logits[0].float(), -1)
    expected = -sum(logp[start + j - 1, ids[start + j]].item() for j in range(len(answer_ids))) / len(answer_ids)
    # inside a padded batch with shorter and longer answers, as evaluate runs it
    (nll, n), *_ = answer_nll(model, processor, [record, records[0], records[4]])
    assert n == len(answer_ids) == (5 if answer is None else 1)
    assert nll == pytest.approx(expected, abs=1e-5)


def test_nll_without_chat_template(tiny):
    """A plain tokenizer (no template) renders "Question: ...\nAnswer: ...": the answer is still scored alone."""
    family, _, model, processor, records = tiny
    if family != "llama":
        pytest.skip("text-only tokenizer case")
    plain = copy.deepcopy(processor)
    plain.chat_template = None
    assert render_prompt(plain, records[2], with_answer=True).endswith("?\nAnswer: 3 plus 4 is 7")
    (_, n), = answer_nll(model, plain, [records[2]])
    assert n == 5


def test_evaluate_rejects_records_without_answer(tiny):
    _, _, model, processor, records = tiny
    bad = dataclasses.replace(records[0], answer=None)
    with pytest.raises(DataError, match="no 'answer'"):
        evaluate(model, processor, [bad])
    with pytest.raises(DataError, match="an empty one"):
        evaluate(model, processor, [dataclasses.replace(records[0], answer=" ")])


def test_evaluate_uses_record_choices(tiny, monkeypatch):
    """Choices in a record's extra fields reach the scorer (generation replaced by fixed text)."""
    _, _, model, processor, records = tiny
    rec = dataclasses.replace(records[0], answer="blue", extra={"choices": ["red", "blue"]})
    monkeypatch.setattr(evaluation, "generate_outputs", lambda m, p, rs, n: ["(B)"] * len(rs))
    result = evaluate(model, processor, [rec])
    assert result.predictions[0].correct and result.overall.accuracy == 1.0


# ----------------------------------------------------------------------------- files, table
def _answered_file(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_evaluate_path_writes_metrics_and_predictions(tiny, calib_dir, tmp_path):
    family, src, *_ = tiny
    if family != "qwen3_vl":
        pytest.skip("one end-to-end file test is enough")
    out = tmp_path / "res" / "metrics.json"
    metrics = evaluate_path(ModelSpec(src, dtype="float32"), [calib_dir / "calib.jsonl"], out, batch_size=4, max_new_tokens=4)
    assert json.loads(out.read_text()) == metrics
    assert predictions_path(out) == tmp_path / "res" / "metrics.predictions.jsonl"
    rows = [json.loads(line) for line in predictions_path(out).read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"s{i}" for i in range(6)] + ["t0"]
    assert {"id", "domain", "question", "reference", "output", "extracted", "correct", "nll"} <= set(rows[0])
    assert metrics["num_samples"] == 7 and metrics["predictions_file"] == "metrics.predictions.jsonl"
    assert metrics["domains"]["math"]["n"] == 4 and metrics["domains"]["general"]["n"] == 3
    assert metrics["settings"]["max_new_tokens"] == 4 and metrics["settings"]["dtype"] == "float32"
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json", "metrics.predictions.jsonl"]

    before = out.read_text()
    with pytest.raises(FileExistsError, match=r"metrics\.json.*--overwrite"):
        evaluate_path(ModelSpec(src, dtype="float32"), [calib_dir / "calib.jsonl"], out)
    assert out.read_text() == before
    evaluate_path(ModelSpec(src, dtype="float32"), [calib_dir / "calib.jsonl"], out, max_new_tokens=2,
                  overwrite=True)
    assert json.loads(out.read_text())["settings"]["max_new_tokens"] == 2


def test_evaluate_path_requires_answers_before_loading(tmp_path):
    data = _answered_file(tmp_path / "d.jsonl", [{"id": "a", "domain": "math", "question": "what ?"}])
    out = tmp_path / "m.json"
    with pytest.raises(DataError, match=r"d\.jsonl:1: record has no 'answer'"):
        evaluate_path(ModelSpec(tmp_path / "no-such-model"), data, out)
    assert not out.exists()


def test_format_metrics_table():
    metrics = {"model": "tiny", "num_samples": 4, "samples_per_second": 2.5, "overall": {
        "n": 4, "correct": 3, "accuracy": 0.75, "ci95": [0.3006, 0.9544], "answer_nll": 1.2345},
        "domains": {"general": {"n": 1, "correct": 1, "accuracy": 1.0, "ci95": [0.2065, 1.0], "answer_nll": None},
                    "math": {"n": 3, "correct": 2, "accuracy": 2 / 3, "ci95": [0.2077, 0.9385], "answer_nll": 0.5}}}
    console = Console(file=io.StringIO(), width=120)
    console.print(format_metrics_table(metrics))
    text = console.file.getvalue()
    for expected in ("tiny", "2.50 samples/s", "general", "math", "all", "66.7", "20.8–93.8",
                     "75.0", "1.234", "0.500", "n/a"):
        assert expected in text
    # an EvalResult renders the same way
    preds = [Prediction(id=str(i), domain="math", question="q", reference="7", output=o,
                        extracted=o, correct=o == "7", nll=0.5, answer_tokens=1) for i, o in enumerate("78")]
    console = Console(file=io.StringIO(), width=120)
    console.print(format_metrics_table(EvalResult(preds, seconds=2.0)))
    assert "50.0" in console.file.getvalue() and "1.00 samples/s" in console.file.getvalue()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_evaluate_runs_on_every_supported_architecture(family, calib_dir, tmp_path):
    """Generation, scoring and answer NLL on each family depthprune prunes (text prompts;
    the Qwen-VL families also with images)."""
    src = save_tiny(family, tmp_path / "src")
    model, processor = load_model(src, dtype="float32")
    with_images = family in VLM_FAMILIES and family.startswith("qwen")
    records = load_records(calib_dir / ("calib.jsonl" if with_images else "text.jsonl"))
    records = [dataclasses.replace(r, answer=r.answer or "7") for r in records]
    result = evaluate(model, processor, records, batch_size=2, max_new_tokens=3)
    assert len(result.predictions) == len(records)
    for domain, metrics in result.domains.items():
        assert metrics.n == sum(r.domain == domain for r in records)
        assert math.isfinite(metrics.answer_nll) and metrics.answer_nll > 0
