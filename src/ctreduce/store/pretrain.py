"""The pre-training run folder (one layout for SwAV, MoCo and SparK): names, writer, reader.

Layout (``OUT``)::

    config.yaml            the resolved PretrainConfig (a rerun must match it)
    versions.json          library versions
    checkpoints/last.ckpt  rewritten after every epoch; a rerun resumes from it
    metrics.jsonl          one line per epoch
    logs/                  CSV and TensorBoard logs
    backbone.pt            the trained backbone (torchvision state_dict), when finished
    summary.json           wall time, GPU hours, images seen, dataset size, status, and the export trained on
                           (``export``: run, format, size, intensity, slices and its index ``version``, which
                           ``ExportStore.open(data, version=...)`` reads again); not a reduction's summary.json,
                           which counts kept slices: ``store.run``
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from .files import read_json, write_json, write_yaml

CONFIG = "config.yaml"
VERSIONS = "versions.json"
CHECKPOINTS = "checkpoints"
LAST = "last"  # checkpoint file stem, as Lightning's ModelCheckpoint names it
METRICS = "metrics.jsonl"
LOGS = "logs"
BACKBONE = "backbone.pt"
SUMMARY = "summary.json"
_RESULTS = (CHECKPOINTS, LOGS, METRICS, SUMMARY, BACKBONE)


class PretrainRunError(ValueError):
    """The folder holds another run, or no finished pre-training."""


class PretrainRun:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / f"{LAST}.ckpt"

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    @property
    def backbone(self) -> Path:
        return self.path / BACKBONE

    def prepare(self, resolved: dict[str, Any], versions: dict[str, str], overwrite: bool) -> None:
        """Refuse a folder holding other settings (or clear it with ``overwrite``); write config and versions."""
        config_file = self.path / CONFIG
        if config_file.exists() and not overwrite:
            previous = yaml.safe_load(config_file.read_text())
            if previous != resolved:
                diff = sorted(k for k in set(previous) | set(resolved) if previous.get(k) != resolved.get(k))
                raise PretrainRunError(f"{self.path} holds a run with other settings ({', '.join(diff)}); "
                                       "use another --out or --overwrite")
        elif overwrite and self.path.exists():
            for name in _RESULTS:
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        write_yaml(config_file, resolved)
        write_json(self.path / VERSIONS, versions)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / SUMMARY, summary)

    def summary(self) -> dict[str, Any]:
        path = self.path / SUMMARY
        return read_json(path) if path.exists() else {}

    def config(self) -> dict[str, Any]:
        path = self.path / CONFIG
        return yaml.safe_load(path.read_text()) if path.exists() else {}
