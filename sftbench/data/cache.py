"""The tokenised-data cache: examples as JSONL (text, no pickles), keyed by a sha256 of everything that
determines them (data bytes, tokenizer, template, settings, MASKING_VERSION).

File: a header line {"key", "masking_version", "stats"} then one {"input_ids", "labels"} per line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sftbench.model.hf import tokenizer_fingerprint

# Bump when the masking/truncation logic changes, so that cached examples built by older code are not reused.
MASKING_VERSION = 2  # 2: special-token text in contents tokenised as text; odd conversation orders


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
    """Write the cache; a cache dir that cannot be written (read-only, full, a file in the way) only costs the
    next run its tokenisation: a warning, and training goes on."""
    import sys

    from sftbench.core.io import atomic_write_jsonl

    try:
        atomic_write_jsonl(path, [{"key": key, "masking_version": MASKING_VERSION, "stats": stats}, *examples])
    except OSError as e:  # also sftbench.core.errors.DiskWriteError (full / read-only / permission)
        why = str(e) if type(e).__name__ == "DiskWriteError" else f"{path.parent}: {e.strerror or e}"
        print(f"warning: tokenised-data cache not written ({why.split('. ')[0]}); training goes on without it. "
              f"Point --data_cache_dir at a writable directory, or pass --data_cache_dir none.", file=sys.stderr,
              flush=True)
