"""Reduce and export across the nodes of a Ray cluster: a head and a second node on this machine (one CPU each),
the command run as a subprocess and connected to it as a user connects to a real cluster (RAY_ADDRESS or
--ray-address). The work runs on both nodes, the outputs equal the local pool's, a worker dying on one volume
is that volume's error, and the cluster leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_plugins import PLUGINS
from test_reduction_ray import _descendants, _running
from test_store import CTREDUCE

import ctreduce
from ctreduce.exporting.from_run import export
from ctreduce.store.export import ExportStore
from ctreduce.store.run import RunFolder, part_name

ray = pytest.importorskip("ray", reason="the Ray backend is the optional extra ctreduce[ray]")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc lists the cluster's processes")

VOLUMES = 6
POISON_SLICES = 13  # ctreduce_poison's: a volume of this many slices kills the worker that hashes it


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    """Six volumes, and one ("poison") that the poison plug-in's measure and format die on."""
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    root = tmp_path_factory.mktemp("cluster-ct")
    for i in range(VOLUMES):
        hu, spacing = make_phantom(n_slices=30, size=64, slice_thickness=1.0, seed=i)
        write_nrrd(hu, spacing, root / f"v{i}.nrrd")
    hu, spacing = make_phantom(n_slices=POISON_SLICES, size=64, slice_thickness=2.0, seed=99)
    write_nrrd(hu, spacing, root / "poison.nrrd")
    return root


def _plugin_env() -> dict[str, str]:
    """The environment with the poison plug-in importable and loaded (by a node's workers, or the command)."""
    path = os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))
    return {"CTREDUCE_PLUGINS": "ctreduce_poison", "PYTHONPATH": path}


def _session_processes(session: str) -> list[str]:
    """What ``ps`` lists of the Ray session ``session``: its processes name it on their command lines."""
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if session in line and "ps -eo" not in line]


