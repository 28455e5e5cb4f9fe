"""Run folders and export stores under real use: changed and moved inputs, collisions, half-written
exports, concurrent writers, killed runs, full disks, old folders."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ctreduce
from ctreduce.io.intensity import Intensity
from ctreduce.reduction import backends, plan, worker
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series, write_nifti, write_nrrd
from ctreduce.store.export import ExportError, ExportStore
from ctreduce.store.export_formats import png_name
from ctreduce.store.run import RunConflict, RunFolder

CTREDUCE = str(Path(sys.executable).with_name("ctreduce"))


def cli(*args, code: int | None = 0, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([CTREDUCE, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)
    if code is not None:
        assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def assert_export_is_the_manifest(run: Path, out: Path) -> None:
    """Every exported row, PNG or npy, equals the manifest's kept slice read from its source."""
    manifest = RunFolder.open(run).manifest()
    kept = manifest[manifest["kept"]]
    store = ExportStore.open(out)
    index = store.index
    assert list(zip(index["volume_id"], index["slice_index"], strict=True)) == \
        list(zip(kept["volume_id"], kept["slice_index"], strict=True))
    np.testing.assert_allclose(index["z_mm"], kept["z_mm"])
    sources = {s.volume_id: s for s in RunFolder(run).sources()}
    array = store.array() if store.format == "npy" else None
    for row in index.itertuples():
        volume = ctreduce.io.discover.load(sources[row.volume_id])
        expected = Intensity.parse(manifest["intensity"].iloc[0] or "minmax").to_uint8(volume.hu[[row.slice_index]])[0]
        if array is not None:
            from ctreduce.store.export_formats import resize_pad

            np.testing.assert_array_equal(array[row.row], resize_pad(expected, store.meta["size"]))
        else:
            np.testing.assert_array_equal(np.asarray(Image.open(out / row.file)), expected)


@pytest.fixture
def run_dir(archive, tmp_path) -> Path:
    out = tmp_path / "run"
    ctreduce.reduce(archive, out)
    return out


# --- inputs that change or move --------------------------------------------------------------------


def test_a_series_that_gained_files_is_reduced_again_and_export_checks_first(tmp_path):
    hu, spacing = make_phantom(n_slices=40, size=48, slice_thickness=2.5, seed=3)
    series = tmp_path / "archive" / "ct"
    files = write_dicom_series(hu, spacing, series, seed=3)
    held = tmp_path / "held"
    held.mkdir()
    for path in files[:15]:  # the lower 15 slices arrive later: every index shifts
        shutil.move(path, held / path.name)
    run = tmp_path / "run"
    cli("reduce", tmp_path / "archive", "--out", run, "--quiet")
    assert len(RunFolder.open(run).manifest()) == 25
    for path in held.iterdir():
        shutil.move(path, series / path.name)

    refused = cli("export", run, "--out", tmp_path / "png", code=2)
    assert "archive/ct: 15 file(s) added" in refused.stderr and "--allow-changed" in refused.stderr
    assert not (tmp_path / "png").exists()

    rerun = cli("reduce", tmp_path / "archive", "--out", run, "--quiet")
    assert "inputs of archive/ct changed since the last run (15 file(s) added" in rerun.stderr
    manifest = RunFolder.open(run).manifest()
    assert len(manifest) == 40 and len(RunFolder(run).sources()[0].paths) == 40
    assert list(RunFolder(run).summary()["inputs_changed"]) == ["archive/ct"]
    cli("export", run, "--out", tmp_path / "png")
    cli("export", run, "--out", tmp_path / "npy", "--format", "npy", "--size", "32")
    assert_export_is_the_manifest(run, tmp_path / "png")
    assert_export_is_the_manifest(run, tmp_path / "npy")


