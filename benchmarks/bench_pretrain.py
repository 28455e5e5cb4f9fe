"""Pre-training speed: the data pipeline against the paper's, and the cost of the Lightning wrapper.

What is measured (wall time with ``time.perf_counter``):

  1. Data-loader throughput alone (no model): images/s of a ``torch.utils.data.DataLoader``
     (batch 32, ``--workers`` worker processes) producing SwAV multi-crop views at the
     paper's settings (2 global crops of 224 px, scale (0.9, 1); 6 local crops of 96 px,
     scale (0.10, 0.33)), timed over ``--batches`` batches after 2 warm-up batches (worker
     start-up excluded). Data: every slice of the two real sample chest CTs
     (``ctreduce.sample_data.real_ct.fetch()``, 48 + 61 slices of 512x512 NRRD) reduced with method
     ``all`` (109 slices), drawn with replacement (same seed for both) so that any number
     of batches exists.
       (a) ctreduce  ``ctreduce export --format npy --size 224``, read through
                     ``open_export(store, SwAV.views(paper config, mean, std))``: uint8
                     (1, 224, 224) tensors from a memory map, torchvision v2 transforms.
       (b) paper     ``ctreduce export --format png`` (native 512x512 PNGs), each file opened
                     with PIL and converted to RGB, then torchvision PIL transforms per crop:
                     RandomResizedCrop, ColorJitter(0.4, 0.4, 0.2, 0.2) p=0.8,
                     RandomGrayscale p=0.2, GaussianBlur (kernel ~0.1 x size, sigma 0.1-2)
                     p=0.5, ToTensor, Normalize(mean 0.1806, std 0.1907 on 3 channels).
       (c) info      (b) with ``PIL.ImageFilter.GaussianBlur`` (radius U(0.1, 2)), the blur of
                     the official SwAV code, in place of ``T.GaussianBlur``; not a target
                     (``--no-pil-blur`` skips it).
     All normalise with the paper's mean 0.1806 and std 0.1907. Target: (a) >= 3x (b).
  2. Framework overhead: seconds per optimiser step of each method (swav, moco, spark) run by
     a Lightning ``Trainer.fit`` (max_steps, no logger, no checkpointing, no progress bar, no
     model summary) against a plain PyTorch loop on an identical module (same seed):
     ``training_loss(batch)``, ``zero_grad``, ``backward``, the module's own
     ``on_after_backward`` (SwAV) / weight-decay schedule (SparK), ``optimizer.step()`` and
     ``scheduler.step()`` from ``configure_optimizers()``. Both get the same batch (16 slices
     of the npy store through the method's views, served by a DataLoader with
     ``batch_size=None``) and torch RNG streams seeded alike, so their losses should agree
     step by step. Setting: the ``cpu`` preset, resnet18, input 64, batch 16, SwAV prototypes
     never frozen (``freeze_prototypes_steps=0``, since without a Trainer ``global_step``
     stays 0), ``torch.set_num_threads(1)``.
     The two loops are interleaved step by step so that the load of other jobs on a shared
     machine hits both alike: a callback's ``on_train_batch_start`` (entered after Lightning
     has fetched batch i) runs plain step i between two timestamps; Lightning's step i is the
     time from the end of plain step i to the start of the next hook (its training step,
     backward, optimiser step, every hook and the next fetch). ``--warmup-steps`` untimed
     steps, then ``--steps`` timed steps of each. Overhead = mean Lightning s/step / mean
     plain s/step - 1; the median over steps of the ratio of neighbouring steps is printed
     too. Target: overhead <= 10% per method.
  3. ``--gpu`` (only with a CUDA device): SwAV, ResNet-50, paper preset (2x224 + 6x96 crops,
     ``--gpu-batch`` images), mixed precision (fp16 autocast + GradScaler), images/s of the
     training step alone on synthetic crops already on the GPU, ``--gpu-steps`` steps after 3
     warm-up steps.

Run:  .venv/bin/python benchmarks/bench_pretrain.py [--quick] [--workers 2] [--batches 10]
      [--steps 20] [--warmup-steps 3] [--no-pil-blur] [--gpu] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from machine import cpu_model, load_line
from machine import versions as machine_versions
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate
from torchvision import transforms as T

import ctreduce
from ctreduce.config import PretrainConfig, make_pretrain_config
from ctreduce.ssl.data import open_export
from ctreduce.ssl.pretrain import method_class
from ctreduce.ssl.swav import SwAV
from ctreduce.store.export import ExportStore

PAPER_MEAN = 0.1806
PAPER_STD = 0.1907
LOADER_BATCH = 32
LOADER_WARMUP = 2
STORE_SIZE = 224
OVERHEAD_BATCH = 16
OVERHEAD_INPUT = 64
OVERHEAD_BACKBONE = "resnet18"
METHODS = ("swav", "moco", "spark")
RATIO_TARGET = 3.0
OVERHEAD_TARGET = 10.0  # percent


# --- machine -------------------------------------------------------------------------------------






def versions() -> dict[str, str]:
    out = machine_versions(["ctreduce", "torch", "torchvision", "pytorch-lightning", "lightly", "numpy", "Pillow"])
    out["cuda"] = torch.version.cuda or "none"
    return out


def print_header() -> None:
    print("ctreduce pre-training benchmark (data pipeline vs the paper's, Lightning overhead, GPU throughput)")
    print(f"machine   {cpu_model()} | platform.processor()={platform.processor() or '-'} | "
          f"os.cpu_count()={os.cpu_count()} | {platform.system()} {platform.release()} | "
          f"torch threads {torch.get_num_threads()} | CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    print("versions  " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"start     {load_line()}")
    print()


def quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", message=".*LightningModule.*logger.*")
    warnings.filterwarnings("ignore", message=".*`self.log`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # a deprecation inside Lightning's _pytree


# --- data ----------------------------------------------------------------------------------------


@dataclass
class Exports:
    npy: Path
    png: Path
    slices: int
    volumes: int
    seconds: float


def prepare_exports(workdir: Path) -> Exports:
    """Reduce the sample CTs with method ``all`` and export the kept slices as npy (224) and PNG."""
    from ctreduce.sample_data.real_ct import fetch

    start = time.perf_counter()
    run, npy, png = workdir / "run-all", workdir / "npy224", workdir / "png"
    for path in (run, npy, png):
        shutil.rmtree(path, ignore_errors=True)
    result = ctreduce.reduce(fetch(quiet=True), out=run, method="all")
    manifest, summary = result.manifest, result.summary
    if summary["errors"]:
        raise RuntimeError(f"ctreduce.reduce reported errors: {summary['errors']}")
    npy_summary = ctreduce.export(run, npy, format="npy", size=STORE_SIZE)
    png_summary = ctreduce.export(run, png, format="png")
    if npy_summary["slices"] != png_summary["slices"] or npy_summary["errors"] or png_summary["errors"]:
        raise RuntimeError(f"exports disagree or failed: npy {npy_summary}, png {png_summary}")
    return Exports(npy, png, int(npy_summary["slices"]), int(manifest["volume_id"].nunique()),
                   time.perf_counter() - start)


def blur_kernel(size: int) -> int:
    """Odd kernel of about 10% of the crop (as ``ctreduce.ssl.augment.ct_view`` and SimCLR/SwAV)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


