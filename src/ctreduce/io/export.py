"""Export the kept slices of a run for training: a PNG folder or one memory-mappable uint8 array.

``png``: ``OUT/images/<volume>__<slice>.png`` at native size, 8-bit grey (the paper's layout;
``torchvision.datasets.ImageFolder(OUT)`` sees one class, ``images``).
``npy``: ``OUT/slices.npy`` (N, size, size) uint8, each slice resized keeping its aspect ratio
and padded with zeros to a square, ``OUT/index.parquet`` mapping row -> (volume_id,
slice_index, z_mm, source). Both write ``OUT/export.json`` (settings, counts, versions).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..reduction.engine import _atomic_write, check_output_dir, library_versions, read_sources
from ..reduction.intensity import Intensity
from .discover import load
from .volume import VolumeError

FORMATS = ("png", "npy")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "volume"


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
) -> dict[str, Any]:
    """Write the slices flagged in manifest column ``column`` of ``run_dir`` to ``out``.

    The intensity policy defaults to the run's own (minmax for all/every-n runs). Returns the
    export summary; volumes that can no longer be read are listed under ``errors``.
    """
    from PIL import Image

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if size < 8:
        raise ValueError(f"--size must be at least 8, got {size}")
    run_dir, out = Path(run_dir), Path(out)
    manifest_path = run_dir / "manifest.parquet"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: no manifest; run 'ctreduce reduce ... --out {run_dir}' first")
    manifest = pd.read_parquet(manifest_path)
    if column not in manifest.columns:
        raise ValueError(f"manifest has no column {column!r}; columns: {', '.join(manifest.columns)}")
    sources = {s.volume_id: s for s in read_sources(run_dir)}
    check_output_dir(out, [Path(s.source) for s in sources.values()])
    run_config = json.loads((run_dir / "run.json").read_text())
    policy = Intensity.parse(intensity or run_config.get("intensity", "minmax"))

    chosen = manifest[manifest[column].astype(bool)]
    groups = list(chosen.groupby("volume_id", sort=False))
    start = time.perf_counter()
    errors: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    array = None
    if format == "npy":
        array = np.lib.format.open_memmap(out / "slices.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(chosen), size, size))
    else:
        (out / "images").mkdir(parents=True, exist_ok=True)
    for volume_id, group in groups:
        try:
            volume = load(sources[volume_id])
        except (VolumeError, KeyError) as exc:
            errors.append({"volume_id": volume_id, "error": str(exc)})
            continue
        index = group["slice_index"].to_numpy()
        u8 = policy.to_uint8(volume.hu[index])
        for k, slice_index in enumerate(index):
            record = {"volume_id": volume_id, "slice_index": int(slice_index),
                      "z_mm": float(volume.z_mm[slice_index]), "source": volume.slice_sources[slice_index]}
            if array is not None:
                array[len(rows)] = resize_pad(u8[k], size)
            else:
                name = f"{_safe(volume_id)}__{int(slice_index):04d}.png"
                Image.fromarray(u8[k]).save(out / "images" / name, compress_level=1)
                record["file"] = f"images/{name}"
            rows.append(record)
    if array is not None:
        array.flush()
        del array
        if len(rows) != len(chosen):  # unreadable volumes: shrink the store to the rows written
            _truncate_npy(out / "slices.npy", len(rows), size)
    index_table = pd.DataFrame(rows, columns=["volume_id", "slice_index", "z_mm", "source"]
                               + (["file"] if format == "png" else []))
    index_table.insert(0, "row", np.arange(len(index_table), dtype=np.int64))
    _atomic_write(out / "index.parquet", lambda p: index_table.to_parquet(p, index=False))
    summary = {
        "run_dir": str(run_dir), "format": format, "size": size if format == "npy" else None,
        "intensity": str(policy), "column": column, "slices": len(rows),
        "volumes": len(groups) - len(errors), "errors": errors,
        "seconds": round(time.perf_counter() - start, 3), "versions": library_versions(),
    }
    _atomic_write(out / "export.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    return summary


def _truncate_npy(path: Path, rows: int, size: int) -> None:
    data = np.load(path, mmap_mode="r")[:rows].copy()
    np.save(path, data)
