"""The reduction run folder: its file names, schema, writer and reader, in one place.

Layout (``DIR``)::

    run.json           schema, settings and inputs of the run (a rerun must match them; a fine-tune's
                       run.json says how it ran instead: ``store.finetune``)
    volumes.parquet    every volume found: id, format, files in anatomical order, fingerprint
    parts/*.parquet    one manifest part per finished volume (written atomically)
    progress.jsonl     journal of finished volumes (ok or error, with input fingerprints)
    manifest.parquet   one row per slice, all volumes in input order (manifest.csv with --csv), with each
                       slice's pixel digest (``fingerprint.slice_digest``): what later reads compare
    summary.json       counts, kept fractions, timings, errors, skipped files, library versions (a
                       pre-training run's summary.json describes its training: ``store.pretrain``)
    headers.parquet    the DICOM header (or skip reason) of every file scanned, with its size and mtime:
                       a rerun reads again only the files that changed (a cache: deleting it is safe)
    export-parts/      reduce --export png: each volume's PNGs, hard-linked into the export
    export/            reduce --export: the export (unless --export-out puts it elsewhere; npy: its shards)
    .lock              held while a process writes the folder

Schema 2 (this version) adds input fingerprints and names the score column for what it holds
(``distance`` for hashes, ``similarity`` for SSIM/NMI/cosine). Schema 1 folders still read; their
inputs cannot be checked (no fingerprints), which readers report with the command to redo them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..io.dicom import DicomHeader
from ..io.discover import HeaderCache, load
from ..io.volume import VolumeError, VolumeSource
from .export import ExportError, ExportStore
from .files import atomic_write, disk_full, is_disk_full, read_json, write_json
from .fingerprint import DIGEST_COLUMN, Fingerprint, first_mismatch
from .lock import FolderLock

SCHEMA = 2
RUN_JSON = "run.json"
VOLUMES = "volumes.parquet"
PARTS = "parts"
JOURNAL = "progress.jsonl"
MANIFEST = "manifest.parquet"
MANIFEST_CSV = "manifest.csv"
SUMMARY = "summary.json"
HEADERS = "headers.parquet"
EXPORT_PARTS = "export-parts"
EXPORT = "export"
LOCK = ".lock"
_MANAGED = (RUN_JSON, VOLUMES, PARTS, JOURNAL, MANIFEST, MANIFEST_CSV, SUMMARY, HEADERS, EXPORT_PARTS, EXPORT)

# Score columns by what they hold: hash methods measure a distance, the others a similarity.
SCORE_COLUMNS = ("distance", "similarity")


class RunFolderError(ValueError):
    """The folder is not a usable run folder (missing, incomplete, other settings, changed inputs)."""


class RunConflict(RunFolderError):
    """The output folder holds a run with other settings or inputs."""


@dataclass(frozen=True)
class SourceCheck:
    """What checking a run's recorded inputs against the disk found."""

    changed: dict[str, str]  # volume_id -> what changed, in words
    moved: list[str]  # same content at other paths or times
    unchecked: bool = False  # schema 1: nothing recorded to check against
    # check_sources(defer=True): volume_id -> the slices whose file's stat changed, to be compared while read
    modified: dict[str, list[int]] = field(default_factory=dict)

    def message(self, run: Path, limit: int = 5) -> str:
        if self.unchecked:
            return (f"{run} was written by an older ctreduce (run folder schema 1) and records no input "
                    "fingerprints, so its sources cannot be checked; redo it with the same 'ctreduce reduce' "
                    "command and --overwrite, or pass --allow-changed to use it unchecked")
        items = list(self.changed.items())
        listed = "; ".join(f"{vid}: {what}" for vid, what in items[:limit])
        more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
        return (f"the inputs of {len(items)} volume(s) of {run} changed since they were reduced: {listed}{more}. "
                "Rerun the same 'ctreduce reduce' command to redo them, or pass --allow-changed to go on "
                "(recorded in the output)")


