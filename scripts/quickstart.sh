#!/usr/bin/env bash
# Set up and run the whole idea on the bundled toy Qwen3-VL, offline: a complete study (every
# ranking method, budgets 6%..50%, with and without healing), its report, and the headline
# table. Extra arguments go to `depthprune demo` (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1
depthprune demo --out runs/quickstart "$@"   # run again to resume
