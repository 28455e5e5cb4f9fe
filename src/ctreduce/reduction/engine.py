"""Reduce volumes and whole archives: one engine for every method, resumable run folders.

The run folder's layout, journal and locks belong to ``ctreduce.store.run``; this module
decides what goes in it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..config import SELECTORS, ReduceConfig
from ..core.dhash import is_dhash
from ..core.versions import library_versions
from ..core.workers import pool as process_pool
from ..core.workers import ray_session, terminate
from ..io.discover import ScanResult, load, scan, walk
from ..io.intensity import Intensity
from ..io.volume import Volume, VolumeSource
from ..store.export import ExportParts
from ..store.export_formats import export_format
from ..store.files import DiskFull, disk_full, is_disk_full
from ..store.fingerprint import DIGEST_COLUMN, Fingerprint, slice_digests
from ..store.places import check_output_place
from ..store.run import RunConflict, RunFolder, read_part, write_part
from . import hashing
from .archive import archive_scope
from .leader import Selection, every_n, greedy_leader, keep_all, memoize
from .onepass import assemble_export, check_export, check_export_out
from .settings import identity, measure_of, resolve, score_column, sweep
from .verify import recorded_frame, still_valid

__all__ = ["RunConflict", "NoVolumes", "reduce", "reduce_volume", "select"]

# What a run's manifest depends on, recorded in its summary.json and run.json
LIBRARIES = ("ctreduce", "numpy", "Pillow", "ImageHash", "pydicom", "nibabel", "SimpleITK", "pandas", "pyarrow")


class NoVolumes(ValueError):
    """The inputs hold no volume at all (nothing is written)."""


class Summary(dict):
    """``manifest.attrs["summary"]``: shared, not copied, by the frames pandas derives from the manifest.

    pandas deep-copies ``attrs`` into every derived frame; the summary lists every volume, so a loop
    over 2,000 volumes' groups spent minutes copying it (measured in the one-pass export assembly).
    """

    def __deepcopy__(self, memo: dict) -> Summary:
        return self


def make_config(config: ReduceConfig | None = None, **overrides: Any) -> ReduceConfig:
    """The resolved settings (``settings.resolve``): ValueError for unusable ones."""
    if config is None or overrides:
        base = config.model_dump() if config is not None else {}
        config = ReduceConfig(**{**base, **overrides})
    return resolve(config)


# --- one volume ----------------------------------------------------------------------------------


def kept_column(threshold: float) -> str:
    return f"kept@{threshold:g}"


def select(volume: Volume, config: ReduceConfig, u8: np.ndarray | None = None
           ) -> tuple[dict[float, Selection], dict[str, list[Any]]]:
    """Run the configured method on one volume for every threshold of its sweep.

    Returns one Selection per threshold (a single entry keyed NaN for all/every-n) and the
    measure's extra per-slice columns. Scores are memoised, so a sweep costs little more than
    its most demanding threshold.
    """
    n = volume.n_slices
    if u8 is None:  # given when the slices were scaled where they were read (chunked reads)
        u8 = Intensity.parse(config.intensity).to_uint8(volume.hu)
    if config.method in SELECTORS:
        selection = keep_all(n) if config.method == "all" else every_n(n, config.every_n)
        return {float("nan"): selection}, {"dhash": hashing.dhash(u8)}
    measure = measure_of(config)
    prepared = measure.prepare(u8)
    thresholds = sweep(config)
    compare = memoize(prepared.compare, n) if len(thresholds) > 1 else prepared.compare
    selections = {t: greedy_leader(n, compare, t, higher_is_similar=measure.higher_is_similar)
                  for t in thresholds}
    columns = dict(prepared.columns)
    # Every manifest carries each slice's 64-bit dHash: archive-wide duplicate and leakage searches
    # (``ctreduce.curate``) then need no second read of the archive.
    params = measure.params()
    columns["dhash"] = (columns["hash"] if is_dhash(params.get("hash"), params.get("hash_size"))
                        else hashing.dhash(u8))
    return selections, columns


def _volume_frame(volume: Volume, config: ReduceConfig, u8: np.ndarray | None = None,
                  digests: list[str] | None = None) -> pd.DataFrame:
    """Manifest rows of one volume; with a target fraction, also every threshold's leaders and
    distances (private ``_leader@``/``_distance@`` columns resolved across the dataset).
    ``digests``: the slices' pixel digests when computed where they were read (chunked reads)."""
    selections, columns = select(volume, config, u8)
    primary = selections[config.threshold] if config.threshold is not None else next(iter(selections.values()))
    n = volume.n_slices
    index = volume.slice_index  # the slice's index in the scanned volume: a slice left out unread leaves a gap
    params = json.dumps({k: v for k, v in identity(config).items()
                         if k not in ("method", "threshold", "thresholds", "target_fraction", "intensity",
                                      "modality", "allow_gaps")}, sort_keys=True)
    frame = pd.DataFrame({
        "volume_id": [volume.volume_id] * n,
        "source": list(volume.slice_sources),
        "slice_index": index.astype(np.int32),
        "z_mm": np.asarray(volume.z_mm, dtype=np.float64),
        "kept": primary.kept,
        "leader": index[primary.leader].astype(np.int32),
        score_column(config): primary.score,
        "method": config.method,
        "threshold": np.nan if config.threshold is None else float(config.threshold),
        "params": params,
        "intensity": config.intensity,  # of the 8-bit images hashed (dhash) and compared
    })
    frame["hash"] = columns.get("hash", [None] * n)
    frame["dhash"] = columns["dhash"] if n else []
    # What the decision was made on: every reader that reads the sources again compares it.
    frame[DIGEST_COLUMN] = digests if digests is not None else slice_digests(volume.hu)
    if len(selections) > 1:
        extra: dict[str, np.ndarray] = {kept_column(t): sel.kept for t, sel in selections.items()}
        if config.target_fraction is not None:
            for t, sel in selections.items():
                extra[f"_leader@{t:g}"] = index[sel.leader].astype(np.int32)
                extra[f"_score@{t:g}"] = sel.score
        frame = pd.concat([frame, pd.DataFrame(extra)], axis=1)
    return frame


