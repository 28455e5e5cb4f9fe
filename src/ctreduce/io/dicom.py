"""DICOM volumes: group single-frame files into series, order slices, read multi-frame CT files and HU.

Headers come from ``dicom_header``. A file that cannot be placed in its series (its header's
``problem``: unusable geometry, no pixel data) or that disagrees with the rest of it (slice size,
orientation) makes the series an error naming the file; with ``allow_gaps`` it is left out instead,
named in the volume's warnings and the scan's skipped list, and the rest of the series is used
(``place_slices``). The same holds for a slice whose pixel data turn out unreadable only when read
(``read_series``): without ``allow_gaps`` the volume fails naming the file, with it that slice is
left out, its index missing from ``Volume.slice_index``.

A multi-frame file (Enhanced CT, Legacy Converted Enhanced CT, or CT Image Storage with several
frames) is one volume of its own, never merged with other files of its series. Its frames are
ordered along the normal and checked for gaps and duplicates exactly like the files of a
single-frame series; positions, orientation and rescale come from the per-frame or shared
functional groups.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from .dicom_header import (
    DicomHeader,
    _at_pixels,
    _frame_group,
    _numbers,
    _text,
    dataset_to_pixels,
    header_of,
    read_header,
)
from .volume import Volume, VolumeError, VolumeSource, hu_array, quiet

__all__ = ["DicomHeader", "group_series", "order_frames", "order_series", "place_slices", "read_frames", "read_header",
           "read_once", "read_series", "slice_normal"]

# A position step larger than this multiple of the median step means a slice is missing.
GAP_FACTOR = 1.5
# Positions closer than this (mm) are duplicates.
DUPLICATE_TOL_MM = 1e-3


def group_series(headers: Iterable[DicomHeader]) -> dict[tuple[str, str], list[DicomHeader]]:
    """Single-frame files by SeriesInstanceUID (key ``(uid, "")``), each multi-frame file alone
    (key ``(uid, path)``); in order of first appearance."""
    series: dict[tuple[str, str], list[DicomHeader]] = defaultdict(list)
    for header in headers:
        series[(header.series_uid, header.path if header.multiframe else "")].append(header)
    return dict(series)


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:6])
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm == 0:
        raise ValueError("degenerate ImageOrientationPatient")
    return normal / norm


def _order(positions: np.ndarray, labels: list[str], allow_gaps: bool) -> tuple[np.ndarray, float, list[str]]:
    """Slice order along the normal, the slice spacing and warnings; raises VolumeError on
    duplicate positions or (unless ``allow_gaps``) missing slices. ``labels`` name the slices."""
    order = np.argsort(positions, kind="stable")
    z = positions[order]
    steps = np.diff(z)
    dup = np.flatnonzero(steps < DUPLICATE_TOL_MM)
    if dup.size:
        i = int(dup[0])
        raise VolumeError(
            f"{labels[order[i + 1]]}: duplicate slice position {z[i]:.3f} mm, same as "
            f"{labels[order[i]]} ({dup.size} duplicate(s) in the series)"
        )
    spacing_z = float(np.median(steps))
    warnings: list[str] = []
    gaps = np.flatnonzero(steps > GAP_FACTOR * spacing_z)
    if gaps.size:
        i = int(gaps[0])
        message = (
            f"{labels[order[i]]}: missing slice(s) after z={z[i]:.2f} mm, next slice "
            f"{labels[order[i + 1]]} is {steps[i]:.2f} mm away (spacing {spacing_z:.2f} mm; "
            f"{gaps.size} gap(s))"
        )
        if not allow_gaps:
            raise VolumeError(message + "; use --allow-gaps to reduce it anyway")
        warnings.append(message)
    return order, spacing_z, warnings


_WITHOUT_IT = "use --allow-gaps to reduce the rest of the series without it"
_WITHOUT_THEM = "use --allow-gaps to reduce the rest of the series without them"


def place_slices(headers: list[DicomHeader], *, allow_gaps: bool = False
                 ) -> tuple[list[DicomHeader], list[tuple[str, str]]]:
    """The files of one single-frame series that can be placed in it, and (path, reason) of the others.

    A file cannot be placed when its header has a ``problem`` (unusable geometry, no pixel data), when
    it lacks the position and orientation the other files have, or when its slice size or its
    orientation differs from the series' (that of most of its files). Without ``allow_gaps`` such a
    file makes the series an error naming it (VolumeError); with it the file is left out and the rest
    of the series is used (its gap is then found like any other). A VolumeError also when no file
    can be placed.
    """
    uid = headers[0].series_uid
    reasons = {h.path: h.problem for h in headers if h.problem}
    usable = [h for h in headers if h.path not in reasons]
    located = [h for h in usable if h.position is not None and h.orientation is not None]
    if len(headers) > 1 and located:
        for h in usable:
            if h.position is None or h.orientation is None:
                reasons[h.path] = ("no ImagePositionPatient/ImageOrientationPatient, so its place along the body "
                                   "cannot be determined")
        usable = located
    if usable:
        shape, count = Counter((h.rows, h.cols) for h in usable).most_common(1)[0]
        for h in usable:
            if (h.rows, h.cols) != shape:
                reasons[h.path] = (f"slice size {h.rows}x{h.cols} differs from the {shape[0]}x{shape[1]} of "
                                   f"{count} other files of the series")
        usable = [h for h in usable if (h.rows, h.cols) == shape]
    if len(usable) > 1 and located:
        orientations = np.array([h.orientation for h in usable], dtype=float)
        if np.abs(orientations - orientations[0]).max() > 1e-3:  # rare: find the series' own
            common, count = Counter(tuple(np.round(o, 3)) for o in orientations).most_common(1)[0]
            near = np.abs(orientations - np.asarray(common)).max(axis=1) <= 1e-3
            for h, ok in zip(usable, near, strict=True):
                if not ok:
                    reasons[h.path] = (f"ImageOrientationPatient {list(h.orientation)} differs from the "  # type: ignore[arg-type]
                                       f"{[float(v) for v in common]} of {count} other files of the series")
            usable = [h for h, ok in zip(usable, near, strict=True) if ok]
    left_out = [(h.path, reasons[h.path]) for h in headers if h.path in reasons]
    if left_out and (not allow_gaps or not usable):
        path, reason = left_out[0]
        more = f" ({len(left_out)} such files in series {uid})" if len(left_out) > 1 else ""
        hint = "" if not usable else "; " + (_WITHOUT_IT if len(left_out) == 1 else _WITHOUT_THEM)
        raise VolumeError(f"{path}: {reason}{more}{hint}")
    if len(headers) > 1 and not located:
        raise VolumeError(f"{headers[0].path}: no ImagePositionPatient/ImageOrientationPatient, so the slice "
                          "order along the body cannot be determined")
    return usable, left_out


def order_series(
    volume_id: str, headers: list[DicomHeader], *, allow_gaps: bool = False,
    left_out: Sequence[tuple[str, str]] = (),
) -> VolumeSource:
    """Order one single-frame series along its slice normal and check it; raises VolumeError when unusable.

    Files that cannot be placed are left out or make the series an error (``place_slices``); the
    files in ``left_out`` (path, reason) were left out by the caller. Both are named in the warnings.
    """
    headers, dropped = place_slices(headers, allow_gaps=allow_gaps)
    first = headers[0]
    named = [f"{path}: left out of the series ({reason})" for path, reason in [*left_out, *dropped]]
    warnings: list[str] = []
    if len(headers) == 1:
        ordered, z = headers, np.zeros(1)
        if first.position is not None and first.orientation is not None:
            z = np.array([float(np.dot(first.position, slice_normal(first.orientation)))])
        warnings.append(f"{first.path}: single-slice series")
        spacing_z = float("nan")
    else:
        normal = slice_normal(first.orientation)  # type: ignore[arg-type]
        positions = np.array([np.dot(h.position, normal) for h in headers])
        order, spacing_z, warnings = _order(positions, [h.path for h in headers], allow_gaps)
        ordered = [headers[i] for i in order]
        z = positions[order]
    ps = first.pixel_spacing or (float("nan"), float("nan"))
    return VolumeSource(
        volume_id=volume_id,
        format="dicom",
        paths=tuple(h.path for h in ordered),
        sop_uids=tuple(h.sop_uid for h in ordered),
        series_uid=first.series_uid,
        modality=first.modality,
        n_slices=len(ordered),
        rows=first.rows,
        cols=first.cols,
        spacing=(spacing_z, float(ps[0]), float(ps[1])),
        z_mm=tuple(float(v) for v in z),
        warnings=tuple(named + warnings),
        allow_gaps=allow_gaps,
    )


def order_frames(volume_id: str, header: DicomHeader, *, allow_gaps: bool = False) -> VolumeSource:
    """Order the frames of one multi-frame file along the slice normal and check them like a series."""
    if header.problem:
        raise VolumeError(f"{header.path}: {header.problem}")
    normal = slice_normal(header.orientation)  # type: ignore[arg-type]
    positions = np.array([np.dot(p, normal) for p in header.frame_positions])
    if len(positions) == 1:
        order, spacing_z, warnings = np.zeros(1, dtype=int), float("nan"), [f"{header.path}: single-frame file"]
    else:
        labels = [f"{header.path} frame {k + 1}" for k in range(len(positions))]
        order, spacing_z, warnings = _order(positions, labels, allow_gaps)
    ps = header.pixel_spacing or (float("nan"), float("nan"))
    return VolumeSource(
        volume_id=volume_id,
        format="dicom",
        paths=(header.path,),
        sop_uids=(header.sop_uid,),
        frames=tuple(int(k) for k in order),
        series_uid=header.series_uid,
        modality=header.modality,
        n_slices=len(order),
        rows=header.rows,
        cols=header.cols,
        spacing=(spacing_z, float(ps[0]), float(ps[1])),
        z_mm=tuple(float(v) for v in positions[order]),
        warnings=tuple(warnings),
        allow_gaps=allow_gaps,
    )


def _read_pixels(path: str):
    """A file's dataset and pixel array; VolumeError naming the file and its transfer syntax.

    Uncompressed little-endian slices take ``_read_native``; anything else, and any file that
    path cannot vouch for, goes through pydicom's ``pixel_array``, which decodes it or names the
    problem.
    """
    try:
        with quiet():
            read = _read_native(path)
    except Exception:
        read = None  # unreadable here: pydicom below reads it or says why not
    if read is not None:
        return read
    import pydicom

    try:
        with quiet():
            ds = pydicom.dcmread(path)
            return ds, ds.pixel_array
    except Exception as exc:
        raise VolumeError(f"{path}: cannot read pixel data{_transfer_syntax(path)} ({type(exc).__name__}: {exc})"
                          ) from exc


_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # Implicit / Explicit VR Little Endian
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def _read_native(path: str):
    """The header and stored values of an uncompressed single-frame monochrome slice, or None.

    Equal to pydicom's ``ds.pixel_array`` for such a file (the same dtype from BitsAllocated and
    PixelRepresentation, the same unused-bit correction), at a third of its cost: pydicom parses
    the preamble, file meta and header up to the pixel data with the functions ``dcmread`` calls
    (without ``dcmread``'s command-set pass and FileDataset wrapper: 35% of its time, measured),
    and the pixel bytes go straight into the array, without building a decoder (its per-file
    option and id gathering cost more than the copy). None for everything else (compressed, big
    endian, float pixel data, a Modality LUT, multi-frame, short pixel data, ...), which
    ``_read_pixels`` hands to pydicom.
    """
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    with open(path, "rb") as f:
        read_preamble(f, False)  # no 'DICM' prefix: an error, and pydicom's dcmread says which
        meta = _read_file_meta_info(f)  # pydicom's own reader of group 2, as dcmread uses it
        syntax = str(meta.get("TransferSyntaxUID", ""))
        if syntax not in _NATIVE_SYNTAXES:
            return None
        ds = read_dataset(f, syntax == _NATIVE_SYNTAXES[0], True, stop_when=_at_pixels)
        ds.file_meta = meta
        return _native_pixels(f, ds)


def _native_pixels(f, ds):
    """``_read_native`` from where the dataset ``ds`` of the open file ``f`` ends (its pixel data element)."""
    layout = _native_layout(ds)
    if layout is None:
        return None
    dtype, shift = layout
    implicit, _ = ds.original_encoding
    head = f.read(8 if implicit else 12)
    if len(head) < 8 or head[:4] != _PIXEL_DATA_TAG:
        return None
    if implicit:
        length = int.from_bytes(head[4:8], "little")
    elif head[4:6] in (b"OB", b"OW") and len(head) == 12:
        length = int.from_bytes(head[8:12], "little")
    else:
        return None
    arr = np.empty((int(ds.Rows), int(ds.Columns)), dtype=dtype)
    # Longer pixel data is read as pydicom does (the first frame); shorter or cut is its error.
    if length == 0xFFFFFFFF or length < arr.nbytes or f.readinto(arr) != arr.nbytes:
        return None
    if shift:  # pydicom's correction of unused high bits: sign-extend or clear them
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return ds, arr


def read_once(path: str) -> tuple[DicomHeader | str, tuple | None]:
    """A file's header and, for a single-frame slice, its pixels, from one open: the header (or the
    reason the file is not usable DICOM, as ``read_header`` words it) and (stored values, Modality
    LUT values or None, (slope, intercept)) as ``read_series`` reads them, or None when its pixels are
    left to ``read_series`` (multi-frame files, headers with a ``problem``, pixels that cannot be
    read: ``read_series`` then names the file and the reason as it always does).
    """
    try:
        with quiet(), open(path, "rb") as f:
            read = dataset_to_pixels(f, path)
            if read is None:  # an unusual transfer syntax: the usual readers, one after the other
                return _header_or_reason(path), None
            ds, problem, at = read
            header = header_of(path, ds, problem)
            if header.problem or header.multiframe:
                return header, None
            try:
                f.seek(at)
                pixels = _native_pixels(f, ds)
                if pixels is None:
                    import pydicom

                    f.seek(0)
                    whole = pydicom.dcmread(f)
                    pixels = whole, whole.pixel_array
                return header, _values(path, *pixels, header.rows, header.cols)[1:]
            except Exception:
                return header, None
    except VolumeError as exc:
        return str(exc).removeprefix(f"{path}: "), None
    except Exception:  # InvalidDicomError, a damaged element, ...: the header alone, worded as it always is
        return _header_or_reason(path), None


def _header_or_reason(path: str) -> DicomHeader | str:
    try:
        return read_header(path)
    except VolumeError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _native_layout(ds) -> tuple[np.dtype, int] | None:
    """dtype and unused-bit shift of a slice ``_read_native`` may read; None when pydicom must."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if "file_meta" in ds.__dict__ else ""
    if syntax not in _NATIVE_SYNTAXES or not ds.original_encoding[1] or "ModalityLUTSequence" in ds:
        return None
    values = [_numbers(ds, k) for k in ("BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
                                         "Rows", "Columns")]
    if any(v is None or len(v) != 1 for v in values):
        return None
    allocated, stored, representation, samples, rows, cols = (v[0] for v in values)  # type: ignore[index]
    frames = _numbers(ds, "NumberOfFrames") or (1,)
    if (allocated not in (8, 16, 32) or not 1 <= stored <= allocated or representation not in (0, 1)
            or samples != 1 or frames != (1,) or rows < 1 or cols < 1
            or _text(ds, "PhotometricInterpretation").strip() not in _MONOCHROME):
        return None
    return np.dtype(f"<{'ui'[int(representation)]}{int(allocated) // 8}"), int(allocated - stored)


