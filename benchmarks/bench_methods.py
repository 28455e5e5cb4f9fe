"""Speed and memory of every reduction method: SSIM against a scikit-image loop, MI and DeepNet
throughput, and an archive run of all methods with 1 and 2 workers.

What is measured (wall time with ``time.perf_counter``):

  1. SSIM on the two real sample chest CTs (``ctreduce.sample_data.real_ct.fetch()``, 48 + 61 slices of
     512x512 NRRD), threshold 0.9, ssim_size 128:
       ctreduce   ``ctreduce.reduce(samples, method="ssim", threshold=0.9, ssim_size=128,
                  device="cpu")`` (reading included);
       reference  ``ctreduce.read_volume``, min-max to uint8, ``SSIMMeasure.resize`` (the very
                  images ctreduce compares), then the greedy leader procedure with one
                  ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
                  sigma=1.5, use_sample_covariance=False, data_range=255)`` call per pair.
     Both keep the same slices when they agree; pairs compared, pairs/s and the speed-up are
     printed. Both run after a warm-up on a 4-slice phantom (imports), in this process.
  2. MI (default threshold) and DeepNet (EfficientNet-Lite0 ImageNet weights, and the
     ResNet-50 architecture with random weights from a local state-dict file; device cpu,
     batch_size 32) on the sample CTs: slices/s = slices / wall time of ``ctreduce.reduce``,
     after a warm-up on a 4-slice phantom (imports and model loading excluded).
  3. A synthetic NRRD archive (``ctreduce.sample_data.phantom``, slice thickness 1.25 mm, one seed per
     volume; by default 200 volumes x 300 slices of 64x64 px, scaled down from the paper's
     512x512 slices to fit a 2-core machine), written once. Each method (all, every-n with
     target_fraction 0.1, hash 6, ssim 0.9, mi default, deepnet EfficientNet-Lite0 on the first
     ``--deepnet-volumes`` volumes) runs as ``ctreduce.reduce(files, out=<fresh run folder>,
     workers=W)`` for W = 1 and 2, each in a fresh process: the time of the reduce call
     (imports and model loading done inside it included), slices/s, kept fraction and the peak
     RSS of the largest process of the run (``getrusage(RUSAGE_CHILDREN)`` in a wrapper).
     For hash and ssim the peak RSS of workers=1 on the first quarter of the volumes is
     compared with all volumes: it should not grow with the number of volumes.

"pairs" are the (reference, slice) comparisons of the greedy leader procedure; for ctreduce
they are derived from the manifest (at reference k, every later slice whose leader is >= k was
still remaining), for the reference they are counted.

Run:  .venv/bin/python benchmarks/bench_methods.py [--quick] [--volumes 200] [--slices 300]
      [--size 64] [--deepnet-volumes 2] [--workdir DIR] [--skip-deepnet]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model, load_line
from machine import versions as machine_versions

import ctreduce

SSIM_THRESHOLD = 0.9
SSIM_SIZE = 128
HASH_THRESHOLD = 6
SLICE_THICKNESS = 1.25
PAPER_SIZE = 512
DEEPNET_BATCH = 32
KeptSets = dict[str, frozenset[int]]


# --- machine -------------------------------------------------------------------------------------






def versions() -> dict[str, str]:
    out = machine_versions(["ctreduce", "numpy", "torch", "torchvision", "scikit-image", "scikit-learn",
             "efficientnet-lite-pytorch", "SimpleITK", "pandas", "pyarrow"])
    return out


def print_header() -> None:
    print("ctreduce methods benchmark (SSIM vs scikit-image, MI/DeepNet throughput, archive runs)")
    print(f"machine   {cpu_model()} | platform.processor()={platform.processor() or '-'} | "
          f"os.cpu_count()={os.cpu_count()} | {platform.system()} {platform.release()}")
    print("versions  " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"start     {load_line()}")
    print()


# --- helpers -------------------------------------------------------------------------------------


def kept_sets(manifest) -> KeptSets:
    return {str(vid): frozenset(int(i) for i in frame.loc[frame["kept"], "slice_index"])
            for vid, frame in manifest.groupby("volume_id", sort=False)}


def leader_pairs(manifest) -> int:
    """Comparisons made by the greedy leader procedure, recovered from the manifest.

    At reference k the remaining slices are the later ones not dropped by an earlier
    reference, i.e. those whose leader is k or later (kept slices lead themselves).
    """
    total = 0
    for _, frame in manifest.groupby("volume_id", sort=False):
        order = np.argsort(frame["slice_index"].to_numpy())
        index = frame["slice_index"].to_numpy()[order]
        leader = frame["leader"].to_numpy()[order]
        for k in index[frame["kept"].to_numpy()[order]]:
            total += int(np.count_nonzero((index > k) & (leader >= k)))
    return total


def tiny_volume(root: Path) -> Path:
    """A 4-slice phantom used to warm up imports and model loading."""
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    path = root / "warmup" / "tiny.nrrd"
    if not path.exists():
        hu, spacing = make_phantom(4, 64, SLICE_THICKNESS, seed=12345)
        write_nrrd(hu, spacing, path)
    return path


def timed_reduce(inputs: Sequence[Path], **settings: Any):
    reduce = ctreduce.reduce
    start = time.perf_counter()
    result = reduce(list(inputs), **settings)
    seconds = time.perf_counter() - start
    errors = result.summary["errors"]
    if errors:
        raise RuntimeError(f"ctreduce.reduce reported errors: {errors}")
    return result.manifest, seconds


# --- 1. SSIM: ctreduce against a scikit-image loop -----------------------------------------------


@dataclass
class SSIMRun:
    label: str
    seconds: float
    pairs: int
    kept: KeptSets

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds


def reference_ssim(paths: Sequence[Path], threshold: float = SSIM_THRESHOLD):
    """Greedy leader with one skimage SSIM call per pair; returns kept sets, pairs, scores."""
    from skimage.metrics import structural_similarity

    from ctreduce.reduction.measures import get_measure

    measure = get_measure("ssim", ssim_size=SSIM_SIZE, device="cpu")
    minmax = ctreduce.Intensity.parse("minmax")
    kept: KeptSets = {}
    scores: dict[tuple[str, int], float] = {}  # (volume, dropped slice) -> SSIM to its leader
    margin = np.inf  # closest score to the threshold over all pairs
    pairs = 0
    for path in paths:
        volume = ctreduce.read_volume(path)
        images = measure.resize(minmax.to_uint8(volume.hu))
        remaining = list(range(len(images)))
        keep = []
        while remaining:
            ref, rest = remaining[0], remaining[1:]
            keep.append(ref)
            survivors = []
            for j in rest:
                s = structural_similarity(images[ref], images[j], gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=255)
                pairs += 1
                margin = min(margin, abs(s - threshold))
                if s >= threshold:
                    scores[(volume.volume_id, j)] = float(s)
                else:
                    survivors.append(j)
            remaining = survivors
        kept[volume.volume_id] = frozenset(keep)
    return kept, pairs, scores, margin


def bench_ssim(samples: Sequence[Path], warmup: Path) -> tuple[SSIMRun, SSIMRun, SSIMRun, dict[str, Any]]:
    import torch

    settings = {"method": "ssim", "threshold": SSIM_THRESHOLD, "ssim_size": SSIM_SIZE, "device": "cpu"}
    timed_reduce([warmup], **settings)
    manifest, seconds = timed_reduce(samples, **settings)
    ours = SSIMRun(f"ctreduce.reduce ({torch.get_num_threads()} torch threads)", seconds, leader_pairs(manifest),
                   kept_sets(manifest))
    # Diagnostic: torch's intra-op threads suffer badly when other processes load the CPUs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, seconds = timed_reduce(samples, **settings)
    finally:
        torch.set_num_threads(threads)
    one = SSIMRun("ctreduce.reduce (1 torch thread) [info]", seconds, leader_pairs(single), kept_sets(single))

    reference_ssim([warmup])
    start = time.perf_counter()
    kept, pairs, scores, margin = reference_ssim(samples)
    ref = SSIMRun("reference (skimage loop per pair)", time.perf_counter() - start, pairs, kept)

    dropped = manifest.loc[~manifest["kept"]]
    diffs = [abs(float(row.distance) - scores[(row.volume_id, int(row.slice_index))])
             for row in dropped.itertuples() if (row.volume_id, int(row.slice_index)) in scores]
    extra = {"volumes": len(samples), "slices": len(manifest), "margin": margin,
             "max_score_diff": max(diffs) if diffs else float("nan"), "scores_compared": len(diffs)}
    return ours, ref, one, extra


def print_ssim(ours: SSIMRun, ref: SSIMRun, one: SSIMRun, extra: dict[str, Any]) -> None:
    print(f"== 1. SSIM reduction of {extra['volumes']} sample CT(s) ({extra['slices']} slices of "
          f"{PAPER_SIZE}x{PAPER_SIZE}), threshold {SSIM_THRESHOLD}, ssim_size {SSIM_SIZE}, reading included")
    print(f"   {'pipeline':<40} {'seconds':>8} {'pairs':>7} {'pairs/s':>9} {'kept':>5}")
    for run in (ours, ref, one):
        kept = sum(len(s) for s in run.kept.values())
        print(f"   {run.label:<40} {run.seconds:8.2f} {run.pairs:7d} {run.pairs_per_s:9.1f} {kept:5d}")
    print(f"   speed-up (reference seconds / ctreduce seconds): {ref.seconds / ours.seconds:.2f}x; "
          f"with 1 torch thread [info]: {ref.seconds / one.seconds:.2f}x")
    same = "yes" if ours.kept == ref.kept == one.kept else "NO"
    print(f"   kept slices identical per volume: {same}; pairs identical: "
          f"{'yes' if ours.pairs == ref.pairs else 'NO'}")
    print(f"   max |SSIM ctreduce - skimage| over {extra['scores_compared']} dropped slices: "
          f"{extra['max_score_diff']:.2e}; closest skimage score to the threshold: "
          f"{extra['margin']:.2e} away")
    print()


# --- 2. MI and DeepNet throughput on the samples -------------------------------------------------


def resnet50_random_file(root: Path) -> Path:
    """torchvision's ResNet-50 architecture with random weights (timing only; no download)."""
    import torch
    import torchvision

    path = root / "resnet50-random-weights.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def bench_throughput(samples: Sequence[Path], warmup: Path, workdir: Path,
                     deepnet: bool) -> list[tuple[str, int, float, int, float]]:
    """(label, slices, seconds, pairs, kept fraction) for MI and DeepNet on the samples."""
    runs: list[tuple[str, list[Path], dict[str, Any]]] = [("mi (default threshold 0.5)", list(samples),
                                                           {"method": "mi"})]
    if deepnet:
        dn = {"method": "deepnet", "device": "cpu", "batch_size": DEEPNET_BATCH}
        runs.append(("deepnet efficientnet-lite0 (ImageNet)", list(samples),
                     {**dn, "backbone": "efficientnet-lite0"}))
        runs.append(("deepnet resnet50 (random weights file)", list(samples),
                     {**dn, "backbone": str(resnet50_random_file(workdir))}))
    rows = []
    for label, inputs, settings in runs:
        timed_reduce([warmup], **settings)
        manifest, seconds = timed_reduce(inputs, **settings)
        rows.append((label, len(manifest), seconds, leader_pairs(manifest), float(manifest["kept"].mean())))
    return rows