class PILGaussianBlur:
    """``PIL.ImageFilter.GaussianBlur`` with a radius drawn from U(0.1, 2.0), as the official SwAV
    code's ``PILRandomGaussianBlur`` (used in row (c) only)."""

    def __init__(self, radius: tuple[float, float] = (0.1, 2.0)) -> None:
        self.radius = radius

    def __call__(self, image: Image.Image) -> Image.Image:
        lo, hi = self.radius
        return image.filter(ImageFilter.GaussianBlur(radius=lo + (hi - lo) * float(torch.rand(()))))


class PaperMultiCrop:
    """The paper's SwAV multi-crop on PIL RGB images, with torchvision (v1) PIL transforms.

    ``blur="torchvision"``: ``T.GaussianBlur`` (kernel ~10% of the crop, sigma 0.1-2); ``"pil"``:
    :class:`PILGaussianBlur` instead.
    """

    def __init__(self, mean: float = PAPER_MEAN, std: float = PAPER_STD, global_crops: int = 2,
                 global_size: int = 224, global_scale: tuple[float, float] = (0.9, 1.0), local_crops: int = 6,
                 local_size: int = 96, local_scale: tuple[float, float] = (0.10, 0.33),
                 blur: str = "torchvision") -> None:
        if blur not in ("torchvision", "pil"):
            raise ValueError(f"blur must be 'torchvision' or 'pil', got {blur!r}")
        self.blur = blur
        self.views = ([self.view(global_size, global_scale, mean, std) for _ in range(global_crops)]
                      + [self.view(local_size, local_scale, mean, std) for _ in range(local_crops)])

    def view(self, size: int, scale: tuple[float, float], mean: float, std: float) -> T.Compose:
        blur = T.GaussianBlur(blur_kernel(size), sigma=(0.1, 2.0)) if self.blur == "torchvision" else PILGaussianBlur()
        return T.Compose([
            T.RandomResizedCrop(size, scale=scale),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([blur], p=0.5),
            T.ToTensor(),
            T.Normalize([mean] * 3, [std] * 3),
        ])

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [view(image) for view in self.views]


