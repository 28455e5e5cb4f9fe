"""Single 2-D images as uint8 grey arrays: PNG/JPEG in any mode, and single-frame DICOM scaled as the paper does.

Downstream task images (:mod:`ctreduce.tasks`) and the PNGs of an export (leakage searches) are read here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .intensity import minmax_uint8


class ImageError(ValueError):
    """An image file is missing or cannot be read as one 2-D grey image; the message names the file."""


def read_dicom_uint8(path: str | Path) -> np.ndarray:
    """A single-frame greyscale DICOM: stored values -> RescaleSlope/Intercept -> per-image min-max to
    uint8 (the paper's scaling; MONOCHROME1 is inverted first so that bright means dense)."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        array = ds.pixel_array
    except Exception as exc:
        raise ImageError(f"{path}: unreadable DICOM ({exc})") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or array.ndim != 2:
        raise ImageError(f"{path}: expected a single-frame greyscale image, got pixel array {array.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = array.astype(np.float64) * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = -values
    return minmax_uint8(values)


def read_image_uint8(path: str | Path) -> np.ndarray:
    """Any PNG/JPEG (grey, RGB, palette or 16-bit: 16-bit and float images are min-max scaled,
    colour converted with Pillow's ``L``) or DICOM file as a uint8 (H, W) array."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.suffix.lower() == ".dcm":
        return read_dicom_uint8(path)
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                return minmax_uint8(np.asarray(image))
            if image.mode != "L":
                image = image.convert("L")
            return np.array(image, dtype=np.uint8)
    except OSError as exc:
        if path.read_bytes()[128:132] == b"DICM":
            return read_dicom_uint8(path)
        raise ImageError(f"{path}: unreadable image ({exc})") from exc
