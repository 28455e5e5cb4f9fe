"""The reduce run, the last stage: a resumable run folder, reruns checked against the inputs, the summary.

Reading downwards: :func:`run_reduction` plans the run (``plan``: settings, walk, scan), lets the execution
backends (``backends``) reduce the volumes not yet done (``worker``, ``selection``), records each in the run
folder as it finishes, resolves a target fraction and ``--scope archive`` over the whole dataset, and returns a
:class:`ReduceResult`. The run folder's layout, journal and locks belong to ``ctreduce.store.run``; this module
decides what goes in it. ``reduce --export`` is the export side's (``exporting.onepass``), which sits above this
layer: it hands the run an :class:`ExportPass`, which the run calls back.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

from ..config import ReduceConfig, RunOptions
from ..core.extras import require
from ..core.versions import library_versions
from ..io.discover import walk
from ..io.volume import VolumeSource
from ..store.export import ExportParts
from ..store.files import DiskFull
from ..store.places import check_output_place
from ..store.run import RunFolder
from .archive import archive_scope
from .backends import run_volumes
from .plan import Plan, identity, input_paths, kept_known_per_volume, method_of, plan, sweep
from .read_once import slice_hasher
from .selection import empty_manifest, kept_column, resolve_target
from .verify import still_valid
from .worker import Outputs

# What a run's manifest depends on, recorded in its summary.json and run.json
LIBRARIES = ("ctreduce", "numpy", "Pillow", "ImageHash", "pydicom", "nibabel", "SimpleITK", "pandas", "pyarrow")


@dataclass(frozen=True)
class ReduceResult:
    """What ``ctreduce.reduce`` returns.

    ``summary``: what the run folder's ``summary.json`` holds (counts under ``totals``, kept fractions, timings,
    errors, skipped files, changed inputs, library versions; ``export`` with ``export=``, ``rerun`` when a
    complete run had nothing to do). ``manifest``: one row per slice, read from the run folder when first asked
    for (held in memory for a run without a folder, or when a rerun read it already).
    """

    summary: dict[str, Any]
    run_dir: Path | None = None
    held: pd.DataFrame | None = field(default=None, repr=False, compare=False)  # the manifest, when held

    @cached_property
    def manifest(self) -> pd.DataFrame:
        if self.held is not None:
            return self.held
        return RunFolder.open(self.run_dir).manifest()  # type: ignore[arg-type]  # held when there is no folder

    @property
    def complete(self) -> bool:
        """Every volume found was reduced or failed (an interrupted run raises instead of returning)."""
        return bool(self.summary["complete"])

    @property
    def totals(self) -> dict[str, Any]:
        """Volumes found, reduced, failed and pending; slices, kept slices and the kept fraction."""
        return self.summary["totals"]


class ExportPass(Protocol):
    """``reduce --export`` as the run sees it (``exporting.onepass.OnePassExport``): its folder checked before
    anything is read, the per-volume parts the workers write, and the export assembled from them once the
    run is complete, under the run's lock."""

    spec: dict[str, Any]  # the export a complete run must still hold to have nothing to do (``summary.export``)
    parts: ExportParts

    def check_place(self, inputs: list[Path], overwrite: bool) -> None: ...

    def assemble(self, run: RunFolder, kept: pd.DataFrame, sources: dict[str, VolumeSource]) -> dict[str, Any]: ...


