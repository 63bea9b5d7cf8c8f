"""Reading records: .jsonl / .json files, folders of them, or a Hugging Face dataset id.

A record comes with where it was found: (source file or dataset id, 1-based line (JSONL) or record index
(JSON list, hub dataset), the parsed JSON value).  Bad records are BadRecord errors; what to do with them
(stop at the first, or skip and count) is `apply_bad_record_policy`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sftbench.core.errors import UserError
from sftbench.core.io import iter_jsonl_lines, json_error_text, read_json, utf8_error_text

CONVERSATION_KEYS = ("messages", "conversations")
DATA_SUFFIXES = (".jsonl", ".json")
BAD_RECORD_POLICIES = ("error", "skip")
# The trainer's flag that skips bad records (the hint printed when a data set has several).
SKIP_FLAG = "--skip_bad_records"

Record = tuple[str, int, Any]


class BadRecord(UserError):
    """A record that cannot be used; `reason` is the key counted in DataStats.skipped_bad."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Loaded:
    """What `read_records` found: the records, malformed lines (lenient reading only), a content fingerprint."""

    records: list[Record]
    bad: list[BadRecord] = field(default_factory=list)
    fingerprint: str = ""


# a name ending like a data file is a path, never a hub dataset id (a typo must not become a hub download)
PATH_SUFFIXES = (*DATA_SUFFIXES, ".csv", ".parquet", ".txt", ".gz", ".zst")


def looks_like_hub_id(path: str) -> bool:
    return (path.count("/") == 1 and not path.startswith((".", "/", "~")) and all(path.split("/"))
            and not path.lower().endswith(PATH_SUFFIXES))


