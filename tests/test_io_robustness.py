"""One malformed file never aborts a scan; every file is accounted for, with a reason in words."""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from ctreduce.io.discover import scan
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series


@pytest.fixture
def phantom():
    return make_phantom(n_slices=6, size=16, slice_thickness=2.0, seed=3)


def _accounted(found) -> set[str]:
    """Every path that a scan result mentions: in a volume, skipped, or in an error."""
    paths = {p for v in found.volumes for p in v.paths}
    for entry in found.skipped:
        paths.add(entry["path"])
        paths.update(entry.get("paths", ()))
    for entry in found.errors:
        paths.update(entry["paths"])
    return paths


def _set(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def test_bad_vr_file_next_to_a_good_series(tmp_path, phantom):
    hu, spacing = phantom
    write_dicom_series(hu, spacing, tmp_path / "good")
    shutil.copy(get_testdata_file("badVR.dcm"), tmp_path / "good" / "badVR.dcm")
    found = scan([tmp_path], modality="any")
    assert [v.n_slices for v in found.volumes] == [6]
    (error,) = found.errors
    assert "badVR.dcm: invalid NumberOfFrames '1A'" in error["error"]
    assert error["paths"] == [str(tmp_path / "good" / "badVR.dcm")]
    # by default it is an RT dose, skipped for its modality; the CT series is still found
    found = scan([tmp_path])
    assert [v.n_slices for v in found.volumes] == [6] and not found.errors
    assert any("modality RTDOSE" in s["reason"] for s in found.skipped)


def test_cifti_file_is_skipped_with_its_reason(tmp_path, phantom):
    import nibabel

    hu, spacing = phantom
    write_dicom_series(hu, spacing, tmp_path / "good")
    cifti = Path(nibabel.__file__).parent / "tests" / "data" / "row_major.dconn.nii"
    shutil.copy(cifti, tmp_path / "row_major.dconn.nii")
    found = scan([tmp_path])
    assert [v.n_slices for v in found.volumes] == [6]
    (skip,) = found.skipped
    assert skip["path"].endswith("row_major.dconn.nii") and "Cifti2Image is not a NIfTI volume" in skip["reason"]


@pytest.mark.parametrize("values, reason", [
    ({"ImageOrientationPatient": [0, 0, 0, 0, 0, 0]},
     "ImageOrientationPatient [0.0, 0.0, 0.0, 0.0, 0.0, 0.0] is degenerate (row and column directions zero or "
     "parallel)"),
    ({"ImageOrientationPatient": [1, 0, 0, 0, 1]}, "ImageOrientationPatient has 5 values, expected 6"),
    ({"ImagePositionPatient": [0, 0]}, "ImagePositionPatient has 2 values, expected 3"),
    ({"ImagePositionPatient": [0, 0, "nan"]}, "ImagePositionPatient [0.0, 0.0, nan] is not finite"),
    ({"Rows": None}, "empty Rows"),
])
def test_a_malformed_slice_makes_its_series_an_error_naming_the_file(tmp_path, phantom, values, reason):
    hu, spacing = phantom
    write_dicom_series(hu, spacing, tmp_path / "good", seed=1)
    bad = write_dicom_series(hu, spacing, tmp_path / "bad", seed=2)
    with pytest.warns(UserWarning) if "nan" in str(values) else nullcontext():  # pydicom: DS 'nan'
        _set(bad[2], **values)
    found = scan([tmp_path])
    assert [v.volume_id for v in found.volumes] == [f"{tmp_path.name}/good"]
    (error,) = found.errors
    assert error["error"] == f"{bad[2]}: {reason}; use --allow-gaps to reduce the rest of the series without it"
    assert error["volume_id"] == f"{tmp_path.name}/bad" and error["source"] == str(tmp_path / "bad")
    assert sorted(error["paths"]) == sorted(map(str, bad))
    # with --allow-gaps that file alone is left out, named with its reason, and the gap recorded
    found = scan([tmp_path], allow_gaps=True)
    volumes = {v.volume_id: v for v in found.volumes}
    assert not found.errors and volumes[f"{tmp_path.name}/good"].n_slices == 6
    series = volumes[f"{tmp_path.name}/bad"]
    assert series.paths == tuple(map(str, bad[:2] + bad[3:])) and str(bad[2]) not in series.paths
    (skip,) = found.skipped
    assert skip["path"] == str(bad[2]) and skip["reason"].startswith("left out of series") and reason in skip["reason"]
    assert series.warnings[0] == f"{bad[2]}: left out of the series ({reason})"
    assert any("missing slice(s) after z=2.00 mm" in w for w in series.warnings)
    assert series.z_mm == (0.0, 2.0, 6.0, 8.0, 10.0)


def test_misleading_messages_are_fixed(tmp_path, phantom):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / "s", shuffle_names=False)
    data = files[0].read_bytes()
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID).encode()
    cut = data.index(study_uid) + len(study_uid) // 2  # inside the element before SeriesInstanceUID
    (tmp_path / "truncated.dcm").write_bytes(data[:cut])
    (tmp_path / "zero.dcm").write_bytes(b"")
    (tmp_path / "text.dcm").write_text("hello")
    reasons = {Path(s["path"]).name: s["reason"] for s in scan([tmp_path]).skipped}
    assert reasons["truncated.dcm"] == f"truncated DICOM file: it ends after {cut} bytes, inside its header " \
                                       "(no SeriesInstanceUID)"
    assert reasons["zero.dcm"] == "empty file (0 bytes)"
    assert reasons["text.dcm"] == "not a DICOM file (no 128-byte preamble and 'DICM' prefix)"


