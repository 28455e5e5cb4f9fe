"""The export store: what training reads. File names, schema, writer and reader in one place.

Layout (``OUT``)::

    export.json      schema, settings, counts, source run; ``complete: true`` is written last
    index.parquet    one row per exported slice: row, volume_id, slice_index, z_mm, source (+ file)
    slices.npy       npy: (N, size, size) uint8, row i = index row i
    images/*.png     png: 8-bit grey at native size, names listed in the index's ``file`` column

How the slices are laid out is the format's (``store.export_formats``: one class per format with its writer and
its reader, registered by name; a plug-in adds its own). Everything else is
shared: an export is written into a staging folder beside ``OUT`` and moved into place when complete, so
``OUT`` holds a whole export or none: an interrupted export leaves the old one (or nothing), and
``--overwrite`` replaces an old export whole (no old image survives). Readers refuse an export whose
``export.json`` is missing or incomplete, or whose files and index disagree (the format checks its files).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .export_formats import (
    ARRAY,
    IMAGES,
    INDEX,
    ExportError,
    ExportFormat,
    Slices,
    export_format,
    link_or_copy,
    part_stem,
)
from .files import atomic_write, hidden_sibling, read_json, write_json
from .lock import FolderLock

SCHEMA = 2
META = "export.json"
INDEX_COLUMNS = ["row", "volume_id", "slice_index", "z_mm", "source"]


# --- the export folder ------------------------------------------------------------------------------


class ExportWriter:
    """Writes one export of format ``fmt`` beside ``out`` and moves it into place on ``commit``.

    Use as a context manager: leaving it without ``commit`` (an error, Ctrl-C) removes the
    staging folder and leaves ``out`` as it was.
    """

    def __init__(self, out: str | os.PathLike, fmt: str, *, size: int | None, overwrite: bool) -> None:
        self.format = export_format(fmt, size)
        self.out = Path(out)
        # An --out that is a symbolic link names the export it points to: that one is replaced, the link stays.
        self.target = real_path(self.out)
        self.overwrite = overwrite
        self.stage = hidden_sibling(self.target, "partial")
        self._lock = FolderLock.beside(self.target, f"export folder {self.out}")
        self._room: Any = None
        self.rows: list[dict[str, Any]] = []

    def __enter__(self) -> ExportWriter:
        refuse_existing(self.target, self.overwrite)
        self._lock.__enter__()
        try:
            if self.stage.exists():
                shutil.rmtree(self.stage)  # left by an interrupted export; we hold the lock
            self.stage.mkdir(parents=True)
            self.format.start(self.stage)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.stage.exists():
                self._room = None
                shutil.rmtree(self.stage, ignore_errors=True)
        finally:
            self._lock.__exit__(exc_type, exc, tb)

    def allocate(self, n: int) -> None:
        """Room for ``n`` slices, before the first volume (the format reserves disk space where it can)."""
        self._room = self.format.allocate(self.stage, n)

    def add_volume(self, payload: Any, records: list[dict[str, Any]]) -> None:
        """One volume's rows, in order: ``records`` and what the format's ``encode`` returned for them."""
        self.format.store(self._room, len(self.rows), payload)
        self.rows.extend(records)

    def commit(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Write index and export.json (``complete: true``) and move the export into place."""
        n = len(self.rows)
        room, self._room = self._room, None
        self.format.finish(self.stage, room, n)
        columns = INDEX_COLUMNS + list(self.format.columns)
        index = pd.DataFrame(self.rows, columns=columns[1:])
        index.insert(0, "row", np.arange(n, dtype=np.int64))
        atomic_write(self.stage / INDEX, lambda p: index.to_parquet(p, index=False))
        meta = {"schema": SCHEMA, "complete": True, "format": self.format.name, "size": self.format.size,
                "slices": n, **meta}
        write_json(self.stage / META, meta)
        old = hidden_sibling(self.target, "old")
        if self.target.exists():
            os.replace(self.target, old)
        os.replace(self.stage, self.target)
        shutil.rmtree(old, ignore_errors=True)
        return meta


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
        """npy: the array file."""
        return self.root / ARRAY

    def image_paths(self) -> list[Path]:
        """The files named in the index's ``file`` column (png: the images)."""
        return [self.root / f for f in self.index["file"]]

    def slices(self) -> Slices:
        """Every exported slice, in index order, as its format reads it (uint8 (H, W) arrays)."""
        return self._format().slices(self.root, self.index)

    def clone(self, out: Path) -> None:
        """This export at ``out`` too (hard links where possible), replacing what is there, whole."""
        out = real_path(out)
        stage = hidden_sibling(out, "partial")
        shutil.rmtree(stage, ignore_errors=True)
        shutil.copytree(self.root, stage, copy_function=link_or_copy)
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)

    def _format(self) -> ExportFormat:
        try:
            return export_format(self.format, self.meta.get("size"))
        except ExportError as exc:
            raise ExportError(f"{self.root}: {exc} (in {META}; a plug-in's format is known once its plug-in is "
                              "loaded: CTREDUCE_PLUGINS or an installed entry point)") from exc

    def _check(self) -> None:
        n = int(self.meta.get("slices", -1))
        if len(self.index) != n:
            raise ExportError(f"{self.root}: {INDEX} has {len(self.index)} rows but {META} says {n} slices; "
                              "export it again with --overwrite")
        self._format().check(self.root, self.meta, self.index)


@dataclass(frozen=True)
class ExportParts:
    """Per-volume pieces of an export, written by the workers of ``reduce --export`` while each volume
    is in memory, and assembled into an export store when the run is complete.

    ``folder`` (inside the run folder) holds ``spec.json`` (format, size, intensity) and each volume's part
    in its format's way (npy: ``<part>.npy``, the resized kept slices; png: the volume's PNGs under
    ``images/``). Parts stay after assembly, so a rerun that redoes some volumes reassembles the export
    without reading the others (PNGs are hard-linked into the export where possible). ``size`` is
    recorded only for a sized format.
    """

    folder: Path
    format: str
    size: int | None
    intensity: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", self.layout.size)

    @cached_property
    def layout(self) -> ExportFormat:
        return export_format(self.format, self.size)

    def prepare(self) -> None:
        """Create the folder; parts of another format, size or intensity are removed."""
        spec = {"format": self.format, "size": self.size, "intensity": self.intensity}
        marker = self.folder / "spec.json"
        if self.folder.exists() and (not marker.exists() or read_json(marker) != spec):
            shutil.rmtree(self.folder)
        (self.folder / IMAGES).mkdir(parents=True, exist_ok=True)
        write_json(marker, spec)

    def _done(self, volume_id: str) -> Path:
        return self.folder / (part_stem(volume_id) + ".done")

    def has(self, volume_id: str) -> bool:
        return self._done(volume_id).exists()

    def write(self, volume_id: str, slice_indices: np.ndarray, u8: np.ndarray) -> None:
        """One volume's kept slices (uint8, native size), in manifest order."""
        self._done(volume_id).unlink(missing_ok=True)
        self.layout.write_part(self.folder, volume_id, slice_indices, u8)
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
        writer.add_volume(self.layout.read_part(self.folder, writer.stage, volume_id, records, rows), records)

