"""Readers: DICOM series discovery and ordering, NIfTI, NRRD, and every bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ctreduce.io.discover import read_volume, scan
from ctreduce.io.volume import VolumeError
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series, write_nifti, write_nrrd


@pytest.fixture
def phantom():
    return make_phantom(n_slices=12, size=32, slice_thickness=2.0, seed=3)


def test_dicom_series_is_ordered_by_position_not_name_or_instance_number(tmp_path, phantom):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / "s", seed=1)
    assert sorted(f.name for f in files) != [f.name for f in files]  # names are shuffled
    vol = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.hu.dtype == np.int16
    assert np.all(np.diff(vol.z_mm) > 0)
    assert vol.spacing[0] == pytest.approx(2.0)
    assert [Path(p).name for p in vol.slice_sources] == [f.name for f in files]
    assert vol.modality == "CT" and vol.format == "dicom"


def test_series_with_descending_positions_is_reversed(tmp_path, phantom):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / "s", shuffle_names=False)
    for k, f in enumerate(files):  # flip the body axis: slice k now lies lowest
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], -k * 2.0]
        ds.save_as(f)
    np.testing.assert_array_equal(read_volume(tmp_path / "s").hu, hu[::-1])


def test_several_series_in_one_folder_and_non_ct(tmp_path, phantom):
    hu, spacing = phantom
    write_dicom_series(hu, spacing, tmp_path / "mixed", seed=1)
    write_dicom_series(hu[:6], spacing, tmp_path / "mixed2", seed=2)
    for f in (tmp_path / "mixed2").iterdir():
        f.rename(tmp_path / "mixed" / f"b_{f.name}")
    write_dicom_series(hu[:4], spacing, tmp_path / "xray", modality="DX", seed=4)
    found = scan([tmp_path])
    assert sorted(v.n_slices for v in found.volumes) == [6, 12]
    assert all("#" in v.volume_id for v in found.volumes)  # two series share a folder
    assert any("modality DX" in s["reason"] and "--modality any" in s["reason"] for s in found.skipped)
    assert len(scan([tmp_path], modality="any").volumes) == 3


def test_non_dicom_and_truncated_files(tmp_path, phantom):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / "s", seed=1)
    (tmp_path / "s" / "README").write_text("hello")
    found = scan([tmp_path])
    assert any(s["path"].endswith("README") and "not a DICOM file" in s["reason"] for s in found.skipped)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 500])  # pixel data cut short
    with pytest.raises(VolumeError, match=files[3].name):
        read_volume(tmp_path / "s")


def test_missing_slice_is_an_error_unless_allowed(tmp_path, phantom):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / "s", shuffle_names=False)
    files[5].unlink()
    found = scan([tmp_path])
    assert not found.volumes and "missing slice" in found.errors[0]["error"]
    assert files[4].name in found.errors[0]["error"]
    vol = read_volume(tmp_path / "s", allow_gaps=True)
    assert vol.n_slices == 11 and any("missing slice" in w for w in vol.warnings)


def test_duplicate_positions_are_an_error(tmp_path, phantom):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / "s", shuffle_names=False)
    ds = pydicom.dcmread(files[2])
    ds.ImagePositionPatient = pydicom.dcmread(files[1]).ImagePositionPatient
    ds.save_as(files[2])
    error = scan([tmp_path]).errors[0]["error"]
    assert "duplicate slice position" in error and files[1].name in error


def test_rle_compressed_series(tmp_path, phantom):
    from pydicom.uid import RLELossless

    hu, spacing = phantom
    write_dicom_series(hu, spacing, tmp_path / "rle", transfer_syntax=RLELossless)
    np.testing.assert_array_equal(read_volume(tmp_path / "rle").hu, hu)


def test_undecodable_transfer_syntax_names_file_and_syntax(tmp_path, phantom):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / "s", shuffle_names=False)
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(files[0], enforce_file_format=True)
    with pytest.raises(VolumeError, match=rf"{files[0].name}.*cannot read pixel data.*MPEG2"):
        read_volume(tmp_path / "s")


def test_real_ct_slice_is_a_single_slice_volume(real_ct_slice):
    vol = read_volume(real_ct_slice)
    ds = pydicom.dcmread(real_ct_slice)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.hu[0], expected)
    assert any("single-slice" in w for w in vol.warnings)


def test_nifti_reads_axial_slices_in_itk_order(tmp_path, phantom):
    hu, spacing = phantom
    vol = read_volume(write_nifti(hu, spacing, tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.hu.dtype == np.int16 and vol.spacing == pytest.approx((2.0, spacing[1], spacing[2]))
    # the same volume stored inferior-up (negative z axis) reads identically
    data = np.transpose(hu, (2, 1, 0))[:, :, ::-1]
    affine = np.diag([spacing[2], spacing[1], -2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "flipped.nii")
    np.testing.assert_array_equal(read_volume(tmp_path / "flipped.nii").hu, hu)


def test_scaled_nifti_becomes_float32_not_float64(tmp_path, phantom):
    hu, spacing = phantom
    img = nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), np.diag([1, 1, 2, 1.0]))
    img.header.set_slope_inter(0.5, -10)
    nib.save(img, tmp_path / "s.nii")
    vol = read_volume(tmp_path / "s.nii")
    assert vol.hu.dtype == np.float32
    np.testing.assert_allclose(vol.hu, hu * 0.5 - 10)


def test_nan_nifti_is_an_error(tmp_path):
    data = np.zeros((8, 8, 4), np.float32)
    data[2, 2, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(VolumeError, match=r"nan.nii.gz: 1 NaN/infinite voxels"):
        read_volume(tmp_path / "nan.nii.gz")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_simpleitk_formats(tmp_path, phantom, suffix):
    hu, spacing = phantom
    vol = read_volume(write_nrrd(hu, spacing, tmp_path / f"v{suffix}"))
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.format == "sitk" and np.all(np.diff(vol.z_mm) > 0)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    found = scan([tmp_path / "empty"])
    assert not found.volumes and found.skipped[0]["reason"] == "empty folder"


def test_corrupt_nifti_is_skipped_with_reason(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"not gzip at all")
    found = scan([tmp_path])
    assert not found.volumes and "NIfTI" in found.skipped[0]["reason"]


def test_jpeg2000_compressed_ct_decodes_like_the_uncompressed_file():
    from pydicom.data import get_testdata_file

    compressed = read_volume(get_testdata_file("693_J2KI.dcm"))
    plain = read_volume(get_testdata_file("693_UNCI.dcm"))
    assert pydicom.dcmread(get_testdata_file("693_J2KI.dcm")).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(compressed.hu, plain.hu)


@pytest.mark.parametrize("plane, orientation, axis, reverse", [
    # normal = row x column = (-1, 0, 0): ascending along it is right-to-left, so slice k (x = k) comes last
    ("sagittal", [0, 1, 0, 0, 0, -1], 0, True),
    # normal = (0, 1, 0): ascending along it is anterior-to-posterior, slice k (y = k) in place
    ("coronal", [1, 0, 0, 0, 0, -1], 1, False),
])
def test_non_axial_series_is_ordered_along_its_normal(tmp_path, phantom, plane, orientation, axis, reverse):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / plane, seed=5)
    numbers = np.random.default_rng(7).permutation(len(files)) + 1  # InstanceNumber says nothing either
    for k, f in enumerate(files):
        position = [-12.0, -12.0, 40.0]
        position[axis] = k * 2.0
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient, ds.ImagePositionPatient, ds.InstanceNumber = orientation, position, int(numbers[k])
        ds.save_as(f)
    vol = read_volume(tmp_path / plane)
    np.testing.assert_array_equal(vol.hu, hu[::-1] if reverse else hu)
    assert [Path(p).name for p in vol.slice_sources] == [f.name for f in (files[::-1] if reverse else files)]
    np.testing.assert_allclose(np.diff(vol.z_mm), 2.0)
    assert vol.spacing[0] == pytest.approx(2.0)


@pytest.mark.parametrize("slopes", [[2.0], [0.5], [2.0, 0.5, 1.0]], ids=["2", "0.5", "per-slice"])
def test_rescale_slope_gives_raw_times_slope_plus_intercept(tmp_path, phantom, slopes):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / "s", seed=2)
    expected = []
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = slopes[k % len(slopes)], -1000 - k
        ds.save_as(f)
        expected.append(ds.pixel_array * ds.RescaleSlope + ds.RescaleIntercept)
    vol = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, np.stack(expected))
    assert vol.hu.dtype == (np.float32 if 0.5 in slopes else np.int16)
