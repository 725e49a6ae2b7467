"""depthprune: domain-aware depth pruning of Hugging Face vision-language and language models."""

__version__ = "0.1.0"
