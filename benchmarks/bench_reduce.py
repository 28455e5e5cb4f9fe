"""Throughput of hash-based slice reduction: the paper's pipeline against ``ctreduce``.

What is measured (slices per second over a whole dataset, ``time.perf_counter``, after a warm-up
run on the dataset's first volume; ctreduce's runs and the export best of ``--repeats``):

  (a) paper     the paper's scripts as they run, one process: per DICOM file ``pydicom.dcmread``,
                ``pixel_array * RescaleSlope + RescaleIntercept`` (float64), each slice min-max
                scaled to uint8 and written with OpenCV's ``cv2.imwrite`` (its default PNG
                compression, level 1), ``imagehash.dhash`` of each PNG re-opened from disk, greedy
                leader selection (Hamming <= 6) with imagehash objects, then ``shutil.copy2`` of
                each kept PNG. Slices are taken in anatomical order (ImagePositionPatient) rather
                than the scripts' file-name order, so that kept sets can be compared. The sample
                CTs are NRRD, which the scripts never read: there (a) reads with ``ctreduce.load``.
  (c) read      ``scan`` + ``load`` of every volume (read, decode, rescale to HU), nothing else.
  (d) reduce    ``ctreduce.reduce(inputs, out=<fresh run folder>, method="hash", threshold=6,
                workers=W)`` for W = 1 and 2: what ``ctreduce reduce IN --out RUN --workers W``
                runs, scan and run-folder writing included.
  (e) one pass  the same with ``export="npy", export_size=224``, 2 workers: ``ctreduce reduce IN
                --out RUN --export npy --size 224 --workers 2``, the training export written in
                the same pass.
  (x) export    ``ctreduce.export(run, out, format="png", workers=W)`` of the (d) run, W = 1, 2;
                rates in exported (kept) slices per second.
  (k) kernels   read + 8-bit + hash, the floor of a Hash-6 reduction: per volume ``load`` (read, decode,
                rescale), ``Intensity("minmax").to_uint8`` and ``HashMeasure.prepare``, one process.

Whole processes, side by side (``--processes N``, DICOM archive only): the paper's pipeline (a) and
``ctreduce reduce IN --out RUN --export npy --size 224 --workers 2 --quiet`` each run as a fresh process,
alternating, N times; start-up, imports and pool included; wall time and CPU (user + system of the process
and every process it waited for, ``RUSAGE_CHILDREN``), the median of the N. The paper's process imports this
script (and so ctreduce and its imports): its start-up is counted a little high.

Datasets: the two real sample chest CTs (``ctreduce.sample_data.real_ct.fetch()``, 48 + 61 slices of
512x512 NRRD) and a synthetic archive of DICOM series written once with ``ctreduce.sample_data.phantom``
(slice thickness 1.25 mm, one seed per volume). Files are read from a warm page cache. The load
average is printed with every dataset: the figures mean little without it.

Also reported: whether (a), (d1), (d2) and (e2) keep the same slices of every volume, the wall
time of ``ctreduce --help`` (median of 5), and the peak RSS of ``ctreduce.reduce(workers=1)`` on
the first half of the archive and on all of it (each in its own process, read with
``getrusage(RUSAGE_CHILDREN)``), which should not grow with the number of volumes.

Run:  make bench   or   .venv/bin/python benchmarks/bench_reduce.py [--volumes 8]
      [--slices-per-volume 60] [--size 512] [--repeats 2] [--workdir DIR] [--skip-samples] [--processes 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from machine import cpu_model, load_line
from machine import versions as machine_versions
from PIL import Image

import ctreduce
from ctreduce.io.discover import load, scan
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series

THRESHOLD = 6
EXPORT_SIZE = 224
SLICE_THICKNESS = 1.25
KeptSets = list[frozenset[int]]


@dataclass
class Dataset:
    """Inputs of one benchmark dataset; ``warmup`` is the first volume alone."""

    name: str
    inputs: list[Path]
    warmup: list[Path]
    n_volumes: int
    n_slices: int
    dicom: bool = False


@dataclass
class Timing:
    label: str
    seconds: float
    slices: int
    kept: KeptSets | None = None
    cpu: float = float("nan")  # CPU seconds of the process and its finished workers in that run

    @property
    def rate(self) -> float:
        return self.slices / self.seconds


@dataclass
class Report:
    """Everything measured for one dataset, and the 1-minute load average around it."""

    dataset: Dataset
    timings: dict[str, Timing] = field(default_factory=dict)
    load: float = 0.0
    load_after: float = 0.0


# --- machine -------------------------------------------------------------------------------------




def versions() -> dict[str, str]:
    return machine_versions(["ctreduce", "numpy", "Pillow", "ImageHash", "pydicom", "SimpleITK", "pandas",
                             "pyarrow", "opencv-python-headless"])


def print_header() -> None:
    print("ctreduce reduction benchmark")
    print(f"machine   {cpu_model()} | platform.processor()={platform.processor() or '-'} | "
          f"os.cpu_count()={os.cpu_count()} | {platform.system()} {platform.release()}")
    print("versions  " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"start     {load_line()}")
    print()


# --- datasets ------------------------------------------------------------------------------------


def volume_count(inputs: Sequence[Path]) -> tuple[int, int]:
    found = scan(inputs)
    return len(found.volumes), sum(v.n_slices for v in found.volumes)


def samples_dataset() -> Dataset:
    from ctreduce.sample_data.real_ct import fetch

    paths = fetch(quiet=True)
    n_volumes, n_slices = volume_count(paths)
    return Dataset("samples (real NRRD)", paths, paths[:1], n_volumes, n_slices)


def archive_dataset(root: Path, volumes: int, slices: int, size: int) -> Dataset:
    """Write (or reuse, when the parameters match) the synthetic DICOM archive under ``root``."""
    params = {"volumes": volumes, "slices": slices, "size": size, "thickness": SLICE_THICKNESS}
    marker = root / "archive.json"
    folders = [root / f"patient{i:03d}" for i in range(volumes)]
    if not (marker.exists() and json.loads(marker.read_text()) == params):
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        for seed, folder in enumerate(folders):
            hu, spacing = make_phantom(slices, size, SLICE_THICKNESS, seed=seed)
            write_dicom_series(hu, spacing, folder / "series", seed=seed, patient_id=folder.name)
        marker.write_text(json.dumps(params))
        print(f"wrote synthetic archive: {volumes} DICOM series x {slices} slices of {size}x{size} "
              f"to {root} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"reusing synthetic archive in {root}")
    name = f"archive ({volumes}x{slices} DICOM {size}px)"
    return Dataset(name, folders, folders[:1], volumes, volumes * slices, dicom=True)


# --- pipelines -----------------------------------------------------------------------------------


def greedy_imagehash(hashes: Sequence[imagehash.ImageHash],
                     threshold: int = THRESHOLD) -> frozenset[int]:
    """The paper's greedy leader selection with imagehash objects; returns kept indices."""
    remaining = list(range(len(hashes)))
    kept = []
    while remaining:
        ref, rest = remaining[0], remaining[1:]
        kept.append(ref)
        remaining = [j for j in rest if hashes[ref] - hashes[j] > threshold]
    return frozenset(kept)


