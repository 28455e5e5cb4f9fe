"""Downstream classification data: train/val/test splits of (image, label) from local files.

Three formats, as used in the paper's downstream evaluation (Wolf et al. 2024):

* :func:`load_covid_ct`: COVID-CT in the layout of its public release (UCSD-AI4H/COVID-CT);
* :func:`load_medmnist`: a MedMNIST v2/v3 ``.npz`` (OrganSMNIST by default);
* :func:`load_image_folder`: class sub-folders of PNG/JPEG/DICOM images (as the paper's internal
  brain haemorrhage data, ``a_without``/``b_with``), split by a CSV, by ``train/val/test``
  folders or at random (stratified, seeded).

Every loader returns a validated :class:`DownstreamData`: images are uint8 grey arrays (H, W)
(sizes may differ between images), labels int64 in 0..K-1, ``classes[k]`` names label k.
Problems are reported as :class:`DataError` naming the offending file or folder, before any
training starts. A task spec is a dict such as ``{"format": "medmnist", "path": "x.npz"}``:
:func:`check_task_spec` checks it without reading data, :func:`task_spec_for` makes one from a
path given on the command line, :func:`load_task` loads it (the CLI, experiment files and
``ctreduce evaluate`` all use these), and :class:`ImageDataset` wraps a split for a torch ``DataLoader``.

Images are read eagerly into memory (COVID-CT: ~750 images; OrganSMNIST: 25k of 28x28).
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

# The task-spec spelling needs no torch (settings are checked before it loads); re-exported here.
from .taskspec import (  # noqa: F401
    SPEC_FILE_SUFFIXES,
    DataError,
    check_task_spec,
    medmnist_file,
    task_paths,
    task_source,
    task_spec_for,
)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")

# MedMNIST 2D flags (v2/v3). Multi-label ChestMNIST cannot be a single-label task here.
MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
               "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
MEDMNIST_MULTILABEL = ("chestmnist",)
MEDMNIST_SIZES = (28, 64, 128, 224)
MEDMNIST_ZENODO = "https://zenodo.org/records/10519652"  # MedMNIST+ (v3): every flag at every size
_ORGAN_LABELS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                 "lung-left", "lung-right", "pancreas", "spleen"]
_KNOWN_CLASSES = {"organamnist": _ORGAN_LABELS, "organcmnist": _ORGAN_LABELS, "organsmnist": _ORGAN_LABELS}


class DataWarning(UserWarning):
    """A downstream data set is usable but suspicious (e.g. a class absent from the test split)."""


@dataclass
class Split:
    """One split: ``images[i]`` (uint8 (H, W)) has label ``labels[i]`` and name ``names[i]``
    (its path relative to the data root, or ``split/index`` for array formats)."""

    images: list[np.ndarray] | np.ndarray
    labels: np.ndarray
    names: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if self.labels.ndim == 2 and self.labels.shape[1] == 1:
            self.labels = self.labels[:, 0]
        self.names = list(self.names)
        if isinstance(self.images, list) and any(image is None for image in self.images):  # skipped: unreadable
            keep = [k for k, image in enumerate(self.images) if image is not None]
            self.images, self.labels = [self.images[k] for k in keep], self.labels[keep]
            self.names = [self.names[k] for k in keep]

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, n_classes: int) -> list[int]:
        """Number of images per class 0..n_classes-1."""
        return np.bincount(self.labels.astype(np.int64), minlength=n_classes)[:n_classes].tolist()


@dataclass
class DownstreamData:
    """A downstream task: three splits, class names (``classes[k]`` is label k) and a name."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    name: str
    source: str = ""  # the file or folder it was read from
    notes: list[str] = field(default_factory=list)  # how it was split, for the run's manifest

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def validate(self) -> DownstreamData:
        """Raise :class:`DataError` unless the task is usable; return ``self``.

        Checked: at least two distinct class names; per split equal numbers of images, labels and
        names, not empty, integer labels in 0..K-1, images 2-D uint8; every class has training
        images. A class absent from val or test only warns (:class:`DataWarning`).
        """
        where = f"{self.name} ({self.source})" if self.source else self.name
        classes = [str(c) for c in self.classes]
        if len(classes) < 2:
            raise DataError(f"{where}: a classification task needs at least 2 classes, got {classes}")
        if len(set(classes)) != len(classes):
            raise DataError(f"{where}: duplicate class names {classes}")
        k = len(classes)
        for split_name, split in self.splits().items():
            n_img, n_lab, n_names = len(split.images), len(split.labels), len(split.names)
            if not n_img == n_lab == n_names:
                raise DataError(f"{where}: split '{split_name}' has {n_img} images, {n_lab} labels and "
                                f"{n_names} names; they must match")
            if n_img == 0:
                raise DataError(f"{where}: split '{split_name}' is empty")
            labels = split.labels
            if labels.ndim != 1:
                raise DataError(f"{where}: split '{split_name}' labels must be 1-D, got shape {labels.shape}")
            if not np.issubdtype(labels.dtype, np.integer):
                if not np.issubdtype(labels.dtype, np.floating) or np.any(np.mod(labels, 1) != 0):
                    raise DataError(f"{where}: split '{split_name}' labels must be integers, got {labels.dtype}")
            bad = (labels < 0) | (labels >= k)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"{where}: split '{split_name}' has label {labels[i]} ({split.names[i]}) out of "
                                f"range for {k} classes {classes}")
            split.labels = labels.astype(np.int64)
            if isinstance(split.images, np.ndarray):
                if split.images.ndim != 3 or split.images.dtype != np.uint8:
                    raise DataError(f"{where}: split '{split_name}' images must be a (N, H, W) uint8 array, "
                                    f"got {split.images.dtype} {split.images.shape}")
                continue
            for image, name in zip(split.images, split.names, strict=True):
                if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
                    shape = getattr(image, "shape", None)
                    raise DataError(f"{where}: {name} must be a 2-D uint8 array, got {type(image).__name__} "
                                    f"{getattr(image, 'dtype', '')} {shape}")
        for c, cls in enumerate(classes):
            total = sum(int(np.sum(s.labels == c)) for s in self.splits().values())
            if total == 0:
                raise DataError(f"{where}: class '{cls}' (label {c}) has no images")
            if not np.any(self.train.labels == c):
                raise DataError(f"{where}: class '{cls}' (label {c}) has no training images")
        for c, cls in enumerate(classes):
            for split_name in ("val", "test"):
                if not np.any(self.splits()[split_name].labels == c):
                    warnings.warn(f"{where}: class '{cls}' is absent from the {split_name} split", DataWarning,
                                  stacklevel=2)
        self.classes = classes
        return self

    def summary(self) -> dict[str, Any]:
        """Name, source, classes and per-split class counts (JSON-serialisable)."""
        k = len(self.classes)
        return {"name": self.name, "source": self.source, "classes": list(self.classes),
                "counts": {s: split.counts(k) for s, split in self.splits().items()},
                "notes": list(self.notes)}

    def dataset(self, split: str, transform: Callable[[torch.Tensor], Any] | None = None) -> ImageDataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return ImageDataset(self.splits()[split], transform)


