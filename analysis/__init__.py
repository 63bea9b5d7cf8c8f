"""Homework-compatible entry point only: `python -m analysis.report`.  The code lives in sftbench.analysis."""
