"""Issue 6, sections 1, 4 and 5: every bad input a user can give ends in one line naming it
(exit 2, no traceback, no temporary, inputs unchanged), and cheap checks run before any model
loads. "Before loading" is shown with a checkpoint whose config is fine but whose weights are
garbage: if the option's error comes out, it was checked first."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from depthprune.data.records import load_records
from tests.helpers.cli import assert_user_error, run, tree_hash
from tests.helpers.tiny_models import save_tiny


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    qwen = save_tiny("qwen3_vl", root / "qwen")
    broken = root / "broken"  # a valid config with unreadable weights
    shutil.copytree(qwen, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    return {"qwen": qwen, "broken": broken}


@pytest.fixture(scope="module")
def scored(models, calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores") / "scores.json"
    res = run("--quiet", "score", models["qwen"], "--data", calib_dir / "calib.jsonl", "--out", out,
              "--batch-size", "4")
    assert res.exit_code == 0, res.output
    return out


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height pixels but holds none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ data files and images
def test_data_errors_name_file_and_line_before_the_model_loads(models, tmp_path):
    broken = models["broken"]
    before = tree_hash(broken)
    good = {"id": "a", "domain": "math", "question": "what is 2 plus 2 ?", "answer": "4"}
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps(good).encode() + b"\n" + '{"id": "b", "domain": "math", "question": "caf\xe9"}'
                       .encode("latin-1") + b"\n")
    assert_user_error(run("score", broken, "--data", latin1, "--out", tmp_path / "s.json"),
                      f"{latin1}:2", "UTF-8", roots=(tmp_path,))
    assert_user_error(run("eval", broken, "--data", latin1, "--out", tmp_path / "m.json"),
                      f"{latin1}:2", "UTF-8", roots=(tmp_path,))
    (tmp_path / "imgs").mkdir()
    _png_header_only(tmp_path / "imgs" / "bomb.png", 40000, 40000)
    bomb = _jsonl(tmp_path / "bomb.jsonl", [good, dict(good, id="b", image="imgs/bomb.png")])
    assert_user_error(run("score", broken, "--data", bomb, "--out", tmp_path / "s.json"),
                      f"{bomb}:2", "bomb.png", "too large", roots=(tmp_path,))
    img = Image.new("RGB", (64, 64), (10, 200, 30))
    img.save(tmp_path / "imgs" / "ok.png")
    data = (tmp_path / "imgs" / "ok.png").read_bytes()
    (tmp_path / "imgs" / "cut.png").write_bytes(data[: len(data) // 2])
    cut = _jsonl(tmp_path / "cut.jsonl", [dict(good, image="imgs/cut.png")])
    assert_user_error(run("eval", broken, "--data", cut, "--out", tmp_path / "m.json"),
                      f"{cut}:1", "cut.png", "cannot be read", roots=(tmp_path,))
    assert_user_error(run("score", broken, "--data", tmp_path, "--out", tmp_path / "s.json"),
                      str(tmp_path), "directory")
    assert_user_error(run("score", broken, "--data", tmp_path / "none.jsonl", "--out", tmp_path / "s.json"),
                      "none.jsonl", "not found")
    assert tree_hash(broken) == before and not (tmp_path / "s.json").exists()


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    rows = [{"id": "a", "domain": "math", "question": "2 plus 2 ?", "answer": "4"},
            {"id": "b", "domain": "general", "question": "colour ?", "answer": "red"}]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    records = load_records(path)
    assert [r.id for r in records] == ["a", "b"] and records[0].domain == "math"


# ------------------------------------------------------------------ checkpoints and devices
def test_device_errors_before_loading(models, calib_dir, tmp_path):
    import torch
    data = calib_dir / "calib.jsonl"
    for device in ("banana", "cuda:99", "meta"):
        assert_user_error(run("score", models["broken"], "--data", data, "--out", tmp_path / "s.json",
                              "--device", device), "--device", device, roots=(tmp_path,))
    if not torch.cuda.is_available():
        assert_user_error(run("prune", models["broken"], "--layers", "4", "--out", tmp_path / "o",
                              "--device", "cuda"), "--device 'cuda'", "no cuda device", roots=(tmp_path,))
    assert_user_error(run("eval", models["broken"], "--data", data, "--out", tmp_path / "m.json",
                          "--device-map", "everywhere"), "--device-map", "everywhere", roots=(tmp_path,))
    assert_user_error(run("score", models["broken"], "--data", data, "--out", tmp_path / "s.json",
                          "--dtype", "float8"), "--dtype", "float8", roots=(tmp_path,))
    assert not (tmp_path / "o").exists()


def test_unloadable_checkpoints_are_one_line_errors(models, calib_dir, tmp_path):
    qwen = models["qwen"]
    data = calib_dir / "calib.jsonl"
    truncated = tmp_path / "truncated"
    shutil.copytree(qwen, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    bin_only = tmp_path / "bin_only"
    shutil.copytree(qwen, bin_only)
    (bin_only / "model.safetensors").rename(bin_only / "pytorch_model.bin")
    whisper = tmp_path / "whisper"
    whisper.mkdir()
    from transformers import WhisperConfig
    WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1).save_pretrained(whisper)
    badconfig = tmp_path / "badconfig"
    shutil.copytree(qwen, badconfig)
    (badconfig / "config.json").write_text("{ not json")
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(qwen, no_tokenizer)
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    cases = [(models["broken"], "corrupt or truncated safetensors"), (no_tokenizer, "no tokenizer files"),
             (truncated, "corrupt or truncated safetensors"),
             (bin_only, ".bin"), (whisper, "encoder-decoder"), (badconfig, "config"),
             (tmp_path / "missing", "not found"), (data, "not found")]
    for model, needle in cases:
        before = tree_hash(model) if model.exists() else None
        for res in (run("score", model, "--data", data, "--out", tmp_path / "s.json"),
                    run("prune", model, "--layers", "4", "--out", tmp_path / "o")):
            assert_user_error(res, model, needle, roots=(tmp_path,))
        assert (tree_hash(model) if model.exists() else None) == before
    res = run("score", "nobody/no-such-model", "--data", data, "--out", tmp_path / "s.json")
    line = assert_user_error(res, "nobody/no-such-model", "not found locally", "network")
    assert "trust-remote-code" not in line
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "o").exists()


# ------------------------------------------------------------------ scores and plan files
def _drop(key):
    return lambda d: d.pop(key) and None


def _edits():
    return [
        (_drop("num_layers"), "missing key(s) ['num_layers']"),
        (lambda d: d.update(extra=1), "unknown key(s) ['extra']"),
        (lambda d: d.update(num_layers="6"), "'num_layers' must be"),
        (lambda d: d.update(sample_ids=[1, 2]), "'sample_ids' must be"),
        (lambda d: [d], "found a list"),
        (lambda d: d.update(protected_layers=[]), "fingerprint mismatch"),
    ]


def test_hand_edited_scores_file(scored, tmp_path):
    from tests.helpers.cli import edit_json
    for i, (edit, needle) in enumerate(_edits()):
        d = tmp_path / str(i)
        d.mkdir()
        shutil.copy(scored, d / "scores.json")
        shutil.copy(scored.with_suffix(".safetensors"), d / "scores.safetensors")
        edit_json(d / "scores.json", edit)
        assert_user_error(run("rank", d / "scores.json", "--domain", "math", "--bootstrap", "0"),
                          d / "scores.json", needle)
    d = tmp_path / "cut"
    d.mkdir()
    shutil.copy(scored, d / "scores.json")
    tensors = scored.with_suffix(".safetensors").read_bytes()
    (d / "scores.safetensors").write_bytes(tensors[: len(tensors) - 40])
    assert_user_error(run("rank", d / "scores.json", "--domain", "math"), "scores.safetensors",
                      "corrupt or truncated")
    (d / "scores.json").write_bytes(b"\xff\xfe garbage")
    assert_user_error(run("rank", d / "scores.json", "--domain", "math"), d / "scores.json", "not a scores")
    assert_user_error(run("rank", d, "--domain", "math"), d, "directory")


def test_plan_files_are_validated_like_layers(models, scored, tmp_path):
    from tests.helpers.cli import edit_json
    plan = tmp_path / "p.plan.json"
    assert run("rank", scored, "--domain", "math", "--budget", "2", "--bootstrap", "0",
               "--save-plan", plan).exit_code == 0
    broken, out = models["broken"], tmp_path / "out"
    before = tree_hash(broken)
    edits = [
        (_drop("remove"), "missing key(s) ['remove']"),
        (lambda d: d.update(colour="red"), "unknown key(s) ['colour']"),
        (lambda d: d.update(remove=[str(i) for i in d["remove"]]), "not layer numbers"),
        (lambda d: [d], "found a list"),
        (lambda d: d.update(remove=[4, 4], budget=2, keep=[0, 1, 2, 3, 5]), "more than once"),
        (lambda d: d.update(remove=[9], budget=1, keep=list(range(6))), "do not exist"),
        (lambda d: d.update(remove=[1], budget=1, protected=[], keep=[0, 2, 3, 4, 5]), "deepstack"),
        (lambda d: d.update(budget=5), "'budget' is 5"),
        (lambda d: d["request"].update(allow_deepstack="yes"), "'request.allow_deepstack'"),
        (lambda d: d["request"].update(protect_first="2"), "'request.protect_first'"),
        (lambda d: d["request"].update(colour=1), "unknown key(s) ['colour'] in 'request'"),
        (lambda d: d.update(num_layers=8, keep=[i for i in range(8) if i not in d["remove"]]), "8 decoder layers"),
    ]
    for i, (edit, needle) in enumerate(edits):
        edited = tmp_path / f"e{i}.plan.json"
        shutil.copy(plan, edited)
        edit_json(edited, edit)
        assert_user_error(run("prune", broken, "--plan", edited, "--out", out), edited, needle, roots=(tmp_path,))
    assert tree_hash(broken) == before and not out.exists()


def test_layers_and_options_checked_before_loading(models, scored, calib_dir, tmp_path):
    broken, out = models["broken"], tmp_path / "out"
    before = tree_hash(broken)
    cases = [
        (("--layers", "3,3,4"), "more than once"),
        (("--layers", "4,x"), "comma-separated 0-based integers"),
        (("--layers", "9"), "do not exist"),
        (("--layers", "1"), "deepstack"),
        (("--layers", "3", "--protect-last", "3"), "protect"),
        (("--method", "last", "--budget", "abc"), "budget 'abc'"),
        (("--method", "last", "--budget", "6"), "leaving none"),
        (("--method", "nope", "--budget", "1"), "unknown method 'nope'"),
        (("--scores", scored, "--method", "domain", "--domain", "code", "--budget", "1"), "'code' is not in"),
        (("--scores", scored, "--method", "mixed", "--weights", "math=x", "--budget", "1"), "weights"),
        (("--method", "domain", "--domain", "math", "--budget", "1"), "needs scores"),
        (("--plan", tmp_path / "none.plan.json"), "none.plan.json"),
        (("--method", "iterative", "--base", "domain", "--domain", "code", "--budget", "1",
          "--data", calib_dir / "calib.jsonl"), "'code' is not in the data"),
    ]
    for args, needle in cases:
        assert_user_error(run("prune", broken, "--out", out, *args), needle, roots=(tmp_path,))
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_user_error(run("prune", broken, "--layers", "4", "--out", afile / "sub"), afile / "sub", "cannot write")
    study = tmp_path / "study.yaml"  # a study's budgets are checked before its model loads
    study.write_text(f"model: {broken}\ncalibration: {{data: [{calib_dir / 'calib.jsonl'}]}}\n"
                     f"eval: [{{name: e, data: [{calib_dir / 'calib.jsonl'}]}}]\nmethods: [last]\nbudgets: [abc]\n")
    assert_user_error(run("sweep", study, "--out", tmp_path / "demo"), "budgets")
    assert tree_hash(broken) == before and not out.exists() and not (tmp_path / "demo").exists()


def test_spaced_explains_its_limit(scored):
    line = assert_user_error(run("rank", scored, "--method", "spaced", "--base", "block-influence",
                                 "--budget", "3", "--bootstrap", "0"), "neighbours", "50%")
    assert "[3, 4, 5]" in line


def test_stability_only_for_the_domains_the_method_reads(scored):
    res = run("rank", scored, "--domain", "math", "--budget", "1", "--bootstrap", "5")
    assert res.exit_code == 0, res.output
    assert "stability of math" in res.output and "stability of general" not in res.output
    res = run("rank", scored, "--method", "mixed", "--budget", "1", "--bootstrap", "5")
    assert "stability of math" in res.output and "stability of general" in res.output


def test_long_paths_are_not_wrapped(models, tmp_path):
    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / ("and-another-one-" * 4) / "scores.json"
    line = assert_user_error(run("rank", deep, "--bootstrap", "0"), "scores file not found")
    assert str(deep) in line


def test_records_the_model_cannot_take(models, tmp_path):
    Image.new("RGB", (2, 900), (1, 2, 3)).save(tmp_path / "thin.png")
    thin = _jsonl(tmp_path / "thin.jsonl", [{"id": "a", "domain": "math", "image": "thin.png", "question": "what ?"}])
    assert_user_error(run("--quiet", "score", models["qwen"], "--data", thin, "--out", tmp_path / "s.json"),
                      f"{thin}:1", "aspect ratio", roots=(tmp_path,))
    for messages, needle in (([{"role": "system", "content": "hi"}], "no user turn"),
                             ([{"role": "robot", "content": "hi"}], "role 'robot'")):
        bad = _jsonl(tmp_path / "m.jsonl", [{"id": "a", "domain": "math", "messages": messages}])
        assert_user_error(run("score", models["broken"], "--data", bad, "--out", tmp_path / "s.json"),
                          f"{bad}:1", needle, roots=(tmp_path,))
    assert not (tmp_path / "s.json").exists()