def resolve_target(manifest: pd.DataFrame, config: ReduceConfig) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Pick the sweep threshold whose kept fraction over ``manifest`` is closest to the target
    and make it the manifest's primary selection; returns the manifest and a report."""
    if config.target_fraction is None or config.method in ("all", "every-n") or manifest.empty:
        return manifest, None
    fractions = {t: float(manifest[kept_column(t)].mean()) for t in sweep(config)}
    best = float(min(fractions, key=lambda t: (abs(fractions[t] - config.target_fraction), t)))
    manifest = manifest.copy()
    manifest["kept"] = manifest[kept_column(best)]
    manifest["leader"] = manifest[f"_leader@{best:g}"]
    manifest[score_column(config)] = manifest[f"_score@{best:g}"]
    manifest["threshold"] = best
    manifest = manifest.drop(columns=[c for c in manifest.columns if c.startswith("_")])
    return manifest, {"target_fraction": config.target_fraction, "threshold": best,
                      "kept_fraction": fractions[best]}


def every_n_for_target(slice_counts: Sequence[int], target: float) -> int:
    """The N whose every-n kept fraction over these volumes is closest to ``target``."""
    counts = np.asarray(slice_counts, dtype=np.int64)
    if counts.size == 0 or counts.sum() == 0:
        return 1
    candidates = np.arange(1, int(counts.max()) + 1)
    kept = np.array([np.ceil(counts / k).sum() for k in candidates])
    fractions = kept / counts.sum()
    return int(candidates[np.argmin(np.abs(fractions - target))])


def reduce_volume(volume: Volume, config: ReduceConfig | None = None, **settings: Any) -> pd.DataFrame:
    """Reduce one volume; one manifest row per slice (see ``ctreduce.reduce`` for the columns).

    A target fraction is met on this volume alone; ``reduce`` meets it over the whole dataset.
    """
    config = make_config(config, **settings)
    if config.method == "every-n" and config.target_fraction is not None:
        config = make_config(config, every_n=every_n_for_target([volume.n_slices], config.target_fraction))
    frame, _ = resolve_target(_volume_frame(volume, config), config)
    return frame