class PaperPngDataset(Dataset):
    """The paper's loading: every PNG opened with PIL and converted to RGB, then the transform."""

    def __init__(self, root: Path, transform: PaperMultiCrop) -> None:
        self.files = ExportStore.open(root).image_paths()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        with Image.open(self.files[index]) as image:
            rgb = image.convert("RGB")
        return self.transform(rgb)


@dataclass
class LoaderTiming:
    label: str
    images: int
    seconds: float
    shapes: str

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def describe(batch: Sequence[torch.Tensor]) -> str:
    counts: dict[tuple[int, ...], int] = {}
    for view in batch:
        counts[tuple(view.shape)] = counts.get(tuple(view.shape), 0) + 1
    return " + ".join(f"{n}x{tuple(shape)}" for shape, n in counts.items())


def loader_throughput(label: str, dataset: Dataset, workers: int, batches: int, seed: int = 0) -> LoaderTiming:
    """Images/s of the loader over ``batches`` batches after ``LOADER_WARMUP`` warm-up batches."""
    total = (batches + LOADER_WARMUP) * LOADER_BATCH
    sampler = RandomSampler(dataset, replacement=True, num_samples=total,
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=LOADER_BATCH, sampler=sampler, num_workers=workers, drop_last=True)
    iterator = iter(loader)
    shapes = ""
    for _ in range(LOADER_WARMUP):
        shapes = describe(next(iterator))
    start = time.perf_counter()
    images = 0
    for batch in iterator:
        images += batch[0].shape[0]
    seconds = time.perf_counter() - start
    del iterator
    return LoaderTiming(label, images, seconds, shapes)


def bench_loaders(exports: Exports, workers: int, batches: int, pil_blur: bool) -> dict[str, LoaderTiming]:
    config = make_pretrain_config({"method": "swav", "preset": "paper"})
    ours = open_export(exports.npy, SwAV.views(config, PAPER_MEAN, PAPER_STD))
    paper = PaperPngDataset(exports.png, PaperMultiCrop())
    timings = {
        "a": loader_throughput("ctreduce: npy 224 + SwAV.views", ours, workers, batches),
        "b": loader_throughput("paper: PNG 512 + PIL RGB + T", paper, workers, batches),
    }
    if pil_blur:
        paper_pil = PaperPngDataset(exports.png, PaperMultiCrop(blur="pil"))
        timings["c"] = loader_throughput("(b) with PIL ImageFilter blur", paper_pil, workers, batches)
    return timings


