"""What every pre-training method shares: backbone, optimiser, warm-up + cosine schedule.

A method subclasses ``SSLMethod``, names itself as registered (``name``, its ``ctreduce.config.PretrainMethod``:
settings, presets, optimiser) and implements ``training_loss(batch)`` (the batch is what its ``views``
transform returns, collated), ``views(config, mean, std)`` and ``batch_views(config, mean, std)`` (the same views
made on the training device from a batch of uint8 slices: ``ctreduce.ssl.batch_views``). Schedules are counted
in optimiser steps so that they do not depend on how an epoch is cut.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from lightly.utils.scheduler import cosine_schedule

from .. import backbones
from ..config import PretrainConfig, pretrain_method
from .batch_views import BatchView, BatchViews
from .data import Timed

SPARK_BETAS = (0.9, 0.95)  # official SparK for ResNets: betas=(0.9, args.ada), ada = 0.95


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up ``(step + 1) / warmup``, then a cosine from 1 to 0 after the last step.

    The cosine is lightly's ``cosine_schedule`` over ``total - warmup + 1`` steps: lightly reaches its end value
    at the last of its steps, the official SwAV and MoCo schedules one step after training (``t / N``, t < N).
    The warm-up is not lightly's ``cosine_warmup_schedule``, which refuses a warm-up longer than the run.
    """
    if step < warmup:
        return (step + 1) / warmup
    return cosine_schedule(min(step, total) - warmup, total - warmup + 1, 1.0, 0.0)


class SSLMethod(pl.LightningModule):
    """Base LightningModule: ``self.backbone`` is a torchvision ResNet without ``fc`` (``ctreduce.backbones``)."""

    name = "base"  # a subclass: the name it is registered under

    def __init__(self, config: PretrainConfig, steps_per_epoch: int) -> None:
        super().__init__()
        self.config = config
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.backbone = backbones.build(config.backbone)
        self.feature_dim = backbones.feature_dim(self.backbone)
        self.save_hyperparameters({"config": config.model_dump(), "steps_per_epoch": self.steps_per_epoch})

    # Subclasses define ``views(config, mean, std)`` (a staticmethod returning the per-slice
    # transform), ``batch_views`` and ``training_loss(batch)``.

    device_views: BatchViews | None = None  # set by the run for ``views_on: device``: views made in training_step

    @staticmethod
    def batch_views(config: PretrainConfig, mean: float, std: float) -> list[BatchView] | None:
        """The views of ``views``, made on the device from whole batches (one :class:`BatchView` per view); None:
        the method makes its views in the loader only (a plug-in need not define both)."""
        return None

    @property
    def total_steps(self) -> int:
        if self.config.max_steps > 0:
            return self.config.max_steps
        return self.config.epochs * self.steps_per_epoch

    def on_train_start(self) -> None:
        # Each process, and each resumed session, draws its own device views' parameters.
        if self.device_views is not None:
            self.device_views.reseed(hash((self.config.seed, self.global_rank, self.global_step)) % 2**62)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, Timed):
            batch = batch.item
        if self.device_views is not None:
            batch = self.device_views(batch)
        loss = self.training_loss(batch)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True,
                 batch_size=self.config.batch_size)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False,
                 batch_size=self.config.batch_size)
        return loss

    def callbacks(self) -> list[pl.Callback]:
        """Lightning callbacks the method adds to its run (SwAV: a warning when its codes collapse)."""
        return []

    def summary_extra(self) -> dict[str, Any]:
        """Method-specific facts of the finished run for summary.json (e.g. the queue length used)."""
        return {}

    def export_backbone(self) -> dict[str, torch.Tensor]:
        return backbones.export_state_dict(self.backbone)

    def optimiser_settings(self) -> tuple[str, float, float]:
        kind, _, weight_decay = pretrain_method(self.name).optimiser
        wd = self.config.weight_decay if self.config.weight_decay is not None else weight_decay
        return self.config.optimizer or kind, self.lr_scaling()["lr"], wd

    def lr_scaling(self) -> dict[str, Any]:
        """The learning rate and how it follows from the global batch (``batch_size`` x processes over all
        devices and nodes, known once a trainer is attached), for summary.json: the method's rate at a batch of 256
        scaled linearly, as the official SwAV, MoCo and SparK code (``lr = base_lr x global_batch / 256``), or the
        configured ``lr`` as given."""
        world = max(1, getattr(self.trainer, "world_size", 1) if self._trainer is not None else 1)
        global_batch = self.config.batch_size * world
        base_lr = pretrain_method(self.name).optimiser.lr_at_256
        fixed = self.config.lr is not None
        return {"rule": "as configured (lr), not scaled" if fixed else "linear: base_lr x global_batch / 256",
                "base_lr": None if fixed else base_lr, "batch_size": self.config.batch_size, "processes": world,
                "global_batch": global_batch, "lr": self.config.lr if fixed else base_lr * global_batch / 256}

    def parameter_groups(self, wd: float) -> list[dict[str, Any]]:
        """One group, every parameter decayed (the official SwAV/MoCo code and the paper's scripts:
        LARS then also scales every parameter), or, with ``decay_norm_and_bias=False``, norms and
        biases in a second group without weight decay (SparK's official recipe; LARS and LAMB
        then leave them unscaled). Not lightly's ``get_weight_decay_parameters``: it decays 1-D parameters
        outside norm layers (SparK's mask tokens, which official SparK exempts) and returns frozen ones
        (MoCo's key encoder)."""
        params = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        if self.config.decay_norm_and_bias:
            return [{"params": [p for _, p in params], "weight_decay": wd}]
        decay = [p for name, p in params if p.ndim > 1 and not name.endswith(".bias")]
        no_decay = [p for name, p in params if p.ndim <= 1 or name.endswith(".bias")]
        return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        kind, lr, wd = self.optimiser_settings()
        groups = self.parameter_groups(wd)
        if kind == "lars":
            from lightly.utils.lars import LARS

            optimiser = LARS(groups, lr=lr, momentum=0.9)
        elif kind == "sgd":
            optimiser = torch.optim.SGD(groups, lr=lr, momentum=0.9)
        elif kind == "lamb":
            optimiser = lamb(groups, lr)
        elif kind == "adamw":
            optimiser = torch.optim.AdamW(groups, lr=lr)
        else:
            raise ValueError(f"unknown optimizer {kind!r}; choose lars, sgd, lamb or adamw")
        warmup = self.config.warmup_epochs * self.steps_per_epoch
        total = self.total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lamb(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """timm's ``Lamb`` (You et al. 2020) as official SparK builds it: SparK's ``pretrain/utils/lamb.py`` is a copy
    of timm 0.5.4's (``tests/test_ssl_spark.py`` checks timm's current one step by step against it), with
    ``betas=(0.9, 0.95)``, timm's ``eps=1e-6``, no trust-ratio cap (``trust_clip=False``) and no trust ratio
    for a group without weight decay (``always_adapt=False``). Its gradient-norm clipping at 5 is left to the
    Trainer (``PretrainConfig.grad_clip`` -> ``gradient_clip_val``: the same ``g * 5 / ||g||``), so that it
    also applies when another optimiser is chosen, as in official SparK."""
    try:
        from timm.optim import Lamb
    except ModuleNotFoundError as exc:  # pragma: no cover - timm is part of the train extra
        raise ModuleNotFoundError("the LAMB optimiser needs timm: pip install 'ctreduce[train]'") from exc
    return Lamb(groups, lr=lr, betas=SPARK_BETAS, eps=1e-6, max_grad_norm=None, trust_clip=False, always_adapt=False)
