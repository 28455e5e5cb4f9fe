"""The npy export's files: immutable shards and the versioned index that names their rows.

Layout (``OUT``)::

    export.json              names the current version and its index (``complete: true``)
    versions/000003.parquet  the index of version 3: one row per slice, with its ``shard`` and ``shard_row``
    shards/<id>-<hash>.npy   (n, size, size) uint8: one volume's rows, written once and never changed
    pending/<id>.json        reduce --export: the shard a worker wrote for a volume, not yet in a version

A shard is named by a digest of its bytes, written beside its place and renamed into it: a name holds one
content forever, so growth and resume add shards and a new index version, and never rewrite one. Rows a
new version no longer lists (a volume that changed or left the archive) stay in their shard, dead, until
:func:`compact` rewrites the shards that hold them. Read with numpy alone (docs/formats.md)::

    index = pd.read_parquet(OUT / json.load(open(OUT / "export.json"))["index"])
    image = np.load(OUT / "shards" / index.shard[i], mmap_mode="r")[index.shard_row[i]]
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .files import OutputError, atomic_write, hidden_sibling, reserve, write_failed

SHARDS = "shards"
VERSIONS = "versions"
PENDING = "pending"
_OPEN_SHARDS = 64  # memory maps kept open per reader process (an archive may have 100,000 shards)


def version_name(version: int) -> str:
    """The index file of ``version``, relative to the export folder."""
    return f"{VERSIONS}/{version:06d}.parquet"


def write_shard(folder: Path, stem: str, rows: np.ndarray) -> str:
    """Write ``rows`` ((n, S, S) uint8) as a shard under ``folder/shards`` unless that content is there already;
    returns its file name. The space is reserved before the data is written (a full disk is DiskFull here, one
    line), and the file appears under its name only whole."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    header = _npy_header(rows.shape)
    digest = hashlib.blake2b(header + rows.tobytes(), digest_size=8).hexdigest()
    name = f"{stem}-{digest}.npy"
    path = folder / SHARDS / name
    if path.exists():
        return name
    tmp = hidden_sibling(path, "tmp")
    try:
        with open(tmp, "wb") as fh:
            reserve(fh.fileno(), len(header) + rows.nbytes, path)
            fh.write(header)
            fh.write(memoryview(rows).cast("B"))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OutputError):  # already one line naming the file (reserve)
            raise
        raise write_failed(path, exc) from exc
    return name


def shard_length(path: Path, size: int) -> int:
    """The rows of the shard at ``path``; ValueError (naming it) unless it is an (n, size, size) uint8 .npy."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npy shard ({exc})") from exc
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (size, size):
        raise ValueError(f"{path}: expected (n, {size}, {size}) uint8, got {array.dtype} {array.shape}")
    return int(array.shape[0])


def check_shards(root: Path, index: pd.DataFrame, size: int) -> None:
    """ValueError unless every shard the index names is there and holds the rows it names."""
    needed = index.groupby("shard", sort=False)["shard_row"].max() if len(index) else pd.Series(dtype=int)
    for name, last in needed.items():
        n = shard_length(root / SHARDS / str(name), size)
        if int(last) >= n:
            raise ValueError(f"{root / SHARDS / str(name)}: the index names row {int(last)}, the shard has {n}")


class ShardRows:
    """The rows of an index, read from their shards: memory-mapped on first use in each process (a few dozen
    kept open), picklable without them for data-loader workers."""

    def __init__(self, root: Path, index: pd.DataFrame) -> None:
        self.root = root / SHARDS
        codes, self.names = pd.factorize(index["shard"]) if len(index) else (np.zeros(0, np.int64), [])
        self.names = [str(n) for n in self.names]
        self.codes = np.asarray(codes, np.int32)
        self.rows = index["shard_row"].to_numpy(np.int64) if len(index) else np.zeros(0, np.int64)
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, row: int) -> np.ndarray:
        code = int(self.codes[row])
        array = self._open.pop(code, None)
        if array is None:
            array = np.load(self.root / self.names[code], mmap_mode="r")
            if len(self._open) >= _OPEN_SHARDS:
                self._open.popitem(last=False)
        self._open[code] = array
        return np.array(array[self.rows[row]])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": OrderedDict()}


def compact_index(root: Path, index: pd.DataFrame, size: int) -> tuple[pd.DataFrame, list[str]]:
    """``index`` with the live rows of every shard that holds dead rows moved into a new shard (in their order);
    the names of the shards it no longer needs. Shards without dead rows are left as they are."""
    index = index.copy()
    dropped: list[str] = []
    for name, rows in index.groupby("shard", sort=False):
        name = str(name)
        n = shard_length(root / SHARDS / name, size)
        if len(rows) == n and (rows["shard_row"].to_numpy() == np.arange(n)).all():
            continue
        live = rows["shard_row"].to_numpy(np.int64)
        data = np.load(root / SHARDS / name, mmap_mode="r")[np.sort(np.unique(live))]
        order = np.searchsorted(np.sort(np.unique(live)), live)
        new = write_shard(root, name.split("-")[0], np.asarray(data))
        index.loc[rows.index, "shard"] = new
        index.loc[rows.index, "shard_row"] = order
        dropped.append(name)
    return index, dropped


def referenced(root: Path) -> dict[str, set[str]]:
    """Each index version's file (relative name) with the shards it names."""
    names: dict[str, set[str]] = {}
    for path in sorted((root / VERSIONS).glob("*.parquet")):
        names[f"{VERSIONS}/{path.name}"] = set(pd.read_parquet(path, columns=["shard"])["shard"].astype(str))
    return names


def write_index(root: Path, version: int, index: pd.DataFrame) -> str:
    """Write the index of ``version`` (atomically); returns its name relative to ``root``."""
    name = version_name(version)
    (root / VERSIONS).mkdir(exist_ok=True)
    atomic_write(root / name, lambda p: index.to_parquet(p, index=False))
    return name


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(np.uint8).str, "fortran_order": False,
                                                  "shape": tuple(int(v) for v in shape)})
    return buffer.getvalue()
