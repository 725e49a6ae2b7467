"""depthprune: domain-aware depth pruning of Hugging Face vision-language and language models."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use (PEP 562) so that `import depthprune` (and the CLI's
# --help) does not load torch and transformers.
_LAZY = {
    "score": "api", "plan": "api", "rank": "api", "prune": "api", "evaluate": "api", "heal": "api",
    "diagnose": "api", "sweep": "api", "report": "api", "demo": "api", "synth_data": "api",
    "text_data": "api", "lmms_task": "api",
    "HealConfig": "healing.recipe", "Study": "study.config", "load_study": "study.config",
    "DataError": "data.records", "Record": "data.records", "load_records": "data.records",
    "METHODS": "ranking.methods", "Plan": "ranking.plan", "RankError": "ranking.plan", "RankRequest": "options",
    "ModelSpec": "options", "ScoreSettings": "options", "CalibrationRun": "options", "LmmsTasks": "options",
    "Compensation": "compensation.spec",
    "ModelError": "models.architectures", "load_model": "models.loading",
    "PruneError": "pruning", "prune_layers": "pruning", "save_pruned": "pruning",
    "Scores": "scoring.scores", "ScoresError": "scoring.scores",
    "OutputError": "outputs",
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
