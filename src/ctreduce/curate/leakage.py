"""Leakage: downstream evaluation images that also sit in the pre-training data.

A test image that the backbone saw during pre-training (the same slice, perhaps resized, as
COVID-CT's images are) inflates the downstream metric. :func:`find_leakage` hashes every image
of a task's train, val and test splits with ctreduce's dHash (imagehash's ``dhash`` of the
image's 8-bit grey pixels as the loader returns them: dHash shrinks to 9x8 first, so a resized
copy keeps its hash up to a few bits) and finds its nearest pre-training slice within the
threshold, and for val and test images their nearest training image.

The pre-training data is either a reduction RUN, whose KEPT slices are what ``ctreduce
pretrain`` trains on (their hashes come from the manifest, nothing is read again), or an EXPORT
(``ctreduce export``), whose stored images are hashed as stored, in any format (npy rows resized and
padded, PNGs, a plug-in's).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.dhash import codes_from_bits, hex_from_codes
from ..reduction import hashing
from ..reduction.hamming_index import HammingIndex
from ..store.export import META as EXPORT_META
from ..store.export import ExportStore
from ..store.places import check_output_place
from ..store.run import MANIFEST, RunFolder
from .duplicates import DEFAULT_THRESHOLD, manifest_codes

if TYPE_CHECKING:
    from ..tasks.data import DownstreamData

SPLITS = ("train", "val", "test")
_HASH_BATCH = 4096  # images hashed per stack: bounds the float64 copy of a batch


def image_codes(images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """uint64 dHash codes of uint8 grey images (any sizes), exactly ``reduction.hashing.dhash``:
    images of one shape are hashed as one stack."""
    codes = np.zeros(len(images), dtype=np.uint64)
    if isinstance(images, np.ndarray) and images.ndim == 3:
        groups = {images.shape[1:]: np.arange(len(images))}
    else:
        shapes: dict[tuple[int, ...], list[int]] = {}
        for k, image in enumerate(images):
            shapes.setdefault(np.shape(image), []).append(k)
        groups = {shape: np.asarray(idx) for shape, idx in shapes.items()}
    for shape, idx in groups.items():
        if len(shape) != 2:
            raise ValueError(f"images must be 2-D grey arrays, got shape {shape}")
        for lo in range(0, len(idx), _HASH_BATCH):
            part = idx[lo:lo + _HASH_BATCH]
            stack = np.stack([np.asarray(images[k], dtype=np.uint8) for k in part])
            codes[part] = codes_from_bits(hashing.pack(hashing.dhash_bits(stack)))
    return codes


@dataclass(frozen=True)
class PretrainCodes:
    """The pre-training slices (volume_id, slice_index, source) and their codes."""

    kind: str  # "run" or "export"
    path: Path
    slices: pd.DataFrame
    codes: np.ndarray


def pretrain_codes(path: str | os.PathLike) -> PretrainCodes:
    """The slices pre-training reads from ``path``: a run folder (its kept slices, hashes from the
    manifest) or an export folder (its images, hashed here)."""
    path = Path(path)
    if (path / EXPORT_META).exists():
        store = ExportStore.open(path)
        images = store.slices()
        codes = np.concatenate([image_codes([images[k] for k in range(lo, min(lo + _HASH_BATCH, len(images)))])
                                for lo in range(0, len(images), _HASH_BATCH)] or [np.zeros(0, np.uint64)])
        slices = store.index[["volume_id", "slice_index", "source"]].reset_index(drop=True)
        return PretrainCodes("export", path, slices, codes)
    if (path / MANIFEST).exists():
        frame, codes = manifest_codes(path, kept_only=True)
        return PretrainCodes("run", path, frame[["volume_id", "slice_index", "source"]].reset_index(drop=True), codes)
    raise ValueError(f"{path}: neither a run folder ({MANIFEST}) nor an export folder ({EXPORT_META}); give the "
                     "--out folder of 'ctreduce reduce' or of 'ctreduce export'")


@dataclass(frozen=True)
class LeakageResult:
    """Per task image its nearest pre-training slice (and, for val/test, training image) within
    the threshold; ``meta`` holds the counts."""

    images: pd.DataFrame
    meta: dict[str, Any]

    @property
    def leaked(self) -> dict[str, int]:
        """Images per split within the threshold of a pre-training slice."""
        return {s: int(self.meta["splits"][s]["leaked"]) for s in SPLITS}

    def summary(self) -> dict[str, Any]:
        """What finetune/experiment record next to the metrics (JSON-serialisable)."""
        return {"pretrain": self.meta["pretrain"], "pretrain_kind": self.meta["pretrain_kind"],
                "threshold": self.meta["threshold"], "leaked": self.leaked,
                "images": {s: int(self.meta["splits"][s]["images"]) for s in SPLITS},
                "val_in_train": self.meta["val_in_train"], "test_in_train": self.meta["test_in_train"]}

    @property
    def unreadable(self) -> list[dict[str, str]]:
        """Task images that could not be read (file, error): left out of the search."""
        return list(self.meta.get("unreadable", []))

    def write(self, out: str | os.PathLike) -> Path:
        from ..store.curation import LeakageFolder

        check_output_place(out, leakage_inputs(self.meta["pretrain"], self.meta.get("task_paths", [])))
        return LeakageFolder.write(out, self.meta, self.images)


def leakage_inputs(pretrain: str | os.PathLike, task_paths: list[str]) -> list[str]:
    """What a leakage search reads, so never writes into: the task's files and folders, and an export
    (a run folder is ctreduce's own, so its archive instead)."""
    pretrain = Path(pretrain)
    source = RunFolder(pretrain).inputs() if (pretrain / MANIFEST).exists() else [str(pretrain)]
    return [*task_paths, *source]


def find_leakage(pretrain: str | os.PathLike, task: str | os.PathLike | dict[str, Any], *,
                 threshold: int = DEFAULT_THRESHOLD) -> LeakageResult:
    """Leakage of ``task`` (a path as ``--task`` takes, or a task spec) against ``pretrain``.

    ``images`` has one row per task image (split, name, dhash), its nearest pre-training slice
    within ``threshold`` bits (``nearest_volume_id``, ``nearest_slice_index``, ``nearest_source``,
    ``distance``; ties: first in manifest or export order; empty when none) and ``leaked``; val
    and test rows also their nearest training image (``train_nearest``, ``train_distance``) and
    ``in_train``. Task images that cannot be read are left out and listed (``unreadable``).
    """
    from ..tasks.load import load_task
    from ..tasks.spec import task_paths, task_source, task_spec_for

    start = time.perf_counter()
    spec = dict(task) if isinstance(task, dict) else task_spec_for(task)
    skipped: list[dict[str, str]] = []
    data = load_task(spec, skipped=skipped)
    return leakage_of(data, pretrain, threshold=threshold, task_source=task_source(spec) or data.source,
                      started=start, unreadable=skipped, task_paths=task_paths(spec))


def leakage_of(data: DownstreamData, pretrain: str | os.PathLike, *, threshold: int = DEFAULT_THRESHOLD,
               task_source: str = "", started: float | None = None, unreadable: list[dict[str, str]] | None = None,
               task_paths: list[str] | None = None) -> LeakageResult:
    """:func:`find_leakage` of a task already loaded (``finetune`` and ``experiment`` hold one)."""
    start = time.perf_counter() if started is None else started
    source = pretrain_codes(pretrain)
    split_codes = {name: image_codes(split.images) for name, split in data.splits().items()}
    frame = leakage_table(split_codes, {n: s.names for n, s in data.splits().items()}, source, threshold)
    meta = {
        "task": data.name, "task_source": task_source or data.source,
        "pretrain": str(source.path.resolve()), "pretrain_kind": source.kind,
        "pretrain_slices": int(len(source.codes)), "threshold": int(threshold),
        "splits": {s: {"images": int((frame["split"] == s).sum()),
                       "leaked": int(frame.loc[frame["split"] == s, "leaked"].sum())} for s in SPLITS},
        "val_in_train": int(frame.loc[frame["split"] == "val", "in_train"].sum()),
        "test_in_train": int(frame.loc[frame["split"] == "test", "in_train"].sum()),
        "seconds": round(time.perf_counter() - start, 3), "unreadable": list(unreadable or []),
        "task_paths": list(task_paths if task_paths is not None else [data.source] if data.source else []),
    }
    return LeakageResult(frame, meta)


def leakage_table(split_codes: dict[str, np.ndarray], names: dict[str, list[str]], source: PretrainCodes,
                  threshold: int) -> pd.DataFrame:
    """The per-image table of :func:`find_leakage` from the images' codes."""
    split = np.concatenate([np.full(len(split_codes[s]), s, dtype=object) for s in SPLITS])
    codes = np.concatenate([split_codes[s] for s in SPLITS])
    nearest, distance = HammingIndex(source.codes, threshold).nearest_within(codes)
    found = nearest >= 0
    at = np.where(found, nearest, 0)
    frame = pd.DataFrame({"split": split, "name": [n for s in SPLITS for n in names[s]],
                          "dhash": hex_from_codes(codes)})
    for column in ("volume_id", "slice_index", "source"):
        values = source.slices[column].to_numpy()[at] if len(source.slices) else np.zeros(len(at), object)
        frame[f"nearest_{column}"] = pd.Series(values, dtype=object).where(found)
    frame["nearest_slice_index"] = pd.array(frame["nearest_slice_index"], dtype="Int64")
    frame["distance"] = pd.array(np.where(found, distance, 0), dtype="Int16")
    frame.loc[~found, "distance"] = pd.NA
    frame["leaked"] = found
    train_index = HammingIndex(split_codes["train"], threshold)
    train_names = np.asarray(names["train"], dtype=object)
    frame["train_nearest"] = pd.Series([None] * len(frame), dtype=object)
    frame["train_distance"] = pd.array([pd.NA] * len(frame), dtype="Int16")
    frame["in_train"] = False
    for s in ("val", "test"):
        rows = np.flatnonzero(split == s)
        near, dist = train_index.nearest_within(split_codes[s])
        hit = near >= 0
        frame.loc[rows[hit], "train_nearest"] = train_names[near[hit]]
        frame.loc[rows[hit], "train_distance"] = dist[hit].astype(np.int16)
        frame.loc[rows, "in_train"] = hit
    return frame
