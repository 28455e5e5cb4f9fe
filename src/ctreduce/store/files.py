"""Writing primitives shared by every on-disk format: atomic replacement, JSON without NaN, one
error for a full disk, space reserved before a file is mapped, and file names within the limit."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
NAME_MAX = 255  # bytes in one file name: Linux (ext4, xfs, btrfs, tmpfs), macOS and NTFS (UTF-16 units)
_DIGEST_CHARS = 32  # a 128-bit digest in hex ends every shortened name


class OutputError(OSError):
    """Writing an output failed (not an input's fault): the command stops; finished work is kept."""


class DiskFull(OutputError):
    """The disk (or quota) is full; what was written before stays valid and a rerun resumes."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def disk_full(path: str | os.PathLike, exc: OSError) -> DiskFull:
    return DiskFull(exc.errno, f"disk full writing {path} ({exc.strerror or exc}); free some space and "
                               "run the same command again: finished work is kept")


def write_failed(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The error for an output that could not be written: DiskFull, or OutputError naming the file."""
    if is_disk_full(exc):
        return disk_full(path, exc)
    return OutputError(exc.errno, f"cannot write {path} ({exc.strerror or exc})")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` then rename over ``path``: readers see the old file or the new one, never half."""
    tmp = hidden_sibling(path, "tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise


def reserve(fd: int, size: int, path: str | os.PathLike) -> None:
    """Allocate the open file ``fd`` up to ``size`` bytes on disk now. A memory map of a sparse file
    meets a full disk as SIGBUS, a crash without a message; reserved first, it is DiskFull here.
    Where the file system cannot preallocate, zeros are written instead."""
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except (AttributeError, OSError) as exc:  # AttributeError: no posix_fallocate (macOS)
            if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            _write_zeros(fd, size)
    except OSError as exc:
        raise write_failed(path, exc) from exc


def _write_zeros(fd: int, size: int) -> None:
    chunk = bytes(1 << 20)
    at = os.fstat(fd).st_size
    while at < size:
        at += os.pwrite(fd, chunk[: min(len(chunk), size - at)], at)


# --- names ---------------------------------------------------------------------------------------


def encoded_name(text: str, suffix: str = "") -> str:
    """A file name for ``text`` (a volume id, a user's folder name), ending in ``suffix``.

    Percent-encoded (``quote`` with nothing safe): injective, so "CT 1", "CT_1" and any two
    non-ASCII ids get different names, with no '/', no leading dot. Within NAME_MAX bytes: a longer
    name keeps the start of the encoding and ends in '+' and a 128-bit digest of ``text`` ('+' never
    occurs in an encoding, so a shortened name equals no full one). Stable across runs and machines;
    the full ``text`` belongs in the store's index beside the name.
    """
    encoded = quote(text, safe="", errors="surrogatepass") or "+"  # "+": the empty text, a name still
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]  # no hidden files
    room = NAME_MAX - len(suffix.encode("utf-8", "surrogatepass"))
    if len(encoded) <= room:  # the encoding is ASCII: one byte a character
        return encoded + suffix
    head = encoded[: room - _DIGEST_CHARS - 1]
    cut = head.find("%", len(head) - 2)
    if cut >= 0:  # never end inside a %XX
        head = head[:cut]
    return f"{head}+{_digest(text)}{suffix}"


def hidden_sibling(path: Path, tag: str, spare: int = 0) -> Path:
    """``.NAME.tag`` beside ``path`` (staging folders, temporary files, locks), shortened with a
    digest of NAME when it would exceed NAME_MAX bytes less ``spare`` (room for what a caller
    appends): a 250-byte folder name still gets one."""
    name = f".{path.name}.{tag}"
    limit = NAME_MAX - spare
    if len(os.fsencode(name)) <= limit:
        return path.with_name(name)
    tail = f"+{_digest(path.name)}.{tag}"
    head = os.fsencode(path.name)[: limit - 1 - len(tail.encode())].decode("utf-8", "ignore")
    return path.with_name(f".{head}{tail}")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_CHARS // 2).hexdigest()


# --- JSON ----------------------------------------------------------------------------------------


def plain_json(value: Any) -> Any:
    """``value`` with NaN/infinity as null, tuples and numpy arrays as lists, numpy scalars as numbers and
    paths as text: strict JSON that any reader parses."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return plain_json(value.tolist())
    return value


def dumps(value: Any) -> str:
    return json.dumps(plain_json(value), indent=2, allow_nan=False)


def write_json(path: Path, value: Any) -> None:
    text = dumps(value)
    atomic_write(path, lambda p: p.write_text(text))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_yaml(path: Path, value: Any) -> None:
    """A settings file (``config.yaml``), atomically."""
    import yaml

    text = yaml.safe_dump(value, sort_keys=False)
    atomic_write(path, lambda p: p.write_text(text))


def write_csv(path: Path, table: Any) -> None:
    """A pandas table as CSV without its index, atomically."""
    atomic_write(path, lambda p: table.to_csv(p, index=False))
