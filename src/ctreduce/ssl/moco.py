"""MoCo v2: momentum contrast with a queue of negatives (He et al. 2020; Chen et al. 2020).

- MoCo: K. He, H. Fan, Y. Wu, S. Xie, R. Girshick, "Momentum Contrast for Unsupervised Visual
  Representation Learning", CVPR 2020, arXiv:1911.05722.
- MoCo v2: X. Chen, H. Fan, R. Girshick, K. He, "Improved Baselines with Momentum Contrastive
  Learning", arXiv:2003.04297 (2020): MLP projection head, blur augmentation, cosine schedule.

A query encoder f_q (``backbone`` + ``projection_head``, trained by SGD) and a key encoder f_k
(deep copies, never given gradients) see two views of each slice. The loss is InfoNCE,
MoCo Eq. (1)::

    L_q = -log( exp(q . k+ / tau) / sum_{i=0..K} exp(q . k_i / tau) )

with q, k L2-normalised, k+ the key of the other view of the same slice and k_1..k_K the queue
of keys from previous batches (lightly's ``NTXentLoss`` with ``memory_bank_size``: the negatives
are the queue as it was before the step, and the current keys are enqueued after the logits
are computed, as ``moco/builder.py``). The key encoder follows the query encoder by momentum,
MoCo Eq. (2): theta_k <- m * theta_k + (1 - m) * theta_q, applied once per training step before
the keys are computed. Keys are computed with shuffled BN (MoCo Sec. 3.3).

As the paper ran it (Wolfda95/SSL-MedicalImagining-CL-MAE, ``moco2_module.py`` with the published
command): the head is one linear layer (the command has no ``--use_mlp``; ``moco.mlp_head`` gives
MoCo v2's MLP), the queue holds 65,536 keys whatever the data set size (``moco.queue_cap_to_data``
caps it, cpu preset), no warm-up, cosine schedule, SGD with weight decay on every parameter. The
queue is saved in checkpoints, so a resumed run goes on with its negatives. Every setting and its
source: docs/paper-fidelity.md (MoCo).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.distributed as dist
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.utils import (
    batch_shuffle,
    batch_shuffle_distributed,
    batch_unshuffle,
    batch_unshuffle_distributed,
    deactivate_requires_grad,
    update_momentum,
)
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.utils import dist as lightly_dist
from torch import nn

from ..config import PretrainConfig
from .augment import moco_view
from .base import SSLMethod
from .batch_views import BatchView, moco_batch_view


def fit_queue_length(requested: int, global_batch: int, dataset_size: int | None, label: str) -> int:
    """The queue length actually used: at most ``dataset_size`` and a multiple of the global batch.

    A queue longer than the data set holds older keys of the very slices in the batch as
    "negatives"; a length that is not a multiple of the global batch (``batch_size`` x world
    size) makes the enqueue pointer wrap in the middle of a batch (the official MoCo and SwAV
    code assert or round for the same reason). ``requested <= 0`` means no queue (returns 0).
    Warns whenever the length is changed.
    """
    if requested <= 0:
        return 0
    global_batch = max(1, int(global_batch))
    length, reasons = requested, []
    if dataset_size is not None and 0 < dataset_size < length:
        length = dataset_size
        reasons.append(f"the data set has only {dataset_size} slices (a longer queue would hold "
                       "older copies of the current slices as negatives)")
    if length % global_batch:
        rounded = max(global_batch, length - length % global_batch)
        reasons.append(f"it must be a multiple of the global batch size {global_batch} "
                       "(batch_size x devices) so that whole batches are enqueued")
        length = rounded
    if length != requested:
        warnings.warn(f"{label}={requested} capped to {length}: " + "; ".join(reasons) + ".", stacklevel=3)
    return length


class MoCoV2(SSLMethod):
    """MoCo v2 on CT slices.

    ``queue_length`` is the length actually used: ``moco.queue_length`` rounded down to a
    multiple of ``batch_size`` x world size (the world size is known in ``setup``; until then one
    device is assumed) and, only with ``moco.queue_cap_to_data``, capped to ``dataset_size``
    (number of training slices). summary.json records it. Under DDP the queue is global (keys
    are gathered from all devices before they are enqueued, as in the official code) and the
    keys use lightly's distributed batch shuffle.

    Note: on one device shuffling the key batch does not change BatchNorm statistics; shuffled
    BN only separates query and key statistics when the batch is split over several devices.
    For the same reason the key encoder should not use SyncBatchNorm (``sync_batchnorm`` below
    is a hint for the trainer).
    """

    name = "moco"
    sync_batchnorm = False  # MoCo uses shuffled BN, not synchronised BN

    def __init__(self, config: PretrainConfig, steps_per_epoch: int, dataset_size: int | None = None) -> None:
        super().__init__(config, steps_per_epoch)
        settings = config.moco
        if not 0.0 <= settings.momentum <= 1.0:
            raise ValueError(f"moco.momentum must be in [0, 1], got {settings.momentum}")
        self.dataset_size = dataset_size
        if settings.mlp_head:  # MoCo v2: Linear(d, hidden), ReLU, Linear(hidden, dim), as moco/builder.py
            self.projection_head: nn.Module = MoCoProjectionHead(
                self.feature_dim, settings.projection_hidden_dim, settings.projection_dim
            )
        else:  # one fc layer, as torchvision's resnet(num_classes=dim) of the paper's script
            self.projection_head = nn.Linear(self.feature_dim, settings.projection_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.world_size = 1
        self.queue_length = 0
        self._configure(world_size=1)

    # --- set-up ---------------------------------------------------------------------------------

    def _configure(self, world_size: int) -> None:
        """(Re)build the InfoNCE loss and its queue for ``world_size`` devices."""
        settings = self.config.moco
        self.world_size = world_size
        self.queue_length = fit_queue_length(
            settings.queue_length, self.config.batch_size * world_size,
            self.dataset_size if settings.queue_cap_to_data else None, "moco.queue_length"
        )
        bank = (self.queue_length, settings.projection_dim) if self.queue_length > 0 else 0
        self.criterion = NTXentLoss(
            temperature=settings.temperature, memory_bank_size=bank, gather_distributed=world_size > 1
        ).to(self.device)

    def setup(self, stage: str) -> None:
        world = lightly_dist.world_size()  # the process group exists by ``setup`` (Lightning's DDP)
        if world != self.world_size:
            self._configure(world)

    # --- views ----------------------------------------------------------------------------------

    @staticmethod
    def view_settings(config: PretrainConfig, mean: float, std: float) -> dict[str, Any]:
        """The arguments of one view (``augment.moco_view`` and ``batch_views.moco_batch_view``) from the
        ``moco.*`` settings (paper preset: the paper's script: rotation by a uniform angle in [-180, 180] p=0.5
        before the crop, crop scale 0.2-1, colour jitter (0.4, 0.4, 0.4, 0.1) on every view, blur p=0.5 sigma
        0.1-2, h+v flips, noise p=0.5 with variance 1e-5..1e-4 clamped to [0, 1], no gamma)."""
        s = config.moco
        return {"size": config.input_size, "scale": tuple(s.crop_scale), "mean": mean, "std": std,
                "rotation_degrees": s.rotation_degrees, "rotation_p": s.rotation_p, "jitter": tuple(s.jitter),
                "jitter_p": s.jitter_p, "gamma_p": s.gamma_p, "blur_p": s.blur_p, "blur_sigma": tuple(s.blur_sigma),
                "hflip": s.hflip, "vflip": s.vflip, "noise_p": s.noise_p, "noise_var": tuple(s.noise_var)}

    @staticmethod
    def views(config: PretrainConfig, mean: float, std: float) -> MultiViewTransform:
        """Two views, each ``augment.moco_view`` with :meth:`view_settings`."""
        settings = MoCoV2.view_settings(config, mean, std)
        return MultiViewTransform([moco_view(**settings), moco_view(**settings)])

    @staticmethod
    def batch_views(config: PretrainConfig, mean: float, std: float) -> list[BatchView]:
        """The two views of :meth:`views`, made on the device."""
        settings = MoCoV2.view_settings(config, mean, std)
        return [moco_batch_view(**settings), moco_batch_view(**settings)]

    # --- run facts and checkpoints ----------------------------------------------------------------

    def summary_extra(self) -> dict[str, Any]:
        """summary.json: the queue actually used (it can differ from ``moco.queue_length``) and the head."""
        settings = self.config.moco
        return {"moco": {"queue_length": self.queue_length, "queue_length_setting": settings.queue_length,
                         "queue_cap_to_data": settings.queue_cap_to_data, "dataset_size": self.dataset_size,
                         "global_batch": self.config.batch_size * self.world_size,
                         "head": "mlp" if settings.mlp_head else "linear"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The queue and its pointer (lightly's memory bank is a non-persistent buffer; the
        official code keeps the queue in its state_dict)."""
        if self.queue_length > 0:
            bank = self.criterion.memory_bank
            checkpoint["moco_queue"] = {"keys": bank.bank.detach().cpu().clone(), "ptr": int(bank.bank_ptr)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("moco_queue")
        if saved is None or self.queue_length == 0:
            return
        bank = self.criterion.memory_bank
        if tuple(saved["keys"].shape) != tuple(bank.bank.shape):
            warnings.warn(f"the checkpoint's MoCo queue has shape {tuple(saved['keys'].shape)}, this run's "
                          f"{tuple(bank.bank.shape)}: the queue starts again from random keys", stacklevel=1)
            return
        with torch.no_grad():
            bank.bank.copy_(saved["keys"].to(bank.bank.device, bank.bank.dtype))
            bank.bank_ptr.fill_(int(saved["ptr"]))

    # --- training -------------------------------------------------------------------------------

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(torch.flatten(self.backbone(x), start_dim=1))

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        """Keys from the momentum encoder, with the batch shuffled for BatchNorm (shuffled BN)."""
        distributed = self.world_size > 1 and dist.is_available() and dist.is_initialized()
        if distributed:
            x, shuffle = batch_shuffle_distributed(x)
        else:
            x, shuffle = batch_shuffle(x)
        k = self.projection_head_momentum(torch.flatten(self.backbone_momentum(x), start_dim=1))
        return batch_unshuffle_distributed(k, shuffle) if distributed else batch_unshuffle(k, shuffle)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """MoCo Eq. (2): theta_k <- m theta_k + (1 - m) theta_q (parameters only; the key
        encoder's BatchNorm running statistics come from its own forward passes)."""
        m = self.config.moco.momentum
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)

    def training_loss(self, batch: Any) -> torch.Tensor:
        """InfoNCE (MoCo Eq. 1) of queries from view 0 against keys from view 1 and the queue.

        MoCo v2 is asymmetric: only the first view is a query."""
        if len(batch) != 2:
            raise ValueError(f"MoCo expects 2 views per slice, got {len(batch)}")
        x_q, x_k = batch[0], batch[1]
        self.momentum_update()
        k = self.key(x_k)
        q = self.query(x_q)
        # float32 logits: the loss normalises and divides by a small temperature
        return self.criterion(q.float(), k.float())
