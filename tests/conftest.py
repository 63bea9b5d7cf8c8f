"""Shared fixtures: a tiny 2-layer Llama + tiny tokenizer, and ../shared when present."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(os.environ.get("SFTBENCH_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama (2 layers) + tokenizer with the plain ChatML template."""
    from sftbench.model.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from sftbench.model.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (test data); tests that need it skip cleanly in a user's clone."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (test data for conformance tests)")
    return SHARED
