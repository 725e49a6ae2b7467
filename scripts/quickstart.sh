#!/usr/bin/env bash
# Set up and run the whole idea on the bundled toy Qwen3-VL, offline: score the calibration
# split, prune 25% math-aware and general-aware, evaluate both on both domains.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1
depthprune demo --out runs/quickstart --overwrite "$@"
