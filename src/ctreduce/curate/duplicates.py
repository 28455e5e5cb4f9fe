"""Near-duplicate slices across the volumes of one or more reduction runs ("same scan twice").

Every manifest records each slice's 64-bit dHash (imagehash's ``dhash`` of the slice's 8-bit
image, hex), so the archive is not read again: :func:`find_duplicates` joins all slices of the
given runs within ``threshold`` bits (:class:`~ctreduce.reduction.hamming_index.HammingIndex`, exact) and
reports, per slice, its nearest slice in ANOTHER volume, and per pair of volumes how many slices
of each have a near-duplicate in the other. A volume stored twice (copied into two collections,
re-exported under new UIDs) shows as a pair where (nearly) every slice of both is matched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.dhash import codes_from_hex, is_dhash
from ..reduction.hamming_index import HammingIndex
from ..store.places import check_output_place
from ..store.run import RunFolder

DEFAULT_THRESHOLD = 6
# A volume pair is reported when at least this share of one volume's slices has a near-duplicate
# in the other: a rescan of the same patient or a neighbouring series matches a few slices by
# chance, a copy matches nearly all.
DEFAULT_MIN_SHARE = 0.5
_NONE = np.iinfo(np.int64).max
_SHIFT = 40  # best-match keys: distance << 40 | index (indices below 2**40)


class HashesUnavailable(ValueError):
    """A run's manifest records no 64-bit dHash of its slices."""


def hash_column(run: RunFolder, manifest: pd.DataFrame) -> str:
    """The manifest column holding each slice's 64-bit dHash: ``dhash`` (every manifest of this
    version), else ``hash`` of a run reduced with ``--hash dhash --hash-size 8``."""
    if "dhash" in manifest.columns:
        if manifest["dhash"].isna().any():
            missing = manifest.loc[manifest["dhash"].isna(), "volume_id"].iloc[0]
            raise HashesUnavailable(f"{run.path}: the manifest has no dhash for some slices (e.g. of volume "
                                    f"{missing}); rerun 'ctreduce reduce ... --out {run.path}' to complete it")
        return "dhash"
    settings = run.settings()
    if (settings.get("method") == "hash" and is_dhash(settings.get("hash"), settings.get("hash_size"))
            and "hash" in manifest.columns and manifest["hash"].notna().all()):
        return "hash"
    raise HashesUnavailable(
        f"{run.path}: its manifest records no 64-bit dHash of each slice (written by an older ctreduce, method "
        f"{settings.get('method')!r}); rerun the same 'ctreduce reduce' command with --overwrite to record it")


