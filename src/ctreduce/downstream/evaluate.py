"""Scoring a fine-tune's test predictions (metrics, intervals, plots, the run's summary) and ``ctreduce evaluate``,
which recomputes them from the saved predictions; no Lightning needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..store.finetune import (
    CONFIG,
    CONFUSION,
    PREDICTIONS,
    ROC,
    FinetuneRun,
    seed_metrics,
    write_predictions,
    write_seed_metrics,
)
from ..tasks.spec import task_source
from .metrics import bootstrap_ci, classification_metrics, mean_sd, save_confusion_matrix_png, save_roc_png


class EvaluateError(ValueError):
    """The folder is not a fine-tuning run, or its predictions are unreadable."""


# What a seed's metrics.json records of its training (``finetune.run_seed``): kept when the metrics are recomputed
TRAINING_RECORD = ("best_epoch", "resumed", "seconds", "normalisation", "transforms", "schedule", "lr_by_epoch")


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
        previous = seed_metrics(folder) or {}
        extra = {k: previous[k] for k in TRAINING_RECORD if k in previous}
        per_seed.append(score(folder, classes, table["label"].to_numpy(), table[prob_columns].to_numpy(np.float64),
                              positive_label=positive, bootstrap=bootstrap, seed=seed, extra=extra))
    info = {"task": task_source(config.get("task") or {}),
            "classes": classes, "init": config.get("init"), "mode": config.get("mode"),
            "seeds": [r["seed"] for r in per_seed]}
    previous = run.results()
    info.update({k: previous[k] for k in ("task", "split_sizes", "epochs", "head_only_epochs", "notes", "trainer",
                                          "threads") if k in previous})
    return write_results(run, info, per_seed)


def save_predictions(folder: Path, names: list[str], labels: np.ndarray, prob: np.ndarray, classes: list[str]) -> None:
    """A seed's predictions.csv: name, label and one probability column ``prob_<class>`` per class."""
    table = pd.DataFrame({"name": names, "label": labels})
    for k, cls in enumerate(classes):
        table[f"prob_{cls}"] = prob[:, k]
    write_predictions(folder, table)


def score(out: Path, classes: list[str], labels: np.ndarray, prob: np.ndarray, *, positive_label: int,
          bootstrap: int, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Test metrics with bootstrap 95% intervals and the confusion/ROC plots of one seed."""
    metrics = classification_metrics(labels, prob, positive_label=positive_label)
    intervals = {name: bootstrap_ci(labels, prob, name, n=bootstrap, seed=seed, positive_label=positive_label)
                 for name in ("accuracy", "auc", "f1")}
    save_confusion_matrix_png(np.asarray(metrics["confusion_matrix"]), classes, out / CONFUSION)
    save_roc_png(labels, prob, classes, out / ROC, positive_label=positive_label)
    result = {"seed": seed, **extra, **metrics, "ci95": intervals}
    write_seed_metrics(out, result)
    return result


def write_results(run: FinetuneRun, info: dict[str, Any], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's results.json (per seed, mean +- sd) and its one-line results.csv."""
    summary = dict(info)
    for name in ("accuracy", "auc", "f1", "f1_macro"):
        values = [r[name] for r in per_seed if r.get(name) is not None and not np.isnan(r[name])]
        if values:
            summary[name] = mean_sd(values)
    summary["per_seed"] = per_seed
    line = {k: info[k] for k in ("task", "init", "mode")} | {"seeds": len(per_seed)}
    for name in ("accuracy", "auc", "f1"):
        if name in summary:
            line[f"{name}_mean"], line[f"{name}_sd"] = summary[name]["mean"], summary[name]["sd"]
    run.write_results(summary, line)
    return summary
