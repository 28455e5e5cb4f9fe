"""SwAV: online clustering with swapped prediction (Caron et al. 2020), multi-crop, optional queue.

M. Caron, I. Misra, J. Mairal, P. Goyal, P. Bojanowski, A. Joulin, "Unsupervised Learning of
Visual Features by Contrasting Cluster Assignments", NeurIPS 2020, arXiv:2006.09882.

Each crop x_t gives an L2-normalised projection z_t; its scores against the K unit-norm
prototypes C = [c_1..c_K] are z_t^T C. Swapped prediction (SwAV Eq. 1 and 2)::

    L(z_t, z_s) = l(z_t, q_s) + l(z_s, q_t),
    l(z_t, q_s) = - sum_k q_s^(k) log p_t^(k),   p_t^(k) = softmax_k(z_t^T c_k / tau)

The codes q of the global (high-resolution) crops are computed without gradients by solving,
per batch, the entropy-regularised transport problem of SwAV Sec. 3.1::

    max_{Q in Q}  Tr(Q^T C^T Z) + eps * H(Q),
    Q = {Q in R_+^{K x B} : Q 1_B = 1_K / K,  Q^T 1_K = 1_B / B}    (equal partition)

whose solution is Q* = Diag(u) exp(C^T Z / eps) Diag(v); u and v come from a few Sinkhorn-Knopp
iterations (alternate row and column normalisation). Every crop predicts the code of every other
global crop (multi-crop, Sec. 3.2). With a queue, projections of earlier batches join the
Sinkhorn problem (more samples per equal partition) but not the loss (Sec. 4 / App. A).
The loss and sinkhorn are lightly's ``SwaVLoss``, the prototype layer lightly's ``SwaVPrototypes``
with bias-free heads (the official ``nn.Linear(128, K, bias=False)``: scores are cosine
similarities). Every setting, its source in the official code and the paper's script, and the
quirks of the paper's script not copied: docs/paper-fidelity.md (SwAV).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightly.loss import SwaVLoss
from lightly.models.modules.heads import SwaVProjectionHead, SwaVPrototypes
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.utils import dist as lightly_dist
from torch import nn
from torch.nn import functional as F

from ..config import PretrainConfig
from .augment import ct_view
from .base import SSLMethod
from .batch_views import BatchView, ct_batch_view
from .moco import fit_queue_length


def bias_free_prototypes(input_dim: int, n_prototypes: int, n_steps_frozen: int) -> SwaVPrototypes:
    """lightly's ``SwaVPrototypes`` with ``nn.Linear(input_dim, K, bias=False)`` heads, as the official
    code (lightly's heads have a bias, which ``normalize()`` leaves alone: scores z^T c_k + b_k would
    no longer be cosine similarities). Same default initialisation as the official layer."""
    prototypes = SwaVPrototypes(input_dim, n_prototypes, n_steps_frozen_prototypes=n_steps_frozen)
    prototypes.heads = nn.ModuleList([nn.Linear(input_dim, k, bias=False) for k in prototypes.n_prototypes])
    return prototypes


class CollapseWarning(pl.Callback):
    """SwAV's loss stuck at ln(#prototypes) means every sample gets the same uniform code."""

    def __init__(self, n_prototypes: int, patience: int) -> None:
        self.level = math.log(n_prototypes)
        self.patience = patience
        self.stuck = 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("loss_epoch")
        if loss is None:
            return
        self.stuck = self.stuck + 1 if abs(float(loss) - self.level) < 0.01 * self.level else 0
        if self.stuck == self.patience:
            warnings.warn(
                f"SwAV loss has stayed at ln({round(math.exp(self.level))}) = {self.level:.3f} for "
                f"{self.patience} epochs: the codes have collapsed to uniform. Usual remedies: a "
                "smaller sinkhorn_epsilon (swav.sinkhorn_epsilon=0.03), freezing the prototypes "
                "longer (swav.freeze_prototypes_steps), starting the queue later or making it smaller "
                "(swav.queue_start_epoch, swav.queue_length), or a lower lr.",
                stacklevel=1,
            )