@dataclass
class VolumeResult:
    volume_id: str
    source: str
    frame: pd.DataFrame | None = None
    error: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    fingerprint: Fingerprint | None = None
    # ``verify_source``: "" when the slices read hold what the volume's part records (its results
    # stand), else how they differ (the volume was reduced again); None for other volumes
    verified: str | None = None

    def entry(self) -> dict[str, Any]:
        """The journal line of this volume (also what the summary is built from)."""
        entry: dict[str, Any] = {"volume_id": self.volume_id, "source": self.source,
                                 "seconds": round(self.seconds, 4), "warnings": self.warnings,
                                 "error": self.error}
        if self.frame is not None:
            entry["slices"] = len(self.frame)
            entry["kept"] = int(self.frame["kept"].sum())
        if self.fingerprint is not None:
            entry["fingerprint"] = self.fingerprint.to_json()
        return entry


@dataclass(frozen=True)
class Outputs:
    """What a worker writes beside its result: the volume's manifest part, and with ``reduce
    --export`` its export part (the kept slices, while the volume is in memory)."""

    parts: Path
    export: ExportParts | None = None


def process_source(source: VolumeSource, config: ReduceConfig, outputs: Outputs | None = None) -> VolumeResult:
    """Read and reduce one scanned volume; never raises for bad data (the error is returned).

    With ``outputs``, the worker also writes the volume's manifest part (atomically), so that
    Parquet encoding runs in parallel, and its export part; the parent only appends the journal
    line. A full disk is the one error that is raised: every later volume would fail the same way.
    """
    start = time.perf_counter()
    with _errors_returned(source, outputs, start) as result:
        before = Fingerprint.of(source)  # stat before reading: a file changed meanwhile shows up later
        result.append(_finish(source, load(source), None, config, outputs, before, start))
    return result[0]


def verify_source(source: VolumeSource, config: ReduceConfig, outputs: Outputs) -> VolumeResult:
    """Read a finished volume again and compare it with its manifest part (files whose stat changed,
    or ``reduce --verify``): the same pixels at the same positions -> its results stand, pointed at
    the files read now; else it is reduced again from this read. ``verified`` says which."""
    start = time.perf_counter()
    with _errors_returned(source, outputs, start) as result:
        before = Fingerprint.of(source)
        result.append(_finish(source, load(source), None, config, outputs, before, start, verify=True))
    return result[0]


def _finish(source: VolumeSource, volume: Volume, u8: np.ndarray | None, config: ReduceConfig,
            outputs: Outputs | None, before: Fingerprint, start: float, digests: list[str] | None = None,
            verify: bool = False) -> VolumeResult:
    """Select (or, verifying, keep the recorded selection of the same pixels), and write the manifest
    and export parts of a volume that was read."""
    if u8 is None:  # scaled once: hashed, compared and exported
        u8 = Intensity.parse(config.intensity).to_uint8(volume.hu)
    if digests is None:
        digests = slice_digests(volume.hu)
    frame, verified = None, None
    if verify and outputs is not None:
        frame, verified = recorded_frame(volume, read_part(outputs.parts, source.volume_id), digests, u8)
    has_part = frame is not None and outputs is not None and outputs.export is not None and outputs.export.has(
        source.volume_id)
    if frame is None:
        frame = _volume_frame(volume, config, u8, digests)
    if outputs is not None and outputs.export is not None and not has_part:
        kept = np.flatnonzero(frame["kept"].to_numpy())
        outputs.export.write(source.volume_id, volume.slice_index[kept], u8[kept])
    if outputs is not None:
        write_part(outputs.parts, source.volume_id, frame)
    return VolumeResult(source.volume_id, source.source, frame, seconds=time.perf_counter() - start,
                        warnings=volume.warnings, fingerprint=before, verified=verified)


