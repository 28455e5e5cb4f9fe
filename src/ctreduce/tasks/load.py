"""Loading a task from its spec (``{"format": "covid_ct" | "medmnist" | "folder", ...}``): the CLI, experiment
files, ``finetune`` and the leakage search all go through :func:`load_task`."""

from __future__ import annotations

from typing import Any

from .covid_ct import load_covid_ct
from .data import DownstreamData
from .folder import load_image_folder
from .medmnist import load_medmnist
from .spec import check_task_spec


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
