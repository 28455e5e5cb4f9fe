"""``ctreduce evaluate``: recompute metrics, intervals and plots from saved test predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .datasets import task_source
from .finetune import score, write_results


class EvaluateError(ValueError):
    """The folder is not a fine-tuning run, or its predictions are unreadable."""


def evaluate_run(run_dir: str | Path, *, bootstrap: int = 1000, positive_label: int | None = None) -> dict[str, Any]:
    """Score every ``seed*/predictions.csv`` of a ``ctreduce finetune`` run again."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise EvaluateError(f"{run_dir}: no config.yaml; is it a folder written by 'ctreduce finetune'?")
    config = yaml.safe_load(config_file.read_text())
    positive = config.get("positive_label", 1) if positive_label is None else positive_label
    seed_dirs = sorted(p for p in run_dir.glob("seed*") if (p / "predictions.csv").exists())
    if not seed_dirs:
        raise EvaluateError(f"{run_dir}: no seed*/predictions.csv")
    per_seed = []
    classes: list[str] = []
    for folder in seed_dirs:
        table = pd.read_csv(folder / "predictions.csv")
        prob_columns = [c for c in table.columns if c.startswith("prob_")]
        if "label" not in table or not prob_columns:
            raise EvaluateError(f"{folder / 'predictions.csv'}: expected columns label and prob_<class>")
        classes = [c.removeprefix("prob_") for c in prob_columns]
        previous = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else {}
        extra = {k: previous[k] for k in ("best_epoch", "seconds") if k in previous}
        seed = int(folder.name.removeprefix("seed"))
        per_seed.append(score(folder, classes, table["label"].to_numpy(), table[prob_columns].to_numpy(np.float64),
                              positive_label=positive, bootstrap=bootstrap, seed=seed, extra=extra))
    info = {"task": task_source(config.get("task") or {}),
            "classes": classes, "init": config.get("init"), "mode": config.get("mode"),
            "seeds": [r["seed"] for r in per_seed]}
    if (run_dir / "results.json").exists():
        previous = json.loads((run_dir / "results.json").read_text())
        info.update({k: previous[k] for k in ("task", "split_sizes") if k in previous})
    return write_results(run_dir, info, per_seed)
