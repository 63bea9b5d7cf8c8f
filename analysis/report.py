"""Kept so that `python -m analysis.report` still works: the code lives in `sftbench.analysis.report`."""
from sftbench.analysis.report import main

if __name__ == "__main__":
    raise SystemExit(main())
