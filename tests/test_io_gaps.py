"""One bad slice never loses its whole series: it is left out and named (``--allow-gaps``), or the
series is refused naming that file (without it). Runs, exports and reruns stay consistent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

import ctreduce
from ctreduce.io.discover import read_volume, scan
from ctreduce.io.intensity import Intensity
from ctreduce.io.volume import VolumeError
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
from ctreduce.store.export import ExportStore

CTREDUCE = [str(Path(sys.executable).with_name("ctreduce"))]
HINT = "use --allow-gaps to reduce the rest of the series"


@pytest.fixture
def series(tmp_path) -> list[Path]:
    """12 slices of 32 px, z = 0, 2, ..., 22 mm; the paths in slice order."""
    hu, spacing = make_phantom(n_slices=12, size=32, slice_thickness=2.0, seed=7)
    return write_dicom_series(hu, spacing, tmp_path / "in" / "s", seed=3)


def _undecodable(path: Path) -> None:
    """Relabel a file's native pixel data as RLE: the header reads, the pixels do not decode."""
    data = path.read_bytes()
    assert data.count(b"1.2.840.10008.1.2.1\0") == 1
    path.write_bytes(data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0"))


def _no_pixel_data(path: Path) -> None:
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)


def _cut_pixel_data(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 700])  # inside the pixel data: the header is whole


def _bad_orientation(path: Path) -> None:
    """Flip one byte of ImageOrientationPatient's text, as the byte-level fuzz did."""
    data = bytearray(path.read_bytes())
    at = bytes(data).index(b"1.0\\0.0\\0.0\\0.0\\1.0\\0.0")
    data[at + 5] = ord("x")
    path.write_bytes(bytes(data))


def _length_past_the_pixels(path: Path) -> None:
    """Damage the length of the element before the pixel data so that it runs to the end of the file:
    the header parses, the pixel data are gone from it, the file is whole."""
    last = max(pydicom.dcmread(path, stop_before_pixels=True).keys())
    data = path.read_bytes()
    at = data.index(last.group.to_bytes(2, "little") + last.element.to_bytes(2, "little"))
    assert data[at + 4:at + 6].isalpha()  # explicit VR with a 2-byte length
    path.write_bytes(data[:at + 6] + (len(data) - at - 8).to_bytes(2, "little") + data[at + 8:])


def _reduce(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CTREDUCE, "reduce", *map(str, args), "--method", "all", "--quiet"],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("damage, reason", [
    (_no_pixel_data, "no pixel data (the file has no Pixel Data element)"),
    (_cut_pixel_data, "pixel data cut short: the file ends"),
    (_bad_orientation, "ImageOrientationPatient"),
    (_length_past_the_pixels, "corrupt DICOM header: parsing it runs past the pixel data the file ends with"),
    (_undecodable, "cannot read pixel data (transfer syntax RLE Lossless)"),  # found only when read
])
def test_a_bad_slice_is_left_out_and_named_or_refuses_the_series(series, tmp_path, damage, reason):
    bad = series[5]
    damage(bad)
    root = tmp_path / "in"
    # without --allow-gaps: refused as before, naming the file, the reason and the way out
    proc = _reduce(root, "--out", tmp_path / "strict")
    assert proc.returncode == 1 and f"error: {bad}: " in proc.stderr and reason in proc.stderr
    assert HINT in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(VolumeError, match=HINT):
        read_volume(root / "s")
    # with it: the other 11 slices are reduced, the bad file is named, and the gap is recorded
    proc = _reduce(root, "--out", tmp_path / "run", "--allow-gaps")
    assert proc.returncode == 0, proc.stderr
    manifest = pd.read_parquet(tmp_path / "run" / "manifest.parquet")
    assert list(manifest["source"]) == [str(p) for p in series if p != bad]
    assert np.allclose(manifest["z_mm"], [2.0 * k for k in range(12) if k != 5])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    named = [s for s in summary["skipped"] if s["path"] == str(bad)]
    warnings = json.dumps(summary)
    assert f"{bad}: left out of the series" in warnings and reason in warnings
    if damage is _undecodable:
        # read-time: the file stays in the scanned series, its row is missing (slice_index 5 skipped)
        assert list(manifest["slice_index"]) == [k for k in range(12) if k != 5] and not named
        assert "left out of the series, slice 5 of 12 at z=10.00 mm" in warnings
    else:
        # scan-time: the file is not part of the volume at all, and is listed as skipped
        assert list(manifest["slice_index"]) == list(range(11)) and named and reason in named[0]["reason"]
        assert "missing slice(s) after z=8.00 mm" in warnings
    volume = read_volume(root / "s", allow_gaps=True)
    assert volume.n_slices == 11 and list(volume.slice_sources) == [str(p) for p in series if p != bad]
    assert any(w.startswith(f"{bad}: left out of the series") for w in volume.warnings)


