"""ctreduce: reduce CT archives to their dissimilar slices before self-supervised pre-training.

Implements Wolf et al. 2024, "Less is More" (arXiv 2410.14524). The public API is imported
lazily so that ``import ctreduce`` and the command line start fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "Volume": "ctreduce.io.volume",
    "VolumeSource": "ctreduce.io.volume",
    "VolumeError": "ctreduce.io.volume",
    "read_volume": "ctreduce.io.discover",
    "scan": "ctreduce.io.discover",
    "ReduceConfig": "ctreduce.config",
    "RunOptions": "ctreduce.config",
    "Intensity": "ctreduce.io.intensity",
    "reduce_volume": "ctreduce.reduction.selection",
    "reduce": "ctreduce.exporting.onepass",
    "ReduceResult": "ctreduce.reduction.run",
    "read_sources": "ctreduce.store.run",
    "export": "ctreduce.exporting.from_run",
    "dhash": "ctreduce.reduction.hashing",
    "DHash": "ctreduce.core.dhash",
    "pretrain": "ctreduce.ssl.pretrain",
    "PretrainConfig": "ctreduce.config",
    "FinetuneConfig": "ctreduce.config",
    "finetune": "ctreduce.downstream.finetune",
    "run_experiment": "ctreduce.experiment.runner",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'ctreduce' has no attribute {name!r}")
