"""DICOM series: group files by SeriesInstanceUID, order slices along the normal, read HU."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .volume import Volume, VolumeError, VolumeSource, hu_array

# Tags read during discovery; reading only these keeps a scan of 500k files fast.
_HEADER_TAGS = [
    "SOPClassUID",
    "Modality",
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "InstanceNumber",
]

# A position step larger than this multiple of the median step means a slice is missing.
GAP_FACTOR = 1.5
# Positions closer than this (mm) are duplicates.
DUPLICATE_TOL_MM = 1e-3


@dataclass(frozen=True)
class DicomHeader:
    path: str
    series_uid: str
    modality: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    cols: int
    frames: int


def read_header(path: str | Path) -> DicomHeader:
    """Read the discovery tags of one file; raises VolumeError when it is not usable DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InvalidDicomError as exc:
        raise VolumeError(f"{path}: not a DICOM file ({exc})") from exc
    except Exception as exc:  # truncated or corrupt header
        raise VolumeError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not uid:
        raise VolumeError(f"{path}: DICOM file without SeriesInstanceUID")
    if "Rows" not in ds or "Columns" not in ds:
        raise VolumeError(f"{path}: DICOM file holds no image (no Rows/Columns)")

    def floats(name: str) -> tuple[float, ...] | None:
        value = ds.get(name)
        if value is None or value == "":
            return None
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            return None

    return DicomHeader(
        path=str(path),
        series_uid=uid,
        modality=str(ds.get("Modality", "") or "").upper(),
        position=floats("ImagePositionPatient"),  # type: ignore[arg-type]
        orientation=floats("ImageOrientationPatient"),
        pixel_spacing=floats("PixelSpacing"),  # type: ignore[arg-type]
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
    )


def group_series(headers: Iterable[DicomHeader]) -> dict[str, list[DicomHeader]]:
    series: dict[str, list[DicomHeader]] = defaultdict(list)
    for header in headers:
        series[header.series_uid].append(header)
    return dict(series)


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:6])
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm == 0:
        raise ValueError("degenerate ImageOrientationPatient")
    return normal / norm


def order_series(
    volume_id: str, headers: list[DicomHeader], *, allow_gaps: bool = False
) -> VolumeSource:
    """Order one series along its slice normal and check it; raises VolumeError when unusable."""
    first = headers[0]
    if any(h.frames > 1 for h in headers):
        raise VolumeError(
            f"{first.path}: multi-frame (enhanced) DICOM is not supported; convert the series "
            "to single-frame files or NIfTI"
        )
    shapes = {(h.rows, h.cols) for h in headers}
    if len(shapes) > 1:
        raise VolumeError(f"{_folder(headers)}: series {first.series_uid} mixes slice sizes {sorted(shapes)}")
    missing = [h.path for h in headers if h.position is None or h.orientation is None]
    if missing and len(headers) > 1:
        raise VolumeError(
            f"{missing[0]}: no ImagePositionPatient/ImageOrientationPatient, so the slice "
            "order along the body cannot be determined"
        )
    warnings: list[str] = []
    if len(headers) == 1:
        ordered, z = headers, np.zeros(1)
        if first.position is not None and first.orientation is not None:
            z = np.array([float(np.dot(first.position, slice_normal(first.orientation)))])
        warnings.append(f"{first.path}: single-slice series")
        spacing_z = float("nan")
    else:
        orientations = np.array([h.orientation for h in headers], dtype=float)
        if np.abs(orientations - orientations[0]).max() > 1e-3:
            raise VolumeError(f"{_folder(headers)}: slices of series {first.series_uid} differ in orientation")
        normal = slice_normal(first.orientation)  # type: ignore[arg-type]
        positions = np.array([np.dot(h.position, normal) for h in headers])
        order = np.argsort(positions, kind="stable")
        ordered = [headers[i] for i in order]
        z = positions[order]
        steps = np.diff(z)
        dup = np.flatnonzero(steps < DUPLICATE_TOL_MM)
        if dup.size:
            i = int(dup[0])
            raise VolumeError(
                f"{ordered[i + 1].path}: duplicate slice position {z[i]:.3f} mm, same as "
                f"{ordered[i].path} ({dup.size} duplicate(s) in the series)"
            )
        spacing_z = float(np.median(steps))
        gaps = np.flatnonzero(steps > GAP_FACTOR * spacing_z)
        if gaps.size:
            i = int(gaps[0])
            message = (
                f"{ordered[i].path}: missing slice(s) after z={z[i]:.2f} mm, next slice "
                f"{ordered[i + 1].path} is {steps[i]:.2f} mm away (spacing {spacing_z:.2f} mm; "
                f"{gaps.size} gap(s))"
            )
            if not allow_gaps:
                raise VolumeError(message + "; use --allow-gaps to reduce it anyway")
            warnings.append(message)
    ps = first.pixel_spacing or (float("nan"), float("nan"))
    return VolumeSource(
        volume_id=volume_id,
        format="dicom",
        paths=tuple(h.path for h in ordered),
        series_uid=first.series_uid,
        modality=first.modality,
        n_slices=len(ordered),
        rows=first.rows,
        cols=first.cols,
        spacing=(spacing_z, float(ps[0]), float(ps[1])),
        z_mm=tuple(float(v) for v in z),
        warnings=tuple(warnings),
    )


def read_series(source: VolumeSource) -> Volume:
    """Read every slice of an ordered series and apply the modality LUT (rescale to HU)."""
    import pydicom

    n, rows, cols = source.n_slices, source.rows, source.cols
    raw: np.ndarray | None = None
    slopes = np.ones(n)
    intercepts = np.zeros(n)
    lut_slices: dict[int, np.ndarray] = {}
    for i, path in enumerate(source.paths):
        try:
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
        except Exception as exc:
            ts = _transfer_syntax(path)
            raise VolumeError(
                f"{path}: cannot read pixel data{ts} ({type(exc).__name__}: {exc})"
            ) from exc
        if arr.shape != (rows, cols):
            raise VolumeError(f"{path}: pixel data has shape {arr.shape}, expected {(rows, cols)}")
        if raw is None:
            raw = np.empty((n, rows, cols), dtype=arr.dtype)
        if "ModalityLUTSequence" in ds:
            from pydicom.pixels import apply_modality_lut

            lut_slices[i] = apply_modality_lut(arr, ds).astype(np.float32)
            arr = np.zeros_like(arr)
        raw[i] = arr
        slopes[i] = float(ds.get("RescaleSlope", 1) or 1)
        intercepts[i] = float(ds.get("RescaleIntercept", 0) or 0)
    assert raw is not None
    hu = hu_array(raw, slopes, intercepts)
    if lut_slices:
        hu = hu.astype(np.float32)
        for i, values in lut_slices.items():
            hu[i] = values
    return Volume(
        volume_id=source.volume_id,
        hu=hu,
        spacing=source.spacing,
        z_mm=np.asarray(source.z_mm, dtype=np.float64),
        slice_sources=source.paths,
        modality=source.modality,
        series_uid=source.series_uid,
        format="dicom",
        warnings=list(source.warnings),
    )


def _transfer_syntax(path: str) -> str:
    import pydicom

    try:
        uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        return f" (transfer syntax {uid.name})"
    except Exception:
        return ""


def _folder(headers: list[DicomHeader]) -> str:
    return str(Path(headers[0].path).parent)