def read_volumes(inputs: Sequence[Path]):
    """Yield every volume under ``inputs`` in scan order (slices in anatomical order)."""
    for source in scan(inputs).volumes:
        yield load(source)


def paper_dicom_volumes(inputs: Sequence[Path]):
    """(name, float64 HU stack) per series as the paper's scripts read DICOM: pydicom per file,
    ``pixel_array * slope + intercept``; ordered along the slice normal (see the module doc)."""
    import pydicom

    for folder in inputs:
        for series in sorted({p.parent for p in Path(folder).rglob("*.dcm")}):
            datasets = [pydicom.dcmread(p) for p in sorted(series.glob("*.dcm"))]
            normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
            datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))
            hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
            yield f"{Path(folder).name}_{series.name}", hu


def paper_pipeline(dataset: Dataset, scratch: Path, inputs: Sequence[Path]) -> KeptSets:
    import cv2

    png_dir = Path(tempfile.mkdtemp(prefix="paper-png-", dir=scratch))
    kept_dir = png_dir / "kept"
    kept_dir.mkdir()
    volumes = (paper_dicom_volumes(inputs) if dataset.dicom
               else ((v.volume_id.replace("/", "_"), v.hu) for v in read_volumes(inputs)))
    kept = []
    for stem, hu in volumes:
        paths = []
        for index, image in enumerate(hu):
            lo, hi = image.min(), image.max()
            u8 = (np.zeros(image.shape, np.uint8) if hi == lo
                  else np.rint((image - lo) / (hi - lo) * 255).astype(np.uint8))
            path = png_dir / f"{stem}_{index}.png"
            cv2.imwrite(str(path), u8)  # OpenCV's default PNG compression (level 1), as the scripts
            paths.append(path)
        hashes = []
        for path in paths:
            with Image.open(path) as png:
                hashes.append(imagehash.dhash(png))
        kept.append(greedy_imagehash(hashes))
        for index in sorted(kept[-1]):  # the paper's scripts then copy the kept PNGs
            shutil.copy2(paths[index], kept_dir / paths[index].name)
    shutil.rmtree(png_dir)
    return kept


