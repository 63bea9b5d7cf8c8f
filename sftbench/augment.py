"""Kept so that `python -m sftbench.augment` still works: the code lives in `sftbench.data.augment`."""
from sftbench.data.augment import main

if __name__ == "__main__":
    raise SystemExit(main())
