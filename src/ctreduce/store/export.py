"""The export store: what training reads. File names, schema, writer and reader in one place.

Layout (``OUT``)::

    export.json      schema, settings, counts, source run; ``complete: true`` is written last
    index.parquet    one row per exported slice: row, volume_id, slice_index, z_mm, source (+ file)
    slices.npy       npy: (N, size, size) uint8, row i = index row i
    images/*.png     png: 8-bit grey at native size, names listed in the index's ``file`` column

An export is written into a staging folder beside ``OUT`` and moved into place when complete,
so ``OUT`` holds a whole export or none: an interrupted export leaves the old one (or nothing),
and ``--overwrite`` replaces an old export whole (no old image survives). Readers refuse an
export whose ``export.json`` is missing or incomplete, or whose array, index and images disagree.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .files import atomic_write, encoded_name, hidden_sibling, read_json, reserve, write_failed, write_json
from .lock import FolderLock

SCHEMA = 2
META = "export.json"
INDEX = "index.parquet"
ARRAY = "slices.npy"
IMAGES = "images"
FORMATS = ("png", "npy")
INDEX_COLUMNS = ["row", "volume_id", "slice_index", "z_mm", "source"]


class ExportError(ValueError):
    """The export folder is missing, incomplete, inconsistent, or may not be written."""


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


def png_name(volume_id: str, slice_index: int) -> str:
    """A file name that is unique and stable (``files.encoded_name``: "CT 1", "CT_1" and any two
    non-ASCII ids differ) and within the file system's 255 bytes, however long the id; the index
    keeps the full id beside it."""
    return encoded_name(volume_id, f"__{int(slice_index):04d}.png")


class ExportWriter:
    """Writes one export beside ``out`` and moves it into place on ``commit``.

    Use as a context manager: leaving it without ``commit`` (an error, Ctrl-C) removes the
    staging folder and leaves ``out`` as it was.
    """

    def __init__(self, out: str | os.PathLike, fmt: str, *, size: int | None, overwrite: bool) -> None:
        if fmt not in FORMATS:
            raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.out = Path(out)
        # An --out that is a symbolic link names the export it points to: that one is replaced, the link stays.
        self.target = real_path(self.out)
        self.format = fmt
        self.size = size
        self.overwrite = overwrite
        self.stage = hidden_sibling(self.target, "partial")
        self._lock = FolderLock.beside(self.target, f"export folder {self.out}")
        self._array: np.ndarray | None = None
        self.rows: list[dict[str, Any]] = []

    def __enter__(self) -> ExportWriter:
        refuse_existing(self.target, self.overwrite)
        self._lock.__enter__()
        try:
            if self.stage.exists():
                shutil.rmtree(self.stage)  # left by an interrupted export; we hold the lock
            (self.stage / IMAGES if self.format == "png" else self.stage).mkdir(parents=True)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.stage.exists():
                self._array = None
                shutil.rmtree(self.stage, ignore_errors=True)
        finally:
            self._lock.__exit__(exc_type, exc, tb)

    def allocate(self, n: int) -> None:
        """npy: the array of ``n`` rows (shrunk on commit when fewer were written), its space reserved
        on disk before it is mapped: a disk too small is DiskFull now, never a crash while writing."""
        assert self.format == "npy" and self.size is not None
        path = self.stage / ARRAY
        header = _npy_header((n, self.size, self.size))
        with open(path, "wb") as fh:
            fh.write(header)
            fh.flush()
            reserve(fh.fileno(), len(header) + n * self.size * self.size, path)
        self._array = np.lib.format.open_memmap(path, mode="r+")

    @property
    def images(self) -> Path | None:
        """png: the staging folder that ``save_png`` writes into (from any process)."""
        return self.stage / IMAGES if self.format == "png" else None

    def add_volume(self, images: np.ndarray | None, records: list[dict[str, Any]]) -> None:
        """One volume's rows, in order: npy, its uint8 images (already resized); png, the records of
        the images ``save_png`` wrote."""
        if self._array is not None:
            assert images is not None and len(images) == len(records)
            self._array[len(self.rows): len(self.rows) + len(records)] = images
        else:
            assert all("file" in r for r in records)
        self.rows.extend(records)

    def commit(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Write index and export.json (``complete: true``) and move the export into place."""
        n = len(self.rows)
        if self._array is not None:
            self._array.flush()
            allocated = self._array.shape[0]
            self._array = None
            if n != allocated:  # unreadable volumes: shrink the store to the rows written
                _shrink_npy(self.stage / ARRAY, (n, self.size, self.size))
        columns = INDEX_COLUMNS + (["file"] if self.format == "png" else [])
        index = pd.DataFrame(self.rows, columns=columns[1:])
        index.insert(0, "row", np.arange(n, dtype=np.int64))
        atomic_write(self.stage / INDEX, lambda p: index.to_parquet(p, index=False))
        meta = {"schema": SCHEMA, "complete": True, "format": self.format,
                "size": self.size if self.format == "npy" else None, "slices": n, **meta}
        write_json(self.stage / META, meta)
        old = hidden_sibling(self.target, "old")
        if self.target.exists():
            os.replace(self.target, old)
        os.replace(self.stage, self.target)
        shutil.rmtree(old, ignore_errors=True)
        return meta


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


