"""The core install: its size, what it holds, the core commands in it, and SSIM on numpy against torch.

What is measured (not a test: part 1 downloads the core's dependencies from PyPI):

  1. ``python -m venv DIR`` and ``DIR/bin/python -m pip install REPO`` (no extras): wall time; the run stops
     if torch, scikit-learn, scikit-image, matplotlib, lightly, Lightning or Ray got installed.
  2. The environment's size (``du -sk DIR``) and its largest distributions (the files each one's
     RECORD lists, summed).
  3. In that environment, each command as a user types it (start-up included, wall time): ``ctreduce
     samples`` (the cached sample CTs when present), ``reduce`` Hash-6 and SSIM 0.9, ``export`` png and npy,
     ``report``, ``duplicates``, ``compare``.
  4. SSIM on the CPU in this process (which has torch): on each sample CT, the images resized once, then
     ``ssim_numpy`` against ``ssim_torch`` (one torch thread, as the measure runs it): per-slice terms
     plus the greedy leader at 0.9, best of ``--repeats``, alternating; the kept slices must be equal.
     Also ``ctreduce reduce --method ssim`` end to end with this Python (torch) and the core one.
  5. ``--full-venv PATH``: the size of an environment with every extra (as ``make test`` builds it).

Run:  .venv/bin/python benchmarks/bench_core_install.py [--venv /tmp/ctreduce-core] [--keep]
      [--full-venv .venv] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_model, load_line

REPO = Path(__file__).resolve().parents[1]
NOT_CORE = ("torch", "scikit-learn", "scikit-image", "matplotlib", "lightly", "pytorch-lightning", "lightning",
            "ray")
SIZES = """
import importlib.metadata as md, json, os
sizes = {}
for dist in md.distributions():
    files = [f.locate() for f in dist.files or []]
    sizes[dist.metadata["Name"]] = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
print(json.dumps(sizes))
"""


def du_mb(path: Path) -> float:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
               .stdout.split()[0]) / 1024


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def install(venv: Path) -> dict[str, float]:
    shutil.rmtree(venv, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    made = time.perf_counter() - start
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(REPO)], check=True)
    return {"venv_s": made, "pip_install_s": time.perf_counter() - start - made}


def distributions(venv: Path) -> dict[str, int]:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", SIZES], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def core_commands(venv: Path, work: Path) -> dict[str, float]:
    """Each core command in the core environment (PYTHONPATH cleared: only what it installed)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ctreduce = str(venv / "bin" / "ctreduce")
    seconds, out = timed([ctreduce, "samples"], work, env)
    samples = str(Path(out.split()[0]).parent)
    times = {"samples": seconds}
    steps = {
        "reduce hash 6": ["reduce", samples, "--out", "hash6", "--method", "hash", "--threshold", "6", "--quiet"],
        "reduce ssim 0.9": ["reduce", samples, "--out", "ssim", "--method", "ssim", "--quiet"],
        "export png": ["export", "hash6", "--format", "png", "--out", "png", "--quiet"],
        "export npy 224": ["export", "hash6", "--format", "npy", "--size", "224", "--out", "npy", "--quiet"],
        "report": ["report", "hash6", "-o", "report.html"],
        "duplicates": ["duplicates", "hash6", "ssim", "--out", "duplicates"],
        "compare": ["compare", "hash6", "ssim"],
    }
    for name, args in steps.items():
        times[name], _ = timed([ctreduce, *args], work, env)
    return times


