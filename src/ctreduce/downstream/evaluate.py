"""``ctreduce evaluate``: recompute metrics, intervals and plots from saved test predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..store.finetune import CONFIG, METRICS, PREDICTIONS, FinetuneRun
from .datasets import task_source
from .finetune import score, write_results


class EvaluateError(ValueError):
    """The folder is not a fine-tuning run, or its predictions are unreadable."""


def evaluate_run(run_dir: str | Path, *, bootstrap: int = 1000, positive_label: int | None = None) -> dict[str, Any]:
    """Score every ``seed*/predictions.csv`` of a ``ctreduce finetune`` run again."""
    run = FinetuneRun(run_dir)
    config = run.config()
    if config is None:
        raise EvaluateError(f"{run_dir}: no {CONFIG}; is it a folder written by 'ctreduce finetune'?")
    positive = config.get("positive_label", 1) if positive_label is None else positive_label
    seed_dirs = run.seed_dirs()
    if not seed_dirs:
        raise EvaluateError(f"{run_dir}: no seed<N>/{PREDICTIONS}")
    per_seed = []
    classes: list[str] = []
    for seed, folder in seed_dirs:
        table = pd.read_csv(folder / PREDICTIONS)
        prob_columns = [c for c in table.columns if c.startswith("prob_")]
        if "label" not in table or not prob_columns:
            raise EvaluateError(f"{folder / PREDICTIONS}: expected columns label and prob_<class>")
        classes = [c.removeprefix("prob_") for c in prob_columns]
        previous = json.loads((folder / METRICS).read_text()) if (folder / METRICS).exists() else {}
        extra = {k: previous[k] for k in ("best_epoch", "resumed", "seconds", "normalisation") if k in previous}
        per_seed.append(score(folder, classes, table["label"].to_numpy(), table[prob_columns].to_numpy(np.float64),
                              positive_label=positive, bootstrap=bootstrap, seed=seed, extra=extra))
    info = {"task": task_source(config.get("task") or {}),
            "classes": classes, "init": config.get("init"), "mode": config.get("mode"),
            "seeds": [r["seed"] for r in per_seed]}
    previous = run.results()
    info.update({k: previous[k] for k in ("task", "split_sizes", "trainer", "threads") if k in previous})
    return write_results(run.path, info, per_seed)
