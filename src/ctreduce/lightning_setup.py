"""The Lightning set-up shared by pre-training and fine-tuning: devices, strategy, precision, loggers, threads.

One place decides what ``accelerator``/``devices``/``strategy``/``precision`` = ``auto`` mean, how many
processes a run has, which loggers write (CSV always, TensorBoard when installed) and how many CPU
threads each process uses (:func:`ctreduce.core.devices.thread_policy`), so that a fine-tune runs exactly as
a pre-training run on the same machine.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm

from .config import ACCELERATORS
from .core.devices import ThreadPolicy, thread_policy

# Lightning's rank-zero messages go to these loggers (fabric's or pytorch_lightning's, whichever set it last).
_RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


def resolve(*, accelerator: str = "auto", devices: int | str = "auto", strategy: str = "auto",
            precision: str = "auto", num_nodes: int = 1, sync_batchnorm: bool = False) -> dict[str, Any]:
    """Trainer keyword arguments with the ``auto`` choices made.

    ``accelerator`` auto: a GPU when CUDA is available, else the CPU. ``precision`` auto: ``16-mixed`` on a
    GPU, ``32-true`` elsewhere. ``strategy`` auto: ``ddp`` when several processes (devices, ``auto`` or -1 counted
    as the GPUs present, or nodes; on CPU too, with gloo). ``sync_batchnorm`` (the module's wish) only on several
    GPUs: SyncBatchNorm has no CPU kernel.
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {accelerator!r}; choose one of {', '.join(ACCELERATORS)}")
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"accelerator {accelerator!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    if precision == "auto":
        precision = "16-mixed" if accelerator in ("gpu", "cuda") else "32-true"
    several = num_nodes > 1 or local_processes({"devices": devices, "accelerator": accelerator}) > 1
    return {"accelerator": accelerator, "precision": precision, "devices": devices,
            "strategy": strategy if strategy != "auto" else ("ddp" if several else "auto"),
            "num_nodes": num_nodes, "sync_batchnorm": bool(sync_batchnorm and several and accelerator != "cpu")}


def local_processes(settings: dict[str, Any]) -> int:
    """Training processes on this machine: one per device."""
    devices = settings["devices"]
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, list | tuple):
        return max(1, len(devices))
    if settings["accelerator"] in ("gpu", "cuda") and devices in (-1, "auto"):
        return max(1, torch.cuda.device_count())
    return 1


def world_size(settings: dict[str, Any]) -> int:
    """Processes over all nodes: the factor between the per-device and the global batch."""
    return local_processes(settings) * settings["num_nodes"]


def threads(settings: dict[str, Any], requested_workers: int) -> ThreadPolicy:
    """The thread policy of one training process of this set-up, applied (run ``fit`` inside its ``handed_on()``
    so that DDP's other processes take the same)."""
    policy = thread_policy(requested_workers, accelerator="cpu" if settings["accelerator"] == "cpu" else "gpu",
                           processes=local_processes(settings))
    policy.apply()
    return policy


def launched_rank() -> int:
    """Global rank of this process as set by the launcher (Lightning's "ddp", torchrun, SLURM); 0 otherwise."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank


def loggers(folder: str | Path) -> list[pl.loggers.Logger]:
    """CSV logs under ``folder/csv``; TensorBoard logs under ``folder/tensorboard`` when tensorboard is installed."""
    out: list[pl.loggers.Logger] = [pl.loggers.CSVLogger(folder, name="csv")]
    try:
        out.append(pl.loggers.TensorBoardLogger(folder, name="tensorboard"))
    except ModuleNotFoundError:
        warnings.warn("tensorboard is not installed: only CSV logs are written", stacklevel=2)
    return out


class SyncBatchNorm(TorchSyncBatchNorm):
    """Lightning's SyncBatchNorm conversion, or the module's own ``synchronise_batchnorm(bool)`` where it has one:
    torch's conversion replaces every BatchNorm subclass by a plain ``SyncBatchNorm`` (SparK's sparse BNs would
    become dense ones)."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return self._convert(model, True, super().apply)

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        return self._convert(model, False, super().revert)

    @staticmethod
    def _convert(model: torch.nn.Module, on: bool, torchs: Callable[[torch.nn.Module], torch.nn.Module]
                 ) -> torch.nn.Module:
        own = getattr(model, "synchronise_batchnorm", None)
        if own is None:
            return torchs(model)
        own(on)
        return model


def _no_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Drop what a user cannot act on: Lightning's advertising tips (LitLogger, litmodels) and the FutureWarning
    Lightning's own ``_pytree`` triggers in torch on every fit."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _no_tips not in logger.filters:
            logger.addFilter(_no_tips)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


def build(settings: dict[str, Any], *, root: str | Path, logs: str | Path, callbacks: list[pl.Callback],
          max_epochs: int, steps_per_epoch: int, max_steps: int = -1, log_every_n_steps: int = 10,
          **extra: Any) -> pl.Trainer:
    """The Trainer of a run folder ``root``: ``settings`` from :func:`resolve`, logs under ``logs``, a progress
    bar, deterministic algorithms on CPU (reproducible runs where it costs nothing), ``extra`` passed on.
    ``sync_batchnorm`` goes in as the :class:`SyncBatchNorm` plugin (``trainer.strategy._layer_sync``)."""
    quiet_lightning()
    plugins = list(extra.pop("plugins", None) or [])
    if settings.get("sync_batchnorm"):
        plugins.append(SyncBatchNorm())
    return pl.Trainer(max_epochs=max_epochs, max_steps=max_steps, callbacks=callbacks, logger=loggers(logs),
                      log_every_n_steps=min(log_every_n_steps, max(1, steps_per_epoch)),
                      deterministic=settings["accelerator"] == "cpu", benchmark=False, enable_progress_bar=True,
                      default_root_dir=root, **{**settings, "sync_batchnorm": False}, plugins=plugins or None,
                      **extra)