@contextmanager
def _errors_returned(source: VolumeSource, outputs: Outputs | None, start: float) -> Iterator[list[VolumeResult]]:
    """Run the block; any error but a full disk becomes the volume's error result (one bad volume
    never stops the others). The block appends its result to the list yielded."""
    result: list[VolumeResult] = []
    try:
        yield result
    except DiskFull:
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(outputs.parts if outputs is not None else source.source, exc) from exc
        result[:] = [VolumeResult(source.volume_id, source.source, error=_named(source, exc),
                                  seconds=time.perf_counter() - start)]
    except Exception as exc:
        result[:] = [VolumeResult(source.volume_id, source.source, error=_named(source, exc),
                                  seconds=time.perf_counter() - start)]


# Few large volumes: the slices of one DICOM series are read (and scaled) by every worker, in
# contiguous chunks, and the selection runs here. Only for methods whose work after scaling is
# light (hash, all, every-n); SSIM/MI/DeepNet comparisons are the cost there, not reading.
_CHUNKED_METHODS = ("hash", "all", "every-n")
_MIN_CHUNK = 16  # slices: below this, one more task costs more than it saves


def _chunkable(todo: list[VolumeSource], config: ReduceConfig, workers: int) -> bool:
    return (config.method in _CHUNKED_METHODS and 0 < len(todo) < workers
            and all(s.format == "dicom" and not s.frames and s.n_slices >= 2 * _MIN_CHUNK for s in todo))


def _read_chunk(source: VolumeSource, index: np.ndarray, intensity: str) -> tuple[Volume, np.ndarray, list[str]]:
    """Slices ``index`` of a series, their 8-bit images and pixel digests (the volume keeps no
    pixels: they would only travel back to be dropped)."""
    volume = load(source, index, allow_gaps=source.allow_gaps)  # a chunk leaves out what the whole would
    u8 = Intensity.parse(intensity).to_uint8(volume.hu)
    return dataclasses.replace(volume, hu=volume.hu[:, :0, :0]), u8, slice_digests(volume.hu)


def _run_chunked(todo: list[VolumeSource], config: ReduceConfig, workers: int,
                 outputs: Outputs | None, verify: set[str]) -> Iterator[VolumeResult]:
    pool = process_pool(workers)
    finished = False
    try:
        for source in todo:
            start = time.perf_counter()
            with _errors_returned(source, outputs, start) as result:
                before = Fingerprint.of(source)
                n_chunks = min(workers * 2, source.n_slices // _MIN_CHUNK)  # 2 per worker: even finish
                chunks = np.array_split(np.arange(source.n_slices), n_chunks)
                futures = [pool.submit(_read_chunk, source, index, config.intensity) for index in chunks]
                pieces = [f.result() for f in futures]
                volume = dataclasses.replace(
                    pieces[0][0], hu=np.concatenate([v.hu for v, _, _ in pieces]),
                    z_mm=np.concatenate([v.z_mm for v, _, _ in pieces]),
                    slice_sources=tuple(p for v, _, _ in pieces for p in v.slice_sources),
                    slice_index=np.concatenate([v.slice_index for v, _, _ in pieces]),
                    warnings=list(dict.fromkeys(w for v, _, _ in pieces for w in v.warnings)))
                result.append(_finish(source, volume, np.concatenate([u8 for _, u8, _ in pieces]), config, outputs,
                                      before, start, [d for _, _, digests in pieces for d in digests],
                                      verify=source.volume_id in verify))
            yield result[0]
        finished = True
    finally:
        if not finished:
            terminate(pool)
        pool.shutdown(wait=finished, cancel_futures=True)


def _named(source: VolumeSource, exc: Exception) -> str:
    """The error in words, naming the volume's file or folder when the message does not."""
    text = str(exc) or type(exc).__name__
    if any(p in text for p in (source.source, *source.paths[:1])):
        return text
    return f"{source.source}: {type(exc).__name__}: {text}"


# --- archives ------------------------------------------------------------------------------------


def _job(source: VolumeSource, verify: set[str]):
    """What a worker runs for ``source``: reduce it, or verify it against its part (``verify_source``)."""
    return verify_source if source.volume_id in verify else process_source


def _run_pool(todo: list[VolumeSource], config: ReduceConfig, workers: int,
              parts: Outputs | None, verify: set[str]) -> Iterator[VolumeResult]:
    if _chunkable(todo, config, workers):
        yield from _run_chunked(todo, config, workers, parts, verify)
        return
    if workers <= 1:
        for source in todo:
            yield _job(source, verify)(source, config, parts)
        return
    pool = process_pool(workers)
    finished = False
    try:
        pending: set[Future] = set()
        queue = iter(todo)
        # A few volumes in flight per worker: memory stays bounded by the volumes being read.
        for source in queue:
            pending.add(pool.submit(_job(source, verify), source, config, parts))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(_job(nxt, verify), nxt, config, parts))
        finished = True
    finally:
        if not finished:  # interrupted or failed: stop the workers now, not after their volume
            terminate(pool)
        pool.shutdown(wait=finished, cancel_futures=True)


