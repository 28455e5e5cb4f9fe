"""Multi-frame (enhanced) CT: one file is one volume, read like the equivalent single-frame series."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ctreduce.io.discover import load, read_volume, scan
from ctreduce.io.volume import VolumeError
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _item(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def write_enhanced_ct(hu: np.ndarray, spacing: Sequence[float], path: Path, *, order: Sequence[int] | None = None,
                      slopes: Sequence[float] | None = None, intercept: float = -1024.0,
                      per_frame_orientation: bool = False, sop_class: str = ENHANCED_CT,
                      z_of_slice: Sequence[float] | None = None) -> Path:
    """One multi-frame CT file holding ``hu`` (slices, rows, cols); slice k lies at z = k * thickness.

    Frame j stores slice ``order[j]`` (frames need not be in anatomical order), with rescale slope
    ``slopes[order[j]]`` given per frame when ``slopes`` is set (else one shared rescale of slope 1).
    Orientation is shared unless ``per_frame_orientation``.
    """
    n, rows, cols = hu.shape
    thickness, row_mm, col_mm = (float(v) for v in spacing)
    order = list(range(n)) if order is None else list(order)
    z = [k * thickness for k in range(n)] if z_of_slice is None else list(z_of_slice)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "PHANTOM"
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = _item(PixelMeasuresSequence=[_item(PixelSpacing=[row_mm, col_mm], SliceThickness=thickness)])
    if not per_frame_orientation:
        shared.PlaneOrientationSequence = [_item(ImageOrientationPatient=list(AXIAL))]
    if slopes is None:
        shared.PixelValueTransformationSequence = [_item(RescaleSlope=1, RescaleIntercept=intercept,
                                                         RescaleType="HU")]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, stored = [], []
    for k in order:
        frame = _item(PlanePositionSequence=[_item(ImagePositionPatient=[0.0, 0.0, z[k]])])
        slope = 1.0 if slopes is None else float(slopes[k])
        if per_frame_orientation:
            frame.PlaneOrientationSequence = [_item(ImageOrientationPatient=list(AXIAL))]
        if slopes is not None:
            frame.PixelValueTransformationSequence = [_item(RescaleSlope=slope, RescaleIntercept=intercept,
                                                            RescaleType="HU")]
        frames.append(frame)
        stored.append(np.rint((hu[k].astype(np.float64) - intercept) / slope).astype(np.uint16))
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack(stored).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def phantom():
    return make_phantom(n_slices=8, size=24, slice_thickness=2.5, seed=4)


SHUFFLED = [5, 0, 7, 2, 6, 1, 3, 4]


@pytest.mark.parametrize("variant", ["shared", "per-frame orientation", "legacy converted"])
def test_enhanced_ct_reads_like_the_single_frame_series(tmp_path, phantom, variant):
    hu, spacing = phantom
    write_dicom_series(hu, spacing, tmp_path / "series")
    path = write_enhanced_ct(hu, spacing, tmp_path / "enhanced.dcm", order=SHUFFLED,
                             per_frame_orientation=variant == "per-frame orientation",
                             sop_class=LEGACY_CONVERTED_CT if variant == "legacy converted" else ENHANCED_CT)
    series, enhanced = read_volume(tmp_path / "series"), read_volume(path)
    np.testing.assert_array_equal(enhanced.hu, hu)
    np.testing.assert_array_equal(enhanced.hu, series.hu)
    np.testing.assert_allclose(enhanced.z_mm, series.z_mm)
    assert enhanced.hu.dtype == series.hu.dtype == np.int16
    assert enhanced.spacing == pytest.approx(series.spacing)
    assert enhanced.slice_sources == (str(path),) * 8 and enhanced.format == "dicom" and enhanced.modality == "CT"


def test_one_multi_frame_file_is_one_volume(tmp_path, phantom):
    hu, spacing = phantom
    a = write_enhanced_ct(hu, spacing, tmp_path / "a.dcm", order=SHUFFLED)
    b = write_enhanced_ct(hu[:5], spacing, tmp_path / "b.dcm")
    found = scan([tmp_path])
    assert [(v.volume_id, v.n_slices) for v in found.volumes] == [(f"{tmp_path.name}/a.dcm", 8),
                                                                  (f"{tmp_path.name}/b.dcm", 5)]
    source = found.volumes[0]
    assert source.paths == (str(a),) and source.source == str(a)
    assert source.sop_uids == (str(pydicom.dcmread(a, stop_before_pixels=True).SOPInstanceUID),)
    assert source.frames == tuple(SHUFFLED.index(k) for k in range(8))  # file frame of each slice
    assert found.volumes[1].paths == (str(b),)


def test_per_frame_rescale_gives_raw_times_slope_plus_intercept(tmp_path, phantom):
    hu, spacing = phantom
    hu = (hu // 2) * 2  # exactly representable with slope 2
    slopes = [2.0, 1.0, 0.5, 2.0, 1.0, 0.5, 2.0, 1.0]
    path = write_enhanced_ct(hu, spacing, tmp_path / "e.dcm", order=SHUFFLED, slopes=slopes)
    vol = read_volume(path)
    ds = pydicom.dcmread(path)
    for j, k in enumerate(SHUFFLED):
        group = ds.PerFrameFunctionalGroupsSequence[j].PixelValueTransformationSequence[0]
        expected = ds.pixel_array[j] * float(group.RescaleSlope) + float(group.RescaleIntercept)
        np.testing.assert_array_equal(vol.hu[k], expected)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.hu.dtype == np.float32


def test_frames_get_the_gap_and_duplicate_checks_of_a_series(tmp_path, phantom):
    hu, spacing = phantom
    z = [k * 2.5 for k in range(8)]
    gap = write_enhanced_ct(hu, spacing, tmp_path / "gap.dcm", order=SHUFFLED,
                            z_of_slice=z[:4] + [v + 5.0 for v in z[4:]])
    with pytest.raises(VolumeError, match=rf"{gap} frame \d: missing slice\(s\) after z=7.50 mm.*--allow-gaps"):
        read_volume(gap)
    assert read_volume(gap, allow_gaps=True).n_slices == 8
    duplicate = write_enhanced_ct(hu, spacing, tmp_path / "dup.dcm", z_of_slice=z[:3] + z[2:7])
    (error,) = scan([duplicate]).errors
    assert error["error"] == (f"{duplicate} frame 4: duplicate slice position 5.000 mm, same as {duplicate} frame 3 "
                              "(1 duplicate(s) in the series)")
    assert error["paths"] == [str(duplicate)]


def test_frame_without_position_is_an_error_naming_the_file(tmp_path, phantom):
    hu, spacing = phantom
    path = write_enhanced_ct(hu, spacing, tmp_path / "e.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
    ds.save_as(path)
    (error,) = scan([tmp_path]).errors
    assert error["error"].startswith(f"{path}: multi-frame file without per-frame geometry "
                                     "(PlanePositionSequence of frame 4)")


def test_pydicom_enhanced_ct_sample():
    path = get_testdata_file("eCT_Supplemental.dcm")
    vol = read_volume(path)
    ds = pydicom.dcmread(path)
    # ImageOrientationPatient [-1, 0, 0, 0, 1, 0]: the normal points to the feet, so the upper
    # frame (z = -149) comes first, as in a single-frame series of that orientation.
    positions = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    assert positions == [-159.0, -149.0]
    np.testing.assert_array_equal(vol.z_mm, [149.0, 159.0])
    np.testing.assert_array_equal(vol.hu, ds.pixel_array[::-1].astype(np.int32) - 1024)
    assert vol.spacing == pytest.approx((10.0, 0.388672, 0.388672))


def test_sources_keep_their_file_and_frames_through_load(tmp_path, phantom):
    hu, spacing = phantom
    shutil.copy(get_testdata_file("eCT_Supplemental.dcm"), tmp_path / "ect.dcm")
    write_enhanced_ct(hu, spacing, tmp_path / "e.dcm", order=SHUFFLED)
    volumes = [load(source) for source in scan([tmp_path]).volumes]
    assert [v.n_slices for v in volumes] == [8, 2]
    np.testing.assert_array_equal(volumes[0].hu, hu)
