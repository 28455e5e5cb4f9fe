"""Reduce and export on a two-node Ray cluster against the local process pool, as whole commands.

Starts a Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a second node, one CPU each)
and runs, interleaved round by round so that the load of other jobs hits all alike:

  pool      ``ctreduce reduce ... --workers 2`` (the local process pool), then ``export --workers 2``;
  ray       ``--backend ray --workers 2`` with no address: ctreduce starts (and ends) a local Ray;
  cluster   ``--backend ray`` with RAY_ADDRESS set to the two-node cluster (started once, beforehand).

Each is a whole ``ctreduce`` process (start-up and Ray's connection included) on the same DICOM archive
(``--series`` series of ``--slices`` slices of ``--size`` px), reduced with hash (threshold 6) into a fresh
run folder, then exported as npy at 224 px. Prints the median wall time of each, the cluster's start-up,
the nodes the cluster's tasks ran on, the machine and its load. The two "nodes" share this machine's cores:
the figures show what Ray costs, not what a second machine gains.

Run:  .venv/bin/python benchmarks/bench_ray_cluster.py [--series 16] [--slices 64] [--size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model, load_line  # noqa: E402

from ctreduce.sample_data.phantom import make_phantom, write_dicom_series  # noqa: E402

CTREDUCE = str(Path(sys.executable).with_name("ctreduce"))


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([CTREDUCE, *args, "--quiet"], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=16)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="bench-ray-cluster-") as tmp:
        root = Path(tmp)
        for i in range(args.series):
            hu, spacing = make_phantom(n_slices=args.slices, size=args.size, slice_thickness=1.0, seed=i)
            write_dicom_series(hu, spacing, root / "ct" / f"s{i:03d}", seed=i)
        started = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            cluster.add_node(num_cpus=1)
            start_s = time.perf_counter() - started
            plain = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            setups = {"pool": (["--workers", "2"], plain),
                      "ray": (["--backend", "ray", "--workers", "2"], plain),
                      "cluster": (["--backend", "ray"], {**plain, "RAY_ADDRESS": cluster.address})}
            times: dict[str, dict[str, list[float]]] = {name: {"reduce": [], "export": []} for name in setups}
            nodes: dict[str, int] = {}
            for r in range(args.rounds):
                for name, (flags, env) in setups.items():
                    run, out = root / f"{name}{r}", root / f"{name}{r}-npy"
                    times[name]["reduce"].append(timed(["reduce", str(root / "ct"), "--out", str(run), *flags], env))
                    times[name]["export"].append(timed(["export", str(run), "--format", "npy", "--size", "224",
                                                        "--out", str(out), *flags], env))
                    if name == "cluster":
                        nodes = json.loads((out / "export.json").read_text())["ray_nodes"]
        finally:
            cluster.shutdown()

    print(f"machine: {cpu_model()}; {load_line()}")
    print(f"archive: {args.series} DICOM series x {args.slices} slices of {args.size} px; "
          f"median of {args.rounds} rounds, whole commands")
    print(f"two-node cluster (one CPU each, this machine) started in {start_s:.1f} s; "
          f"export volumes per node: {sorted(nodes.values())}")
    print(f"{'setup':<9} {'reduce s':>9} {'export s':>9}")
    for name, measured in times.items():
        print(f"{name:<9} {statistics.median(measured['reduce']):>9.2f} {statistics.median(measured['export']):>9.2f}")


if __name__ == "__main__":
    main()
