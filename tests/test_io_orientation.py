"""Slice order and positions of single-file volumes whatever their stored slice direction."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ctreduce.io.discover import read_volume
from ctreduce.sample_data.phantom import make_phantom


def _write(hu: np.ndarray, spacing, path, *, descending: bool, origin_z: float = -40.0) -> None:
    """``hu`` (anatomical order, slice 0 lowest) written with the slice axis pointing up or down.

    Pointing down, the file's first slice is the highest one, so its voxels are stored reversed and
    its origin is that slice's position.
    """
    thickness, row_mm, col_mm = spacing
    top = origin_z + (len(hu) - 1) * thickness
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu[::-1] if descending else hu))
    image.SetSpacing((col_mm, row_mm, thickness))
    image.SetOrigin((0.0, 0.0, top if descending else origin_z))
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1) if descending else (1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(path))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_negative_slice_direction_gives_ascending_slices_and_positions(tmp_path, suffix):
    hu, spacing = make_phantom(n_slices=9, size=24, slice_thickness=2.5, seed=5)
    _write(hu, spacing, tmp_path / f"up{suffix}", descending=False)
    _write(hu, spacing, tmp_path / f"down{suffix}", descending=True)
    up, down = read_volume(tmp_path / f"up{suffix}"), read_volume(tmp_path / f"down{suffix}")
    assert np.array_equal(up.hu, hu)  # the reference: stored in anatomical order already
    assert np.array_equal(down.hu, hu)  # slice 0 is the lowest, whichever way the file runs
    assert np.allclose(up.z_mm, -40.0 + 2.5 * np.arange(9))
    assert np.allclose(down.z_mm, up.z_mm) and np.all(np.diff(down.z_mm) > 0)
    assert down.spacing == pytest.approx(up.spacing)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_a_descending_file_gives_the_slices_and_positions_of_the_same_scan_as_dicom(tmp_path, suffix):
    """The DICOM reader orders a series by position along the normal, ascending: a single-file volume of
    the same scan stored top slice first comes out in that order, with those positions."""
    from ctreduce.sample_data.phantom import write_dicom_series

    hu, spacing = make_phantom(n_slices=7, size=24, slice_thickness=3.0, seed=2)
    write_dicom_series(hu, spacing, tmp_path / "dicom", seed=2)  # slice k at z = k * thickness
    _write(hu, spacing, tmp_path / f"down{suffix}", descending=True, origin_z=0.0)
    dicom, down = read_volume(tmp_path / "dicom"), read_volume(tmp_path / f"down{suffix}")
    assert np.array_equal(dicom.hu, hu) and np.array_equal(down.hu, dicom.hu)
    assert np.allclose(down.z_mm, dicom.z_mm)