class SwAV(SSLMethod):
    """SwAV on CT slices: ``views`` returns ``global_crops`` high-resolution crops followed by
    ``local_crops`` low-resolution crops.

    Prototype freezing (``swav.freeze_prototypes_steps``) is counted in optimiser steps
    (``global_step``). On one device lightly's ``SwaVPrototypes`` freezes them by switching
    ``requires_grad`` off; under DDP that would leave registered parameters without gradients
    (DDP's "Expected to have finished reduction" error), so there the prototype gradients are
    dropped after backward instead, as in the official code. ``on_after_backward`` does this
    in both cases, so frozen prototypes are never stepped.

    With ``swav.queue_length > 0`` each global crop keeps a queue of earlier projections
    (``queue_length`` is global, as in the official code: capped to a multiple of batch_size x
    devices and to ``dataset_size``; each device holds ``queue_length / devices``). As in the
    official code and the paper's script, the queue is filled from epoch ``swav.queue_start_epoch``
    on and joins the Sinkhorn problem once it is full. The queues (lightly ``MemoryBankModule``s) are kept out
    of the module tree, like the plain tensors of the official code: DDP broadcasts registered
    buffers from rank 0 before every forward, which would replace each device's queue by rank
    0's. Checkpoints hold every device's queue, pointer and fill count (``swav_queue``; the official
    code saves ``queue{rank}.pth`` each epoch), so a resumed run goes on with its queue.
    """

    name = "swav"
    sync_batchnorm = True  # the official SwAV code synchronises BatchNorm across devices

    def __init__(self, config: PretrainConfig, steps_per_epoch: int, dataset_size: int | None = None) -> None:
        super().__init__(config, steps_per_epoch)
        settings = config.swav
        if settings.global_crops < 1 or settings.global_crops + settings.local_crops < 2:
            raise ValueError("SwAV needs at least one global crop and two crops in all "
                             f"(got {settings.global_crops} global, {settings.local_crops} local)")
        self.dataset_size = dataset_size
        self.freeze_prototypes_steps = settings.freeze_prototypes_steps
        self.projection_head = SwaVProjectionHead(
            self.feature_dim, settings.projection_hidden_dim, settings.projection_dim
        )
        self.prototypes = bias_free_prototypes(settings.projection_dim, settings.n_prototypes,
                                               settings.freeze_prototypes_steps)
        self.prototypes.normalize()
        self.world_size = 1
        self.queue_length = 0  # global
        self.queues: list[MemoryBankModule] = []  # not submodules: see the class docstring
        self._queue_filled = 0  # projections enqueued per queue on this device
        self._configure(world_size=1)

    # --- set-up ---------------------------------------------------------------------------------

    def _configure(self, world_size: int) -> None:
        """(Re)build loss and queues for ``world_size`` devices (decided in ``setup``)."""
        settings = self.config.swav
        self.world_size = world_size
        self.criterion = SwaVLoss(
            temperature=settings.temperature,
            sinkhorn_iterations=settings.sinkhorn_iterations,
            sinkhorn_epsilon=settings.sinkhorn_epsilon,
            sinkhorn_gather_distributed=world_size > 1,
        )
        if world_size > 1:
            # requires_grad toggling is unsafe under DDP: freeze in on_after_backward only
            self.prototypes.n_steps_frozen_prototypes = 0
            self.prototypes.requires_grad_(True)
        self.queue_length = fit_queue_length(
            settings.queue_length, self.config.batch_size * world_size, self.dataset_size, "swav.queue_length"
        )
        per_device = self.queue_length // world_size
        self.queues = [MemoryBankModule((per_device, settings.projection_dim), feature_dim_first=False)
                       for _ in range(settings.global_crops if per_device > 0 else 0)]
        self._queue_filled = 0

    def setup(self, stage: str) -> None:
        world = lightly_dist.world_size()  # the process group exists by ``setup`` (Lightning's DDP)
        if world != self.world_size:
            self._configure(world)

    def callbacks(self) -> list[pl.Callback]:
        return [CollapseWarning(self.config.swav.n_prototypes, self.config.collapse_patience)]

    # --- checkpoints ----------------------------------------------------------------------------

    def _gathered(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` of every process stacked in rank order (a leading axis of 1 on one device)."""
        tensor = tensor.to(self.device).contiguous()
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, tensor)  # every rank saves (Lightning calls this hook on all of them)
            return torch.stack(parts)
        return tensor.unsqueeze(0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Each device's queues (world, crops, length / world, dim), pointers and fill count: lightly's banks are
        non-persistent buffers and kept out of the module anyway (class docstring)."""
        if not self.queues:
            return
        banks = self._gathered(torch.stack([queue.bank.detach() for queue in self.queues]))
        pointers = self._gathered(torch.stack([queue.bank_ptr for queue in self.queues]))
        filled = self._gathered(torch.tensor([self._queue_filled], dtype=torch.long))
        checkpoint["swav_queue"] = {"banks": banks.cpu(), "pointers": pointers.cpu(), "filled": filled.cpu()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """This device's queues as saved (called after ``setup`` has sized them for this run)."""
        saved = checkpoint.get("swav_queue")
        if saved is None or not self.queues:
            return
        expected = (self.world_size, len(self.queues), *self.queues[0].bank.shape)
        if tuple(saved["banks"].shape) != expected:
            warnings.warn(f"the checkpoint's SwAV queues have shape {tuple(saved['banks'].shape)} (devices, crops, "
                          f"length, dim), this run's {expected}: the queue fills again from empty", stacklevel=1)
            return
        rank = self.global_rank
        with torch.no_grad():
            for queue, bank, pointer in zip(self.queues, saved["banks"][rank], saved["pointers"][rank], strict=True):
                queue.bank.copy_(bank)
                queue.bank_ptr.copy_(pointer)
        self._queue_filled = int(saved["filled"][rank, 0])

    # --- views ----------------------------------------------------------------------------------

    @staticmethod
    def views(config: PretrainConfig, mean: float, std: float) -> MultiViewTransform:
        """Multi-crop: ``global_crops`` x input_size (scale global_crop_scale), then ``local_crops``
        x local_crop_size (scale local_crop_scale), each: brightness/contrast jitter
        ``swav.jitter`` with probability ``swav.jitter_p`` (what the paper's colour jitter and
        random grayscale do to a grey slice), random gamma with ``swav.gamma_p`` (0 in the paper
        preset), Gaussian blur ``swav.blur_p`` with sigma in ``swav.blur_sigma``, no flips, no
        noise (as in the paper)."""
        return MultiViewTransform([ct_view(**view) for view in SwAV.view_settings(config, mean, std)])

    @staticmethod
    def view_settings(config: PretrainConfig, mean: float, std: float) -> list[dict[str, Any]]:
        """The arguments of each crop (``augment.ct_view`` and ``batch_views.ct_batch_view``): the global crops,
        then the local ones."""
        s = config.swav
        shared = {"mean": mean, "std": std, "jitter": tuple(s.jitter), "jitter_p": s.jitter_p, "gamma_p": s.gamma_p,
                  "blur_p": s.blur_p, "blur_sigma": tuple(s.blur_sigma)}
        return ([{"size": config.input_size, "scale": tuple(s.global_crop_scale), **shared}] * s.global_crops
                + [{"size": s.local_crop_size, "scale": tuple(s.local_crop_scale), **shared}] * s.local_crops)

    @staticmethod
    def batch_views(config: PretrainConfig, mean: float, std: float) -> list[BatchView]:
        """The crops of :meth:`views`, made on the device."""
        return [ct_batch_view(**view) for view in SwAV.view_settings(config, mean, std)]

    # --- training -------------------------------------------------------------------------------

    def project(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """L2-normalised projections z of every crop. Consecutive crops of one size go through
        the backbone together and the head sees all crops at once (as the official code)."""
        sizes = [crop.shape[0] for crop in crops]
        features, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[1:] == crops[start].shape[1:]:
                end += 1
            features.append(torch.flatten(self.backbone(torch.cat(crops[start:end])), start_dim=1))
            start = end
        z = F.normalize(self.projection_head(torch.cat(features)), dim=1)
        return list(torch.split(z, sizes))

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Prototype scores z^T C in float32 (exp(score / eps) overflows in float16)."""
        return self.prototypes(z, step=self.global_step).float()

    @torch.no_grad()
    def queue_scores(self, high_z: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Scores of the queued projections (before this batch is added), then enqueue the batch.
        Nothing is enqueued before epoch ``queue_start_epoch``; None until the queue is full."""
        if not self.queues or self.current_epoch < self.config.swav.queue_start_epoch:
            return None
        banks = [queue.to(z.device)(z.detach().float(), update=True)[1]
                 for queue, z in zip(self.queues, high_z, strict=True)]
        full = self._queue_filled >= self.queue_length // self.world_size
        self._queue_filled += high_z[0].shape[0]
        if not full:
            return None
        return [self.scores(bank.to(high_z[0].dtype)) for bank in banks]

    def training_loss(self, batch: Any) -> torch.Tensor:
        settings = self.config.swav
        crops = list(batch)
        if len(crops) != settings.global_crops + settings.local_crops:
            raise ValueError(f"SwAV expects {settings.global_crops} global + {settings.local_crops} local crops, "
                             f"got {len(crops)} views")
        self.prototypes.normalize()  # back on the unit sphere before every step (official: copy_ of F.normalize)
        z = self.project(crops)
        all_scores = torch.split(self.scores(torch.cat(z)), [t.shape[0] for t in z])
        # Codes (Sinkhorn) only from the global crops (official crops_for_assign [0, 1]); every crop predicts them.
        high, low = list(all_scores[: settings.global_crops]), list(all_scores[settings.global_crops:])
        queue = self.queue_scores(z[: settings.global_crops])
        return self.criterion(high, low, queue).squeeze()

    def on_after_backward(self) -> None:
        """Drop prototype gradients while frozen (after DDP has reduced them, so all agree)."""
        if self.global_step < self.freeze_prototypes_steps:
            for param in self.prototypes.parameters():
                param.grad = None

    def configure_optimizers(self):
        # Prototypes may be switched off by a forward pass during the freeze; they must still
        # be handed to the optimiser.
        self.prototypes.requires_grad_(True)
        return super().configure_optimizers()
