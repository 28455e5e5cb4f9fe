"""Verify on read: a slice whose pixels changed since it was reduced is never exported under the old
decision, and a rerun (or ``reduce --verify``) reduces its volume again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli
from PIL import Image

import ctreduce
from ctreduce.io.discover import load
from ctreduce.io.intensity import Intensity
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
from ctreduce.store.export import ExportStore
from ctreduce.store.export_formats import resize_pad
from ctreduce.store.run import RunFolder


@pytest.fixture
def series(tmp_path) -> Path:
    """Two DICOM series of the same size and geometry: in/a and in/b."""
    root = tmp_path / "in"
    for seed, name in ((1, "a"), (2, "b")):
        hu, spacing = make_phantom(n_slices=24, size=64, slice_thickness=5.0, seed=seed)
        write_dicom_series(hu, spacing, root / name, seed=seed)
    return root


def kept_slice(run: Path, volume: str = "in/a") -> tuple[int, str, str]:
    """A kept slice k > 0 of ``volume``: (k, its file, the file of slice k - 1)."""
    manifest = RunFolder.open(run).manifest()
    rows = manifest[manifest["volume_id"] == volume].set_index("slice_index")
    k = int(rows.index[rows["kept"] & (rows.index > 0)][0])
    return k, rows.loc[k, "source"], rows.loc[k - 1, "source"]


def rewrite_pixels(path: str, like: str, keep_stat: bool = False) -> None:
    """Item 1 as reported: the slice's pixels become another slice's (same size, same SOPInstanceUID)."""
    import pydicom

    before = os.stat(path)
    ds, other = pydicom.dcmread(path), pydicom.dcmread(like)
    ds.PixelData = other.PixelData
    ds.save_as(path)
    assert os.stat(path).st_size == before.st_size
    if keep_stat:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def decisions(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[["volume_id", "slice_index", "kept", "leader", "dhash", "pixel_digest"]].reset_index(drop=True)


def assert_export_is_the_sources(out: Path, run: Path) -> None:
    """Every exported row is its source slice as it is on disk now, under the run's intensity policy."""
    store = ExportStore.open(out)
    sources = {s.volume_id: s for s in RunFolder(run).sources()}
    array = store.array() if store.format == "npy" else None
    for row in store.index.itertuples():
        hu = load(sources[row.volume_id], [row.slice_index]).hu
        u8 = Intensity.parse("minmax").to_uint8(hu)[0]
        if array is not None:
            np.testing.assert_array_equal(array[row.row], resize_pad(u8, store.meta["size"]))
        else:
            np.testing.assert_array_equal(np.asarray(Image.open(out / row.file)), u8)


# --- item 1: a DICOM slice rewritten in place -----------------------------------------------------------


@pytest.mark.parametrize(("fmt", "workers"), [("png", 1), ("npy", 2)])
def test_a_kept_slice_rewritten_in_place_is_not_exported_and_the_rerun_redoes_it(series, tmp_path, fmt, workers):
    run = tmp_path / "run"
    cli("reduce", series, "--out", run, "--quiet")
    before = RunFolder.open(run).manifest()
    k, path, previous = kept_slice(run)
    rewrite_pixels(path, previous)

    refused = cli("export", run, "--out", tmp_path / "out", "--format", fmt, "--size", "32", "--workers", workers,
                  "--quiet", code=1)
    assert f"in/a: slice {k} ({path}) holds other pixels" in refused.stderr and "--verify" in refused.stderr
    exported = ExportStore.open(tmp_path / "out")
    assert set(exported.index["volume_id"]) == {"in/b"}  # in/a is not written at all
    assert exported.meta["errors"][0]["volume_id"] == "in/a"
    assert_export_is_the_sources(tmp_path / "out", run)

    fresh = ctreduce.reduce(series, tmp_path / "fresh").manifest
    assert not decisions(fresh)["kept"].equals(decisions(before)["kept"])  # the rewrite changes the decision
    rerun = cli("reduce", series, "--out", run, "--quiet")
    assert "inputs of in/a changed since the last run" in rerun.stderr and f"slice {k} ({path})" in rerun.stderr
    assert "moved or touched" not in rerun.stderr
    pd.testing.assert_frame_equal(decisions(RunFolder.open(run).manifest()), decisions(fresh))
    cli("export", run, "--out", tmp_path / "again", "--format", fmt, "--size", "32", "--quiet")
    assert_export_is_the_sources(tmp_path / "again", run)


