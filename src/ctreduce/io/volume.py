"""The value types every reader returns: where a volume comes from, and the volume itself."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np


class VolumeError(Exception):
    """A volume (or one of its files) cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class VolumeSource:
    """A volume found on disk, described from headers only (no pixel data read).

    ``paths`` holds one file for single-file formats and every slice file of a DICOM series,
    already in anatomical order (ascending position along the slice normal). A multi-frame DICOM
    file is one volume: ``paths`` is that file and ``frames[i]`` the 0-based frame of slice ``i``.
    """

    volume_id: str
    format: str  # "dicom", "nifti" or "sitk"
    paths: tuple[str, ...]
    series_uid: str = ""
    modality: str = ""
    n_slices: int = 0
    rows: int = 0
    cols: int = 0
    spacing: tuple[float, float, float] = (float("nan"),) * 3  # (z, row, col) in mm
    z_mm: tuple[float, ...] = ()  # per-slice position along the normal, DICOM only
    warnings: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()  # DICOM only: SOPInstanceUID of each file in ``paths``
    frames: tuple[int, ...] = ()  # multi-frame DICOM only: frame index of each slice, in slice order

    @property
    def source(self) -> str:
        """One path that identifies the volume: the file, or the folder of a DICOM series."""
        if self.format == "dicom" and not self.frames:
            return str(_common_dir(self.paths))
        return self.paths[0]


@dataclass
class Volume:
    """A CT volume in Hounsfield units, slices in anatomical order.

    ``hu`` has shape (slices, rows, cols); its dtype is int16/int32 when the stored values and
    the rescale are integral (the usual CT case) and float32 otherwise, so a whole archive is
    never held as float64. ``z_mm[i]`` is the position of slice ``i`` along the slice normal and
    ``slice_sources[i]`` the file it came from (the volume file for single-file formats).
    """

    volume_id: str
    hu: np.ndarray
    spacing: tuple[float, float, float]
    z_mm: np.ndarray
    slice_sources: tuple[str, ...]
    modality: str = ""
    series_uid: str = ""
    format: str = ""
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise VolumeError(f"{self.volume_id}: expected a 3-D array, got shape {self.hu.shape}")
        if len(self.z_mm) != self.n_slices or len(self.slice_sources) != self.n_slices:
            raise VolumeError(f"{self.volume_id}: per-slice metadata does not match slice count")

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the readers' warnings about non-conformant values while reading one file.

    In an archive of 500k files they would flood the terminal; a file is either used or listed
    with the reason it cannot be.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _common_dir(paths: tuple[str, ...]):
    import os
    from pathlib import Path

    return Path(os.path.commonpath([str(Path(p).parent) for p in paths]))


def hu_array(raw: np.ndarray, slope: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Apply per-slice rescale (``raw * slope + intercept``) choosing the smallest exact dtype.

    ``raw`` is (slices, rows, cols); ``slope`` and ``intercept`` have one value per slice.
    Integral rescales stay integer (int16 when the result fits, else int32); anything else
    becomes float32.
    """
    slope = np.asarray(slope, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    integral = (
        np.issubdtype(raw.dtype, np.integer)
        and np.all(slope == np.round(slope))
        and np.all(intercept == np.round(intercept))
    )
    if integral and raw.dtype == np.int16 and raw.flags.owndata and np.all(slope == 1) and np.all(intercept == 0):
        return raw  # already HU in an array of its own (NRRD/NIfTI written in HU): no copy, no range check
    if integral:
        out = raw.astype(np.int32, copy=True)
        if np.any(slope != 1):
            out *= slope.astype(np.int32)[:, None, None]
        if np.any(intercept != 0):
            out += intercept.astype(np.int32)[:, None, None]
        lo, hi = (int(out.min()), int(out.max())) if out.size else (0, 0)
        if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
            return out.astype(np.int16)
        return out
    out = raw.astype(np.float32)
    out *= slope.astype(np.float32)[:, None, None]
    out += intercept.astype(np.float32)[:, None, None]
    return out
