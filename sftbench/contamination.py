"""Kept so that `python -m sftbench.contamination` still works: the code lives in `sftbench.data.contamination`."""
from sftbench.data.contamination import main

if __name__ == "__main__":
    raise SystemExit(main())