def _run_ray(todo: list[VolumeSource], config: ReduceConfig, workers: int, address: str | None,
             parts: Outputs | None, verify: set[str]) -> Iterator[VolumeResult]:
    """The same per-volume work as Ray tasks (actors holding the network for deepnet).

    Connects to ``address`` (or RAY_ADDRESS); without one, starts a local Ray with ``workers``
    CPUs. Every node needs ctreduce installed (or a runtime_env that installs it).
    """
    with ray_session(workers, address) as ray:
        if config.method == "deepnet":
            gpus = int(ray.cluster_resources().get("GPU", 0))
            # One actor per GPU (or per worker on CPUs): the network is loaded once per actor.
            actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(_RayReducer)
            actors = [actor_cls.remote() for _ in range(gpus or workers)]
            submits = [actor.run.remote for actor in actors]
            in_flight = 2 * len(actors)
        else:
            tasks = {False: ray.remote(num_cpus=1)(process_source).remote,
                     True: ray.remote(num_cpus=1)(verify_source).remote}
            submits = [lambda source, config, parts, check: tasks[check](source, config, parts)]
            in_flight = 2 * max(workers, int(ray.cluster_resources().get("CPU", workers)))
        pending = []
        for i, source in enumerate(todo):
            pending.append(submits[i % len(submits)](source, config, parts, source.volume_id in verify))
            if len(pending) >= in_flight:
                ready, pending = ray.wait(pending, num_returns=1)
                yield ray.get(ready[0])
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])


class _RayReducer:
    def run(self, source: VolumeSource, config: ReduceConfig, parts: Outputs | None, verify: bool) -> VolumeResult:
        return verify_source(source, config, parts) if verify else process_source(source, config, parts)


