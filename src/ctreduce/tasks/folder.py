"""Class sub-folders of PNG/JPEG/DICOM images (as the paper's internal brain haemorrhage data,
``a_without``/``b_with``), split by a CSV, by ``train/val/test`` folders or at random (stratified, seeded)."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .data import SPLITS, DownstreamData, Split, read_images
from .spec import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")


def _images_in(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Image files (by extension, case-insensitive) anywhere below ``folder``, sorted; hidden ones skipped."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


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
        images = read_images(paths, skipped)
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
        parts = {s: Split(read_images(files[s], skipped), labels_of[s], [_rel(p, root) for p in files[s]])
                 for s in SPLITS}
        data = DownstreamData(parts["train"], parts["val"], parts["test"], classes, name, str(root), notes)
        return data.validate()

    classes, groups = _class_folder_images(root, extensions)
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected e.g. {root}/a_without, {root}/b_with)")
    all_files = [p for group in groups for p in group]
    labels = np.asarray([c for c, group in enumerate(groups) for _ in group], dtype=np.int64)
    picked = _stratified(labels, {"val": val_fraction, "test": test_fraction}, seed)
    images = read_images(all_files, skipped)
    parts = {s: Split([images[i] for i in idx], labels[idx], [_rel(all_files[i], root) for i in idx])
             for s, idx in picked.items()}
    notes.append(f"stratified random split val {val_fraction}, test {test_fraction}, seed {seed}")
    data = DownstreamData(parts["train"], parts["val"], parts["test"], classes, name, str(root), notes)
    return data.validate()
