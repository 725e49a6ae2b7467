"""Fixtures of the runtime tests: the real SmolLM2 GGUF fixture of the end-to-end tests."""

from tests.e2e.conftest import smollm2_path  # noqa: F401 - a fixture, used by name
