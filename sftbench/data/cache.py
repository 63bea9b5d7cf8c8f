"""The tokenised-data cache: examples as JSONL (text, no pickles), keyed by a sha256 of everything that
determines them (data bytes, tokenizer, template, settings, MASKING_VERSION).

File: a header line {"key", "masking_version", "stats"} then one {"input_ids", "labels"} per line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Bump when the masking/truncation logic changes, so that cached examples built by older code are not reused.
MASKING_VERSION = 2  # 2: special-token text in contents tokenised as text; odd conversation orders


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(data_fingerprint: str, tokenizer, template: str, **settings) -> str:
    payload = {
        "data": data_fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": template,
        "masking_version": MASKING_VERSION,
        **settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"examples-{key[:24]}.jsonl"


def read_cache(path: Path, key: str) -> tuple[list[dict], dict] | None:
    """(examples, stats dict) when `path` holds a complete cache for `key`; None otherwise (rebuild)."""
    if not path.is_file():
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("key") != key:
                return None
            examples = [json.loads(line) for line in f if line.strip()]
        stats = dict(header["stats"])
        if len(examples) != stats["examples"]:
            return None  # incomplete or edited: rebuild
        return examples, stats
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def write_cache(path: Path, key: str, examples: list[dict], stats: dict) -> None:
    from sftbench.core.io import atomic_write_jsonl

    atomic_write_jsonl(path, [{"key": key, "masking_version": MASKING_VERSION, "stats": stats}, *examples])
