"""Read once: for hash, all and every-n each DICOM file is opened once, its header and pixels together, and
the run's manifest and export are those of a read of every volume by its worker."""

from __future__ import annotations

import builtins
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless

import ctreduce
from ctreduce.reduction import run as run_module
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
from ctreduce.store.export import ExportStore


def _series(root: Path, name: str, n: int, seed: int) -> list[Path]:
    hu, spacing = make_phantom(n_slices=n, size=48, slice_thickness=2.0, seed=seed)
    return write_dicom_series(hu, spacing, root / name / "ct", seed=seed)


@pytest.fixture
def dicoms(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    _series(root, "p0", 24, 0)
    _series(root, "p1", 18, 1)
    return root


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How often each DICOM file is opened in this process (``workers=1`` keeps the work here)."""
    counts: Counter = Counter()
    real = builtins.open

    def counting(file, *args, **kwargs):
        if str(file).endswith(".dcm"):
            counts[str(file)] += 1
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    return counts


@pytest.mark.parametrize("settings", [{"method": "hash"}, {"method": "all"}, {"method": "every-n", "every_n": 4},
                                      {"method": "hash", "hash_kind": "phash", "hash_size": 6}])
def test_each_dicom_file_is_opened_once(dicoms: Path, tmp_path: Path, opens: Counter, settings: dict) -> None:
    result = ctreduce.reduce(dicoms, tmp_path / "run", workers=1, **settings)
    files = sorted(str(p) for p in dicoms.rglob("*.dcm"))
    assert result.totals["slices"] == len(files) == 42
    assert {f: opens[f] for f in files} == dict.fromkeys(files, 1)


def test_an_export_reads_again_only_the_kept_slices(dicoms: Path, tmp_path: Path, opens: Counter) -> None:
    result = ctreduce.reduce(dicoms, tmp_path / "run", workers=1, export="npy", export_size=32)
    manifest = result.manifest
    kept = set(manifest.loc[manifest["kept"], "source"])
    assert 0 < len(kept) < len(manifest)
    assert {f: opens[f] for f in manifest["source"]} == {f: 2 if f in kept else 1 for f in manifest["source"]}


def test_growth_reads_the_new_files_once_and_no_other(dicoms: Path, tmp_path: Path, opens: Counter) -> None:
    ctreduce.reduce(dicoms, tmp_path / "run", workers=1)
    before = sorted(str(p) for p in dicoms.rglob("*.dcm"))
    new = [str(p) for p in _series(dicoms, "p2", 12, 2)]
    opens.clear()  # writing them opened them too
    result = ctreduce.reduce(dicoms, tmp_path / "run", workers=1)
    assert result.totals["volumes_reduced"] == 3
    assert {f: opens[f] for f in before + new} == {**dict.fromkeys(before, 0), **dict.fromkeys(new, 1)}


def _odd_archive(root: Path) -> Path:
    """Series the scan cannot reduce from its one read (a slice with a fractional rescale among integral ones:
    one HU array of float32, as its worker makes it; an RLE slice whose pixels cannot be decoded), and one
    it can, compressed."""
    files = _series(root, "mixed", 10, 3)
    ds = dcmread(files[4])
    ds.RescaleSlope = "0.5"
    ds.save_as(files[4])
    hu, spacing = make_phantom(n_slices=10, size=48, slice_thickness=2.0, seed=4)
    files = write_dicom_series(hu, spacing, root / "broken" / "ct", seed=4, transfer_syntax=RLELossless)
    data = bytearray(files[2].read_bytes())
    item = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xe0\x7f\x10\x00") + 12)  # the offset table
    item = data.index(b"\xfe\xff\x00\xe0", item + 8)  # the frame's fragment: its RLE header made garbage
    data[item + 8:item + 72] = b"\xff" * 64
    files[2].write_bytes(bytes(data))
    hu, spacing = make_phantom(n_slices=16, size=48, slice_thickness=2.0, seed=5)
    write_dicom_series(hu, spacing, root / "plain" / "ct", seed=5, transfer_syntax=RLELossless)
    return root


@pytest.mark.parametrize("settings", [
    {"method": "hash", "export": "npy", "export_size": 32},
    {"method": "hash", "hash_kind": "ahash", "hash_size": 5, "export": "npy", "export_size": 32},
    {"method": "hash", "intensity": "window:40,400", "thresholds": (4, 8, 12), "export": "png"},
    {"method": "every-n", "target_fraction": 0.3, "export": "npy", "export_size": 32},
    {"method": "all", "allow_gaps": True, "export": "npy", "export_size": 32},
    {"method": "hash", "target_fraction": 0.4},
])
def test_the_manifest_and_export_are_those_of_a_worker_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             settings: dict) -> None:
    inputs = _odd_archive(tmp_path / "in")
    once = ctreduce.reduce(inputs, tmp_path / "once", workers=2, **settings)
    monkeypatch.setattr(run_module, "slice_hasher", lambda config: None)  # every volume read by its worker
    twice = ctreduce.reduce(inputs, tmp_path / "twice", workers=2, **settings)
    pd.testing.assert_frame_equal(once.manifest, twice.manifest)
    assert once.totals == twice.totals and once.summary["errors"] == twice.summary["errors"]
    assert once.summary["skipped"] == twice.summary["skipped"]
    assert once.totals["volumes_reduced"] >= 2
    if "export" in settings:
        a, b = tmp_path / "once" / "export", tmp_path / "twice" / "export"
        names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.suffix in (".npy", ".png"))
        assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.suffix in (".npy", ".png"))
        for name in names:
            assert (a / name).read_bytes() == (b / name).read_bytes() or np.array_equal(
                np.load(a / name), np.load(b / name)), name


def test_the_scan_keeps_the_hashes_of_the_volumes_it_read_whole(tmp_path: Path) -> None:
    from ctreduce.io.discover import scan
    from ctreduce.reduction.read_once import SliceHasher

    inputs = _odd_archive(tmp_path / "in")
    found = scan([inputs], slices=SliceHasher("minmax"), allow_gaps=True)
    read = {s.volume_id: found.read.get(s.paths[0]) for s in found.volumes}
    assert read["in/plain/ct"] is not None and read["in/mixed/ct"] is None and read["in/broken/ct"] is None
    assert read["in/plain/ct"].features.shape == (16, 16) and read["in/plain/ct"].stats.shape == (16, 2)
    assert not scan([inputs]).read  # without ``slices`` only headers are read


def test_the_scan_that_reads_every_file_shows_its_progress(dicoms: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    ctreduce.reduce(dicoms, tmp_path / "run", workers=1, progress=True)
    err = capsys.readouterr().err
    assert "read: " in err and "42file" in err and "reduce: " in err


def test_a_kept_slice_changed_after_the_scan_reduces_its_volume_again_from_a_whole_read(
        dicoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from ctreduce.reduction import worker

    real, calls = worker.load, []

    def changed_once(source, slices=None, **kwargs):
        volume = real(source, slices, **kwargs)
        calls.append(slices is None)
        if slices is not None and len(calls) == 1:  # the export's re-read of the first volume finds other pixels
            return dataclasses.replace(volume, hu=volume.hu + 1)
        return volume

    monkeypatch.setattr(worker, "load", changed_once)
    result = ctreduce.reduce(dicoms, tmp_path / "run", workers=1, export="npy", export_size=32)
    assert calls[:2] == [False, True]  # kept slices read again, then the whole volume
    monkeypatch.setattr(worker, "load", real)
    monkeypatch.setattr(run_module, "slice_hasher", lambda config: None)
    reference = ctreduce.reduce(dicoms, tmp_path / "reference", workers=1, export="npy", export_size=32)
    pd.testing.assert_frame_equal(result.manifest, reference.manifest)
    assert np.array_equal(ExportStore.open(tmp_path / "run" / "export").array(),
                          ExportStore.open(tmp_path / "reference" / "export").array())


def test_the_dicom_reader_is_imported_once_before_the_workers_fork(tmp_path: Path) -> None:
    """pydicom costs ~0.2 s of CPU to import: imported in the parent before its pool forks, not in every worker
    (each of them imported it again: 0.4 s of a 1.5 s one-pass run of one series)."""
    import subprocess
    import sys

    root = tmp_path / "in"
    for k in range(3):
        _series(root, f"p{k}", 24, k)  # 72 files: the scan reads them in a pool
    code = ("import ctreduce, sys; ctreduce.reduce(sys.argv[1], sys.argv[2], workers=2, export='npy', export_size=32,"
            " progress=False)")
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code, str(root), str(tmp_path / "run")],
                         capture_output=True, text=True, check=True)
    imported = [line for line in out.stderr.splitlines() if line.rpartition("|")[2].strip() == "pydicom.filereader"]
    assert len(imported) == 1, imported  # once per process that imports it
