"""The experiment folder (``ctreduce experiment``): names, writers and readers.

Layout (``OUT``)::

    experiment.yaml          the experiment file as validated, every default filled in
    cache/<stage>/<key>/     one stage of one cell; ``key`` hashes the stage's settings and its upstream keys
        done.json            written last, once the stage finished: its seconds, description and what it
                             reports (kept slices, images seen, leaks...); a stage without it runs again
        run/                 reduce, pretrain, finetune: the stage's run folder (owned by ``store.run``,
                             ``store.pretrain``, ``store.finetune``)
        data/                export: the export (``store.export``)
        leakage/             leakage: the leakage tables (``store.curation``)
        archive/, task/      data: a generated phantom archive, a synthetic downstream task
        pretrain.yaml        pretrain on several devices: the settings its own ``ctreduce pretrain`` reads
    results.csv              one row per cell (dataset x reduction x SSL method), every task's metrics
    results.md               the paper's table
    plots/                   one PNG per figure

The stages are ``data``, ``reduce``, ``export``, ``pretrain``, ``finetune`` and ``leakage``. ``done.json``
is strict JSON and, like every file written here, replaced atomically; nothing finished is ever deleted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from .files import atomic_write, read_json, write_csv, write_json, write_yaml

CONFIG = "experiment.yaml"
CACHE = "cache"
DONE = "done.json"
RUN = "run"
EXPORT = "data"
LEAKAGE = "leakage"
ARCHIVE = "archive"
TASK = "task"
PRETRAIN_SETTINGS = "pretrain.yaml"
RESULTS = "results.csv"
TABLE = "results.md"
PLOTS = "plots"


class ExperimentFolder:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    def stage(self, stage: str, key: str) -> Path:
        """The folder of one stage (not created)."""
        return self.path / CACHE / stage / key

    def write_config(self, config: dict[str, Any]) -> None:
        write_yaml(self.path / CONFIG, config)

    def write_results(self, table: pd.DataFrame, markdown: str) -> None:
        write_csv(self.path / RESULTS, table)
        atomic_write(self.path / TABLE, lambda p: p.write_text(markdown))


def done(folder: Path) -> dict[str, Any] | None:
    """What a finished stage reported (its done.json), None while it is not finished."""
    path = folder / DONE
    return read_json(path) if path.exists() else None


def mark_done(folder: Path, info: dict[str, Any]) -> None:
    """Mark a stage finished, after everything it wrote."""
    write_json(folder / DONE, info)


def write_pretrain_settings(folder: Path, settings: dict[str, Any]) -> Path:
    """The settings file a stage's own ``ctreduce pretrain --config`` process reads."""
    path = folder / PRETRAIN_SETTINGS
    write_yaml(path, settings)
    return path