def test_a_slice_unreadable_at_read_time_keeps_exports_and_reruns_consistent(series, tmp_path):
    _undecodable(series[5])
    settings = dict(method="hash", threshold=0, allow_gaps=True)
    run = tmp_path / "run"
    rows = ctreduce.reduce(tmp_path / "in", run, export="png", **settings).manifest.reset_index(drop=True)
    assert list(rows["slice_index"]) == [k for k in range(12) if k != 5]
    kept = rows[rows["kept"]]
    assert (kept["slice_index"] > 5).any()
    assert list(kept["leader"]) == list(kept["slice_index"])  # leaders are slice indices, not positions
    assert set(rows["leader"]) <= set(kept["slice_index"])
    # a rerun with nothing changed does nothing and shifts nothing
    again = ctreduce.reduce(tmp_path / "in", run, export="png", **settings)
    assert again.summary.get("rerun", {}).get("unchanged")
    pd.testing.assert_frame_equal(again.manifest.reset_index(drop=True)[rows.columns], rows)
    # the export read again from the sources holds the slices the manifest names, as the one-pass export
    ctreduce.export(run, tmp_path / "png", format="png")
    separate, one_pass = (pd.read_parquet(folder / "index.parquet") for folder in (tmp_path / "png", run / "export"))
    for index in (separate, one_pass):
        assert list(index["slice_index"]) == list(kept["slice_index"])
        assert list(index["source"]) == list(kept["source"]) and np.allclose(index["z_mm"], kept["z_mm"])
    for a, b in zip(separate["file"], one_pass["file"], strict=True):
        assert (tmp_path / "png" / a).read_bytes() == (run / "export" / b).read_bytes()
    ctreduce.reduce(tmp_path / "in", tmp_path / "npy-run", export="npy", export_size=32, **settings)
    direct = ctreduce.read_volume(tmp_path / "in" / "s", allow_gaps=True)
    want = Intensity.parse("minmax").to_uint8(direct.hu)[np.searchsorted(direct.slice_index, kept["slice_index"])]
    assert np.array_equal(ExportStore.open(tmp_path / "npy-run" / "export").array(), want)


def test_chunked_reading_with_two_workers_leaves_out_the_same_slice(tmp_path):
    hu, spacing = make_phantom(n_slices=40, size=16, slice_thickness=2.0, seed=8)
    files = write_dicom_series(hu, spacing, tmp_path / "in" / "s", seed=3)
    _undecodable(files[20])
    one = ctreduce.reduce(tmp_path / "in", tmp_path / "one", method="hash", allow_gaps=True).manifest
    two = ctreduce.reduce(tmp_path / "in", tmp_path / "two", method="hash", allow_gaps=True, workers=2).manifest
    assert 20 not in set(one["slice_index"]) and len(one) == 39
    pd.testing.assert_frame_equal(one.reset_index(drop=True), two.reset_index(drop=True))


def test_a_complete_file_with_a_corrupt_length_is_not_called_truncated(series, tmp_path):
    data = series[0].read_bytes()
    study = str(pydicom.dcmread(series[0]).StudyInstanceUID).encode()
    at = data.index(study)  # explicit VR: tag (4), VR "UI" (2), length (2), then the value
    assert data[at - 4:at - 2] == b"UI"
    whole = tmp_path / "whole.dcm"
    whole.write_bytes(data[:at - 2] + b"\xff\x7f" + data[at:])  # its length now points past the end
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:at + len(study) // 2])  # the truncation the message was written for
    reasons = {Path(s["path"]).name: s["reason"] for s in scan([whole, cut]).skipped}
    assert reasons["whole.dcm"].startswith(f"corrupt DICOM header: no SeriesInstanceUID can be read, though the "
                                           f"file is complete ({len(data)} bytes")
    assert reasons["cut.dcm"].startswith(f"truncated DICOM file: it ends after {at + len(study) // 2} bytes")


