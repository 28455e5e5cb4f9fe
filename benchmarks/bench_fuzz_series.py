"""Byte-fuzzed DICOM series: how many slices ``reduce --allow-gaps`` still reduces, this checkout
against an earlier commit.

Three series (the two real sample CTs of ``ctreduce samples``, 48 and 61 slices of 512 px, written
as DICOM by ``ctreduce.sample_data.phantom.write_dicom_series``, and a 108-slice phantom), then, per seed, a
few random header bytes changed (1-4 per file, never in the pixel data) in ~15% of the files. Each
checkout runs ``ctreduce reduce ROOT --allow-gaps --method all`` in its own process; the figures
are the slices reduced, the volumes that failed, the unchanged files that were not reduced (lost
with their series), and whether every changed file was either reduced or named (skipped list, a
volume's warnings or an error).

    python benchmarks/bench_fuzz_series.py [--seeds 5] [--share 0.15] [--ref ee6644a]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_read_memory import old_source  # noqa: E402
from machine import cpu_model, load_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def clean_series(folder: Path) -> list[Path]:
    """The three series, written once; their files in slice order."""
    import SimpleITK as sitk

    from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
    from ctreduce.sample_data.real_ct import fetch

    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        volumes = []
        for path in fetch(quiet=True):
            image = sitk.ReadImage(str(path))
            sx, sy, sz = image.GetSpacing()
            volumes.append((path.name.split("_")[0], sitk.GetArrayFromImage(image), (sz, sy, sx)))
        hu, spacing = make_phantom(n_slices=108, size=256, slice_thickness=1.25, seed=1)
        volumes.append(("phantom", hu, spacing))
        for name, hu, spacing in volumes:
            write_dicom_series(np.clip(hu, -1024, 3071), spacing, folder / name, seed=1)
        done.touch()
    return sorted(p for p in folder.rglob("*.dcm"))


def fuzz(files: list[Path], seed: int, share: float) -> list[Path]:
    """1-4 header bytes of ``share`` of the files XORed with a random non-zero byte (seeded)."""
    rng = np.random.default_rng(seed)
    changed = []
    for path in files:
        if rng.random() >= share:
            continue
        data = bytearray(path.read_bytes())
        end = bytes(data).rindex(b"\xe0\x7f\x10\x00")  # the Pixel Data tag: only the header before it
        for _ in range(int(rng.integers(1, 4, endpoint=True))):
            k = int(rng.integers(132, end))
            data[k] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        changed.append(path)
    return changed


def reduce(src: Path, root: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([str(Path(sys.executable).with_name("ctreduce")), "reduce", str(root), "--out", str(out),
                           "--allow-gaps", "--method", "all", "--quiet"], capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 1) or "Traceback" in proc.stderr:
        raise RuntimeError(proc.stderr[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    summary["_text"] = (out / "summary.json").read_text() + "".join(
        p.read_text() for p in out.rglob("*.jsonl"))
    import pandas as pd

    manifest = out / "manifest.parquet"
    summary["_sources"] = set(pd.read_parquet(manifest)["source"]) if manifest.exists() else set()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.15)
    parser.add_argument("--ref", default="ee6644a", help="commit to compare with (default: before this work)")
    parser.add_argument("--data", type=Path, default=Path(".cache/bench-fuzz-series"))
    args = parser.parse_args(argv)
    print("ctreduce byte-fuzzed series benchmark")
    print(f"machine   {cpu_model()} | {load_line()}")
    clean = clean_series(args.data / "clean")
    sources = {"this checkout": REPO / "src",
               f"ref {args.ref}": old_source(args.ref, (args.data.parent / "bench-read-memory" / "ref").resolve())}
    print(f"series    3 (real CT 48 + real CT 61 + phantom 108 slices: {len(clean)} files); header bytes changed in "
          f"~{args.share:.0%} of the files per seed; reduce --allow-gaps --method all")
    header = "  ".join(f"{name + ': slices, failed, lost, all named':>50}" for name in sources)
    print(f"{'seed':>4} {'changed':>7}  {header}")
    totals = {name: 0 for name in sources}
    for seed in range(args.seeds):
        root = args.data / "fuzzed"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(args.data / "clean", root)
        files = sorted(p for p in root.rglob("*.dcm"))
        changed = fuzz(files, seed, args.share)
        cells = []
        for name, src in sources.items():
            summary = reduce(src, root, args.data / "run")
            named = all(str(p) in summary["_sources"] or str(p) in summary["_text"] for p in changed)
            lost = sum(str(p) not in summary["_sources"] for p in files if p not in changed)
            totals[name] += summary["totals"]["slices"]
            cells.append(f"{summary['totals']['slices']:>4} of {len(files)}, {summary['totals']['volumes_failed']} "
                         f"failed, {lost:>3} lost, {'yes' if named else 'NO'}")
        print(f"{seed:>4} {len(changed):>7}  " + "  ".join(f"{c:>50}" for c in cells))
    print("total slices reduced: " + ", ".join(f"{name} {n} of {args.seeds * len(clean)}"
                                              for name, n in totals.items()))
    print(f"after: {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
