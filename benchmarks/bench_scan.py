"""Header scan of a 40,000-file DICOM archive, 2 workers: this checkout against an earlier commit.

Part 7 measured the scan of 400 series x 100 slices of 64 px (40,000 files) at 15.7 s with 2 workers
and asked for 2x. This script scans the same kind of archive (the first ``--series`` series of the
``bench_scale.py`` archive, reused or written once) with ``ctreduce.io.discover.scan(workers=2)`` of
this checkout and of ``--ref`` (default: the last commit before part 7's work), each in its own
process with a cold header cache (no run folder: every header is read), alternating, and prints the
medians, their ratio, the machine and its load.

    python benchmarks/bench_scan.py [--series 400] [--repeats 3] [--ref 9c9c0cf]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_scale import archive, subset_root  # noqa: E402
from machine import cpu_model, load_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CODE = ("import sys, time; sys.path.insert(0, sys.argv[1]); from ctreduce.io.discover import scan; "
        "t = time.perf_counter(); found = scan([sys.argv[2]], workers=2); "
        "print(time.perf_counter() - t, len(found.volumes), sum(v.n_slices for v in found.volumes))")


def checkout(ref: str, where: Path) -> Path:
    """The ``src`` folder of ``ref`` (a git worktree, made once)."""
    if not (where / "src").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref], check=True,
                       capture_output=True)
    return where / "src"


def timed_scan(src: Path, root: Path) -> tuple[float, int, int]:
    out = subprocess.run([sys.executable, "-c", CODE, str(src), str(root)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref", default="9c9c0cf")
    parser.add_argument("--data", type=Path, default=Path(".cache/bench-scale"))
    parser.add_argument("--scratch", type=Path, default=Path(".cache/bench-scan"))
    args = parser.parse_args(argv)
    print("ctreduce header-scan benchmark")
    print(f"machine   {cpu_model()} | {load_line()}")
    folders = archive(args.data, max(args.series, 2000), 100, 64)[: args.series]
    args.scratch.mkdir(parents=True, exist_ok=True)
    root = subset_root(folders, args.scratch)
    sources = {"this checkout": REPO / "src", f"ref {args.ref}": checkout(args.ref, (args.scratch / "ref").resolve())}
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(args.repeats):
        for name, src in sources.items():
            seconds, volumes, slices = timed_scan(src, root)
            times[name].append(seconds)
    print(f"archive   {volumes} series, {slices:,} files of 64 px, workers 2, {args.repeats} alternating repeats")
    for name, values in times.items():
        print(f"{name:>16}: median {statistics.median(values):6.2f} s  (runs {', '.join(f'{v:.2f}' for v in values)})")
    new, old = (statistics.median(v) for v in times.values())
    print(f"speed-up {old / new:.2f}x (target >= 2x)")
    print(f"after: {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
