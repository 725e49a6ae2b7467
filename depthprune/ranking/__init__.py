"""Ranking: requests, budgets and protection, the plan file, the method registry, stability."""
