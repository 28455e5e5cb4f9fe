"""Downstream evaluation of a backbone on a task (the paper's COVID-CT, OrganSMNIST and folder tasks).

The task data (specs, loaders, splits) is :mod:`ctreduce.tasks`'s, without torch. Submodules here:
:mod:`.datasets` (a split as a torch dataset), :mod:`.metrics` (accuracy, AUC, F1 and
plots: scikit-learn's; bootstrap intervals: the same numbers with NumPy), :mod:`.module` (the
fine-tuning protocol as a LightningModule), :mod:`.finetune` (the run: seeds, trainer, scoring),
:mod:`.evaluate` (scoring saved predictions again) and :mod:`.synthetic` (a phantom lung-nodule
task for tests and quick experiments). Names are imported lazily so that
``import ctreduce.downstream`` needs no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_API = {
    "ImageDataset": "datasets",
    "BootstrapCI": "metrics",
    "MeanSD": "metrics",
    "MetricWarning": "metrics",
    "bootstrap_ci": "metrics",
    "bootstrap_values": "metrics",
    "classification_metrics": "metrics",
    "confusion_matrix": "metrics",
    "format_mean_sd": "metrics",
    "mean_sd": "metrics",
    "save_confusion_matrix_png": "metrics",
    "save_roc_png": "metrics",
    "make_lesion_task": "synthetic",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
