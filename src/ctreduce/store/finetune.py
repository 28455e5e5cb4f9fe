"""The fine-tuning run folder (``ctreduce finetune``): names, writers and readers.

Layout (``OUT``)::

    config.yaml               the FinetuneConfig of the run
    run.json                  how the latest session ran: Lightning set-up, threads, library versions (not a
                              reduction's run.json, which holds its settings: ``store.run``)
    results.csv               the one-line summary (task, init, mode, seeds, mean and sd of each metric)
    results.json              metrics per seed and mean +- sd; written last: a run with it is finished
    seed<N>/                  per seed: model.pt, history.jsonl, predictions.csv, confusion.png, roc.png,
                              logs/ (CSV and TensorBoard), checkpoints/ (best.ckpt, last.ckpt; removed once the
                              seed is scored) and metrics.json, written last: a seed with it is finished

Every JSON file is strict JSON (an undefined metric, such as the AUC of a test split missing a class, is
null) and every file written here is replaced atomically.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .files import read_json, write_csv, write_json, write_yaml

CONFIG = "config.yaml"
RUN_INFO = "run.json"
RESULTS = "results.json"
RESULTS_LINE = "results.csv"
MODEL = "model.pt"
HISTORY = "history.jsonl"
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
CONFUSION = "confusion.png"
ROC = "roc.png"
CHECKPOINTS = "checkpoints"
LAST = "last"  # checkpoints/last.ckpt: the newest epoch, to resume from
BEST = "best"  # checkpoints/best.ckpt: the best validation accuracy so far (weights only)
LOGS = "logs"
_SEED = "seed"
# Settings that change where and how fast a seed trains, or which seeds run, not what one seed computes: a
# resumed run may differ in them (more seeds added to a run keep the finished ones).
RUN_ONLY = ("out", "device", "devices", "num_workers", "precision", "resume", "seeds")


class FinetuneRunError(ValueError):
    """The folder holds a fine-tune with other settings."""


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

    def prepare(self, config: dict[str, Any], resume: bool) -> None:
        """Keep what a rerun of the same settings can continue from (``resume``), or clear the seeds and
        results of an earlier run; refuse other settings when resuming; write the config."""
        previous = self.config()
        if previous is not None and resume:
            diff = sorted(k for k in set(previous) | set(config)
                          if k not in RUN_ONLY and previous.get(k) != config.get(k))
            if diff:
                raise FinetuneRunError(f"{self.path} holds a fine-tune with other settings ({', '.join(diff)}); "
                                       "use another --out, or --no-resume to start it over")
        elif not resume:
            for seed_dir in self.path.glob(f"{_SEED}*"):
                if seed_dir.is_dir() and seed_dir.name.removeprefix(_SEED).isdigit():
                    shutil.rmtree(seed_dir)
            for name in (RESULTS, RESULTS_LINE):
                (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        write_yaml(self.path / CONFIG, config)

    def write_run_info(self, info: dict[str, Any]) -> None:
        write_json(self.path / RUN_INFO, info)

    def checkpoint(self, seed: int, name: str) -> Path:
        return self.seed_dir(seed) / CHECKPOINTS / f"{name}.ckpt"

    def results(self) -> dict[str, Any]:
        path = self.path / RESULTS
        return read_json(path) if path.exists() else {}

    def write_results(self, summary: dict[str, Any], line: dict[str, Any]) -> None:
        """results.csv (``line``), then results.json (``summary``), which marks the run finished."""
        write_csv(self.path / RESULTS_LINE, pd.DataFrame([line]))
        write_json(self.path / RESULTS, summary)


def write_predictions(folder: Path, table: pd.DataFrame) -> None:
    write_csv(folder / PREDICTIONS, table)


def write_seed_metrics(folder: Path, metrics: dict[str, Any]) -> None:
    """A seed's metrics.json, written after its other files: it marks the seed finished."""
    write_json(folder / METRICS, metrics)


def seed_metrics(folder: Path) -> dict[str, Any] | None:
    """A finished seed's metrics (None when the seed is not finished)."""
    path = folder / METRICS
    return read_json(path) if path.exists() else None
