"""A plug-in written as an outside package writes one: a reduction measure, a pre-training method and an export
format, each one class (or one registration) handed to ctreduce's own registry. No file of ctreduce changes.

ctreduce finds it by its entry point (group ``ctreduce.plugins``) or by ``CTREDUCE_PLUGINS=ctreduce_toy``;
``tests/test_plugins.py`` runs it both ways. Importing it loads no torch: the training code is in
:mod:`ctreduce_toy.ssl_method`, named here as a string and imported only when a run starts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from ctreduce.config import Optimiser, PretrainMethod, register_pretrain_method
from ctreduce.reduction.measures import Measure, Prepared, register_measure
from ctreduce.store.export_formats import ExportError, ExportFormat, register_export_format

# --- a reduction measure: ctreduce reduce --method toy ----------------------------------------------


@register_measure
class ToyMeasure(Measure):
    """Mean absolute grey-level difference of two slices' 16 x 16 thumbnails (nearest samples)."""

    name = "toy"
    unit = "mean absolute grey-level difference"
    higher_is_similar = False
    default_threshold = 8.0
    threshold_range = (0.0, 255.0)

    def params(self) -> dict[str, Any]:
        return {"thumbnail": 16}

    def prepare(self, u8: np.ndarray) -> Prepared:
        rows = np.linspace(0, u8.shape[1] - 1, 16).astype(int)
        cols = np.linspace(0, u8.shape[2] - 1, 16).astype(int)
        thumbs = u8[:, rows][:, :, cols].astype(np.float32)
        return Prepared(lambda ref, others: np.abs(thumbs[others] - thumbs[ref]).mean(axis=(1, 2)))


# --- a pre-training method: ctreduce pretrain --method toy ------------------------------------------


class ToySettings(BaseModel):
    """``toy.*``: the projection's width and the crops' scale."""

    model_config = ConfigDict(extra="forbid")

    projection_dim: int = 32
    crop_scale: tuple[float, float] = (0.5, 1.0)


register_pretrain_method(PretrainMethod(
    "toy", ToySettings, "ctreduce_toy.ssl_method:ToyMethod",
    Optimiser("adamw", 1e-3, 1e-4),
    presets={"cpu": {"warmup_epochs": 0}},
    section_presets={"cpu": {"projection_dim": 8}},
))


# --- an export format: ctreduce export --format toy --------------------------------------------------

FOLDER = "pgm"


def pgm(image: np.ndarray) -> bytes:
    """One 8-bit grey image as a binary PGM (netpbm P5)."""
    return f"P5\n{image.shape[1]} {image.shape[0]}\n255\n".encode() + np.ascontiguousarray(image).tobytes()


class PgmFiles:
    """The slices of a toy export, read back from their PGM files."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> np.ndarray:
        magic, width, height, depth, pixels = self.paths[row].read_bytes().split(maxsplit=4)
        if magic != b"P5" or depth != b"255":
            raise ExportError(f"{self.paths[row]}: not an 8-bit binary PGM")
        return np.frombuffer(pixels, np.uint8).reshape(int(height), int(width)).copy()


@register_export_format
class ToyFormat(ExportFormat):
    """One binary PGM per slice at native size under ``pgm/``, named in the index's ``file`` column."""

    name = "toy"
    columns = ("file",)

    def start(self, stage: Path) -> None:
        (stage / FOLDER).mkdir()

    def encode(self, stage: Path, u8: np.ndarray, records: list[dict[str, Any]]) -> None:
        for image, record in zip(u8, records, strict=True):
            key = f"{record['volume_id']}\0{record['slice_index']}".encode()
            record["file"] = f"{FOLDER}/{hashlib.sha1(key).hexdigest()[:16]}.pgm"
            (stage / record["file"]).write_bytes(pgm(image))

    def check(self, root: Path, meta: dict[str, Any], index: pd.DataFrame) -> None:
        missing = [name for name in index["file"] if not (root / name).is_file()]
        if missing:
            raise ExportError(f"{root}: {len(missing)} PGM file(s) of the index are missing, e.g. {missing[0]}")

    def slices(self, root: Path, index: pd.DataFrame) -> PgmFiles:
        return PgmFiles([root / name for name in index["file"]])
