"""A synthetic labelled CT task: lung nodule present or not on a single phantom slice.

The slices come from phantom volumes (:func:`ctreduce.sample_data.phantom.make_phantom`) whose seeds are
held out from anything ``make_archive`` or the tests pre-train on (they start at
``HELD_OUT_SEED`` = 1,000,000). For every sample the same seed is rendered with and without
``lesion``; the phantom draws its noise independently of ``lesion``, so the two volumes differ
exactly on the slices the nodule touches. A positive sample is one of those slices from the
lesion volume; a negative sample is, for a seed used by no positive, the lesion-free volume's
slice where that seed's nodule would be, so both classes come from the same craniocaudal range
and differ only by the nodule.

``difficulty`` in [0, 1] sets three things at once:

* contrast: the nodule is blended in with weight ``1 - 0.32 * difficulty`` (its full +890 HU
  over lung at 0, about +750 HU at the default 0.5, +600 HU at 1);
* noise: the phantom's Gaussian noise is ``10 + 28 * difficulty`` HU (24 HU at 0.5);
* size: the slice is drawn among those whose nodule cross-section is at least
  ``1 - 0.4 * difficulty`` of the largest one, so harder tasks include slices nearer the
  nodule's top and bottom caps.

Lung vessels are round blobs of similar density (radius 1-2.5 mm against the nodule's 3-8 mm,
at 5.5 mm pixels for ``size=64``), so the nodule is never just "the bright dot" and even
difficulty 0 is not trivial.

Measured baselines (``python benchmarks/bench_synthetic_task.py``, ``size=64``, 250 slices per
class split 60/20/20 (100 test slices), mean +- sample sd over seeds 0, 1, 2; test accuracy,
chance 0.5; measured on 16 CPU cores in about a minute):

==========  =======================  ==============================================
difficulty  logistic reg. on pixels  small CNN from scratch (40 epochs, best val)
==========  =======================  ==============================================
0.0         0.55 +- 0.06             0.87 +- 0.02
0.25        0.56 +- 0.06             0.84 +- 0.06
0.5         0.60 +- 0.04             0.84 +- 0.04
0.75        0.54 +- 0.11             0.71 +- 0.03
1.0         0.59 +- 0.03             0.56 +- 0.02
==========  =======================  ==============================================

A linear model on pixels stays near chance at every difficulty (the nodule can be anywhere in
either lung), while a network that detects a local blob anywhere reaches about 0.84 at the
default: room above and below for pre-training to help or hurt.

Images are scaled per slice with the paper's min-max policy
(``Intensity().to_uint8``) and written as 8-bit PNG class folders ``a_without``/``b_with``
(as the paper's brain haemorrhage data), in the COVID-CT release layout (the lesion class as
``CT_COVID``) or as a MedMNIST-shaped ``.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HELD_OUT_SEED = 1_000_000
CLASSES = ("a_without", "b_with")
NODULE_MIN_HU = 100.0  # a pixel "contains" the nodule where lesion - plain exceeds this
FORMATS = ("folder", "covid_ct", "medmnist")


@dataclass
class LesionSamples:
    """In-memory samples: ``images`` (N, size, size) uint8, ``labels`` (N,) 0 = without, 1 = with."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    splits: np.ndarray  # "train" / "val" / "test" per sample


def _knobs(difficulty: float) -> tuple[float, float, float]:
    """(nodule weight, noise in HU, minimum cross-section fraction) for a difficulty in [0, 1]."""
    d = float(difficulty)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
    return 1.0 - 0.32 * d, 10.0 + 28.0 * d, 1.0 - 0.4 * d


