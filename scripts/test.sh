#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite; slow tests: add `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1
python -m pytest -q "$@"
