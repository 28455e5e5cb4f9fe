"""DICOM headers: the discovery tags of one file, read fast, and the reason a file is not usable.

What ``read_header`` does with a file:

- raises VolumeError with the reason when the file cannot belong to a CT volume: not DICOM, empty,
  truncated or unreadable header, no SeriesInstanceUID, no image (no Rows/Columns), colour
  (SamplesPerPixel above 1), multi-frame but not a CT image;
- sets ``DicomHeader.problem`` when the file is a slice of a series but cannot be placed in it:
  geometry unusable (ImagePositionPatient not 3 finite numbers, ImageOrientationPatient not 6 finite
  numbers or degenerate, empty Rows/Columns, invalid NumberOfFrames) or no pixel data to read (the
  Pixel Data element missing, or cut short by the end of the file). ``dicom.place_slices`` decides
  what that means for its series.

The numeric and text values are parsed from their stored bytes (``_stored_numbers``, ``_text``);
pixel reading (``dicom``) uses the same helpers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .volume import VolumeError, quiet

# Tags read during discovery; reading only these keeps a scan of 500k files fast.
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "InstanceNumber",
]

_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
}

Position = tuple[float, float, float]
Vector = tuple[float, ...]



@dataclass(frozen=True, slots=True)
class DicomHeader:
    """The discovery tags of one file. ``problem`` (in words) makes the file's series an error.

    A multi-frame file has ``frame_positions`` (one per frame, in file order) and the orientation
    shared by its frames.
    """

    path: str
    series_uid: str
    modality: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    cols: int
    frames: int
    sop_uid: str = ""
    problem: str = ""
    multiframe: bool = False
    frame_positions: tuple[Position, ...] = ()


def read_header(path: str | Path) -> DicomHeader:
    """Read the discovery tags of one file; raises VolumeError when it is not usable DICOM.

    Any exception while parsing becomes a VolumeError naming the file.
    """
    try:
        with quiet():
            return _read_header(str(path))
    except VolumeError:
        raise
    except Exception as exc:
        raise VolumeError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc


def _read_header(path: str) -> DicomHeader:
    from pydicom.errors import InvalidDicomError

    try:
        ds, pixels = _header_dataset(path)
    except InvalidDicomError as exc:
        raise VolumeError(f"{path}: not a DICOM file (no 128-byte preamble and 'DICM' prefix)") from exc
    return header_of(path, ds, pixels)


def header_of(path: str, ds: Any, pixels: str) -> DicomHeader:
    """The header of a dataset read up to its pixel data (``pixels``: what is wrong with them, or "");
    VolumeError when the file is not usable DICOM."""
    import pydicom

    if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == _MEDIA_DIRECTORY:
        raise VolumeError(f"{path}: DICOMDIR (the index of a DICOM medium), not an image")
    uid = _text(ds, "SeriesInstanceUID")
    if not uid:
        raise VolumeError(f"{path}: {_absent(path, 'SeriesInstanceUID')}")
    if "Rows" not in ds or "Columns" not in ds:
        raise VolumeError(f"{path}: {_absent(path, 'Rows', 'DICOM file holds no image (no Rows/Columns)')}")
    samples = None if _stored_numbers(ds, "SamplesPerPixel") in (None, (1.0,)) else ds.get("SamplesPerPixel")
    if samples not in (None, "", 1):
        colour = ds.get("PhotometricInterpretation", "") or "colour"
        raise VolumeError(f"{path}: {colour} image (SamplesPerPixel {samples}) is not a CT slice")
    sop_class = _text(ds, "SOPClassUID")
    problems: list[str] = []
    frames = _integer(ds, "NumberOfFrames", 1, problems)
    multiframe = frames > 1 or sop_class in ENHANCED_CT_CLASSES
    if multiframe and sop_class != CT_IMAGE_STORAGE and sop_class not in ENHANCED_CT_CLASSES:
        raise VolumeError(f"{path}: multi-frame {_sop_name(sop_class)} file ({frames} frames) is not a CT "
                          "image; only CT multi-frame files are read")
    rows, cols = _integer(ds, "Rows", 0, problems), _integer(ds, "Columns", 0, problems)
    position = _vector(ds, "ImagePositionPatient", 3, problems)
    orientation = _orientation(ds, problems)
    spacing = _vector(ds, "PixelSpacing", 2, [])  # optional metadata: malformed means unknown
    frame_positions: tuple[Position, ...] = ()
    if multiframe and not problems:
        full = pydicom.dcmread(path, stop_before_pixels=True)
        frame_positions, orientation, spacing = _frame_geometry(full, frames, problems)
    if pixels:
        problems.append(pixels)
    return DicomHeader(
        path=path,
        series_uid=_shared(uid),
        modality=_shared(_text(ds, "Modality").upper()),
        position=position,  # type: ignore[arg-type]
        orientation=_shared(orientation),
        pixel_spacing=_shared(spacing),  # type: ignore[arg-type]
        rows=_shared(rows),
        cols=_shared(cols),
        frames=frames,
        sop_uid=_text(ds, "SOPInstanceUID"),
        problem=problems[0] if problems else "",
        multiframe=multiframe,
        frame_positions=frame_positions,
    )


def settled(header: DicomHeader, path: str) -> DicomHeader:
    """A header just received from a worker process, made to hold ``path`` (the caller's string for the file)
    and to share the values its series repeats with the headers received before: unpickling gives every
    batch of headers its own copies (~0.3 KB a file held by a scan's parent otherwise)."""
    for name, value in (("path", path), ("series_uid", _shared(header.series_uid)),
                        ("modality", _shared(header.modality)), ("orientation", _shared(header.orientation)),
                        ("pixel_spacing", _shared(header.pixel_spacing))):
        object.__setattr__(header, name, value)  # frozen for its readers; this is its making, as __post_init__
    return header


@lru_cache(maxsize=1024, typed=True)
def _shared(value: Any) -> Any:
    """One object for equal values that a series' files repeat (its UID, orientation, spacing, size): fewer
    objects held per file, and a batch of headers pickled from a worker to the scan carries each once."""
    return value


_SYNTAX_ENCODING = {  # transfer syntax -> (implicit VR, little endian) of the dataset after the file meta
    "1.2.840.10008.1.2": (True, True),
    "1.2.840.10008.1.2.2": (False, False),
    **{uid: (False, True) for uid in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50",
                                      "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                                      "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
                                      "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                                      "1.2.840.10008.1.2.4.203")},
}


@lru_cache(maxsize=1)
def _header_tags() -> list:
    from pydicom.tag import Tag

    return [Tag(keyword) for keyword in _HEADER_TAGS]


def _header_dataset(path: str) -> tuple[Any, str]:
    """The discovery tags of a file, read as ``dcmread(path, stop_before_pixels=True,
    specific_tags=_HEADER_TAGS)`` reads them, with the readers ``dcmread`` calls for the usual
    syntaxes (without its command-set pass and FileDataset wrapper: a third of a header's cost,
    measured); other syntaxes (deflated, private, none given) take ``dcmread`` itself.

    Also what is wrong with the file's pixel data, where the reader stopped shows it (usual
    syntaxes only): nothing to read, or cut short by the end of the file ("" when neither).
    """
    import pydicom

    with open(path, "rb") as f:
        read = dataset_to_pixels(f, path, _header_tags())
        if read is not None:
            return read[0], read[1]
    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS), ""


def dataset_to_pixels(f, path: str, tags: list | None = None) -> tuple[Any, str, int] | None:
    """The dataset of the open file ``f`` up to its pixel data (only ``tags`` when given), what is wrong
    with its pixel data ("" when nothing is, ``_pixel_data_problem``) and the offset of its pixel data
    element; None for a transfer syntax whose encoding is not known here (``dcmread`` then reads it)."""
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    read_preamble(f, False)
    meta = _read_file_meta_info(f)
    encoding = _SYNTAX_ENCODING.get(str(meta.get("TransferSyntaxUID", "")))
    if encoding is None:
        return None
    ds = read_dataset(f, *encoding, stop_when=_at_pixels, specific_tags=tags)
    ds.file_meta = meta
    at = f.tell()
    return ds, _pixel_data_problem(f, path, os.fstat(f.fileno()).st_size, *encoding), at


_PIXEL_VRS = (b"OB", b"OW", b"OF", b"OD", b"UN")


def _pixel_data_problem(f, path: str, size: int, implicit: bool, little: bool) -> str:
    """Why the pixel data element at ``f``'s position (where ``read_dataset`` stopped before it)
    cannot be read, or "". Encapsulated (compressed) pixel data are checked when decoded."""
    start = f.tell()
    head = f.read(8 if implicit else 12)
    if not head:
        if _ends_with_pixel_data(path, size):  # a damaged length made the parser jump over them
            return ("corrupt DICOM header: parsing it runs past the pixel data the file ends with (a length in "
                    "its header is damaged)")
        return "no pixel data (the file has no Pixel Data element)"
    if len(head) < (8 if implicit else 12) or (not implicit and head[4:6] not in _PIXEL_VRS):
        return ""  # not a pixel data element header this check can read: pixel reading says what is wrong
    length = int.from_bytes(head[4:8] if implicit else head[8:12], "little" if little else "big")
    data_start = start + len(head)
    if length == 0xFFFFFFFF:
        return ""
    if length == 0:
        return "no pixel data (its Pixel Data element is empty)"
    if data_start + length > size:
        return (f"pixel data cut short: the file ends {size - data_start} bytes into its {length} bytes of "
                "pixel data")
    return ""


def _absent(path: str, keyword: str, otherwise: str = "") -> str:
    """Why ``keyword`` is missing: the file is truncated, its header is corrupt, or it lacks the attribute."""
    import warnings  # a local name: ``warnings`` elsewhere in this module are a volume's warnings

    import pydicom
    from pydicom.dataelem import RawDataElement

    size = os.path.getsize(path)
    with warnings.catch_warnings(record=True) as caught, open(path, "rb") as f:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(f, defer_size=256, force=True)  # large values are skipped, not read
        end = f.tell()
    ends_early = end > size or any("end of file" in str(w.message).lower() for w in caught)
    last = ds.get_item(max(ds.keys())) if ds else None
    if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF:
        # A complete file ends exactly where its last element does; a cut leaves that element
        # short, or a few bytes of the next element's tag, which pydicom silently drops.
        ends_early |= last.value_tell + last.length != size
    if not (ends_early or not ds):
        return otherwise or f"DICOM file without {keyword}"
    if _ends_with_pixel_data(path, size):
        return (f"corrupt DICOM header: no {keyword} can be read, though the file is complete ({size} bytes, "
                "ending where its pixel data end); a length or tag in its header is damaged")
    return f"truncated DICOM file: it ends after {size} bytes, inside its header (no {keyword})"


# Truncated or corrupt? Both make the parser run past the end of the file: a cut file because its
# last element is short, a whole file because a damaged length (or tag) sends the parser past the
# elements that follow. A file is taken as whole when it ends exactly where its Pixel Data element
# does: a Pixel Data tag whose defined length reaches exactly the last byte, or encapsulated pixel
# data closed by the sequence delimiter in the last 8 bytes. A cut almost never lands there (it
# would have to fall on the end of the pixel data); a file with trailing padding after its pixels
# is still called truncated, as before.
_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0


def _ends_with_pixel_data(path: str, size: int) -> bool:
    with open(path, "rb") as f:
        data = f.read()
    at = data.find(_PIXEL_TAG)
    while at >= 0:
        explicit = data[at + 4:at + 6] in (b"OB", b"OW") and data[at + 6:at + 8] == b"\0\0"
        length = int.from_bytes(data[at + 8:at + 12] if explicit else data[at + 4:at + 8], "little")
        if length == 0xFFFFFFFF:
            return data.endswith(_SEQUENCE_END)
        if at + (12 if explicit else 8) + length == size:
            return True
        at = data.find(_PIXEL_TAG, at + 1)
    return False


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name if name and name != uid else f"SOP class {uid or 'unknown'}"


def _integer(ds, keyword: str, default: int, problems: list[str]) -> int:
    """A positive integer attribute; an empty or invalid value is a problem, absence the default."""
    stored = _stored_numbers(ds, keyword)
    if stored and len(stored) == 1 and math.isfinite(stored[0]) and stored[0] >= 1 and stored[0].is_integer():
        return int(stored[0])
    if keyword not in ds:
        return default
    value = ds[keyword].value
    try:
        number = int(value)
    except (TypeError, ValueError):
        problems.append(f"empty {keyword}" if value in (None, "") else f"invalid {keyword} {str(value)!r}")
        return default
    if number < 1:
        problems.append(f"invalid {keyword} {number}")
        return default
    return number


def _vector(ds, keyword: str, n: int, problems: list[str]) -> tuple[float, ...] | None:
    """``n`` finite numbers; None when absent or empty, and also when malformed (adding a problem)."""
    numbers = _stored_numbers(ds, keyword)
    if numbers is None:
        return None
    if numbers == ():  # not plain numbers as stored: pydicom converts them, or says why not
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        values = value if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
        try:
            numbers = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            problems.append(f"{keyword} {str(value)!r} is not numeric")
            return None
    if len(numbers) != n:
        problems.append(f"{keyword} has {len(numbers)} values, expected {n}")
        return None
    if not all(math.isfinite(v) for v in numbers):
        problems.append(f"{keyword} {list(numbers)} is not finite")
        return None
    return numbers


def _orientation(ds, problems: list[str]) -> tuple[float, ...] | None:
    orientation = _vector(ds, "ImageOrientationPatient", 6, problems)
    if orientation is not None and np.linalg.norm(np.cross(orientation[:3], orientation[3:])) < 1e-3:
        problems.append(f"ImageOrientationPatient {list(orientation)} is degenerate (row and column "
                        "directions zero or parallel)")
        return None
    return orientation


def _frame_group(ds, frame: int, sequence: str):
    """The item of functional group ``sequence`` that applies to ``frame``: per-frame, else shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for item in (per_frame[frame] if frame < len(per_frame) else None, shared[0] if shared else None):
        if item is not None and item.get(sequence):
            return item.get(sequence)[0]
    return None


def _frame_geometry(ds, frames: int, problems: list[str]) -> tuple[tuple[Position, ...], Vector | None, Vector | None]:
    """Per-frame positions, the frames' common orientation and the pixel spacing of a multi-frame file."""
    positions: list[Position] = []
    orientations: list[Vector] = []
    for k in range(frames):
        plane = _frame_group(ds, k, "PlanePositionSequence")
        facing = _frame_group(ds, k, "PlaneOrientationSequence")
        where: list[str] = []
        position = None if plane is None else _vector(plane, "ImagePositionPatient", 3, where)
        orientation = None if facing is None else _orientation(facing, where)
        if where:
            problems.append(f"frame {k + 1}: {where[0]}")
            return (), None, None
        if position is None or orientation is None:
            missing = "PlanePositionSequence" if position is None else "PlaneOrientationSequence"
            problems.append(f"multi-frame file without per-frame geometry ({missing} of frame {k + 1}), so "
                            "the frame order along the body cannot be determined")
            return (), None, None
        positions.append(position)  # type: ignore[arg-type]
        orientations.append(orientation)
    if np.abs(np.asarray(orientations) - orientations[0]).max() > 1e-3:
        problems.append("frames differ in orientation")
        return (), None, None
    measures = _frame_group(ds, 0, "PixelMeasuresSequence")
    spacing = None if measures is None else _vector(measures, "PixelSpacing", 2, [])
    return tuple(positions), orientations[0], spacing


_PIXEL_TAGS = frozenset((0x7FE00008, 0x7FE00009, 0x7FE00010))  # Float, Double Float and (integer) Pixel Data


def _at_pixels(tag, vr, length) -> bool:
    return int(tag) in _PIXEL_TAGS  # int: comparing pydicom's tag objects is 10x slower


def _numbers(ds, keyword: str) -> tuple[float, ...] | None:
    """A numeric element's values (US, DS, IS); None when absent or empty."""
    numbers = _stored_numbers(ds, keyword)
    if numbers != ():
        return numbers
    value = ds[keyword].value
    if value is None or value == "":
        return None
    values = value if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
    return tuple(float(v) for v in values)


def _text(ds, keyword: str) -> str:
    """``str(ds.get(keyword, "") or "")`` for a single-valued UI or CS element, decoded from its
    stored bytes as pydicom decodes them (latin-1, trailing spaces and NULs dropped) without
    building and validating a UID or string object; several values take pydicom's conversion."""
    from pydicom.dataelem import RawDataElement

    elem = ds.get_item(keyword)
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
        text = elem.value.decode("latin-1").rstrip(" \x00")
        if "\\" not in text:
            return text
    return str(ds.get(keyword, "") or "")


def _stored_numbers(ds, keyword: str) -> tuple[float, ...] | None:
    """A US, DS or IS element's values parsed from its stored bytes; None when absent or empty, ()
    when they are not plain numbers as stored (or already converted): ask pydicom then.

    pydicom's conversion (validated DSfloat/IS objects per value) took a third of a slice's read
    and 40% of a header scan (measured).
    """
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement

    elem = ds.get_item(keyword)
    if elem is None:
        return None
    stored = elem.value if isinstance(elem, RawDataElement) else None
    if not isinstance(stored, bytes):
        return None if stored is None and isinstance(elem, RawDataElement) else ()
    vr = elem.VR or dictionary_VR(elem.tag)
    if vr == "US" and len(stored) % 2 == 0:
        order = "little" if elem.is_little_endian else "big"
        return tuple(float(int.from_bytes(stored[k:k + 2], order)) for k in range(0, len(stored), 2)) or None
    if vr in ("DS", "IS"):
        if not stored.strip(b" \0"):
            return None
        try:
            return tuple(float(v) for v in stored.split(b"\\"))
        except ValueError:
            return ()
    return ()
