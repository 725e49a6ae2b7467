"""Models: where each architecture keeps its decoder layers (adapters), exact loading, GGUF input."""