def run_reduction(inputs: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None,
                  config: ReduceConfig, options: RunOptions, export: ExportPass | None = None) -> ReduceResult:
    """Reduce every volume under ``inputs`` with the resolved settings ``config`` (``plan.settings``); with
    ``out``, in a resumable, locked run folder (see ``ctreduce.reduce``). ``options.export*`` are the export
    side's: ``export`` is what it made of them. Raises ValueError before any volume is read for unusable
    settings, KeyboardInterrupt (partial results kept) and DiskFull."""
    paths = input_paths(inputs)
    if options.verify and out is None:
        raise ValueError("verify compares a run folder's results with the inputs: give --out")
    if options.backend == "local":
        # A setting that cannot work for any volume fails here, once. Not for Ray: its workers may have
        # the GPUs (and the weights cache) that the driver lacks.
        method_of(config).preflight()
    else:
        require("ray", "the Ray backend")
    t0 = time.perf_counter()
    run = RunFolder(out) if out is not None else None
    if run is not None:
        check_output_place(run.path, paths)
        if export is not None:
            export.check_place(paths, options.overwrite)
    listing = walk(paths)
    if run is not None and not options.overwrite and not options.verify:
        unchanged = _unchanged(run, config, paths, listing.digest, export, options.csv, t0)
        if unchanged is not None:
            return unchanged
    # A rerun reads only the headers of files that changed since the last scan.
    cache = run.header_cache() if run is not None and not options.overwrite else None
    # Each DICOM file opened once (header and pixels) for a per-slice method; not for Ray, whose scan runs
    # in the driver, nor when --verify reads every finished volume again anyway.
    slices = slice_hasher(config) if options.backend == "local" and not options.verify else None
    reading: list[Any] = []  # a bar of the files read, from the first one (the scan then does most of the work)

    def read(n: int) -> None:
        if not reading:
            reading.append(_progress(None, 0, True, "read", "file"))
        reading[0].update(n)

    try:
        planned = plan(paths, listing, config, header_cache=cache,
                       workers=options.workers if options.backend == "local" else 1, start=t0, slices=slices,
                       progress=read if options.progress and slices is not None else None)
    finally:
        for bar in reading:
            bar.close()
    del cache, listing
    with run.lock() if run is not None else nullcontext():
        manifest, summary = _reduce(planned, run, options, export.parts if export is not None else None, t0)
        if run is None:
            return ReduceResult(summary, None, manifest)
        if export is not None and summary["complete"]:
            summary["export"] = export.assemble(run, run.kept_rows(), {s.volume_id: s for s in planned.found.volumes})
            run.update_summary(summary)
        return ReduceResult(summary, run.path)


def _unchanged(run: RunFolder, config: ReduceConfig, paths: list[Path], digest: str, export: ExportPass | None,
               csv: bool, t0: float) -> ReduceResult | None:
    """The result of a complete run whose inputs did not change (nothing is read but the run folder's
    summary, the manifest's footer and the export asked for; the manifest when first asked for), or None
    when there is work to do (an unreadable manifest is then rebuilt from the parts and the journal)."""
    if not run.path.is_dir():
        return None
    with run.lock():
        summary = run.unchanged_since_complete(identity(config), [str(p.resolve()) for p in paths], digest,
                                               export.spec if export is not None else None)
        if summary is None:
            return None
        if not run.has_manifest:
            return None
        if csv and not run.has_csv:
            run.write_csv(run.manifest())
    summary.pop("schema", None)
    summary["rerun"] = {"unchanged": True, "seconds": round(time.perf_counter() - t0, 3)}
    return ReduceResult(summary, run.path)


