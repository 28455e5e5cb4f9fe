"""Reruns of ``reduce`` (with ``--export``): refused before any work when the export cannot be written,
never "nothing to do" when something asked for is missing or damaged, and the one-pass export equal to
``ctreduce export`` of the run, row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli

import ctreduce
from ctreduce.reduction import backends
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
from ctreduce.store.export import ExportStore
from ctreduce.store.run import RunFolder, part_name


def assert_same_export(a: Path, b: Path) -> None:
    """Two exports hold the same rows in the same order, and the same images (npy: wherever each stores them;
    a one-pass shard may hold rows that ``--scope archive`` dropped afterwards)."""
    first, second = ExportStore.open(a), ExportStore.open(b)
    where = [c for c in ("shard", "shard_row") if c in first.index.columns]
    pd.testing.assert_frame_equal(first.index.drop(columns=where), second.index.drop(columns=where))
    if first.format == "npy":
        np.testing.assert_array_equal(first.array(), second.array())
    else:
        assert [p.read_bytes() for p in first.image_paths()] == [p.read_bytes() for p in second.image_paths()]


# --- item 8: refused early, never "nothing to do" when something is missing ----------------------------


@pytest.mark.parametrize("case", ["file", "under-a-file", "inside-input", "other-files", "other-run"])
def test_a_bad_export_out_is_refused_before_any_volume_is_reduced(archive, tmp_path, case):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    ctreduce.reduce(archive, tmp_path / "other", method="all", export="npy", export_size=16)
    target, expected = {
        "file": (tmp_path / "a-file", "a-file is not a writable folder"),
        "under-a-file": (tmp_path / "a-file" / "export", "is not a writable folder"),
        "inside-input": (archive / "export", "inside the input folder"),
        "other-files": (tmp_path / "mine", "not a ctreduce export"),
        "other-run": (tmp_path / "other" / "export", "holds an export of another run"),
    }[case]
    run = tmp_path / "run"
    proc = cli("reduce", archive, "--out", run, "--export", "npy", "--size", "16", "--export-out", target, "--quiet",
               code=2)
    assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (run / "progress.jsonl").exists() and not list(run.glob("parts/*"))  # nothing was reduced
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "keep me"


def test_a_nothing_to_do_rerun_writes_the_csv_asked_for(archive, tmp_path):
    run = tmp_path / "run"
    cli("reduce", archive, "--out", run, "--quiet")
    assert not (run / "manifest.csv").exists()
    proc = cli("reduce", archive, "--out", run, "--csv", "--quiet")
    assert "nothing to do" in proc.stdout
    expected = tmp_path / "expected.csv"
    RunFolder.open(run).manifest().to_csv(expected, index=False)
    assert (run / "manifest.csv").read_text() == expected.read_text()


@pytest.mark.parametrize("fmt", ["npy", "png"])
def test_a_damaged_export_is_rebuilt_by_the_rerun(archive, tmp_path, fmt):
    run = tmp_path / "run"
    cli("reduce", archive, "--out", run, "--export", fmt, "--size", "32", "--quiet")
    cli("export", run, "--out", tmp_path / "reference", "--format", fmt, "--size", "32", "--quiet")
    if fmt == "npy":
        next((run / "export" / "shards").glob("*.npy")).unlink()
    else:
        next((run / "export" / "images").glob("*.png")).unlink()
    proc = cli("reduce", archive, "--out", run, "--export", fmt, "--size", "32", "--quiet")
    assert "nothing to do" not in proc.stdout
    assert_same_export(run / "export", tmp_path / "reference")
    assert "nothing to do" in cli("reduce", archive, "--out", run, "--export", fmt, "--size", "32", "--quiet").stdout


def test_a_corrupt_manifest_is_rebuilt_from_the_parts(archive, tmp_path):
    run = tmp_path / "run"
    first = ctreduce.reduce(archive, run).manifest
    (run / "manifest.parquet").write_bytes(b"PAR1 not a parquet file")
    proc = cli("reduce", archive, "--out", run, "--quiet")
    assert "nothing to do" not in proc.stdout
    pd.testing.assert_frame_equal(RunFolder.open(run).manifest(), first, check_dtype=False)


# --- item 11: resume and the one-pass export's rows ---------------------------------------------------------


def test_resume_reduces_again_a_volume_whose_journal_line_has_no_part(archive, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = backends.process_source
    done = []

    def stop_after_two(source, config, outputs=None, read=None):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(source.volume_id)
        return real(source, config, outputs, read)

    monkeypatch.setattr(backends, "process_source", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        ctreduce.reduce(archive, run)
    (run / "parts" / part_name(done[0])).unlink()  # its journal line stays
    reduced = []
    monkeypatch.setattr(backends, "process_source",
                        lambda s, c, o=None, r=None: reduced.append(s.volume_id) or real(s, c, o, r))
    result = ctreduce.reduce(archive, run)
    manifest = result.manifest
    assert sorted(reduced) == sorted({*manifest["volume_id"]} - {done[1]})
    assert manifest.groupby("volume_id").size().to_dict() == {
        "archive/nifti/p5": 24, "archive/nrrd/p6": 16, "archive/patient0/ct": 30, "archive/patient1/ct": 20}
    assert result.complete


@pytest.fixture
def inputs(tmp_path) -> list[Path]:
    """Three series given in an order that is not their names' order: a scan, another scan, and a series
    whose lower half is a copy of the first scan (under other names and UIDs) and upper half another
    scan seen from another side (phantoms of one generator share their layout, which the dHash sees)."""
    hu, spacing = make_phantom(n_slices=24, size=64, slice_thickness=5.0, seed=1)
    other, _ = make_phantom(n_slices=24, size=64, slice_thickness=5.0, seed=2)
    upper = np.ascontiguousarray(np.rot90(other, axes=(1, 2)))[12:]
    write_dicom_series(np.concatenate([hu[:12], upper]), spacing, tmp_path / "in" / "b_copy", seed=2)
    write_dicom_series(hu, spacing, tmp_path / "in" / "c_first", seed=1)
    third, _ = make_phantom(n_slices=24, size=64, slice_thickness=5.0, seed=0)
    write_dicom_series(third, spacing, tmp_path / "in" / "a_other", seed=3)
    return [tmp_path / "in" / name for name in ("c_first", "a_other", "b_copy")]


@pytest.mark.parametrize("scope", ["volume", "archive"])
@pytest.mark.parametrize("fmt", ["npy", "png"])
def test_the_one_pass_export_is_ctreduce_export_row_for_row(inputs, tmp_path, scope, fmt):
    fused = ctreduce.reduce(inputs, tmp_path / "fused", scope=scope, export=fmt, export_size=32).manifest
    kept = fused[fused["kept"]]
    assert list(dict.fromkeys(fused["volume_id"])) == ["c_first/c_first", "a_other/a_other", "b_copy/b_copy"]
    if scope == "archive":  # the copied half's kept slices are dropped across volumes, not those after it
        copy = fused[fused["volume_id"] == "b_copy/b_copy"]
        dropped = copy.loc[copy["volume_kept"] & ~copy["kept"], "slice_index"]
        assert len(dropped) and dropped.max() < copy.loc[copy["kept"], "slice_index"].min()
    ctreduce.export(tmp_path / "fused", tmp_path / "separate", format=fmt, size=32)
    assert_same_export(tmp_path / "fused" / "export", tmp_path / "separate")
    index = ExportStore.open(tmp_path / "separate").index
    assert list(zip(index["volume_id"], index["slice_index"], strict=True)) == \
        list(zip(kept["volume_id"], kept["slice_index"], strict=True))

    # Volumes reduced before --export was asked for have no part: read once more when assembled.
    ctreduce.reduce(inputs, tmp_path / "later", scope=scope)
    ctreduce.reduce(inputs, tmp_path / "later", scope=scope, export=fmt, export_size=32)
    ctreduce.export(tmp_path / "later", tmp_path / "later-separate", format=fmt, size=32)
    assert_same_export(tmp_path / "later" / "export", tmp_path / "later-separate")
    assert_same_export(tmp_path / "later" / "export", tmp_path / "fused" / "export")
