"""Tests for the synthetic CT phantom and its DICOM/NIfTI/NRRD writers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import RLELossless

from ctreduce.sample_data.phantom import make_archive, make_phantom, write_dicom_series, write_nifti, write_nrrd


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, tuple[float, float, float]]:
    return make_phantom(n_slices=24, size=48, slice_thickness=5.0, seed=3)


def _read_series(paths: list[Path]) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """HU volume sorted by ImagePositionPatient z, and the datasets in that order."""
    datasets = sorted((pydicom.dcmread(p) for p in paths),
                      key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                   for ds in datasets])
    return hu, datasets


def test_shape_dtype_spacing_and_hu_ranges() -> None:
    hu, spacing = make_phantom(n_slices=32, size=64, slice_thickness=2.5)
    assert hu.shape == (32, 64, 64)
    assert hu.dtype == np.int16
    assert spacing == (2.5, 350.0 / 64, 350.0 / 64)
    assert hu.min() >= -1024 and hu.max() <= 3071
    assert abs(hu[:, :4, :4].mean() + 1000) < 5  # air in the corner
    assert hu.max() > 300  # bone
    assert (hu[-1] < -500).mean() > 0.1  # lungs in the top slice
    assert make_phantom(4, 32, pixel_spacing=2.0)[1] == (2.5, 2.0, 2.0)


def test_deterministic_per_seed_and_seeds_differ() -> None:
    a, _ = make_phantom(n_slices=8, size=32, seed=1)
    b, _ = make_phantom(n_slices=8, size=32, seed=1)
    c, _ = make_phantom(n_slices=8, size=32, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The anatomy itself varies with the seed, not just the noise.
    a0, _ = make_phantom(n_slices=8, size=32, seed=1, noise_hu=0)
    c0, _ = make_phantom(n_slices=8, size=32, seed=2, noise_hu=0)
    assert not np.array_equal(a0, c0)


def test_thin_slices_are_more_similar_than_thick_ones() -> None:
    def adjacent_difference(thickness: float) -> float:
        hu, _ = make_phantom(n_slices=32, size=64, slice_thickness=thickness, noise_hu=0)
        return float(np.abs(np.diff(hu.astype(np.int32), axis=0)).mean())

    assert adjacent_difference(1.0) < 0.6 * adjacent_difference(5.0)


def test_lesion_adds_a_brighter_blob_inside_a_lung() -> None:
    kwargs = dict(n_slices=48, size=96, slice_thickness=2.5, seed=5)
    plain, _ = make_phantom(**kwargs)
    with_lesion, _ = make_phantom(lesion=True, **kwargs)
    diff = with_lesion.astype(np.int32) - plain
    changed = diff != 0
    assert changed.sum() > 0
    assert (diff[changed] > 0).all()
    assert np.median(plain[changed]) < -500  # it sits in lung
    slices = np.flatnonzero(changed.any(axis=(1, 2)))
    assert np.all(np.diff(slices) == 1)  # one contiguous nodule


def test_dicom_round_trip_with_scrambled_names_and_instance_numbers(phantom, tmp_path) -> None:
    hu, spacing = phantom
    paths = write_dicom_series(hu, spacing, tmp_path / "a" / "series", seed=7)
    assert len(paths) == len(hu) and all(p.exists() for p in paths)
    assert len({p.name for p in paths}) == len(hu)
    # Returned in slice order, but the names do not sort that way.
    assert sorted(paths, key=lambda p: p.name) != paths

    back, datasets = _read_series(paths)
    np.testing.assert_array_equal(back, hu)
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    np.testing.assert_allclose(z, np.arange(len(hu)) * spacing[0])
    instance = [int(ds.InstanceNumber) for ds in datasets]
    assert instance != sorted(instance)
    assert sorted(instance) == list(range(1, len(hu) + 1))

    first = datasets[0]
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert first.Modality == "CT" and first.PatientID == "PHANTOM"
    assert (first.BitsAllocated, first.BitsStored, first.PixelRepresentation) == (16, 16, 0)
    assert float(first.RescaleIntercept) == -1024.0
    assert [float(v) for v in first.PixelSpacing] == [spacing[1], spacing[2]]
    assert float(first.SliceThickness) == spacing[0]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(hu)
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)


def test_dicom_options(phantom, tmp_path) -> None:
    hu, spacing = phantom
    hu = hu[:5]
    paths = write_dicom_series(hu, spacing, tmp_path, shuffle_names=False, series_uid="1.2.3",
                               modality="MR", patient_id="P7", rescale_intercept=-2048.0)
    assert [p.name for p in paths] == [f"IM{k:04d}.dcm" for k in range(5)]
    back, datasets = _read_series(paths)
    np.testing.assert_array_equal(back, hu)
    assert {(ds.SeriesInstanceUID, ds.Modality, ds.PatientID) for ds in datasets} == {
        ("1.2.3", "MR", "P7")
    }
    with pytest.raises(ValueError):
        write_dicom_series(hu, spacing, tmp_path / "bad", rescale_intercept=0.0)


def test_shuffled_names_never_sort_in_order(tmp_path) -> None:
    hu = np.zeros((2, 4, 4), dtype=np.int16)
    for seed in range(6):  # with two slices half of all permutations are the identity
        paths = write_dicom_series(hu, (1.0, 1.0, 1.0), tmp_path / str(seed), seed=seed)
        assert sorted(paths, key=lambda p: p.name) != paths


def test_rle_lossless_round_trip(phantom, tmp_path) -> None:
    hu, spacing = phantom
    paths = write_dicom_series(hu, spacing, tmp_path, transfer_syntax=RLELossless)
    back, datasets = _read_series(paths)
    assert all(ds.file_meta.TransferSyntaxUID == RLELossless for ds in datasets)
    np.testing.assert_array_equal(back, hu)


@pytest.mark.parametrize("name", ["vol.nii", "sub/vol.nii.gz"])
def test_nifti_round_trip(phantom, tmp_path, name) -> None:
    hu, spacing = phantom
    path = write_nifti(hu, spacing, tmp_path / name)
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.int16
    np.testing.assert_array_equal(np.transpose(data, (2, 1, 0)), hu)
    np.testing.assert_allclose(img.affine, np.diag([spacing[2], spacing[1], spacing[0], 1.0]))
    np.testing.assert_allclose(img.header.get_zooms(), (spacing[2], spacing[1], spacing[0]))


@pytest.mark.parametrize("name", ["vol.nrrd", "vol.mha"])
def test_sitk_round_trip(phantom, tmp_path, name) -> None:
    hu, spacing = phantom
    path = write_nrrd(hu, spacing, tmp_path / "x" / name)
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    np.testing.assert_allclose(image.GetSpacing(), (spacing[2], spacing[1], spacing[0]))
    np.testing.assert_allclose(image.GetOrigin(), (0.0, 0.0, 0.0))
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel())


def test_make_archive(tmp_path) -> None:
    paths = make_archive(tmp_path, n_volumes=4, n_slices=6, size=32, seed=10)
    assert paths == [
        tmp_path / "patient000" / "series",
        tmp_path / "patient001.nii.gz",
        tmp_path / "patient002.nrrd",
        tmp_path / "patient003" / "series",
    ]
    assert len(list(paths[0].glob("*.dcm"))) == 6
    assert paths[1].is_file() and paths[2].is_file()
    # Volume i is the phantom of seed + i.
    expected, _ = make_phantom(6, 32, seed=12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(paths[2]))), expected)
    with pytest.raises(ValueError):
        make_archive(tmp_path / "bad", formats=("png",))
