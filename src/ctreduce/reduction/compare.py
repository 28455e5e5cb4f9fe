"""Compare reduction runs side by side: kept fractions, per-volume spread, overlap, time."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..store.run import RunFolder


def _kept_pairs(manifest: pd.DataFrame) -> set[tuple[str, int]]:
    kept = manifest.loc[manifest["kept"], ["volume_id", "slice_index"]]
    return set(zip(kept["volume_id"], kept["slice_index"].astype(int), strict=True))


def compare_runs(run_dirs: list[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (method, threshold, kept fraction, kept slices per volume min/median/max,
    wall time) and the Jaccard overlap of the kept (volume, slice) sets between every two runs."""
    rows, kept_sets, names = [], [], []
    for run_dir in map(Path, run_dirs):
        run = RunFolder.open(run_dir)
        manifest = run.manifest(columns=["volume_id", "slice_index", "kept", "method", "threshold"])
        summary = run.summary()
        per_volume = manifest.groupby("volume_id")["kept"].sum()
        config = summary.get("config", {})
        target = summary.get("target", {})
        rows.append({
            "run": run_dir.name,
            "method": config.get("method"),
            "threshold": manifest["threshold"].iloc[0] if len(manifest) else None,
            # recorded for every-n only (its N, or the one chosen for a target fraction)
            "every_n": target.get("every_n", run.settings().get("every_n")),
            "volumes": int(per_volume.size),
            "slices": int(len(manifest)),
            "kept": int(manifest["kept"].sum()),
            "kept_fraction": float(manifest["kept"].mean()) if len(manifest) else 0.0,
            "kept_per_volume_min": int(per_volume.min()) if per_volume.size else 0,
            "kept_per_volume_median": float(per_volume.median()) if per_volume.size else 0.0,
            "kept_per_volume_max": int(per_volume.max()) if per_volume.size else 0,
            "wall_s": summary.get("timings", {}).get("total_s"),
        })
        kept_sets.append(_kept_pairs(manifest))
        names.append(run_dir.name)
    overlap = pd.DataFrame(
        [[len(a & b) / len(a | b) if a | b else 1.0 for b in kept_sets] for a in kept_sets],
        index=names, columns=names,
    )
    return pd.DataFrame(rows), overlap
