"""The fine-tuning run folder: names, and the readers that ``evaluate`` and ``experiment`` use.

Layout (``OUT``)::

    config.yaml               the FinetuneConfig of the run
    results.json, results.csv metrics per seed and mean +- sd; one summary line
    seed<N>/                  per seed: model.pt, history.jsonl, predictions.csv, metrics.json,
                              confusion.png, roc.png
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .files import read_json

CONFIG = "config.yaml"
RESULTS = "results.json"
RESULTS_LINE = "results.csv"
MODEL = "model.pt"
HISTORY = "history.jsonl"
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
CONFUSION = "confusion.png"
ROC = "roc.png"
_SEED = "seed"


class FinetuneRun:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def seed_dir(self, seed: int) -> Path:
        return self.path / f"{_SEED}{seed}"

    def seed_dirs(self) -> list[tuple[int, Path]]:
        """(seed, folder) of every seed with saved predictions, by seed."""
        found = [(int(p.name.removeprefix(_SEED)), p) for p in self.path.glob(f"{_SEED}*")
                 if p.name.removeprefix(_SEED).isdigit() and (p / PREDICTIONS).exists()]
        return sorted(found)

    def config(self) -> dict[str, Any] | None:
        path = self.path / CONFIG
        return yaml.safe_load(path.read_text()) if path.exists() else None

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))

    def results(self) -> dict[str, Any]:
        path = self.path / RESULTS
        return read_json(path) if path.exists() else {}
