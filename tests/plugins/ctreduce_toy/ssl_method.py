"""The toy pre-training method's training code (torch), imported by ``ctreduce pretrain`` when a run starts.

Two crops of a slice, their projections pulled together: SimSiam without its predictor, which can collapse.
It shows what a method implements (views, a loss), not how to learn good features.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.transforms.multi_view_transform import MultiViewTransform
from torch import nn
from torch.nn import functional as F

from ctreduce.config import PretrainConfig
from ctreduce.ssl.augment import ct_view
from ctreduce.ssl.base import SSLMethod


class ToyMethod(SSLMethod):
    name = "toy"

    def __init__(self, config: PretrainConfig, steps_per_epoch: int) -> None:
        super().__init__(config, steps_per_epoch)
        self.projection = nn.Linear(self.feature_dim, config.toy.projection_dim)

    @staticmethod
    def views(config: PretrainConfig, mean: float, std: float) -> MultiViewTransform:
        view = ct_view(config.input_size, tuple(config.toy.crop_scale), mean, std, gamma_p=0.0, blur_p=0.0)
        return MultiViewTransform([view, view])

    def training_loss(self, batch: Any) -> torch.Tensor:
        a, b = (F.normalize(self.projection(torch.flatten(self.backbone(x), 1)), dim=1) for x in batch)
        return -((a * b.detach()).sum(1).mean() + (b * a.detach()).sum(1).mean()) / 2