def manifest_codes(run_dir: str | os.PathLike, *, kept_only: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """A run's slices (volume_id, slice_index, kept, source, dhash; manifest order) and their
    uint64 codes; ``kept_only``: only the kept slices (what pre-training reads)."""
    run = RunFolder.open(run_dir)
    manifest = run.manifest()
    column = hash_column(run, manifest)
    if kept_only:
        manifest = manifest[manifest["kept"].astype(bool)]
    frame = pd.DataFrame({
        "volume_id": manifest["volume_id"].astype(str).to_numpy(),
        "slice_index": manifest["slice_index"].astype(np.int64).to_numpy(),
        "kept": manifest["kept"].astype(bool).to_numpy(),
        "source": manifest["source"].astype(str).to_numpy() if "source" in manifest.columns else "",
        "dhash": manifest[column].astype(str).to_numpy(),
    })
    return frame, codes_from_hex(frame["dhash"].tolist(), where=f"{run.path} manifest column {column!r}")


def distinct_runs(runs: Sequence[str | os.PathLike]) -> tuple[list[str | os.PathLike], list[str]]:
    """``runs`` with each folder once (links resolved: ``r1``, ``./r1`` and a link to it are one run),
    and a note for each one given again: searched twice, every slice would match its own copy."""
    seen: dict[str, str | os.PathLike] = {}
    repeated = []
    for run in runs:
        key = os.path.realpath(run)
        if key in seen:
            repeated.append(f"{run} is the same folder as {seen[key]}")
        else:
            seen[key] = run
    return list(seen.values()), repeated


def archive_inputs(runs: Sequence[str | os.PathLike]) -> list[str]:
    """The archives the runs were made from: what a curation output is never written into."""
    return [path for run in runs for path in RunFolder(run).inputs()]


def run_labels(runs: Sequence[str | os.PathLike]) -> list[str]:
    """How each run is named in the tables: its folder name, or its path when names repeat."""
    names = [Path(r).name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(Path(r)) for r in runs]


@dataclass(frozen=True)
class DuplicatesResult:
    """Per slice its nearest slice in another volume; per volume pair the matched shares."""

    slices: pd.DataFrame
    volume_pairs: pd.DataFrame
    meta: dict[str, Any]

    def write(self, out: str | os.PathLike) -> Path:
        from ..store.curation import DuplicatesFolder

        check_output_place(out, archive_inputs(self.meta["runs"]))
        return DuplicatesFolder.write(out, self.meta, self.slices, self.volume_pairs)


def find_duplicates(runs: Sequence[str | os.PathLike], *, threshold: int = DEFAULT_THRESHOLD,
                    min_share: float = DEFAULT_MIN_SHARE, kept_only: bool = False) -> DuplicatesResult:
    """Near-duplicates across volumes of ``runs`` (run folders of ``ctreduce reduce``).

    ``slices``: every slice (run, volume_id, slice_index, kept, source, dhash) with
    ``nearest_run``/``nearest_volume_id``/``nearest_slice_index``/``nearest_source`` and
    ``distance`` (bits) of its nearest slice in another volume (any run) within ``threshold``
    (ties: the first in run and manifest order); empty where there is none.

    ``volume_pairs``: volume pairs (a, b) where ``share_a`` (slices of a with a near-duplicate in
    b, over a's slices) or ``share_b`` reaches ``min_share``, with the matched counts and the
    number of slice pairs within the threshold; largest share first.

    A run folder given twice (in any spelling) is searched once; ``meta["repeated"]`` says so.
    """
    if not runs:
        raise ValueError("give at least one run folder")
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must lie in (0, 1], got {min_share}")
    start = time.perf_counter()
    runs, repeated = distinct_runs(runs)
    labels = run_labels(runs)
    frames, codes = [], []
    for label, run in zip(labels, runs, strict=True):
        frame, run_codes = manifest_codes(run, kept_only=kept_only)
        frame.insert(0, "run", label)
        frames.append(frame)
        codes.append(run_codes)
    slices = pd.concat(frames, ignore_index=True)
    all_codes = np.concatenate(codes) if codes else np.zeros(0, np.uint64)
    volume_of, volumes = pd.factorize(pd.MultiIndex.from_arrays([slices["run"], slices["volume_id"]]))
    volume_of = volume_of.astype(np.int64)
    best, matched, pair_counts = _join(all_codes, volume_of, len(volumes), threshold)
    slices = _with_nearest(slices, best)
    pairs = _volume_pairs(volumes, np.bincount(volume_of, minlength=len(volumes)), matched, pair_counts, min_share)
    meta = {
        "runs": [str(Path(r).resolve()) for r in runs], "labels": labels, "threshold": int(threshold),
        "min_share": float(min_share), "kept_only": bool(kept_only), "slices": int(len(slices)),
        "volumes": int(len(volumes)), "slices_with_duplicate": int(slices["distance"].notna().sum()),
        "volume_pairs": int(len(pairs)), "seconds": round(time.perf_counter() - start, 3), "repeated": repeated,
    }
    return DuplicatesResult(slices, pairs, meta)


def _join(codes: np.ndarray, volume_of: np.ndarray, n_volumes: int, threshold: int,
          ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """One pass over all cross-volume pairs within ``threshold``: each slice's best match key,
    the (slice, other volume) pairs matched, and the slice-pair count per ordered volume pair."""
    best = np.full(len(codes), _NONE, dtype=np.int64)
    matched, keys = [], []
    for i, j, d in HammingIndex(codes, threshold).iter_pairs():
        other = volume_of[i] != volume_of[j]
        i, j, d = i[other], j[other], d[other].astype(np.int64) << _SHIFT
        np.minimum.at(best, i, d | j)
        np.minimum.at(best, j, d | i)
        matched.append(np.unique(np.concatenate([i * n_volumes + volume_of[j], j * n_volumes + volume_of[i]])))
        keys.append(volume_of[i] * n_volumes + volume_of[j])
    hits = np.unique(np.concatenate(matched)) if matched else np.zeros(0, np.int64)
    pair_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    # unordered volume pairs: (min, max)
    a, b = pair_keys // n_volumes, pair_keys % n_volumes
    unordered, counts = np.unique(np.minimum(a, b) * n_volumes + np.maximum(a, b), return_counts=True)
    slice_volume = volume_of[hits // n_volumes] * n_volumes + hits % n_volumes
    return best, slice_volume, (unordered, counts)


def _with_nearest(slices: pd.DataFrame, best: np.ndarray) -> pd.DataFrame:
    found = best != _NONE
    index = np.where(found, best & ((1 << _SHIFT) - 1), 0)
    out = slices.copy()
    for column in ("run", "volume_id", "slice_index", "source"):
        values = slices[column].to_numpy()[index]
        out[f"nearest_{column}"] = pd.Series(values, dtype=slices[column].dtype).where(found)
    out["nearest_slice_index"] = out["nearest_slice_index"].astype("Int64")
    out["distance"] = pd.array(np.where(found, best >> _SHIFT, 0), dtype="Int16")
    out.loc[~found, "distance"] = pd.NA
    return out


def _volume_pairs(volumes: pd.MultiIndex, sizes: np.ndarray, matched: np.ndarray,
                  pair_counts: tuple[np.ndarray, np.ndarray], min_share: float) -> pd.DataFrame:
    n = len(volumes)
    directed, directed_counts = np.unique(matched, return_counts=True)  # (volume of slice, other volume)
    matched_count = dict(zip(directed.tolist(), directed_counts.tolist(), strict=True))
    rows = []
    for key, n_pairs in zip(*pair_counts, strict=True):
        a, b = int(key // n), int(key % n)
        ma, mb = matched_count.get(a * n + b, 0), matched_count.get(b * n + a, 0)
        share_a, share_b = ma / sizes[a], mb / sizes[b]
        if max(share_a, share_b) >= min_share:
            rows.append({"run_a": volumes[a][0], "volume_a": volumes[a][1], "run_b": volumes[b][0],
                         "volume_b": volumes[b][1], "slices_a": int(sizes[a]), "slices_b": int(sizes[b]),
                         "matched_a": int(ma), "matched_b": int(mb), "share_a": float(share_a),
                         "share_b": float(share_b), "slice_pairs": int(n_pairs)})
    columns = ["run_a", "volume_a", "run_b", "volume_b", "slices_a", "slices_b", "matched_a", "matched_b",
               "share_a", "share_b", "slice_pairs"]
    table = pd.DataFrame(rows, columns=columns)
    if len(table):
        table["_share"] = table[["share_a", "share_b"]].max(axis=1)
        table = table.sort_values(["_share", "run_a", "volume_a", "run_b", "volume_b"],
                                  ascending=[False, True, True, True, True]).drop(columns="_share")
    return table.reset_index(drop=True)
