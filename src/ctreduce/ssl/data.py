"""Training data from a ctreduce export: the uint8 array store or the PNG folder.

Items are uint8 tensors (1, H, W); the method's transform turns them into views inside the
data-loader workers. The array store is opened lazily in each worker (a memory map), so
workers never receive a copy of the data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..store.export import ARRAY, INDEX, META, ExportError, ExportStore
from ..store.files import read_json

__all__ = ["ExportError", "PngFolderDataset", "SliceArrayDataset", "export_info", "intensity_stats", "open_export"]


class SliceArrayDataset(Dataset):
    """The (N, S, S) uint8 array of an npy export (``ctreduce export --format npy``)."""

    def __init__(self, path: str | Path, transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        self.path = Path(path)
        header = np.load(self.path, mmap_mode="r")
        self.shape = tuple(int(v) for v in header.shape)
        self.transform = transform
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def raw(self, index: int) -> torch.Tensor:
        if self._array is None:  # opened per worker process
            self._array = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._array[index]))[None]

    def __getitem__(self, index: int) -> Any:
        x = self.raw(index)
        return self.transform(x) if self.transform is not None else x

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        return state


class PngFolderDataset(Dataset):
    """PNG images: those listed by a png export, or every PNG of a plain folder."""

    def __init__(self, files: list[Path], transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def raw(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("L"))
        except OSError as exc:
            raise ExportError(f"{path}: unreadable image ({exc})") from exc
        return torch.from_numpy(array.copy())[None]

    def __getitem__(self, index: int) -> Any:
        x = self.raw(index)
        return self.transform(x) if self.transform is not None else x


def open_export(root: str | Path, transform: Callable[[torch.Tensor], Any] | None = None) -> Dataset:
    """The dataset of an export folder, checked complete and consistent before any training.

    A folder with any trace of a ctreduce export must be a whole one (``ExportStore.open``);
    a plain folder of PNGs from elsewhere (no ctreduce files at all) is read as it is.
    """
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root}: no such export folder")
    if any((root / name).exists() for name in (META, INDEX, ARRAY)):
        store = ExportStore.open(root)
        if store.format == "npy":
            return SliceArrayDataset(store.array_path, transform)
        return PngFolderDataset(store.image_paths(), transform)
    files = sorted(root.glob("*.png"))
    if not files:
        raise ExportError(f"{root}: neither a ctreduce export (no {META}) nor a folder of PNG images")
    return PngFolderDataset(files, transform)


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
