"""Archive-scale near-duplicate search and leakage (issue 12): figures, ratios, machine and load.

1. 1,000,000 CT-like 64-bit codes (below), all pairs within 6 bits across volumes, in a child
   process: wall and CPU seconds, the child's peak RSS (``VmHWM``). Targets < 60 s and
   < 2 GB on 2 cores.
2. Exactness: brute force (numpy popcount of every pair) on the first 50,000 codes gives the
   same pairs; FAISS's ``IndexBinaryMultiHash`` range search on the same codes (4 tables of 16
   bits, nflip 1: exact for radius 6) for the time it takes.
3. imagededup 0.3.3 ``find_duplicates(encoding_map=..., max_distance_threshold=6)`` on the same
   codes: 1,080 PNG slices of the two real sample CTs (108 slices stored ten times, as the
   issue's archive; imagededup's own dHash of the PNGs is checked equal to ctreduce's first), and
   ``--imagededup-n`` synthetic codes (the issue's 100,000 by default; its search is quadratic).
4. Leakage of a 25,000-image MedMNIST-layout task against a run folder of 1,000,000 slices,
   end to end (task read, images hashed, manifest read, search). Target < 30 s.

CT-like codes: the dHashes of 60 phantom volumes (seeds 0..59, 40-80 slices) and of the two
real sample CTs are the anatomies; each synthetic volume takes one of them, XORs a per-volume
mask of 10-20 random bits (another patient: the two real CTs differ by a median of ~28 bits,
the synthetic volumes of one anatomy by ~25) and 0-2 random bits per slice (noise); 3% of the
volumes are stored again with a 0-3-bit mask and 0-1 bit per slice (a re-export, a second
reconstruction). Neighbouring slices of a volume lie within a few bits of each other, as in CT.

    python benchmarks/bench_curate.py [--n 1000000] [--imagededup-n 100000] [--skip-imagededup-n]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from machine import cpu_model, load_line, versions  # noqa: E402

from ctreduce.core.dhash import codes_from_bits  # noqa: E402
from ctreduce.io.intensity import Intensity  # noqa: E402
from ctreduce.reduction import hashing  # noqa: E402
from ctreduce.reduction.hamming_index import HammingIndex, brute_pairs

RADIUS = 6


def slice_codes(u8: np.ndarray) -> np.ndarray:
    return codes_from_bits(hashing.pack(hashing.dhash_bits(u8)))


def sample_u8() -> list[np.ndarray]:
    import SimpleITK as sitk

    from ctreduce.sample_data.real_ct import fetch

    return [Intensity().to_uint8(sitk.GetArrayFromImage(sitk.ReadImage(str(p)))) for p in fetch(quiet=True)]


def anatomies(samples: list[np.ndarray]) -> list[np.ndarray]:
    from ctreduce.sample_data.phantom import make_phantom

    out = []
    for seed in range(60):
        hu, _ = make_phantom(n_slices=40 + seed % 5 * 10, size=64, slice_thickness=(1.0, 2.5, 5.0)[seed % 3],
                             seed=seed)
        out.append(slice_codes(Intensity().to_uint8(hu)))
    return out + [slice_codes(u8) for u8 in samples]


def random_masks(rng: np.random.Generator, bits: np.ndarray) -> np.ndarray:
    """One uint64 per entry of ``bits`` with that many distinct random bits set."""
    rank = np.argsort(rng.random((len(bits), 64)), axis=1).argsort(axis=1)
    return codes_from_bits(np.packbits(rank < np.asarray(bits)[:, None], axis=1))


def ct_like(n: int, bases: list[np.ndarray], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes, volumes, total, v = [], [], 0, 0
    while total < n:
        base = bases[rng.integers(len(bases))]
        volume = base ^ random_masks(rng, [rng.integers(10, 21)])[0] ^ random_masks(rng, rng.integers(0, 3, len(base)))
        copies = [volume]
        if rng.random() < 0.03:
            copies.append(volume ^ random_masks(rng, [rng.integers(0, 4)])[0]
                          ^ random_masks(rng, rng.integers(0, 2, len(base))))
        for c in copies:
            codes.append(c)
            volumes.append(np.full(len(c), v, np.int64))
            v += 1
            total += len(c)
    return np.concatenate(codes)[:n], np.concatenate(volumes)[:n]


def structure(codes: np.ndarray, volumes: np.ndarray, samples: list[np.ndarray]) -> None:
    rng = np.random.default_rng(1)
    pick = rng.choice(len(codes), 1000, replace=False)
    own, other, between = [], [], []
    for k in pick:  # one sampled code against all: memory stays at one row
        d = np.bitwise_count(codes[k] ^ codes)
        same = volumes == volumes[k]
        own.append(int((d[same] <= RADIUS).sum()) - 1)
        other.append(int((d[~same] <= RADIUS).sum()))
        between.append(float(np.median(d[~same])))
    print(f"   structure: per code, {np.mean(own):.1f} codes of its own volume and {np.mean(other):.2f} of other "
          f"volumes within {RADIUS} bits (1,000 sampled); median distance between volumes "
          f"{np.median(between):.0f} bits")
    real = [slice_codes(u8) for u8 in samples]
    between = np.bitwise_count(real[0][:, None] ^ real[1][None, :])
    inside = np.bitwise_count(real[0][:, None] ^ real[0][None, :])
    print(f"   the two real sample CTs: median distance between them {np.median(between):.0f} bits, minimum "
          f"{between.min()}; per lung1 slice, {(inside <= RADIUS).sum(1).mean() - 1:.1f} other lung1 slices "
          f"within {RADIUS} bits")


def join_child(codes_path: str, volumes_path: str) -> None:
    """Runs in a child process: the measured self-join, nothing else."""
    codes, volumes = np.load(codes_path), np.load(volumes_path)
    wall, cpu = time.perf_counter(), time.process_time()
    i, j, d = HammingIndex(codes, RADIUS).pairs(volumes)
    # VmHWM: this process's peak RSS (ru_maxrss would include the parent's from before exec)
    peak_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))
    result = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "pairs": int(len(i)),
              "rss_mib": peak_kib / 1024}
    print(json.dumps(result))


def join_in_child(codes: np.ndarray, volumes: np.ndarray, tmp: Path) -> dict:
    np.save(tmp / "codes.npy", codes)
    np.save(tmp / "volumes.npy", volumes)
    out = subprocess.run([sys.executable, __file__, "--join-child", str(tmp / "codes.npy"), str(tmp / "volumes.npy")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_pairs(a: tuple, b: tuple) -> bool:
    return all(np.array_equal(np.asarray(x, np.int64), np.asarray(y, np.int64)) for x, y in zip(a, b, strict=True))


def faiss_pairs(codes: np.ndarray) -> tuple[float, int]:
    import faiss

    data = np.ascontiguousarray(codes.astype(">u8")).view(np.uint8).reshape(-1, 8)
    start = time.perf_counter()
    index = faiss.IndexBinaryMultiHash(64, 4, 16)
    index.nflip = 1
    index.add(data)
    lims, _, labels = index.range_search(data, RADIUS + 1)  # FAISS: distance < radius
    elapsed = time.perf_counter() - start
    rows = np.repeat(np.arange(len(codes)), np.diff(lims).astype(np.int64))
    return elapsed, int((rows < labels).sum())


def imagededup_pairs(codes: np.ndarray, names: list[str]) -> tuple[float, set[tuple[str, str]]]:
    from imagededup.methods import DHash

    encodings = {name: f"{int(c):016x}" for name, c in zip(names, codes, strict=True)}
    start = time.perf_counter()
    found = DHash(verbose=False).find_duplicates(encoding_map=encodings, max_distance_threshold=RADIUS)
    elapsed = time.perf_counter() - start
    return elapsed, {tuple(sorted((a, b))) for a, dups in found.items() for b in dups}


def ours_pairs(codes: np.ndarray, names: list[str]) -> tuple[float, set[tuple[str, str]]]:
    start = time.perf_counter()
    i, j, _ = HammingIndex(codes, RADIUS).pairs()
    elapsed = time.perf_counter() - start
    return elapsed, {tuple(sorted((names[a], names[b]))) for a, b in zip(i.tolist(), j.tolist(), strict=True)}


def real_png_comparison(samples: list[np.ndarray], tmp: Path) -> None:
    from imagededup.methods import DHash
    from PIL import Image

    slices = np.concatenate([samples[0], samples[1][:60]])  # 108 real slices
    folder = tmp / "png"
    folder.mkdir()
    names = []
    for copy in range(10):
        for k, u8 in enumerate(slices):
            name = f"series{copy}_{k:03d}.png"
            Image.fromarray(u8).save(folder / name, compress_level=1)
            names.append(name)
    codes = np.tile(slice_codes(slices), 10)
    theirs_hashes = DHash(verbose=False).encode_images(image_dir=str(folder), num_enc_workers=0)
    equal = sum(theirs_hashes[name] == f"{int(c):016x}" for name, c in zip(names, codes, strict=True))
    print(f"   imagededup's dHash of the {len(names)} PNGs equals ctreduce's code for {equal} of {len(names)}")
    t_theirs, theirs = imagededup_pairs(codes, names)
    t_ours, ours = ours_pairs(codes, names)
    cross = sum(a.split("_")[0] != b.split("_")[0] for a, b in ours)
    print(f"   1,080 real-CT PNG slices: imagededup {t_theirs:.2f} s, ctreduce {t_ours:.3f} s "
          f"({t_theirs / t_ours:.0f}x); pairs {len(theirs)} vs {len(ours)}, same: {theirs == ours}; "
          f"cross-series pairs {cross}")


def leakage_run(codes: np.ndarray, volumes: np.ndarray, tmp: Path, samples: list[np.ndarray]) -> None:
    import pandas as pd
    from PIL import Image

    from ctreduce.curate.leakage import find_leakage, image_codes
    from ctreduce.store.files import write_json

    rng = np.random.default_rng(5)
    # 25,000 images of 28 x 28 (MedMNIST's size) from the real CT slices, shifted, flipped and noised
    pool = np.concatenate(samples)
    images = np.empty((25_000, 28, 28), np.uint8)
    for k in range(len(images)):
        u8 = pool[rng.integers(len(pool))]
        y, x = rng.integers(0, 64, 2)
        crop = u8[y:y + 448, x:x + 448]
        small = np.asarray(Image.fromarray(crop).resize((28, 28), Image.Resampling.BILINEAR), np.int16)
        images[k] = np.clip(small + rng.integers(-3, 4, small.shape), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 2, (25_000, 1))
    npz = tmp / "task.npz"
    np.savez(npz, train_images=images[:17_500], train_labels=labels[:17_500], val_images=images[17_500:20_000],
             val_labels=labels[17_500:20_000], test_images=images[20_000:], test_labels=labels[20_000:])
    # the pre-training run: 1,000,000 slices, the codes of 100 test images planted among them
    codes = codes.copy()
    planted = rng.choice(len(codes), 100, replace=False)
    codes[planted] = image_codes(images[20_000:20_100])
    run = tmp / "run"
    run.mkdir()
    pd.DataFrame({"volume_id": [f"v{v}" for v in volumes], "source": "", "slice_index": np.zeros(len(codes), np.int32),
                  "kept": True, "dhash": [f"{int(c):016x}" for c in codes]}).to_parquet(run / "manifest.parquet")
    write_json(run / "run.json", {"schema": 2, "settings": {"method": "all"}, "inputs": []})
    start, cpu = time.perf_counter(), time.process_time()
    result = find_leakage(run, npz)
    wall = time.perf_counter() - start
    found = int(result.images["leaked"].to_numpy()[20_000:20_100].sum())
    print(f"   leakage: {wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU for 25,000 images against "
          f"{result.meta['pretrain_slices']:,} slices (target < 30 s); planted test images found: {found} of 100; "
          f"images within {RADIUS} bits per split {result.leaked} (crops of the real CTs that seeded some "
          f"pre-training codes: chance near-matches); test in train {result.meta['test_in_train']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--imagededup-n", type=int, default=100_000)
    parser.add_argument("--join-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.join_child:
        join_child(*args.join_child)
        return
    print(f"machine   {cpu_model()} | {os.cpu_count()} CPUs")
    print(f"versions  {versions(['ctreduce', 'numpy', 'faiss-cpu', 'imagededup', 'pandas'])}")
    print(f"start     {load_line()}")
    samples = sample_u8()
    start = time.perf_counter()
    codes, volumes = ct_like(args.n, anatomies(samples))
    print(f"1. {len(codes):,} CT-like codes in {volumes.max() + 1:,} volumes "
          f"(made in {time.perf_counter() - start:.0f} s)")
    structure(codes, volumes, samples)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(f"   ({load_line()})")
        joined = join_in_child(codes, volumes, tmp)
        print(f"   all cross-volume pairs within {RADIUS} bits: {joined['pairs']:,} in {joined['wall']:.1f} s wall, "
              f"{joined['cpu']:.1f} s CPU, peak RSS {joined['rss_mib']:.0f} MiB (targets < 60 s, < 2048 MiB)")
        print(f"   ({load_line()})")

        subset, subset_volumes = codes[:50_000], volumes[:50_000]
        start = time.perf_counter()
        ours = HammingIndex(subset, RADIUS).pairs()
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        brute = brute_pairs(subset, RADIUS)
        t_brute = time.perf_counter() - start
        other = subset_volumes[brute[0]] != subset_volumes[brute[1]]
        same_cross = same_pairs(HammingIndex(subset, RADIUS).pairs(subset_volumes),
                                tuple(a[other] for a in brute))
        print(f"2. first 50,000 codes: index {t_ours:.2f} s, brute force {t_brute:.1f} s; all {len(ours[0]):,} pairs "
              f"identical: {same_pairs(ours, brute)}; cross-volume pairs identical: {same_cross}")
        t_faiss, n_faiss = faiss_pairs(subset)
        print(f"   FAISS IndexBinaryMultiHash (4 x 16 bits, nflip 1) range search: {t_faiss:.1f} s, {n_faiss:,} pairs "
              f"({t_faiss / t_ours:.0f}x the index's time)")

        print(f"3. imagededup ({load_line()})")
        real_png_comparison(samples, tmp)
        if args.imagededup_n:
            n = args.imagededup_n
            names = [f"s{k}" for k in range(n)]
            t_theirs, theirs = imagededup_pairs(codes[:n], names)
            t_ours, mine = ours_pairs(codes[:n], names)
            print(f"   {n:,} codes: imagededup {t_theirs:.1f} s, ctreduce {t_ours:.2f} s ({t_theirs / t_ours:.0f}x, "
                  f"target >= 20x); pairs {len(theirs):,} vs {len(mine):,}, same: {theirs == mine}")

        print(f"4. leakage ({load_line()})")
        leakage_run(codes, volumes, tmp, samples)
    print(f"end       {load_line()}")


if __name__ == "__main__":
    main()
