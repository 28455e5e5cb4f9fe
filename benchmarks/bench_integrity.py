"""What input fingerprints and folder locks cost a reduction (target: < 3% of reduce time).

On the 8-series DICOM archive of ``bench_reduce.py`` (8 x 60 slices of 512 px), one process:

  (a) ``ctreduce.reduce`` as shipped: fingerprints (stat before reading), each slice's pixel
      digest, run-folder lock, fingerprint column in volumes.parquet;
  (b) the same with fingerprints, digests and locking replaced by no-ops (monkeypatched in this process);

alternating (a) and (b) ``--repeats`` times, fresh run folders, median wall times. It also
times the pieces alone: ``Fingerprint.of`` of every volume, a lock acquire/release, and
``RunFolder.check_sources`` (what export and report run first), and a no-op rerun of the
complete run. A NIfTI copy of the archive shows the single-file case. ``bench_verify.py``
breaks the digests down per slice.

    python benchmarks/bench_integrity.py [--repeats 5] [--volumes 8] [--slices 60] [--size 512]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_reduce import archive_dataset  # noqa: E402
from machine import add_archive_arguments, cpu_model, load_line, versions  # noqa: E402

import ctreduce  # noqa: E402
from ctreduce.io.discover import scan  # noqa: E402
from ctreduce.reduction import backends, worker  # noqa: E402
from ctreduce.sample_data.phantom import make_phantom, write_nifti  # noqa: E402
from ctreduce.store import run as store_run  # noqa: E402
from ctreduce.store.fingerprint import Fingerprint  # noqa: E402
from ctreduce.store.lock import FolderLock  # noqa: E402


class _NoLock(contextlib.nullcontext):
    pass


@contextlib.contextmanager
def without_integrity():
    """Fingerprints, pixel digests and locks as no-ops, everything else unchanged."""
    empty = Fingerprint(())
    saved = (Fingerprint.of, worker.slice_digests, backends.slice_digests, store_run.RunFolder.lock)
    Fingerprint.of = classmethod(lambda cls, source, stats=None: empty)  # type: ignore[method-assign]
    worker.slice_digests = backends.slice_digests = lambda hu: [""] * len(hu)  # type: ignore[assignment]
    store_run.RunFolder.lock = lambda self: (self.path.mkdir(parents=True, exist_ok=True), _NoLock())[1]
    try:
        yield
    finally:
        (Fingerprint.of, worker.slice_digests, backends.slice_digests,  # type: ignore[misc]
         store_run.RunFolder.lock) = saved


def timed_reduce(inputs: list[Path], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    ctreduce.reduce(inputs, out, method="hash", threshold=6)
    return time.perf_counter() - start


def nifti_copy(root: Path, volumes: int, slices: int, size: int) -> list[Path]:
    paths = []
    for seed in range(volumes):
        path = root / f"patient{seed:03d}.nii.gz"
        if not path.exists():
            hu, spacing = make_phantom(slices, size, 1.25, seed=seed)
            write_nifti(hu, spacing, path)
        paths.append(path)
    return paths


def measure(name: str, inputs: list[Path], scratch: Path, repeats: int) -> None:
    print(f"== {name}")
    timed_reduce(inputs, scratch / "warm")  # page cache and imports
    shipped, bare = [], []
    for _ in range(repeats):
        shipped.append(timed_reduce(inputs, scratch / "a"))
        with without_integrity():
            bare.append(timed_reduce(inputs, scratch / "b"))
    a, b = statistics.median(shipped), statistics.median(bare)
    print(f"reduce, shipped (fingerprints, digests, lock): median {a:.3f} s  "
          f"(runs: {', '.join(f'{t:.3f}' for t in shipped)})")
    print(f"reduce, fingerprints, digests and lock off:   median {b:.3f} s  "
          f"(runs: {', '.join(f'{t:.3f}' for t in bare)})")
    print(f"overhead, whole runs: {100 * (a - b) / b:+.2f}% (run-to-run spread of the bare runs: "
          f"{100 * (max(bare) - min(bare)) / b:.1f}%)")

    sources = scan(inputs).volumes
    start = time.perf_counter()
    for source in sources:
        Fingerprint.of(source)
    fp = time.perf_counter() - start
    start = time.perf_counter()
    with FolderLock(scratch / "bench.lock", "bench"):
        pass
    lock = time.perf_counter() - start
    start = time.perf_counter()
    check = store_run.RunFolder(scratch / "a").check_sources()
    check_s = time.perf_counter() - start
    assert not check.changed
    start = time.perf_counter()
    ctreduce.reduce(inputs, scratch / "a", method="hash", threshold=6)
    noop = time.perf_counter() - start
    print(f"pieces alone: fingerprints of {len(sources)} volumes {1000 * fp:.1f} ms "
          f"({100 * fp / b:.2f}% of reduce), lock {1000 * lock:.2f} ms ({100 * lock / b:.3f}%), "
          f"source check before export {1000 * check_s:.1f} ms, no-op rerun {noop:.3f} s")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_arguments(parser)
    args = parser.parse_args(argv)
    print("ctreduce integrity benchmark (fingerprints and locks)")
    print(f"machine   {cpu_model()} | {load_line()}")
    print("versions  " + ", ".join(f"{k} {v}" for k, v in versions(["ctreduce", "numpy", "pydicom",
                                                                    "filelock"]).items()))
    print()
    dataset = archive_dataset(args.data, args.volumes, args.slices, args.size)
    niftis = nifti_copy(args.data.with_name(args.data.name + "-nifti"), args.volumes, args.slices, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        measure(dataset.name, dataset.inputs, Path(tmp), args.repeats)
        measure(f"the same phantoms as NIfTI ({args.volumes} x {args.slices} slices, {args.size} px)", niftis,
                Path(tmp), args.repeats)
    print(f"after: {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
