"""Shard formats for the npy export, measured side by side on the same slices.

ctreduce's own npy shards (``store.shards``: one (n, S, S) uint8 .npy per volume, a Parquet index) against the
formats users already have, where they are installed: LitData (``optimize`` chunks), WebDataset (tar shards),
Lance, and Parquet through Hugging Face ``datasets``. For each: write throughput, images/s of a PyTorch
DataLoader with 2 workers drawing slices in random order, images/s of 2 DDP ranks (gloo, one loader worker each)
reading together, each its share as the library splits it (a ``DistributedSampler`` for the map-style ones),
size on disk, and whether the format appends new data without rewriting what it holds. A format that is
not installed is reported as skipped.

Then the store itself: a one-pass ``reduce --export npy`` of ``--series`` DICOM series, the run folder's size against
the kept pixels plus the tables, and ``--added`` series more with the same command (earlier shards untouched?).

Usage: python benchmarks/bench_shards.py [--slices 3000] [--size 224] [--reads 3000]
                                          [--series 100] [--added 10] [--method hash]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from machine import cpu_model, load_line, versions
from torch.utils.data import DataLoader, Dataset, IterableDataset

VOLUME = 100  # slices a shard (one volume's kept slices)


def make_slices(n: int, size: int) -> np.ndarray:
    """``n`` CT-like uint8 slices (phantoms, minmax 8-bit, resized): compressible like real CT, unlike noise."""
    from ctreduce.io.intensity import Intensity
    from ctreduce.sample_data.phantom import make_phantom
    from ctreduce.store.export_formats import npy_rows

    out = []
    for seed in range((n + VOLUME - 1) // VOLUME):
        hu, _ = make_phantom(n_slices=VOLUME, size=128, slice_thickness=2.5, seed=seed)
        out.append(npy_rows(Intensity.parse("minmax").to_uint8(hu), size))
    return np.concatenate(out)[:n]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class MapDataset(Dataset):
    def __init__(self, n: int, get: Callable[[int], np.ndarray]) -> None:
        self.n, self.get = n, get

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.get(i)).copy())


def time_loader(dataset: Dataset | IterableDataset, reads: int, shuffle: bool, spawn: bool = False) -> float:
    """Images/s of a DataLoader with 2 workers over ``reads`` items (workers started before the clock)."""
    loader = DataLoader(dataset, batch_size=32, shuffle=shuffle, num_workers=2, persistent_workers=False,
                        multiprocessing_context="spawn" if spawn else None)
    seen = 0
    start = None
    for batch in loader:
        if start is None:
            start = time.perf_counter()  # first batch: workers are up
            continue
        seen += len(batch)
        if seen >= reads:
            break
    return seen / (time.perf_counter() - start)


# --- the candidates --------------------------------------------------------------------------------


def npy_write(slices: np.ndarray, root: Path) -> None:
    from ctreduce.store.shards import write_index, write_shard

    (root / "shards").mkdir(parents=True)
    rows = []
    for first in range(0, len(slices), VOLUME):
        name = write_shard(root, f"v{first:06d}", slices[first: first + VOLUME])
        rows += [{"shard": name, "shard_row": k} for k in range(min(VOLUME, len(slices) - first))]
    write_index(root, 1, pd.DataFrame(rows))


def npy_dataset(root: Path, n: int) -> Dataset:
    from ctreduce.store.shards import ShardRows

    return MapDataset(n, ShardRows(root, pd.read_parquet(root / "versions" / "000001.parquet")).__getitem__)


def lance_write(slices: np.ndarray, root: Path) -> None:
    import lance
    import pyarrow as pa

    for first in range(0, len(slices), VOLUME):  # one append a volume, as the store grows
        table = pa.table({"image": [s.tobytes() for s in slices[first: first + VOLUME]]})
        lance.write_dataset(table, str(root), mode="append" if first else "create")


class LanceGet:
    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size, self.ds = str(root), size, None

    def __call__(self, i: int) -> np.ndarray:
        import lance

        if self.ds is None:
            self.ds = lance.dataset(self.root)
        raw = self.ds.take([i], columns=["image"]).column(0)[0].as_py()
        return np.frombuffer(raw, np.uint8).reshape(self.size, self.size)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "ds": None}


def hf_write(slices: np.ndarray, root: Path) -> None:
    import datasets

    root.mkdir(parents=True)
    for first in range(0, len(slices), 10 * VOLUME):  # appending: another Parquet file
        part = datasets.Dataset.from_dict({"image": [s.tobytes() for s in slices[first: first + 10 * VOLUME]]})
        part.to_parquet(str(root / f"part-{first:06d}.parquet"))


class HfGet:
    def __init__(self, root: Path, size: int) -> None:
        import datasets

        files = sorted(str(p) for p in root.glob("*.parquet"))
        self.ds = datasets.load_dataset("parquet", data_files=files, split="train",
                                        cache_dir=str(root.parent / "hf-cache"))
        self.size = size

    def __call__(self, i: int) -> np.ndarray:
        return np.frombuffer(self.ds[i]["image"], np.uint8).reshape(self.size, self.size)


def litdata_write(slices: np.ndarray, root: Path) -> None:
    from litdata.streaming.writer import BinaryWriter

    writer = BinaryWriter(str(root), chunk_bytes="64MB")
    for k, s in enumerate(slices):
        writer.add_item(k, {"image": s})
    writer.done()
    writer.merge()


def litdata_dataset(root: Path, size: int) -> Dataset:
    from litdata import StreamingDataset

    class Images(StreamingDataset):
        def __getitem__(self, index: Any) -> torch.Tensor:
            return torch.from_numpy(np.asarray(super().__getitem__(index)["image"]).copy())

    return Images(f"local:{root}", shuffle=True)


def wds_write(slices: np.ndarray, root: Path) -> None:
    import webdataset as wds

    root.mkdir(parents=True)
    with wds.ShardWriter(str(root / "shard-%06d.tar"), maxcount=1000, verbose=0) as sink:
        for k, s in enumerate(slices):
            buffer = io.BytesIO()
            np.save(buffer, s)
            sink.write({"__key__": f"{k:08d}", "npy": buffer.getvalue()})


def wds_dataset(root: Path) -> IterableDataset:
    import webdataset as wds

    urls = sorted(str(p) for p in root.glob("*.tar"))
    return (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=None, empty_check=False).shuffle(1000)
            .decode().to_tuple("npy").map(lambda t: torch.from_numpy(t[0])))


def growth(series: int, added: int, method: str, work: Path) -> None:
    """A one-pass ``reduce --export npy`` of ``series`` DICOM series (100 slices of 64 px): the run folder against
    the kept pixels plus the tables; then ``added`` series more and the same command again."""
    import ctreduce
    from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
    from ctreduce.store.export import ExportStore

    def write(seeds: range) -> None:
        for seed in seeds:
            hu, spacing = make_phantom(n_slices=100, size=64, slice_thickness=2.5, seed=seed)
            write_dicom_series(hu, spacing, work / "in" / f"s{seed:05d}", seed=seed)

    def shards(run: Path) -> dict[str, tuple[int, int, int]]:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
                for p in (run / "export" / "shards").glob("*.npy")}

    write(range(series))
    run = work / "run"
    start = time.perf_counter()
    ctreduce.reduce(work / "in", run, method=method, export="npy", export_size=64, workers=2)
    first_s = time.perf_counter() - start
    store = ExportStore.open(run / "export")
    pixels = len(store.index) * 64 * 64
    total = folder_bytes(run)
    arrays = sum(size for _, _, size in shards(run).values())
    tables = total - arrays
    print(f"\none pass ({method}), {series} series x 100 slices of 64 px, 2 workers: {first_s:.1f} s; "
          f"run folder {total / 2**20:.1f} MiB = {arrays / 2**20:.1f} MiB of shards ({len(store.index)} kept slices, "
          f"{pixels / 2**20:.1f} MiB of pixels) + {tables / 2**20:.1f} MiB of tables: "
          f"{total / (pixels + tables):.3f}x the kept pixels plus the tables")
    before = shards(run)
    write(range(series, series + added))
    start = time.perf_counter()
    ctreduce.reduce(work / "in", run, method=method, export="npy", export_size=64, workers=2)
    grow_s = time.perf_counter() - start
    after = shards(run)
    untouched = sum(after.get(name) == stat for name, stat in before.items())
    print(f"{added} series added, same command: {grow_s:.1f} s; {untouched} of {len(before)} earlier shards untouched "
          f"(inode, mtime, size), {len(after) - len(before)} new; version {ExportStore.open(run / 'export').version}")


def make_dataset(module: str, root: Path, n: int, size: int, ranked: bool = False) -> Dataset | IterableDataset:
    """The reading side of each candidate (``ranked``: split over the DDP ranks the way the library does it)."""
    if module == "ctreduce":
        return npy_dataset(root, n)
    if module == "lance":
        return MapDataset(n, LanceGet(root, size))
    if module == "datasets":
        return MapDataset(n, HfGet(root, size))
    if module == "litdata":
        return litdata_dataset(root, size)  # splits its chunks over the ranks of torch.distributed itself
    if ranked:
        import webdataset as wds

        urls = sorted(str(p) for p in root.glob("*.tar"))
        return (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, empty_check=False)
                .shuffle(1000).decode().to_tuple("npy").map(lambda t: torch.from_numpy(t[0])))
    return wds_dataset(root)


def _rank(rank: int, world: int, init: str, module: str, root: Path, n: int, size: int, reads: int,
          out: Any) -> None:
    """One DDP rank (gloo): its share of ``reads`` images, random order, a DataLoader with 1 worker."""
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    dataset = make_dataset(module, root, n, size, ranked=True)
    sampler = DistributedSampler(dataset, shuffle=True) if isinstance(dataset, MapDataset) else None
    loader = DataLoader(dataset, batch_size=32, sampler=sampler, num_workers=1,  # as time_loader's workers
                        multiprocessing_context="spawn" if module == "lance" else "fork")
    batches = iter(loader)
    next(batches)  # the worker is up
    dist.barrier()
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch)
        if seen >= reads // world:
            break
    out.put((rank, seen, time.perf_counter() - start))
    dist.destroy_process_group()


def time_ranks(module: str, root: Path, n: int, size: int, reads: int, world: int = 2) -> float:
    """Images/s of ``world`` DDP ranks (processes, gloo) reading together: all images over the slowest rank's time."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    out = context.Queue()
    init = f"file://{root.parent / 'ddp-init'}"
    procs = [context.Process(target=_rank, args=(r, world, init, module, root, n, size, reads, out))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=300) for _ in procs]
    except Exception:  # a rank that failed leaves the others at the barrier
        for p in procs:
            p.terminate()
        return float("nan")
    for p in procs:
        p.join()
    return sum(seen for _, seen, _ in results) / max(seconds for _, _, seconds in results)


