"""The train stage: its typed config (config.py), the engines (reference and fast), checkpoint IO and the
OOM policy.  `train_hw_parallel.py` at the repository root is the homework-compatible entry point."""
