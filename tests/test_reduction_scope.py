"""--scope archive: the greedy leader rule again across volumes after the per-volume pass."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ctreduce
from ctreduce.core.dhash import codes_from_hex
from ctreduce.reduction.hamming_index import brute_pairs
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
from ctreduce.store.export import ExportStore


@pytest.fixture
def twice(tmp_path):
    """One scan stored twice under other names and UIDs, and a different scan."""
    root = tmp_path / "in"
    hu, spacing = make_phantom(n_slices=30, size=64, slice_thickness=1.0, seed=1)
    write_dicom_series(hu, spacing, root / "a_first", seed=1)
    write_dicom_series(hu, spacing, root / "b_copy", seed=2)
    other, spacing = make_phantom(n_slices=24, size=64, slice_thickness=2.5, seed=7)
    # Seen from another side: phantoms of one generator share their layout, which the dHash sees.
    write_dicom_series(np.ascontiguousarray(np.rot90(other, axes=(1, 2))), spacing, root / "c_other", seed=3)
    return root


def test_a_scan_stored_twice_is_kept_once(twice, tmp_path):
    per_volume = ctreduce.reduce(twice, tmp_path / "volume").manifest
    result = ctreduce.reduce(twice, tmp_path / "archive", scope="archive")
    archive = result.manifest
    first, copy = "in/a_first", "in/b_copy"
    assert (archive["volume_kept"] == per_volume["kept"]).all()
    assert per_volume.loc[per_volume.volume_id == copy, "kept"].sum() > 0
    copy_rows = archive[archive.volume_id == copy]
    assert not copy_rows["kept"].any()  # every slice the copy kept is a duplicate of the first
    dropped = copy_rows[copy_rows["volume_kept"]]
    assert (dropped["leader_volume"] == first).all() and (dropped["distance"] <= 6).all()
    assert (archive.loc[archive.volume_id == first, "kept"] == per_volume.loc[per_volume.volume_id == first,
                                                                              "kept"]).all()
    kept = archive[archive["kept"]]
    i, j, _ = brute_pairs(codes_from_hex(kept["dhash"].tolist()), 6)
    assert len(i) == 0  # no near-duplicate pair anywhere in the kept set
    summary = result.summary["scope"]
    assert summary["dropped_across_volumes"] == int((archive["volume_kept"] & ~archive["kept"]).sum()) >= len(dropped)


def test_one_pass_export_follows_the_archive_decision(twice, tmp_path):
    run = tmp_path / "run"
    manifest = ctreduce.reduce(twice, run, scope="archive", export="npy", export_size=32, workers=2).manifest
    store = ExportStore.open(run / "export")
    kept = manifest[manifest["kept"]]
    assert store.index["volume_id"].tolist() == kept["volume_id"].tolist()
    assert store.index["slice_index"].tolist() == kept["slice_index"].tolist()
    ctreduce.export(run, tmp_path / "again", format="npy", size=32)
    assert (store.array() == ExportStore.open(tmp_path / "again").array()).all()


def test_scope_archive_from_the_command_line(twice, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ctreduce.cli", "reduce", str(twice), "--out", str(tmp_path / "r"),
                           "--scope", "archive", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "scope archive:" in proc.stdout and "were dropped" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "ctreduce.cli", "reduce", str(twice), "--out", str(tmp_path / "s"),
                          "--scope", "archive", "--method", "ssim", "--quiet"], capture_output=True, text=True)
    assert bad.returncode == 2 and "64-bit dHash" in bad.stderr
