"""DICOM pixel reading: the direct path for uncompressed slices gives exactly what pydicom's
``pixel_array`` gives, and the HU of a series equal the old per-file formula and SimpleITK's."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from ctreduce.io import dicom
from ctreduce.io.discover import read_volume
from ctreduce.io.volume import VolumeError, hu_array
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series


def _library_files() -> list[str]:
    from pydicom.data.data_manager import external_data_sources

    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    if "pydicom-data" in external_data_sources():
        roots.append(Path(external_data_sources()["pydicom-data"].data_path))
    return sorted(str(Path(d) / f) for root in roots for d, _, names in os.walk(root) for f in names)


def test_direct_reading_equals_pydicom_on_every_library_file():
    direct = 0
    for path in _library_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                read = dicom._read_native(path)
        except Exception:
            read = None  # not DICOM at all: _read_pixels hands it to pydicom
        if read is None:
            continue
        direct += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = pydicom.dcmread(path).pixel_array
        assert read[1].dtype == expected.dtype, path
        np.testing.assert_array_equal(read[1], expected, err_msg=path)
    assert direct >= 20  # 8, 16 and 32 bits, signed, BitsStored < BitsAllocated, implicit VR, MONOCHROME1


def _series(tmp_path: Path, n: int = 6, size: int = 24, **kwargs) -> tuple[np.ndarray, list[Path]]:
    hu, spacing = make_phantom(n_slices=n, size=size, slice_thickness=2.0, seed=5)
    return hu, write_dicom_series(hu, spacing, tmp_path / "s", shuffle_names=False, **kwargs)


def _old_hu(files: list[Path]) -> np.ndarray:
    """The series' HU as read before: pydicom pixel_array per file, then hu_array."""
    datasets = [pydicom.dcmread(f) for f in files]
    slopes = [float(ds.get("RescaleSlope", 1) or 1) for ds in datasets]
    intercepts = [float(ds.get("RescaleIntercept", 0) or 0) for ds in datasets]
    return hu_array(np.stack([ds.pixel_array for ds in datasets]), np.array(slopes), np.array(intercepts))


def _rewrite(files: list[Path], stored: list[np.ndarray] | None = None, implicit: bool = False, **attrs) -> None:
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        for key, value in attrs.items():
            setattr(ds, key, value[k] if isinstance(value, list) else value)
        if stored is not None:
            ds.PixelData = stored[k].tobytes()
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(f, enforce_file_format=True)


def _read_both(tmp_path: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    assert all(dicom._read_native(str(f)) is not None for f in files)  # the direct path is taken
    return read_volume(tmp_path / "s").hu, _old_hu(files)


def test_signed_12_bit_slices_are_sign_extended_like_pydicom(tmp_path):
    hu, files = _series(tmp_path)
    rng = np.random.default_rng(0)
    stored = []
    for _ in files:
        values = rng.integers(-2048, 2048, size=(24, 24)).astype(np.int16)
        junk = rng.integers(0, 16, size=(24, 24)).astype(np.uint16) << 12  # unused high bits set
        stored.append((values.view(np.uint16) & 0x0FFF) | junk)
    _rewrite(files, stored, BitsStored=12, HighBit=11, PixelRepresentation=1, RescaleIntercept=0)
    got, old = _read_both(tmp_path, files)
    assert got.dtype == old.dtype == np.int16 and got.min() < 0
    np.testing.assert_array_equal(got, old)


def test_unsigned_12_bit_slices_ignore_unused_bits_and_implicit_vr_reads(tmp_path):
    hu, files = _series(tmp_path)
    stored = [((hu[k] + 1024).astype(np.uint16) & 0x0FFF) | 0xF000 for k in range(len(files))]
    _rewrite(files, stored, implicit=True, BitsStored=12, HighBit=11)
    got, old = _read_both(tmp_path, files)
    np.testing.assert_array_equal(got, old)
    np.testing.assert_array_equal(got, np.minimum(hu, 3071))


def test_rescales_that_differ_per_slice_or_leave_int16(tmp_path):
    hu, files = _series(tmp_path)
    n = len(files)
    _rewrite(files, RescaleSlope=[1, 2, 1, 3, 1, 1], RescaleIntercept=[-1024, -1000, 0, -3000, 7, -1024])
    got, old = _read_both(tmp_path, files)
    assert got.dtype == old.dtype == np.int16
    np.testing.assert_array_equal(got, old)
    _rewrite(files, RescaleSlope=[1] * n, RescaleIntercept=[32500] * n)  # HU beyond int16
    got, old = _read_both(tmp_path, files)
    assert got.dtype == old.dtype == np.int32
    np.testing.assert_array_equal(got, old)
    _rewrite(files, RescaleSlope=[0.5] * n, RescaleIntercept=[-1024.25] * n)  # not integral: float32
    got, old = _read_both(tmp_path, files)
    assert got.dtype == old.dtype == np.float32
    np.testing.assert_array_equal(got, old)


@pytest.mark.filterwarnings("ignore:The pixel data is")  # pydicom, reading the padded files
def test_eight_bit_longer_pixel_data_and_compressed_files(tmp_path):
    hu, files = _series(tmp_path)
    stored = [np.clip(hu[k] // 16 + 64, 0, 255).astype(np.uint8) for k in range(len(files))]
    _rewrite(files, stored, BitsAllocated=8, BitsStored=8, HighBit=7, RescaleSlope=16)
    got, old = _read_both(tmp_path, files)
    np.testing.assert_array_equal(got, old)
    padded = [np.concatenate([s.ravel(), np.full(64, 9, np.uint8)]) for s in stored]  # surplus bytes
    _rewrite(files, padded)
    got, old = _read_both(tmp_path, files)
    np.testing.assert_array_equal(got, old)
    rle_hu, rle = _series(tmp_path / "rle", transfer_syntax=RLELossless)
    assert all(dicom._read_native(str(f)) is None for f in rle)  # compressed: pydicom decodes
    np.testing.assert_array_equal(read_volume(tmp_path / "rle" / "s").hu, rle_hu)


def test_short_pixel_data_and_bad_rescale_name_the_file(tmp_path):
    hu, files = _series(tmp_path)
    _rewrite(files[2:3], [np.zeros(10, np.uint16)])
    with pytest.raises(VolumeError, match=f"{files[2].name}: cannot read pixel data"):
        read_volume(tmp_path / "s")
    _rewrite(files[2:3], [(hu[2] + 1024).astype(np.uint16)], RescaleSlope=[[1, 2]])
    with pytest.raises(VolumeError, match=f"{files[2].name}: RescaleSlope"):
        read_volume(tmp_path / "s")


def test_hu_equal_simpleitk_series_reader(tmp_path):
    import SimpleITK as sitk

    hu, files = _series(tmp_path, n=8, size=32)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    expected = sitk.GetArrayFromImage(reader.Execute())
    got = read_volume(tmp_path / "s").hu
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int16
    assert ExplicitVRLittleEndian == pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID
