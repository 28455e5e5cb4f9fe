"""Where a command may write: never into what it reads.

One rule for every command that writes (``reduce --out/--export-out``, ``export``, ``duplicates``,
``leakage``, ``report``, ``pretrain``, ``finetune``, ``experiment``): an output may not be an input,
nor lie inside an input folder. Inputs are the data a command reads: the archive given to
``reduce`` (a run folder records it), a downstream task's files and folders, an export read as
training data. Written into, an input changes under the next reader: a leakage table inside a
task folder is a class folder without images to every later ``finetune``; an export inside the
archive is scanned as part of it.

A run folder is not an input in this sense: it is ctreduce's own store, holds what is derived
from it (its export, its report), and its writer replaces only its own files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class OutputPlaceError(ValueError):
    """The output would be written into an input, or where nothing can be written."""


def check_output_place(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, file: bool = False) -> None:
    """Refuse ``out`` (a folder, or with ``file`` a file) when it is, or lies inside, one of
    ``inputs`` (links resolved: two spellings of one place are one place), or when it cannot be
    written; creates nothing."""
    what = "output file" if file else "output folder"
    out = Path(out)
    resolved = Path(os.path.realpath(out))
    for given in inputs:
        root = Path(os.path.realpath(given))
        if resolved == root:
            raise OutputPlaceError(f"{what} {out} is the input {given}; inputs are never written to, "
                                   "choose a place outside it")
        if root.is_dir() and root in resolved.parents:
            raise OutputPlaceError(f"{what} {out} is inside the input folder {root}; input folders are never "
                                   "written to, choose a folder outside it")
    existing = resolved
    while not existing.exists():
        existing = existing.parent
    if existing == resolved and file and existing.is_dir():
        raise OutputPlaceError(f"{what} {out} is a folder; give a file name, e.g. {out / 'report.html'}")
    if existing == resolved and file:
        writable = os.access(existing, os.W_OK)
    else:
        writable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    if not writable:
        kind = "file" if existing == resolved and file else "folder"
        raise OutputPlaceError(f"cannot write to {what} {out}: {existing} is not a writable {kind}")