def reduce(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    config: ReduceConfig | None = None,
    workers: int = 1,
    overwrite: bool = False,
    csv: bool = False,
    progress: bool = False,
    backend: str = "local",
    ray_address: str | None = None,
    export: str | None = None,
    export_size: int = 224,
    export_out: str | os.PathLike | None = None,
    verify: bool = False,
    **settings: Any,
) -> pd.DataFrame:
    """Reduce every volume under ``inputs``; returns the manifest (one row per slice).

    Columns: volume_id, source (the slice's file), slice_index (0-based, anatomical), z_mm,
    kept, leader (slice_index of the kept slice representing it; itself when kept), distance
    (hash: Hamming bits to the leader) or similarity (ssim/mi/deepnet: score to the leader),
    NaN when kept or for all/every-n, method, threshold, params (JSON), intensity, hash (the
    method's hash, hash methods only), dhash (every slice's 64-bit difference hash of its 8-bit
    image, imagehash's hex, whatever the method), pixel_digest (a 64-bit BLAKE2b of the slice's
    HU values, ``store.fingerprint.slice_digest``: what exports compare before writing a slice).

    With ``out``, results are written to a resumable, locked run folder (``ctreduce.store.run``);
    the summary (counts, errors, skipped files, changed inputs, versions) is in
    ``manifest.attrs["summary"]``. A rerun trusts the volumes whose files have the size and time
    they had; a volume whose files' stat changed is read again and reduced again only when its
    slices' pixels (``pixel_digest``) or positions changed: moved, copied or touched, it is not.
    ``verify`` reads every finished volume again and redoes those whose content changed.
    ``settings`` are ReduceConfig fields (method, threshold, every_n, intensity, ...).
    ``backend="ray"`` runs the volumes as Ray tasks (``ray_address`` or RAY_ADDRESS, else a
    local Ray with ``workers`` CPUs); the output is identical to the local process pool.
    ``export="npy"|"png"`` (or a plug-in's export format) writes the export of the kept slices in the same pass
    (each volume is read once; ``export_size`` for npy) to ``export_out`` (default ``out/export``), whole, once the
    run is complete: the same export as ``ctreduce export`` of the run folder.
    Raises ValueError (NoVolumes, RunConflict, LockHeld is a RuntimeError) before any volume is
    read for unusable settings, and DiskFull when the disk fills (a rerun resumes).
    """
    config = make_config(config, **settings)
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; choose 'local' or 'ray'")
    if export is not None:
        check_export(export, export_size, out, config)
    paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input paths given")
    if verify and out is None:
        raise ValueError("verify compares a run folder's results with the inputs: give --out")
    if config.method not in SELECTORS and backend == "local":
        # A setting that cannot work for any volume fails here, once. Not for Ray: its workers may have
        # the GPUs (and the weights cache) that the driver lacks.
        measure_of(config).preflight()
    t0 = time.perf_counter()
    if out is not None:
        check_output_place(out, paths)
        if export is not None:
            export_out = Path(export_out) if export_out is not None else RunFolder(out).default_export
            check_export_out(export_out, paths, Path(out), overwrite)
    listing = walk(paths)
    if out is not None and not overwrite and not verify:
        manifest = _unchanged(RunFolder(out), config, paths, listing.digest, export, export_size, export_out, csv, t0)
        if manifest is not None:
            return manifest
    # A rerun reads only the headers of files that changed since the last scan.
    cache = RunFolder(out).header_cache() if out is not None and not overwrite else None
    found = scan(paths, modality=config.modality, allow_gaps=config.allow_gaps,
                 workers=workers if backend == "local" else 1, header_cache=cache, listing=listing)
    # The cache is rewritten only when a header was read or a file went away.
    rewrite_cache = found.headers_read > 0 or len(cache or {}) != len(found.headers)
    del cache, listing
    if not found.volumes and not found.errors:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in found.skipped[:5])
        raise NoVolumes(f"no volumes found in {', '.join(map(str, paths))}" + (f" ({reasons})" if reasons else ""))
    scan_seconds = time.perf_counter() - t0
    run_config = config
    if config.method == "every-n" and config.target_fraction is not None:
        # Slice counts are known from the headers, so N is chosen before any pixel is read.
        run_config = make_config(config, every_n=every_n_for_target(
            [s.n_slices for s in found.volumes], config.target_fraction))

    run = RunFolder(out) if out is not None else None
    with run.lock() if run is not None else nullcontext():
        parts = None
        if run is not None and export is not None:
            parts = ExportParts(run.export_parts, export, export_size, config.intensity)
        manifest = _reduce_found(found, run, config, run_config, paths, t0, scan_seconds, workers=workers,
                                 overwrite=overwrite, csv=csv, progress=progress, backend=backend,
                                 ray_address=ray_address, export=parts, rewrite_cache=rewrite_cache, verify=verify)
        if parts is not None and manifest.attrs["summary"]["complete"]:
            manifest.attrs["summary"]["export"] = assemble_export(run, manifest, parts, Path(export_out),
                                                                  {s.volume_id: s for s in found.volumes},
                                                                  library_versions(LIBRARIES))
            run.update_summary(manifest.attrs["summary"])
        return manifest


