"""MedMNIST v2/v3 ``.npz`` files (OrganSMNIST by default): local, or fetched by the medmnist package on request."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .data import SPLITS, DownstreamData, Split
from .spec import DataError, medmnist_file

# MedMNIST 2D flags (v2/v3). Multi-label ChestMNIST cannot be a single-label task here.
MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
               "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
MEDMNIST_MULTILABEL = ("chestmnist",)
MEDMNIST_SIZES = (28, 64, 128, 224)
MEDMNIST_ZENODO = "https://zenodo.org/records/10519652"  # MedMNIST+ (v3): every flag at every size
_ORGAN_LABELS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                 "lung-left", "lung-right", "pancreas", "spleen"]
_KNOWN_CLASSES = {"organamnist": _ORGAN_LABELS, "organcmnist": _ORGAN_LABELS, "organsmnist": _ORGAN_LABELS}


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
