"""Export formats: how an export stores its slices, one class per format with its writer and its reader,
registered by name. ``ctreduce.store.export`` owns the rest of the export folder (staging, index, export.json,
lock) and calls the format for its files.

    png   images/*.png   8-bit grey at native size, names listed in the index's ``file`` column
    npy   shards/*.npy   (n, size, size) uint8 shards named in the index (``shard``, ``shard_row``), memory-mapped
                         by training; the store grows by new shards and index versions (``store.shards``)

A plug-in adds a format with :func:`register_export_format` (docs/architecture.md, "Extending ctreduce").
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from ..core.plugins import load_plugins
from .files import atomic_write, encoded_name, read_json, write_failed
from .fingerprint import DIGEST_COLUMN
from .shards import PENDING, SHARDS, ShardRows, check_shards, write_shard

INDEX = "index.parquet"
IMAGES = "images"


class ExportError(ValueError):
    """The export folder is missing, incomplete, inconsistent, or may not be written."""


class Slices(Protocol):
    """An export's slices as a format reads them: ``slices[i]`` is index row i, a uint8 (H, W) array of its own.
    Picklable without its open files (training reads it in data-loader workers)."""

    def __len__(self) -> int: ...

    def __getitem__(self, row: int) -> np.ndarray: ...


class ExportFormat(ABC):
    """One way of storing an export's slices: its writer and its reader. :class:`ExportWriter` and
    :class:`ExportStore` do the rest (the staging folder, index.parquet, export.json, the lock), so a format
    only lays out its files. Instances are small (the size) and travel to worker processes.

    Writing: ``start`` (the staging folder's layout), ``allocate`` (room for all rows, in the writing process),
    per volume ``encode`` (in any worker: the files it writes itself, or what ``store`` then puts in place),
    ``finish`` (after the last row). ``write_part``/``read_part``: a volume's part for ``reduce --export``.
    Reading: ``check`` (the files agree with the index) and ``slices``.
    """

    name: ClassVar[str]
    sized: ClassVar[bool] = False  # True: every slice resized and padded to size x size; export.json records it
    # True: an export of the same run and settings grows in place, by new files and a new index version, and
    # its earlier files are never rewritten (npy); False: every export is written whole and replaces the old one
    appends: ClassVar[bool] = False
    columns: ClassVar[tuple[str, ...]] = ()  # index.parquet columns the format adds to each record (png: file)

    def __init__(self, size: int | None = None) -> None:
        if self.sized and (size is None or size < 8):
            raise ExportError(f"--size must be at least 8, got {size}")
        self.size = size if self.sized else None

    # --- writing ------------------------------------------------------------------------------------

    def start(self, stage: Path) -> None:
        """Lay out the (empty) staging folder before any volume is written."""
        return None  # a format whose files all sit at the top needs nothing

    def allocate(self, stage: Path, n: int) -> Any:
        """Room for ``n`` rows, in the writing process; handed to ``store`` and ``finish`` (None: nothing)."""
        return None

    @abstractmethod
    def encode(self, stage: Path, u8: np.ndarray, records: list[dict[str, Any]]) -> Any:
        """One volume's slices (uint8, native size, one record each, in order), in any process: write files
        into ``stage`` (and name them in the records' ``columns``) and/or return what ``store`` puts in place."""

    def store(self, room: Any, first: int, payload: Any) -> None:
        """Put ``encode``'s result for rows ``first``... into ``room``, in the writing process."""
        return None  # a format whose workers write every file themselves keeps nothing here

    def finish(self, stage: Path, room: Any, n: int) -> None:
        """After the last volume: ``n`` rows were written (fewer than allocated when volumes failed)."""
        return None

    # --- the parts of reduce --export (ExportParts): by default a volume's uint8 slices, encoded on assembly ---

    def write_part(self, folder: Path, volume_id: str, slice_indices: np.ndarray,
                   u8: np.ndarray) -> dict[str, Any] | None:
        """Keep one volume's slices (uint8, native size) in ``folder`` until the export is assembled; what it
        returns is kept in the part's marker (``pending_marker``)."""
        atomic_write(folder / f"{part_stem(volume_id)}.u8.npy", lambda p: _save_npy(p, u8))

    def read_part(self, folder: Path, stage: Path, volume_id: str, records: list[dict[str, Any]],
                  rows: np.ndarray | None) -> Any:
        """``encode`` of the volume's part (its ``rows``; all when None) into the staging folder ``stage``."""
        u8 = np.load(folder / f"{part_stem(volume_id)}.u8.npy")
        return self.encode(stage, u8 if rows is None else u8[rows], records)

    # --- reading ------------------------------------------------------------------------------------

    @abstractmethod
    def check(self, root: Path, meta: dict[str, Any], index: pd.DataFrame) -> None:
        """ExportError (ending with what to do) unless the files of the export at ``root`` hold its index's rows."""

    @abstractmethod
    def slices(self, root: Path, index: pd.DataFrame) -> Slices:
        """The export's slices, in index order, opened lazily."""


_FORMATS: dict[str, type[ExportFormat]] = {}


def register_export_format(cls: type[ExportFormat]) -> type[ExportFormat]:
    """Class decorator: ``ctreduce export --format NAME`` (and ``reduce --export NAME``) then writes ``cls``'s
    exports, and every reader opens them."""
    if _FORMATS.get(cls.name, cls) is not cls:
        raise ValueError(f"export format name {cls.name!r} is taken")
    _FORMATS[cls.name] = cls
    return cls


def export_formats() -> dict[str, type[ExportFormat]]:
    """Every registered export format by name: png and npy, then the plug-ins' (loaded here the first time)."""
    load_plugins()
    return dict(_FORMATS)


def export_format(name: str, size: int | None = None) -> ExportFormat:
    """The format ``name`` for slices of ``size`` (sized formats only); ExportError when there is none."""
    try:
        formats = export_formats()
    except ValueError as exc:  # a plug-in that cannot be loaded
        raise ExportError(str(exc)) from exc
    if name not in formats:
        raise ExportError(f"unknown export format {name!r}; choose one of {', '.join(formats)}")
    return formats[name](size)


# --- png: one 8-bit grey image per slice ------------------------------------------------------------


def png_name(volume_id: str, slice_index: int) -> str:
    """A file name that is unique and stable (``files.encoded_name``: "CT 1", "CT_1" and any two
    non-ASCII ids differ) and within the file system's 255 bytes, however long the id; the index
    keeps the full id beside it."""
    return encoded_name(volume_id, f"__{int(slice_index):04d}.png")


def save_png(images: Path, volume_id: str, slice_index: int, u8: np.ndarray) -> str:
    """Write one slice as 8-bit grey PNG (compression level 1, as the paper's OpenCV default);
    returns its name relative to the export folder."""
    from PIL import Image

    name = png_name(volume_id, slice_index)
    try:
        Image.fromarray(u8).save(images / name, compress_level=1)
    except OSError as exc:  # the output's fault, not the volume's: the export stops
        raise write_failed(images / name, exc) from exc
    return f"{IMAGES}/{name}"


class ImageFiles:
    """Slices stored as one image file each, read as 8-bit grey (Pillow's ``L``)."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> np.ndarray:
        from PIL import Image

        path = self.paths[row]
        try:
            with Image.open(path) as image:
                return np.array(image.convert("L"))
        except OSError as exc:
            raise ExportError(f"{path}: unreadable image ({exc})") from exc


@register_export_format
class PngFormat(ExportFormat):
    """``images/*.png``: 8-bit grey at native size, named in the index's ``file`` column (:func:`png_name`)."""

    name = "png"
    columns = ("file",)

    def start(self, stage: Path) -> None:
        (stage / IMAGES).mkdir()

    def encode(self, stage: Path, u8: np.ndarray, records: list[dict[str, Any]]) -> None:
        for image, record in zip(u8, records, strict=True):
            record["file"] = save_png(stage / IMAGES, record["volume_id"], record["slice_index"], image)

    def write_part(self, folder: Path, volume_id: str, slice_indices: np.ndarray, u8: np.ndarray) -> None:
        for index, image in zip(slice_indices, u8, strict=True):
            save_png(folder / IMAGES, volume_id, int(index), image)

    def read_part(self, folder: Path, stage: Path, volume_id: str, records: list[dict[str, Any]],
                  rows: np.ndarray | None) -> None:
        """The part's PNGs of ``records``, hard-linked into the export where possible."""
        for record in records:
            name = png_name(volume_id, record["slice_index"])
            link_or_copy(str(folder / IMAGES / name), str(stage / IMAGES / name))
            record["file"] = f"{IMAGES}/{name}"

    def check(self, root: Path, meta: dict[str, Any], index: pd.DataFrame) -> None:
        listed = set(index["file"])
        on_disk = {f"{IMAGES}/{p.name}" for p in (root / IMAGES).glob("*.png")}
        if listed != on_disk:
            missing, extra = sorted(listed - on_disk), sorted(on_disk - listed)
            raise ExportError(f"{root}: images and {INDEX} disagree ({len(missing)} listed but missing"
                              + (f", e.g. {missing[0]}" if missing else "") + f"; {len(extra)} not listed"
                              + (f", e.g. {extra[0]}" if extra else "") + "); export it again with --overwrite")

    def slices(self, root: Path, index: pd.DataFrame) -> ImageFiles:
        return ImageFiles(root / f for f in index["file"])


# --- npy: immutable shards of one memory-mappable array each (store.shards) -------------------------


def resize_pad(u8: np.ndarray, size: int) -> np.ndarray:
    """An npy row: the slice resized so its longer side is ``size`` (Pillow bicubic), zero-padded to a square."""
    from PIL import Image

    h, w = u8.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(u8).resize((nw, nh), Image.Resampling.BICUBIC))
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def npy_rows(u8: np.ndarray, size: int) -> np.ndarray:
    """The npy rows of a stack of uint8 slices: (n, size, size), empty when n is 0."""
    rows = np.zeros((len(u8), size, size), np.uint8)
    for k, image in enumerate(u8):
        rows[k] = resize_pad(image, size)
    return rows


@register_export_format
class NpyFormat(ExportFormat):
    """``shards/*.npy``: (n, size, size) uint8 shards, one per volume written (:func:`resize_pad`), named with their
    row in the index's ``shard`` and ``shard_row`` columns; memory-mapped by training. The store grows by new
    shards and index versions (``store.shards``)."""

    name = "npy"
    sized = True
    appends = True
    columns = (DIGEST_COLUMN, "shard", "shard_row")

    def start(self, stage: Path) -> None:
        (stage / SHARDS).mkdir(exist_ok=True)

    def encode(self, stage: Path, u8: np.ndarray, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        name = write_shard(stage, part_stem(records[0]["volume_id"]), npy_rows(u8, self.size))
        for k, record in enumerate(records):
            record.update(shard=name, shard_row=k)

    def write_part(self, folder: Path, volume_id: str, slice_indices: np.ndarray, u8: np.ndarray) -> dict[str, Any]:
        """The volume's shard, written into the store (``folder`` is where the export is written)."""
        (folder / SHARDS).mkdir(exist_ok=True)
        name = write_shard(folder, part_stem(volume_id), npy_rows(u8, self.size))
        return {"shard": name, "slice_index": [int(i) for i in slice_indices]}

    def read_part(self, folder: Path, stage: Path, volume_id: str, records: list[dict[str, Any]],
                  rows: np.ndarray | None) -> None:
        """Name the volume's pending shard (its ``rows``) in the records; the shard stays where it is."""
        marker = read_json(pending_marker(folder, volume_id))
        if folder != stage:
            link_or_copy(str(folder / SHARDS / marker["shard"]), str(stage / SHARDS / marker["shard"]))
        positions = range(len(records)) if rows is None else rows
        for record, k in zip(records, positions, strict=True):
            record.update(shard=marker["shard"], shard_row=int(k))

    def check(self, root: Path, meta: dict[str, Any], index: pd.DataFrame) -> None:
        try:
            check_shards(root, index, int(meta["size"]))
        except ValueError as exc:
            raise ExportError(f"{exc}; export it again with --overwrite") from exc

    def slices(self, root: Path, index: pd.DataFrame) -> ShardRows:
        return ShardRows(root, index)


def _save_npy(path: Path, data: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save on a file object adds no suffix
        np.save(fh, data)


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def part_stem(volume_id: str) -> str:
    """The file name stem of a volume's part (ExportParts): short and safe whatever the id."""
    import hashlib

    return hashlib.sha1(volume_id.encode()).hexdigest()[:20]


def pending_marker(folder: Path, volume_id: str) -> Path:
    """The marker of a volume's part in ``folder`` (ExportParts): written last, so a part is there whole or not."""
    return folder / PENDING / f"{part_stem(volume_id)}.json"
