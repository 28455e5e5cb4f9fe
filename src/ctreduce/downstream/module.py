"""The paper's fine-tuning protocol as a LightningModule: one ResNet with a linear head ``fc``, three modes.

* ``finetune`` (Wolf et al. 2024): for the first ``head_only_epochs`` only the head and every BatchNorm
  layer train, then every layer; Adam (lr 1e-4, weight decay 5e-4 in the paper) at the learning rate of each
  epoch that ``schedule`` gives (``protocol.lr_at``: ``paper``, as the notebooks ran, lr until the unfreezing
  epoch and lr x 0.2 after it, Adam's state kept; ``constant``, lr throughout and a fresh Adam state when every
  layer starts training, as a new optimiser over all parameters would);
* ``linear``: a linear probe; only the head trains, the backbone (BatchNorm statistics included) stays fixed;
* ``knn`` (Wu et al. 2018): no training; weighted kNN on the backbone's L2-normalised features.

Freezing under DDP: DistributedDataParallel synchronises only the parameters that require gradients when
it wraps the model, so in ``finetune`` mode every parameter keeps ``requires_grad`` and the head-only
epochs drop the other gradients before each optimiser step (Adam leaves a parameter without a gradient
untouched, weight decay included). The price is computing the backbone's weight gradients in those epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchmetrics.classification import MulticlassAccuracy

from .protocol import SCHEDULES, lr_at

MODES = ("finetune", "linear", "knn")
PHASES = ("head", "head+bn", "all")


def trainable_names(model: nn.Module, phase: str) -> set[str]:
    """Parameter names that train in ``phase``: ``head`` (``fc.*``), ``head+bn`` (the head and every
    BatchNorm layer: the paper's first epochs) or ``all``."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    names = {name for name, _ in model.named_parameters()}
    if phase == "all":
        return names
    keep = {name for name in names if name.startswith("fc.")}
    if phase == "head+bn":
        keep |= {f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
                 if isinstance(module, _BatchNorm) for name, _ in module.named_parameters(recurse=False)}
    return keep


class FinetuneModule(pl.LightningModule):
    """``model`` (a torchvision ResNet whose ``fc`` is the new ``nn.Linear`` head) trained by ``mode``.

    Logs ``train_loss`` (mean over the epoch's images) and ``val_accuracy`` (of the argmax, over the
    validation split; under DDP it counts the few images Lightning's distributed sampler repeats to give
    every device the same number), which a ``ModelCheckpoint(monitor="val_accuracy", mode="max")``
    uses to keep the best epoch.
    """

    def __init__(self, model: nn.Module, n_classes: int, *, mode: str = "finetune", lr: float = 1e-4,
                 weight_decay: float = 5e-4, head_only_epochs: int = 10, schedule: str = "paper") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if not isinstance(getattr(model, "fc", None), nn.Linear):
            raise ValueError(f"model must have a linear head 'fc', got {type(getattr(model, 'fc', None)).__name__}")
        if n_classes < 2 or model.fc.out_features != n_classes:
            raise ValueError(f"the head has {model.fc.out_features} outputs for {n_classes} classes")
        if lr <= 0 or weight_decay < 0 or head_only_epochs < 0:
            raise ValueError(f"need lr > 0, weight_decay >= 0, head_only_epochs >= 0; got {lr}, {weight_decay}, "
                             f"{head_only_epochs}")
        self.model = model
        self.mode, self.lr, self.weight_decay, self.head_only_epochs = mode, lr, weight_decay, head_only_epochs
        self.schedule = schedule
        self.val_accuracy = MulticlassAccuracy(n_classes, average="micro")
        self._dropped: list[nn.Parameter] = []
        if mode != "finetune":  # the backbone never trains: DDP need not see it, autograd need not track it
            for name, param in model.named_parameters():
                param.requires_grad = name.startswith("fc.")

    def phase(self, epoch: int) -> str:
        if self.mode != "finetune":
            return "head"
        return "head+bn" if epoch < self.head_only_epochs else "all"

    def trainable_parameters(self, phase: str) -> int:
        names = trainable_names(self.model, phase)
        return sum(p.numel() for name, p in self.model.named_parameters() if name in names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True) -> FinetuneModule:
        super().train(mode)
        if self.mode != "finetune":  # a linear probe keeps the backbone's BatchNorm statistics
            for module in self.model.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                weight_decay=self.weight_decay)

    def on_train_epoch_start(self) -> None:
        self.train()  # Lightning starts the first epoch without calling train(): the linear probe's BatchNorm
        keep = trainable_names(self.model, self.phase(self.current_epoch))
        self._dropped = [p for name, p in self.model.named_parameters() if p.requires_grad and name not in keep]
        optimizer = self.optimizers().optimizer
        lr = lr_at(self.current_epoch, self.lr, self.head_only_epochs, self.schedule) if self.mode == "finetune" \
            else self.lr  # a linear probe never unfreezes
        for group in optimizer.param_groups:
            group["lr"] = lr
        if self.schedule == "constant" and self.mode == "finetune" and self.current_epoch == self.head_only_epochs > 0:
            optimizer.state.clear()  # every layer trains now: a fresh Adam, as a new optimiser

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for param in self._dropped:
            param.grad = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_accuracy(self(x).argmax(dim=1), y)
        self.log("val_accuracy", self.val_accuracy, on_step=False, on_epoch=True, batch_size=len(y))

    @torch.no_grad()
    def probabilities(self, loader) -> tuple[np.ndarray, np.ndarray]:
        """Softmax probabilities (N, K) and labels (N,) of a loader, in its order, in full precision."""
        self.eval()
        probs, labels = [], []
        for x, y in loader:
            probs.append(torch.softmax(self(x.to(self.device)).float(), dim=1).cpu())
            labels.append(y)
        return torch.cat(probs).numpy().astype(np.float64), torch.cat(labels).numpy()

    @torch.no_grad()
    def features(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised backbone features (N, D) (the head left out) and labels (N,) of a loader."""
        self.eval()
        head, self.model.fc = self.model.fc, nn.Identity()
        try:
            feats, labels = [], []
            for x, y in loader:
                feats.append(nn.functional.normalize(self(x.to(self.device)).float(), dim=1).cpu())
                labels.append(y)
        finally:
            self.model.fc = head
        return torch.cat(feats), torch.cat(labels)


def knn_probabilities(train_f: torch.Tensor, train_y: torch.Tensor, query: torch.Tensor, k: int,
                      n_classes: int, temperature: float = 0.07) -> np.ndarray:
    """Weighted kNN on cosine similarity (Wu et al. 2018): class votes exp(sim / T) of the k nearest, normalised.

    The vote is that of lightly's ``knn_predict`` (same top-1 class, tested); kept because ``knn_predict``
    returns only the classes in order, and AUC needs the votes.
    """
    sims = query @ train_f.T
    top, idx = sims.topk(min(k, train_f.shape[0]), dim=1)
    votes = torch.zeros(query.shape[0], n_classes).scatter_add_(1, train_y[idx], (top / temperature).exp())
    return (votes / votes.sum(dim=1, keepdim=True)).numpy().astype(np.float64)


class EpochHistory(pl.Callback):
    """``history.jsonl`` (rank 0): per epoch the train loss, validation accuracy, phase and trainable
    parameters; a resumed run first drops the rows of the epochs it trains again."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: FinetuneModule) -> None:
        if trainer.is_global_zero and self.path.exists():
            rows = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["epoch"] < trainer.current_epoch]
            self.path.write_text("".join(f"{row}\n" for row in rows))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: FinetuneModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        phase = pl_module.phase(trainer.current_epoch)
        row = {"epoch": trainer.current_epoch, "train_loss": float(metrics["train_loss"]),
               "val_accuracy": float(metrics["val_accuracy"]), "phase": phase,
               "trainable_parameters": pl_module.trainable_parameters(phase),
               "lr": float(trainer.optimizers[0].param_groups[0]["lr"])}  # as the epoch trained
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
