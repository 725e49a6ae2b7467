#!/usr/bin/env bash
# Create .venv (if missing) and install depthprune with its test extras (and the runtime extra: llama.cpp).
# torch/torchvision are installed first as a matching pair: transformers 5 builds the
# Qwen-VL image/video processors on torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch, torchvision" 2>/dev/null; then
  python -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
python -m pip install -q -e ".[test,vision]"
# llama.cpp for the runtime tests (tests/runtimes/): one manylinux_2_28 x86-64 wheel; where it does
# not install, those tests skip and say why
python -m pip install -q -e ".[runtime]" || echo "setup: the runtime extra (ik-llama-cpp-python) did not install; the llama.cpp tests will be skipped"
