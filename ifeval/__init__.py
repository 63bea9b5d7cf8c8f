"""Homework-compatible entry points only: `bash ifeval/run.sh`, `python -m ifeval.run`, `python -m ifeval.sweep`.
The evaluation lives in sftbench.eval (run, sweep, results), sftbench.tasks (prompts, scorers), sftbench.engine (generation)."""