def part_name(volume_id: str) -> str:
    return hashlib.sha1(volume_id.encode()).hexdigest()[:20] + ".parquet"


def write_part(parts: Path, volume_id: str, frame: pd.DataFrame) -> None:
    """A finished volume's manifest rows; called by the worker that reduced it."""
    atomic_write(parts / part_name(volume_id), lambda p: frame.to_parquet(p, index=False))


def read_part(parts: Path, volume_id: str) -> pd.DataFrame | None:
    """A finished volume's manifest rows (None when it has no part); read by a worker verifying it."""
    part = parts / part_name(volume_id)
    return pd.read_parquet(part) if part.exists() else None


class RunFolder:
    """One reduction run on disk. Writers hold ``lock()``; readers use ``open``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.parts = self.path / PARTS
        self.journal = self.path / JOURNAL

    # --- writing ------------------------------------------------------------------------------

    @property
    def export_parts(self) -> Path:
        return self.path / EXPORT_PARTS

    @property
    def default_export(self) -> Path:
        return self.path / EXPORT

    def lock(self, *, shared: bool = False) -> FolderLock:
        """Held by the process writing the folder; ``shared`` by those reading it whole (``export``), which
        may read together while no writer can start, and cannot start while one writes."""
        return FolderLock(self.path / LOCK, f"run folder {self.path}", shared=shared)

    def start(self, settings: dict[str, Any], inputs: list[str], overwrite: bool) -> bool:
        """Begin or resume a run (the lock is held). Returns True when the inputs moved (same names
        under another parent folder): recorded volumes are then kept only when their content is unchanged."""
        run_file = self.path / RUN_JSON
        moved = False
        if overwrite:
            for name in _MANAGED:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        elif run_file.exists():
            previous = read_json(run_file)
            if previous.get("schema") != SCHEMA:
                raise RunConflict(f"{self.path} holds a run of an older ctreduce (run folder schema "
                                  f"{previous.get('schema', 1)}); rerun with --overwrite to redo it, or use "
                                  "another output folder")
            old = previous.get("settings", {})
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if diff:
                raise RunConflict(
                    f"{self.path} holds a run with other settings ("
                    + "; ".join(f"{k} was {old.get(k)!r}, now {settings.get(k)!r}" for k in diff)
                    + "); use another output folder or --overwrite")
            if previous.get("inputs") != inputs:
                if [Path(p).name for p in previous.get("inputs", [])] != [Path(p).name for p in inputs]:
                    raise RunConflict(f"{self.path} holds a run of other inputs ({previous.get('inputs')}, now "
                                      f"{inputs}); use another output folder or --overwrite")
                moved = True
        self.parts.mkdir(parents=True, exist_ok=True)
        write_json(run_file, {"schema": SCHEMA, "settings": settings, "inputs": inputs})
        return moved

    def finished(self) -> dict[str, dict[str, Any]]:
        """Journal entries of volumes already reduced successfully (last entry wins)."""
        done: dict[str, dict[str, Any]] = {}
        if not self.journal.exists():
            return done
        for line in self.journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if entry.get("error") is None and (self.parts / entry["part"]).exists():
                done[entry["volume_id"]] = entry
            else:
                done.pop(entry["volume_id"], None)
        return done

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = {**entry, "part": part_name(entry["volume_id"])}
        try:
            with self.journal.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(self.journal, exc) from exc
            raise
        return entry

    def read_part_table(self, volume_id: str) -> pa.Table | None:
        part = self.parts / part_name(volume_id)
        return pq.read_table(part) if part.exists() else None

    def write_results(self, manifest: pd.DataFrame, sources: list[VolumeSource],
                      fingerprints: dict[str, str], summary: dict[str, Any], csv: bool,
                      arrow: pa.Table | None = None) -> None:
        """The results of a run whose manifest is held whole (``write_manifest`` streams it from the parts).
        ``arrow``: the manifest as Arrow, when the caller has it (written without converting ``manifest``
        again: the largest transient of a run's end)."""
        self.write_volumes(sources, fingerprints)
        if arrow is not None:
            atomic_write(self.path / MANIFEST, lambda p: pq.write_table(arrow, p))
        else:
            atomic_write(self.path / MANIFEST, lambda p: manifest.to_parquet(p, index=False))
        if csv:
            self.write_csv(manifest)
        self.update_summary(summary)

    def write_volumes(self, sources: list[VolumeSource], fingerprints: dict[str, str]) -> None:
        """volumes.parquet: every volume found, with its fingerprint (``Fingerprint`` JSON) where it has one."""
        def volumes(path: Path) -> None:
            with pq.ParquetWriter(path, _VOLUMES_SCHEMA) as writer:
                for start in range(0, len(sources), _VOLUMES_BATCH):  # a batch of volumes at a time: converting
                    batch = sources[start:start + _VOLUMES_BATCH]  # all at once held ~0.7 KB a file more
                    columns = {name: [_plain(getattr(s, name)) for s in batch] for name in _VOLUME_FIELDS}
                    columns["fingerprint"] = [fingerprints.get(s.volume_id) for s in batch]
                    writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=_VOLUMES_SCHEMA))

        atomic_write(self.path / VOLUMES, volumes)

    def write_manifest(self, volume_ids: Iterable[str], visit: Callable[[pa.Table], None], *, csv: bool,
                       empty: pa.Table) -> None:
        """manifest.parquet (and manifest.csv with ``csv``) from the parts of ``volume_ids``, in that order,
        one part in memory at a time; ``visit`` sees each part's rows as written. Parts whose columns differ
        (a column all empty in one volume) are written with the types they share. ``empty``: the manifest
        when no volume has a part."""
        parts = [part for part in (self.parts / part_name(v) for v in volume_ids) if part.exists()]
        schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive") \
            if parts else empty.schema

        def write(path: Path, csv_path: Path | None) -> None:
            with pq.ParquetWriter(path, schema) as writer, \
                    (csv_path.open("w", newline="") if csv_path is not None else nullcontext()) as csv_file:
                if not parts:
                    writer.write_table(empty)
                    if csv_file is not None:
                        empty.to_pandas().to_csv(csv_file, index=False)
                held: list[pa.Table] = []  # row groups of ~_MANIFEST_BATCH rows: one per volume (~100 rows)
                rows = 0  # made a 2,000-volume manifest's footer 3 MB and a read of it 115 MiB
                for k, part in enumerate(parts):  # each part read once, for both files
                    table = _conform(pq.read_table(part), schema)
                    visit(table)
                    if csv_file is not None:
                        table.to_pandas().to_csv(csv_file, header=k == 0, index=False)
                    held.append(table)
                    rows += table.num_rows
                    if rows >= _MANIFEST_BATCH:
                        writer.write_table(pa.concat_tables(held))
                        held, rows = [], 0
                if held:
                    writer.write_table(pa.concat_tables(held))

        if csv:  # both written together, each renamed into place when whole
            atomic_write(self.path / MANIFEST_CSV, lambda c: atomic_write(self.path / MANIFEST, lambda p: write(p, c)))
        else:
            atomic_write(self.path / MANIFEST, lambda p: write(p, None))

    def write_csv(self, manifest: pd.DataFrame) -> None:
        atomic_write(self.path / MANIFEST_CSV, lambda p: manifest.to_csv(p, index=False))

    @property
    def has_manifest(self) -> bool:
        """Whether manifest.parquet is there and its footer (schema, row groups) reads."""
        try:
            pq.read_metadata(self.path / MANIFEST)
        except (OSError, ValueError, pa.ArrowException):
            return False
        return True

    @property
    def has_csv(self) -> bool:
        return (self.path / MANIFEST_CSV).exists()

    def update_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / SUMMARY, {"schema": SCHEMA, **summary})

    def write_header_cache(self, cache: HeaderCache) -> None:
        def write(path: Path) -> None:
            items = list(cache.items())
            with pq.ParquetWriter(path, _HEADER_SCHEMA) as writer:
                for start in range(0, len(items), _HEADER_BATCH):  # bounded transient memory
                    writer.write_batch(_header_batch(items[start:start + _HEADER_BATCH]))

        atomic_write(self.path / HEADERS, write)

    def header_cache(self) -> HeaderCache:
        """The headers of the last scan ({} when there is none or it cannot be read: it is a cache)."""
        path = self.path / HEADERS
        try:
            return _header_cache(pq.read_table(path)) if path.exists() else {}
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            return {}

    def unchanged_since_complete(self, settings: dict[str, Any], inputs: list[str], listing_digest: str,
                                 export: dict[str, Any] | None) -> dict[str, Any] | None:
        """The summary of this run when it is complete for these settings and inputs, no input file
        changed since (same ``io.discover.walk`` digest) and it holds the export asked for; else None.
        A rerun of a complete run then reads nothing but this folder's summary and the file listing."""
        try:
            run, summary = read_json(self.path / RUN_JSON), read_json(self.path / SUMMARY)
        except (OSError, ValueError):
            return None
        if not (summary.get("complete") and summary.get("inputs_digest") == listing_digest
                and run.get("schema") == SCHEMA and run.get("settings") == settings and run.get("inputs") == inputs
                and (self.path / MANIFEST).exists()):
            return None
        if export is not None:  # the export this run wrote, whole, still there and still this run's
            held = summary.get("export") or {}
            try:
                meta = ExportStore.open(held["path"]).meta
            except (KeyError, OSError, ExportError):
                return None
            if (any(held.get(k) != v for k, v in export.items()) or meta.get("run_dir") != str(self.path.resolve())
                    or any(meta.get(k) != v for k, v in export.items() if k != "path")):
                return None
        return summary

    # --- reading ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunFolder:
        """A finished (or interrupted) run to read; raises RunFolderError when there is none."""
        run = cls(path)
        if not (run.path / MANIFEST).exists():
            raise RunFolderError(f"{run.path / MANIFEST}: no manifest; run 'ctreduce reduce ... --out {run.path}' "
                                 "first (or let the interrupted run finish)")
        return run

    @property
    def schema(self) -> int:
        run_file = self.path / RUN_JSON
        return int(read_json(run_file).get("schema", 1)) if run_file.exists() else 1

    def inputs(self) -> list[str]:
        """The files and folders the run was made from, as given to ``reduce`` (resolved)."""
        path = self.path / RUN_JSON
        return [str(p) for p in read_json(path).get("inputs", [])] if path.exists() else []

    def settings(self) -> dict[str, Any]:
        data = read_json(self.path / RUN_JSON)
        if "schema" in data:
            return data["settings"]
        return {k: v for k, v in data.items() if k != "inputs"}  # schema 1: settings and inputs at the top

    def manifest(self, columns: list[str] | None = None) -> pd.DataFrame:
        manifest = pd.read_parquet(self.path / MANIFEST)
        if "distance" in manifest.columns and self.schema == 1 and len(manifest):
            if str(manifest["method"].iloc[0]) in ("ssim", "mi", "deepnet"):  # schema 1 called every score distance
                manifest = manifest.rename(columns={"distance": "similarity"})
        return manifest if columns is None else manifest[[c for c in columns if c in manifest.columns]]

    def kept_rows(self) -> pd.DataFrame:
        """The manifest's rows of the slices kept, or kept by their volume's own pass (``volume_kept``: ``--scope
        archive``): all an export reads of it, read a batch at a time (a tenth of a hash run's rows)."""
        source = pq.ParquetFile(self.path / MANIFEST)
        batches = []
        for batch in source.iter_batches(batch_size=_MANIFEST_BATCH):
            mask = batch.column("kept")
            if "volume_kept" in batch.schema.names:
                mask = pc.or_(mask, batch.column("volume_kept"))
            batches.append(batch.filter(mask))
        return pa.Table.from_batches(batches, schema=source.schema_arrow).to_pandas()

    def summary(self) -> dict[str, Any]:
        path = self.path / SUMMARY
        return read_json(path) if path.exists() else {}

    @property
    def complete(self) -> bool:
        return bool(self.summary().get("complete", False))

    def sources(self) -> list[VolumeSource]:
        table = pd.read_parquet(self.path / VOLUMES)
        fields = {f.name for f in dataclasses.fields(VolumeSource)}
        return [VolumeSource(**{k: tuple(v) if isinstance(v, np.ndarray) else v
                                for k, v in row.items() if k in fields})
                for row in table.to_dict("records")]

    def fingerprints(self) -> dict[str, Fingerprint]:
        table = pd.read_parquet(self.path / VOLUMES)
        if "fingerprint" not in table.columns:
            return {}
        return {vid: Fingerprint.from_json(json.loads(fp))
                for vid, fp in zip(table["volume_id"], table["fingerprint"], strict=True) if isinstance(fp, str)}

    def check_sources(self, volume_ids: Iterable[str] | None = None, *, defer: bool = False) -> SourceCheck:
        """Compare the recorded inputs of ``volume_ids`` (default: all) with the files on disk.

        Files whose stat is unchanged are trusted (nothing is read). The slices of files whose stat
        changed are read and compared with the manifest (``fingerprint.first_mismatch``): the same
        pixels at the same positions -> ``moved``, else ``changed``. With ``defer``, they are listed
        in ``modified`` instead, for a caller that reads and compares them anyway (an export).
        """
        if self.schema < 2:
            return SourceCheck({}, [], unchecked=True)
        try:
            recorded = self.fingerprints()
            sources = {s.volume_id: s for s in self.sources()}
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"cannot read {self.path / VOLUMES} ({type(exc).__name__}: {exc}), so the "
                                 "sources cannot be checked; rerun the same 'ctreduce reduce' command to "
                                 "write it again") from exc
        wanted = list(sources) if volume_ids is None else list(volume_ids)
        changed, moved, modified = {}, [], {}
        rows: dict[str, pd.DataFrame] | None = None
        for vid in wanted:
            source, before = sources.get(vid), recorded.get(vid)
            if source is None or before is None:
                changed[vid] = "no recorded input fingerprint"
                continue
            now = Fingerprint.of(source)
            if now == before:
                continue
            if now.folders != before.folders:  # files were added or removed beside the series
                try:
                    source = _rescan_series(source)
                except ValueError as exc:
                    changed[vid] = str(exc)
                    continue
                now = Fingerprint.of(source)
                if now.files == before.files:
                    continue
            if rows is None:
                rows = self._verification_rows()
            mine = rows.get(vid)
            if mine is None or len(mine) != source.n_slices or any(size < 0 for _, size, _ in now.files):
                changed[vid] = before.change(now) or "the number of slices differs"
                continue
            stale = before.restatted(source, now)
            if defer:
                modified[vid] = stale
                continue
            try:
                mismatch = first_mismatch(load(source, stale), mine.iloc[stale]) if stale else None
            except VolumeError as exc:
                mismatch = str(exc)
            if mismatch is None:
                moved.append(vid)
            else:
                changed[vid] = mismatch
        return SourceCheck(changed, moved, modified=modified)

    def _verification_rows(self) -> dict[str, pd.DataFrame]:
        """Each volume's manifest rows as slices are compared (``fingerprint.first_mismatch``), by slice index."""
        manifest = self.manifest(["volume_id", "slice_index", "z_mm", "source", DIGEST_COLUMN, "dhash", "intensity"])
        return {vid: group.sort_values("slice_index").reset_index(drop=True)
                for vid, group in manifest.groupby("volume_id", sort=False)}