def _reduce(planned: Plan, run: RunFolder | None, options: RunOptions, export: ExportParts | None, t0: float
            ) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """Reduce the volumes not done yet, record each as it finishes, and write the results (the lock is held);
    returns the manifest (None where it was streamed to the run folder) and the summary. Raises
    KeyboardInterrupt or DiskFull after writing what is done."""
    found, config = planned.found, planned.config
    done: dict[str, dict[str, Any]] = {}
    fingerprints: dict[str, str] = {}  # JSON text: a third of the memory of its tuples, a volume's one string
    changed: dict[str, str] = {}
    moved: list[str] = []
    recheck: dict[str, str] = {}  # finished volumes to read and compare again -> how their files' stat changed
    if run is not None:
        run.start(identity(config), [str(p.resolve()) for p in planned.inputs], options.overwrite)
        if planned.rewrite_cache or options.overwrite:
            run.write_header_cache(found.headers)
        if export is not None:
            export.prepare()  # after start: --overwrite has cleared the old parts
        done = still_valid(found.volumes, found.stats, run.finished(), fingerprints, changed, recheck,
                           options.verify)
    found.headers, found.stats = {}, {}  # written; one entry per file is the largest thing held
    todo = [s for s in found.volumes if s.volume_id not in done]

    # The manifest is streamed from the parts on disk, one volume at a time, unless the run must see it whole:
    # without a folder, for a measure's target fraction (one threshold for every volume) or --scope archive.
    whole = run is None or _needs_whole_manifest(config)
    frames: dict[str, pa.Table] = {}
    entries: dict[str, dict[str, Any]] = dict(done)
    interrupted = False
    full: DiskFull | None = None
    t1 = time.perf_counter()
    bar = _progress(len(found.volumes), len(done), options.progress)
    try:
        outputs = Outputs(run.parts, export) if run is not None else None
        for result in run_volumes(todo, planned.volume_config, workers=options.workers, backend=options.backend,
                                  ray_address=options.ray_address, outputs=outputs, verify=set(recheck),
                                  read=found.read):
            if result.verified == "" and recheck[result.volume_id]:
                moved.append(result.volume_id)
            elif result.verified:
                changed[result.volume_id] = "; ".join(filter(None, (recheck[result.volume_id], result.verified)))
            entry = run.record(result.entry()) if run is not None else result.entry()
            entry.pop("fingerprint", None)  # kept in ``fingerprints``; one list entry per file otherwise
            entries[result.volume_id] = entry
            if result.fingerprint is not None:
                fingerprints[result.volume_id] = json.dumps(result.fingerprint.to_json())
            if result.frame is not None and whole:  # Arrow: a few bytes a row, where pandas objects take ~10x
                frames[result.volume_id] = pa.Table.from_pandas(result.frame, preserve_index=False)
            if bar is not None:
                bar.update(1)
                if result.error:
                    bar.write(f"error: {result.error}")
    except KeyboardInterrupt:
        interrupted = True
    except DiskFull as exc:
        interrupted, full = True, exc
    finally:
        if bar is not None:
            bar.close()
    reduce_seconds = time.perf_counter() - t1

    if whole:
        manifest, arrow, extra = _whole_manifest(planned, frames, run, entries, interrupted)
        del frames  # their buffers are the table's
        counts = _Counts.of(manifest, sweep(config))
    else:
        manifest, arrow, extra, counts = None, None, {}, _Counts(sweep(config))
    written = True  # a summary is written only beside the manifest it counts
    if run is not None and manifest is None:
        try:
            run.write_manifest((s.volume_id for s in found.volumes), counts.add, csv=options.csv,
                               empty=pa.Table.from_pandas(empty_manifest(), preserve_index=False))
        except DiskFull as exc:
            full, written = full or exc, False
    summary = _summary(planned, entries, counts, scan_s=planned.scan_seconds, reduce_s=reduce_seconds,
                       total_s=time.perf_counter() - t0, complete=not interrupted, workers=options.workers)
    _describe_changes(summary, changed, moved, recheck if options.verify else None)
    _describe_selection(summary, planned, counts, extra)
    if run is not None and written:
        try:
            if manifest is None:
                run.write_volumes(found.volumes, fingerprints)
                run.update_summary(summary)
            else:
                run.write_results(manifest, found.volumes, fingerprints, summary, options.csv, arrow=arrow)
        except DiskFull as exc:
            full = full or exc
    if full is not None:
        raise full
    if interrupted:
        raise KeyboardInterrupt(f"interrupted; partial results in {run.path}" if run else "interrupted")
    return manifest, summary


def _progress(total: int | None, initial: int, enabled: bool, desc: str = "reduce", unit: str = "vol"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr)


def _needs_whole_manifest(config: ReduceConfig) -> bool:
    """Whether the run's end needs every row at once: to choose one threshold for every volume (a measure's
    target fraction) or to run the greedy rule across volumes (``--scope archive``)."""
    return config.scope == "archive" or (config.target_fraction is not None and not kept_known_per_volume(config))


def _whole_manifest(planned: Plan, frames: dict[str, pa.Table], run: RunFolder | None,
                    entries: dict[str, dict[str, Any]], interrupted: bool
                    ) -> tuple[pd.DataFrame, pa.Table | None, dict[str, Any]]:
    """The manifest held whole, a target fraction met and ``--scope archive`` applied; the same as Arrow
    when no row changed (written without converting it again), and the target's and the scope's reports."""
    config = planned.config
    table = _manifest(planned, frames, run)
    manifest, target = resolve_target(table.to_pandas(), config)
    scope = None
    if config.scope == "archive" and not interrupted and all(s.volume_id in entries for s in planned.found.volumes):
        manifest, scope = archive_scope(manifest, int(config.threshold))  # type: ignore[arg-type]
    extra = {name: value for name, value in (("target", target), ("scope", scope)) if value is not None}
    return manifest, None if extra else table, extra


@dataclass
class _Counts:
    """What the summary needs of the manifest, added up a volume at a time: slices, kept slices (per volume)
    and, per threshold of a sweep, the slices kept at it."""

    thresholds: tuple[float, ...]
    slices: int = 0
    kept: int = 0
    kept_by_volume: dict[str, int] = field(default_factory=dict)
    kept_at: dict[float, int] = field(default_factory=dict)

    @classmethod
    def of(cls, manifest: pd.DataFrame, thresholds: tuple[float, ...]) -> _Counts:
        counts = cls(thresholds)
        counts.add(manifest)
        return counts

    def add(self, rows: pd.DataFrame | pa.Table) -> None:
        if isinstance(rows, pa.Table):
            wanted = ["volume_id", "kept", *(kept_column(t) for t in self.thresholds)]
            rows = rows.select([c for c in wanted if c in rows.column_names]).to_pandas()
        if rows.empty:
            return
        self.slices += len(rows)
        self.kept += int(rows["kept"].sum())
        for volume_id, kept in rows.groupby("volume_id", sort=False)["kept"].sum().items():
            self.kept_by_volume[str(volume_id)] = self.kept_by_volume.get(str(volume_id), 0) + int(kept)
        for t in self.thresholds:
            if kept_column(t) in rows.columns:
                self.kept_at[t] = self.kept_at.get(t, 0) + int(rows[kept_column(t)].sum())

    def fractions(self) -> dict[float, float]:
        """The kept fraction at each threshold of the sweep (none without slices)."""
        return {t: kept / self.slices for t, kept in self.kept_at.items()} if self.slices else {}


