"""Training data from a ctreduce export: the uint8 array store or the PNG folder.

Items are uint8 tensors (1, H, W); the method's transform turns them into views inside the
data-loader workers. The array store is opened lazily in each worker (a memory map), so
workers never receive a copy of the data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class ExportError(ValueError):
    """The export folder is missing, incomplete or corrupt."""


class SliceArrayDataset(Dataset):
    """``slices.npy`` (N, S, S) uint8 written by ``ctreduce export --format npy``."""

    def __init__(self, root: str | Path, transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        self.root = Path(root)
        self.path = self.root / "slices.npy"
        try:
            header = np.load(self.path, mmap_mode="r")
        except FileNotFoundError as exc:
            raise ExportError(f"{self.path}: missing; run 'ctreduce export RUN --format npy --out {root}'") from exc
        except (ValueError, OSError) as exc:
            raise ExportError(f"{self.path}: not a readable .npy array store ({exc})") from exc
        if header.dtype != np.uint8 or header.ndim != 3:
            raise ExportError(f"{self.path}: expected a (N, S, S) uint8 array, got {header.dtype} {header.shape}")
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
    """``images/*.png`` written by ``ctreduce export --format png`` (or any folder of PNGs)."""

    def __init__(self, root: str | Path, transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        self.root = Path(root)
        folder = self.root / "images" if (self.root / "images").is_dir() else self.root
        self.files = sorted(folder.glob("*.png"))
        if not self.files:
            raise ExportError(f"{folder}: no PNG images")
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
    """The dataset of an export folder: the array store when present, else the PNG folder."""
    root = Path(root)
    if not root.exists():
        raise ExportError(f"{root}: no such export folder")
    if (root / "slices.npy").exists():
        dataset = SliceArrayDataset(root, transform)
        index = root / "index.parquet"
        if index.exists():
            import pandas as pd

            rows = len(pd.read_parquet(index, columns=["row"]))
            if rows != len(dataset):
                raise ExportError(f"{root}: index.parquet has {rows} rows but slices.npy {len(dataset)}; "
                                  "the export is incomplete, export it again")
        return dataset
    return PngFolderDataset(root, transform)


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
    path = Path(root) / "export.json"
    return json.loads(path.read_text()) if path.exists() else {}
