"""The Ray backend gives the same manifest as the local process pool."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_store import CTREDUCE

import ctreduce
import ctreduce.store.run

ray = pytest.importorskip("ray", reason="the Ray backend is the optional extra ctreduce[ray]")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_backend_matches_local_pool(archive, tmp_path, local_ray):
    local = ctreduce.reduce(archive, tmp_path / "local", workers=2).manifest
    remote = ctreduce.reduce(archive, tmp_path / "ray", backend="ray").manifest
    pd.testing.assert_frame_equal(local, remote)
    on_disk = pd.read_parquet(tmp_path / "ray" / "manifest.parquet")
    pd.testing.assert_frame_equal(on_disk, pd.read_parquet(tmp_path / "local" / "manifest.parquet"))


def test_ray_backend_sweeps_and_errors(archive, tmp_path, local_ray):
    (archive / "broken.nii.gz").write_bytes(b"\x1f\x8b broken")
    local = ctreduce.reduce(archive, tmp_path / "local", method="mi", thresholds=[0.4, 0.6])
    remote = ctreduce.reduce(archive, tmp_path / "ray", method="mi", thresholds=[0.4, 0.6], backend="ray")
    pd.testing.assert_frame_equal(local.manifest, remote.manifest)
    assert local.summary["skipped"] == remote.summary["skipped"]
    assert any("broken.nii.gz" in s["path"] for s in remote.summary["skipped"])


def test_unknown_backend(archive):
    with pytest.raises(ValueError, match="unknown backend"):
        ctreduce.reduce(archive, backend="dask")


def test_ray_export_matches_local_pool(archive, tmp_path, local_ray):
    from ctreduce.exporting.from_run import export
    from ctreduce.store.export import ExportStore

    ctreduce.reduce(archive, tmp_path / "run")
    for fmt in ("npy", "png"):
        local = export(tmp_path / "run", tmp_path / f"local-{fmt}", format=fmt, size=32)
        remote = export(tmp_path / "run", tmp_path / f"ray-{fmt}", format=fmt, size=32, backend="ray")
        assert remote["backend"] == "ray" and remote["slices"] == local["slices"] > 0
        a, b = ExportStore.open(tmp_path / f"local-{fmt}"), ExportStore.open(tmp_path / f"ray-{fmt}")
        pd.testing.assert_frame_equal(a.index, b.index)
        if fmt == "npy":
            assert (a.array() == b.array()).all()
        else:
            assert [p.read_bytes() for p in a.image_paths()] == [p.read_bytes() for p in b.image_paths()]


def _descendants(pid: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found.update(children)
        todo += children
    return found


def _running(pids: set[int]) -> list[str]:
    alive = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:60])
        except OSError:
            continue
    return alive


@pytest.fixture(scope="module")
def slow_archive(tmp_path_factory) -> Path:
    """Eight volumes that take SSIM a while: the command is still reducing when it is stopped."""
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    root = tmp_path_factory.mktemp("slow")
    for i in range(8):
        hu, spacing = make_phantom(n_slices=60, size=128, slice_thickness=1.0, seed=i)
        write_nrrd(hu, spacing, root / f"v{i}.nrrd")
    return root


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and the parent-death signal are Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_local_ray_ends_with_the_command(slow_archive, tmp_path, sig):
    out = tmp_path / "run"
    args = [CTREDUCE, "reduce", str(slow_archive), "--out", str(out), "--method", "ssim", "--backend", "ray",
            "--workers", "2", "--quiet"]
    command = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out / "progress.jsonl").is_file() or not (out / "progress.jsonl").stat().st_size:
        assert time.monotonic() < deadline and command.poll() is None, command.communicate()
        time.sleep(0.05)
    ray_processes = _descendants(command.pid)  # raylet, GCS, agents, workers
    assert len(ray_processes) >= 4
    command.send_signal(sig)
    _, stderr = command.communicate(timeout=120)
    deadline = time.monotonic() + 15  # not ~70 s: the raylet's agents wait for the dead GCS that long
    while _running(ray_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(ray_processes) == []
    if sig == signal.SIGTERM:  # the CLI's interrupt, not Ray's stack dump
        assert command.returncode == 130, stderr
        assert "SIGTERM received" not in stderr and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1] == f"interrupted; partial results in {out}; run the same command " \
                                                  "again to finish"
    subprocess.run(args, check=True, capture_output=True, timeout=600)  # and the same command finishes the run
    assert ctreduce.store.run.RunFolder.open(out).complete
