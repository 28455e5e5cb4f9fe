"""``reduce --export``: the export of a run written in the same pass, assembled from per-volume parts.

Each worker writes its volume's kept slices while the volume is in memory (``store.export.ExportParts``);
when the run is complete they are assembled, in manifest order, into the same export as
``ctreduce export`` of the run. Volumes without a part (reduced before ``--export`` was asked for)
are read once more and compared with the manifest first, like every export that reads the sources again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import SELECTORS, ReduceConfig
from ..io.discover import load
from ..io.intensity import Intensity
from ..io.volume import VolumeError, VolumeSource
from ..store.export import META, ExportError, ExportParts, ExportWriter, refuse_existing
from ..store.export_formats import export_format
from ..store.files import read_json
from ..store.fingerprint import first_mismatch
from ..store.places import check_output_place
from ..store.run import RunFolder
from .verify import REDO_HINT, legacy_dhashes


def check_export(fmt: str, size: int, out: Any, config: ReduceConfig) -> None:
    """The export settings of ``reduce --export``; ValueError before anything is read."""
    export_format(fmt, size)  # ExportError: an unknown format, or a size it cannot use
    if out is None:
        raise ValueError("--export writes beside a run folder: give --out")
    if config.target_fraction is not None and config.method not in SELECTORS:
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
    """The export of a complete run from its parts, replacing an export of this same run.

    Volumes without a part are read once more; a volume that cannot be read, or whose slices no
    longer hold what the manifest records, is left out and listed under ``errors`` (never written).
    """
    kept = manifest[manifest["kept"]]
    if parts.current(out, run.path, list(zip(kept["volume_id"], kept["slice_index"].astype(int), strict=True))):
        meta = read_json(out / META)
        return {"path": str(out), "format": meta["format"], "size": meta["size"], "slices": meta["slices"],
                "assemble_s": 0.0, "errors": meta.get("errors", [])}
    start = time.perf_counter()
    errors: list[dict[str, str]] = []
    with ExportWriter(out, parts.format, size=parts.size, overwrite=True) as writer:
        writer.allocate(len(kept))
        # A part holds the slices its volume kept; --scope archive may have dropped some since.
        in_parts = manifest[manifest["volume_kept"]] if "volume_kept" in manifest.columns else kept
        part_rows = {vid: rows for vid, rows in in_parts.groupby("volume_id", sort=False)}
        for volume_id, group in kept.groupby("volume_id", sort=False):
            part_slices = part_rows[volume_id]["slice_index"].to_numpy(np.int64)
            if not parts.has(volume_id):
                error = _write_part(parts, sources[volume_id], part_rows[volume_id])
                if error is not None:
                    errors.append({"volume_id": volume_id, "error": error})
                    continue
            index = group["slice_index"].to_numpy(np.int64)
            records = [{"volume_id": volume_id, "slice_index": int(i), "z_mm": float(z), "source": str(src)}
                       for i, z, src in zip(index, group["z_mm"], group["source"], strict=True)]
            rows = np.searchsorted(part_slices, index)
            parts.add_to(writer, volume_id, records, None if len(rows) == len(part_slices) else rows)
        meta = writer.commit({"run_dir": str(run.path.resolve()), "intensity": parts.intensity, "column": "kept",
                              "volumes": int(kept["volume_id"].nunique()) - len(errors), "errors": errors,
                              "fused": True, "allow_incomplete": False, "allow_changed": [],
                              "unchecked_sources": False, "seconds": round(time.perf_counter() - start, 3),
                              "versions": versions})
    return {"path": str(out), "format": meta["format"], "size": meta["size"], "slices": meta["slices"],
            "assemble_s": meta["seconds"], "errors": errors}


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
