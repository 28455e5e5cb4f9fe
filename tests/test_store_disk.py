"""Disks that fill, outputs that cannot be written, outputs behind a link: one line, exit 1, nothing
half-written, and the same command resumes.

A real small disk is a tmpfs mounted in a private mount namespace (``unshare --user --mount``: no
root needed where user namespaces are allowed, and nothing outside the test sees it); where that is
not possible those tests skip, and the simulated ones (the allocation call failing) still run.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_store import CTREDUCE, assert_export_is_the_manifest

import ctreduce
from ctreduce.store.export import ExportStore


def _small_disks() -> str | None:
    """Why a private tmpfs cannot be mounted here, or None when it can."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            'd=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs "$d" && umount "$d" && rmdir "$d"'],
                           capture_output=True, text=True, timeout=60)
    return None if probe.returncode == 0 else f"cannot mount a private tmpfs: {probe.stderr.strip()}"


@pytest.fixture(scope="module")
def small_disk():
    reason = _small_disks()
    if reason:
        pytest.skip(reason)


def on_small_disk(tmp_path: Path, size: str, steps: str, **paths: Path) -> dict[str, dict[str, str]]:
    """Run the bash ``steps`` where $DISK is a fresh tmpfs of ``size`` (gone afterwards: copy what is
    needed out); ``run NAME args...`` runs ctreduce and records NAME's exit code, stdout and stderr."""
    log = tmp_path / "log"
    log.mkdir()
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
set -u
mount -t tmpfs -o size={size} tmpfs "$DISK" || exit 99
run() {{ name=$1; shift; "$CTREDUCE" "$@" > "$LOG/$name.out" 2> "$LOG/$name.err"; echo $? > "$LOG/$name.rc"; }}
{steps}
"""
    env = {**os.environ, "DISK": str(disk), "LOG": str(log), "CTREDUCE": CTREDUCE,
           **{k.upper(): str(v) for k, v in paths.items()}}
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {p.stem: {"rc": (log / f"{p.stem}.rc").read_text().strip(), "out": p.read_text(),
                     "err": (log / f"{p.stem}.err").read_text()} for p in log.glob("*.out")}


def assert_disk_full_line(result: dict[str, str], where: str) -> None:
    assert result["rc"] == "1", result
    lines = [line for line in result["err"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: disk full writing {where}"), result["err"]
    assert lines[0].endswith("free some space and run the same command again: finished work is kept")


@pytest.fixture
def run_all(archive, tmp_path) -> Path:
    """Every slice kept (90): the npy export at 224 px is 4.5 MB."""
    ctreduce.reduce(archive, tmp_path / "run", method="all")
    return tmp_path / "run"


def test_npy_export_on_a_disk_that_fills_is_one_line_and_resumes(run_all, tmp_path, small_disk):
    steps = """
head -c 7M /dev/zero > "$DISK/filler"
run full export "$RUN" --out "$DISK/npy" --format npy --size 224 --quiet
ls -A "$DISK" > "$LOG/listing.txt"
find "$DISK" -name ".*.tmp" > "$LOG/half.txt"
rm "$DISK/filler"
run again export "$RUN" --out "$DISK/npy" --format npy --size 224 --quiet
ls -A "$DISK" > "$LOG/after.txt"
cp -r "$DISK/npy" "$LOG/npy"
"""
    results = on_small_disk(tmp_path, "8m", steps, run=run_all)
    assert_disk_full_line(results["full"], f"{tmp_path / 'disk'}/.npy.partial/shards/")  # not SIGBUS (135)
    # the whole shards written so far are kept for the rerun; nothing half-written, no lock
    assert (tmp_path / "log" / "listing.txt").read_text().split() == [".npy.partial", "filler"]
    assert (tmp_path / "log" / "half.txt").read_text() == ""
    assert results["again"]["rc"] == "0", results["again"]
    assert (tmp_path / "log" / "after.txt").read_text().split() == ["npy"]
    assert_export_is_the_manifest(run_all, tmp_path / "log" / "npy")


def test_reduce_export_npy_on_a_disk_that_fills_resumes(archive, tmp_path, small_disk):
    steps = """
head -c 7M /dev/zero > "$DISK/filler"
run full reduce "$ARCHIVE" --out "$LOG/run" --method all --export npy --size 224 --export-out "$DISK/exp" --quiet
rm "$DISK/filler"
run again reduce "$ARCHIVE" --out "$LOG/run" --method all --export npy --size 224 --export-out "$DISK/exp" --quiet
cp -r "$DISK/exp" "$LOG/exp"
"""
    results = on_small_disk(tmp_path, "8m", steps, archive=archive)
    assert_disk_full_line(results["full"], f"{tmp_path / 'disk'}/.exp.partial/shards/")
    assert results["again"]["rc"] == "0", results["again"]
    assert_export_is_the_manifest(tmp_path / "log" / "run", tmp_path / "log" / "exp")


def test_a_disk_already_full_stops_at_the_lock_note_in_one_line(archive, tmp_path, small_disk):
    steps = """
