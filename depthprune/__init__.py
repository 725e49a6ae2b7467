"""depthprune: domain-aware depth pruning of Hugging Face vision-language and language models."""

__version__ = "0.1.0"

from .api import diagnose, plan, prune, score  # noqa: E402
from .data import DataError, Record, load_records  # noqa: E402
from .methods import METHODS, Plan, RankError, RankRequest  # noqa: E402
from .models import ModelError, load_model  # noqa: E402
from .pruning import PruneError, prune_layers, save_pruned  # noqa: E402
from .scores import Scores, ScoresError  # noqa: E402

__all__ = ["DataError", "diagnose", "METHODS", "ModelError", "Plan", "PruneError", "RankError", "RankRequest",
           "Record", "Scores", "ScoresError", "load_model", "load_records", "plan", "prune",
           "prune_layers", "save_pruned", "score", "__version__"]