def _rescan_series(source: VolumeSource) -> VolumeSource:
    """The series ``source`` as its folders hold it now; ValueError when it cannot be read."""
    from ..io.discover import scan

    found = scan(sorted({os.path.dirname(p) for p in source.paths}), modality="any", allow_gaps=True)
    for volume in found.volumes:
        if volume.series_uid == source.series_uid:
            return volume
    for error in found.errors:
        if source.series_uid in error.get("error", "") or error.get("source") == source.source:
            raise ValueError(f"the series can no longer be read ({error['error']})")
    raise ValueError(f"series {source.series_uid} is no longer in {source.source}")


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the columns of ``schema``, in its order and types (a column it lacks: empty)."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def read_sources(path: str | os.PathLike) -> list[VolumeSource]:
    """The volumes of a run folder, as scanned."""
    return RunFolder(path).sources()


# headers.parquet: one row per file; the tuple fields of a header as JSON text, parsed once per
# distinct value (orientation and spacing repeat across a series): ~5 us a file, where one JSON
# document per header took ~100 us (200,000 files: 22 s).
_HEADER_FIELDS = [f.name for f in dataclasses.fields(DicomHeader) if f.name != "path"]
_TUPLE_FIELDS = {"position", "orientation", "pixel_spacing", "frame_positions"}


