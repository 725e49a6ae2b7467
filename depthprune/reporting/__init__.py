"""Reports: regime analysis, statistics, plots and the HTML/Markdown report of a run directory."""
