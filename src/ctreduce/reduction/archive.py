"""``reduce --scope archive``: the paper's greedy leader rule again, across volumes, over the slices every
volume kept, compared by the 64-bit dHash each manifest records (Wolf et al. 2024, Sec. 2, applied to the
whole archive). :func:`archive_greedy` is the rule on codes; :func:`archive_scope` applies it to a manifest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core.dhash import codes_from_hex
from .hamming_index import HammingIndex


@dataclass(frozen=True)
class VolumeCodes:
    """One volume's slices that survived the per-volume pass, in ascending slice order."""

    volume_id: str
    slice_index: np.ndarray
    codes: np.ndarray  # uint64, one per slice

    def __post_init__(self) -> None:
        if len(self.slice_index) != len(self.codes):
            raise ValueError(f"volume {self.volume_id}: {len(self.slice_index)} slice indices but "
                             f"{len(self.codes)} codes")
        if np.any(np.diff(np.asarray(self.slice_index)) <= 0):
            raise ValueError(f"volume {self.volume_id}: slice indices must be strictly ascending")


def archive_greedy(volumes: Sequence[VolumeCodes], threshold: int) -> pd.DataFrame:
    """The paper's greedy leader rule over the whole archive, after the per-volume pass.

    Order (deterministic): the volumes as given (the engine passes them in manifest order, which
    is input order), and inside each volume its slices by ascending slice index. Walking that
    order, a slice is dropped when it lies within ``threshold`` bits of an earlier slice that was
    kept (a leader), anywhere in the archive; its leader is the first such kept slice. This is the
    paper's procedure (take the first remaining slice as leader, drop every remaining slice within
    the threshold, repeat) applied to the concatenated order, so no two kept slices lie within
    the threshold of each other. Inside one volume the per-volume pass has already separated the
    kept slices, so only slices near an earlier volume's leader are dropped.

    Returns one row per input slice, in that order: volume_id, slice_index, kept, leader_volume,
    leader_slice (the slice itself when kept) and distance to the leader (0 when kept).
    """
    volume_id = np.concatenate([np.full(len(v.codes), v.volume_id, dtype=object) for v in volumes]) \
        if volumes else np.zeros(0, dtype=object)
    slice_index = np.concatenate([np.asarray(v.slice_index, np.int64) for v in volumes]) if volumes \
        else np.zeros(0, np.int64)
    codes = np.concatenate([np.asarray(v.codes, np.uint64) for v in volumes]) if volumes \
        else np.zeros(0, np.uint64)
    n = len(codes)
    i, j, d = HammingIndex(codes, threshold).pairs()  # i < j: i comes first in the order
    by_later = np.lexsort((i, j))
    i, j, d = i[by_later].tolist(), j[by_later].tolist(), d[by_later].tolist()
    kept = np.ones(n, dtype=bool)
    leader = np.arange(n, dtype=np.int64)
    distance = np.zeros(n, dtype=np.int64)
    k = 0
    while k < len(j):  # later slices ascending; their earlier neighbours ascending
        later = j[k]
        while k < len(j) and j[k] == later:
            if kept[later] and kept[i[k]]:
                kept[later] = False
                leader[later], distance[later] = i[k], d[k]
            k += 1
    return pd.DataFrame({"volume_id": volume_id, "slice_index": slice_index, "kept": kept,
                         "leader_volume": volume_id[leader], "leader_slice": slice_index[leader],
                         "distance": distance})


def archive_scope(manifest: pd.DataFrame, threshold: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``--scope archive``: the greedy leader rule again over the slices every volume kept, in
    manifest order (volumes in input order, slices ascending), across volumes, by their dHash
    (:func:`archive_greedy`), so no two kept slices of the archive lie within
    ``threshold`` bits.

    Adds ``volume_kept`` (the per-volume pass) and ``leader_volume``; a slice dropped by the archive
    pass gets its archive leader's volume, slice and Hamming distance. A slice dropped by the
    per-volume pass keeps its leader there (``leader_volume`` = its own volume).
    """
    start = time.perf_counter()
    manifest = manifest.copy()
    manifest["volume_kept"] = manifest["kept"].to_numpy(copy=True)
    manifest["leader_volume"] = manifest["volume_id"]
    kept = manifest[manifest["kept"]]
    volumes = [VolumeCodes(vid, group["slice_index"].to_numpy(np.int64),
                           codes_from_hex(group["dhash"].tolist(), where=f"volume {vid}"))
               for vid, group in kept.groupby("volume_id", sort=False)]
    result = archive_greedy(volumes, threshold)  # rows in the order of ``kept`` (volumes are contiguous)
    dropped = ~result["kept"].to_numpy()
    rows = kept.index[dropped]
    manifest.loc[rows, "kept"] = False
    manifest.loc[rows, "leader"] = result["leader_slice"].to_numpy()[dropped].astype(np.int32)
    manifest.loc[rows, "leader_volume"] = result["leader_volume"].to_numpy()[dropped]
    manifest.loc[rows, "distance"] = result["distance"].to_numpy()[dropped].astype(np.float64)
    pairs = result[dropped].groupby(["volume_id", "leader_volume"], sort=False).size()
    return manifest, {"scope": "archive", "threshold": threshold, "kept_by_volumes": len(kept),
                      "dropped_across_volumes": int(dropped.sum()), "kept": int(manifest["kept"].sum()),
                      "volumes_with_drops": int(result[dropped]["volume_id"].nunique()),
                      "top_pairs": [{"volume": v, "leader_volume": lv, "slices": int(n)}
                                    for (v, lv), n in pairs.sort_values(ascending=False).head(20).items()],
                      "seconds": round(time.perf_counter() - start, 3)}