class TwoNodes:
    """A Ray head (``ray.cluster_utils.Cluster``) and a second node (``ray start --address ... --block``, this
    process's child), one CPU each. Where this machine allows (root: Linux mount namespaces), the second node
    sees a private empty folder at ``unshared``: a node without the file system the head shares."""

    def __init__(self, unshared: Path) -> None:
        from ray.cluster_utils import Cluster

        self.unshared = unshared
        self.second: subprocess.Popen | None = None
        self.head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        self.address = self.head.address
        try:
            node = [str(Path(sys.executable).with_name("ray")), "start", f"--address={self.address}",
                    "--num-cpus=1", "--block", "--disable-usage-stats"]
            hide = ["unshare", "--mount", "--propagation", "private"]
            self.private = shutil.which("unshare") is not None and subprocess.run(
                [*hide, "true"], capture_output=True).returncode == 0
            if self.private:  # the folder hidden under an empty file system of its own, in that node only
                node = [*hide, "sh", "-c", 'mount -t tmpfs ctreduce-test "$0" && exec "$@"', str(unshared), *node]
            self.second = subprocess.Popen(node, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while len(self.nodes()) < 2:
                assert self.second.poll() is None and time.monotonic() < deadline, "the second Ray node did not start"
                time.sleep(0.2)
        except BaseException:
            self.shutdown()
            raise

    def nodes(self) -> set[str]:
        return {n["NodeID"] for n in self.head.global_state.node_table() if n["Alive"]}

    def shutdown(self) -> None:
        if self.second is not None:
            self.second.terminate()  # ray start --block stops its node's processes
            try:
                self.second.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.second.kill()
        self.head.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The two nodes, whose workers load the poison plug-in (they inherit this process's environment when
    the node starts). Torn down however the tests end; then none of their processes is left (checked by
    process tree and with ``ps``)."""
    before = _descendants(os.getpid())
    unshared = tmp_path_factory.mktemp("unshared")
    saved = {name: os.environ.get(name) for name in ("CTREDUCE_PLUGINS", "PYTHONPATH")}
    made = None
    try:
        os.environ.update(_plugin_env())
        made = TwoNodes(unshared)
        _restore(saved)  # this process and the other tests keep their own environment
        yield made
    finally:
        _restore(saved)
        if made is not None:
            session = made.head.head_node.session_name
            processes = _descendants(os.getpid()) - before  # GCS, raylets, agents, workers
            made.shutdown()
            deadline = time.monotonic() + 60  # a loaded machine takes its time to stop them
            while (_running(processes) or _session_processes(session)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _running(processes) == [] and _session_processes(session) == []


def _restore(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _ctreduce(cluster, *args: str, code: int = 0, address_flag: bool = False) -> subprocess.CompletedProcess:
    """The command connected to the cluster as a user connects: RAY_ADDRESS, or --ray-address."""
    env = {**os.environ, **_plugin_env()}
    if address_flag:
        args = (*args, "--ray-address", cluster.address)
    else:
        env["RAY_ADDRESS"] = cluster.address
    done = subprocess.run([CTREDUCE, *args, "--backend", "ray", "--quiet"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == code, done.stderr
    return done


@pytest.fixture(scope="module")
def local_run(ct, tmp_path_factory) -> Path:
    """The archive reduced by the local process pool (the poison volume is an ordinary one for hash), exported
    in the same pass."""
    run = tmp_path_factory.mktemp("local") / "run"
    ctreduce.reduce(ct, run, workers=2, export="npy", export_size=32)
    return run


def test_reduce_on_two_nodes_matches_the_local_pool(cluster, ct, local_run, tmp_path):
    out = tmp_path / "run"
    _ctreduce(cluster, "reduce", str(ct), "--out", str(out), "--export", "npy", "--size", "32")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"),
                                  pd.read_parquet(local_run / "manifest.parquet"))
    journal = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert len(journal) == VOLUMES + 1 and not any(entry["error"] for entry in journal)
    assert {entry["node"] for entry in journal} == cluster.nodes()  # both nodes reduced volumes
    run = RunFolder.open(out)
    assert all((run.parts / part_name(entry["volume_id"])).is_file() for entry in journal)  # each wrote its parts
    a, b = ExportStore.open(local_run / "export"), ExportStore.open(out / "export")  # assembled from the parts
    pd.testing.assert_frame_equal(a.index, b.index)
    assert np.asarray(a.array()).tobytes() == np.asarray(b.array()).tobytes()
    # and the run resumes there: a second command reads nothing again
    _ctreduce(cluster, "reduce", str(ct), "--out", str(out), "--export", "npy", "--size", "32", address_flag=True)
    assert len((out / "progress.jsonl").read_text().splitlines()) == VOLUMES + 1


@pytest.mark.parametrize("fmt", ["npy", "png"])
def test_export_on_two_nodes_matches_the_local_pool(cluster, local_run, tmp_path, fmt):
    local = export(local_run, tmp_path / "local", format=fmt, size=32)
    _ctreduce(cluster, "export", str(local_run), "--format", fmt, "--size", "32", "--out", str(tmp_path / "ray"),
              address_flag=fmt == "png")
    meta = json.loads((tmp_path / "ray" / "export.json").read_text())
    assert set(meta["ray_nodes"]) == cluster.nodes() and sum(meta["ray_nodes"].values()) == VOLUMES + 1
    assert meta["slices"] == local["slices"] > 0 and meta["errors"] == []
    a, b = ExportStore.open(tmp_path / "local"), ExportStore.open(tmp_path / "ray")
    pd.testing.assert_frame_equal(a.index, b.index)
    if fmt == "npy":
        assert np.asarray(a.array()).tobytes() == np.asarray(b.array()).tobytes()
    else:  # written by the worker of each node into the shared staging folder
        assert [p.read_bytes() for p in a.image_paths()] == [p.read_bytes() for p in b.image_paths()]


def test_a_worker_dying_on_one_volume_is_that_volume_error(cluster, ct, local_run, tmp_path):
    out = tmp_path / "run"
    _ctreduce(cluster, "reduce", str(ct), "--out", str(out), "--method", "poison", code=1)
    summary = json.loads((out / "summary.json").read_text())
    assert [(Path(e["volume_id"]).name, e["error"].startswith(f"{ct / 'poison.nrrd'}: its Ray worker died"))
            for e in summary["errors"]] == [("poison", True)]
    assert summary["totals"]["volumes_reduced"] == VOLUMES
    mine = pd.read_parquet(out / "manifest.parquet")[["volume_id", "slice_index", "kept"]]
    theirs = pd.read_parquet(local_run / "manifest.parquet")[["volume_id", "slice_index", "kept"]]
    pd.testing.assert_frame_equal(mine, theirs[~theirs["volume_id"].str.endswith("poison")].reset_index(drop=True))

    # the export's tasks the same: the volume whose worker died is listed, the others are written
    local = export(local_run, tmp_path / "local", format="png")
    _ctreduce(cluster, "export", str(local_run), "--format", "poison", "--out", str(tmp_path / "ray"), code=1)
    meta = json.loads((tmp_path / "ray" / "export.json").read_text())
    assert [(Path(e["volume_id"]).name, e["error"].startswith(f"{ct / 'poison.nrrd'}: its Ray worker died"))
            for e in meta["errors"]] == [("poison", True)]
    written = ExportStore.open(tmp_path / "local").index["volume_id"]
    assert meta["slices"] == (~written.str.endswith("poison")).sum() and local["slices"] > meta["slices"] > 0


def test_a_node_that_does_not_see_an_output_folder_is_named_before_any_volume_is_read(cluster, ct, local_run):
    if not cluster.private:
        pytest.skip("hiding a folder from one node needs Linux mount namespaces (root)")
    out = cluster.unshared / "run"
    done = _ctreduce(cluster, "reduce", str(ct), "--out", str(out), code=2)
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {out / 'parts'}: not seen by Ray node ")
    assert "the run folder" in done.stderr and not any((out / "parts").iterdir())  # nothing reduced

    # reduce --export: every node writes its volumes' shards into the export's folder
    done = _ctreduce(cluster, "reduce", str(ct), "--out", str(cluster.unshared.parent / "run-shared"), "--export",
                     "npy", "--size", "32", "--export-out", str(cluster.unshared / "onepass"), code=2)
    assert "not seen by Ray node" in done.stderr and "the export's folder" in done.stderr

    # PNG files and npy shards are written by every node: the export's folder must be shared
    for fmt in ("png", "npy"):
        done = _ctreduce(cluster, "export", str(local_run), "--format", fmt, "--out", str(cluster.unshared / fmt),
                         code=2)
        assert "not seen by Ray node" in done.stderr and "the export's parent folder" in done.stderr
        assert not (cluster.unshared / fmt).exists()
    shared = cluster.unshared.parent / "npy-shared"  # seen by every node: the same export works
    _ctreduce(cluster, "export", str(local_run), "--format", "npy", "--out", str(shared))
    assert ExportStore.open(shared).meta["errors"] == []
