"""The Ray backend gives the same manifest as the local process pool."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import ctreduce

ray = pytest.importorskip("ray", reason="the Ray backend is the optional extra ctreduce[ray]")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_backend_matches_local_pool(archive, tmp_path, local_ray):
    local = ctreduce.reduce(archive, tmp_path / "local", workers=2)
    remote = ctreduce.reduce(archive, tmp_path / "ray", backend="ray")
    pd.testing.assert_frame_equal(local, remote)
    on_disk = pd.read_parquet(tmp_path / "ray" / "manifest.parquet")
    pd.testing.assert_frame_equal(on_disk, pd.read_parquet(tmp_path / "local" / "manifest.parquet"))


def test_ray_backend_sweeps_and_errors(archive, tmp_path, local_ray):
    (archive / "broken.nii.gz").write_bytes(b"\x1f\x8b broken")
    local = ctreduce.reduce(archive, method="mi", thresholds=[0.4, 0.6])
    remote = ctreduce.reduce(archive, tmp_path / "ray", method="mi", thresholds=[0.4, 0.6], backend="ray")
    pd.testing.assert_frame_equal(local, remote)


def test_unknown_backend(archive):
    with pytest.raises(ValueError, match="unknown backend"):
        ctreduce.reduce(archive, backend="dask")


def test_ray_export_matches_local_pool(archive, tmp_path, local_ray):
    from ctreduce.exporting import export
    from ctreduce.store.export import ExportStore

    ctreduce.reduce(archive, tmp_path / "run")
    for fmt in ("npy", "png"):
        local = export(tmp_path / "run", tmp_path / f"local-{fmt}", format=fmt, size=32)
        remote = export(tmp_path / "run", tmp_path / f"ray-{fmt}", format=fmt, size=32, backend="ray")
        assert remote["backend"] == "ray" and remote["slices"] == local["slices"] > 0
        a, b = ExportStore.open(tmp_path / f"local-{fmt}"), ExportStore.open(tmp_path / f"ray-{fmt}")
        pd.testing.assert_frame_equal(a.index, b.index)
        if fmt == "npy":
            assert (np.load(a.array_path) == np.load(b.array_path)).all()
        else:
            assert [p.read_bytes() for p in a.image_paths()] == [p.read_bytes() for p in b.image_paths()]
