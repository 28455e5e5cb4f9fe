"""Where the time of a Hash-6 reduction goes, per slice, in one process (issue 10, part 7).

Each stage of ``reduce --export npy --size 224`` is timed on its own, volume by volume, best of
``--repeats`` runs (files in a warm page cache); ms per input slice and share of their sum:

  read + decode     ``load(source)`` minus the rescale below: per DICOM file the header parse
                    (pydicom) and the pixel bytes, the position check; SimpleITK for NRRD
  rescale to HU     stored values -> HU for the whole volume (``hu_array``, in place as the readers call it)
  8-bit (minmax)    ``Intensity("minmax").to_uint8``, the paper's per-slice scaling
  dHash             ``HashMeasure.prepare``: dHash bits (bit-identical to imagehash), packing,
                    the hex strings of the manifest
  selection         greedy leader selection at Hamming distance 6
  manifest rows     ``reduce_volume`` minus the three stages above (the volume's DataFrame)
                    plus writing its Parquet part
  npy export 224    ``npy_rows`` of the kept slices (Pillow bicubic to 224 px, padded) and np.save

Not in the sum, for reference: the read once of ``reduce --method hash`` on DICOM (per file: header and
pixels from one open, rescale, 8-bit, pixel digest, dHash: ``io.discover._read_once`` with the run's
``SliceHasher``, what the scan's workers run), the header scan it replaces (``dicom.read_header``), the other
intensity policies, a PNG export of the kept slices
(Pillow level 1, what ``--export png`` writes; and OpenCV's ``cv2.imwrite`` default, level 1, as
the paper's scripts), ``imagehash.dhash`` per slice, and SimpleITK's GDCM series reader on the
same DICOM files with a check that its HU equal ctreduce's.

Datasets: the 8 x 60 x 512 px DICOM phantom archive of bench_reduce.py (same generator) and the
two real sample CTs (NRRD). Run:  .venv/bin/python benchmarks/bench_profile.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from bench_reduce import Dataset, archive_dataset, samples_dataset
from machine import cpu_model, load_line

from ctreduce.io import dicom, discover
from ctreduce.io.discover import load, scan
from ctreduce.io.intensity import Intensity
from ctreduce.io.volume import Volume, VolumeSource, hu_array
from ctreduce.reduction.leader import greedy_leader
from ctreduce.reduction.measures import HashMeasure
from ctreduce.reduction.read_once import SliceHasher
from ctreduce.reduction.selection import reduce_volume
from ctreduce.store.export_formats import npy_rows, save_png
from ctreduce.store.run import write_part

THRESHOLD = 6
SIZE = 224
PIPELINE = ["read + decode", "rescale to HU", "8-bit (minmax)", "dHash", "selection", "manifest rows",
            "npy export 224"]
REFERENCE = ["read once (header + pixels + 8-bit + digest + dHash)", "header scan (read_header)",
             "8-bit window:-600,1500", "8-bit range:-1000,400", "PNG export (Pillow, level 1)",
             "PNG export (cv2.imwrite, level 1)", "imagehash.dhash", "SimpleITK series reader"]


def best(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` runs, in seconds: the cost with the least interference from other load."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stored_values(source: VolumeSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``load`` holds before the rescale: stored values, slopes and intercepts per slice."""
    if source.format != "dicom":
        import SimpleITK as sitk

        data = sitk.GetArrayFromImage(sitk.ReadImage(source.paths[0]))
        return data, np.ones(len(data)), np.zeros(len(data))
    read = [dicom._read_pixels(path) for path in source.paths]
    rescale = np.array([dicom._rescale(ds, path) for (ds, _), path in zip(read, source.paths, strict=True)])
    return np.stack([arr for _, arr in read]), rescale[:, 0], rescale[:, 1]


def sitk_series(source: VolumeSource) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(source.paths))
    return sitk.GetArrayFromImage(reader.Execute())