def _fuzz(files: list[Path], rng: np.random.Generator, share: float) -> list[Path]:
    """A few random header-byte changes in ``share`` of the files (never in the pixel data)."""
    fuzzed = []
    for path in files:
        if rng.random() >= share:
            continue
        data = bytearray(path.read_bytes())
        end = bytes(data).rindex(b"\xe0\x7f\x10\x00")
        for _ in range(int(rng.integers(1, 4, endpoint=True))):
            k = int(rng.integers(132, end))
            data[k] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        fuzzed.append(path)
    return fuzzed


def test_byte_fuzzed_series_lose_only_their_fuzzed_files(tmp_path):
    """Three series, ~15% of their files with header bytes flipped (seeded): every other file is
    reduced, and every fuzzed file is reduced or named with a reason."""
    rng = np.random.default_rng(16)
    files = []
    for k in range(3):
        hu, spacing = make_phantom(n_slices=36, size=16, slice_thickness=2.0, seed=k)
        files += write_dicom_series(hu, spacing, tmp_path / "in" / f"s{k}", seed=k)
    fuzzed = _fuzz(files, rng, 0.15)
    assert 8 <= len(fuzzed) <= 24
    result = ctreduce.reduce(tmp_path / "in", tmp_path / "run", method="all", allow_gaps=True)
    manifest, summary = result.manifest, result.summary
    reduced = set(manifest["source"])
    assert {str(p) for p in files if p not in fuzzed} <= reduced, summary["errors"]
    text = json.dumps(summary)
    for path in fuzzed:
        assert str(path) in reduced or str(path) in text, path
    assert len(reduced) >= len(files) - len(fuzzed)


def test_scan_lists_left_out_files_as_skipped(series, tmp_path):
    _no_pixel_data(series[0])
    shutil.copy(series[1], tmp_path / "elsewhere.dcm")
    found = scan([tmp_path / "in"], allow_gaps=True)
    (volume,) = found.volumes
    assert volume.n_slices == 11 and volume.z_mm[0] == 2.0  # a missing first slice is named, not silent
    assert found.skipped == [{"path": str(series[0]), "reason": f"left out of series {volume.series_uid} (no pixel "
                                                                  "data (the file has no Pixel Data element))"}]


def test_a_moved_series_with_a_slice_left_out_keeps_each_row_on_its_file(series, tmp_path):
    _undecodable(series[5])
    before = ctreduce.reduce(tmp_path / "in", tmp_path / "run", method="all", allow_gaps=True).manifest
    moved = tmp_path / "elsewhere" / "in"
    shutil.copytree(tmp_path / "in", moved)
    after = ctreduce.reduce(moved, tmp_path / "run", method="all", allow_gaps=True)
    assert after.summary["inputs_moved"] == ["in/s"]
    assert list(after.manifest["source"]) == [str(moved / "s" / p.name) for p in series if p != series[5]]
    assert list(after.manifest["slice_index"]) == list(before["slice_index"])


def test_the_report_draws_a_series_with_a_slice_left_out(series, tmp_path):
    from ctreduce.report import write_report

    _undecodable(series[5])
    ctreduce.reduce(tmp_path / "in", tmp_path / "run", method="hash", allow_gaps=True)
    text = Path(write_report(tmp_path / "run", tmp_path / "report.html")).read_text()
    assert "could not be read" not in text and "data:image/png;base64," in text


def test_reduce_says_how_many_slices_it_left_out_when_read(series, tmp_path):
    _undecodable(series[5])
    proc = _reduce(tmp_path / "in", "--out", tmp_path / "run", "--allow-gaps")
    assert proc.returncode == 0, proc.stderr
    assert ("note: 1 slice(s) could not be read and were left out of their series (--allow-gaps); each is "
            "named in the volume's warnings in summary.json") in proc.stderr.splitlines()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [w for w in summary["volumes"][0]["warnings"] if str(series[5]) in w]
    series[5].unlink()  # a series with a real gap (no file) has nothing unread to report
    proc = _reduce(tmp_path / "in", "--out", tmp_path / "run2", "--allow-gaps")
    assert proc.returncode == 0 and "could not be read" not in proc.stderr
