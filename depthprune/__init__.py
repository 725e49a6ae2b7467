"""depthprune: domain-aware depth pruning of Hugging Face vision-language and language models."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use (PEP 562) so that `import depthprune` (and the CLI's
# --help) does not load torch and transformers.
_LAZY = {
    "plan": "api", "prune": "api", "score": "api", "diagnose": "api",
    "DataError": "data", "Record": "data", "load_records": "data",
    "METHODS": "methods", "Plan": "methods", "RankError": "methods", "RankRequest": "methods",
    "ModelError": "models", "load_model": "models",
    "PruneError": "pruning", "prune_layers": "pruning", "save_pruned": "pruning",
    "Scores": "scores", "ScoresError": "scores",
    "OutputError": "atomic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'depthprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = sorted(_LAZY) + ["__version__"]
