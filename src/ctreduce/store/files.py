"""Writing primitives shared by every on-disk format: atomic replacement, JSON without NaN,
and one error for a full disk."""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFull(OSError):
    """The disk (or quota) is full; what was written before stays valid and a rerun resumes."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def disk_full(path: str | os.PathLike, exc: OSError) -> DiskFull:
    return DiskFull(exc.errno, f"disk full writing {path} ({exc.strerror or exc}); free some space and "
                               "run the same command again: finished work is kept")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` then rename over ``path``: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise


def plain_json(value: Any) -> Any:
    """``value`` with NaN/infinity as null and tuples as lists: strict JSON that any reader parses."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return plain_json(value.item())
    return value


def dumps(value: Any) -> str:
    return json.dumps(plain_json(value), indent=2, allow_nan=False)


def write_json(path: Path, value: Any) -> None:
    text = dumps(value)
    atomic_write(path, lambda p: p.write_text(text))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