def test_a_dropped_slice_rewritten_makes_the_decision_stale_and_its_volume_is_not_exported(series, tmp_path):
    """The kept slices still hold their pixels, but the decision was made with the old dropped one."""
    run = tmp_path / "run"
    manifest = ctreduce.reduce(series, run).manifest
    rows = manifest[manifest["volume_id"] == "in/a"].set_index("slice_index")
    k = int(rows.index[~rows["kept"]][0])
    rewrite_pixels(rows.loc[k, "source"], rows.loc[23, "source"])
    meta = ctreduce.export(run, tmp_path / "npy", format="npy", size=32, workers=2)
    (error,) = meta["errors"]
    assert error["volume_id"] == "in/a" and f"slice {k} ({rows.loc[k, 'source']}) holds other pixels" in error["error"]
    assert set(ExportStore.open(tmp_path / "npy").index["volume_id"]) == {"in/b"}


def test_the_source_check_of_report_and_experiment_reads_files_whose_stat_changed(series, tmp_path):
    run = tmp_path / "run"
    ctreduce.reduce(series, run)
    k, path, previous = kept_slice(run)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same pixels
    check = RunFolder(run).check_sources()
    assert check.moved == ["in/a"] and check.changed == {}
    rewrite_pixels(path, previous)
    check = RunFolder(run).check_sources()
    assert check.changed == {"in/a": f"in/a: slice {k} ({path}) holds other pixels than the ones it was reduced on"}
    assert RunFolder(run).check_sources(defer=True).modified == {"in/a": [k]}


def test_another_series_file_of_the_same_size_copied_over_a_kept_slice(series, tmp_path):
    run = tmp_path / "run"
    ctreduce.reduce(series, run, allow_gaps=True)
    k, path, _ = kept_slice(run)
    b = RunFolder.open(run).manifest().query("volume_id == 'in/b'")["source"].tolist()
    size = os.stat(path).st_size
    # Files differ in size only by their UIDs' lengths: b's slice at the same position, else any of that size.
    same_size = [p for p in [b[k], *b] if os.stat(p).st_size == size]
    assert same_size, "the phantom series should have files of equal size"
    shutil.copyfile(same_size[0], path)

    refused = cli("export", run, "--out", tmp_path / "out", "--quiet", code=1)
    assert "in/a" in refused.stderr and path in refused.stderr
    assert "in/a" not in set(ExportStore.open(tmp_path / "out").index["volume_id"])

    fresh = ctreduce.reduce(series, tmp_path / "fresh", allow_gaps=True)
    rerun = ctreduce.reduce(series, run, allow_gaps=True)
    assert "in/a" in rerun.summary["inputs_changed"]
    pd.testing.assert_frame_equal(decisions(rerun.manifest), decisions(fresh.manifest))
    assert rerun.summary["errors"] == fresh.summary["errors"]