def _unchanged(run: RunFolder, config: ReduceConfig, paths: list[Path], digest: str, export: str | None,
               export_size: int, export_out: Any, csv: bool, t0: float) -> pd.DataFrame | None:
    """The manifest of a complete run whose inputs did not change (nothing is read but the run
    folder's summary and manifest, and the export asked for), or None when there is work to do
    (an unreadable manifest is then rebuilt from the parts and the journal)."""
    if not run.path.is_dir():
        return None
    spec = None
    if export is not None:
        spec = {"path": str(export_out), "format": export, "size": export_format(export, export_size).size}
    with run.lock():
        summary = run.unchanged_since_complete(identity(config), [str(p.resolve()) for p in paths], digest, spec)
        if summary is None:
            return None
        try:
            manifest = run.manifest()
        except (OSError, ValueError, pa.ArrowException):
            return None
        if csv and not run.has_csv:
            run.write_csv(manifest)
    summary.pop("schema", None)
    summary["rerun"] = {"unchanged": True, "seconds": round(time.perf_counter() - t0, 3)}
    manifest.attrs["summary"] = Summary(summary)
    return manifest


def _reduce_found(found: ScanResult, run: RunFolder | None, config: ReduceConfig, run_config: ReduceConfig,
                  paths: list[Path], t0: float, scan_seconds: float, *, workers: int, overwrite: bool, csv: bool,
                  progress: bool, backend: str, ray_address: str | None,
                  export: ExportParts | None = None, rewrite_cache: bool = True, verify: bool = False
                  ) -> pd.DataFrame:
    done: dict[str, dict[str, Any]] = {}
    fingerprints: dict[str, Fingerprint] = {}
    changed: dict[str, str] = {}
    moved: list[str] = []
    recheck: dict[str, str] = {}  # finished volumes to read and compare again -> how their files' stat changed
    if run is not None:
        run.start(identity(config), [str(p.resolve()) for p in paths], overwrite)
        if rewrite_cache or overwrite:
            run.write_header_cache(found.headers)
        if export is not None:
            export.prepare()  # after start: --overwrite has cleared the old parts
        done = still_valid(found.volumes, found.stats, run.finished(), fingerprints, changed, recheck, verify)
    found.headers, found.stats = {}, {}  # written; one entry per file is the largest thing held
    todo = [s for s in found.volumes if s.volume_id not in done]

    frames: dict[str, pa.Table] = {}
    entries: dict[str, dict[str, Any]] = dict(done)
    interrupted = False
    full: DiskFull | None = None
    t1 = time.perf_counter()
    bar = _progress(len(found.volumes), len(done), progress)
    try:
        parts = Outputs(run.parts, export) if run is not None else None
        results = (_run_ray(todo, run_config, workers, ray_address, parts, set(recheck)) if backend == "ray"
                   else _run_pool(todo, run_config, workers, parts, set(recheck)))
        for result in results:
            if result.verified == "" and recheck[result.volume_id]:
                moved.append(result.volume_id)
            elif result.verified:
                changed[result.volume_id] = "; ".join(filter(None, (recheck[result.volume_id], result.verified)))
            entry = run.record(result.entry()) if run is not None else result.entry()
            entry.pop("fingerprint", None)  # kept in ``fingerprints``; one list entry per file otherwise
            entries[result.volume_id] = entry
            if result.fingerprint is not None:
                fingerprints[result.volume_id] = result.fingerprint
            if result.frame is not None:  # Arrow: a few bytes a row, where pandas objects take ~10x
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

    manifest = _assemble(found, frames, run)
    fractions = {t: float(manifest[kept_column(t)].mean()) for t in sweep(config)
                 if kept_column(t) in manifest.columns} if not manifest.empty else {}
    manifest, target = resolve_target(manifest, config)
    scope = None
    if config.scope == "archive" and not interrupted and all(s.volume_id in entries for s in found.volumes):
        manifest, scope = archive_scope(manifest, int(config.threshold))
    if config.method == "every-n" and config.target_fraction is not None:
        target = {"target_fraction": config.target_fraction, "every_n": run_config.every_n,
                  "kept_fraction": float(manifest["kept"].mean()) if len(manifest) else 0.0}
    summary = _summary(found, entries, manifest, run_config, paths, scan_seconds, reduce_seconds,
                       time.perf_counter() - t0, complete=not interrupted, workers=workers)
    if summary["complete"]:
        summary["inputs_digest"] = found.digest  # a rerun with the same file listing has nothing to do
    if changed or moved:
        summary["inputs_changed"] = changed
        summary["inputs_moved"] = moved
    if verify:
        summary["inputs_verified"] = {"volumes": len(recheck), "changed": sorted(v for v in recheck if v in changed)}
    if scope is not None:
        summary["scope"] = scope
    if fractions:
        summary["sweep"] = {f"{t:g}": f for t, f in fractions.items()}
    if target is not None:
        summary["target"] = target
    if run is not None:
        try:
            run.write_results(manifest, found.volumes, fingerprints, summary, csv)
        except DiskFull as exc:
            full = full or exc
    manifest.attrs["summary"] = Summary(summary)
    if full is not None:
        raise full
    if interrupted:
        raise KeyboardInterrupt(f"interrupted; partial results in {run.path}" if run else "interrupted")
    return manifest


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="vol", desc="reduce", file=sys.stderr)


