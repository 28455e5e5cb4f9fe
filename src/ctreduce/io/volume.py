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
    allow_gaps: bool = False  # DICOM: scanned with gaps allowed, so reading it leaves out unreadable slices

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
    ``slice_index[i]`` is that slice's index in the scanned volume (``VolumeSource`` order): 0..n-1,
    except where a slice that could not be read was left out (``allow_gaps``) or a subset was read.
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
    slice_index: np.ndarray = None  # type: ignore[assignment]  # None: 0..n-1

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise VolumeError(f"{self.volume_id}: expected a 3-D array, got shape {self.hu.shape}")
        if self.slice_index is None:
            self.slice_index = np.arange(self.n_slices, dtype=np.int64)
        self.slice_index = np.asarray(self.slice_index, dtype=np.int64)
        if (len(self.z_mm) != self.n_slices or len(self.slice_sources) != self.n_slices
                or len(self.slice_index) != self.n_slices):
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


# Rows of slices converted at a time when a new array is filled: bounded temporaries.
_BLOCK_BYTES = 1 << 20


def hu_array(raw: np.ndarray, slope: np.ndarray, intercept: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Apply per-slice rescale (``raw * slope + intercept``) choosing the smallest exact dtype.

    ``raw`` is (slices, rows, cols); ``slope`` and ``intercept`` have one value per slice.
    Integral rescales stay integer (int16 when the HU fit, else int32, float32 beyond int32);
    anything else becomes float32.

    Memory: the result is the only volume-sized allocation (temporaries are a few slices). With
    ``in_place`` the caller hands ``raw`` over (writable, referenced nowhere else): int16 HU from
    16-bit stored values and float32 HU from float32 values are then computed in it, so reading a
    CT costs one copy of it. 16-bit arithmetic modulo 2**16 is exact there because the HU range,
    checked first from each slice's extremes, fits int16.
    """
    slope = np.asarray(slope, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    in_place = in_place and raw.flags.c_contiguous and raw.flags.writeable and raw.dtype.isnative
    integral = (
        np.issubdtype(raw.dtype, np.integer)
        and np.all(slope == np.round(slope))
        and np.all(intercept == np.round(intercept))
    )
    identity = bool(np.all(slope == 1) and np.all(intercept == 0))
    if integral and raw.dtype == np.int16 and identity:
        return raw if in_place else raw.copy()  # already HU (NRRD/NIfTI written in HU): no range pass
    if not integral:
        dtype = np.dtype(np.float32)
    elif not raw.size:
        dtype = np.dtype(np.int16)
    else:
        lo, hi = raw.min(axis=(1, 2)).astype(np.float64), raw.max(axis=(1, 2)).astype(np.float64)
        ends = np.concatenate([lo * slope + intercept, hi * slope + intercept])  # exact below 2**53
        dtype = next((np.dtype(t) for t in (np.int16, np.int32)
                      if np.iinfo(t).min <= ends.min() and ends.max() <= np.iinfo(t).max), np.dtype(np.float32))
    if in_place and dtype == np.int16 and raw.dtype.itemsize == 2:
        words = raw.view(np.uint16)
        uniform = np.all(slope == slope[0]) and np.all(intercept == intercept[0])
        groups = ([(slice(None), slope[0], intercept[0])] if uniform
                  else list(zip(range(len(slope)), slope, intercept, strict=True)))
        for where, s, b in groups:
            if s != 1:
                np.multiply(words[where], np.uint16(int(s) % (1 << 16)), out=words[where])
            if b:
                np.add(words[where], np.uint16(int(b) % (1 << 16)), out=words[where])
        return raw.view(np.int16)
    out = raw if in_place and raw.dtype == dtype == np.float32 else np.empty(raw.shape, dtype=dtype)
    work = np.float32 if dtype.kind == "f" else np.int64
    step = max(1, _BLOCK_BYTES // max(1, raw[0].nbytes if len(raw) else 1))
    for start in range(0, len(raw), step):
        part = slice(start, start + step)
        values = raw[part].astype(work)
        values *= slope[part].astype(work)[:, None, None]
        values += intercept[part].astype(work)[:, None, None]
        out[part] = values
    return out