def compare(args: argparse.Namespace, work: Path) -> None:
    """The formats side by side on the same slices."""
    slices = make_slices(args.slices, args.size)
    mb = slices.nbytes / 2**20
    print(f"{len(slices)} slices of {args.size} px uint8 ({mb:.0f} MiB of pixels), {VOLUME} a volume; "
          f"DataLoader: 2 workers, batch 32, {args.reads} images\n")
    candidates: list[tuple[str, str, Callable, str]] = [
        ("ctreduce npy shards", "ctreduce", npy_write,
         "yes: new shard files + a new index version; old files untouched"),
        ("Lance", "lance", lance_write, "yes: write_dataset(mode='append') adds fragments and a manifest version"),
        ("Parquet via HF datasets", "datasets", hf_write,
         "by new Parquet files (load_dataset re-lists them; its Arrow cache is rebuilt)"),
        ("LitData", "litdata", litdata_write, "optimize(mode='append'), not tried here"),
        ("WebDataset", "webdataset", wds_write, "yes: new tar shards (the list of URLs grows)"),
    ]
    print("| format | write (images/s) | write MiB/s | read in random order (images/s) | 2 DDP ranks, 1 worker each "
          "(images/s) | size on disk | appends |")
    print("|---|---|---|---|---|---|---|")
    for label, module, write, appends in candidates:
        try:
            __import__(module)
        except ImportError:
            print(f"| {label} | skipped: not installed | | | | | |")
            continue
        root = work / module / "data"
        root.parent.mkdir(parents=True)
        start = time.perf_counter()
        write(slices, root)
        write_s = time.perf_counter() - start
        iterable = module in ("webdataset",)
        # Lance is not fork-safe (its forked workers hang): spawned workers, as its warning advises.
        rate = time_loader(make_dataset(module, root, len(slices), args.size), args.reads,
                           shuffle=not iterable and module != "litdata", spawn=module == "lance")
        ranks = time_ranks(module, root, len(slices), args.size, args.reads)
        size = folder_bytes(root.parent)  # with what a format keeps beside its files (HF: its Arrow cache)
        order = " (shuffle buffer)" if iterable else (" (shuffled chunks)" if module == "litdata" else "")
        print(f"| {label} | {len(slices) / write_s:,.0f} | {mb / write_s:,.0f} | {rate:,.0f}{order} | {ranks:,.0f} | "
              f"{size / 2**20:.0f} MiB ({size / slices.nbytes:.2f}x) | {appends} |", flush=True)
        shutil.rmtree(work / module, ignore_errors=True)


def main() -> None:
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=3000, help="format comparison: slices (0: skip)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--series", type=int, default=100, help="growth part: series in the archive (0: skip)")
    parser.add_argument("--added", type=int, default=10, help="growth part: series added before the rerun")
    parser.add_argument("--method", default="hash", help="growth part: the reduction (all: every slice kept)")
    args = parser.parse_args()
    print(f"{cpu_model()}; {load_line()}")
    print("versions:", versions(["ctreduce", "numpy", "pyarrow", "torch", "pylance", "datasets", "litdata",
                                 "webdataset"]))
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        if args.slices:
            compare(args, work)
        if args.series:
            growth(args.series, args.added, args.method, work / "growth")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average now: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
