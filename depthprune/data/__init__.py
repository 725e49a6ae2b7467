"""Data: the JSONL record format and its rendering, and the two bundled benchmarks (synthetic
image benchmark of the toy, text benchmark for language models)."""
