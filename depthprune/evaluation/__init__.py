"""Evaluation: answer rules, greedy generation and answer NLL, lmms-eval."""
