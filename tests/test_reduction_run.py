"""The reduce run: manifest, determinism, resume, refusals, bad volumes; the ReduceResult it returns."""

from __future__ import annotations

import json

import imagehash
import numpy as np
import pandas as pd
import pytest
from conftest import reference_uint8, tree_fingerprint
from PIL import Image

import ctreduce
from ctreduce.reduction import backends, plan
from ctreduce.store.export import ExportStore
from ctreduce.store.run import RunConflict

COLUMNS = ["volume_id", "source", "slice_index", "z_mm", "kept", "leader", "distance", "method",
           "threshold", "params", "intensity", "hash", "dhash", "pixel_digest"]


def paper_reference(hu: np.ndarray, threshold: int = 6) -> list[int]:
    """The paper's HASH procedure written with imagehash objects."""
    hashes = [imagehash.dhash(Image.fromarray(reference_uint8(s))) for s in hu]
    remaining, kept = list(range(len(hu))), []
    while remaining:
        ref = remaining.pop(0)
        kept.append(ref)
        remaining = [i for i in remaining if hashes[ref] - hashes[i] > threshold]
    return kept


def test_manifest_rows_and_columns(archive, tmp_path):
    manifest = ctreduce.reduce(archive, tmp_path / "run").manifest
    assert list(manifest.columns) == COLUMNS
    assert manifest.groupby("volume_id").size().to_dict() == {
        "archive/nifti/p5": 24, "archive/nrrd/p6": 16, "archive/patient0/ct": 30, "archive/patient1/ct": 20}
    for _, vol in manifest.groupby("volume_id"):
        assert vol["slice_index"].tolist() == list(range(len(vol)))
        assert vol["z_mm"].is_monotonic_increasing
        kept = vol[vol.kept]
        assert (kept["leader"] == kept["slice_index"]).all() and kept["distance"].isna().all()
        dropped = vol[~vol.kept]
        assert (dropped["distance"] <= 6).all()
        assert set(dropped["leader"]) <= set(kept["slice_index"])
        assert vol["slice_index"].iloc[0] in set(kept["slice_index"])
    assert (manifest["method"] == "hash").all() and (manifest["threshold"] == 6).all()
    assert json.loads(manifest["params"].iloc[0]) == {"hash": "dhash", "hash_size": 8}
    on_disk = pd.read_parquet(tmp_path / "run" / "manifest.parquet")
    pd.testing.assert_frame_equal(on_disk, manifest, check_dtype=False)


@pytest.mark.parametrize("method", ["all", "every-n", "ssim", "hash"])
def test_every_manifest_carries_each_slices_dhash(archive, method):
    """Part 9: the 64-bit dHash of each slice's 8-bit image, whatever the method, equal to imagehash's."""
    manifest = ctreduce.reduce(archive / "nrrd", method=method).manifest
    volume = ctreduce.read_volume(archive / "nrrd" / "p6.nrrd")
    expected = [str(imagehash.dhash(Image.fromarray(reference_uint8(s)))) for s in volume.hu]
    assert manifest["dhash"].tolist() == expected
    if method == "hash":
        assert manifest["hash"].tolist() == expected


def test_the_result_holds_the_summary_and_reads_the_manifest_from_the_run_folder(archive, tmp_path):
    """The summary is a value of the result, not an attribute of the manifest (which pandas deep-copies into
    every frame derived from it); the manifest is read from the run folder when asked for, or held in
    memory for a run without one."""
    result = ctreduce.reduce(archive, tmp_path / "run")
    assert result.summary == {k: v for k, v in json.loads((tmp_path / "run" / "summary.json").read_text()).items()
                              if k != "schema"}
    assert "manifest" not in vars(result)  # not read until asked for
    assert result.complete and result.totals["volumes_reduced"] == 4 and result.manifest.attrs == {}
    pd.testing.assert_frame_equal(result.manifest, pd.read_parquet(tmp_path / "run" / "manifest.parquet"))
    in_memory = ctreduce.reduce(archive)
    assert in_memory.run_dir is None and in_memory.totals == result.totals
    pd.testing.assert_frame_equal(in_memory.manifest, result.manifest, check_dtype=False)


def test_kept_slices_equal_the_paper_procedure(archive):
    manifest = ctreduce.reduce(archive).manifest
    for vid, vol in manifest.groupby("volume_id"):
        volume = ctreduce.read_volume(archive / vid.removeprefix("archive/")
                                      if "patient" in vid else next(archive.glob(vid.split("/", 1)[1] + ".*")))
        assert vol.loc[vol.kept, "slice_index"].tolist() == paper_reference(volume.hu)


def test_sample_volumes_reduce_like_the_paper(sample_volumes, tmp_path):
    result = ctreduce.reduce(sample_volumes, tmp_path / "run")
    for path, (_, vol) in zip(sample_volumes, result.manifest.groupby("volume_id", sort=False), strict=True):
        hu = ctreduce.read_volume(path).hu
        assert vol.loc[vol.kept, "slice_index"].tolist() == paper_reference(hu)
    assert result.totals["kept"] == 48  # 25 of 48 and 23 of 61


def test_same_result_whatever_the_number_of_workers(archive, tmp_path):
    one = ctreduce.reduce(archive, tmp_path / "w1", workers=1).manifest
    two = ctreduce.reduce(archive, tmp_path / "w2", workers=2).manifest
    pd.testing.assert_frame_equal(one, two)