def print_loaders(timings: dict[str, LoaderTiming], exports: Exports, workers: int, batches: int) -> None:
    print(f"== 1. data loader alone: SwAV multi-crop 2x224 (scale 0.9-1) + 6x96 (scale 0.10-0.33), batch "
          f"{LOADER_BATCH}, {workers} workers, {batches} batches after {LOADER_WARMUP} warm-up batches")
    print(f"   data: {exports.slices} slices (method all, {exports.volumes} sample CTs), drawn with replacement; "
          f"reduce + both exports took {exports.seconds:.1f} s")
    print(f"   {'pipeline':<36} {'images':>6} {'seconds':>8} {'images/s':>9} {'vs (b)':>7}")
    paper = timings["b"].rate
    for key, t in timings.items():
        tag = f"({key})"
        print(f"   {tag:<4} {t.label:<31} {t.images:6d} {t.seconds:8.2f} {t.rate:9.1f} {t.rate / paper:6.2f}x")
    for key, t in timings.items():
        print(f"   ({key}) batch: {t.shapes}")
    print(f"   ratio (a)/(b) = {timings['a'].rate / paper:.2f}")
    if "c" in timings:
        print(f"   (c) is informational (not a target): (b) with the official SwAV code's PIL ImageFilter blur in "
              f"place of T.GaussianBlur; (a)/(c) = {timings['a'].rate / timings['c'].rate:.2f}")
    print()


# --- framework overhead --------------------------------------------------------------------------


def overhead_config(method: str) -> PretrainConfig:
    return make_pretrain_config({
        "method": method, "preset": "cpu", "backbone": OVERHEAD_BACKBONE, "input_size": OVERHEAD_INPUT,
        "batch_size": OVERHEAD_BATCH, "mean": PAPER_MEAN, "std": PAPER_STD,
        "swav": {"freeze_prototypes_steps": 0},
    })


def method_batch(config: PretrainConfig, store: Path, seed: int = 0) -> list[torch.Tensor]:
    """One collated batch: the first ``batch_size`` slices of the store through the method's views."""
    dataset = open_export(store, method_class(config.method).views(config, config.mean, config.std))
    torch.manual_seed(seed)
    return default_collate([dataset[i % len(dataset)] for i in range(config.batch_size)])


class FixedBatches(Dataset):
    """The same (already collated) batch ``n`` times; load it with ``batch_size=None``."""

    def __init__(self, batch: list[torch.Tensor], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return self.batch


def build_module(config: PretrainConfig, steps_per_epoch: int, seed: int = 0) -> pl.LightningModule:
    torch.manual_seed(seed)
    return method_class(config.method)(config, steps_per_epoch)


class PlainLoop:
    """The plain PyTorch loop, one step per call: fetch, ``training_loss``, zero_grad, backward,
    the module's own ``on_after_backward`` (SwAV) and weight-decay schedule (SparK), optimiser
    and scheduler steps from ``configure_optimizers()``. Keeps its own torch RNG state."""

    def __init__(self, config: PretrainConfig, batch: list[torch.Tensor], n: int, rng_seed: int) -> None:
        self.module = build_module(config, steps_per_epoch=n)
        self.module.train()
        optimisation = self.module.configure_optimizers()
        self.optimiser = optimisation["optimizer"]
        self.scheduler = optimisation["lr_scheduler"]["scheduler"]
        self.schedule_wd = getattr(self.module, "apply_weight_decay", None)  # SparK's cosine weight decay
        self.loader = DataLoader(FixedBatches(batch, n), batch_size=None, num_workers=0)
        self.batches: Any = None  # the iterator is made in the first step, in this loop's RNG stream (it draws a seed)
        self.rng = torch.Generator().manual_seed(rng_seed).get_state()
        self.step = 0

    def __call__(self) -> float:
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        try:
            if self.batches is None:
                self.batches = iter(self.loader)
            views = next(self.batches)
            if self.schedule_wd is not None:
                self.schedule_wd(self.optimiser, self.step)
            loss = self.module.training_loss(views)
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.module.on_after_backward()
            self.optimiser.step()
            self.scheduler.step()
            self.step += 1
            return float(loss.detach())
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)


