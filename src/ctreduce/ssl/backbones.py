"""torchvision ResNet encoders whose weights export as plain torchvision state_dicts."""

from __future__ import annotations

import torch
from torch import nn

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build_backbone(name: str) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet with ``fc`` replaced by Identity, and its
    feature dimension. ``backbone.state_dict()`` then loads into ``torchvision.models.<name>()``
    with only ``fc.*`` missing."""
    import torchvision

    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(RESNETS)}")
    model = getattr(torchvision.models, name)(weights=None)
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, dim


def export_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """CPU tensors, no ``fc`` entries: loads with ``load_state_dict(strict=False)`` reporting only
    ``fc.weight``/``fc.bias`` missing."""
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
