"""The export store: what training reads. File names, schema, writer and reader in one place.

Layout (``OUT``)::

    export.json      schema, settings, counts, source run; ``complete: true`` is written last
    index.parquet    png: one row per exported slice: row, volume_id, slice_index, z_mm, source, file
    images/*.png     png: 8-bit grey at native size, names listed in the index's ``file`` column
    versions/, shards/   npy: the index of each version and the immutable shards it names (``store.shards``)

How the slices are laid out is the format's (``store.export_formats``: one class per format with its writer and
its reader, registered by name; a plug-in adds its own). Everything else is shared. A new export is written into
a staging folder beside ``OUT`` and moved into place when complete, so ``OUT`` holds a whole export or none: an
interrupted export leaves the old one (or nothing), and ``--overwrite`` replaces an old export whole. An export
of a format that ``appends`` (npy) grows in place instead when ``OUT`` holds one of the same run and settings
(``spec``): new files and a new index version, named in export.json last, so readers see the old version or the
new one. Readers refuse an export whose ``export.json`` is missing or incomplete, or whose files and index
disagree (the format checks its files).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .export_formats import (
    IMAGES,
    INDEX,
    ExportError,
    ExportFormat,
    Slices,
    export_format,
    link_or_copy,
    pending_marker,
)
from .files import atomic_write, hidden_sibling, read_json, write_json
from .fingerprint import DIGEST_COLUMN
from .lock import FolderLock
from .shards import PENDING, SHARDS, VERSIONS, compact_index, referenced, version_name, write_index

SCHEMA = 3  # 3: npy exports in shards with index versions
META = "export.json"
INDEX_COLUMNS = ["row", "volume_id", "slice_index", "z_mm", "source"]
MARKERS = (META, INDEX, SHARDS, VERSIONS)  # any of them: the folder is (or was meant to be) a ctreduce export


# --- the export folder ------------------------------------------------------------------------------


class ExportWriter:
    """Writes one export of format ``fmt`` and puts it in place on ``commit``.

    A new export is written beside ``out`` and moved into place. An appending format (npy) whose ``out`` holds a
    complete export of the same ``spec`` (run, column, intensity; format and size are added) writes into ``out``
    itself: new shards, then a new index version. Use as a context manager: leaving it without ``commit`` (an
    error, Ctrl-C) leaves ``out`` as it was; an appending format keeps what it wrote for the next try.
    """

    def __init__(self, out: str | os.PathLike, fmt: str, *, size: int | None, overwrite: bool,
                 spec: dict[str, Any] | None = None) -> None:
        self.format = export_format(fmt, size)
        self.out = Path(out)
        # An --out that is a symbolic link names the export it points to: that one is replaced, the link stays.
        self.target = real_path(self.out)
        self.overwrite = overwrite
        self.spec = {"format": self.format.name, "size": self.format.size, **(spec or {})}
        self.stage = hidden_sibling(self.target, "partial")
        self.previous: ExportStore | None = None  # the version this one grows from
        self._lock = FolderLock.beside(self.target, f"export folder {self.out}")
        self._room: Any = None
        self._reusable: dict[str, pd.DataFrame] | None = None
        self.rows: list[dict[str, Any]] = []

    def __enter__(self) -> ExportWriter:
        growing = self.format.appends and same_spec(self.target, self.spec)
        if not growing:
            refuse_existing(self.target, self.overwrite)
        self._lock.__enter__()
        try:
            if self.format.appends:
                self.stage = writing_place(self.target, self.spec)
                self.previous = ExportStore.open(self.target) if self.stage == self.target else None
            else:
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
            if self.stage.exists() and not self.format.appends:
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

    def held(self, records: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """``records`` (one volume's rows, with their manifest ``pixel_digest``) with their place in the version
        this one grows from, when it holds every one of them with the same digest (nothing to read); else None."""
        if self.previous is None or not records or any(r.get(DIGEST_COLUMN) is None for r in records):
            return None
        if self._reusable is None:
            self._reusable = {vid: rows.set_index("slice_index")
                              for vid, rows in self.previous.index.groupby("volume_id", sort=False)}
        held = self._reusable.get(records[0]["volume_id"])
        wanted = [r["slice_index"] for r in records]
        if held is None or not held.index.is_unique or not set(wanted) <= set(held.index):
            return None
        found = held.loc[wanted]
        if list(found[DIGEST_COLUMN]) != [r[DIGEST_COLUMN] for r in records]:
            return None
        return [{**r, "shard": s, "shard_row": int(k)}
                for r, s, k in zip(records, found["shard"], found["shard_row"], strict=True)]

    def commit(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Write the index and export.json (``complete: true``) and put the export in place; returns what
        export.json holds. A growing export whose rows are those of its current version keeps that version (and
        its export.json: ``grew`` is False in what is returned)."""
        n = len(self.rows)
        room, self._room = self._room, None
        self.format.finish(self.stage, room, n)
        columns = INDEX_COLUMNS + list(self.format.columns)
        index = pd.DataFrame(self.rows, columns=columns[1:])
        index.insert(0, "row", np.arange(n, dtype=np.int64))
        meta = {"schema": SCHEMA, "complete": True, **self.spec, "slices": n, **meta}
        if not self.format.appends:
            atomic_write(self.stage / INDEX, lambda p: index.to_parquet(p, index=False))
            write_json(self.stage / META, meta)
            self._move_into_place()
            return meta
        if self.previous is not None and _same_rows(self.previous.index, index, columns):
            return {**meta, "version": self.previous.version, "index": self.previous.meta["index"], "grew": False}
        version = (self.previous.version if self.previous is not None else 0) + 1
        meta.update(version=version, index=write_index(self.stage, version, index), grew=self.previous is not None)
        if self.stage != self.target:  # a new store: shards no version names are left by failed volumes
            named = set(index["shard"])
            for path in (self.stage / SHARDS).glob("*.npy"):
                if path.name not in named:
                    path.unlink()
        write_json(self.stage / META, meta)
        shutil.rmtree(self.stage / PENDING, ignore_errors=True)
        if self.stage != self.target:
            self._move_into_place()
        return meta

    def _move_into_place(self) -> None:
        old = hidden_sibling(self.target, "old")
        if self.target.exists():
            os.replace(self.target, old)
        os.replace(self.stage, self.target)
        shutil.rmtree(old, ignore_errors=True)


def _same_rows(old: pd.DataFrame, new: pd.DataFrame, columns: list[str]) -> bool:
    if len(old) != len(new) or any(c not in old.columns for c in columns):
        return False
    return all((old[c].to_numpy() == new[c].to_numpy()).all() for c in columns if c != "z_mm") and bool(
        np.allclose(old["z_mm"].to_numpy(float), new["z_mm"].to_numpy(float), equal_nan=True))


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
    if not any((out / name).exists() for name in MARKERS):
        raise ExportError(f"{out} holds files that are not a ctreduce export; choose a new or empty folder "
                          "(ctreduce replaces an export folder whole, so it never writes into other files)")
    if not overwrite:
        raise ExportError(f"{out} already holds an export; use --overwrite to replace it whole, "
                          "or choose another folder")


def same_spec(out: Path, spec: dict[str, Any]) -> bool:
    """Whether ``out`` holds a complete, consistent export of ``spec`` (format, size, run, column, intensity)."""
    try:
        meta = read_json(out / META)
        if not meta.get("complete") or any(meta.get(k) != v for k, v in spec.items()):
            return False
        ExportStore.open(out)
    except (OSError, ValueError):
        return False
    return True


def writing_place(out: Path, spec: dict[str, Any]) -> Path:
    """Where an appending export of ``spec`` writes: ``out`` itself when it holds a complete export of that spec
    (it grows), else its staging folder beside ``out``, kept between tries of the same spec (a resumed export
    finds its shards there) and cleared for another."""
    if same_spec(out, spec):
        return out
    stage = hidden_sibling(out, "partial")
    marker = stage / META
    try:
        fresh = read_json(marker) != {**spec, "complete": False}
    except (OSError, ValueError):
        fresh = True
    if fresh:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        write_json(marker, {**spec, "complete": False})
    return stage


@dataclass(frozen=True)
class ExportStore:
    """A complete, consistent export (of one index version), opened for reading."""

    root: Path
    meta: dict[str, Any]
    index: pd.DataFrame

    @classmethod
    def open(cls, root: str | os.PathLike, version: int | None = None) -> ExportStore:
        """The export at ``root``: its current version, or ``version`` (npy) while the shards it names are kept."""
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
        name = str(meta.get("index", INDEX))
        if version is not None and version != meta.get("version"):
            if "version" not in meta:
                raise ExportError(f"{root}: a {meta.get('format')} export has no versions")
            name = version_name(version)
            if not (root / name).exists():
                raise ExportError(f"{root}: no version {version} (compacted since, or never written); the "
                                  f"current version is {meta['version']}")
            meta = {**meta, "version": version, "index": name, "slices": None}
        try:
            index = pd.read_parquet(root / name)
        except (OSError, ValueError) as exc:
            raise ExportError(f"{root / name}: unreadable ({type(exc).__name__}: {exc}); export it again "
                              "with --overwrite") from exc
        if meta["slices"] is None:
            meta["slices"] = len(index)
        store = cls(root, meta, index)
        store._check()
        return store

    @property
    def format(self) -> str:
        return str(self.meta["format"])

    @property
    def version(self) -> int | None:
        """The index version (npy; None for a format written whole)."""
        return self.meta.get("version")

    def image_paths(self) -> list[Path]:
        """The files named in the index's ``file`` column (png: the images)."""
        return [self.root / f for f in self.index["file"]]

    def slices(self) -> Slices:
        """Every exported slice, in index order, as its format reads it (uint8 (H, W) arrays)."""
        return self._format().slices(self.root, self.index)

    def array(self) -> np.ndarray:
        """Every slice in one (N, H, W) uint8 array, in index order (a sized format's, or slices of one size)."""
        slices = self.slices()
        return np.stack([slices[i] for i in range(len(slices))]) if len(slices) else np.zeros((0, 0, 0), np.uint8)

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
        if self._format().appends and "version" not in self.meta:
            raise ExportError(f"{self.root}: an {self.format} export written by an older ctreduce (one array, no "
                              "shards); export it again with --overwrite")
        n = int(self.meta.get("slices", -1))
        if len(self.index) != n:
            raise ExportError(f"{self.root}: {self.meta.get('index', INDEX)} has {len(self.index)} rows but {META} "
                              f"says {n} slices; export it again with --overwrite")
        self._format().check(self.root, self.meta, self.index)


def compact(out: str | os.PathLike) -> dict[str, Any]:
    """Rewrite the shards of the npy export at ``out`` that hold dead rows (rows its current version no longer
    lists), as a new version that reads the same; shards without dead rows stay as they are. Shards no current
    row needs are deleted, and so are the earlier versions that named a deleted shard."""
    root = real_path(Path(out))
    with FolderLock.beside(root, f"export folder {out}"):
        store = ExportStore.open(root)
        if not export_format(store.format, store.meta.get("size")).appends:
            raise ExportError(f"{out}: a {store.format} export is written whole; only an npy export is compacted")
        index, rewritten = compact_index(root, store.index, int(store.meta["size"]))
        meta = store.meta
        if rewritten:
            version = int(store.meta["version"]) + 1
            meta = {**store.meta, "version": version, "index": write_index(root, version, index)}
            write_json(root / META, meta)
        live = set(index["shard"])
        removed = [p for p in (root / SHARDS).glob("*.npy") if p.name not in live]
        for path in removed:
            path.unlink()
        gone = {p.name for p in removed}
        for name, shards in referenced(root).items():
            if name != meta["index"] and shards & gone:
                (root / name).unlink()
        shutil.rmtree(root / PENDING, ignore_errors=True)
    return {"path": str(out), "version": meta["version"], "rewritten": len(rewritten),
            "removed": len(removed) - len(rewritten),  # shards of which no row was live
            "slices": meta["slices"]}


@dataclass
class ExportParts:
    """Per-volume pieces of an export, written by the workers of ``reduce --export`` while each volume
    is in memory, and assembled into an export store when the run is complete.

    An appending format (npy) writes each part into the store it grows (``writing_place`` of ``store``): the
    volume's shard, named in ``pending/``; assembly adds a version that names them, and a rerun's volumes that
    did not change keep their rows. Other formats (png) keep parts in ``folder`` (inside the run folder), with
    ``spec.json`` (format, size, intensity); they stay after assembly, so a rerun that redoes some volumes
    reassembles the export without reading the others (PNGs are hard-linked into the export where possible).
    A part is there when its marker (``pending_marker``) is. ``size`` is recorded only for a sized format.
    """

    folder: Path
    format: str
    size: int | None
    intensity: str
    store: Path | None = None  # the export folder an appending format grows
    spec: dict[str, Any] = field(default_factory=dict)  # what else that export must share (run_dir, column)

    def __post_init__(self) -> None:
        self.size = self.layout.size
        self.spec = {"format": self.format, "size": self.size, "intensity": self.intensity, **self.spec}

    @cached_property
    def layout(self) -> ExportFormat:
        return export_format(self.format, self.size)

    def prepare(self) -> None:
        """Create the folder; parts of another format, size or intensity are removed."""
        if self.layout.appends and self.store is not None:
            self.folder = writing_place(real_path(self.store), self.spec)
            self.layout.start(self.folder)
            return
        spec = {"format": self.format, "size": self.size, "intensity": self.intensity}
        marker = self.folder / "spec.json"
        if self.folder.exists() and (not marker.exists() or read_json(marker) != spec):
            shutil.rmtree(self.folder)
        (self.folder / IMAGES).mkdir(parents=True, exist_ok=True)
        write_json(marker, spec)

    def has(self, volume_id: str) -> bool:
        return pending_marker(self.folder, volume_id).exists()

    def write(self, volume_id: str, slice_indices: np.ndarray, u8: np.ndarray) -> None:
        """One volume's kept slices (uint8, native size), in manifest order."""
        marker = pending_marker(self.folder, volume_id)
        marker.unlink(missing_ok=True)
        kept = self.layout.write_part(self.folder, volume_id, slice_indices, u8)
        marker.parent.mkdir(exist_ok=True)
        write_json(marker, kept or {})

    def current(self, out: Path, run_dir: Path, kept: list[tuple[str, int]]) -> bool:
        """Whether ``out`` already holds this run's export of exactly ``kept`` (volume_id, slice_index),
        written after every part: a rerun that changed nothing does not assemble it again."""
        try:
            store = ExportStore.open(out)
        except ExportError:
            return False
        newest = max((p.stat().st_mtime_ns for p in (self.folder / PENDING).glob("*.json")), default=0)
        rows = list(zip(store.index["volume_id"], store.index["slice_index"].astype(int), strict=True))
        return (store.meta.get("run_dir") == str(run_dir.resolve()) and store.format == self.format
                and store.meta.get("size") == self.size and store.meta.get("intensity") == self.intensity
                and rows == kept and (out / META).stat().st_mtime_ns >= newest)

    def add_to(self, writer: ExportWriter, volume_id: str, records: list[dict[str, Any]],
               rows: np.ndarray | None = None) -> None:
        """The volume's part into ``writer``: ``records`` are its slices, ``rows`` their positions in
        the part (default: all of it, in order; fewer when ``--scope archive`` dropped some)."""
        writer.add_volume(self.layout.read_part(self.folder, writer.stage, volume_id, records, rows), records)
