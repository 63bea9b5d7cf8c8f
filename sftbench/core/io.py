"""Text-only, atomic file IO: JSON / JSONL with line-numbered errors.

Every writer writes to a temporary name in the same directory and renames it over the
target, so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from sftbench.core.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row and fsync: used for logs and resumable partial results.

    A crash can at worst leave a final partial line, which `read_jsonl(..., tolerate_partial_tail=True)`
    drops.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def json_error_text(e: json.JSONDecodeError) -> str:
    """'malformed JSON at column N: what' (json's messages such as "Unterminated string starting at" end in "at")."""
    what = e.msg[:-3] if e.msg.endswith(" at") else e.msg
    return f"malformed JSON at column {e.colno}: {what}"


def utf8_error_text(path, line_no: int, line_start: int, e: UnicodeDecodeError) -> str:
    """'FILE:LINE: not valid UTF-8 (byte 0xff at byte offset N of the file, column C of the line). ...'"""
    bad = e.object[e.start:e.start + 1].hex()
    return (f"{path}:{line_no}: not valid UTF-8 (byte 0x{bad} at byte offset {line_start + e.start} of the file, "
            f"byte {e.start + 1} of the line). Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or "
            f"remove that line.")


def iter_jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset of the line in the file, the line's bytes) for each line."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    for i, line in enumerate(data.splitlines(keepends=True), start=1):
        yield i, pos, line
        pos += len(line)


def iter_jsonl(path: str | os.PathLike, tolerate_partial_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, parsed_object) for each non-blank line; 1-based line numbers.

    Raises UserError naming the file and line on malformed JSON or bytes that are not UTF-8 (with the byte
    offset).  With `tolerate_partial_tail`, a malformed *last* line without a trailing newline (a write cut
    off by a crash) is dropped silently instead.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found.")
    lines = list(iter_jsonl_lines(path))
    for i, start, raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if tolerate_partial_tail and i == len(lines) and not raw.endswith((b"\n", b"\r")):
                return
            raise UserError(utf8_error_text(path, i, start, e)) from None
        if not line.strip():
            continue
        try:
            yield i, json.loads(line.rstrip("\r\n"))  # else an unterminated string is an "invalid control character"
        except json.JSONDecodeError as e:
            if tolerate_partial_tail and i == len(lines) and not line.endswith(("\n", "\r")):
                return
            raise UserError(f"{path}:{i}: {json_error_text(e)}. Fix or remove that line.") from None


def read_jsonl(path: str | os.PathLike, tolerate_partial_tail: bool = False) -> list[Any]:
    return [obj for _, obj in iter_jsonl(path, tolerate_partial_tail)]


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; UserError naming file:line on malformed JSON or bytes that are not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        e2 = UnicodeDecodeError(e.encoding, data[line_start:], e.start - line_start, e.end - line_start, e.reason)
        raise UserError(utf8_error_text(path, data.count(b"\n", 0, e.start) + 1, line_start, e2)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: {json_error_text(e)}.") from None


def atomic_replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a fully written temporary directory to its final name (same filesystem)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