def _describe_changes(summary: dict[str, Any], changed: dict[str, str], moved: list[str],
                      verified: dict[str, str] | None) -> None:
    """The summary's account of inputs that changed or moved since a volume was reduced (and of ``--verify``)."""
    if changed or moved:
        summary["inputs_changed"] = changed
        summary["inputs_moved"] = moved
    if verified is not None:
        summary["inputs_verified"] = {"volumes": len(verified), "changed": sorted(v for v in verified if v in changed)}


def _describe_selection(summary: dict[str, Any], planned: Plan, counts: _Counts, extra: dict[str, Any]) -> None:
    """The summary's inputs digest (complete runs), the sweep's kept fractions, the target met, the scope."""
    config = planned.config
    if summary["complete"]:
        summary["inputs_digest"] = planned.found.digest  # a rerun with the same file listing has nothing to do
    if "scope" in extra:
        summary["scope"] = extra["scope"]
    fractions = counts.fractions()  # of the sweep's thresholds (``_Counts.thresholds``)
    if fractions:
        summary["sweep"] = {f"{t:g}": f for t, f in fractions.items()}
    target = extra.get("target")
    if planned.fitted:
        target = {"target_fraction": config.target_fraction, **planned.fitted,
                  "kept_fraction": counts.kept / counts.slices if counts.slices else 0.0}
    if target is not None:
        summary["target"] = target


def _manifest(planned: Plan, frames: dict[str, pa.Table], run: RunFolder | None) -> pa.Table:
    """Every volume's rows in input order: those reduced now, and the parts of those done before."""
    ordered = []
    for source in planned.found.volumes:
        table = frames.get(source.volume_id)
        if table is None and run is not None:
            table = run.read_part_table(source.volume_id)
        if table is not None:
            ordered.append(table)
    if not ordered:
        return pa.Table.from_pandas(empty_manifest(), preserve_index=False)
    return pa.concat_tables(ordered, promote_options="default")


def _summary(planned: Plan, entries: dict[str, dict[str, Any]], counts: _Counts, *, scan_s: float,
             reduce_s: float, total_s: float, complete: bool, workers: int) -> dict[str, Any]:
    found = planned.found
    volumes, errors = [], list(found.errors)
    for source in found.volumes:
        entry = entries.get(source.volume_id)
        if entry is None:
            continue
        if entry.get("error"):
            errors.append({"volume_id": source.volume_id, "source": entry["source"], "error": entry["error"]})
            continue
        slices, kept = int(entry["slices"]), int(counts.kept_by_volume.get(source.volume_id, entry["kept"]))
        volumes.append({"volume_id": source.volume_id, "source": source.source, "format": source.format,
                        "slices": slices, "kept": kept, "kept_fraction": kept / slices if slices else 0.0,
                        "seconds": entry.get("seconds"), "warnings": entry.get("warnings", [])})
    slices, kept = counts.slices, counts.kept
    pending = len(found.volumes) - len(volumes) - (len(errors) - len(found.errors))
    return {
        "complete": complete and pending == 0,
        "config": planned.volume_config.model_dump(),
        "inputs": [str(p) for p in planned.inputs],
        "totals": {
            "volumes_found": len(found.volumes) + len(found.errors),
            "volumes_reduced": len(volumes),
            "volumes_failed": len(errors),
            "volumes_pending": pending,
            "slices": slices,
            "kept": kept,
            "kept_fraction": kept / slices if slices else 0.0,
        },
        "timings": {"scan_s": round(scan_s, 3), "reduce_s": round(reduce_s, 3),
                    "total_s": round(total_s, 3), "workers": workers,
                    "slices_per_s": round(slices / reduce_s, 1) if reduce_s > 0 and slices else None},
        "volumes": volumes,
        "errors": errors,
        "skipped": found.skipped,
        "versions": library_versions(LIBRARIES),
    }