def print_throughput(rows: list[tuple[str, int, float, int, float]], ssim: SSIMRun, ssim_slices: int) -> None:
    print("== 2. throughput on the sample CT(s) (512x512), device cpu, after a warm-up on a 4-slice phantom "
          "(imports and model loading excluded)")
    print(f"   {'method':<40} {'slices':>6} {'seconds':>8} {'slices/s':>9} {'pairs':>7} {'kept':>6}")
    print(f"   {'ssim 0.9 (from section 1)':<40} {ssim_slices:6d} {ssim.seconds:8.2f} "
          f"{ssim_slices / ssim.seconds:9.1f} {ssim.pairs:7d} {'':>6}")
    for label, slices, seconds, pairs, kept in rows:
        print(f"   {label:<40} {slices:6d} {seconds:8.2f} {slices / seconds:9.1f} {pairs:7d} {kept:6.1%}")
    print("   deepnet: batch_size 32; the random-weight ResNet-50 times the architecture only, its kept "
          "fraction means nothing")
    print()


# --- 3. synthetic archive ------------------------------------------------------------------------


def _write_phantom(path: str, slices: int, size: int, seed: int) -> None:
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    hu, spacing = make_phantom(slices, size, SLICE_THICKNESS, seed=seed)
    write_nrrd(hu, spacing, path)


