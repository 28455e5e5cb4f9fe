"""``ctreduce.reduce``, and with ``export=`` the export of the run written in the same pass.

Each worker writes its volume's kept slices while the volume is in memory (``store.export.ExportParts``; npy:
the volume's shard, straight into the export store it grows); when the run is complete they are assembled, in
manifest order, into the same export as ``ctreduce export`` of the run (npy: a new index version naming them).
Volumes without a part (reduced before ``--export`` was asked for, and not held unchanged by the version the
export grows from) are read once more and compared with the manifest first, like every export that reads the
sources again.

The reduce run (``reduction.run``) sits below the export side and cannot import it: :func:`reduce` hands it
a :class:`OnePassExport`, which the run calls back to check the export folder before anything is read, to
give its workers the parts to write and to assemble them once the run is complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import ReduceConfig, RunOptions
from ..core.versions import library_versions
from ..io.discover import load
from ..io.intensity import Intensity
from ..io.volume import VolumeError, VolumeSource
from ..reduction.plan import kept_known_per_volume, settings
from ..reduction.run import LIBRARIES, ReduceResult, run_reduction
from ..reduction.verify import REDO_HINT, legacy_dhashes
from ..store.export import META, ExportError, ExportParts, ExportWriter, refuse_existing
from ..store.export_formats import export_format
from ..store.files import read_json
from ..store.fingerprint import DIGEST_COLUMN, first_mismatch
from ..store.places import check_output_place
from ..store.run import RunFolder


def reduce(inputs: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *,
           config: ReduceConfig | None = None, **settings_: Any) -> ReduceResult:
    """Reduce every volume under ``inputs``; returns a :class:`~ctreduce.reduction.run.ReduceResult`: the
    summary (counts, errors, skipped files, changed inputs, versions) and the manifest, one row per slice.

    Manifest columns: volume_id, source (the slice's file), slice_index (0-based, anatomical), z_mm,
    kept, leader (slice_index of the kept slice representing it; itself when kept), distance
    (hash: Hamming bits to the leader) or similarity (ssim/mi/deepnet: score to the leader),
    NaN when kept or for all/every-n, method, threshold, params (JSON), intensity, hash (the
    method's hash, hash methods only), dhash (every slice's 64-bit difference hash of its 8-bit
    image, imagehash's hex, whatever the method), pixel_digest (a 64-bit BLAKE2b of the slice's
    HU values, ``store.fingerprint.slice_digest``: what exports compare before writing a slice).

    ``settings_`` are the fields of ``ReduceConfig`` (what is kept: method, threshold, every_n, intensity,
    ...; ``config`` gives them as one value) and of ``RunOptions`` (how it runs: workers, overwrite, csv,
    progress, backend, ray_address, export, export_size, export_out, verify); ``ctreduce reduce --help``
    describes each.

    With ``out``, results are written to a resumable, locked run folder (``ctreduce.store.run``),
    from which the result reads its manifest. A rerun trusts the volumes whose files have the size and time
    they had; a volume whose files' stat changed is read again and reduced again only when its
    slices' pixels (``pixel_digest``) or positions changed: moved, copied or touched, it is not.
    ``verify`` reads every finished volume again and redoes those whose content changed.
    ``backend="ray"`` runs the volumes as Ray tasks (``ray_address`` or RAY_ADDRESS, else a
    local Ray with ``workers`` CPUs); the output is identical to the local process pool.
    ``export="npy"|"png"`` (or a plug-in's export format) writes the export of the kept slices in the
    same pass (each volume is read once; ``export_size`` for npy) to ``export_out`` (default
    ``out/export``), whole, once the run is complete: the same export as ``ctreduce export`` of the run folder.
    Raises ValueError (NoVolumes, RunConflict, a pydantic ValidationError; LockHeld is a RuntimeError) before
    any volume is read for unusable settings, and DiskFull when the disk fills (a rerun resumes).
    """
    options = RunOptions(**{k: settings_.pop(k) for k in list(settings_) if k in RunOptions.model_fields})
    config = settings(config, **settings_)
    export = None
    if options.export is not None:
        check_export(options.export, options.export_size, out, config)
        export = OnePassExport.of(options, Path(out), config)  # type: ignore[arg-type]  # checked: out is given
    return run_reduction(inputs, out, config, options, export)


class OnePassExport:
    """The export a ``reduce --export`` run writes (``reduction.run.ExportPass``): its per-volume parts in
    the run folder, assembled into ``out`` once the run is complete."""

    def __init__(self, parts: ExportParts, out: Path, run_dir: Path) -> None:
        self.parts, self.out, self.run_dir = parts, out, run_dir
        self.spec = {"path": str(out), "format": parts.format, "size": parts.size}

    @classmethod
    def of(cls, options: RunOptions, run_dir: Path, config: ReduceConfig) -> OnePassExport:
        fmt, size = options.export, options.export_size
        out = Path(options.export_out) if options.export_out is not None else RunFolder(run_dir).default_export
        parts = ExportParts(RunFolder(run_dir).export_parts, fmt, size, config.intensity, store=out,
                            spec={"run_dir": str(run_dir.resolve()), "column": "kept"})
        return cls(parts, out, run_dir)

    def check_place(self, inputs: list[Path], overwrite: bool) -> None:
        check_export_out(self.out, inputs, self.run_dir, overwrite)

    def assemble(self, run: RunFolder, kept: pd.DataFrame, sources: dict[str, VolumeSource]) -> dict[str, Any]:
        return assemble_export(run, kept, self.parts, self.out, sources, library_versions(LIBRARIES))


def check_export(fmt: str, size: int, out: Any, config: ReduceConfig) -> None:
    """The export settings of ``reduce --export``; ValueError before anything is read."""
    export_format(fmt, size)  # ExportError: an unknown format, or a size it cannot use
    if out is None:
        raise ValueError("--export writes beside a run folder: give --out")
    if not kept_known_per_volume(config):
        raise ValueError("--export needs each volume's kept slices when it is reduced, but with --target-fraction "
                         "they are known only when every volume is done: reduce first, then 'ctreduce export'")


def check_export_out(out: Path, inputs: list[Path], run_dir: Path, overwrite: bool) -> None:
    """Refuse, before any volume is reduced, an export folder the finished run could not be written
    to: inside an input, not writable, a file, a folder of other files, or another run's export
    (without ``overwrite``). This run's own export is replaced when the run changes."""
    check_output_place(out, inputs)
    refuse_existing(out, overwrite=True)  # a file, or a folder of files that are not an export
    if not overwrite and (out / META).exists():
        try:
            previous = read_json(out / META).get("run_dir")
        except (OSError, ValueError):
            previous = None  # a broken export: replaced whole, like an interrupted one
        if previous is not None and previous != str(run_dir.resolve()):
            raise ExportError(f"{out} holds an export of another run ({previous}); use --overwrite or another "
                              "--export-out")


def assemble_export(run: RunFolder, manifest: pd.DataFrame, parts: ExportParts, out: Path,
                    sources: dict[str, VolumeSource], versions: dict[str, str]) -> dict[str, Any]:
    """The export of a complete run from its parts, replacing an export of this same run. ``manifest``: its
    kept rows at least (``RunFolder.kept_rows``).

    Volumes without a part are read once more; a volume that cannot be read, or whose slices no
    longer hold what the manifest records, is left out and listed under ``errors`` (never written).
    """
    kept = manifest[manifest["kept"]]
    if parts.current(out, run.path, list(zip(kept["volume_id"], kept["slice_index"].astype(int), strict=True))):
        meta = read_json(out / META)
        return {"path": str(out), "format": meta["format"], "size": meta["size"], "slices": meta["slices"],
                "version": meta.get("version"), "assemble_s": 0.0, "errors": meta.get("errors", [])}
    start = time.perf_counter()
    errors: list[dict[str, str]] = []
    with ExportWriter(out, parts.format, size=parts.size, overwrite=True, spec=parts.spec) as writer:
        writer.allocate(len(kept))
        # A part holds the slices its volume kept; --scope archive may have dropped some since.
        in_parts = manifest[manifest["volume_kept"]] if "volume_kept" in manifest.columns else kept
        part_rows = {vid: rows for vid, rows in in_parts.groupby("volume_id", sort=False)}
        for volume_id, group in kept.groupby("volume_id", sort=False):
            part_slices = part_rows[volume_id]["slice_index"].to_numpy(np.int64)
            index = group["slice_index"].to_numpy(np.int64)
            digests = group[DIGEST_COLUMN] if DIGEST_COLUMN in group.columns else [None] * len(group)
            records = [{"volume_id": volume_id, "slice_index": int(i), "z_mm": float(z), "source": str(src),
                        DIGEST_COLUMN: d}
                       for i, z, src, d in zip(index, group["z_mm"], group["source"], digests, strict=True)]
            if not parts.has(volume_id):
                held = writer.held(records)  # unchanged since the version the export grows from
                if held is not None:
                    writer.add_volume(None, held)
                    continue
                error = _write_part(parts, sources[volume_id], part_rows[volume_id])
                if error is not None:
                    errors.append({"volume_id": volume_id, "error": error})
                    continue
            rows = np.searchsorted(part_slices, index)
            parts.add_to(writer, volume_id, records, None if len(rows) == len(part_slices) else rows)
        meta = writer.commit({"volumes": int(kept["volume_id"].nunique()) - len(errors), "errors": errors,
                              "fused": True, "allow_incomplete": False, "allow_changed": [],
                              "unchecked_sources": False, "seconds": round(time.perf_counter() - start, 3),
                              "versions": versions})
    return {"path": str(out), "format": meta["format"], "size": meta["size"], "slices": meta["slices"],
            "version": meta.get("version"), "assemble_s": meta["seconds"], "errors": errors}


def _write_part(parts: ExportParts, source: VolumeSource, rows: pd.DataFrame) -> str | None:
    """Read the slices of ``rows`` and write them as the volume's part when they hold what the manifest
    records; else the reason in words (nothing written)."""
    index = rows["slice_index"].to_numpy(np.int64)
    try:
        volume = load(source, index)
    except VolumeError as exc:
        return str(exc)
    intensity = str(rows["intensity"].iloc[0] or parts.intensity)
    mismatch = first_mismatch(volume, rows, dhashes=lambda: legacy_dhashes(volume.hu, intensity))
    if mismatch is not None:
        return f"{mismatch}; not exported. {REDO_HINT}"
    parts.write(source.volume_id, index, Intensity.parse(parts.intensity).to_uint8(volume.hu))
    return None