class ImageDataset(Dataset):
    """A :class:`Split` as a torch dataset: item i is ``(transform(x), label)`` with ``x`` a uint8
    tensor (1, H, W) (``x`` itself without a transform) and ``label`` a Python int."""

    def __init__(self, split: Split, transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        if len(split.images) != len(split.labels):
            raise DataError(f"split has {len(split.images)} images but {len(split.labels)} labels")
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.labels)

    @property
    def targets(self) -> list[int]:
        return [int(v) for v in self.split.labels]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = np.array(self.split.images[index], dtype=np.uint8, copy=True)
        x = torch.from_numpy(image)[None]
        label = int(self.split.labels[index])
        return (self.transform(x) if self.transform is not None else x), label


# --- reading single images -----------------------------------------------------------------------


def read_dicom_uint8(path: str | Path) -> np.ndarray:
    """A single-frame greyscale DICOM: stored values -> RescaleSlope/Intercept -> per-image min-max to
    uint8 (the paper's scaling; MONOCHROME1 is inverted first so that bright means dense)."""
    import pydicom

    from ..reduction.intensity import minmax_uint8

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        array = ds.pixel_array
    except Exception as exc:
        raise DataError(f"{path}: unreadable DICOM ({exc})") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or array.ndim != 2:
        raise DataError(f"{path}: expected a single-frame greyscale image, got pixel array {array.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = array.astype(np.float64) * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = -values
    return minmax_uint8(values)


def read_image_uint8(path: str | Path) -> np.ndarray:
    """Any PNG/JPEG (grey, RGB, palette or 16-bit: 16-bit and float images are min-max scaled,
    colour converted with Pillow's ``L``) or DICOM file as a uint8 (H, W) array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    if path.suffix.lower() == ".dcm":
        return read_dicom_uint8(path)
    from PIL import Image

    from ..reduction.intensity import minmax_uint8

    try:
        with Image.open(path) as image:
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                return minmax_uint8(np.asarray(image))
            if image.mode != "L":
                image = image.convert("L")
            return np.array(image, dtype=np.uint8)
    except OSError as exc:
        if path.read_bytes()[128:132] == b"DICM":
            return read_dicom_uint8(path)
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def _read_all(paths: Sequence[Path], skipped: list[dict[str, str]] | None = None) -> list[np.ndarray | None]:
    """Every image. The unreadable ones are one DataError naming each; with ``skipped``, they are None
    instead (a Split leaves them out) and listed there with the reason."""
    images: list[np.ndarray | None] = []
    bad: list[dict[str, str]] = []
    for path in paths:
        try:
            images.append(read_image_uint8(path))
        except (DataError, OSError, ValueError) as exc:
            images.append(None)
            bad.append({"file": str(path), "error": str(exc)})
    if bad and skipped is None:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} unreadable image(s): " + "; ".join(b["error"] for b in bad[:5]) + more)
    if skipped is not None:
        skipped.extend(bad)
    return images


def _images_in(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Image files (by extension, case-insensitive) anywhere below ``folder``, sorted; hidden ones skipped."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# --- COVID-CT ------------------------------------------------------------------------------------

COVID_FOLDERS = {"COVID": "CT_COVID", "NonCOVID": "CT_NonCOVID"}


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split file missing (COVID-CT layout: Data-split/COVID/trainCT_COVID.txt, ...)")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    names = [n for n in names if n]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"{path}: lists {n!r} more than once")
        seen.add(n)
    return names


def load_covid_ct(root: str | Path, *, covid_label: int = 0, name: str = "covid_ct",
                  skipped: list[dict[str, str]] | None = None) -> DownstreamData:
    """COVID-CT as released by UCSD-AI4H (github.com/UCSD-AI4H/COVID-CT):

    ``root/Images-processed/CT_COVID/*`` and ``CT_NonCOVID/*`` (unzipped), with the official
    split lists ``root/Data-split/COVID/{train,val,test}CT_COVID.txt`` and
    ``root/Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt`` (one file name per line; the
    official sizes are 425/118/203). Exactly the listed images are loaded; a listed name missing
    on disk is an error (matched case-insensitively if the exact name is absent), as is a name in
    two splits. Labels as in the paper: COVID 0, NonCOVID 1; ``covid_label=1`` swaps them.
    """
    if covid_label not in (0, 1):
        raise DataError(f"covid_label must be 0 or 1, got {covid_label!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: COVID-CT root folder not found")
    image_root = root / "Images-processed"
    labels = {"COVID": covid_label, "NonCOVID": 1 - covid_label}
    folders: dict[str, Path] = {}
    for group, folder_name in COVID_FOLDERS.items():
        folder = image_root / folder_name
        if not folder.is_dir():
            zipped = image_root / f"{folder_name}.zip"
            hint = f"; unzip {zipped} there first" if zipped.exists() else " (expected the unzipped release folder)"
            raise DataError(f"{folder}: image folder missing{hint}")
        folders[group] = folder
    parts: dict[str, tuple[list[Path], list[int], list[str]]] = {s: ([], [], []) for s in SPLITS}
    owner: dict[str, str] = {}
    for group, folder in folders.items():
        on_disk = {p.name: p for p in folder.iterdir() if p.is_file()}
        lowered = {n.lower(): p for n, p in on_disk.items()}
        for split in SPLITS:
            list_path = root / "Data-split" / group / f"{split}CT_{group}.txt"
            missing = []
            for file_name in _read_list(list_path):
                path = on_disk.get(file_name) or lowered.get(file_name.lower())
                if path is None:
                    missing.append(file_name)
                    continue
                key = f"{folder.name}/{path.name}"
                if key in owner:
                    raise DataError(f"{list_path}: {file_name!r} is also listed in the {owner[key]} split")
                owner[key] = split
                parts[split][0].append(path)
                parts[split][1].append(labels[group])
                parts[split][2].append(key)
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise DataError(f"{list_path}: {len(missing)} listed image(s) not found in {folder}: "
                                f"{', '.join(repr(m) for m in missing[:3])}{more}")
    splits = {s: Split(_read_all(paths, skipped), np.asarray(lab, dtype=np.int64), names)
              for s, (paths, lab, names) in parts.items()}
    classes = ["COVID", "NonCOVID"] if covid_label == 0 else ["NonCOVID", "COVID"]
    data = DownstreamData(splits["train"], splits["val"], splits["test"], classes, name, str(root),
                          notes=["official Data-split lists"])
    return data.validate()


# --- MedMNIST ------------------------------------------------------------------------------------


def _check_medmnist_flag(flag: str) -> None:
    if flag in MEDMNIST_MULTILABEL:
        raise DataError(f"{flag}: multi-label not supported (each image must have exactly one class)")
    if flag.endswith("3d"):
        raise DataError(f"{flag}: 3D MedMNIST data sets are not supported; use a 2D flag such as organsmnist")


def _download_medmnist(flag: str, root: Path, size: int) -> None:
    target = root / medmnist_file(flag, size)
    manual = (f"download {target.name} from the MedMNIST Zenodo record {MEDMNIST_ZENODO} "
              f"(files/{target.name}) and place it at {target}")
    try:
        import medmnist
    except ImportError as exc:
        raise DataError(f"download=True needs the 'medmnist' package (pip install medmnist), which is not "
                        f"installed; or {manual}") from exc
    info = getattr(medmnist, "INFO", {}).get(flag)
    if info is None:
        raise DataError(f"{flag}: not a flag the installed medmnist package knows; {manual}")
    data_class = getattr(medmnist, info["python_class"])
    root.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"split": "train", "download": True, "root": str(root)}
    if size != 28:
        kwargs["size"] = size
    try:
        data_class(**kwargs)
    except TypeError as exc:
        raise DataError(f"the installed medmnist package cannot fetch size {size} ({exc}); it needs "
                        f"medmnist>=3, or {manual}") from exc
    except Exception as exc:
        raise DataError(f"downloading {target.name} with medmnist failed ({exc}); offline? {manual}") from exc
    if not target.is_file():
        raise DataError(f"medmnist reported success but {target} does not exist; {manual}")


def _grey(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {key} must be uint8, got {images.dtype}")
    if images.ndim == 3:
        return images
    if images.ndim == 4 and images.shape[-1] == 3:
        # ITU-R 601-2 luma as Pillow's convert("L"): (299 R + 587 G + 114 B) / 1000, rounded.
        rgb = images.astype(np.uint32)
        return ((rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000).astype(np.uint8)
    if images.ndim == 4 and images.shape[-1] == 1:
        return images[..., 0]
    raise DataError(f"{path}: {key} must be (N, H, W) or (N, H, W, 3), got {images.shape}")


def load_medmnist(path_or_flag: str | Path = "organsmnist", *, root: str | Path | None = None,
                  size: int | None = None, download: bool = False, name: str | None = None) -> DownstreamData:
    """A local MedMNIST ``.npz`` (keys ``{train,val,test}_{images,labels}``).

    ``path_or_flag`` is either the ``.npz`` path or a 2D flag (default ``organsmnist``) whose file
    ``{flag}.npz`` (size 28) or ``{flag}_{size}.npz`` (64, 128, 224) lies in ``root`` (default
    ``~/.medmnist``, the medmnist package's). Labels (N, 1) are flattened; multi-label data
    (``chestmnist`` or labels (N, K>1)) is rejected; RGB flags are converted to grey. Class names
    come from the flag (OrganA/C/SMNIST) or are "0".."K-1". Nothing is downloaded unless
    ``download=True``, which needs the ``medmnist`` package and network access.
    """
    text = str(path_or_flag)
    if text.lower().endswith(".npz") or Path(text).is_file():
        path = Path(text)
        flag = re.sub(r"_(28|64|128|224)$", "", path.stem.lower())
        if size is not None:
            raise DataError("size applies to a flag, not to an explicit .npz path")
        if download:
            raise DataError("download=True needs a flag (e.g. 'organsmnist'), not a file path")
    else:
        flag = text.lower()
        size = 28 if size is None else int(size)
        if size not in MEDMNIST_SIZES:
            raise DataError(f"MedMNIST size must be one of {MEDMNIST_SIZES}, got {size}")
        base = Path(root).expanduser() if root is not None else Path("~/.medmnist").expanduser()
        path = base / medmnist_file(flag, size)
        _check_medmnist_flag(flag)
        if not path.is_file():
            if download:
                _download_medmnist(flag, base, size)
            else:
                raise DataError(f"{path}: MedMNIST file not found. Pass download=True (needs the medmnist package "
                                f"and network) or download {path.name} from {MEDMNIST_ZENODO} into {base}")
    _check_medmnist_flag(flag)
    if not path.is_file():
        raise DataError(f"{path}: MedMNIST file not found")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    with npz:
        keys = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise DataError(f"{path}: missing key(s) {missing}; a MedMNIST file has {keys}")
        splits = {}
        n_classes = 0
        for s in SPLITS:
            images = _grey(npz[f"{s}_images"], path, f"{s}_images")
            labels = np.asarray(npz[f"{s}_labels"])
            if labels.ndim == 2 and labels.shape[1] > 1:
                raise DataError(f"{path}: {s}_labels has shape {labels.shape}: multi-label not supported")
            labels = labels.reshape(-1)
            if len(labels) != len(images):
                raise DataError(f"{path}: {s}_images has {len(images)} images but {s}_labels {len(labels)} labels")
            if labels.size:
                n_classes = max(n_classes, int(labels.max()) + 1)
            splits[s] = Split(images, labels, [f"{s}/{i}" for i in range(len(labels))])
    classes = list(_KNOWN_CLASSES.get(flag, [])) or _medmnist_classes(flag) or [str(i) for i in range(n_classes)]
    data = DownstreamData(splits["train"], splits["val"], splits["test"], classes, name or flag, str(path),
                          notes=["official MedMNIST splits"])
    return data.validate()


def _medmnist_classes(flag: str) -> list[str]:
    """Class names from an installed medmnist package's INFO (no download), else []."""
    try:
        import medmnist
    except ImportError:
        return []
    labels = getattr(medmnist, "INFO", {}).get(flag, {}).get("label", {})
    try:
        return [labels[str(i)] for i in range(len(labels))]
    except KeyError:
        return []


# --- class folders ----------------------------------------------------------------------------


def _stratified(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Index arrays per split name; each class is shuffled with ``seed`` and cut by ``fractions``
    (the rest goes to "train"). A class with >= 3 images gets at least one in every split whose
    fraction is > 0 while keeping one for training."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {s: [] for s in ("train", *fractions)}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for split, fraction in fractions.items():
            take = int(round(fraction * idx.size))
            if fraction > 0 and idx.size >= 3:
                take = max(take, 1)
            take = min(take, idx.size - start - 1)  # always leave one for training
            out[split].extend(idx[start:start + max(take, 0)].tolist())
            start += max(take, 0)
        out["train"].extend(idx[start:].tolist())
    return {s: np.sort(np.asarray(v, dtype=np.int64)) for s, v in out.items()}


def _check_fraction(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise DataError(f"{what} must lie in [0, 1), got {value}")
    return value


def _class_folder_images(folder: Path, extensions: Sequence[str]) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted sub-folder names) and their images; a class folder without images is an error."""
    classes, files = [], []
    for sub in _subdirs(folder):
        images = _images_in(sub, extensions)
        if not images:
            raise DataError(f"{sub}: class folder has no images with extensions {list(extensions)}")
        classes.append(sub.name)
        files.append(images)
    return classes, files


def _read_split_csv(root: Path, csv_path: Path) -> tuple[list[Path], list[str], list[str] | None]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: split CSV not found")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "path" not in columns or "split" not in columns:
            raise DataError(f"{csv_path}: needs columns 'path' and 'split' (optional 'label'), found {columns}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    paths, splits, labels = [], [], ([] if "label" in columns else None)
    seen: dict[Path, int] = {}
    missing = []
    for line, row in enumerate(rows, start=2):
        split = row["split"].lower()
        if split not in SPLITS:
            raise DataError(f"{csv_path}, line {line}: split {row['split']!r} is not one of train/val/test")
        if not row["path"]:
            raise DataError(f"{csv_path}, line {line}: empty path")
        path = Path(row["path"])
        path = path if path.is_absolute() else root / path
        if path in seen:
            raise DataError(f"{csv_path}, line {line}: {row['path']} already listed on line {seen[path]}")
        seen[path] = line
        if not path.is_file():
            missing.append(f"line {line}: {path}")
        paths.append(path)
        splits.append(split)
        if labels is not None:
            if not row["label"]:
                raise DataError(f"{csv_path}, line {line}: empty label")
            labels.append(row["label"])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{csv_path}: {len(missing)} listed image(s) not found: {'; '.join(missing[:3])}{more}")
    return paths, splits, labels


def _labels_from_csv(root: Path, csv_path: Path, paths: list[Path], labels: list[str] | None,
                     ) -> tuple[np.ndarray, list[str]]:
    if labels is not None:
        if all(re.fullmatch(r"\d+", v) for v in labels):
            values = np.asarray([int(v) for v in labels], dtype=np.int64)
            k = int(values.max()) + 1
            folder_classes = [p.name for p in _subdirs(root) if p.name not in SPLITS]
            classes = folder_classes if len(folder_classes) == k else [str(i) for i in range(k)]
            return values, classes
        classes = sorted(set(labels))
        index = {c: i for i, c in enumerate(classes)}
        return np.asarray([index[v] for v in labels], dtype=np.int64), classes
    # No label column: the class is the folder the image sits in, below an optional train/val/test folder.
    names = []
    for path in paths:
        try:
            parts = path.relative_to(root).parts
        except ValueError as exc:
            raise DataError(f"{csv_path}: {path} lies outside {root}; add a 'label' column") from exc
        if parts and parts[0] in SPLITS:
            parts = parts[1:]
        if len(parts) < 2:
            raise DataError(f"{csv_path}: {path} is not inside a class folder; add a 'label' column")
        names.append(parts[0])
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[n] for n in names], dtype=np.int64), classes


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def load_image_folder(root: str | Path, *, split_csv: str | Path | None = None, val_fraction: float = 0.15,
                      test_fraction: float = 0.15, seed: int = 0, extensions: Iterable[str] = IMAGE_EXTENSIONS,
                      name: str | None = None, skipped: list[dict[str, str]] | None = None) -> DownstreamData:
    """Class sub-folders of images (PNG/JPEG, or DICOM: rescaled, min-max to uint8).

    Classes are the sorted sub-folder names (labels 0..K-1, e.g. ``a_without`` 0, ``b_with`` 1);
    images are searched recursively inside each class folder (per-patient sub-folders are fine).
    The split comes from, in order:

    1. ``split_csv``: columns ``path`` (relative to ``root`` or absolute) and ``split``
       (train/val/test), optional ``label`` (class names, or integers 0..K-1); without ``label``
       the class is the image's folder. Only listed images are used. A relative ``split_csv`` is
       looked up in ``root`` first.
    2. ``root/train``, ``root/val``, ``root/test`` each holding the class folders; ``train`` is
       required, a missing ``val`` (or ``test``) is carved from ``train`` by ``val_fraction``
       (``test_fraction``) of each class, seeded.
    3. otherwise a stratified random split of each class with ``seed``: ``test_fraction`` to test,
       ``val_fraction`` to val, the rest to train. This splits images, not patients: when one patient
       contributes several images, give a patient-level split as a CSV.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder root not found")
    extensions = tuple(extensions)
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    name = name or root.name
    notes: list[str] = []

    if split_csv is not None:
        csv_path = Path(split_csv)
        if not csv_path.is_absolute() and (root / csv_path).is_file():
            csv_path = root / csv_path  # a relative CSV path is looked up in root first, then the working dir
        paths, split_of, raw_labels = _read_split_csv(root, csv_path)
        labels, classes = _labels_from_csv(root, csv_path, paths, raw_labels)
        images = _read_all(paths, skipped)
        split_arr = np.asarray(split_of)
        parts = {}
        for s in SPLITS:
            idx = np.flatnonzero(split_arr == s)
            parts[s] = Split([images[i] for i in idx], labels[idx], [_rel(paths[i], root) for i in idx])
        notes.append(f"split from {csv_path}")
        data = DownstreamData(parts["train"], parts["val"], parts["test"], classes, name, str(root), notes)
        return data.validate()

    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs:
        if "train" not in split_dirs:
            raise DataError(f"{root}: has {sorted(split_dirs)} folder(s) but no 'train' folder")
        others = [p.name for p in _subdirs(root) if p.name not in SPLITS]
        if others:
            raise DataError(f"{root}: mixes split folders {sorted(split_dirs)} with other folders {others}; "
                            "use either train/val/test folders or class folders")
        found = {s: _class_folder_images(d, extensions) for s, d in split_dirs.items()}
        classes = sorted({c for names, _ in found.values() for c in names})
        for c in classes:
            if c not in found["train"][0]:
                raise DataError(f"{split_dirs['train']}: class folder '{c}' missing (it exists in another split)")
        index = {c: i for i, c in enumerate(classes)}
        files: dict[str, list[Path]] = {}
        labels_of: dict[str, np.ndarray] = {}
        for s, (names, groups) in found.items():
            files[s] = [p for group in groups for p in group]
            labels_of[s] = np.asarray([index[n] for n, group in zip(names, groups, strict=True) for _ in group],
                                      dtype=np.int64)
        carve = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in split_dirs}
        if carve:
            if any(f <= 0 for f in carve.values()):
                raise DataError(f"{root}: no {'/'.join(carve)} folder and a zero fraction to carve it from train")
            train_files, train_labels = files["train"], labels_of["train"]
            for s, idx in _stratified(train_labels, carve, seed).items():
                files[s] = [train_files[i] for i in idx]
                labels_of[s] = train_labels[idx]
            notes.append(f"{'/'.join(carve)} carved from {split_dirs['train']} (stratified, seed {seed})")
        notes.append("split folders")
        parts = {s: Split(_read_all(files[s], skipped), labels_of[s], [_rel(p, root) for p in files[s]])
                 for s in SPLITS}
        data = DownstreamData(parts["train"], parts["val"], parts["test"], classes, name, str(root), notes)
        return data.validate()

    classes, groups = _class_folder_images(root, extensions)
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected e.g. {root}/a_without, {root}/b_with)")
    all_files = [p for group in groups for p in group]
    labels = np.asarray([c for c, group in enumerate(groups) for _ in group], dtype=np.int64)
    picked = _stratified(labels, {"val": val_fraction, "test": test_fraction}, seed)
    images = _read_all(all_files, skipped)
    parts = {s: Split([images[i] for i in idx], labels[idx], [_rel(all_files[i], root) for i in idx])
             for s, idx in picked.items()}
    notes.append(f"stratified random split val {val_fraction}, test {test_fraction}, seed {seed}")
    data = DownstreamData(parts["train"], parts["val"], parts["test"], classes, name, str(root), notes)
    return data.validate()


# --- dispatch ------------------------------------------------------------------------------------

def load_task(spec: dict[str, Any], *, skipped: list[dict[str, str]] | None = None) -> DownstreamData:
    """Load a task from a spec such as ``{"format": "covid_ct", "root": "..."}``,
    ``{"format": "medmnist", "flag": "organsmnist", "root": "...", "size": 28}`` (or ``"path"``:
    an .npz) or ``{"format": "folder", "root": "...", "split_csv": "..."}``; the other keys are
    the loader's keyword arguments. Unreadable image files are one error naming each; with
    ``skipped`` they are left out and listed there (file, error)."""
    spec = check_task_spec(spec)
    fmt = spec.pop("format")
    if fmt == "medmnist":
        target = spec.pop("path", None) or spec.pop("flag", "organsmnist")
        return load_medmnist(target, **spec)
    root = spec.pop("root")
    if fmt == "covid_ct":
        return load_covid_ct(root, **spec, skipped=skipped)
    return load_image_folder(root, **spec, skipped=skipped)
