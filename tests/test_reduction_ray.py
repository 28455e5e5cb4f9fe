"""The Ray backend gives the same manifest as the local process pool."""

from __future__ import annotations

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