def archive(root: Path, volumes: int, slices: int, size: int) -> list[Path]:
    """Write (or reuse, when the parameters match) the NRRD archive under ``root``."""
    params = {"volumes": volumes, "slices": slices, "size": size, "thickness": SLICE_THICKNESS}
    marker = root / "archive.json"
    paths = [root / f"patient{i:03d}.nrrd" for i in range(volumes)]
    if marker.exists() and json.loads(marker.read_text()) == params:
        print(f"   reusing synthetic archive in {root}")
        return paths
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    import multiprocessing as mp

    start = time.perf_counter()
    # spawn: this process may hold torch's thread pools, which must not be forked
    with ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_write_phantom, [str(p) for p in paths], [slices] * volumes, [size] * volumes,
                      range(volumes)))
    marker.write_text(json.dumps(params))
    seconds = time.perf_counter() - start
    mib = sum(p.stat().st_size for p in paths) / 2**20
    print(f"   wrote {volumes} NRRD volumes x {slices} slices of {size}x{size} ({volumes * slices} slices, "
          f"{mib:.0f} MiB) in {seconds:.1f} s with {os.cpu_count()} processes ({volumes * slices / seconds:.0f} "
          "slices/s)")
    return paths


# The child runs the reduction and times the call; the wrapper reads the child's peak RSS
# (RUSAGE_CHILDREN: the largest of the child and its pool workers) so each run is measured alone.
_CHILD = """
import json, sys, time
import ctreduce
spec = json.loads(open(sys.argv[1]).read())
reduce = ctreduce.reduce  # the engine's imports (pandas, ...) before the clock starts
start = time.perf_counter()
reduce(spec["inputs"], out=spec["out"], workers=spec["workers"], **spec["settings"])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

_WRAPPER = """
import json, resource, subprocess, sys
done = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stderr[-3000:])
result = json.loads(done.stdout.strip().splitlines()[-1])
result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps(result))
"""


@dataclass
class ArchiveRun:
    volumes: int
    slices: int
    workers: int
    seconds: float
    kept_fraction: float
    pairs: int | None
    rss_mib: float
    kept: KeptSets

    @property
    def rate(self) -> float:
        return self.slices / self.seconds


def run_in_child(inputs: Sequence[Path], settings: dict[str, Any], workers: int, scratch: Path) -> ArchiveRun:
    from ctreduce.store.run import RunFolder

    folder = Path(tempfile.mkdtemp(prefix=f"run-{settings['method']}-w{workers}-", dir=scratch))
    out = folder / "run"
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"inputs": [str(p) for p in inputs], "out": str(out), "workers": workers,
                                "settings": settings}))
    done = subprocess.run([sys.executable, "-c", _WRAPPER, _CHILD, str(spec)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{settings} workers={workers} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run_folder = RunFolder.open(out)
    summary = run_folder.summary()
    if summary["errors"]:
        raise RuntimeError(f"ctreduce.reduce reported errors: {summary['errors']}")
    manifest = run_folder.manifest(columns=["volume_id", "slice_index", "kept", "leader"])
    pairs = leader_pairs(manifest) if settings["method"] not in ("all", "every-n") else None
    run = ArchiveRun(len(inputs), summary["totals"]["slices"], workers, result["seconds"],
                     summary["totals"]["kept_fraction"], pairs, result["maxrss_kib"] / 1024, kept_sets(manifest))
    shutil.rmtree(folder, ignore_errors=True)
    return run


def archive_methods(size: int, ssim_size: int) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("all", "-", {"method": "all"}),
        ("every-n", "target_fraction 0.1", {"method": "every-n", "target_fraction": 0.1}),
        ("hash", f"dhash, threshold {HASH_THRESHOLD}", {"method": "hash", "threshold": HASH_THRESHOLD}),
        ("ssim", f"threshold {SSIM_THRESHOLD}, ssim_size {ssim_size}",
         {"method": "ssim", "threshold": SSIM_THRESHOLD, "ssim_size": ssim_size, "device": "cpu"}),
        ("mi", "default threshold 0.5, 64 bins", {"method": "mi"}),
        ("deepnet", "efficientnet-lite0, batch 32",
         {"method": "deepnet", "backbone": "efficientnet-lite0", "device": "cpu", "batch_size": DEEPNET_BATCH}),
    ]


def bench_archive(paths: list[Path], args: argparse.Namespace, scratch: Path):
    results: dict[str, tuple[str, ArchiveRun, ArchiveRun]] = {}
    for name, desc, settings in archive_methods(args.size, args.ssim_size):
        if name == "deepnet" and args.skip_deepnet:
            continue
        inputs = paths[: args.deepnet_volumes] if name == "deepnet" else paths
        w1 = run_in_child(inputs, settings, 1, scratch)
        w2 = run_in_child(inputs, settings, 2, scratch)
        results[name] = (desc, w1, w2)
    memory: dict[str, tuple[ArchiveRun, ArchiveRun]] = {}
    quarter = max(1, len(paths) // 4)
    for name, _, settings in archive_methods(args.size, args.ssim_size):
        if name in ("hash", "ssim"):
            memory[name] = (run_in_child(paths[:quarter], settings, 1, scratch), results[name][1])
    return results, memory


def print_archive(results, memory, args: argparse.Namespace) -> None:
    print(f"   {'method':<8} {'settings':<32} {'vols':>4} {'slices':>6} {'w1 s':>7} {'w1 sl/s':>8} "
          f"{'w2 s':>7} {'w2 sl/s':>8} {'w2/w1':>6} {'kept':>6} {'pairs':>8} {'RSS w1':>7} {'RSS w2':>7} "
          f"{'w1=w2':>5}")
    for name, (desc, w1, w2) in results.items():
        pairs = "-" if w1.pairs is None else str(w1.pairs)
        same = "yes" if w1.kept == w2.kept else "NO"
        print(f"   {name:<8} {desc:<32} {w1.volumes:4d} {w1.slices:6d} {w1.seconds:7.2f} {w1.rate:8.0f} "
              f"{w2.seconds:7.2f} {w2.rate:8.0f} {w1.seconds / w2.seconds:5.2f}x {w1.kept_fraction:6.1%} "
              f"{pairs:>8} {w1.rss_mib:7.0f} {w2.rss_mib:7.0f} {same:>5}")
    print("   seconds: the ctreduce.reduce call in a fresh process (scan, reading, run folder, imports and "
          "model loading inside the call included)")
    print("   RSS: peak resident MiB of the largest process of the run (the main process, or a pool worker); "
          "w1=w2: same kept slices")
    if "deepnet" in results:
        print(f"   deepnet runs on the first {args.deepnet_volumes} volume(s) only: every slice is resized to the "
              "network's 224x224 input, so its CPU cost per slice does not shrink with the 64 px slices "
              "(--deepnet-volumes N to change)")
    print()
    print("== peak RSS vs number of volumes (workers=1, own process)")
    for name, (part, full) in memory.items():
        print(f"   {name:<5} {part.volumes:4d} volumes ({part.slices:6d} slices): {part.rss_mib:7.1f} MiB   "
              f"{full.volumes:4d} volumes ({full.slices:6d} slices): {full.rss_mib:7.1f} MiB   "
              f"growth {full.rss_mib / part.rss_mib:.2f}x")
    print()


# --- targets -------------------------------------------------------------------------------------


def target_lines(ours: SSIMRun | None, ref: SSIMRun | None, results, memory) -> list[str]:
    lines = []

    def line(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'MISS'}  {text}")

    if ours is not None and ref is not None:
        speedup = ref.seconds / ours.seconds
        line(speedup >= 10, f"SSIM speed-up >= 10x: {speedup:.2f}x (ctreduce vs skimage loop, sample CTs)")
        line(ours.kept == ref.kept, "identical SSIM kept slices (ctreduce vs skimage loop, sample CTs)")
    for name, (part, full) in memory.items():
        growth = full.rss_mib / part.rss_mib
        line(growth < 1.1, f"peak RSS growth < 1.1x [{name}]: {growth:.2f}x from {part.volumes} to "
                           f"{full.volumes} volumes")
    if "hash" in results:
        _, w1, w2 = results["hash"]
        line(w1.seconds / w2.seconds >= 1.7, f"hash workers=2 / workers=1 >= 1.7: {w1.seconds / w2.seconds:.2f}x")
    others = [f"{name} {w1.seconds / w2.seconds:.2f}x" for name, (_, w1, w2) in results.items() if name != "hash"]
    if others:
        lines.append("info  workers=2 / workers=1, no target: " + ", ".join(others))
    return lines


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 volumes x 30 slices, only the first sample CT")
    parser.add_argument("--volumes", type=int, default=None, help="synthetic NRRD volumes (default 200)")
    parser.add_argument("--slices", type=int, default=None, help="slices per volume (default 300)")
    parser.add_argument("--size", type=int, default=64,
                        help="rows and columns of each synthetic slice (default 64; the paper's are 512)")
    parser.add_argument("--ssim-size", type=int, default=None,
                        help="ssim_size on the archive (default min(128, --size): no upsampling)")
    parser.add_argument("--deepnet-volumes", type=int, default=None,
                        help="archive volumes reduced with deepnet (default 2)")
    parser.add_argument("--skip-deepnet", action="store_true", help="no deepnet runs")
    parser.add_argument("--skip-samples", action="store_true", help="skip sections 1 and 2")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keeps the synthetic archive between runs (default: a temp dir)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.volumes = args.volumes or (4 if quick else 200)
    args.slices = args.slices or (30 if quick else 300)
    args.deepnet_volumes = min(args.deepnet_volumes or 2, args.volumes)
    args.ssim_size = args.ssim_size or min(SSIM_SIZE, args.size)
    if args.volumes < 4 or args.slices < 1 or args.size < 16 or args.ssim_size < 16:
        parser.error("need --volumes >= 4, --slices >= 1, --size >= 16 and --ssim-size >= 16")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    print_header()
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ctreduce-bench-methods-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    ours = ref = None
    try:
        if not args.skip_samples:
            from ctreduce.sample_data.real_ct import fetch

            samples = fetch(quiet=True)
            if args.quick:
                samples = samples[:1]
                print("--quick: sections 1 and 2 use the first sample CT only")
                print()
            warmup = tiny_volume(workdir)
            ours, ref, one, extra = bench_ssim(samples, warmup)
            print_ssim(ours, ref, one, extra)
            rows = bench_throughput(samples, warmup, workdir, not args.skip_deepnet)
            print_throughput(rows, ours, extra["slices"])

        print(f"== 3. synthetic archive: {args.volumes} volumes x {args.slices} slices of {args.size}x{args.size} px, "
              f"slice thickness {SLICE_THICKNESS} mm")
        if args.size < PAPER_SIZE:
            print(f"   SCALED DOWN: the paper's slices are {PAPER_SIZE}x{PAPER_SIZE} px; {args.size} px here to fit "
                  f"this {os.cpu_count()}-CPU machine (about {(PAPER_SIZE / args.size) ** 2:.0f}x fewer pixels per "
                  "slice)")
        if args.ssim_size != SSIM_SIZE:
            print(f"   ssim uses ssim_size {args.ssim_size} here (the slices' own size; 128 would upsample them)")
        paths = archive(workdir / "archive", args.volumes, args.slices, args.size)
        results, memory = bench_archive(paths, args, scratch)
        print_archive(results, memory, args)

        print("targets")
        for line in target_lines(ours, ref, results, memory):
            print("  " + line)
        print()
        print(f"end       {load_line()}; total {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(workdir if temporary else scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
