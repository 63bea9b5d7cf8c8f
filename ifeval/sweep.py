"""Kept so that `python -m ifeval.sweep` still works: the code lives in `sftbench.eval.sweep`."""
from sftbench.eval.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
