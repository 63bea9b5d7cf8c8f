"""Kept so that `python -m ifeval.run` still works: the code lives in `sftbench.eval.run`."""
from sftbench.eval.run import main

if __name__ == "__main__":
    raise SystemExit(main())
