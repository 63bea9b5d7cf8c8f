"""One writer per directory: an exclusive lock file for a training run dir or an evaluation results dir.

    with DirLock(out, what="training run", flag="--output_dir"):
        ...  # nothing else of ours writes into `out` meanwhile

The lock is `<dir>/.sftbench.lock`, created with O_CREAT | O_EXCL (atomic on local file systems, on Windows too;
no fcntl), holding {"pid", "host", "started", "what", "argv"}.  It is removed on exit, exceptions included.  A lock
left by a process that no longer runs on this host (killed with -9, a crash) is taken over with a log line; a live
one -- or one from another host, which cannot be checked -- is a UserError naming its pid and start time.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from sftbench.core.errors import UserError

LOCK_NAME = ".sftbench.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (never signals it)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        import psutil  # exact on every platform when installed

        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except ImportError:
        pass
    except Exception:  # psutil.NoSuchProcess between the two calls, AccessDenied: assume alive if it exists
        try:
            import psutil

            return psutil.pid_exists(pid)
        except Exception:
            return True
    if sys.platform == "win32":  # os.kill(pid, 0) would TerminateProcess on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def read_lock(path: Path) -> dict | None:
    """The lock's JSON (None when it is gone); {} when unreadable (being written, or damaged)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


class DirLock:
    """Exclusive lock on a directory (created if missing; removed again on release if it was created here and
    is then empty, so a refused start leaves nothing behind)."""

    def __init__(self, directory: str | os.PathLike, what: str = "run", flag: str = "--output_dir",
                 log=lambda msg: print(msg, file=sys.stderr, flush=True)):
        self.dir = Path(directory)
        self.path = self.dir / LOCK_NAME
        self.what, self.flag, self.log = what, flag, log
        self.held = False
        self.created_dir = False
        self.info: dict = {}

    def acquire(self) -> "DirLock":
        if self.dir.exists() and not self.dir.is_dir():
            return self  # not held: the caller's own check says what is wrong with a file there
        if not self.dir.exists():
            from sftbench.core.io import disk_writes

            with disk_writes(self.dir):
                self.dir.mkdir(parents=True)
            self.created_dir = True
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "what": self.what, "argv": sys.argv}
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            self._take_over_if_stale()
        raise UserError(f"{self.path}: could not take the lock (another process keeps replacing it). Wait for it "
                        f"to finish, or use another {self.flag}.")

    def _create(self) -> bool:
        from sftbench.core.io import disk_writes

        with disk_writes(self.path):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.info))
        return True

    def _take_over_if_stale(self) -> None:
        """Remove a lock whose process is gone (this host); UserError for a live one."""
        info = read_lock(self.path)
        if info is None:
            return  # released meanwhile: try again
        if info == {}:  # just created, not yet written: give its owner a moment
            time.sleep(0.2)
            info = read_lock(self.path)
            if info is None:
                return
        pid, host = int(info.get("pid") or 0), info.get("host")
        same_host = host == socket.gethostname()
        if not info or (same_host and pid_alive(pid)) or not same_host:
            who = f"pid {pid}" + ("" if same_host else f" on host {host}")
            raise UserError(
                f"another {info.get('what', self.what) if info else self.what} ({who}, started "
                f"{info.get('started', '?')}) is writing {self.dir}; wait for it or use another {self.flag}. If no "
                f"such process runs any more, delete {self.path}.")
        # Dead on this host: move it aside (only one taker's rename succeeds), check it was the stale one.
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        moved = read_lock(aside)
        if moved and moved.get("pid") != info.get("pid"):  # a new owner's lock slipped in: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        self.log(f"taking over the stale lock {self.path} of {info.get('what', 'a run')} pid {pid} "
                 f"(started {info.get('started', '?')}; that process no longer runs)")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if (read_lock(self.path) or {}).get("pid") == self.info["pid"]:
                self.path.unlink()
        except OSError:
            pass  # the directory was deleted meanwhile
        if self.created_dir:
            try:
                self.dir.rmdir()  # only if empty: a refused start leaves no directory behind
            except OSError:
                pass

    def still_held(self) -> bool:
        """Whether the lock file is still ours (False when the directory was deleted or moved meanwhile)."""
        return (read_lock(self.path) or {}).get("pid") == self.info.get("pid")

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
