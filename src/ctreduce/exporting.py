"""Export the kept slices of a run for training: a PNG folder or one memory-mappable uint8 array.

The format (file names, index, completion marker) belongs to ``ctreduce.store.export``; this
module decides what goes in: the slices flagged in the manifest, read again from sources that
are checked against the fingerprints recorded when they were reduced.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .io.discover import load
from .io.volume import VolumeError
from .reduction.intensity import Intensity
from .store.export import FORMATS, ExportError, ExportWriter
from .store.run import RunFolder, RunFolderError, check_output_dir
from .versions import package_versions


def resize_pad(u8: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 slice so its longer side is ``size`` (Pillow bicubic), pad to a square."""
    from PIL import Image

    h, w = u8.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(u8).resize((nw, nh), Image.Resampling.BICUBIC))
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


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
) -> dict[str, Any]:
    """Write the slices flagged in manifest column ``column`` of ``run_dir`` to ``out``.

    Refused (ExportError, nothing written) when the run is incomplete (unless
    ``allow_incomplete``), when a source changed since it was reduced (unless ``allow_changed``),
    or when ``out`` holds an export (unless ``overwrite``, which replaces it whole). The intensity
    policy defaults to the run's own (minmax for all/every-n runs). Returns the export summary;
    volumes that can no longer be read, or no longer match their manifest rows, are listed under
    ``errors``.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if size < 8:
        raise ExportError(f"--size must be at least 8, got {size}")
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
    check = run.check_sources([vid for vid, _ in groups])
    if (check.changed or check.unchecked) and not allow_changed:
        raise ExportError(check.message(run_dir))
    sources = {s.volume_id: s for s in run.sources()}
    check_output_dir(out, [Path(s.source) for s in sources.values()])
    policy = Intensity.parse(intensity or run.settings().get("intensity", "minmax"))

    start = time.perf_counter()
    errors: list[dict[str, str]] = []
    with ExportWriter(out, format, size=size if format == "npy" else None, overwrite=overwrite) as writer:
        if format == "npy":
            writer.allocate(len(chosen))
        for volume_id, group in groups:
            try:
                volume = load(sources[volume_id])
                index = group["slice_index"].to_numpy()
                _check_matches(volume, group)
            except (VolumeError, KeyError) as exc:
                errors.append({"volume_id": volume_id, "error": str(exc)})
                continue
            u8 = policy.to_uint8(volume.hu[index])
            for k, slice_index in enumerate(index):
                record = {"volume_id": volume_id, "slice_index": int(slice_index),
                          "z_mm": float(volume.z_mm[slice_index]), "source": volume.slice_sources[slice_index]}
                writer.add(resize_pad(u8[k], size) if format == "npy" else u8[k], record)
        meta = writer.commit({
            "run_dir": str(run_dir.resolve()), "intensity": str(policy), "column": column,
            "volumes": len(groups) - len(errors), "errors": errors,
            "allow_incomplete": allow_incomplete and not summary.get("complete", False),
            "allow_changed": sorted(check.changed) if allow_changed else [],
            "unchecked_sources": check.unchecked,
            "seconds": round(time.perf_counter() - start, 3),
            "versions": package_versions(["ctreduce", "numpy", "Pillow", "pandas", "pyarrow"]),
        })
    return meta


def _check_matches(volume, group) -> None:
    """The volume read now must be the one the manifest describes: same slice count, same positions."""
    index = group["slice_index"].to_numpy()
    if index.size and int(index.max()) >= volume.n_slices:
        raise VolumeError(f"{volume.volume_id}: the manifest keeps slice {int(index.max())} but the volume now has "
                          f"{volume.n_slices} slices; its source changed since it was reduced")
    z_now = np.asarray(volume.z_mm, dtype=np.float64)[index]
    z_then = group["z_mm"].to_numpy(np.float64)
    moved = ~np.isclose(z_now, z_then, atol=1e-3, equal_nan=True)
    if moved.any():
        k = int(np.flatnonzero(moved)[0])
        raise VolumeError(f"{volume.volume_id}: slice {int(index[k])} is at z {z_now[k]:.1f} mm now but "
                          f"{z_then[k]:.1f} mm in the manifest; its source changed since it was reduced")
