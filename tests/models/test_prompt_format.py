"""Prompt formats: the chat template, or the plain "Question: ...\\nAnswer:" format of base models
(no chat template, as most base GGUFs), chosen once per run (--prompt-format auto|chat|plain)
and used by score, eval and heal alike."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from depthprune.data.records import (
    DataError,
    Record,
    checkpoint_has_chat_template,
    encode,
    load_records,
    plain_prompt,
    prompt_format,
    render_prompt,
    set_prompt_format,
)
from depthprune.evaluation.generation import answer_span
from depthprune.models.loading import load_model
from tests.helpers.cli import assert_user_error, run
from tests.helpers.tiny_gguf import write_tiny_gguf
from tests.helpers.tiny_models import save_tiny


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    src = save_tiny("llama", tmp_path_factory.mktemp("llama") / "src")
    return src, *load_model(src, dtype="float32")


@pytest.fixture(scope="module")
def base_gguf(tmp_path_factory):
    """A tiny Llama GGUF without a chat template (a base model), its conversions cached inside."""
    d = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEPTHPRUNE_CACHE", str(d / "cache"))
        yield write_tiny_gguf(d / "base.gguf", chat_template=False)


def _record(**kw) -> Record:
    return Record(**{"id": "r", "domain": "math", "question": "what is 3 plus 4 ?", "answer": "7", **kw})


def test_plain_prompt_format():
    assert plain_prompt(_record()) == "Question: what is 3 plus 4 ?\nAnswer:"
    assert plain_prompt(_record(), with_answer=True) == "Question: what is 3 plus 4 ?\nAnswer: 7"
    turns = ({"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "2 plus 2 ?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "4"}]},
             {"role": "user", "content": [{"type": "text", "text": "3 plus 4 ?"}]})
    assert plain_prompt(_record(question=None, messages=turns)) == (
        "Be brief.\n\nQuestion: 2 plus 2 ?\nAnswer: 4\n\nQuestion: 3 plus 4 ?\nAnswer:")
    with pytest.raises(DataError, match="no place for images"):
        plain_prompt(_record(images=(Path("x.png"),)))


def test_one_decision_used_by_rendering_encoding_andanswer_spans(tiny_llama):
    _, _, tok = tiny_llama
    chat_tok, base_tok = copy.deepcopy(tok), copy.deepcopy(tok)
    base_tok.chat_template = None
    assert prompt_format(chat_tok) == "chat" and prompt_format(base_tok) == "plain"  # auto, unset
    assert set_prompt_format(chat_tok, "auto") == "chat" and set_prompt_format(base_tok, "auto") == "plain"
    assert render_prompt(chat_tok, _record()).startswith("<|im_start|>user")
    with pytest.raises(DataError, match="no chat template.*--prompt-format plain"):
        set_prompt_format(base_tok, "chat", "base-model")
    with pytest.raises(ValueError, match="choose one of auto, chat, plain"):
        set_prompt_format(chat_tok, "jinja")
    assert set_prompt_format(chat_tok, "plain") == "plain"  # explicit plain on an instruct model
    assert render_prompt(chat_tok, _record()) == "Question: what is 3 plus 4 ?\nAnswer:"
    full, start, end = answer_span(chat_tok, _record(answer="3 plus 4 is 7"))
    assert full == "Question: what is 3 plus 4 ?\nAnswer: 3 plus 4 is 7" and full[start:end] == " 3 plus 4 is 7"
    # plain text gets the tokenizer's special tokens (a template writes its own)
    plain_ids = encode(chat_tok, [_record()])["input_ids"][0].tolist()
    assert plain_ids == chat_tok("Question: what is 3 plus 4 ?\nAnswer:")["input_ids"]


def test_template_is_read_from_the_files_before_any_load(tiny_llama, base_gguf, tmp_path):
    src = tiny_llama[0]
    assert checkpoint_has_chat_template(src) is True
    assert checkpoint_has_chat_template(base_gguf) is False
    assert checkpoint_has_chat_template(write_tiny_gguf(tmp_path / "chat.gguf")) is True
    assert checkpoint_has_chat_template("some/hub-id") is None


def test_base_gguf_scores_evaluates_and_heals_in_plain_format(base_gguf, calib_dir, tmp_path):
    data = calib_dir / "text.jsonl"
    res = run("score", base_gguf, "--data", data, "--out", tmp_path / "scores.json")
    assert res.exit_code == 0, res.output
    assert "(plain prompts)" in res.output
    assert json.loads((tmp_path / "scores.json").read_text())["settings"]["prompt_format"] == "plain"
    res = run("eval", base_gguf, "--data", data, "--out", tmp_path / "metrics.json", "--max-new-tokens", "3")
    assert res.exit_code == 0, res.output
    assert "prompt format: plain" in res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["prompt_format"] == "plain" and metrics["num_samples"] == len(load_records(data))
    assert_user_error(run("eval", base_gguf, "--data", data, "--out", tmp_path / "m2.json", "--prompt-format",
                          "chat"), "no chat template", "--prompt-format plain", roots=(tmp_path,))
    assert not (tmp_path / "m2.json").exists()
    res = run("heal", base_gguf, "--data", data, "--out", tmp_path / "healed", "--steps", "2",
              "--batch-size", "2", "--save-steps", "2")
    assert res.exit_code == 0, res.output
    assert "plain prompts" in res.output
    healed = json.loads((tmp_path / "healed" / "pruning.json").read_text())["healing"]
    assert healed["recipe"]["prompt_format"] == "plain"


def test_instruct_model_can_be_evaluated_in_plain_format(tiny_llama, calib_dir, tmp_path):
    src = tiny_llama[0]
    args = ["eval", src, "--data", calib_dir / "text.jsonl", "--max-new-tokens", "2"]
    res = run(*args, "--out", tmp_path / "chat.json")
    assert res.exit_code == 0 and "prompt format: chat" in res.output, res.output
    res = run(*args, "--out", tmp_path / "plain.json", "--prompt-format", "plain")
    assert res.exit_code == 0 and "prompt format: plain" in res.output, res.output
    chat, plain = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("chat", "plain"))
    assert chat["prompt_format"] == "chat" and plain["prompt_format"] == "plain"
    assert chat["overall"]["answer_nll"] != plain["overall"]["answer_nll"]  # the prompts really differ
    assert_user_error(run("eval", src, "--lmms-eval", "x", "--out", tmp_path / "l.json", "--prompt-format",
                          "plain"), "--prompt-format and --baseline apply to --data")