def _assemble(found: ScanResult, frames: dict[str, pa.Table], run: RunFolder | None) -> pd.DataFrame:
    ordered = []
    for source in found.volumes:
        table = frames.get(source.volume_id)
        if table is None and run is not None:
            table = run.read_part_table(source.volume_id)
        if table is not None:
            ordered.append(table)
    if not ordered:
        return reduce_volume_empty()
    return pa.concat_tables(ordered, promote_options="default").to_pandas()


def reduce_volume_empty() -> pd.DataFrame:
    return pd.DataFrame({
        "volume_id": pd.Series(dtype=str), "source": pd.Series(dtype=str),
        "slice_index": pd.Series(dtype=np.int32), "z_mm": pd.Series(dtype=np.float64),
        "kept": pd.Series(dtype=bool), "leader": pd.Series(dtype=np.int32),
        "distance": pd.Series(dtype=np.float64), "method": pd.Series(dtype=str),
        "threshold": pd.Series(dtype=np.float64), "params": pd.Series(dtype=str),
        "intensity": pd.Series(dtype=str), "hash": pd.Series(dtype=object), "dhash": pd.Series(dtype=str),
        DIGEST_COLUMN: pd.Series(dtype=str),
    })


def _summary(found: ScanResult, entries: dict[str, dict[str, Any]], manifest: pd.DataFrame,
             config: ReduceConfig, paths: list[Path], scan_s: float, reduce_s: float, total_s: float,
             *, complete: bool, workers: int) -> dict[str, Any]:
    volumes, errors = [], list(found.errors)
    kept_by_volume = manifest.groupby("volume_id", sort=False)["kept"].sum().to_dict() if len(manifest) else {}
    for source in found.volumes:
        entry = entries.get(source.volume_id)
        if entry is None:
            continue
        if entry.get("error"):
            errors.append({"volume_id": source.volume_id, "source": entry["source"], "error": entry["error"]})
            continue
        slices, kept = int(entry["slices"]), int(kept_by_volume.get(source.volume_id, entry["kept"]))
        volumes.append({"volume_id": source.volume_id, "source": source.source, "format": source.format,
                        "slices": slices, "kept": kept, "kept_fraction": kept / slices if slices else 0.0,
                        "seconds": entry.get("seconds"), "warnings": entry.get("warnings", [])})
    slices = int(len(manifest))
    kept = int(manifest["kept"].sum()) if slices else 0
    pending = len(found.volumes) - len(volumes) - (len(errors) - len(found.errors))
    return {
        "complete": complete and pending == 0,
        "config": config.model_dump(),
        "inputs": [str(p) for p in paths],
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
