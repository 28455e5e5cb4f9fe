"""A task's split as a torch dataset (:class:`ImageDataset`); the task data itself is :mod:`ctreduce.tasks`'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..tasks.data import Split
from ..tasks.spec import DataError


class ImageDataset(Dataset):
    """A :class:`~ctreduce.tasks.data.Split` as a torch dataset: item i is ``(transform(x), label)`` with ``x``
    a uint8 tensor (1, H, W) (``x`` itself without a transform) and ``label`` a Python int."""

    def __init__(self, split: Split, transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        if len(split.images) != len(split.labels):
            raise DataError(f"split has {len(split.images)} images but {len(split.labels)} labels")
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.labels)

    @property
    def targets(self) -> list[int]:
        return [int(v) for v in self.split.labels]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = np.array(self.split.images[index], dtype=np.uint8, copy=True)
        x = torch.from_numpy(image)[None]
        label = int(self.split.labels[index])
        return (self.transform(x) if self.transform is not None else x), label