def test_reduce_verify_reads_every_slice_and_redoes_a_volume_whose_stat_was_kept(series, tmp_path):
    run = tmp_path / "run"
    cli("reduce", series, "--out", run, "--quiet")
    k, path, previous = kept_slice(run)
    rewrite_pixels(path, previous, keep_stat=True)  # same size and time: the stat fast path cannot see it

    stale = cli("reduce", series, "--out", run, "--quiet")
    assert "nothing to do" in stale.stdout  # trusted, as documented
    refused = cli("export", run, "--out", tmp_path / "out", "--quiet", code=1)  # every export compares
    assert f"slice {k} ({path}) holds other pixels" in refused.stderr

    verified = cli("reduce", series, "--out", run, "--verify", "--quiet")
    assert "verified 2 finished volume(s) slice by slice: 1 changed and reduced again" in verified.stdout
    assert f"inputs of in/a changed since the last run (slice {k} ({path})" in verified.stderr
    fresh = ctreduce.reduce(series, tmp_path / "fresh").manifest
    pd.testing.assert_frame_equal(decisions(RunFolder.open(run).manifest()), decisions(fresh))
    again = ctreduce.reduce(series, run, verify=True).summary
    assert again["inputs_verified"] == {"volumes": 2, "changed": []} and "inputs_changed" not in again
    assert "rerun" not in again  # --verify never takes the nothing-to-do shortcut


def test_one_pass_export_of_volumes_reduced_before_compares_them_first(series, tmp_path):
    run = tmp_path / "run"
    cli("reduce", series, "--out", run, "--quiet")
    k, path, previous = kept_slice(run)
    rewrite_pixels(path, previous, keep_stat=True)
    proc = cli("reduce", series, "--out", run, "--export", "npy", "--size", "32", "--quiet", code=1)
    assert f"in/a: slice {k} ({path}) holds other pixels" in proc.stderr
    store = ExportStore.open(run / "export")
    assert set(store.index["volume_id"]) == {"in/b"} and store.meta["errors"][0]["volume_id"] == "in/a"
    assert_export_is_the_sources(run / "export", run)
    cli("reduce", series, "--out", run, "--export", "npy", "--size", "32", "--verify", "--quiet")
    assert_export_is_the_sources(run / "export", run)
    assert set(ExportStore.open(run / "export").index["volume_id"]) == {"in/a", "in/b"}


def test_a_moved_archive_is_compared_by_its_pixels_not_its_uids(series, tmp_path):
    """Copied elsewhere, the run's results stand; copied with one slice's pixels changed (same UIDs,
    same size), that volume is reduced again."""
    run = tmp_path / "run"
    ctreduce.reduce(series, run)
    moved = tmp_path / "elsewhere" / "in"
    shutil.copytree(series, moved)
    k, path, previous = kept_slice(run)
    rewrite_pixels(str(moved / Path(path).relative_to(series)), str(moved / Path(previous).relative_to(series)))
    summary = ctreduce.reduce(moved, run).summary
    assert summary["inputs_moved"] == ["in/b"] and list(summary["inputs_changed"]) == ["in/a"]
    pd.testing.assert_frame_equal(decisions(RunFolder.open(run).manifest()),
                                  decisions(ctreduce.reduce(moved, tmp_path / "fresh").manifest))


def test_a_single_large_series_read_in_chunks_is_verified_too(tmp_path):
    """Fewer series than workers: the series is read in chunks by every worker (``backends._run_chunked``),
    which compute the digests where they read; a rerun compares them like any other."""
    hu, spacing = make_phantom(n_slices=40, size=64, slice_thickness=5.0, seed=1)
    write_dicom_series(hu, spacing, tmp_path / "in" / "a", seed=1)
    run = tmp_path / "run"
    first = ctreduce.reduce(tmp_path / "in", run, workers=2).manifest
    assert first["pixel_digest"].tolist() == ctreduce.reduce(tmp_path / "in").manifest["pixel_digest"].tolist()
    moved = tmp_path / "elsewhere" / "in"
    shutil.copytree(tmp_path / "in", moved)
    assert ctreduce.reduce(moved, run, workers=2).summary["inputs_moved"] == ["in/a"]
    k, path, previous = kept_slice(run)
    rewrite_pixels(path, previous)
    rerun = ctreduce.reduce(moved, run, workers=2)
    assert f"slice {k} ({path})" in rerun.summary["inputs_changed"]["in/a"]
    fresh = ctreduce.reduce(moved, tmp_path / "fresh").manifest
    pd.testing.assert_frame_equal(decisions(rerun.manifest), decisions(fresh))


