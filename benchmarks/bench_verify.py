"""What verifying slices on read costs: the pixel digest per 512 px slice against the slice's read time.

On the DICOM archive of ``bench_reduce.py`` (8 x 60 slices of 512 px, page cache warm), one process,
each figure the median of ``--repeats`` passes over every volume, per slice:

  read       ``io.discover.load`` of a whole series (what ``reduce`` reads) and of its kept slices
             only (what ``export`` reads: one file each);
  reduce     ``store.fingerprint.slice_digests`` of the loaded int16 HU (recorded in the manifest), with
             the algorithm recorded (xxh3 where the xxhash package is installed, else BLAKE2b) and
             with each algorithm installed;
  export     ``store.fingerprint.first_mismatch`` of the kept slices against their manifest rows
             (digest and position: what every export runs before writing a slice);
  fallback   a run without digests: the dHash of the 8-bit slice under the run's policy instead;
  variants   the digest of a float32 slice (non-integral rescale).

Then whole commands: ``reduce`` and ``export`` (npy, 224 px) as shipped and with the digest
and the comparison replaced by no-ops in this process, alternating, median wall times.

    python benchmarks/bench_verify.py [--repeats 5] [--volumes 8] [--slices 60] [--size 512]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_reduce import archive_dataset  # noqa: E402
from machine import add_archive_arguments, cpu_model, load_line, versions  # noqa: E402

import ctreduce  # noqa: E402
from ctreduce.exporting import from_run  # noqa: E402
from ctreduce.io.discover import load  # noqa: E402
from ctreduce.reduction import backends, worker  # noqa: E402
from ctreduce.reduction.verify import legacy_dhashes  # noqa: E402
from ctreduce.store.fingerprint import ALGORITHM, ALGORITHMS, first_mismatch, slice_digest, slice_digests  # noqa: E402
from ctreduce.store.run import RunFolder  # noqa: E402


def per_slice(fn: Callable[[], int], repeats: int) -> float:
    """Median over ``repeats`` of the time of ``fn`` divided by the number of slices it returns, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        times.append((time.perf_counter() - start) / n * 1000)
    return statistics.median(times)


@contextlib.contextmanager
def without_verification():
    """The digest (reduce) and the comparison (export) as no-ops, everything else unchanged."""
    saved = worker.slice_digests, backends.slice_digests, from_run.first_mismatch
    worker.slice_digests = backends.slice_digests = lambda hu: [""] * len(hu)  # type: ignore[assignment]
    from_run.first_mismatch = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        worker.slice_digests, backends.slice_digests, from_run.first_mismatch = saved  # type: ignore[misc]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_arguments(parser)
    args = parser.parse_args(argv)
    print("ctreduce verify-on-read benchmark (pixel digests)")
    print(f"machine   {cpu_model()} | {load_line()}")
    print("versions  " + ", ".join(f"{k} {v}" for k, v in versions(["ctreduce", "numpy", "pydicom"]).items()))
    print()
    dataset = archive_dataset(args.data, args.volumes, args.slices, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        run = scratch / "run"
        manifest = ctreduce.reduce(dataset.inputs, run, method="hash", threshold=6).manifest  # warms the page cache
        sources = RunFolder(run).sources()
        volumes = [load(s) for s in sources]
        rows = {vid: g.reset_index(drop=True) for vid, g in manifest[manifest["kept"]].groupby("volume_id", sort=False)}
        kept = {s.volume_id: rows[s.volume_id]["slice_index"].to_numpy() for s in sources}
        n_kept = sum(len(k) for k in kept.values())
        print(f"== {dataset.name}: {len(manifest)} slices, {n_kept} kept; per slice, median of {args.repeats}")

        read = per_slice(lambda: sum(load(s).n_slices for s in sources), args.repeats)
        read_kept = per_slice(lambda: sum(load(s, kept[s.volume_id]).n_slices for s in sources), args.repeats)
        digest = per_slice(lambda: sum(len(slice_digests(v.hu)) for v in volumes), args.repeats)
        subsets = {s.volume_id: load(s, kept[s.volume_id]) for s in sources}

        def compare_all() -> int:
            for vid, volume in subsets.items():
                assert first_mismatch(volume, rows[vid]) is None
            return n_kept

        compare = per_slice(compare_all, args.repeats)
        fallback = per_slice(lambda: sum(len(legacy_dhashes(v.hu, "minmax")) for v in volumes), args.repeats)
        floats = [v.hu[:8].astype(np.float32) * np.float32(0.5) for v in volumes]
        digest_f32 = per_slice(lambda: sum(len(slice_digests(f)) for f in floats), args.repeats)
        print(f"read, whole series (reduce)        {read:7.3f} ms")
        print(f"read, kept slices only (export)    {read_kept:7.3f} ms")
        print(f"digest at reduce (int16 HU, {ALGORITHM:4})  {digest:7.3f} ms  ({100 * digest / read:.1f}% of the read)")
        for name in ALGORITHMS:
            alone = per_slice(lambda name=name: sum(len([slice_digest(s, name) for s in v.hu]) for v in volumes),
                              args.repeats)
            print(f"  with {name:4}                        {alone:7.3f} ms  ({100 * alone / read:.1f}% of the read)")
        print(f"compare at export (digest + z)     {compare:7.3f} ms  ({100 * compare / read_kept:.1f}% of the read)")
        print(f"fallback without digests (dHash)   {fallback:7.3f} ms  ({100 * fallback / read_kept:.1f}% of the read)")
        print(f"digest of a float32 slice          {digest_f32:7.3f} ms")
        if "xxh3" not in ALGORITHMS:
            print("  (xxh3: the xxhash package is not installed)")
        assert slice_digest(volumes[0].hu[0]) == manifest["pixel_digest"].iloc[0]

        shipped, bare = {"reduce": [], "export": []}, {"reduce": [], "export": []}
        for _ in range(args.repeats):
            for label, times in (("shipped", shipped), ("bare", bare)):
                with without_verification() if label == "bare" else contextlib.nullcontext():
                    shutil.rmtree(scratch / "r", ignore_errors=True)
                    times["reduce"].append(timed(lambda: ctreduce.reduce(dataset.inputs, scratch / "r",
                                                                         method="hash", threshold=6)))
                    times["export"].append(timed(lambda: ctreduce.export(run, scratch / "e", format="npy",
                                                                         overwrite=True)))
        print()
        for command in ("reduce", "export"):
            a, b = statistics.median(shipped[command]), statistics.median(bare[command])
            print(f"{command:6} shipped {a:.3f} s, digest/comparison off {b:.3f} s: {100 * (a - b) / b:+.1f}% "
                  f"(spread of the bare runs {100 * (max(bare[command]) - min(bare[command])) / b:.1f}%)")
    print(f"\nafter: {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