def test_export_with_allow_changed_records_it_and_skips_volumes_that_no_longer_match(run_dir, archive, tmp_path):
    manifest = RunFolder.open(run_dir).manifest()
    kept = manifest[manifest["kept"] & (manifest["volume_id"] == "archive/patient0/ct")]
    Path(kept["source"].iloc[-1]).unlink()  # a kept slice's file: that volume cannot be exported
    with pytest.raises(ExportError, match="patient0/ct: 1 file"):
        ctreduce.export(run_dir, tmp_path / "png")
    meta = ctreduce.export(run_dir, tmp_path / "png", allow_changed=True)
    assert meta["allow_changed"] == ["archive/patient0/ct"]
    assert [e["volume_id"] for e in meta["errors"]] == ["archive/patient0/ct"]
    assert "archive/patient0/ct" not in set(ExportStore.open(tmp_path / "png").index["volume_id"])


def test_a_moved_and_touched_archive_is_not_reduced_again(run_dir, archive, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / archive.name
    shutil.copytree(archive, moved, copy_function=shutil.copy)  # new paths and new times
    before = RunFolder.open(run_dir).manifest()
    calls = []  # volumes reduced again (moved ones are read again and compared, not reduced)
    real = worker.volume_frame
    monkeypatch.setattr(worker, "volume_frame", lambda v, *a: calls.append(v.volume_id) or real(v, *a))

    result = ctreduce.reduce(moved, run_dir)
    assert calls == []
    manifest, summary = result.manifest, result.summary
    assert len(summary["inputs_moved"]) == 4 and summary["inputs_changed"] == {}
    assert all(str(moved) in s for s in manifest["source"])
    pd.testing.assert_frame_equal(manifest.drop(columns="source"), before.drop(columns="source"))
    shutil.rmtree(archive)  # the export reads the new location only
    ctreduce.export(run_dir, tmp_path / "png")
    assert_export_is_the_manifest(run_dir, tmp_path / "png")

    nrrd = next(moved.rglob("*.nrrd"))
    os.utime(nrrd, ns=(1, 1))  # touched, same content: kept
    assert ctreduce.reduce(moved, run_dir).summary["inputs_moved"] == ["archive/nrrd/p6"]
    assert calls == []
    data = bytearray(nrrd.read_bytes())
    data[-1] ^= 0xFF  # same size and path, other content: reduced again
    nrrd.write_bytes(bytes(data))
    summary = ctreduce.reduce(moved, run_dir).summary
    assert list(summary["inputs_changed"]) == ["archive/nrrd/p6"] and calls == ["archive/nrrd/p6"]


def test_other_inputs_in_the_same_folder_are_refused(run_dir, archive, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(archive, other)
    with pytest.raises(RunConflict, match="other inputs"):
        ctreduce.reduce(other, run_dir)


# --- exports ---------------------------------------------------------------------------------------


def test_png_names_are_unique_and_stable(tmp_path):
    names = ["CT 1", "CT_1", "Пациент", "Больной"]
    for i, name in enumerate(names):
        hu, spacing = make_phantom(n_slices=3, size=32, slice_thickness=5.0, seed=i)
        write_nifti(hu, spacing, tmp_path / "archive" / f"{name}.nii.gz")
    ctreduce.reduce(tmp_path / "archive", tmp_path / "run", method="all")
    meta = ctreduce.export(tmp_path / "run", tmp_path / "png")
    files = list((tmp_path / "png" / "images").glob("*.png"))
    assert meta["slices"] == len(files) == 12
    assert png_name("archive/CT 1", 3) == "archive%2FCT%201__0003.png"
    assert png_name("archive/CT_1", 3) == "archive%2FCT_1__0003.png"
    assert png_name(".hidden", 0).startswith("%2E")
    assert_export_is_the_manifest(tmp_path / "run", tmp_path / "png")


def test_an_existing_export_is_refused_and_overwrite_replaces_it_whole(archive, tmp_path):
    from torchvision.datasets import ImageFolder

    ctreduce.reduce(archive, tmp_path / "all", method="all")
    ctreduce.reduce(archive, tmp_path / "hash6")
    out = tmp_path / "png"
    ctreduce.export(tmp_path / "all", out)
    with pytest.raises(ExportError, match="already holds an export; use --overwrite"):
        ctreduce.export(tmp_path / "hash6", out)
    meta = ctreduce.export(tmp_path / "hash6", out, overwrite=True)
    assert len(list((out / "images").glob("*.png"))) == meta["slices"] == len(ImageFolder(str(out)))
    assert meta["slices"] < 90
    assert_export_is_the_manifest(tmp_path / "hash6", out)
    assert not list(tmp_path.glob(".png.*")) or all(p.name.endswith(".lock") for p in tmp_path.glob(".png.*"))

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a ctreduce export"):
        ctreduce.export(tmp_path / "hash6", foreign, overwrite=True)
    assert (foreign / "thesis.txt").read_text() == "keep me"


def test_an_interrupted_export_leaves_the_old_one_whole(archive, tmp_path, monkeypatch):
    from ctreduce.store import export as store_export

    ctreduce.reduce(archive, tmp_path / "run", method="all")
    out = tmp_path / "npy"
    ctreduce.export(tmp_path / "run", out, format="npy", size=16)
    before = ExportStore.open(out).meta
    real = store_export.ExportWriter.add_volume

    def add_then_die(self, images, records):
        if len(self.rows) >= 10:
            raise KeyboardInterrupt
        real(self, images, records)

    monkeypatch.setattr(store_export.ExportWriter, "add_volume", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        ctreduce.export(tmp_path / "run", out, format="npy", size=24, overwrite=True)
    assert ExportStore.open(out).meta == before
    monkeypatch.setattr(store_export.ExportWriter, "add_volume", real)  # the same command again finishes it
    ctreduce.export(tmp_path / "run", out, format="npy", size=24, overwrite=True)
    assert ExportStore.open(out).array().shape[1:] == (24, 24)
    assert not (tmp_path / ".npy.partial").exists()


def test_pretrain_refuses_an_interrupted_npy_export(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "shards").mkdir()
    np.save(data / "shards" / "a-0.npy", np.full((5, 32, 32), 100, np.uint8))  # shards written, no index yet
    proc = cli("pretrain", "--method", "swav", "--data", data, "--out", tmp_path / "pre", "--preset", "cpu",
               "--epochs", "1", code=2)
    assert "no export.json" in proc.stderr
    assert not (tmp_path / "pre" / "backbone.pt").exists()


def interrupt_after_two_volumes(monkeypatch) -> None:
    """Ctrl-C after two volumes of a run (in-process, one worker)."""
    real = backends.process_source
    count = []

    def stop_after_two(source, config, outputs=None, read=None):
        if len(count) == 2:
            raise KeyboardInterrupt
        count.append(1)
        return real(source, config, outputs, read)

    monkeypatch.setattr(backends, "process_source", stop_after_two)


def test_an_incomplete_run_exports_only_when_asked(archive, tmp_path, monkeypatch):
    interrupt_after_two_volumes(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        ctreduce.reduce(archive, tmp_path / "run")
    with pytest.raises(ExportError, match="incomplete run .*2 pending.*--allow-incomplete"):
        ctreduce.export(tmp_path / "run", tmp_path / "png")
    meta = ctreduce.export(tmp_path / "run", tmp_path / "png", allow_incomplete=True)
    assert meta["allow_incomplete"] is True and meta["volumes"] == 2


# --- writers, processes, disks -----------------------------------------------------------------------


HOLD_LOCK = """
import sys, time
from ctreduce.store.run import RunFolder
with RunFolder(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_dead_holder_is_taken_over(archive, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = cli("reduce", archive, "--out", out, "--method", "ssim", "--overwrite", "--quiet", code=2)
        assert f"being written by another ctreduce process (pid {holder.pid}" in proc.stderr
        assert not (out / "manifest.parquet").exists()
    finally:
        holder.kill()
        holder.wait()
    cli("reduce", archive, "--out", out, "--quiet")  # the kernel released the dead holder's lock
    assert RunFolder.open(out).complete


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.fixture
def slow_archive(tmp_path) -> Path:
    root = tmp_path / "slow"
    for i in range(8):
        hu, spacing = make_phantom(n_slices=60, size=128, slice_thickness=1.0, seed=i)
        write_nrrd(hu, spacing, root / f"v{i}.nrrd")
    return root


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_pool_workers_end_with_their_parent(slow_archive, tmp_path, sig):
    out = tmp_path / "run"
    args = [CTREDUCE, "reduce", str(slow_archive), "--out", str(out), "--method", "mi", "--workers", "2", "--quiet"]
    parent = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
        workers = _children(parent.pid)
        time.sleep(0.02)
    assert len(workers) >= 2, "the pool never started"
    parent.send_signal(sig)
    parent.wait(timeout=60)
    deadline = time.monotonic() + 10
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(workers) == [], f"workers outlived their parent ({sig!r})"
    if sig == signal.SIGTERM:
        assert parent.returncode == 130 and "run the same command again" in parent.stderr.read()
    cli(*args[1:])  # and the rerun finishes the run
    assert RunFolder.open(out).complete


def test_an_empty_input_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = cli("reduce", tmp_path / "empty", "--out", tmp_path / "run", code=2)
    assert "no volumes found" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_full_disk_is_one_line_and_the_rerun_resumes(archive, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ctreduce.cli import app

    real = pd.DataFrame.to_parquet
    written = []

    def fill_up(self, path, *args, **kwargs):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fill_up)
    result = CliRunner().invoke(app, ["reduce", str(archive), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: disk full writing {tmp_path / 'run' / 'parts'}/")
    assert lines[0].endswith("(No space left on device); free some space and run the same command again: "
                             "finished work is kept")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    result = ctreduce.reduce(archive, tmp_path / "run")
    assert result.complete and result.manifest["volume_id"].nunique() == 4


def test_scan_json_is_strict_json(tmp_path):
    hu, spacing = make_phantom(n_slices=1, size=32, slice_thickness=2.0)
    write_dicom_series(hu, spacing, tmp_path / "one")  # one slice: no z spacing (NaN)

    def no_constants(name):
        raise AssertionError(f"not JSON: {name}")

    data = json.loads(cli("scan", tmp_path / "one", "--json").stdout, parse_constant=no_constants)
    assert data["volumes"][0]["spacing_mm"][0] is None


# --- old run folders ---------------------------------------------------------------------------------


def test_a_schema_1_run_folder_reads_and_says_how_to_redo_it(run_dir, archive, tmp_path):
    run = RunFolder(run_dir)
    settings = run.settings()
    (run_dir / "run.json").write_text(json.dumps({**settings, "inputs": [str(archive)]}))
    table = pd.read_parquet(run_dir / "volumes.parquet").drop(columns="fingerprint")
    table.to_parquet(run_dir / "volumes.parquet", index=False)

    assert run.schema == 1 and run.settings() == settings and len(run.manifest()) == 90
    with pytest.raises(ExportError, match="older ctreduce .*schema 1.*--overwrite"):
        ctreduce.export(run_dir, tmp_path / "png")
    with pytest.raises(RunConflict, match="older ctreduce.*--overwrite"):
        ctreduce.reduce(archive, run_dir)
    assert ctreduce.reduce(archive, run_dir, overwrite=True).complete
    ctreduce.export(run_dir, tmp_path / "png")


def test_the_score_column_is_named_for_what_it_holds(archive, tmp_path):
    hashed = ctreduce.reduce(archive, tmp_path / "hash").manifest
    ssim = ctreduce.reduce(archive, tmp_path / "ssim", method="ssim", threshold=0.9).manifest
    assert "distance" in hashed.columns and "similarity" not in hashed.columns
    assert "similarity" in ssim.columns and "distance" not in ssim.columns
    dropped = ssim[~ssim["kept"]]
    assert (dropped["similarity"] >= 0.9).all()


def test_a_rerun_reads_only_the_headers_of_changed_files(run_dir, archive, monkeypatch):
    from ctreduce.io import discover

    read = []
    real = discover._header_or_reason
    monkeypatch.setattr(discover, "_header_or_reason", lambda path: read.append(Path(path).name) or real(path))
    real_once = discover._read_once  # the header read with the pixels (reduce --method hash reads each file once)
    monkeypatch.setattr(discover, "_read_once",
                        lambda path, slices: read.append(Path(path).name) or real_once(path, slices))
    first = RunFolder.open(run_dir).manifest()
    again = ctreduce.reduce(archive, run_dir)
    assert read == [] and again.complete
    pd.testing.assert_frame_equal(again.manifest, first)

    touched = sorted((archive / "patient1" / "ct").glob("*.dcm"))[3]
    os.utime(touched, ns=(5, 5))
    (archive / "patient0" / "ct" / "stray.dcm").write_bytes(b"not dicom")
    ctreduce.reduce(archive, run_dir)
    assert sorted(read) == sorted([touched.name, "stray.dcm"])
    cached = RunFolder(run_dir).header_cache()
    assert cached[str(touched)][:2] == (touched.stat().st_size, 5)
    assert cached == discover.scan([archive]).headers  # the columnar cache gives back every header exactly


# --- reduce --export: one pass ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["npy", "png"])
def test_reduce_with_export_equals_reduce_then_export_and_reads_each_volume_once(archive, tmp_path, monkeypatch,
                                                                                  fmt):
    loads = []
    real = worker.load
    monkeypatch.setattr(worker, "load", lambda source, *a: loads.append(source.volume_id) or real(source, *a))
    result = ctreduce.reduce(archive, tmp_path / "run", export=fmt, export_size=32)
    manifest = result.manifest
    assert sorted(loads) == sorted(manifest["volume_id"].unique())  # one read per volume
    assert result.summary["export"]["slices"] == int(manifest["kept"].sum())
    ctreduce.export(tmp_path / "run", tmp_path / "separate", format=fmt, size=32)
    fused, separate = ExportStore.open(tmp_path / "run" / "export"), ExportStore.open(tmp_path / "separate")
    pd.testing.assert_frame_equal(fused.index, separate.index)
    if fmt == "npy":
        np.testing.assert_array_equal(fused.array(), separate.array())
    else:
        for a, b in zip(fused.image_paths(), separate.image_paths(), strict=True):
            assert a.read_bytes() == b.read_bytes()
    assert_export_is_the_manifest(tmp_path / "run", tmp_path / "run" / "export")


def test_reduce_with_export_is_complete_or_absent_and_resumes(archive, tmp_path, monkeypatch):
    real = backends.process_source
    interrupt_after_two_volumes(monkeypatch)
    out = tmp_path / "exported"
    with pytest.raises(KeyboardInterrupt):
        ctreduce.reduce(archive, tmp_path / "run", export="npy", export_size=32, export_out=out)
    assert not out.exists()
    monkeypatch.setattr(backends, "process_source", real)
    proc = cli("reduce", archive, "--out", tmp_path / "run", "--export", "npy", "--size", "32", "--export-out", out,
               "--quiet")
    assert f"export:   {out} (" in proc.stdout
    assert_export_is_the_manifest(tmp_path / "run", out)
    written = (out / "export.json").stat().st_mtime_ns
    again = ctreduce.reduce(archive, tmp_path / "run", export="npy", export_size=32, export_out=out)
    assert again.summary["rerun"]["unchanged"]  # nothing changed: nothing read or assembled again
    assert (out / "export.json").stat().st_mtime_ns == written
    with pytest.raises(ValueError, match="target-fraction"):
        ctreduce.reduce(archive, tmp_path / "t", target_fraction=0.3, export="npy")


def test_rerun_of_a_complete_run_reads_no_header_unless_a_file_changed(archive, tmp_path, monkeypatch):
    first = ctreduce.reduce(archive, tmp_path / "run")
    assert first.summary["inputs_digest"]

    def no_scan(*args, **kwargs):
        raise AssertionError("a complete run with unchanged inputs was scanned again")

    monkeypatch.setattr(plan, "scan", no_scan)
    again = ctreduce.reduce(archive, tmp_path / "run")
    assert again.summary["rerun"]["unchanged"]
    pd.testing.assert_frame_equal(again.manifest, first.manifest)
    touched = sorted((archive).rglob("*.dcm"))[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1_000_000_000))
    with pytest.raises(AssertionError, match="scanned again"):
        ctreduce.reduce(archive, tmp_path / "run")
