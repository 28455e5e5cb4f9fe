"""The spelling of a downstream task spec (``{"format": ..., "root"/"path": ...}``): the CLI and experiment files
check it with every other setting before any data is read; :mod:`.load` loads what it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A downstream data set is missing, malformed or inconsistent."""


def medmnist_file(flag: str, size: int) -> str:
    """The file name MedMNIST gives a flag at a size (also the synthetic task's)."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


# The one spelling of a task spec: its "format" and the keys each format takes (the loader's keyword
# arguments, plus "path"/"flag" for MedMNIST). The CLI, the experiment files and evaluate use it.
_SPEC_KEYS = {
    "covid_ct": {"root", "covid_label", "name"},
    "medmnist": {"path", "flag", "root", "size", "download", "name"},
    "folder": {"root", "split_csv", "val_fraction", "test_fraction", "seed", "extensions", "name"},
}
SPEC_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def check_task_spec(spec: Any) -> dict[str, Any]:
    """Raise :class:`DataError` unless ``spec`` is a well-formed task spec (format, keys); return a copy.

    Nothing is read: paths that do not exist yet pass, a misspelt key does not.
    """
    if not isinstance(spec, dict):
        raise DataError(f"a task spec must be a mapping, got {type(spec).__name__}")
    fmt = spec.get("format")
    if fmt not in _SPEC_KEYS:
        raise DataError(f"task spec 'format' must be one of {sorted(_SPEC_KEYS)}, got {fmt!r}")
    unknown = sorted(set(spec) - _SPEC_KEYS[fmt] - {"format"})
    if unknown:
        raise DataError(f"task spec for format {fmt!r}: unknown key(s) {unknown}; allowed {sorted(_SPEC_KEYS[fmt])}")
    if fmt == "medmnist" and "path" in spec and "flag" in spec:
        raise DataError("task spec for format 'medmnist': give 'path' (an .npz file) or 'flag', not both")
    if fmt != "medmnist" and "root" not in spec:
        raise DataError(f"task spec for format {fmt!r} needs 'root'")
    return dict(spec)


def task_spec_for(target: str | Path) -> dict[str, Any]:
    """The spec of a task named by one path (``ctreduce finetune --task``): a YAML/JSON spec file,
    a MedMNIST ``.npz``, a COVID-CT root (it has ``Images-processed/``) or a folder of class folders."""
    import yaml

    path = Path(target)
    if path.suffix.lower() in SPEC_FILE_SUFFIXES:
        if not path.is_file():
            raise DataError(f"{path}: task spec file not found")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise DataError(f"{path}: unreadable task spec ({exc})") from exc
        try:
            return check_task_spec(spec)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc
    if path.suffix.lower() == ".npz":
        return {"format": "medmnist", "path": str(path)}
    if (path / "Images-processed").is_dir():
        return {"format": "covid_ct", "root": str(path)}
    return {"format": "folder", "root": str(path)}


def task_paths(spec: dict[str, Any]) -> list[str]:
    """The files and folders a task spec reads (its inputs: nothing is ever written into them)."""
    return [str(spec[key]) for key in ("path", "root", "split_csv") if spec.get(key)]


def task_source(spec: dict[str, Any]) -> str:
    """What a task spec reads: its file or folder (or MedMNIST flag); "" when it names none."""
    return str(spec.get("path") or spec.get("root") or spec.get("flag") or "")
