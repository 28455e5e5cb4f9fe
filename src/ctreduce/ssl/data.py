"""Training data from a ctreduce export, whatever its format (``ctreduce.store.export_formats`` reads it).

Items are uint8 tensors (1, H, W); the method's transform turns them into views inside the
data-loader workers. A format's files are opened lazily in each worker (npy: a memory map), so
workers never receive a copy of the data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..store.export import MARKERS, META, ExportError, ExportStore
from ..store.export_formats import ImageFiles, Slices
from ..store.files import read_json

__all__ = ["ExportError", "SliceDataset", "Timed", "export_info", "intensity_stats", "open_export"]


class Timed(NamedTuple):
    """An item with the seconds its loader worker took to read and transform it; collated, a batch of items with
    a tensor of their seconds (the loader's own pace, apart from the time the training loop waits for it)."""

    item: Any
    seconds: float | torch.Tensor


class SliceDataset(Dataset):
    """The slices of an export (any format: ``ExportStore.slices``) or of a plain folder of PNGs, as uint8
    tensors (1, H, W) through ``transform``; ``timed``: each item a :class:`Timed`."""

    def __init__(self, slices: Slices, transform: Callable[[torch.Tensor], Any] | None = None,
                 version: int | None = None, timed: bool = False) -> None:
        self.slices = slices
        self.transform = transform
        self.version = version  # the export's index version read (npy), recorded by the pre-training run
        self.timed = timed

    def __len__(self) -> int:
        return len(self.slices)

    def raw(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.slices[index])[None]

    def __getitem__(self, index: int) -> Any:
        start = time.perf_counter()
        x = self.raw(index)
        item = self.transform(x) if self.transform is not None else x
        return Timed(item, time.perf_counter() - start) if self.timed else item


def open_export(root: str | Path, transform: Callable[[torch.Tensor], Any] | None = None, *,
                timed: bool = False) -> SliceDataset:
    """The dataset of an export folder, checked complete and consistent before any training.

    A folder with any trace of a ctreduce export must be a whole one (``ExportStore.open``);
    a plain folder of PNGs from elsewhere (no ctreduce files at all) is read as it is.
    """
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root}: no such export folder")
    if any((root / name).exists() for name in MARKERS):
        store = ExportStore.open(root)
        return SliceDataset(store.slices(), transform, store.version, timed)
    files = sorted(root.glob("*.png"))
    if not files:
        raise ExportError(f"{root}: neither a ctreduce export (no {META}) nor a folder of PNG images")
    return SliceDataset(ImageFiles(files), transform, timed=timed)


def intensity_stats(dataset: Dataset, max_items: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of pixel values on [0, 1] over up to ``max_items`` slices."""
    n = len(dataset)
    rng = np.random.default_rng(seed)
    picks = rng.choice(n, size=min(n, max_items), replace=False)
    total = total_sq = count = 0.0
    for i in picks:
        x = dataset.raw(int(i)).double() / 255.0
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.numel()
    mean = total / count
    std = max((total_sq / count - mean * mean) ** 0.5, 1e-6)
    return mean, std


def export_info(root: str | Path) -> dict[str, Any]:
    """The settings and counts of a ctreduce export ({} for a plain image folder)."""
    path = Path(root) / META
    return read_json(path) if path.exists() else {}