_VOLUME_FIELDS = [f.name for f in dataclasses.fields(VolumeSource)]
_VOLUME_TYPES = {"paths": pa.list_(pa.string()), "spacing": pa.list_(pa.float64()), "z_mm": pa.list_(pa.float64()),
                 "warnings": pa.list_(pa.string()), "sop_uids": pa.list_(pa.string()), "frames": pa.list_(pa.int64()),
                 "n_slices": pa.int64(), "rows": pa.int64(), "cols": pa.int64(), "allow_gaps": pa.bool_()}
_VOLUMES_SCHEMA = pa.schema([(name, _VOLUME_TYPES.get(name, pa.string())) for name in _VOLUME_FIELDS]
                            + [("fingerprint", pa.string())])
_VOLUMES_BATCH = 64
_MANIFEST_BATCH = 16384  # rows of a manifest row group: reading one back costs ~4x its size

_HEADER_BATCH = 8192
_HEADER_SCHEMA = pa.schema(
    [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("reason", pa.string())]
    + [(name, pa.string() if name in _TUPLE_FIELDS else
        {"rows": pa.int64(), "cols": pa.int64(), "frames": pa.int64(), "multiframe": pa.bool_()}.get(name, pa.string()))
       for name in _HEADER_FIELDS])


def _header_batch(items: list[tuple[str, tuple[int, int, DicomHeader | str]]]) -> pa.RecordBatch:
    headers = [v[2] for _, v in items]
    columns: dict[str, list[Any]] = {
        "path": [p for p, _ in items], "size": [v[0] for _, v in items], "mtime_ns": [v[1] for _, v in items],
        "reason": [h if isinstance(h, str) else None for h in headers]}
    for name in _HEADER_FIELDS:
        values = [None if isinstance(h, str) else getattr(h, name) for h in headers]
        if name in _TUPLE_FIELDS:
            values = [None if v is None else json.dumps(v) for v in values]
        columns[name] = values
    return pa.RecordBatch.from_pydict(columns, schema=_HEADER_SCHEMA)


def _header_cache(table: pa.Table) -> HeaderCache:
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    parsed: dict[str, Any] = {}

    def tuples(text: str | None) -> Any:
        if text is None:
            return None
        if text not in parsed:
            parsed[text] = _as_tuples(json.loads(text))
        return parsed[text]

    for name in _TUPLE_FIELDS:
        columns[name] = [tuples(t) for t in columns[name]]
    cache: HeaderCache = {}
    for k, path in enumerate(columns["path"]):
        reason = columns["reason"][k]
        header = reason if reason is not None else DicomHeader(path, **{n: columns[n][k] for n in _HEADER_FIELDS})
        cache[path] = (int(columns["size"][k]), int(columns["mtime_ns"][k]), header)
    return cache


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value
