"""Studies: the study file, the sweep over methods x budgets x healing, one cell, the results
store, data-parallel runs."""
