"""An archive of 200,000 DICOM slices: scan, one-pass reduce + export, memory, resume.

Writes (once, reused while its parameters match) ``--series`` DICOM series of ``--slices``
slices of ``--size`` px under ``--data``, then for the first 500 and for all series runs, as a
user would, in its own process::

    ctreduce reduce ARCHIVE --out RUN --workers 2 --export npy --size 64 --quiet

and reports wall time, the scan's share (``summary.json``), the peak RSS of the largest process
(``getrusage(RUSAGE_CHILDREN)``: the parent or a worker), the sizes of the run folder's tables,
then the time of a rerun of the complete run (a no-op: the file listing equals the one recorded, nothing
else is read) and of the rerun of a run killed before its last 1% of volumes (their parts, the manifest
and the summary deleted: headers come from ``headers.parquet``, finished volumes from their fingerprints).

    python benchmarks/bench_scale.py [--series 2000] [--slices 100] [--size 64] [--subset 500]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import cpu_model, load_line, versions  # noqa: E402

from ctreduce.sample_data.phantom import make_phantom, write_dicom_series  # noqa: E402
from ctreduce.store.run import MANIFEST, SUMMARY, RunFolder, part_name  # noqa: E402

CTREDUCE = str(Path(sys.executable).with_name("ctreduce"))


def archive(root: Path, series: int, slices: int, size: int) -> list[Path]:
    params = {"series": series, "slices": slices, "size": size}
    marker = root / "archive.json"
    folders = [root / f"p{i:05d}" for i in range(series)]
    written = json.loads(marker.read_text()) if marker.exists() else {}
    if written.get("series", 0) >= series and {**written, "series": series} == params:  # the first ``series``
        print(f"reusing {series} series x {slices} slices of {size} px in {root}")
        return folders
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    phantoms = [make_phantom(slices, size, 1.25, seed=seed) for seed in range(16)]  # pixels repeat, UIDs not
    for i, folder in enumerate(folders):
        hu, spacing = phantoms[i % len(phantoms)]
        write_dicom_series(hu, spacing, folder, seed=i, patient_id=folder.name, shuffle_names=False)
    marker.write_text(json.dumps(params))
    print(f"wrote {series} series x {slices} slices of {size} px ({series * slices:,} files) in "
          f"{time.perf_counter() - start:.0f} s")
    return folders


def timed(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of the largest process of one command, run in a child."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "p = subprocess.run(sys.argv[1:]); s = time.perf_counter() - t; "
            "print(s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    seconds, rss_kib, code = out.stdout.split()[-3:]
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {code}")
    return float(seconds), int(rss_kib) / 1024


def subset_root(folders: list[Path], scratch: Path) -> Path:
    """One input folder holding ``folders`` (symbolic links, followed once), as a user's archive root."""
    root = scratch / f"archive{len(folders)}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for folder in folders:
        (root / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    return root


def measure(folders: list[Path], scratch: Path, size: int) -> dict[str, float]:
    run = scratch / f"run{len(folders)}"
    shutil.rmtree(run, ignore_errors=True)
    args = [CTREDUCE, "reduce", str(subset_root(folders, scratch)), "--out", str(run), "--workers", "2",
            "--export", "npy", "--size", str(size), "--quiet"]
    seconds, rss = timed(args)
    folder = RunFolder(run)
    summary = folder.summary()
    noop, _ = timed(args)
    # A run killed before its last 1% of volumes: their parts missing, and no manifest or summary yet
    # (both are written when a run ends).
    parts = [s.volume_id for s in folder.sources()][:: 100]
    for vid in parts:
        (folder.parts / part_name(vid)).unlink()
    for name in (MANIFEST, SUMMARY):
        (run / name).unlink()
    missing, _ = timed(args)
    redone = RunFolder(run).summary()
    if not redone["complete"] or redone["totals"]["volumes_reduced"] != summary["totals"]["volumes_reduced"]:
        raise RuntimeError(f"the resumed run is not whole: {redone['totals']}")
    sizes = {name: (run / name).stat().st_size / 2**20 for name in ("manifest.parquet", "volumes.parquet",
                                                                      "headers.parquet", "progress.jsonl")}
    return {"series": len(folders), "slices": summary["totals"]["slices"], "kept": summary["totals"]["kept"],
            "wall_s": seconds, "scan_s": summary["timings"]["scan_s"], "rss_mib": rss,
            "noop_s": noop, "missing_1pct_s": missing, "redone": len(parts),
            **{f"{k}_mib": v for k, v in sizes.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--subset", type=int, default=500)
    parser.add_argument("--data", type=Path, default=Path(".cache/bench-scale"))
    parser.add_argument("--scratch", type=Path, default=Path(".cache/bench-scale-runs"))
    args = parser.parse_args(argv)
    print("ctreduce scale benchmark")
    print(f"machine   {cpu_model()} | {load_line()}")
    print("versions  " + ", ".join(f"{k} {v}" for k, v in versions(["ctreduce", "numpy", "pydicom", "pandas",
                                                                    "pyarrow"]).items()))
    folders = archive(args.data, args.series, args.slices, args.size)
    args.scratch.mkdir(parents=True, exist_ok=True)
    rows = [measure(folders[: args.subset], args.scratch, args.size), measure(folders, args.scratch, args.size)]
    print()
    print(f"{'series':>7} {'slices':>9} {'kept':>7} {'reduce+export s':>16} {'scan s':>7} {'peak RSS MiB':>13} "
          f"{'no-op rerun s':>14} {'1% missing s':>13} {'manifest MiB':>13} {'journal MiB':>12}")
    for r in rows:
        print(f"{r['series']:7d} {r['slices']:9,d} {r['kept']:7,d} {r['wall_s']:16.1f} {r['scan_s']:7.1f} "
              f"{r['rss_mib']:13.0f} {r['noop_s']:14.1f} {r['missing_1pct_s']:13.1f} "
              f"{r['manifest.parquet_mib']:13.1f} {r['progress.jsonl_mib']:12.1f}")
    growth = rows[1]["rss_mib"] / rows[0]["rss_mib"]
    target = 1.15 if rows[1]["series"] <= 400 else 1.2  # 100 -> 400 series: 1.15x; 500 -> 2,000: 1.2x
    print(f"\npeak RSS {rows[0]['series']} -> {rows[1]['series']} series: {growth:.2f}x (target < {target}x); "
          f"no-op rerun of {rows[1]['slices']:,} slices: {rows[1]['noop_s']:.1f} s (target < 5 s)")
    if rows[1]["slices"] >= 200_000:
        print(f"reduce + export of {rows[1]['slices']:,} slices: {rows[1]['wall_s']:.1f} s (target <= 100 s)")
    print(f"after: {load_line()}; resource {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
