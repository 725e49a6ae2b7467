"""The runtimes users deploy pruned models with, driven from Python for checks and benchmarks:
llama.cpp for GGUF files (:mod:`depthprune.runtimes.llamacpp`, through the optional
``runtime`` extra) and vLLM for checkpoints (``scripts/vllm_check.sh``, in its own environment).
Nothing else in depthprune imports them."""