def _save_npy(path: Path, data: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save on a file object adds no suffix
        np.save(fh, data)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(np.uint8).str, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def _shrink_npy(path: Path, shape: tuple[int, ...]) -> None:
    """Keep the first ``shape[0]`` rows of a uint8 .npy file, in place: numpy pads the header so that
    the first axis can change without moving the data, so nothing is copied and no space is needed."""
    header = _npy_header(shape)
    with open(path, "r+b") as fh:
        old = np.lib.format.read_array_header_1_0(fh) if np.lib.format.read_magic(fh) == (1, 0) else None
        if old is None or fh.tell() != len(header):
            raise ExportError(f"{path}: unexpected .npy header; export again")
        fh.seek(0)
        fh.write(header)
        fh.truncate(len(header) + int(np.prod(shape)))


def real_path(path: Path) -> Path:
    """``path`` with symbolic links resolved (also a link to a folder that does not exist yet)."""
    return Path(os.path.realpath(path))


def refuse_existing(out: Path, overwrite: bool) -> None:
    """An existing export is replaced only with ``overwrite``; a folder of other files never."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not (out / META).exists() and not (out / INDEX).exists() and not (out / ARRAY).exists():
        raise ExportError(f"{out} holds files that are not a ctreduce export; choose a new or empty folder "
                          "(ctreduce replaces an export folder whole, so it never writes into other files)")
    if not overwrite:
        raise ExportError(f"{out} already holds an export; use --overwrite to replace it whole, "
                          "or choose another folder")


@dataclass(frozen=True)
class ExportStore:
    """A complete, consistent export, opened for reading."""

    root: Path
    meta: dict[str, Any]
    index: pd.DataFrame

    @classmethod
    def open(cls, root: str | os.PathLike) -> ExportStore:
        root = Path(root)
        if not root.is_dir():
            raise ExportError(f"{root}: no such export folder")
        meta_path = root / META
        if not meta_path.exists():
            raise ExportError(f"{root}: no {META}, so this is not a finished ctreduce export (an interrupted "
                              f"export, or files from elsewhere); export it again with 'ctreduce export RUN "
                              f"--out {root} --overwrite'")
        try:
            meta = read_json(meta_path)
        except ValueError as exc:
            raise ExportError(f"{meta_path}: unreadable ({exc}); export it again with --overwrite") from exc
        if not meta.get("complete"):
            raise ExportError(f"{root}: the export is incomplete ({META} does not mark it complete); "
                              "export it again with --overwrite")
        try:
            index = pd.read_parquet(root / INDEX)
        except (OSError, ValueError) as exc:
            raise ExportError(f"{root / INDEX}: unreadable ({type(exc).__name__}: {exc}); export it again "
                              "with --overwrite") from exc
        store = cls(root, meta, index)
        store._check()
        return store

    @property
    def format(self) -> str:
        return str(self.meta["format"])

    @property
    def array_path(self) -> Path:
        return self.root / ARRAY

    def image_paths(self) -> list[Path]:
        return [self.root / f for f in self.index["file"]]

    def clone(self, out: Path) -> None:
        """This export at ``out`` too (hard links where possible), replacing what is there, whole."""
        out = real_path(out)
        stage = hidden_sibling(out, "partial")
        shutil.rmtree(stage, ignore_errors=True)
        shutil.copytree(self.root, stage, copy_function=_link_or_copy)
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)

    def _check(self) -> None:
        n = int(self.meta.get("slices", -1))
        if len(self.index) != n:
            raise ExportError(f"{self.root}: {INDEX} has {len(self.index)} rows but {META} says {n} slices; "
                              "export it again with --overwrite")
        if self.format == "npy":
            try:
                array = np.load(self.array_path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise ExportError(f"{self.array_path}: not a readable .npy array ({exc}); export it again "
                                  "with --overwrite") from exc
            size = self.meta.get("size")
            if array.dtype != np.uint8 or array.shape != (n, size, size):
                raise ExportError(f"{self.array_path}: expected ({n}, {size}, {size}) uint8, got {array.dtype} "
                                  f"{array.shape}; export it again with --overwrite")
        elif self.format == "png":
            listed = set(self.index["file"])
            on_disk = {f"{IMAGES}/{p.name}" for p in (self.root / IMAGES).glob("*.png")}
            if listed != on_disk:
                missing, extra = sorted(listed - on_disk), sorted(on_disk - listed)
                raise ExportError(f"{self.root}: images and {INDEX} disagree ({len(missing)} listed but missing"
                                  + (f", e.g. {missing[0]}" if missing else "") + f"; {len(extra)} not listed"
                                  + (f", e.g. {extra[0]}" if extra else "") + "); export it again with --overwrite")
        else:
            raise ExportError(f"{self.root}: unknown export format {self.format!r} in {META}")


@dataclass(frozen=True)
class ExportParts:
    """Per-volume pieces of an export, written by the workers of ``reduce --export`` while each volume
    is in memory, and assembled into an export store when the run is complete.

    ``folder`` (inside the run folder) holds ``spec.json`` (format, size, intensity), one
    ``<part>.npy`` per volume (npy: the resized kept slices) or the volume's PNGs under
    ``images/`` (png). Parts stay after assembly, so a rerun that redoes some volumes reassembles
    the export without reading the others (PNGs are hard-linked into the export where possible).
    """

    folder: Path
    format: str
    size: int | None
    intensity: str

    def prepare(self) -> None:
        """Create the folder; parts of another format, size or intensity are removed."""
        spec = {"format": self.format, "size": self.size, "intensity": self.intensity}
        marker = self.folder / "spec.json"
        if self.folder.exists() and (not marker.exists() or read_json(marker) != spec):
            shutil.rmtree(self.folder)
        (self.folder / IMAGES).mkdir(parents=True, exist_ok=True)
        write_json(marker, spec)

    def _array(self, volume_id: str) -> Path:
        return self.folder / (_digest(volume_id) + ".npy")

    def _done(self, volume_id: str) -> Path:
        return self.folder / (_digest(volume_id) + ".done")

    def has(self, volume_id: str) -> bool:
        return self._done(volume_id).exists()

    def write(self, volume_id: str, slice_indices: np.ndarray, u8: np.ndarray) -> None:
        """One volume's kept slices (uint8, native size), in manifest order."""
        self._done(volume_id).unlink(missing_ok=True)
        if self.format == "npy":
            stack = npy_rows(u8, self.size)
            atomic_write(self._array(volume_id), lambda p: _save_npy(p, stack))
        else:
            for index, image in zip(slice_indices, u8, strict=True):
                save_png(self.folder / IMAGES, volume_id, int(index), image)
        self._done(volume_id).write_text("")

    def current(self, out: Path, run_dir: Path, kept: list[tuple[str, int]]) -> bool:
        """Whether ``out`` already holds this run's export of exactly ``kept`` (volume_id, slice_index),
        written after every part: a rerun that changed nothing does not assemble it again."""
        try:
            store = ExportStore.open(out)
        except ExportError:
            return False
        newest = max((p.stat().st_mtime_ns for p in self.folder.glob("*.done")), default=0)
        rows = list(zip(store.index["volume_id"], store.index["slice_index"].astype(int), strict=True))
        return (store.meta.get("run_dir") == str(run_dir.resolve()) and store.format == self.format
                and store.meta.get("size") == self.size and store.meta.get("intensity") == self.intensity
                and rows == kept and (out / META).stat().st_mtime_ns >= newest)

    def add_to(self, writer: ExportWriter, volume_id: str, records: list[dict[str, Any]],
               rows: np.ndarray | None = None) -> None:
        """The volume's part into ``writer``: ``records`` are its slices, ``rows`` their positions in
        the part (default: all of it, in order; fewer when ``--scope archive`` dropped some)."""
        if self.format == "npy":
            stack = np.load(self._array(volume_id))
            writer.add_volume(stack if rows is None else stack[rows], records)
            return
        for record in records:
            name = png_name(volume_id, record["slice_index"])
            target = writer.stage / IMAGES / name
            try:
                os.link(self.folder / IMAGES / name, target)
            except OSError:  # another file system: copy
                shutil.copyfile(self.folder / IMAGES / name, target)
            record["file"] = f"{IMAGES}/{name}"
        writer.add_volume(None, records)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _digest(volume_id: str) -> str:
    import hashlib

    return hashlib.sha1(volume_id.encode()).hexdigest()[:20]
