"""A plug-in that kills the process working on one volume, as a reader crashing in C on a malformed file
or the OOM killer would: ``tests/test_ray_cluster.py`` checks that a Ray worker dying on a volume is
recorded as that volume's error. Only worker processes load it (``CTREDUCE_PLUGINS`` of the Ray nodes
and of the command that drives them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ctreduce.reduction.measures import HashMeasure, Prepared, register_measure
from ctreduce.store.export_formats import PngFormat, register_export_format

POISON_SLICES = 13  # ``--method poison``: a volume of this many slices kills its worker, the others are hashed
POISON_ID = "poison"  # ``--format poison``: a volume whose id holds this kills its worker, the others are PNGs


@register_measure
class PoisonMeasure(HashMeasure):
    """The paper's hash, except on a volume of ``POISON_SLICES`` slices."""

    name = "poison"
    chunkable = False

    def prepare(self, u8: np.ndarray) -> Prepared:
        if len(u8) == POISON_SLICES:
            os._exit(70)
        return super().prepare(u8)


@register_export_format
class PoisonFormat(PngFormat):
    """PNG, except for a volume whose id holds ``POISON_ID``."""

    name = "poison"

    def encode(self, stage: Path, u8: np.ndarray, records: list[dict[str, Any]]) -> None:
        if any(POISON_ID in record["volume_id"] for record in records):
            os._exit(70)
        return super().encode(stage, u8, records)