def read_pipeline(dataset: Dataset, scratch: Path, inputs: Sequence[Path]) -> None:
    for volume in read_volumes(inputs):
        volume.hu.sum(dtype=np.int64)  # touch the pixels


def kept_from_manifest(manifest) -> KeptSets:
    order = list(dict.fromkeys(manifest["volume_id"]))
    groups = {vid: frame for vid, frame in manifest.groupby("volume_id", sort=False)}
    return [frozenset(int(i) for i in groups[vid].loc[groups[vid]["kept"], "slice_index"])
            for vid in order]


def ctreduce_pipeline(workers: int, export: str | None = None) -> Callable[..., KeptSets]:
    def run(dataset: Dataset, scratch: Path, inputs: Sequence[Path]) -> KeptSets:
        out = Path(tempfile.mkdtemp(prefix=f"run-w{workers}-", dir=scratch))
        result = ctreduce.reduce(list(inputs), out=out, method="hash", threshold=THRESHOLD,
                                 workers=workers, export=export, export_size=EXPORT_SIZE)
        errors = result.summary["errors"]
        if errors:
            raise RuntimeError(f"ctreduce.reduce reported errors: {errors}")
        return kept_from_manifest(result.manifest)

    return run


def kernel_pipeline(dataset: Dataset, scratch: Path, inputs: Sequence[Path]) -> None:
    from ctreduce.io.intensity import Intensity
    from ctreduce.reduction.measures import HashMeasure

    minmax, measure = Intensity.parse("minmax"), HashMeasure()
    for volume in read_volumes(inputs):
        measure.prepare(minmax.to_uint8(volume.hu))


PIPELINES: dict[str, tuple[str, Callable[..., KeptSets | None]]] = {
    "a": ("paper: cv2 PNG + imagehash + copy", paper_pipeline),
    "c": ("read only (scan + load)", read_pipeline),
    "d1": ("reduce, 1 worker", ctreduce_pipeline(1)),
    "d2": ("reduce, 2 workers", ctreduce_pipeline(2)),
    "e2": ("reduce --export npy 224, 2 workers", ctreduce_pipeline(2, "npy")),
    "k": ("kernels: read + 8-bit + dHash", kernel_pipeline),
}
REPEATED = ("c", "d1", "d2", "e2", "k")  # short runs: best of --repeats


