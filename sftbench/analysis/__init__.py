"""Layer 10, analysis of sweeps: paired statistics, the verdict (the one place a verdict sentence is written),
seen vs held-out constraint types, the report.  Reads result files only."""
