"""Folder locks: one writer or many readers, in this process or another; the holder named; nothing
left behind; a run being exported cannot be replaced."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_store import HOLD_LOCK, cli

import ctreduce
from ctreduce.store.export import ExportStore
from ctreduce.store.lock import FolderLock, LockHeld
from ctreduce.store.run import RunFolder


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_second_holder_in_the_same_process_is_refused(tmp_path):
    lock = tmp_path / "run" / ".lock"
    with FolderLock(lock, "run folder R"):
        with pytest.raises(LockHeld, match=rf"run folder R is being written by another ctreduce process \(pid "
                                           rf"{os.getpid()} on "):
            with FolderLock(lock, "run folder R"):
                pass
        with pytest.raises(LockHeld, match="being written"):
            with FolderLock(lock, "run folder R", shared=True):
                pass
    with FolderLock(lock, "run folder R"):  # released: free again
        pass
    assert hidden(tmp_path / "run") == []  # neither the lock file nor a note stays


def test_readers_share_and_a_writer_waits_for_the_last_of_them(tmp_path):
    lock = tmp_path / "run" / ".lock"
    lock.parent.mkdir()
    first = FolderLock(lock, "run folder R", shared=True).__enter__()
    second = FolderLock(lock, "run folder R", shared=True).__enter__()
    with pytest.raises(LockHeld, match=r"run folder R is being read by another ctreduce process \(pid .*; and 1 more"):
        with FolderLock(lock, "run folder R"):
            pass
    first.__exit__(None, None, None)
    assert lock.exists()  # the other reader still holds it
    with pytest.raises(LockHeld, match="being read"):
        with FolderLock(lock, "run folder R"):
            pass
    second.__exit__(None, None, None)
    assert hidden(lock.parent) == []
    with FolderLock(lock, "run folder R"):
        pass


def test_a_killed_holders_lock_and_note_are_taken_over_and_cleared(archive, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
    finally:
        holder.kill()
        holder.wait()
    assert any(name.endswith(".holder") for name in hidden(out))  # its note outlived it
    with FolderLock(out / ".lock", "run folder R"):
        notes = [name for name in hidden(out) if name.endswith(".holder")]
        assert len(notes) == 1 and notes[0].startswith(f".lock.{os.getpid()}.")  # ours only
    assert hidden(out) == []


def test_no_lock_file_is_left_beside_an_export_or_in_the_run(archive, tmp_path):
    ctreduce.reduce(archive, tmp_path / "run")
    ctreduce.export(tmp_path / "run", tmp_path / "png")
    ctreduce.export(tmp_path / "run", tmp_path / "npy", format="npy", size=16)
    assert hidden(tmp_path) == []
    assert hidden(tmp_path / "run") == []


def test_the_holder_note_on_a_full_disk_is_one_line(archive, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ctreduce.cli import app

    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".holder"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    result = CliRunner().invoke(app, ["reduce", str(archive), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: disk full writing {tmp_path / 'run'}/.lock."), lines
    assert lines[0].endswith("free some space and run the same command again: finished work is kept")
    monkeypatch.setattr(Path, "write_text", real)
    with FolderLock(tmp_path / "run" / ".lock", "run folder"):  # not left held
        pass


SLOW_EXPORT = """
import sys, time
from pathlib import Path
import ctreduce.exporting.from_run as exporting
real = exporting.export_volume
def waiting(*args, **kwargs):
    print("exporting", flush=True)
    while not Path(sys.argv[3]).exists():
        time.sleep(0.05)
    return real(*args, **kwargs)
exporting.export_volume = waiting
exporting.export(sys.argv[1], sys.argv[2], format="png")
print("exported", flush=True)
"""


def test_a_run_being_exported_cannot_be_replaced(archive, tmp_path):
    run = tmp_path / "run"
    ctreduce.reduce(archive, run)
    before = RunFolder.open(run).manifest()
    go = tmp_path / "go"
    exporter = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, str(run), str(tmp_path / "slow"), str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert exporter.stdout.readline().strip() == "exporting"
        for args in (["--overwrite", "--threshold", "2"], []):
            proc = cli("reduce", archive, "--out", run, "--quiet", *args, code=2)
            assert f"run folder {run} is being read by another ctreduce process (pid {exporter.pid} on " in proc.stderr
            assert "export" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        # a second export of the same run goes on meanwhile
        meta = ctreduce.export(run, tmp_path / "again", format="npy", size=16)
        assert meta["slices"] == int(before["kept"].sum())
        go.write_text("")
        assert exporter.wait(timeout=120) == 0, exporter.stderr.read()
    finally:
        exporter.kill()
        exporter.wait()
    store = ExportStore.open(tmp_path / "slow")
    assert store.meta["run_dir"] == str(run.resolve()) and store.meta["slices"] == int(before["kept"].sum())
    assert RunFolder.open(run).manifest().equals(before)
    cli("reduce", archive, "--out", run, "--quiet", "--overwrite", "--threshold", "2")  # free once it ended
    assert hidden(run) == []


def test_a_run_being_written_is_not_exported(archive, tmp_path):
    run = tmp_path / "run"
    ctreduce.reduce(archive, run)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = cli("export", run, "--out", tmp_path / "png", code=2)
        assert f"run folder {run} is being written by another ctreduce process (pid {holder.pid}" in proc.stderr
        assert not (tmp_path / "png").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    ctreduce.export(run, tmp_path / "png")  # the kernel released the lock with its holder
    assert ExportStore.open(tmp_path / "png").meta["slices"] > 0


def test_a_second_writer_in_the_same_process_is_refused_by_reduce_and_export(archive, tmp_path):
    """The run folder's lock, held in this process (an API user's second call, a thread), refuses
    ``reduce`` into that run and ``export`` of it; an export being written refuses a second one."""
    run = tmp_path / "run"
    ctreduce.reduce(archive, run, method="all")
    before = sorted(p.name for p in run.iterdir())
    with RunFolder(run).lock():
        with pytest.raises(LockHeld, match=rf"run folder {run} is being written by another ctreduce process \(pid "
                                           rf"{os.getpid()} "):
            ctreduce.reduce(archive, run, method="all", overwrite=True)
        with pytest.raises(LockHeld, match=rf"run folder {run} is being written"):
            ctreduce.export(run, tmp_path / "npy", format="npy", size=16)
    assert sorted(p.name for p in run.iterdir()) == before and not (tmp_path / "npy").exists()
    with FolderLock.beside(tmp_path / "npy", "export folder"):
        with pytest.raises(LockHeld, match="being written"):
            ctreduce.export(run, tmp_path / "npy", format="npy", size=16)
    ctreduce.export(run, tmp_path / "npy", format="npy", size=16)  # free again
    assert ExportStore.open(tmp_path / "npy").meta["slices"] == 90