def cpu_seconds() -> float:
    """User + system time of this process and of its children that have ended (pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_pipeline(key: str, dataset: Dataset, scratch: Path, repeats: int) -> Timing:
    label, fn = PIPELINES[key]
    fn(dataset, scratch, dataset.warmup)
    best = Timing(label, float("inf"), dataset.n_slices)
    for _ in range(repeats if key in REPEATED else 1):
        start, cpu = time.perf_counter(), cpu_seconds()
        kept = fn(dataset, scratch, dataset.inputs)
        seconds = time.perf_counter() - start
        if seconds < best.seconds:
            best = Timing(label, seconds, dataset.n_slices, kept, cpu_seconds() - cpu)
    return best


def time_export(dataset: Dataset, scratch: Path, workers: int, repeats: int) -> Timing:
    """``ctreduce.export`` of a Hash-6 run as PNG with ``workers``; rate in exported slices/s."""
    run = scratch / "export-run"
    if not (run / "manifest.parquet").exists():
        ctreduce.reduce(list(dataset.inputs), out=run, method="hash", threshold=THRESHOLD, workers=2)
    label = f"export png, {workers} worker{'s' if workers > 1 else ''}"
    best = Timing(label, float("inf"), 0)
    for k in range(repeats + 1):  # the first run warms up
        out = scratch / f"export-w{workers}-{k}"
        start, cpu = time.perf_counter(), cpu_seconds()
        meta = ctreduce.export(run, out, format="png", size=EXPORT_SIZE, workers=workers)
        seconds = time.perf_counter() - start
        if k and seconds < best.seconds:
            best = Timing(label, seconds, int(meta["slices"]), cpu=cpu_seconds() - cpu)
        shutil.rmtree(out)
    return best


def bench_dataset(dataset: Dataset, scratch: Path, repeats: int) -> Report:
    print(f"   measuring {dataset.name} ({load_line()})")
    report = Report(dataset, load=os.getloadavg()[0])
    for key in PIPELINES:
        report.timings[key] = time_pipeline(key, dataset, scratch, repeats)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    for workers in (1, 2):
        report.timings[f"x{workers}"] = time_export(dataset, scratch, workers, repeats)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    report.load_after = os.getloadavg()[0]
    return report


# --- whole processes -----------------------------------------------------------------------------

_PAPER_PROCESS = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench_reduce import Dataset, paper_pipeline
inputs = [Path(p) for p in sys.argv[3:]]
paper_pipeline(Dataset("paper", inputs, inputs[:1], len(inputs), 0, dicom=True), Path(sys.argv[2]), inputs)
"""


