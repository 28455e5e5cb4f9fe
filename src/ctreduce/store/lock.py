"""Exclusive write locks on run and export folders.

An fcntl lock on a lock file (through ``filelock``): the kernel releases it when its holder
dies, however it dies, so a lock left by a killed process is simply taken over by the next
writer. A small note beside it says who holds the lock, for the message a second writer gets.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType


class LockHeld(RuntimeError):
    """Another live process is writing the same folder."""


class FolderLock:
    """``with FolderLock(path, what):`` holds the lock file ``path`` or raises LockHeld at once."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.note = self.path.with_name(self.path.name + ".holder")
        self.what = what
        self._lock = None

    def __enter__(self) -> FolderLock:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path), thread_local=False, is_singleton=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise LockHeld(f"{self.what} is being written by another ctreduce process "
                           f"({self._holder()}); wait for it to finish or stop it") from None
        self._lock = lock
        note = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
        self.note.write_text(json.dumps(note))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.note.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _holder(self) -> str:
        try:
            note = json.loads(self.note.read_text())
        except (OSError, ValueError):
            return "holder unknown"
        return f"pid {note['pid']} on {note['host']} since {note['since']}: {note['command']}"
