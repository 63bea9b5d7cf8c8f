"""Text-only, atomic file IO: JSON / JSONL with line-numbered errors.

Every writer writes to a temporary name in the same directory and renames it over the
target, so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from sftbench.core.errors import DiskWriteError, UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


# ---------------------------------------------------------------- writes that fail: full, read-only, gone

# errno -> what the user is told.  Other OSErrors (EISDIR, ENAMETOOLONG, ...) are left as they are.
_DISK_REASONS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.ENOENT: "its directory no longer exists (deleted or moved while running?)"}
if hasattr(errno, "EDQUOT"):
    _DISK_REASONS[errno.EDQUOT] = "the disk quota is exceeded"
# safetensors' writer raises its own SafetensorError (not an OSError) with the OS message inside.
_MESSAGE_ERRNOS = (("No space left", errno.ENOSPC), ("Read-only file system", errno.EROFS),
                   ("Permission denied", errno.EACCES), ("No such file or directory", errno.ENOENT),
                   ("Disk quota exceeded", getattr(errno, "EDQUOT", errno.ENOSPC)))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing parent); None if unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_error_errno(e: BaseException) -> int | None:
    """The errno of a failed write that means full / read-only / gone (see _DISK_REASONS), else None."""
    if isinstance(e, DiskWriteError):
        return e.errno
    if isinstance(e, OSError):
        return e.errno if e.errno in _DISK_REASONS else None
    if type(e).__name__ == "SafetensorError":
        for text, code in _MESSAGE_ERRNOS:
            if text in str(e):
                return code
    return None


def disk_write_message(path: str | os.PathLike, code: int, needed: int | None = None, kept: str = "") -> str:
    """'could not write PATH: <reason> (needs N, M free). <kept> <what to do>' -- one paragraph."""
    free = free_bytes(path)
    space = ""
    if needed is not None:
        space = f" (this write needs about {human_bytes(needed)}" + (f"; {human_bytes(free)} free there)" if free is not None else ")")
    elif code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) and free is not None:
        space = f" ({human_bytes(free)} free there)"
    todo = {errno.ENOSPC: "Free some space (or point the output at another disk) and run the same command again.",
            errno.EROFS: "Choose a writable directory.", errno.EACCES: "Choose a directory you may write to.",
            errno.EPERM: "Choose a directory you may write to.",
            errno.ENOENT: "Check that nothing deletes or moves it while the run is going."}.get(code, "Free some space and run again.")
    return (f"could not write {path}: {_DISK_REASONS.get(code, os.strerror(code))}{space}. " + (f"{kept} " if kept else "")
            + todo)


@contextlib.contextmanager
def disk_writes(path: str | os.PathLike, needed: int | None = None, kept: str = ""):
    """Turn a write failing for lack of space / permission / a vanished directory into a DiskWriteError with one
    message (naming `path`, the space needed and what was kept); any other error passes unchanged."""
    try:
        yield
    except DiskWriteError:
        raise
    except Exception as e:
        code = disk_error_errno(e)
        if code is None:
            raise
        raise DiskWriteError(disk_write_message(path, code, needed, kept), code) from None


def check_free_space(path: str | os.PathLike, needed: int, kept: str = "") -> None:
    """DiskWriteError (ENOSPC) before a write of `needed` bytes to `path` (not yet there) that cannot fit on the
    disk holding it."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise DiskWriteError(disk_write_message(path, errno.ENOSPC, needed, kept), errno.ENOSPC)


# Windows: a file open in another program (sweep.csv in Excel, a virus scanner, a sync client) cannot be replaced
# or removed (PermissionError, WinError 5/32/33) until it is closed; such locks are often brief, so retry with
# backoff before saying which file and what to do.  Elsewhere PermissionError means no permission: no retry.
LOCKS_POSSIBLE = os.name == "nt"
LOCK_RETRY_WAITS = (0.2, 0.5, 1.0, 2.0)  # seconds slept between tries
_sleep = time.sleep  # tests patch this


def locked_message(path: str | os.PathLike, what: str = "replace") -> str:
    return (f"could not {what} {path}: another program has it open (on Windows, e.g. the file open in Excel, an "
            f"editor or a sync client). Close it in the program that has it open and run the same command again.")


def retry_locked(fn, path: str | os.PathLike, what: str = "replace"):
    """fn() retried while it fails with a lock (PermissionError where files can be locked: Windows); then a
    UserError naming `path` and what to do.  Other errors, and PermissionError elsewhere, pass unchanged."""
    for wait in (*LOCK_RETRY_WAITS, None):
        try:
            return fn()
        except PermissionError:
            if not LOCKS_POSSIBLE:
                raise
            if wait is None:
                raise UserError(locked_message(path, what)) from None
            _sleep(wait)


def replace_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace, retried while `dst` is locked by another program (Windows)."""
    retry_locked(lambda: os.replace(src, dst), dst)


def rmtree_retry(path: str | os.PathLike) -> None:
    """shutil.rmtree, retried while a file inside is held open (WinError 32: an indexer, a scanner, an Explorer
    window); then a UserError naming the directory."""
    retry_locked(lambda: shutil.rmtree(path), path, "remove")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    with disk_writes(path):
        _atomic_write_text(path, text)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        replace_file(tmp, path)
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
    with disk_writes(path):
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


UTF8_BOM = b"\xef\xbb\xbf"


def iter_jsonl_lines(path: str | os.PathLike, data: bytes | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset of the line in the file, the line's bytes) for each line.  A UTF-8 byte
    order mark at the start of the file (Windows editors write one) is skipped, not a malformed first line.
    data: the file's bytes when the caller has read them already (path then only names it)."""
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    pos = 0
    if data.startswith(UTF8_BOM):
        data, pos = data[len(UTF8_BOM):], len(UTF8_BOM)
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


def read_json(path: str | os.PathLike, data: bytes | None = None) -> Any:
    """Parse a JSON file; UserError naming file:line on malformed JSON or bytes that are not UTF-8.
    data: the file's bytes when the caller has read them already (path then only names it)."""
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise UserError(f"{path}: file not found.")
        data = path.read_bytes()
    if data.startswith(UTF8_BOM):  # a byte order mark is accepted (and skipped), as in JSONL files
        data = data[len(UTF8_BOM):]
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