# --- runs recorded without pixel digests -----------------------------------------------------------------


def drop_digests(run: Path) -> None:
    """The run as an older ctreduce wrote it: no pixel_digest column anywhere."""
    for part in [run / "manifest.parquet", *(run / "parts").glob("*.parquet")]:
        pd.read_parquet(part).drop(columns="pixel_digest").to_parquet(part, index=False)


def test_a_run_without_digests_is_compared_by_the_dhash_of_its_8bit_slices(series, tmp_path):
    run = tmp_path / "run"
    ctreduce.reduce(series, run)
    drop_digests(run)
    ctreduce.export(run, tmp_path / "ok")  # the dHashes still match: exported
    assert_export_is_the_sources(tmp_path / "ok", run)

    k, path, _ = kept_slice(run)
    manifest = RunFolder.open(run).manifest()
    far = manifest.loc[(manifest["volume_id"] == "in/a") & (manifest["slice_index"] == 23), "source"].iloc[0]
    rewrite_pixels(path, far, keep_stat=True)
    meta = ctreduce.export(run, tmp_path / "png")
    (error,) = meta["errors"]
    assert error["volume_id"] == "in/a" and f"slice {k} ({path}) holds other pixels" in error["error"]

    summary = ctreduce.reduce(series, run, verify=True).summary
    assert list(summary["inputs_changed"]) == ["in/a"] and summary["inputs_verified"]["volumes"] == 2
    assert RunFolder.open(run).manifest()["pixel_digest"].notna().all()  # both reduced again, digests recorded


def test_digests_are_recomputed_with_the_algorithm_they_were_recorded_with(series, tmp_path, monkeypatch):
    """A run recorded where another digest library was installed: its algorithm is used where it is
    installed, and where it is not, the slices are compared by dHash."""
    import hashlib

    from ctreduce.store import fingerprint

    monkeypatch.setitem(fingerprint.ALGORITHMS, "other", lambda: hashlib.sha1())
    default = fingerprint.ALGORITHM
    monkeypatch.setattr(fingerprint, "ALGORITHM", "other")
    run = tmp_path / "run"
    ctreduce.reduce(series, run)
    assert RunFolder.open(run).manifest()["pixel_digest"].str.startswith("other:").all()
    monkeypatch.setattr(fingerprint, "ALGORITHM", default)
    assert ctreduce.export(run, tmp_path / "ok")["errors"] == []
    k, path, _ = kept_slice(run)
    manifest = RunFolder.open(run).manifest()
    far = manifest.loc[(manifest["volume_id"] == "in/a") & (manifest["slice_index"] == 23), "source"].iloc[0]
    rewrite_pixels(path, far, keep_stat=True)
    assert [e["volume_id"] for e in ctreduce.export(run, tmp_path / "found")["errors"]] == ["in/a"]
    monkeypatch.delitem(fingerprint.ALGORITHMS, "other")  # not installed here: compared by dHash
    (error,) = ctreduce.export(run, tmp_path / "by-dhash")["errors"]
    assert f"slice {k} ({path}) holds other pixels" in error["error"]


# --- Ray: the same checks in its tasks -------------------------------------------------------------------


def test_ray_export_and_rerun_compare_slices_too(series, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray backend is the optional extra ctreduce[ray]")
    run = tmp_path / "run"
    ctreduce.reduce(series, run)
    k, path, previous = kept_slice(run)
    rewrite_pixels(path, previous)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        meta = ctreduce.export(run, tmp_path / "npy", format="npy", size=32, backend="ray")
        assert [e["volume_id"] for e in meta["errors"]] == ["in/a"] and path in meta["errors"][0]["error"]
        rerun = ctreduce.reduce(series, run, backend="ray")
    finally:
        ray.shutdown()
    assert list(rerun.summary["inputs_changed"]) == ["in/a"]
    fresh = ctreduce.reduce(series, tmp_path / "fresh").manifest
    pd.testing.assert_frame_equal(decisions(rerun.manifest), decisions(fresh))