def read_series(source: VolumeSource, *, allow_gaps: bool = False) -> Volume:
    """Read every slice of an ordered series and apply the modality LUT (rescale to HU).

    A slice whose pixels cannot be read (no or cut pixel data, undecodable, a bad rescale) fails the
    volume naming its file; with ``allow_gaps`` it is left out instead and named in the warnings,
    and ``Volume.slice_index`` lists the slices read (their indices in ``source``). A file that
    moved along the normal since the scan always fails the volume: scan again.
    """
    n, rows, cols = source.n_slices, source.rows, source.cols
    raw: np.ndarray | None = None
    slopes = np.ones(n)
    intercepts = np.zeros(n)
    lut_slices: dict[int, np.ndarray] = {}
    read: list[int] = []  # source indices of the slices in ``raw``, in order
    warnings = list(source.warnings)
    failed: list[VolumeError] = []
    for i, path in enumerate(source.paths):
        try:
            ds, arr, lut, rescale = _read_slice(path, rows, cols)
        except VolumeError as exc:
            failed.append(exc)
            if n == 1:
                raise
            if not allow_gaps:
                raise VolumeError(f"{exc}; use --allow-gaps to reduce the rest of the series without this slice"
                                  ) from exc
            where = f" at z={source.z_mm[i]:.2f} mm" if source.z_mm else ""
            warnings.append(f"{path}: left out of the series, slice {i} of {n}{where} "
                            f"({str(exc).removeprefix(f'{path}: ')})")
            continue
        if source.z_mm:
            _check_position(ds, path, source.z_mm[i])
        if raw is None:
            raw = np.empty((n, rows, cols), dtype=arr.dtype)
        elif arr.dtype != raw.dtype:  # files of one series disagree on signedness or bits
            raw = raw.astype(np.result_type(raw.dtype, arr.dtype))
        k = len(read)
        if lut is not None:
            lut_slices[k] = lut
        raw[k] = arr
        slopes[k], intercepts[k] = rescale
        read.append(i)
    if raw is None:
        raise VolumeError(f"{source.source}: none of the {n} slices of the series can be read (first: {failed[0]})")
    k = len(read)
    hu = hu_array(raw[:k], slopes[:k], intercepts[:k], in_place=True)  # raw[:k]: contiguous, ours
    if lut_slices:
        hu = hu.astype(np.float32)
        for k, values in lut_slices.items():
            hu[k] = values
    index = np.asarray(read, dtype=np.int64)
    return Volume(source.volume_id, hu, source.spacing, np.asarray(source.z_mm, dtype=np.float64)[index]
                  if source.z_mm else np.zeros(len(index)), tuple(source.paths[i] for i in read),
                  modality=source.modality, series_uid=source.series_uid, format="dicom", warnings=warnings,
                  slice_index=index)


