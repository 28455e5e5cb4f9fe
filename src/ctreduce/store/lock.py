"""Locks on run and export folders: one writer, or any number of readers.

``fcntl.flock`` on a lock file. The kernel releases it when its holder dies, however it dies, so
a lock left by a killed process is simply taken over by the next one. A writer holds it
exclusively; a reader (``export`` reading a run folder) holds it shared, so two exports of one run
go together while ``reduce --out`` into that run is refused until they finish. Each holder writes
a small note beside the lock (who, since when, which command) for the message that others get.

The last holder to leave removes the lock file and the notes, so nothing is left beside a folder.
It does so while holding the lock exclusively; a process that opened the lock file just before it
was removed finds, once it holds the lock, that the path no longer names the file it locked, and
starts over on the new one.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .files import disk_full, hidden_sibling, is_disk_full

_HOLDERS = itertools.count()  # several holders in one process get distinct notes
_NOTE_ROOM = 32  # bytes a note adds to the lock file's name: ".<pid>.<n>.holder"


class LockHeld(RuntimeError):
    """Another live process (or another holder in this one) is using the folder."""


class FolderLock:
    """``with FolderLock(path, what):`` holds the lock file ``path`` (exclusively, or ``shared``)
    or raises LockHeld at once. Not re-entrant: a second holder in the same process is refused too."""

    def __init__(self, path: Path, what: str, *, shared: bool = False) -> None:
        self.path = Path(path)
        self.what = what
        self.shared = shared
        self._fd: int | None = None
        self._note: Path | None = None
        self._pattern = re.compile(re.escape(self.path.name) + r"\.(\d+)\.(\d+)\.holder")

    @classmethod
    def beside(cls, folder: Path, what: str) -> FolderLock:
        """The lock of a folder that is replaced whole (an export): ``.NAME.lock`` beside it."""
        return cls(hidden_sibling(folder, "lock", spare=_NOTE_ROOM), what)

    def __enter__(self) -> FolderLock:
        if self._fd is not None:
            raise LockHeld(f"{self.what}: this lock is already held")
        try:
            if not self.shared:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = self._acquire()
            if self._fd is not None:
                self._clear_notes(all_others=not self.shared)
                self._note = self.path.with_name(f"{self.path.name}.{os.getpid()}.{next(_HOLDERS)}.holder")
                self._note.write_text(json.dumps(_note("read" if self.shared else "write")))
        except OSError as exc:
            where = self._note or self.path
            self._release()
            if is_disk_full(exc):  # even the note: one line, not a traceback
                raise disk_full(where, exc) from exc
            raise
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release()

    def _acquire(self) -> int | None:
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                if self.shared and exc.errno in _READ_ONLY:
                    return None  # a read-only run folder: read it without a lock
                raise
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(self._message()) from None
            except BaseException:
                os.close(fd)
                raise
            if _names(fd, self.path):
                return fd
            os.close(fd)  # its last holder removed it after we opened it: lock the one there now

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        note, self._note = self._note, None
        if fd is None:
            return
        try:
            if note is not None:
                note.unlink(missing_ok=True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # other holders (readers) remain: the last of them cleans up
            self._clear_notes(all_others=True)
            if _names(fd, self.path):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # leaving a lock file or note behind is harmless: the next holder takes them over
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for pool workers that inherited the descriptor
            os.close(fd)

    def _notes(self) -> list[tuple[Path, dict[str, Any]]]:
        found = []
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return found
        for entry in entries:
            if self._pattern.fullmatch(entry.name):
                try:
                    found.append((Path(entry.path), json.loads(Path(entry.path).read_text())))
                except (OSError, ValueError):
                    found.append((Path(entry.path), {}))
        return found

    def _clear_notes(self, *, all_others: bool) -> None:
        """Remove the notes of holders that are gone: all others when we hold the lock alone,
        else those of processes of this host that no longer run."""
        for path, note in self._notes():
            if path != self._note and (all_others or not _alive(note)):
                path.unlink(missing_ok=True)

    def _message(self) -> str:
        notes = [note for _, note in self._notes() if note and _alive(note)]
        writers = [n for n in notes if n.get("mode") != "read"]
        shown = writers or notes
        doing = "read" if shown and not writers else "written"
        who = "holder unknown" if not shown else _holder(shown[0]) + (
            f"; and {len(shown) - 1} more" if len(shown) > 1 else "")
        return (f"{self.what} is being {doing} by another ctreduce process ({who}); wait for it to finish "
                "or stop it")


_READ_ONLY = {errno.EACCES, errno.EROFS, errno.EPERM}


def _names(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        now, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _note(mode: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "mode": mode, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def _alive(note: dict[str, Any]) -> bool:
    """False only for a process of this host that has ended (another host's cannot be checked)."""
    if note.get("host") != socket.gethostname() or not isinstance(note.get("pid"), int):
        return True
    try:
        os.kill(note["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(note: dict[str, Any]) -> str:
    return f"pid {note.get('pid')} on {note.get('host')} since {note.get('since')}: {note.get('command')}"
