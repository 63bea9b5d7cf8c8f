"""What a model *is*, cheaply: a fingerprint of its weights and config, so results are keyed by the weights
they were computed from and not only by a path that a retrain can fill with other weights.

    fingerprint(model_dir) -> "sfp1:<sha256 hex>" | None      (None: not a local directory, e.g. a hub id)
    check_weights(model_dir)                                   UserError naming a truncated/corrupt safetensors file
    weights_newer_than(model_dir, t) -> bool                   for results written before fingerprints existed

The hash covers, in order: config.json's bytes; for each weights file (model.safetensors, the shards named by
model.safetensors.index.json, pytorch_model.bin, ...) its name and size and, for safetensors, the header (every
tensor's name, dtype, shape and offsets) plus SAMPLE bytes at the start, middle and end of every tensor; for
any other weights file (or a safetensors file whose header cannot be parsed), N_CHUNKS evenly spaced chunks.
Training moves every trainable tensor, so sampled bytes of each tensor tell two trainings apart, while the cost
stays a few hundred small reads (milliseconds) instead of hashing the whole file.  No torch import.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from sftbench.core.errors import UserError

VERSION = "sfp1"
SAMPLE = 4096          # bytes read at the start, middle and end of each tensor
N_CHUNKS = 64          # chunks read from a weights file that is not safetensors
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
SINGLE_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The weights files of a model directory: single files, plus every shard an index file names."""
    d = Path(model_dir)
    files = [d / n for n in SINGLE_FILES if (d / n).is_file()]
    for n in INDEX_FILES:
        f = d / n
        if f.is_file():
            files.append(f)
            try:
                shards = sorted(set((json.loads(f.read_text(encoding="utf-8")).get("weight_map") or {}).values()))
            except (ValueError, AttributeError, OSError):
                shards = []  # check_weights names the problem; the index's bytes are hashed below
            files += [d / s for s in shards if (d / s).is_file()]
    return files


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header dict, byte offset where tensor data starts).  UserError when the file is truncated or corrupt:
    too short for its header, a header that is not a JSON object, or tensor data past the end of the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{path}: truncated safetensors file ({size} bytes, too short for a header). "
                            f"Copy or save the checkpoint again.")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            raise UserError(f"{path}: truncated or not a safetensors file (its header claims {n} bytes; the file "
                            f"has {size}). Copy or save the checkpoint again.")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupt safetensors header (not a JSON object). Copy or save the checkpoint again.")
    end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"
               and isinstance(t, dict) and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2),
              default=0)
    if 8 + n + end > size:
        raise UserError(f"{path}: truncated safetensors file: its header needs {8 + n + end} bytes, the file has "
                        f"{size} ({8 + n + end - size} missing). Copy or save the checkpoint again.")
    return header, 8 + n


def check_weights(model_dir: str | os.PathLike) -> None:
    """UserError when a safetensors weights file of a local model directory is truncated or corrupt."""
    for f in weight_files(model_dir):
        if f.suffix == ".safetensors":
            read_safetensors_header(f)


def _hash_safetensors(h, f, path: Path) -> bool:
    try:
        header, start = read_safetensors_header(path)
    except UserError:
        return False
    h.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(k for k in header if k != "__metadata__"):
        t = header[name]
        try:
            b, e = (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            continue
        n = e - b
        for off in sorted({b, b + max(0, n // 2 - SAMPLE // 2), max(b, e - SAMPLE)}):
            f.seek(start + off)
            h.update(f.read(min(SAMPLE, e - off)))
    return True


def _hash_chunks(h, f, size: int) -> None:
    step = max(1, size // N_CHUNKS)
    for off in range(0, size, step)[:N_CHUNKS]:
        f.seek(off)
        h.update(f.read(SAMPLE))
    f.seek(max(0, size - SAMPLE))
    h.update(f.read(SAMPLE))


def fingerprint(model_dir: str | os.PathLike | None) -> str | None:
    """"sfp1:<64 hex>" for a local model directory (config.json + weights); None for anything else (a hub id,
    a missing path).  Never raises for a malformed file (it is hashed by chunks); check_weights reports those."""
    if not model_dir:
        return None
    d = Path(model_dir).expanduser()
    files = weight_files(d) if d.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256(VERSION.encode())
    cfg = d / "config.json"
    h.update(cfg.read_bytes() if cfg.is_file() else b"")
    for p in files:
        size = p.stat().st_size
        h.update(f"\0{p.name}\0{size}\0".encode())
        with open(p, "rb") as f:
            if p.name.endswith(".json"):
                h.update(f.read())
            elif not (p.suffix == ".safetensors" and _hash_safetensors(h, f, p)):
                _hash_chunks(h, f, size)
    return f"{VERSION}:{h.hexdigest()}"


def weights_newer_than(model_dir: str | os.PathLike, t: float) -> bool:
    """Whether config.json or a weights file was modified after time t (seconds since the epoch)."""
    d = Path(model_dir)
    files = weight_files(d) + ([d / "config.json"] if (d / "config.json").is_file() else [])
    return any(p.stat().st_mtime > t for p in files)