def _read_slice(path: str, rows: int, cols: int):
    """A slice's dataset, stored values, Modality LUT values (float32, or None) and (slope, intercept);
    VolumeError naming the file when any of them cannot be had."""
    try:
        return _slice_values(path, rows, cols)
    except VolumeError:
        raise
    except Exception as exc:  # a damaged value (an unknown VR, text where a number belongs, ...)
        raise VolumeError(f"{path}: {type(exc).__name__}: {exc}") from exc


def _slice_values(path: str, rows: int, cols: int):
    return _values(path, *_read_pixels(path), rows, cols)


def _values(path: str, ds, arr: np.ndarray, rows: int, cols: int):
    if arr.shape != (rows, cols):
        raise VolumeError(f"{path}: pixel data has shape {arr.shape}, expected {(rows, cols)}")
    lut = None
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        try:
            with quiet():
                lut = apply_modality_lut(arr, ds).astype(np.float32)
        except Exception as exc:
            raise VolumeError(f"{path}: cannot apply its Modality LUT ({type(exc).__name__}: {exc})") from exc
        arr = np.zeros_like(arr)
    return ds, arr, lut, _rescale(ds, path)


def read_frames(source: VolumeSource) -> Volume:
    """Read a multi-frame file: its frames in the scanned order, rescaled per frame to HU."""

    path = source.paths[0]
    ds, arr = _read_pixels(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (frames, source.rows, source.cols) or max(source.frames) >= frames:
        raise VolumeError(f"{path}: pixel data has shape {arr.shape}, expected "
                          f"{(len(source.frames), source.rows, source.cols)}")
    rescale = np.array([_rescale(_frame_group(ds, k, "PixelValueTransformationSequence") or ds, path)
                        for k in range(frames)])
    index = np.asarray(source.frames, dtype=np.intp)
    hu = hu_array(arr[index], rescale[index, 0], rescale[index, 1], in_place=True)  # arr[index] is a copy
    return _volume(source, hu, (path,) * len(index))


def _check_position(ds, path: str, z_scanned: float) -> None:
    """The file read now sits where the scan put it: a file rewritten since is not silently misplaced."""
    try:
        position, orientation = _numbers(ds, "ImagePositionPatient"), _numbers(ds, "ImageOrientationPatient")
        if position is None or orientation is None or len(position) != 3:
            raise ValueError
        z = sum(p * n for p, n in zip(position, _unit_normal(orientation), strict=True))
    except (AttributeError, TypeError, ValueError):
        return  # single-slice series without geometry; the scan accepted it as such
    if abs(z - z_scanned) > DUPLICATE_TOL_MM:
        raise VolumeError(f"{path}: slice is at {z:.2f} mm along the normal now but was at {z_scanned:.2f} mm "
                          "when the series was scanned; the file changed, scan or reduce again")


@lru_cache(maxsize=64)
def _unit_normal(orientation: tuple[float, ...]) -> tuple[float, float, float]:
    """``slice_normal`` as floats, once per orientation (the files of a series share one)."""
    return tuple(float(v) for v in slice_normal(orientation))  # type: ignore[return-value]


def _rescale(ds, path: str) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept; absent, empty or zero mean 1 and 0."""
    slope, intercept = _numbers(ds, "RescaleSlope"), _numbers(ds, "RescaleIntercept")
    if (slope is not None and len(slope) != 1) or (intercept is not None and len(intercept) != 1):
        raise VolumeError(f"{path}: RescaleSlope {list(slope or [])} and RescaleIntercept {list(intercept or [])} "
                          "must be single numbers")
    return (slope[0] if slope and slope[0] else 1.0), (intercept[0] if intercept else 0.0)


def _volume(source: VolumeSource, hu: np.ndarray, slice_sources: tuple[str, ...]) -> Volume:
    return Volume(
        volume_id=source.volume_id,
        hu=hu,
        spacing=source.spacing,
        z_mm=np.asarray(source.z_mm, dtype=np.float64),
        slice_sources=slice_sources,
        modality=source.modality,
        series_uid=source.series_uid,
        format="dicom",
        warnings=list(source.warnings),
    )


def _transfer_syntax(path: str) -> str:
    import pydicom

    try:
        with quiet():
            uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        return f" (transfer syntax {uid.name})"
    except Exception:
        return ""