def test_multi_frame_error_names_the_multi_frame_file(tmp_path, phantom):
    hu, spacing = phantom
    files = write_dicom_series(hu, spacing, tmp_path / "s", shuffle_names=False)
    ds = pydicom.dcmread(files[0])  # same series, but two frames and no per-frame geometry
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(tmp_path / "s" / "zz_multi.dcm")
    found = scan([tmp_path])
    assert [v.n_slices for v in found.volumes] == [6]
    (error,) = found.errors
    assert error["error"].startswith(f"{tmp_path / 's' / 'zz_multi.dcm'}: multi-frame file without per-frame "
                                     "geometry")
    assert error["paths"] == [str(tmp_path / "s" / "zz_multi.dcm")]


def test_failed_series_have_distinct_ids_and_list_their_files(tmp_path, phantom):
    hu, spacing = phantom
    series = []
    for i in range(5):  # UIDs that end alike, as pydicom's and many vendors' do
        files = write_dicom_series(hu[:3], spacing, tmp_path / "tmp" / str(i), series_uid=f"1.2.{i}.77777777777777")
        _set(files[1], ImagePositionPatient=pydicom.dcmread(files[0]).ImagePositionPatient)  # duplicate
        series.append(files)
    for f in (tmp_path / "tmp").rglob("*.dcm"):
        f.rename(tmp_path / f"{f.parent.name}_{f.name}")
    found = scan([tmp_path])
    assert not found.volumes and len(found.errors) == 5
    assert len({e["volume_id"] for e in found.errors}) == 5
    for error, files in zip(found.errors, series, strict=True):
        assert sorted(error["paths"]) == sorted(str(tmp_path / f"{f.parent.name}_{f.name}") for f in files)
        assert "duplicate slice position" in error["error"]


def test_symlinked_folders_are_followed_once_and_loops_reported(tmp_path, phantom):
    hu, spacing = phantom
    tree = tmp_path / "tree"
    write_dicom_series(hu, spacing, tree / "patient000" / "ct", seed=1)
    write_dicom_series(hu[:4], spacing, tmp_path / "elsewhere" / "ct", seed=2)
    (tree / "linked").symlink_to(tmp_path / "elsewhere")
    (tree / "again").symlink_to(tmp_path / "elsewhere")
    (tree / "patient000" / "loop").symlink_to(tree)
    (tree / "broken.dcm").symlink_to(tmp_path / "nowhere.dcm")
    found = scan([tree])
    assert [(v.volume_id, v.n_slices) for v in found.volumes] == [("tree/again/ct", 4), ("tree/patient000/ct", 6)]
    reasons = {Path(s["path"]).relative_to(tree).as_posix(): s["reason"] for s in found.skipped}
    assert reasons == {
        "broken.dcm": f"broken symbolic link to {tmp_path / 'nowhere.dcm'}",
        "linked": f"same folder as {tree / 'again'}, already scanned",
        "patient000/loop": f"symbolic link loop: leads back to {tree.resolve()}, a folder that contains it",
    }


def test_overlapping_inputs_yield_each_series_once(tmp_path, phantom):
    hu, spacing = phantom
    tree = tmp_path / "tree"
    for i in range(2):
        write_dicom_series(hu, spacing, tree / f"patient00{i}", seed=i)
    found = scan([tree, tree / "patient000", tree / "patient001" / "IM0000.dcm"])
    assert [v.volume_id for v in found.volumes] == ["tree/patient000", "tree/patient001"]
    assert [s["reason"] for s in found.skipped] == [
        f"same folder as {tree / 'patient000'}, already scanned",
        f"same file as {tree / 'patient001' / 'IM0000.dcm'}, already scanned",
    ]
    # the first input that reaches a file wins
    found = scan([tree / "patient000", tree])
    assert [v.volume_id for v in found.volumes] == ["patient000/patient000", "tree/patient001"]
    assert [s["path"] for s in found.skipped] == [str(tree / "patient000")]


