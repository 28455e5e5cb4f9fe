"""A downstream classification task in memory: three splits of (image, label, name), class names, validation.

Every loader (:mod:`.covid_ct`, :mod:`.medmnist`, :mod:`.folder`, dispatched by :func:`.load.load_task`)
returns a validated :class:`DownstreamData`: images are uint8 grey arrays (H, W) (sizes may differ between
images), labels int64 in 0..K-1, ``classes[k]`` names label k. Problems are reported as
:class:`~ctreduce.tasks.spec.DataError` naming the offending file or folder, before any training starts.
Nothing here needs torch: ``ctreduce.downstream.datasets.ImageDataset`` wraps a split for a ``DataLoader``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.images import read_image_uint8
from .spec import DataError

SPLITS = ("train", "val", "test")


class DataWarning(UserWarning):
    """A downstream data set is usable but suspicious (e.g. a class absent from the test split)."""


@dataclass
class Split:
    """One split: ``images[i]`` (uint8 (H, W)) has label ``labels[i]`` and name ``names[i]``
    (its path relative to the data root, or ``split/index`` for array formats)."""

    images: list[np.ndarray] | np.ndarray
    labels: np.ndarray
    names: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if self.labels.ndim == 2 and self.labels.shape[1] == 1:
            self.labels = self.labels[:, 0]
        self.names = list(self.names)
        if isinstance(self.images, list) and any(image is None for image in self.images):  # skipped: unreadable
            keep = [k for k, image in enumerate(self.images) if image is not None]
            self.images, self.labels = [self.images[k] for k in keep], self.labels[keep]
            self.names = [self.names[k] for k in keep]

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, n_classes: int) -> list[int]:
        """Number of images per class 0..n_classes-1."""
        return np.bincount(self.labels.astype(np.int64), minlength=n_classes)[:n_classes].tolist()


@dataclass
class DownstreamData:
    """A downstream task: three splits, class names (``classes[k]`` is label k) and a name."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    name: str
    source: str = ""  # the file or folder it was read from
    notes: list[str] = field(default_factory=list)  # how it was split, for the run's manifest

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def validate(self) -> DownstreamData:
        """Raise :class:`DataError` unless the task is usable; return ``self``.

        Checked: at least two distinct class names; per split equal numbers of images, labels and
        names, not empty, integer labels in 0..K-1, images 2-D uint8; every class has training
        images. A class absent from val or test only warns (:class:`DataWarning`).
        """
        where = f"{self.name} ({self.source})" if self.source else self.name
        classes = [str(c) for c in self.classes]
        if len(classes) < 2:
            raise DataError(f"{where}: a classification task needs at least 2 classes, got {classes}")
        if len(set(classes)) != len(classes):
            raise DataError(f"{where}: duplicate class names {classes}")
        k = len(classes)
        for split_name, split in self.splits().items():
            n_img, n_lab, n_names = len(split.images), len(split.labels), len(split.names)
            if not n_img == n_lab == n_names:
                raise DataError(f"{where}: split '{split_name}' has {n_img} images, {n_lab} labels and "
                                f"{n_names} names; they must match")
            if n_img == 0:
                raise DataError(f"{where}: split '{split_name}' is empty")
            labels = split.labels
            if labels.ndim != 1:
                raise DataError(f"{where}: split '{split_name}' labels must be 1-D, got shape {labels.shape}")
            if not np.issubdtype(labels.dtype, np.integer):
                if not np.issubdtype(labels.dtype, np.floating) or np.any(np.mod(labels, 1) != 0):
                    raise DataError(f"{where}: split '{split_name}' labels must be integers, got {labels.dtype}")
            bad = (labels < 0) | (labels >= k)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"{where}: split '{split_name}' has label {labels[i]} ({split.names[i]}) out of "
                                f"range for {k} classes {classes}")
            split.labels = labels.astype(np.int64)
            if isinstance(split.images, np.ndarray):
                if split.images.ndim != 3 or split.images.dtype != np.uint8:
                    raise DataError(f"{where}: split '{split_name}' images must be a (N, H, W) uint8 array, "
                                    f"got {split.images.dtype} {split.images.shape}")
                continue
            for image, name in zip(split.images, split.names, strict=True):
                if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
                    shape = getattr(image, "shape", None)
                    raise DataError(f"{where}: {name} must be a 2-D uint8 array, got {type(image).__name__} "
                                    f"{getattr(image, 'dtype', '')} {shape}")
        for c, cls in enumerate(classes):
            total = sum(int(np.sum(s.labels == c)) for s in self.splits().values())
            if total == 0:
                raise DataError(f"{where}: class '{cls}' (label {c}) has no images")
            if not np.any(self.train.labels == c):
                raise DataError(f"{where}: class '{cls}' (label {c}) has no training images")
        for c, cls in enumerate(classes):
            for split_name in ("val", "test"):
                if not np.any(self.splits()[split_name].labels == c):
                    warnings.warn(f"{where}: class '{cls}' is absent from the {split_name} split", DataWarning,
                                  stacklevel=2)
        self.classes = classes
        return self

    def summary(self) -> dict[str, Any]:
        """Name, source, classes and per-split class counts (JSON-serialisable)."""
        k = len(self.classes)
        return {"name": self.name, "source": self.source, "classes": list(self.classes),
                "counts": {s: split.counts(k) for s, split in self.splits().items()},
                "notes": list(self.notes)}


def read_images(paths: Sequence[Path], skipped: list[dict[str, str]] | None = None) -> list[np.ndarray | None]:
    """Every image. The unreadable ones are one DataError naming each; with ``skipped``, they are None
    instead (a Split leaves them out) and listed there with the reason."""
    images: list[np.ndarray | None] = []
    bad: list[dict[str, str]] = []
    for path in paths:
        try:
            images.append(read_image_uint8(path))
        except (OSError, ValueError) as exc:
            images.append(None)
            bad.append({"file": str(path), "error": str(exc)})
    if bad and skipped is None:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} unreadable image(s): " + "; ".join(b["error"] for b in bad[:5]) + more)
    if skipped is not None:
        skipped.extend(bad)
    return images