def ssim_speed(repeats: int) -> list[dict[str, float]]:
    """numpy against torch SSIM on the CPU, per sample CT: prepare + greedy leader at 0.9."""
    import torch

    from ctreduce.io.discover import load, scan
    from ctreduce.io.intensity import Intensity
    from ctreduce.reduction.leader import greedy_leader
    from ctreduce.reduction.similarity import SSIMMeasure, gaussian_window, ssim_numpy, ssim_torch
    from ctreduce.sample_data.real_ct import fetch

    kernel = gaussian_window().astype(np.float32)
    measure = SSIMMeasure(128, device="cpu")
    rows = []
    for source in scan(fetch(quiet=True)).volumes:
        u8 = Intensity.parse("minmax").to_uint8(load(source).hu)
        start = time.perf_counter()
        images = (measure.resize(u8) - 128.0).astype(np.float32)
        resize_s = time.perf_counter() - start
        best = {"numpy": np.inf, "torch": np.inf}
        kept = {}
        for _ in range(repeats):
            for name in best:
                start = time.perf_counter()
                prepared = (ssim_numpy(images, kernel) if name == "numpy"
                            else ssim_torch(images, kernel, torch.device("cpu"), 64))
                result = greedy_leader(len(images), prepared.compare, 0.9, higher_is_similar=True)
                best[name] = min(best[name], time.perf_counter() - start)
                kept[name] = result.kept
        assert np.array_equal(kept["numpy"], kept["torch"]), source.volume_id
        rows.append({"volume": source.volume_id, "slices": len(u8), "kept": int(kept["numpy"].sum()),
                     "resize_s": resize_s, "numpy_s": best["numpy"], "torch_s": best["torch"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "ctreduce-core")
    parser.add_argument("--keep", action="store_true", help="Keep the environment afterwards.")
    parser.add_argument("--full-venv", type=Path, default=None, help="An environment with every extra, to size.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"machine: {cpu_model()}; {load_line()}; Python {sys.version.split()[0]}")
    timings = install(args.venv)
    sizes = distributions(args.venv)
    present = sorted(name for name in sizes if name.lower() in NOT_CORE)
    if present:
        sys.exit(f"the core install pulled {present}: not a core install")
    total = du_mb(args.venv)
    print(f"\n1. core install: venv {timings['venv_s']:.1f} s, pip install {timings['pip_install_s']:.1f} s "
          f"(downloads included), {len(sizes)} distributions, none of {', '.join(NOT_CORE)}")
    print(f"2. size: {total:.0f} MB (du -sk {args.venv}); largest distributions:")
    for name, size in sorted(sizes.items(), key=lambda item: -item[1])[:12]:
        print(f"     {name:22} {size / 2**20:7.1f} MB")
    print(f"     {'(all others)':22} {sum(sorted(sizes.values())[:-12]) / 2**20:7.1f} MB")

    with tempfile.TemporaryDirectory() as work:
        times = core_commands(args.venv, Path(work))
        print("3. core commands in that environment (wall time, start-up included):")
        for name, seconds in times.items():
            print(f"     ctreduce {name:18} {seconds:6.2f} s")
        from ctreduce.sample_data.real_ct import sample_dir

        env_core = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        ssim = ["reduce", str(sample_dir()), "--method", "ssim", "--quiet", "--overwrite"]
        full_s, _ = timed([sys.executable, "-m", "ctreduce.cli", *ssim, "--out", "ssim-torch"], Path(work))
        core_s, _ = timed([str(args.venv / "bin" / "ctreduce"), *ssim, "--out", "ssim-numpy"], Path(work), env_core)

    print(f"4. SSIM on the CPU, numpy (core) against torch (train extra), best of {args.repeats}, 128 px, "
          "threshold 0.9, greedy leader included:")
    for row in ssim_speed(args.repeats):
        print(f"     {row['volume']:22} {row['slices']:3d} slices, kept {row['kept']:3d}: "
              f"resize {row['resize_s']:.3f} s; numpy {row['numpy_s']:.3f} s, torch {row['torch_s']:.3f} s "
              f"({row['numpy_s'] / row['torch_s']:.2f}x); same kept slices")
    print(f"     ctreduce reduce --method ssim, end to end: {core_s:.2f} s in the core environment (numpy), "
          f"{full_s:.2f} s with torch ({sys.executable})")
    if args.full_venv is not None:
        print(f"5. an environment with every extra ({args.full_venv}): {du_mb(args.full_venv):.0f} MB")
    if not args.keep:
        shutil.rmtree(args.venv, ignore_errors=True)


if __name__ == "__main__":
    main()