def profile_volume(source: VolumeSource, scratch: Path, repeats: int) -> tuple[dict[str, float], bool | None]:
    """Seconds per stage for one volume, and whether SimpleITK's HU equal ctreduce's (DICOM only)."""
    import cv2
    import imagehash
    from PIL import Image

    t: dict[str, float] = {}
    volume: Volume = load(source)
    whole = best(lambda: load(source), repeats)
    raw, slopes, intercepts = stored_values(source)
    copies = [raw.copy() for _ in range(repeats)]  # the rescale works in place: a fresh copy per run
    t["rescale to HU"] = best(lambda: hu_array(copies.pop(), slopes, intercepts, in_place=True), repeats)
    t["read + decode"] = max(whole - t["rescale to HU"], 0.0)
    minmax = Intensity.parse("minmax")
    u8 = minmax.to_uint8(volume.hu)
    t["8-bit (minmax)"] = best(lambda: minmax.to_uint8(volume.hu), repeats)
    measure = HashMeasure()
    prepared = measure.prepare(u8)
    t["dHash"] = best(lambda: measure.prepare(u8), repeats)
    selection = greedy_leader(volume.n_slices, prepared.compare, THRESHOLD, higher_is_similar=False)
    t["selection"] = best(lambda: greedy_leader(volume.n_slices, prepared.compare, THRESHOLD,
                                                higher_is_similar=False), repeats)
    frame = reduce_volume(volume, method="hash", threshold=THRESHOLD)
    rows = best(lambda: reduce_volume(volume, method="hash", threshold=THRESHOLD), repeats)
    parts = scratch / "parts"
    parts.mkdir(exist_ok=True)
    write = best(lambda: write_part(parts, source.volume_id, frame), repeats)
    t["manifest rows"] = max(rows - t["8-bit (minmax)"] - t["dHash"] - t["selection"], 0.0) + write
    kept = u8[np.flatnonzero(selection.kept)]
    array = scratch / "rows.npy"
    t["npy export 224"] = best(lambda: np.save(array, npy_rows(kept, SIZE)), repeats)

    for policy in ("window:-600,1500", "range:-1000,400"):
        intensity = Intensity.parse(policy)
        t[f"8-bit {policy}"] = best(lambda intensity=intensity: intensity.to_uint8(volume.hu), repeats)
    images = scratch / "png"
    images.mkdir(exist_ok=True)
    t["PNG export (Pillow, level 1)"] = best(
        lambda: [save_png(images, source.volume_id, i, image) for i, image in enumerate(kept)], repeats)
    t["PNG export (cv2.imwrite, level 1)"] = best(
        lambda: [cv2.imwrite(str(images / f"cv2_{i}.png"), image) for i, image in enumerate(kept)], repeats)
    t["imagehash.dhash"] = best(lambda: [imagehash.dhash(Image.fromarray(s)) for s in u8], repeats)
    equal = None
    if source.format == "dicom" and not source.frames:
        hasher = SliceHasher("minmax")
        files = list(source.paths)
        t["read once (header + pixels + 8-bit + digest + dHash)"] = best(
            lambda: [discover._read_once(p, hasher) for p in files], repeats)
        t["header scan (read_header)"] = best(lambda: [dicom.read_header(p) for p in files], repeats)
        t["SimpleITK series reader"] = best(lambda: sitk_series(source), repeats)
        equal = bool(np.array_equal(sitk_series(source), volume.hu))
    shutil.rmtree(images)
    # Sanity: the timed stages compute what reduce_volume computes.
    assert np.array_equal(frame["kept"].to_numpy(), selection.kept), source.volume_id
    return t, equal


def profile_dataset(dataset: Dataset, scratch: Path, repeats: int) -> None:
    totals: dict[str, float] = defaultdict(float)
    equal: list[bool] = []
    kept = 0
    sources = scan(dataset.inputs).volumes
    slices = sum(s.n_slices for s in sources)
    for source in sources:
        t, same = profile_volume(source, scratch, repeats)
        for key, value in t.items():
            totals[key] += value
        if same is not None:
            equal.append(same)
        kept += int(reduce_volume(load(source), method="hash", threshold=THRESHOLD)["kept"].sum())
    per = {key: value / slices * 1e3 for key, value in totals.items()}
    total = sum(per[k] for k in PIPELINE)
    print(f"== {dataset.name}: {len(sources)} volumes, {slices} slices, Hash-6 keeps {kept} "
          f"({kept / slices:.0%}); best of {repeats}, ms per input slice")
    print(f"   {'stage':<36} {'ms/slice':>9} {'share':>7}")
    for key in PIPELINE:
        print(f"   {key:<36} {per[key]:9.3f} {per[key] / total:6.1%}")
    print(f"   {'sum = one pass, 1 worker':<36} {total:9.3f} {'100%':>7}  ({1e3 / total:.0f} slices/s)")
    print("   for reference (not in the sum; exports per input slice):")
    for key in REFERENCE:
        if key in per:
            print(f"   {key:<36} {per[key]:9.3f}")
    read = per["read + decode"] + per["rescale to HU"]
    print(f"   8-bit minmax / dHash: {per['8-bit (minmax)'] / per['dHash']:.2f} "
          f"(target <= 1: scaling no slower than the hash)")
    once = "read once (header + pixels + 8-bit + digest + dHash)"
    if once in per:
        kernels = read + per["8-bit (minmax)"] + per["dHash"]
        print(f"   read once {per[once]:.3f} ms vs the kernels read + rescale + 8-bit + dHash {kernels:.3f} ms "
              f"(+ header scan {per['header scan (read_header)']:.3f} ms): {per[once] / kernels:.2f}x")
    if "SimpleITK series reader" in per:
        sitk_ms = per["SimpleITK series reader"]
        print(f"   read + rescale {read:.3f} ms vs SimpleITK {sitk_ms:.3f} ms: SimpleITK / ctreduce "
              f"= {sitk_ms / read:.2f} (target >= 1); HU equal to SimpleITK's on "
              f"{sum(equal)}/{len(equal)} volumes")
    print()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--slices-per-volume", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keeps the synthetic archive between runs (default: a temp dir)")
    parser.add_argument("--skip-samples", action="store_true", help="skip the real sample CTs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print("ctreduce per-slice profile (one process)")
    print(f"machine   {cpu_model()} | os.cpu_count()={os.cpu_count()}")
    print(f"start     {load_line()}")
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ctreduce-profile-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / "profile-scratch"
    scratch.mkdir(exist_ok=True)
    try:
        datasets = [archive_dataset(workdir / "archive", args.volumes, args.slices_per_volume, args.size)]
        if not args.skip_samples:
            datasets.append(samples_dataset())
        print()
        for dataset in datasets:
            profile_dataset(dataset, scratch, args.repeats)
    finally:
        shutil.rmtree(workdir if temporary else scratch, ignore_errors=True)
    print(f"end       {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