class Interleave(pl.Callback):
    """Runs one plain-loop step at the start of every Lightning training batch and timestamps it.

    Step i of the plain loop is [enter_i, leave_i]; step i of Lightning is [leave_i, enter_i+1]
    (its training step, backward, optimiser step, hooks and the fetch of batch i+1).
    """

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.marks: list[tuple[float, float]] = []
        self.plain_losses: list[float] = []
        self.lightning_losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        enter = time.perf_counter()
        self.plain_losses.append(self.plain())
        self.marks.append((enter, time.perf_counter()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.lightning_losses.append(float(loss.detach()))


@dataclass
class Overhead:
    method: str
    lightning: list[float]  # seconds of each timed step
    plain: list[float]
    setup: float  # Trainer.fit() call to the start of step 0
    loss_gap: float  # largest |loss(Lightning) - loss(plain)| over all steps

    @property
    def lightning_s(self) -> float:
        return statistics.mean(self.lightning)

    @property
    def plain_s(self) -> float:
        return statistics.mean(self.plain)

    @property
    def percent(self) -> float:
        return 100.0 * (self.lightning_s / self.plain_s - 1.0)

    @property
    def median_pair_percent(self) -> float:
        """Median over steps of Lightning step i / plain step i (neighbours in time), minus 1."""
        return 100.0 * (statistics.median(a / b for a, b in zip(self.lightning, self.plain, strict=True)) - 1.0)


def measure_overhead(method: str, store: Path, warmup: int, steps: int) -> Overhead:
    config = overhead_config(method)
    batch = method_batch(config, store)
    n = warmup + steps + 1
    plain = PlainLoop(config, batch, n, rng_seed=1)
    module = build_module(config, steps_per_epoch=n)
    clock = Interleave(plain)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, max_steps=n, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[clock])
    loader = DataLoader(FixedBatches(batch, n), batch_size=None, num_workers=0)
    torch.manual_seed(1)  # Lightning's RNG stream; the plain loop swaps in its own, seeded alike
    start = time.perf_counter()
    trainer.fit(module, loader)
    marks = clock.marks
    if len(marks) != n:
        raise RuntimeError(f"{method}: Lightning ran {len(marks)} steps, expected {n}")
    timed = range(warmup, warmup + steps)
    return Overhead(
        method,
        lightning=[marks[i + 1][0] - marks[i][1] for i in timed],
        plain=[marks[i][1] - marks[i][0] for i in timed],
        setup=marks[0][0] - start,
        loss_gap=max(abs(a - b) for a, b in zip(clock.lightning_losses, clock.plain_losses, strict=True)),
    )


def bench_overhead(store: Path, warmup: int, steps: int) -> list[Overhead]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [measure_overhead(method, store, warmup, steps) for method in METHODS]
    finally:
        torch.set_num_threads(threads)


def print_overhead(results: list[Overhead], warmup: int, steps: int) -> None:
    print(f"== 2. framework overhead: Lightning Trainer.fit vs plain PyTorch loop, same module and batch "
          f"(cpu preset, {OVERHEAD_BACKBONE}, input {OVERHEAD_INPUT}, batch {OVERHEAD_BATCH}, 1 torch thread)")
    print(f"   {steps} timed steps of each after {warmup} warm-up step(s), interleaved step by step (one plain step "
          "in each Lightning on_train_batch_start)")
    print(f"   {'method':<7} {'lightning s/step':>16} {'plain s/step':>12} {'overhead':>9} {'median pair':>12} "
          f"{'fit set-up s':>12} {'max |loss L-P|':>15}")
    for r in results:
        print(f"   {r.method:<7} {r.lightning_s:16.4f} {r.plain_s:12.4f} {r.percent:+8.1f}% "
              f"{r.median_pair_percent:+11.1f}% {r.setup:12.2f} {r.loss_gap:15.1e}")
    print("   overhead = mean Lightning s/step / mean plain s/step - 1; median pair = median over steps of the ratio "
          "of neighbouring steps")
    print("   fit set-up: from Trainer.fit() to the start of step 0 (one-off, outside the per-step figures)")
    print()


# --- GPU -----------------------------------------------------------------------------------------


def gpu_throughput(batch: int, steps: int, warmup: int = 3, device: str = "cuda", amp: bool = True,
                   overrides: dict[str, Any] | None = None) -> tuple[float, float]:
    """Images/s and peak memory (GiB) of SwAV training steps on synthetic multi-crop batches."""
    config = make_pretrain_config({"method": "swav", "preset": "paper", "batch_size": batch, "mean": PAPER_MEAN,
                                   "std": PAPER_STD, **(overrides or {})})
    torch.manual_seed(0)
    module = SwAV(config, steps_per_epoch=1000).to(device)
    module.train()
    optimisation = module.configure_optimizers()
    optimiser, scheduler = optimisation["optimizer"], optimisation["lr_scheduler"]["scheduler"]
    scaler = torch.amp.GradScaler(device, enabled=amp)
    s = config.swav
    crops = ([torch.randn(batch, 3, config.input_size, config.input_size, device=device)
              for _ in range(s.global_crops)]
             + [torch.randn(batch, 3, s.local_crop_size, s.local_crop_size, device=device)
                for _ in range(s.local_crops)])
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.float16, enabled=amp):
            loss = module.training_loss(crops)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        module.on_after_backward()
        scaler.step(optimiser)
        scaler.update()
        scheduler.step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    if not torch.isfinite(loss.detach()):
        raise RuntimeError(f"GPU run: non-finite loss {float(loss)}")
    return steps * batch / seconds, peak


