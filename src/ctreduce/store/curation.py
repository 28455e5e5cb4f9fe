"""The output folders of ``ctreduce duplicates`` and ``ctreduce leakage``: names, writer and reader.

Layout of a duplicates folder (``--out DIR``)::

    duplicates.json        schema, runs, threshold, min_share, counts; ``complete: true``
    slices.parquet         one row per slice: its nearest slice in another volume within the threshold
    volume_pairs.parquet   pairs of volumes where a large share of one's slices has a near-duplicate in the other

Layout of a leakage folder::

    leakage.json           schema, task, pre-training source, threshold, counts per split; ``complete: true``
    images.parquet         one row per task image: nearest pre-training slice, nearest training image

The JSON file is written last, so a folder without it (an interrupted write) is refused by readers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .files import atomic_write, read_json, write_json

SCHEMA = 1
DUPLICATES_META = "duplicates.json"
SLICES = "slices.parquet"
VOLUME_PAIRS = "volume_pairs.parquet"
LEAKAGE_META = "leakage.json"
IMAGES = "images.parquet"


class CurateFolderError(ValueError):
    """The folder is missing, incomplete or not of the expected kind."""


def _prepare(out: Path, meta_name: str, tables: tuple[str, ...]) -> None:
    if out.exists() and not out.is_dir():
        raise CurateFolderError(f"{out} exists and is not a folder")
    if out.is_dir():
        ours = {meta_name, *tables}
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if foreign:
            raise CurateFolderError(f"{out} holds other files ({', '.join(foreign[:3])}); choose a new or empty "
                                    "folder (its own earlier results are replaced)")
        (out / meta_name).unlink(missing_ok=True)  # incomplete until written again
    out.mkdir(parents=True, exist_ok=True)


def _write(out: str | os.PathLike, meta_name: str, tables: dict[str, pd.DataFrame], meta: dict[str, Any]) -> Path:
    """The tables, then the JSON that marks the folder complete (written last)."""
    out = Path(out)
    _prepare(out, meta_name, tuple(tables))
    for name, frame in tables.items():
        atomic_write(out / name, lambda p, frame=frame: frame.to_parquet(p, index=False))
    write_json(out / meta_name, {"schema": SCHEMA, "complete": True, **meta})
    return out


def _read(root: Path, meta_name: str, tables: tuple[str, ...], command: str) -> tuple[dict[str, Any], list]:
    meta_path = root / meta_name
    if not meta_path.exists():
        raise CurateFolderError(f"{root}: no {meta_name}, so this is not a finished '{command}' output; "
                                f"run 'ctreduce {command} ... --out {root}' again")
    meta = read_json(meta_path)
    if not meta.get("complete") or meta.get("schema") != SCHEMA:
        raise CurateFolderError(f"{meta_path}: incomplete or of another ctreduce version; run '{command}' again")
    frames = []
    for name in tables:
        try:
            frames.append(pd.read_parquet(root / name))
        except (OSError, ValueError) as exc:
            raise CurateFolderError(f"{root / name}: unreadable ({type(exc).__name__}: {exc}); run "
                                    f"'{command}' again") from exc
    return meta, frames


@dataclass(frozen=True)
class DuplicatesFolder:
    """A finished ``ctreduce duplicates`` output."""

    root: Path
    meta: dict[str, Any]
    slices: pd.DataFrame
    volume_pairs: pd.DataFrame

    @staticmethod
    def write(out: str | os.PathLike, meta: dict[str, Any], slices: pd.DataFrame,
              volume_pairs: pd.DataFrame) -> Path:
        return _write(out, DUPLICATES_META, {SLICES: slices, VOLUME_PAIRS: volume_pairs}, meta)

    @classmethod
    def open(cls, root: str | os.PathLike) -> DuplicatesFolder:
        root = Path(root)
        meta, (slices, pairs) = _read(root, DUPLICATES_META, (SLICES, VOLUME_PAIRS), "duplicates")
        return cls(root, meta, slices, pairs)


@dataclass(frozen=True)
class LeakageFolder:
    """A finished ``ctreduce leakage`` output."""

    root: Path
    meta: dict[str, Any]
    images: pd.DataFrame

    @staticmethod
    def write(out: str | os.PathLike, meta: dict[str, Any], images: pd.DataFrame) -> Path:
        return _write(out, LEAKAGE_META, {IMAGES: images}, meta)

    @classmethod
    def open(cls, root: str | os.PathLike) -> LeakageFolder:
        root = Path(root)
        meta, (images,) = _read(root, LEAKAGE_META, (IMAGES,), "leakage")
        return cls(root, meta, images)