def test_every_file_of_the_library_test_data_is_accounted_for():
    """Scanning pydicom's and nibabel's own test files: no exception, no file unaccounted for."""
    import nibabel

    roots = [Path(pydicom.__file__).parent / "data" / "test_files", Path(get_testdata_file("693_UNCI.dcm")).parent,
             Path(nibabel.__file__).parent / "tests" / "data"]
    found = scan(roots, modality="any")
    files = {str(Path(d) / f) for root in roots for d, _, names in os.walk(root) for f in names}
    assert files <= _accounted(found)
    assert all(s["reason"] for s in found.skipped) and all(e["error"] for e in found.errors)
    ids = [v.volume_id for v in found.volumes] + [e["volume_id"] for e in found.errors]
    assert len(ids) == len(set(ids))


def test_rgb_and_non_ct_multi_frame_files_are_skipped(tmp_path):
    for name in ("SC_rgb.dcm", "emri_small.dcm", "693_UNCI.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    found = scan([tmp_path], modality="any")
    assert [Path(p).name for v in found.volumes for p in v.paths] == ["693_UNCI.dcm"]
    reasons = {Path(s["path"]).name: s["reason"] for s in found.skipped}
    assert reasons == {
        "SC_rgb.dcm": "RGB image (SamplesPerPixel 3) is not a CT slice",
        "emri_small.dcm": "multi-frame Enhanced MR Image Storage file (10 frames) is not a CT image; only CT "
                          "multi-frame files are read",
    }


def test_dicomdir_is_not_reported_as_missing_a_series(tmp_path):
    shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "DICOMDIR")
    (skip,) = scan([tmp_path]).skipped
    assert skip["reason"] == "DICOMDIR (the index of a DICOM medium), not an image"


def test_the_listing_digest_keeps_its_recorded_form(tmp_path, phantom):
    """A complete run is recognised by this digest (``summary.json``'s ``inputs_digest``): its bytes are the
    ones runs recorded before it was computed a line at a time, so their reruns still have nothing to do."""
    import hashlib

    from ctreduce.io.discover import walk

    hu, spacing = phantom
    write_dicom_series(hu, spacing, tmp_path / "a" / "ct", seed=1)
    (tmp_path / "a" / "notes.txt").write_text("")  # empty: skipped
    single = tmp_path / "b.dcm"
    single.write_bytes(next((tmp_path / "a" / "ct").glob("*.dcm")).read_bytes())
    listing = walk([tmp_path / "a", single])
    expected = hashlib.sha1()
    for root, files, skipped in listing.roots:
        lines = [f"input {root}", *(f"{p}\0{listing.stats[p][0]}\0{listing.stats[p][1]}" for p in files),
                 *(f"skip {s['path']}\0{s['reason']}" for s in skipped)]
        expected.update("\n".join(lines).encode())
    assert listing.digest == expected.hexdigest()
    assert [len(files) for _, files, _ in listing.roots] == [6, 1]
    assert [s["reason"] for _, _, skipped in listing.roots for s in skipped] == ["empty file (0 bytes)"]


def test_a_file_reached_by_a_link_and_by_its_folder_counts_once(tmp_path, phantom):
    """Files are recorded by their real path only when reached by a link (or named as an input); a plain file
    of a listed folder is found by that folder."""
    hu, spacing = phantom
    tree = tmp_path / "tree"
    write_dicom_series(hu, spacing, tree / "b" / "ct", seed=1)
    target = sorted((tree / "b" / "ct").glob("*.dcm"))[0]
    (tree / "a").mkdir()
    (tree / "a" / "early.dcm").symlink_to(target)  # listed before its folder
    (tree / "c").mkdir()
    (tree / "c" / "late.dcm").symlink_to(target)  # listed after it
    found = scan([tree])
    assert [v.n_slices for v in found.volumes] == [6]
    assert str(tree / "a" / "early.dcm") in found.volumes[0].paths and str(target) not in found.volumes[0].paths
    assert {Path(s["path"]).relative_to(tree).as_posix(): s["reason"] for s in found.skipped} == {
        f"b/ct/{target.name}": f"same file as {tree / 'a' / 'early.dcm'}, already scanned",
        "c/late.dcm": f"same file as {tree / 'a' / 'early.dcm'}, already scanned",
    }