def test_a_single_large_series_is_read_by_every_worker_with_the_same_result(tmp_path):
    from ctreduce.io.discover import scan
    from ctreduce.sample_data.phantom import make_phantom, write_dicom_series

    hu, spacing = make_phantom(n_slices=40, size=32, slice_thickness=1.0, seed=3)
    write_dicom_series(hu, spacing, tmp_path / "in" / "ct", seed=3)
    config = plan.settings(method="hash")
    assert backends.chunkable(scan([tmp_path / "in"]).volumes, config, workers=2)  # fewer volumes than workers
    one = ctreduce.reduce(tmp_path / "in", tmp_path / "w1", workers=1).manifest
    two = ctreduce.reduce(tmp_path / "in", tmp_path / "w2", workers=2, export="npy", export_size=32).manifest
    pd.testing.assert_frame_equal(one, two)
    kept = np.flatnonzero(one["kept"])
    exported = ExportStore.open(tmp_path / "w2" / "export").array()
    expected = np.stack([reference_uint8(hu[k]) for k in kept])
    assert exported.shape == (len(kept), 32, 32) and (exported == expected).all()


def test_all_and_every_n(archive):
    every = ctreduce.reduce(archive, method="every-n", every_n=4).manifest
    assert every["kept"].tolist() == (every["slice_index"] % 4 == 0).tolist()
    assert every["threshold"].isna().all()
    assert ctreduce.reduce(archive, method="all").manifest["kept"].all()


def test_resume_processes_only_missing_volumes(archive, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []
    real = backends.process_source

    def interrupted_after_two(source, config, parts=None, read=None):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(source.volume_id)
        return real(source, config, parts, read)

    monkeypatch.setattr(backends, "process_source", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        ctreduce.reduce(archive, out)
    partial = pd.read_parquet(out / "manifest.parquet")
    assert sorted(partial["volume_id"].unique()) == sorted(calls)
    assert json.loads((out / "summary.json").read_text())["complete"] is False

    resumed = []
    monkeypatch.setattr(backends, "process_source",
                        lambda s, c, p=None, r=None: resumed.append(s.volume_id) or real(s, c, p, r))
    result = ctreduce.reduce(archive, out)
    assert len(resumed) == 2 and not set(resumed) & set(calls)
    assert result.summary["complete"] is True
    pd.testing.assert_frame_equal(result.manifest, ctreduce.reduce(archive, tmp_path / "fresh").manifest)


def test_killed_run_with_a_torn_journal_line_resumes(archive, tmp_path):
    out = tmp_path / "run"
    ctreduce.reduce(archive, out)
    lines = (out / "progress.jsonl").read_text().splitlines()
    (out / "progress.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])
    (out / "manifest.parquet").unlink()
    manifest = ctreduce.reduce(archive, out).manifest
    assert manifest["volume_id"].nunique() == 4


def test_other_settings_in_the_same_folder_are_refused(archive, tmp_path):
    out = tmp_path / "run"
    ctreduce.reduce(archive, out, threshold=6)
    with pytest.raises(RunConflict, match="threshold was 6.0, now 4.0"):
        ctreduce.reduce(archive, out, threshold=4)
    manifest = ctreduce.reduce(archive, out, threshold=4, overwrite=True).manifest
    assert (manifest["threshold"] == 4).all()


def test_output_inside_input_is_refused_and_inputs_are_untouched(archive, tmp_path):
    before = tree_fingerprint(archive)
    with pytest.raises(ValueError, match="inside the input folder"):
        ctreduce.reduce(archive, archive / "out")
    ctreduce.reduce(archive, tmp_path / "run", workers=2)
    assert tree_fingerprint(archive) == before


def test_unwritable_output_is_a_clear_error(archive, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot write to output folder"):
        ctreduce.reduce(archive, blocker / "run")


def test_one_bad_volume_never_stops_the_others(archive, tmp_path):
    data = np.zeros((8, 8, 3), np.float32)
    data[0, 0, 0] = np.nan
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.eye(4)), archive / "nan.nii.gz")
    ct = archive / "patient1" / "ct"
    victim = sorted(ct.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-300])
    manifest = ctreduce.reduce(archive, tmp_path / "run", workers=2).manifest
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["totals"]["volumes_reduced"] == 3 and summary["totals"]["volumes_failed"] == 2
    errors = {e["volume_id"]: e["error"] for e in summary["errors"]}
    assert "NaN" in errors["archive/nan"] and victim.name in errors["archive/patient1/ct"]
    assert manifest["volume_id"].nunique() == 3
    assert {s["reason"] for s in summary["skipped"]} >= {"not a volume format (.txt)", "not a volume format (.xml)"}
    assert set(summary["versions"]) >= {"ctreduce", "numpy", "Pillow", "ImageHash", "pydicom", "nibabel",
                                        "SimpleITK"}


def test_bad_settings_are_rejected_before_any_work(archive):
    from pydantic import ValidationError

    # A setting without meaning for the measure registry is a ValueError; a malformed one a ValidationError.
    with pytest.raises(ValueError, match="outside the range"):
        ctreduce.reduce(archive, threshold=65)
    with pytest.raises(ValueError, match="unknown method"):
        ctreduce.reduce(archive, method="sha")
    with pytest.raises(ValidationError, match="takes no threshold"):
        ctreduce.reduce(archive, method="all", threshold=3)


def test_reduce_volume_api_and_window_policy(archive):
    volume = ctreduce.read_volume(archive / "nrrd" / "p6.nrrd")
    frame = ctreduce.reduce_volume(volume, intensity="window:-600,1500", threshold=0)
    assert (frame["intensity"] == "window:-600,1500").all() and len(frame) == 16
    assert frame["hash"].str.len().eq(16).all()