def _lesion_pair(phantom_seed: int, size: int, n_slices: int, slice_thickness: float,
                 noise_hu: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(with, without, area): both volumes in HU (float32) and the nodule area per slice."""
    from ..sample_data.phantom import make_phantom

    kwargs = dict(n_slices=n_slices, size=size, slice_thickness=slice_thickness, noise_hu=noise_hu,
                  seed=phantom_seed)
    with_, _ = make_phantom(lesion=True, **kwargs)
    without, _ = make_phantom(lesion=False, **kwargs)
    with_, without = with_.astype(np.float32), without.astype(np.float32)
    area = ((with_ - without) > NODULE_MIN_HU).sum(axis=(1, 2))
    return with_, without, area


def _pick_slice(area: np.ndarray, min_fraction: float, rng: np.random.Generator) -> int | None:
    if area.max() == 0:
        return None
    candidates = np.flatnonzero(area >= max(1.0, min_fraction * area.max()))
    return int(rng.choice(candidates))


def lesion_samples(n_per_class: int = 150, *, size: int = 64, seed: int = 0, difficulty: float = 0.5,
                   n_slices: int = 16, slice_thickness: float = 2.5,
                   fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> LesionSamples:
    """Generate ``n_per_class`` slices per class (balanced) with a stratified split assignment.

    Samples i = 0, 1, ... alternate between classes and use phantom seed
    ``HELD_OUT_SEED + 100_000 * seed + i`` (a seed whose nodule falls outside the scanned range
    is skipped), so no two samples share a patient.
    """
    from ..io.intensity import Intensity

    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if size < 16:
        raise ValueError(f"size must be >= 16 for a visible nodule, got {size}")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions (train, val, test) must be three non-negative numbers summing to 1, "
                         f"got {fractions}")
    weight, noise_hu, min_fraction = _knobs(difficulty)
    to_uint8 = Intensity().to_uint8
    rng = np.random.default_rng([HELD_OUT_SEED, seed])
    images, labels, names = [], [], []
    counts = [0, 0]
    phantom_seed = HELD_OUT_SEED + 100_000 * int(seed)
    while min(counts) < n_per_class:
        label = 0 if counts[0] <= counts[1] else 1
        with_, without, area = _lesion_pair(phantom_seed, size, n_slices, slice_thickness, noise_hu)
        k = _pick_slice(area, min_fraction, rng)
        if k is not None:
            if label:
                hu = without[k] + weight * (with_[k] - without[k])
            else:
                hu = without[k]
            images.append(to_uint8(np.rint(hu).astype(np.int16)))
            labels.append(label)
            names.append(f"{CLASSES[label]}_{phantom_seed}_z{k:02d}.png")
            counts[label] += 1
        phantom_seed += 1
    labels_arr = np.asarray(labels, dtype=np.int64)
    splits = np.empty(len(labels), dtype=object)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels_arr == c))
        n_train = int(round(fractions[0] * idx.size))
        n_val = int(round(fractions[1] * idx.size))
        splits[idx[:n_train]] = "train"
        splits[idx[n_train:n_train + n_val]] = "val"
        splits[idx[n_train + n_val:]] = "test"
    return LesionSamples(np.stack(images), labels_arr, names, splits)


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path)


def make_lesion_task(root: str | Path, *, n_per_class: int = 150, size: int = 64, seed: int = 0,
                     difficulty: float = 0.5, format: str = "folder", n_slices: int = 16,
                     slice_thickness: float = 2.5, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                     flag: str = "lesionmnist") -> Path:
    """Write the lesion task under ``root`` and return what the matching loader takes.

    * ``folder``: ``root/a_without/*.png`` and ``root/b_with/*.png`` (no split given: the loader
      splits at random) plus ``root/split.csv`` (``path,split,label``) with the stratified
      ``fractions`` split for ``load_image_folder(root, split_csv=root / "split.csv")``; returns
      ``root``.
    * ``covid_ct``: ``root/Images-processed/CT_COVID`` (with lesion) and ``CT_NonCOVID``
      (without) plus ``root/Data-split/{COVID,NonCOVID}/{train,val,test}CT_*.txt``; returns ``root``.
      Loaded with the paper's labels the lesion class is 0.
    * ``medmnist``: ``root/{flag}.npz`` (``{flag}_{size}.npz`` unless size is 28) with keys
      ``{train,val,test}_{images,labels}``, images (N, size, size) uint8, labels (N, 1) uint8;
      returns the file's path.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    root = Path(root)
    samples = lesion_samples(n_per_class, size=size, seed=seed, difficulty=difficulty, n_slices=n_slices,
                             slice_thickness=slice_thickness, fractions=fractions)
    root.mkdir(parents=True, exist_ok=True)
    if format == "folder":
        rows = ["path,split,label"]
        for image, label, name, split in zip(samples.images, samples.labels, samples.names, samples.splits,
                                             strict=True):
            rel = f"{CLASSES[label]}/{name}"
            _save_png(image, root / rel)
            rows.append(f"{rel},{split},{CLASSES[label]}")
        (root / "split.csv").write_text("\n".join(rows) + "\n")
        return root
    if format == "covid_ct":
        folders = {1: "CT_COVID", 0: "CT_NonCOVID"}
        lists: dict[tuple[int, str], list[str]] = {(c, s): [] for c in (0, 1) for s in ("train", "val", "test")}
        for image, label, name, split in zip(samples.images, samples.labels, samples.names, samples.splits,
                                             strict=True):
            _save_png(image, root / "Images-processed" / folders[label] / name)
            lists[label, split].append(name)
        for (label, split), names in lists.items():
            group = "COVID" if label == 1 else "NonCOVID"
            path = root / "Data-split" / group / f"{split}CT_{group}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{n}\n" for n in names))
        return root
    arrays = {}
    for split in ("train", "val", "test"):
        mask = samples.splits == split
        arrays[f"{split}_images"] = samples.images[mask]
        arrays[f"{split}_labels"] = samples.labels[mask].astype(np.uint8)[:, None]
    from ..tasks.spec import medmnist_file  # torch: only for this format

    path = root / medmnist_file(flag, size)
    np.savez_compressed(path, **arrays)
    return path
