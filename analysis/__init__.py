"""Analysis of IFEval sweeps: paired statistics (paired_stats) and the report/plots (report).

Everything here only *reads* result files (see docs/ARCHITECTURE.md); nothing trains or evaluates.
"""
