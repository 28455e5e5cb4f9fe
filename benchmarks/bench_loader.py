"""Images/s per core of each method's ``paper`` views from a 512 px export, beside the paper's own pipelines.

One process, one thread (``torch.set_num_threads(1)``): what one data-loader worker delivers. For each method:

- ctreduce: the method's views (``method_class(m).views`` of the ``paper`` preset) on the slices of a 512 px npy
  export, as ``ctreduce pretrain`` reads them (uint8 slice from a memory-mapped shard, then the views);
- paper: its scripts' pipelines on the same slices as PIL images (decoded once; and again with each 512 px
  PNG decoded per image, as its ImageFolder loader does): MoCo v2 as
  ``moco_data_module.py`` (Grayscale(3), RandomApply(RandomRotation(180), 0.5), RandomResizedCrop(224, (0.2, 1)),
  ColorJitter(0.4, 0.4, 0.4, 0.1), RandomApply(PIL GaussianBlur(0.1-2), 0.5), h+v flips, ToTensor,
  GaussNoise(p=0.5), Normalize); SwAV's multi-crop as ``bench_pretrain.PaperMultiCrop`` (2 x 224 + 6 x 96);
- lightly: ``MoCoV2Transform`` and ``SwaVTransform`` at their defaults on the same PIL images.

Then how many such cores feed a GPU that trains at ``--gpu-rate`` images/s (NVIDIA's published ResNet-50 figure
for an A100 in mixed precision, 2,470 images/s, by default; MoCo v2 costs about 4/3 of a supervised step).

A second table times ``views_on: device`` on this CPU: what its loader worker still does (read a slice, stack a
batch of ``--batch``), and the batch views (``ctreduce.ssl.batch_views``) run here on one thread, beside kornia's
per-sample batch augmentations of the MoCo view (when kornia is installed). The device's own figures come from
``benchmarks/gpu_check.py`` on a GPU.

    python benchmarks/bench_loader.py [--slices 64] [--items 120] [--batch 32] [--gpu-rate 2470]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))

from machine import cpu_model, load_line, versions  # noqa: E402

from ctreduce.store.shards import ShardRows, write_shard  # noqa: E402

SIZE = 512


def write_slices(root: Path, n: int) -> tuple[ShardRows, list[Path]]:
    """``n`` phantom CT slices of 512 px as npy shard rows (what an npy export's reader gives) and as PNGs."""
    from ctreduce.io.intensity import Intensity
    from ctreduce.sample_data.phantom import make_phantom

    hu, _ = make_phantom(n_slices=n, size=SIZE, slice_thickness=2.5, seed=0)
    u8 = Intensity.parse("minmax").to_uint8(hu)
    export = root / "npy512"
    (export / "shards").mkdir(parents=True)
    name = write_shard(export, "v0", u8)
    rows = ShardRows(export, pd.DataFrame({"shard": [name] * n, "shard_row": range(n)}))
    pngs = []
    for k, image in enumerate(u8):
        pngs.append(root / f"{k:04d}.png")
        Image.fromarray(image).save(pngs[-1], compress_level=1)
    return rows, pngs


def rate(get: Callable[[int], object], n: int, items: int) -> float:
    """Items/s of ``get`` over ``items`` calls (slices in turn), after one warm-up call."""
    get(0)
    start = time.perf_counter()
    for k in range(items):
        get(k % n)
    return items / (time.perf_counter() - start)


class PaperBlur:
    """The paper's MoCo blur: ``PIL.ImageFilter.GaussianBlur`` with a radius uniform in [0.1, 2]."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class PaperNoise:
    """The paper's ``GaussNoise(p=0.5)``: variance log-uniform in [1e-5, 1e-4] (``exp(U(log 1e-5, log 1e-4))``),
    noise added, clamped to [0, 1]."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if random.random() >= 0.5:
            return x
        sigma = math.exp(random.uniform(math.log(1e-5), math.log(1e-4))) ** 0.5
        return (x + torch.randn_like(x) * sigma).clamp(0, 1)


def paper_moco(mean: float, std: float):
    import torchvision.transforms as T

    view = T.Compose([T.Grayscale(3), T.RandomApply([T.RandomRotation(180)], p=0.5),
                      T.RandomResizedCrop(224, scale=(0.2, 1.0)), T.ColorJitter(0.4, 0.4, 0.4, 0.1),
                      T.RandomApply([PaperBlur()], p=0.5), T.RandomHorizontalFlip(), T.RandomVerticalFlip(),
                      T.ToTensor(), PaperNoise(), T.Normalize([mean] * 3, [std] * 3)])
    return lambda image: [view(image), view(image)]


def kornia_moco(size: int, mean: float, std: float) -> Callable[[torch.Tensor], list[torch.Tensor]] | None:
    """The paper's MoCo view with kornia's batch augmentations (each slice its own draws), as near as kornia's
    transforms come: rotation p 0.5 (nearest), crop 0.2-1, brightness/contrast 0.4, blur p 0.5, flips, noise."""
    try:
        import kornia.augmentation as K
    except ModuleNotFoundError:
        return None
    from ctreduce.ssl.augment import blur_kernel

    kernel = blur_kernel(size, 2.0)
    view = K.AugmentationSequential(
        K.RandomRotation(180.0, p=0.5, resample="nearest"), K.RandomResizedCrop((size, size), scale=(0.2, 1.0)),
        K.ColorJitter(brightness=0.4, contrast=0.4, p=1.0), K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=0.5),
        K.RandomHorizontalFlip(), K.RandomVerticalFlip(), K.RandomGaussianNoise(std=0.005, p=0.5))

    def views(x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for _ in range(2):
            y = view(x.float() / 255).expand(-1, 3, -1, -1)
            out.append((y - mean) / std)
        return out

    return views


def batch_rate(make: Callable[[torch.Tensor], object], batches: list[torch.Tensor]) -> float:
    """Images/s of ``make`` over the batches, after one warm-up batch."""
    make(batches[0])
    start = time.perf_counter()
    for batch in batches:
        make(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def device_path(slices: ShardRows, batch: int, items: int) -> list[tuple[str, float, float, float]]:
    """Per method: the loader's images/s reading and stacking uint8 slices, the batch views' images/s on this
    CPU, and kornia's (MoCo)."""
    from ctreduce.config import make_pretrain_config
    from ctreduce.ssl.batch_views import BatchViews
    from ctreduce.ssl.data import SliceDataset
    from ctreduce.ssl.pretrain import method_class

    dataset = SliceDataset(slices)
    n = len(dataset)
    start = time.perf_counter()
    count = 0
    while count < items:
        torch.stack([dataset[(count + k) % n] for k in range(batch)])
        count += batch
    read = count / (time.perf_counter() - start)
    stacked = [torch.stack([dataset[(b * batch + k) % n] for k in range(batch)])
               for b in range(max(2, math.ceil(items / batch)))]
    rows = []
    for method in ("moco", "swav", "spark"):
        config = make_pretrain_config({"method": method, "preset": "paper", "data": "-", "out": "-"})
        views = BatchViews(method_class(method).batch_views(config, config.mean, config.std))
        kornia = kornia_moco(config.input_size, config.mean, config.std) if method == "moco" else None
        rows.append((method, read, batch_rate(views, stacked),
                     batch_rate(kornia, stacked) if kornia is not None else math.nan))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--items", type=int, default=120, help="images timed per pipeline")
    parser.add_argument("--gpu-rate", type=float, default=2470.0, help="images/s the GPU trains at")
    parser.add_argument("--batch", type=int, default=32, help="slices a batch, views_on: device")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from bench_pretrain import PaperMultiCrop
    from lightly.transforms import MoCoV2Transform, SwaVTransform

    from ctreduce.config import PAPER_GREY_MEAN, PAPER_GREY_STD, make_pretrain_config
    from ctreduce.ssl.data import SliceDataset
    from ctreduce.ssl.pretrain import method_class

    print(f"ctreduce loader benchmark: one thread; {cpu_model()}; {load_line()}")
    print("versions:", versions(["ctreduce", "torch", "torchvision", "Pillow", "lightly", "numpy"]))
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        slices, pngs = write_slices(Path(tmp), args.slices)
        pil = [Image.open(p).convert("RGB") for p in pngs]  # decoded once: the views are what is timed
        for image in pil:
            image.load()
        rows = []
        for method in ("moco", "swav", "spark"):
            config = make_pretrain_config({"method": method, "preset": "paper", "data": tmp, "out": "-"})
            dataset = SliceDataset(slices, method_class(method).views(config, config.mean, config.std))
            ours = rate(dataset.__getitem__, len(dataset), args.items)
            paper = decoded = lightly = math.nan
            references = {"moco": (paper_moco(PAPER_GREY_MEAN, PAPER_GREY_STD), MoCoV2Transform(input_size=224)),
                          "swav": (PaperMultiCrop(), SwaVTransform())}.get(method)
            if references is not None:
                paper = rate(lambda k, view=references[0]: view(pil[k]), len(pil), args.items)
                decoded = rate(lambda k, view=references[0]: view(Image.open(pngs[k]).convert("RGB")), len(pngs),
                               args.items)
                lightly = rate(lambda k, view=references[1]: view(pil[k]), len(pil), args.items)
            rows.append((method, ours, paper, decoded, lightly))
        device_rows = device_path(slices, args.batch, args.items)
    print(f"\n{args.slices} slices of {SIZE} px, {args.items} images a pipeline\n")
    print("| method | ctreduce (images/s per core) | paper's views | ratio | paper's views + its PNG decode | ratio "
          f"| lightly's transform | cores to feed {args.gpu_rate:,.0f} images/s |")
    print("|---|---|---|---|---|---|---|---|")
    for method, ours, paper, decoded, lightly in rows:
        ratios = [f"{ours / other:.2f}x" if other == other else "-" for other in (paper, decoded)]
        print(f"| {method} | {ours:,.1f} | {paper:,.1f} | {ratios[0]} | {decoded:,.1f} | {ratios[1]} | "
              f"{lightly:,.1f} | {math.ceil(args.gpu_rate / ours)} |".replace("nan", "-"))
    print(f"\nviews_on: device, on this CPU (one thread, batches of {args.batch})\n")
    print("| method | loader: read + stack (images/s per core) | batch views here (images/s) | kornia, MoCo view |")
    print("|---|---|---|---|")
    for method, read, batched, kornia in device_rows:
        print(f"| {method} | {read:,.0f} | {batched:,.1f} | {kornia:,.1f} |".replace("nan", "-"))
    print(f"\nafter: {load_line()}")


if __name__ == "__main__":
    main()