def print_gpu(requested: bool, batch: int, steps: int) -> float | None:
    print("== 3. GPU: SwAV ResNet-50, paper preset (2x224 + 6x96 crops), mixed precision, synthetic crops on the GPU")
    if not requested:
        print("   skipped: not requested (pass --gpu)")
        print()
        return None
    if not torch.cuda.is_available():
        print("   skipped: no CUDA device")
        print()
        return None
    rate, peak = gpu_throughput(batch, steps)
    print(f"   device {torch.cuda.get_device_name(0)}; batch {batch}, {steps} steps after 3 warm-up steps")
    print(f"   {rate:.1f} images/s (training step only, loader excluded), peak memory {peak:.1f} GiB")
    print()
    return rate


# --- targets and main ----------------------------------------------------------------------------


def target_lines(loaders: dict[str, LoaderTiming], overheads: list[Overhead]) -> list[str]:
    lines = []
    value = loaders["a"].rate / loaders["b"].rate
    verdict = "PASS" if value >= RATIO_TARGET else "MISS"
    lines.append(f"{verdict}  (a)/(b) >= {RATIO_TARGET:<4} {value:6.2f}   loader images/s, npy 224 + SwAV.views vs "
                 "paper PNG + PIL transforms")
    for r in overheads:
        verdict = "PASS" if r.percent <= OVERHEAD_TARGET else "MISS"
        lines.append(f"{verdict}  overhead <= {OVERHEAD_TARGET:.0f}% {r.percent:+6.1f}%  Lightning vs plain loop, "
                     f"s/step [{r.method}]")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 loader batches, 4 steps after 1 warm-up step, 1 round")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of section 1")
    parser.add_argument("--batches", type=int, default=None, help="timed loader batches (default 10, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 20, quick 4)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default 3, quick 1)")
    parser.add_argument("--no-pil-blur", action="store_true",
                        help="skip the informational row (c): the paper pipeline with PIL's blur")
    parser.add_argument("--gpu", action="store_true", help="also run section 3 when a CUDA device is present")
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument("--gpu-steps", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None, help="where the run and exports go (default: temp)")
    args = parser.parse_args(argv)
    defaults = {"batches": (10, 2), "steps": (20, 4), "warmup_steps": (3, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.workers < 0 or args.batches < 1 or args.steps < 1 or args.warmup_steps < 1:
        parser.error("need --workers >= 0 and --batches, --steps, --warmup-steps >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    quiet_lightning()
    print_header()
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ctreduce-bench-pretrain-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        exports = prepare_exports(workdir)
        loaders = bench_loaders(exports, args.workers, args.batches, not args.no_pil_blur)
        print_loaders(loaders, exports, args.workers, args.batches)
        overheads = bench_overhead(exports.npy, args.warmup_steps, args.steps)
        print_overhead(overheads, args.warmup_steps, args.steps)
        print_gpu(args.gpu, args.gpu_batch, args.gpu_steps)
        print("targets")
        for line in target_lines(loaders, overheads):
            print("  " + line)
        print()
        print(f"end       {load_line()}; total {time.perf_counter() - started:.0f} s")
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
