"""What the parent of a reduce run holds per file: the values a series repeats once, the run's tables
written a batch of volumes at a time, and read back as they were recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ctreduce.io.discover import scan
from ctreduce.io.volume import VolumeSource
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
from ctreduce.store.run import RunFolder


def test_the_headers_of_a_series_share_the_values_it_repeats(tmp_path: Path) -> None:
    hu, spacing = make_phantom(n_slices=70, size=32, slice_thickness=1.0, seed=1)
    write_dicom_series(hu, spacing, tmp_path / "in" / "ct", seed=1)
    found = scan([tmp_path / "in"], workers=2)  # 70 files: read in the worker pool, pickled back in batches
    headers = [value[2] for value in found.headers.values()]
    assert len(headers) == 70
    for field in ("series_uid", "modality", "orientation", "pixel_spacing"):
        assert len({id(getattr(h, field)) for h in headers}) == 1, field  # one for the series, not one a batch
    for field in ("rows", "cols"):
        assert len({id(getattr(h, field)) for h in headers}) <= 5, field  # one per batch of 16 files, not per file
    assert len({h.position for h in headers}) == 70  # what differs stays each file's own
    walked = {p: p for p in found.stats}  # the walk's own strings
    assert all(h.path is walked[h.path] for h in headers)  # not a copy per file from the worker


def test_the_volumes_table_is_written_in_batches_and_read_back_as_recorded(tmp_path: Path) -> None:
    sources = [VolumeSource(f"v{i}", "dicom", tuple(f"/in/v{i}/{k}.dcm" for k in range(i % 3 + 1)), series_uid=f"1.{i}",
                            modality="CT", n_slices=i % 3 + 1, rows=8, cols=8, spacing=(1.0, 0.5, 0.5),
                            z_mm=tuple(float(k) for k in range(i % 3 + 1)),
                            warnings=("a warning",) if i % 7 == 0 else (),
                            sop_uids=tuple(f"2.{i}.{k}" for k in range(i % 3 + 1)), allow_gaps=i % 2 == 0)
               for i in range(150)]  # three batches
    sources.append(VolumeSource("mf", "dicom", ("/in/mf.dcm",), n_slices=3, spacing=(2.0, 1.0, 1.0), frames=(2, 0, 1)))
    sources.append(VolumeSource("nii", "nifti", ("/in/x.nii.gz",), n_slices=5, spacing=(1.0, 1.0, 1.0)))
    fingerprints = {s.volume_id: json.dumps({"files": [[p, 10, 20] for p in s.paths], "folders": []})
                    for s in sources[::2]}
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.write_results(pd.DataFrame({"volume_id": []}), sources, fingerprints, {"complete": True}, False)
    assert run.sources() == sources
    recorded = run.fingerprints()
    assert sorted(recorded) == sorted(fingerprints)
    assert all(json.dumps(recorded[v].to_json()) == text for v, text in fingerprints.items())


def test_the_manifest_is_streamed_from_the_parts_in_bounded_row_groups(tmp_path: Path, monkeypatch) -> None:
    """A run folder's manifest is written a part at a time, in row groups of ``_MANIFEST_BATCH`` rows or a volume
    more (a row group a volume made a 2,000-volume manifest's footer 3 MB); it holds the rows a run without a
    folder holds in memory, and the summary counts them."""
    import pyarrow.parquet as pq

    import ctreduce
    from ctreduce.store import run as run_store

    for k in range(12):
        hu, spacing = make_phantom(n_slices=6, size=16, slice_thickness=2.0, seed=k)
        write_dicom_series(hu, spacing, tmp_path / "in" / f"p{k:02d}", seed=k)
    monkeypatch.setattr(run_store, "_MANIFEST_BATCH", 20)
    result = ctreduce.reduce(tmp_path / "in", tmp_path / "run", workers=1, thresholds=(4, 6))
    assert pq.ParquetFile(tmp_path / "run" / "manifest.parquet").metadata.num_row_groups == 3  # 4 volumes of 6 rows
    held = ctreduce.reduce(tmp_path / "in", None, workers=1, thresholds=(4, 6))
    pd.testing.assert_frame_equal(result.manifest, held.manifest)
    assert result.totals == held.totals and result.totals["slices"] == 72
    assert result.summary["sweep"] == held.summary["sweep"]
    assert [v["kept"] for v in result.summary["volumes"]] == [v["kept"] for v in held.summary["volumes"]]
    assert result.manifest["kept"].sum() == result.totals["kept"] > 12
    kept = RunFolder(tmp_path / "run").kept_rows()
    pd.testing.assert_frame_equal(kept.reset_index(drop=True),
                                  result.manifest[result.manifest["kept"]].reset_index(drop=True))