def child_run(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one command run as a child process (and every process it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def whole_processes(dataset: Dataset, scratch: Path, runs: int) -> dict[str, tuple[float, float]]:
    """(a) and (e2) as fresh processes, alternating ``runs`` times: median wall and CPU seconds of each."""
    ctreduce_cli = str(Path(sys.executable).with_name("ctreduce"))
    times: dict[str, list[tuple[float, float]]] = {"a": [], "e2": []}
    for k in range(runs):
        times["a"].append(child_run([sys.executable, "-c", _PAPER_PROCESS, str(Path(__file__).parent),
                                     str(scratch), *map(str, dataset.inputs)]))
        run = scratch / f"process-run-{k}"
        times["e2"].append(child_run([ctreduce_cli, "reduce", *map(str, dataset.inputs), "--out", str(run),
                                      "--threshold", str(THRESHOLD), "--export", "npy", "--size", str(EXPORT_SIZE),
                                      "--workers", "2", "--quiet"]))
        shutil.rmtree(run)
    return {key: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for key, v in times.items()}


def print_processes(dataset: Dataset, result: dict[str, tuple[float, float]], kernels: Timing, runs: int) -> None:
    (aw, ac), (ew, ec) = result["a"], result["e2"]
    n = dataset.n_slices
    print(f"== whole processes, side by side ({dataset.name}, median of {runs}; {load_line()})")
    print(f"   (a)  paper pipeline                  {aw:7.2f} s wall {ac:7.2f} s CPU ({ac / n * 1e3:.2f} ms/slice)")
    print(f"   (e2) reduce --export npy 224 -w 2   {ew:7.2f} s wall {ec:7.2f} s CPU ({ec / n * 1e3:.2f} ms/slice)")
    print(f"   (e2) vs (a): {aw / ew:.2f}x in wall time (target >= 5x), {ac / ec:.2f}x in CPU time (target >= 3x)")
    print(f"   CPU per slice of (e2), whole process, / (k) kernels read + 8-bit + dHash ({kernels.cpu / n * 1e3:.2f} "
          f"ms/slice): {ec / kernels.cpu:.2f} (target <= 1.3)")
    print()


# --- CLI start-up and memory ---------------------------------------------------------------------


def cli_startup(repeats: int = 5) -> float:
    """Median wall time of ``ctreduce --help`` (the script next to this interpreter)."""
    script = Path(sys.executable).parent / "ctreduce"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(script), "--help"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# The wrapper runs the reduction in its own child, so RUSAGE_CHILDREN covers that run alone.
_MEMORY_WRAPPER = """
import json, resource, subprocess, sys
code = ("import sys, ctreduce; ctreduce.reduce(sys.argv[2:], out=sys.argv[1], method='hash', "
        "threshold=6, workers=1)")
subprocess.run([sys.executable, "-c", code, *sys.argv[1:]], check=True)
print(json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
"""


def peak_rss_mib(inputs: Sequence[Path], scratch: Path) -> float:
    """Peak resident memory (MiB) of ``ctreduce.reduce(inputs, workers=1)`` in a fresh process."""
    out = Path(tempfile.mkdtemp(prefix="run-mem-", dir=scratch))
    result = subprocess.run([sys.executable, "-c", _MEMORY_WRAPPER, str(out), *map(str, inputs)],
                            check=True, capture_output=True, text=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024  # Linux reports KiB


# --- output --------------------------------------------------------------------------------------

# (name, numerator, denominator, bound, description, datasets: "all" or "dicom" or "samples")
TARGETS: list[tuple[str, str, str, float, str, str]] = [
    ("e2/a", "e2", "a", 6.0, "one pass (reduce + npy export, 2 workers) vs paper pipeline", "dicom"),
    ("e2/d2", "e2", "d2", 1 / 1.15, "one pass within 1.15x of reduce alone (2 workers)", "all"),
    ("d2/d1", "d2", "d1", 1.7, "reduce, 2 workers vs 1, 8 or more volumes", "dicom"),
    ("d2/d1", "d2", "d1", 1.4, "reduce, 2 workers vs 1, the two sample CTs", "samples"),
    ("d1/c", "d1", "c", 0.75, "reduce, 1 worker vs reading only", "all"),
    ("x2/x1", "x2", "x1", 1.7, "export of a Hash-6 run, 2 workers vs 1", "all"),
]


def print_report(report: Report) -> None:
    ds = report.dataset
    print(f"== {ds.name}: {ds.n_volumes} volumes, {ds.n_slices} slices; load average (1 min) "
          f"{report.load:.2f} before, {report.load_after:.2f} after")
    print(f"   {'pipeline':<40} {'seconds':>8} {'slices/s':>9} {'vs (a)':>7} {'CPU ms/slice':>13}")
    paper = report.timings["a"].rate
    for key, t in report.timings.items():
        tag = f"({key})"
        versus = f"{t.rate / paper:6.2f}x" if not key.startswith("x") else "      -"
        print(f"   {tag:<5} {t.label:<34} {t.seconds:8.2f} {t.rate:9.1f} {versus} {t.cpu / t.slices * 1e3:13.2f}")
    print(f"   (x) rates are exported slices per second ({report.timings['x1'].slices} kept slices)")
    print("   ratios (slices/s): " + ", ".join(
        f"{name} = {ratio(report, num, den):.2f}" for name, num, den, _, _, datasets in TARGETS
        if applies(report, datasets)))
    print(f"   one pass costs {report.timings['e2'].seconds / report.timings['d2'].seconds:.2f}x the time of "
          "reduce alone (2 workers)")
    a = report.timings["a"].cpu
    print(f"   CPU time per slice, paper / reduce 1 worker = {a / report.timings['d1'].cpu:.2f}, paper / one pass "
          f"= {a / report.timings['e2'].cpu:.2f}: the work each does, less sensitive to other load than wall time; "
          "on an idle machine the wall-time ratio is about the CPU ratio times the cores the run keeps busy")
    print("   kept slices identical per volume: " + agreement(report))
    print()


def applies(report: Report, datasets: str) -> bool:
    return datasets == "all" or (datasets == "dicom") == report.dataset.dicom


def ratio(report: Report, num: str, den: str) -> float:
    return report.timings[num].rate / report.timings[den].rate


def agreement(report: Report) -> str:
    sets = {key: report.timings[key].kept for key in ("a", "d1", "d2", "e2")}
    reference = sets["a"]
    assert reference is not None
    kept = sum(len(s) for s in reference)
    mismatched = [key for key, value in sets.items() if value != reference]
    if mismatched:
        return f"NO - {', '.join(mismatched)} differ from (a)"
    return (f"yes, a == d1 == d2 == e2 ({len(reference)} volumes, {kept} of "
            f"{report.dataset.n_slices} slices kept)")


def print_memory(half: tuple[int, int, float], full: tuple[int, int, float]) -> None:
    print("== peak RSS of ctreduce.reduce(workers=1) on the synthetic archive (own process)")
    for volumes, slices, mib in (half, full):
        print(f"   {volumes:3d} volumes ({slices:5d} slices): {mib:8.1f} MiB")
    print(f"   growth from {half[0]} to {full[0]} volumes: {full[2] / half[2]:.2f}x")
    print()


def target_lines(reports: list[Report], cli_s: float, memory_growth: float | None) -> list[str]:
    lines = []
    for name, num, den, bound, description, datasets in TARGETS:
        for report in reports:
            if not applies(report, datasets):
                continue
            value = ratio(report, num, den)
            verdict = "PASS" if value >= bound else "MISS"
            lines.append(f"{verdict}  {name:<6} >= {bound:<5.2f} {value:6.2f}  "
                         f"{description} [{report.dataset.name}, load {report.load:.1f}]")
    verdict = "PASS" if cli_s < 1.0 else "MISS"
    lines.append(f"{verdict}  CLI start-up < 1 s: {cli_s:.3f} s (ctreduce --help, median of 5)")
    for report in reports:
        verdict = "PASS" if agreement(report).startswith("yes") else "MISS"
        lines.append(f"{verdict}  identical kept slices (a, d1, d2, e2) [{report.dataset.name}]")
    if memory_growth is not None:
        verdict = "PASS" if memory_growth < 1.1 else "MISS"
        lines.append(f"{verdict}  peak RSS does not grow with volumes (< 1.1x): "
                     f"{memory_growth:.2f}x for twice the volumes")
    return lines


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices-per-volume", type=int, default=60)
    parser.add_argument("--volumes", type=int, default=8, help="synthetic DICOM series")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each slice")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keeps the synthetic archive between runs (default: a temp dir)")
    parser.add_argument("--skip-samples", action="store_true", help="skip the real sample CTs")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of (c), (d), (e), (x); the best counts")
    parser.add_argument("--processes", type=int, default=3,
                        help="runs of (a) and (e2) as whole processes, side by side (0: none)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("need --repeats >= 1")
    if args.volumes < 2 or args.slices_per_volume < 1 or args.size < 16:
        parser.error("need --volumes >= 2, --slices-per-volume >= 1 and --size >= 16")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print_header()
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ctreduce-bench-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        datasets = [] if args.skip_samples else [samples_dataset()]
        archive = archive_dataset(workdir / "archive", args.volumes, args.slices_per_volume,
                                  args.size)
        datasets.append(archive)
        print()
        reports = []
        for dataset in datasets:
            reports.append(bench_dataset(dataset, scratch, args.repeats))
            print_report(reports[-1])
        if args.processes:
            print_processes(archive, whole_processes(archive, scratch, args.processes), reports[-1].timings["k"],
                            args.processes)

        half_n = args.volumes // 2
        half = (half_n, half_n * args.slices_per_volume,
                peak_rss_mib(archive.inputs[:half_n], scratch))
        full = (archive.n_volumes, archive.n_slices, peak_rss_mib(archive.inputs, scratch))
        print_memory(half, full)

        cli_s = cli_startup()
        print(f"== CLI start-up: ctreduce --help takes {cli_s:.3f} s (median of 5)")
        print()
        print("targets")
        for line in target_lines(reports, cli_s, full[2] / half[2]):
            print("  " + line)
        print(f"end       {load_line()}")
    finally:
        shutil.rmtree(workdir if temporary else scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