def data_files(data_path: str) -> list[Path]:
    """The files a data path names: itself, or the .json/.jsonl files of a folder (sorted by name)."""
    p = Path(data_path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise UserError(f"{p}: directory has no .json or .jsonl files. Point --data_path at a file or a folder of them.")
        return files
    if p.is_file():
        if p.suffix.lower() not in DATA_SUFFIXES:
            raise UserError(f"{p}: unsupported data file type {p.suffix or '(none)'}; use .jsonl (one conversation per line) or .json (a list of conversations).")
        return [p]
    if not p.is_absolute() and ("/" in data_path or "\\" in data_path or data_path.lower().endswith(PATH_SUFFIXES)):
        raise UserError(f"no such file: {data_path} (relative to the current directory, {Path.cwd()}). Run from the "
                        f"directory it is relative to, or give an absolute path.")
    raise UserError(
        f"{data_path}: data path not found. Give a .jsonl/.json file, a folder of them, or a Hugging Face dataset id "
        f"such as PeterV09/smol-smoltalk-6k."
    )


def iter_jsonl_lenient(path: Path, bad: list[BadRecord], data: bytes | None = None) -> Iterable[tuple[int, Any]]:
    """Like sftbench.core.io.iter_jsonl, but collects malformed lines (bad JSON, bytes that are not UTF-8) instead of
    stopping at the first.  data: the file's bytes, when read already."""
    for i, start, raw in iter_jsonl_lines(path, data):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.append(BadRecord(utf8_error_text(path, i, start, e), "invalid_utf8"))
            continue
        if not line.strip():
            continue
        try:
            yield i, json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            bad.append(BadRecord(f"{path}:{i}: {json_error_text(e)}. Fix or remove that line.", "malformed_json"))


def read_json_records(path: Path, data: bytes | None = None) -> list[Any]:
    """The records of a .json file: a list, or an object with the list under "data"/"train", or one conversation."""
    obj = read_json(path, data)
    if isinstance(obj, dict):
        for key in ("data", "train"):
            if isinstance(obj.get(key), list):
                return obj[key]
        if any(k in obj for k in CONVERSATION_KEYS):
            return [obj]  # a single conversation
        raise UserError(f"{path}: a .json data file must hold a list of conversations, or an object with the list under \"data\" or \"train\"; found an object with keys {sorted(obj)[:8]}.")
    if isinstance(obj, list):
        return obj
    raise UserError(f"{path}: a .json data file must hold a list of conversations; found {type(obj).__name__}.")


def load_hub_dataset(data_id: str) -> Loaded:
    try:
        import datasets

        ds = datasets.load_dataset(data_id, split="train")
    except Exception as e:  # offline, unknown id, no train split, ...
        raise UserError(
            f"{data_id}: not a local path, and loading it as a Hugging Face dataset (split 'train') failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Check the id and your network, or download it to a .jsonl file."
        ) from None
    fingerprint = getattr(ds, "_fingerprint", None) or hashlib.sha256(json.dumps(ds[:], default=str).encode()).hexdigest()
    return Loaded([(data_id, i, rec) for i, rec in enumerate(ds, start=1)], [], f"hf:{data_id}:{fingerprint}")


def read_file_bytes(f: Path) -> bytes:
    """The one read of a data file: its records and its fingerprint come from these bytes."""
    return f.read_bytes()


def _read_file(f: Path, data: bytes, lenient: bool, bad: list[BadRecord]) -> list[Record]:
    if f.suffix.lower() != ".jsonl":
        return [(str(f), i, r) for i, r in enumerate(read_json_records(f, data), start=1)]
    found: list[BadRecord] = []
    rows = [(str(f), i, r) for i, r in iter_jsonl_lenient(f, found, data)]
    if found and not lenient:  # the first malformed line, as sftbench.core.io.iter_jsonl would raise it
        raise UserError(str(found[0]))
    bad.extend(found)
    return rows


def read_records(data_path: str, lenient: bool = False) -> Loaded:
    """Read every record of a data path.  lenient: collect malformed JSONL lines in .bad instead of raising.

    The fingerprint (for the tokenised-data cache key and resume) is 'files:<sha256 of the files' names and
    bytes>', or 'hf:<id>:<the hub dataset's fingerprint>'.  Each file is read once (read_file_bytes).
    """
    p = Path(data_path).expanduser()
    if not p.exists() and looks_like_hub_id(data_path):
        return load_hub_dataset(data_path)
    out = Loaded([])
    h = hashlib.sha256()
    for f in data_files(data_path):
        data = read_file_bytes(f)  # read once: parsed and hashed from the same bytes
        h.update(f.name.encode() + b"\0" + hashlib.sha256(data).digest())
        out.records.extend(_read_file(f, data, lenient, out.bad))
    out.fingerprint = "files:" + h.hexdigest()
    return out


def load_records(data_path: str) -> list[Record]:
    """Read every record: [(source file or dataset id, 1-based line (JSONL) or record index (JSON/hub), record)].

    Accepts a .jsonl file, a .json file (a list, or an object with a list under "data"/"train"), a directory of
    .json/.jsonl files (sorted by name), or a Hugging Face dataset id ("owner/name", split "train") when no local
    path of that name exists.  UserError naming the path (and file:line for malformed JSON).
    """
    return read_records(data_path, lenient=False).records


def where_of(source: str, index: int) -> str:
    """'file:line' for JSONL records; 'file: record N' for JSON lists and hub datasets."""
    if source.lower().endswith(".jsonl"):
        return f"{source}:{index}"
    return f"{source}: record {index}"


def check_bad_record_policy(on_bad_record: str) -> None:
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise UserError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}.")


def apply_bad_record_policy(bad: list[BadRecord], on_bad_record: str) -> dict[str, int]:
    """"error": raise the first bad record (saying how many more there are); "skip": {reason: count}."""
    if bad and on_bad_record == "error":
        more = (f" ({len(bad) - 1} more bad record(s) in this data; pass {SKIP_FLAG} to skip and count them)"
                if len(bad) > 1 else "")
        raise UserError(f"{bad[0]}{more}")
    counts: dict[str, int] = {}
    for e in bad:
        counts[e.reason] = counts.get(e.reason, 0) + 1
    return counts
