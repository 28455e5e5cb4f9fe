"""Export a finished run's kept slices for training: a PNG folder or one memory-mappable uint8 array.

The format (file names, index, completion marker) belongs to ``ctreduce.store.export``; this
module decides what goes in: the slices flagged in the manifest, read again from sources that
are checked against the fingerprints recorded when they were reduced, each slice compared with
its manifest row (pixel digest and position) before it is written.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.extras import require
from ..core.versions import library_versions
from ..core.workers import RAY_RETRIES, RAY_SPREAD, ray_failure, ray_nodes_see, ray_session
from ..io.discover import load, preload_readers
from ..io.intensity import Intensity
from ..io.volume import VolumeError, VolumeSource
from ..reduction.verify import REDO_HINT, legacy_dhashes
from ..store.export import ExportError, ExportWriter
from ..store.export_formats import ExportFormat, export_format
from ..store.files import OutputError, disk_full, is_disk_full
from ..store.fingerprint import DIGEST_COLUMN, first_mismatch
from ..store.places import check_output_place
from ..store.run import RunFolder, RunFolderError

# What an export's images depend on, recorded in its export.json
LIBRARIES = ("ctreduce", "numpy", "Pillow", "pandas", "pyarrow")


def _reading_the_run(function: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``export`` holds the run folder's lock shared for its whole duration: other exports of the run go
    on, ``reduce --out RUN`` (with or without --overwrite) is refused until it ends, and a run that
    is being written is not exported."""

    @functools.wraps(function)
    def reading(run_dir: str | os.PathLike, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not Path(run_dir).is_dir():
            return function(run_dir, *args, **kwargs)  # its error names the missing run
        with RunFolder(run_dir).lock(shared=True):
            return function(run_dir, *args, **kwargs)

    return reading


@_reading_the_run
def export(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "png",
    size: int = 224,
    intensity: str | None = None,
    column: str = "kept",
    overwrite: bool = False,
    allow_changed: bool = False,
    allow_incomplete: bool = False,
    workers: int = 1,
    progress: bool = False,
    backend: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Write the slices flagged in manifest column ``column`` of ``run_dir`` to ``out`` in ``format`` (a registered
    export format: png, npy or a plug-in's; ``size``: the side of a sized format's square slices, npy's).

    Refused (ExportError, nothing written) when the run is incomplete (unless
    ``allow_incomplete``), when a source changed since it was reduced (unless ``allow_changed``),
    or when ``out`` holds an export (unless ``overwrite``, which replaces it whole). The intensity
    policy defaults to the run's own (minmax for all/every-n runs). Returns the export summary;
    volumes that can no longer be read, or no longer match their manifest rows, are listed under
    ``errors``. ``workers`` volumes are read and written in parallel (the same output as one);
    ``backend="ray"`` runs them as Ray tasks (``ray_address`` or RAY_ADDRESS, else a local Ray
    with ``workers`` CPUs; each task writes its volume's files, PNGs or an npy shard, so the export's parent folder
    must be shared with every node).
    Every slice written is first compared with its manifest row (``store.fingerprint.first_mismatch``),
    as are the other slices of files whose stat changed: a volume that differs is not written.
    """
    export_format(format, size)  # an unknown format, or a size it cannot use: refused before anything is read
    if workers < 1:
        raise ExportError(f"--workers must be >= 1, got {workers}")
    if backend not in ("local", "ray"):
        raise ExportError(f"unknown backend {backend!r}; choose 'local' or 'ray'")
    if backend == "ray":
        require("ray", "the Ray backend")
    run_dir, out = Path(run_dir), Path(out)
    try:
        run = RunFolder.open(run_dir)
    except RunFolderError as exc:
        raise ExportError(str(exc)) from exc
    manifest = run.manifest()
    if column not in manifest.columns:
        raise ExportError(f"manifest has no column {column!r}; columns: {', '.join(manifest.columns)}")
    summary = run.summary()
    if not summary.get("complete", False) and not allow_incomplete:
        totals = summary.get("totals", {})
        raise ExportError(f"{run_dir} is an incomplete run ({totals.get('volumes_reduced', '?')} volume(s) reduced, "
                          f"{totals.get('volumes_pending', '?')} pending); finish it by running the same "
                          "'ctreduce reduce' command again, or pass --allow-incomplete (recorded in export.json)")
    chosen = manifest[manifest[column].astype(bool)]
    groups = list(chosen.groupby("volume_id", sort=False))
    check = run.check_sources([vid for vid, _ in groups], defer=True)  # files whose stat changed: compared below
    if (check.changed or check.unchecked) and not allow_changed:
        raise ExportError(check.message(run_dir))
    sources = {s.volume_id: s for s in run.sources()}
    check_output_place(out, [*run.inputs(), *(s.source for s in sources.values())])
    recorded = run.settings().get("intensity", "minmax")
    policy = Intensity.parse(intensity or recorded)

    start = time.perf_counter()
    errors: list[dict[str, str]] = []
    spec = {"run_dir": str(run_dir.resolve()), "intensity": str(policy), "column": column}
    with ExportWriter(out, format, size=size, overwrite=overwrite, spec=spec) as writer:
        writer.allocate(len(chosen))
        every = manifest.groupby("volume_id", sort=False) if check.modified else None
        # An export that grows keeps the rows of the volumes it holds unchanged; only the others are read.
        held = {vid: writer.held(_records(vid, group)) for vid, group in groups}
        reused = sum(len(records) for records in held.values() if records is not None)
        jobs = [(sources.get(vid), vid, _to_read(group, every.get_group(vid) if vid in check.modified else None,
                                                 check.modified.get(vid, [])), recorded)
                for vid, group in groups if held[vid] is None]
        bar = _progress(len(chosen) - reused, progress)
        nodes: dict[str, int] = {}
        ordered = (_in_order_ray(jobs, policy, writer.format, writer.stage, workers, ray_address, nodes)
                   if backend == "ray" else _in_order(jobs, policy, writer.format, writer.stage, workers))
        order, k = [vid for vid, _ in groups], 0  # the rows go in manifest order, held volumes between those read
        for (_, volume_id, rows, _), result in zip(jobs, ordered, strict=True):
            while order[k] != volume_id:
                writer.add_volume(None, held[order[k]])
                k += 1
            k += 1
            if isinstance(result, str):
                errors.append({"volume_id": volume_id, "error": result})
            else:
                writer.add_volume(*result)
            if bar is not None:
                bar.update(int(rows["write"].sum()))
        for vid in order[k:]:
            writer.add_volume(None, held[vid])
        if bar is not None:
            bar.close()
        meta = writer.commit({
            "volumes": len(groups) - len(errors), "errors": errors,
            "allow_incomplete": allow_incomplete and not summary.get("complete", False),
            "allow_changed": sorted(check.changed) if allow_changed else [],
            "unchecked_sources": check.unchecked, "workers": workers, "backend": backend,
            **({"ray_nodes": nodes} if backend == "ray" else {}),
            "seconds": round(time.perf_counter() - start, 3), "reused": reused,
            "versions": library_versions(LIBRARIES),
        })
    return meta


def _records(volume_id: str, chosen: pd.DataFrame) -> list[dict[str, Any]]:
    """The index records of one volume's chosen manifest rows, as an export that reads them writes them."""
    digests = chosen[DIGEST_COLUMN] if DIGEST_COLUMN in chosen.columns else [None] * len(chosen)
    return [{"volume_id": volume_id, "slice_index": int(i), "z_mm": float(z), "source": str(src),
             DIGEST_COLUMN: d} for i, z, src, d in zip(chosen["slice_index"], chosen["z_mm"], chosen["source"],
                                                       digests, strict=True)]


def _to_read(chosen: pd.DataFrame, every: pd.DataFrame | None, modified: list[int]) -> pd.DataFrame:
    """The manifest rows of the slices an export reads of one volume: those it writes (``write``), and
    those of files whose stat changed (``modified`` slice indices), compared but not written."""
    columns = [c for c in ("slice_index", "z_mm", DIGEST_COLUMN, "dhash") if c in chosen.columns]
    rows = chosen[columns].assign(write=True)
    if every is not None:
        extra = every[every["slice_index"].isin(modified) & ~every["slice_index"].isin(chosen["slice_index"])]
        rows = pd.concat([rows, extra[columns].assign(write=False)]).sort_values("slice_index")
    return rows.reset_index(drop=True)


def export_volume(source: VolumeSource | None, volume_id: str, rows: pd.DataFrame, recorded: str,
                  policy: Intensity, fmt: ExportFormat, stage: Path) -> tuple[Any, list[dict[str, Any]]] | str:
    """One volume's exported rows: what the format's ``encode`` returns (having written its files into the
    staging folder ``stage``) and the records; the error in words instead when the volume cannot be read or
    a slice read (``rows``, see ``_to_read``) no longer holds what its manifest row records (compared under
    the run's ``recorded`` intensity policy where the run has no pixel digests), before any resize or other
    intensity policy."""
    try:
        if source is None:
            raise VolumeError(f"{volume_id}: not listed in the run's volumes")
        volume = load(source, rows["slice_index"].to_numpy(np.int64))  # a DICOM series reads only these files
        mismatch = first_mismatch(volume, rows, dhashes=lambda: legacy_dhashes(volume.hu, recorded))
        if mismatch is not None:
            return f"{mismatch}; not exported. {REDO_HINT}"
        write = np.flatnonzero(rows["write"].to_numpy(bool))
        u8 = policy.to_uint8(volume.hu[write])
        digests = rows[DIGEST_COLUMN] if DIGEST_COLUMN in rows.columns else [None] * len(rows)
        records = [{"volume_id": volume_id, "slice_index": int(rows["slice_index"].iloc[k]),
                    "z_mm": float(volume.z_mm[k]), "source": volume.slice_sources[k], DIGEST_COLUMN: digests[k]}
                   for k in write]
        return fmt.encode(stage, u8, records), records
    except OutputError:  # the export's own files: it stops
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(stage, exc) from exc
        return str(exc)
    except (VolumeError, ValueError, MemoryError) as exc:
        return str(exc)


def _in_order(jobs: list, policy: Intensity, fmt: ExportFormat, stage: Path, workers: int):
    """Each job's result in manifest order; with workers, volumes are read in parallel, at most
    2 per worker ahead of the one written next (memory stays bounded)."""
    if workers <= 1:
        for job in jobs:
            yield export_volume(*job, policy, fmt, stage)
        return
    from ..core.workers import pool, terminate

    preload_readers(job[0].format for job in jobs if job[0] is not None)
    executor = pool(workers)
    finished = False
    try:
        futures = {}
        ahead = 2 * workers
        for k, job in enumerate(jobs[:ahead]):
            futures[k] = executor.submit(export_volume, *job, policy, fmt, stage)
        for k in range(len(jobs)):
            result = futures.pop(k).result()
            nxt = k + ahead
            if nxt < len(jobs):
                futures[nxt] = executor.submit(export_volume, *jobs[nxt], policy, fmt, stage)
            yield result
        finished = True
    finally:
        if not finished:
            terminate(executor)
        executor.shutdown(wait=finished, cancel_futures=True)


def _in_order_ray(jobs: list, policy: Intensity, fmt: ExportFormat, stage: Path, workers: int,
                  address: str | None, nodes: dict[str, int]):
    """``_in_order`` with Ray tasks: the same bounded window of volumes in flight, results in order; ``nodes``
    counts the volumes each Ray node exported. A volume whose worker died (its retries spent) is its error."""
    with ray_session(workers, address) as ray:
        first = next((job[0] for job in jobs if job[0] is not None), None)
        # a format that leaves ``store`` as it is writes its files in the workers (PNG): into the staging folder
        writes_there = type(fmt).store is ExportFormat.store
        ray_nodes_see(ray, {Path(first.source): "the inputs"} if first is not None else {},
                      {stage: f"the export's parent folder ({fmt.name} files are written by every node)"}
                      if writes_there else {})
        task = ray.remote(num_cpus=1, max_retries=RAY_RETRIES, scheduling_strategy=RAY_SPREAD)(_export_on_node)
        ahead = 2 * max(workers, int(ray.cluster_resources().get("CPU", workers)))
        refs = {k: task.remote(*job, policy, fmt, stage) for k, job in enumerate(jobs[:ahead])}
        for k in range(len(jobs)):
            try:
                node, result = ray.get(refs.pop(k))
                nodes[node] = nodes.get(node, 0) + 1
            except ray.exceptions.RayTaskError:  # raised by the task itself (the export's own files): it stops
                raise
            except ray.exceptions.RayError as exc:
                source = jobs[k][0]
                result = f"{source.source if source is not None else jobs[k][1]}: {ray_failure(exc)}"
            if k + ahead < len(jobs):
                refs[k + ahead] = task.remote(*jobs[k + ahead], policy, fmt, stage)
            yield result


def _export_on_node(*args: Any) -> tuple[str, tuple[Any, list[dict[str, Any]]] | str]:
    """A Ray task: ``export_volume(*args)`` and the node that ran it."""
    import ray

    return ray.get_runtime_context().get_node_id(), export_volume(*args)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="slice", desc="export", file=sys.stderr)
