"""Scoring: the one forward pass with hooks, the scores file, single-layer ablation, and which
signal predicts which domain's damage."""