cat /dev/zero > "$DISK/filler" 2> /dev/null
run full reduce "$ARCHIVE" --out "$DISK/run" --quiet
"""
    results = on_small_disk(tmp_path, "1m", steps, archive=archive)
    assert_disk_full_line(results["full"], f"{tmp_path / 'disk'}/run/.lock")


def test_npy_export_when_the_allocation_fails_is_one_line(run_all, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ctreduce.cli import app

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    out = tmp_path / "npy"
    result = CliRunner().invoke(app, ["export", str(run_all), "--out", str(out), "--format", "npy", "--quiet"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(
        rf"error: disk full writing {re.escape(str(tmp_path))}/\.npy\.partial/shards/[0-9a-f]{{20}}-[0-9a-f]{{16}}"
        r"\.npy \(No space left on device\); free some space and run the same command again: finished work is kept",
        lines[0]), lines
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".npy.partial"]
    assert not list((tmp_path / ".npy.partial").rglob("*.npy*"))  # the first shard failed: nothing half-written
    monkeypatch.undo()
    assert CliRunner().invoke(app, ["export", str(run_all), "--out", str(out), "--format", "npy",
                                    "--quiet"]).exit_code == 0
    assert_export_is_the_manifest(run_all, out)


def test_without_preallocation_zeros_are_written_first(run_all, tmp_path, monkeypatch):
    from ctreduce.store.files import reserve

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    written = []
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: written.append(len(data)) or real(fd, data, at))
    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    ctreduce.export(run_all, tmp_path / "npy", format="npy", size=40)
    shards = len(list((tmp_path / "npy" / "shards").glob("*.npy")))
    assert shards == 4 and sum(written) == 90 * 40 * 40 + 128 * shards  # each whole shard, before it was written
    assert_export_is_the_manifest(run_all, tmp_path / "npy")
    path = tmp_path / "file"
    with open(path, "wb") as fh:
        fh.write(b"header")
        fh.flush()
        reserve(fh.fileno(), 3 << 20, path)
    assert path.stat().st_size == 3 << 20 and path.read_bytes()[:6] == b"header"


def test_an_output_that_cannot_be_written_stops_the_export(run_all, tmp_path, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    from ctreduce.cli import app

    real = Image.Image.save

    def broken(self, fp, *args, **kwargs):
        if "nifti" in str(fp):
            raise OSError(errno.EIO, "Input/output error")
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", broken)
    out = tmp_path / "png"
    result = CliRunner().invoke(app, ["export", str(run_all), "--out", str(out), "--quiet"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot write {tmp_path}/.png.partial/images/archive%2Fnifti%2F")
    assert lines[0].endswith("(Input/output error)")
    assert not out.exists()  # never "complete" with a volume dropped for the output's fault


def test_an_out_that_links_to_an_export_replaces_that_export(run_all, archive, tmp_path):
    ctreduce.reduce(archive, tmp_path / "hash", method="hash")
    real = tmp_path / "data" / "export"
    real.parent.mkdir()
    ctreduce.export(run_all, real, format="npy", size=16)
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    ctreduce.export(tmp_path / "hash", link, format="npy", size=16, overwrite=True)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert ExportStore.open(real).meta["run_dir"] == str((tmp_path / "hash").resolve())
    assert_export_is_the_manifest(tmp_path / "hash", link)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "current", "data", "hash", "run"]  # no .old
    assert sorted(p.name for p in real.parent.iterdir()) == ["export"]
    assert ExportStore.open(real).array().shape[0] == ExportStore.open(real).meta["slices"]


def test_an_interrupted_export_exits_130_and_leaves_out_as_it_was(tmp_path):
    import signal
    import time

    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    for i in range(6):
        hu, spacing = make_phantom(n_slices=60, size=128, slice_thickness=1.0, seed=i)
        write_nrrd(hu, spacing, tmp_path / "archive" / f"v{i}.nrrd")
    ctreduce.reduce(tmp_path / "archive", tmp_path / "run", method="all")
    out = tmp_path / "png"
    export = subprocess.Popen([CTREDUCE, "export", str(tmp_path / "run"), "--out", str(out), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any((tmp_path / ".png.partial" / "images").glob("*.png")):
        assert time.monotonic() < deadline and export.poll() is None, export.communicate()
        time.sleep(0.02)
    export.send_signal(signal.SIGTERM)
    _, stderr = export.communicate(timeout=60)
    assert export.returncode == 130, stderr
    assert stderr.strip().splitlines() == [f"terminated; {out} is as it was; run the same command again"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "run"]


def test_an_npy_export_without_an_unreadable_volume_stores_only_the_rows_written(run_all, archive, tmp_path):
    (archive / "nrrd" / "p6.nrrd").unlink()  # 16 slices that can no longer be read
    meta = ctreduce.export(run_all, tmp_path / "npy", format="npy", size=24, allow_changed=True)
    assert meta["slices"] == 90 - 16 and [e["volume_id"] for e in meta["errors"]] == ["archive/nrrd/p6"]
    store = ExportStore.open(tmp_path / "npy")
    assert store.array().shape == (74, 24, 24)
    shards = list((tmp_path / "npy" / "shards").glob("*.npy"))
    assert len(shards) == 3 and sum(p.stat().st_size for p in shards) == 3 * 128 + 74 * 24 * 24
    assert_export_is_the_manifest_except(run_all, tmp_path / "npy", "archive/nrrd/p6")


def assert_export_is_the_manifest_except(run: Path, out: Path, missing: str) -> None:
    from ctreduce.io.discover import load
    from ctreduce.io.intensity import Intensity
    from ctreduce.store.export_formats import resize_pad
    from ctreduce.store.run import RunFolder

    manifest = RunFolder.open(run).manifest()
    kept = manifest[manifest["kept"] & (manifest["volume_id"] != missing)]
    store = ExportStore.open(out)
    assert list(zip(store.index["volume_id"], store.index["slice_index"], strict=True)) == \
        list(zip(kept["volume_id"], kept["slice_index"], strict=True))
    array = store.array()
    sources = {s.volume_id: s for s in RunFolder(run).sources()}
    for row in store.index.itertuples():
        u8 = Intensity().to_uint8(load(sources[row.volume_id]).hu[[row.slice_index]])[0]
        np.testing.assert_array_equal(array[row.row], resize_pad(u8, 24))
