"""SwAV: multi-crop views, loss goes down, prototype freezing (one device and DDP mode), queue, export."""

from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("lightly")
pytest.importorskip("pytorch_lightning")

from torch.utils.data import default_collate  # noqa: E402

from ctreduce.config import make_pretrain_config  # noqa: E402
from ctreduce.ssl.swav import SwAV  # noqa: E402

MEAN, STD = 0.1806, 0.1907
SWAV = {"local_crop_size": 16, "n_prototypes": 16, "projection_hidden_dim": 64, "projection_dim": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(extra: dict | None = None, **swav):
    return make_pretrain_config({"preset": "cpu", "backbone": "resnet18", "input_size": 32, "batch_size": 8,
                                 "method": "swav", "warmup_epochs": 0, "swav": {**SWAV, **swav}, **(extra or {})})


def collated(cfg, slices: torch.Tensor, indices) -> list[torch.Tensor]:
    """What the DataLoader hands to training_step: the views of each slice, default-collated."""
    transform = SwAV.views(cfg, MEAN, STD)
    return default_collate([transform(slices[i][None]) for i in indices])


def step_counter(monkeypatch) -> None:
    """``global_step`` is 0 without a trainer; let the tests set it (``module._test_step``)."""
    monkeypatch.setattr(SwAV, "global_step", property(lambda self: self.__dict__.get("_test_step", 0)))


def train_step(module, optimiser, batch) -> float:
    loss = module.training_loss(batch)
    optimiser.zero_grad()
    loss.backward()
    module.on_after_backward()
    optimiser.step()
    return float(loss.detach())


def test_views_multi_crop_shapes():
    cfg = config(global_crops=2, local_crops=3)
    x = torch.randint(0, 256, (1, 48, 48), dtype=torch.uint8)
    views = SwAV.views(cfg, MEAN, STD)(x)
    assert len(views) == 5
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    # no flips in SwAV's views (paper): no flip transform anywhere in the pipelines
    names = {type(t).__name__ for view in SwAV.views(cfg, MEAN, STD).views for t in view.transforms}
    assert not names & {"RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation"}


def test_loss_decreases(slices):
    torch.manual_seed(0)
    cfg = config(freeze_prototypes_steps=0)
    module = SwAV(cfg, steps_per_epoch=10)
    assert module.name == "swav"
    assert math.isclose(module.collapse_loss, math.log(16)) and module.ln_prototypes == module.collapse_loss
    optimiser = module.configure_optimizers()["optimizer"]  # LARS, the paper's optimiser
    batch = collated(cfg, slices, range(0, 16, 2))
    assert [tuple(v.shape) for v in batch] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 2
    module.train()
    losses = [train_step(module, optimiser, batch) for _ in range(10)]
    assert all(math.isfinite(v) for v in losses)
    assert statistics.mean(losses[-5:]) < statistics.mean(losses[:5]) - 0.2, losses
    # prototypes stay on the unit sphere
    weight = module.prototypes.heads[0].weight.detach()
    module.prototypes.normalize()
    assert torch.allclose(weight.norm(dim=1), torch.ones(16), atol=1e-3)


@pytest.mark.parametrize("ddp_mode", [False, True], ids=["one-device", "ddp-mode"])
def test_prototypes_frozen_for_first_steps(slices, monkeypatch, ddp_mode):
    """Frozen for ``freeze_prototypes_steps`` optimiser steps, trained afterwards. In DDP mode
    (world size > 1 decided at setup) lightly's requires_grad switch is off and the gradients are
    dropped after backward instead; this runs in one process (no process group)."""
    step_counter(monkeypatch)
    torch.manual_seed(1)
    # plain SGD: LARS's trust ratio makes single steps too small to tell from rounding
    cfg = config({"optimizer": "sgd", "lr": 0.5}, freeze_prototypes_steps=2, local_crops=1)
    module = SwAV(cfg, steps_per_epoch=10)
    if ddp_mode:
        module._configure(world_size=2)
        assert module.criterion.sinkhorn_gather_distributed
        assert module.prototypes.n_steps_frozen_prototypes == 0
    else:
        assert not module.criterion.sinkhorn_gather_distributed
    optimiser = module.configure_optimizers()["optimizer"]
    in_optimiser = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert id(module.prototypes.heads[0].weight) in in_optimiser
    batch = collated(cfg, slices, range(0, 16, 4))  # 4 slices: cheap
    module.train()
    weight = module.prototypes.heads[0].weight
    start = weight.detach().clone()
    backbone_start = module.backbone.conv1.weight.detach().clone()
    for step in range(2):
        module._test_step = step
        train_step(module, optimiser, batch)
        assert weight.grad is None
        assert torch.allclose(weight, start, atol=1e-6), f"prototypes moved at frozen step {step}"
        assert weight.requires_grad == ddp_mode
    assert not torch.equal(module.backbone.conv1.weight, backbone_start)  # the rest trains meanwhile
    module._test_step = 2
    train_step(module, optimiser, batch)
    assert weight.requires_grad
    assert (weight - start).abs().max() > 1e-3, "prototypes did not move after the freeze"


def test_queue(monkeypatch):
    """Capped to a multiple of batch x world and to the data set; filled from the start, used once
    full and from queue_start_epoch on; per device queue_length / world."""
    torch.manual_seed(2)
    with pytest.warns(UserWarning, match="swav.queue_length=20 capped to 16"):
        module = SwAV(config(queue_length=20, queue_start_epoch=1), steps_per_epoch=4)
    assert module.queue_length == 16 and len(module.queues) == 2
    # per-device queues must not be module buffers: DDP would broadcast rank 0's queue every step
    assert not any("queue" in name for name in module.state_dict(keep_vars=True))
    assert not any("queue" in name for name, _ in module.named_buffers())
    with pytest.warns(UserWarning, match="data set has only 24"):
        assert SwAV(config(queue_length=4096), steps_per_epoch=4, dataset_size=24).queue_length == 24
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(SwAV(config(), steps_per_epoch=4).queues) == 0  # queue off: paper's setting

    epoch = {"value": 0}
    monkeypatch.setattr(SwAV, "current_epoch", property(lambda self: epoch["value"]))

    def projections():
        return [torch.nn.functional.normalize(torch.randn(8, 32), dim=1) for _ in range(2)]

    assert module.queue_scores(projections()) is None  # 8 of 16 filled
    assert module.queue_scores(projections()) is None  # full now, but epoch 0 < queue_start_epoch 1
    epoch["value"] = 1
    scores = module.queue_scores(projections())
    assert [tuple(s.shape) for s in scores] == [(16, 16)] * 2
    assert all(s.dtype == torch.float32 for s in scores)

    # the whole loss with the queue in the Sinkhorn problem
    with torch.no_grad():
        crops = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32), torch.randn(8, 3, 16, 16),
                 torch.randn(8, 3, 16, 16)]
        assert torch.isfinite(module.training_loss(crops))

    # two devices: global length stays a multiple of the global batch (16), each device holds half
    module = SwAV(config(queue_length=40), steps_per_epoch=4)  # a multiple of 8: no warning
    with pytest.warns(UserWarning, match="queue_length=40 capped to 32.*global batch size 16"):
        module._configure(world_size=2)
    assert module.queue_length == 32 and module.queues[0].size == (16, 32)


def test_export_loads_into_torchvision():
    module = SwAV(config(), steps_per_epoch=1)
    state = module.export_backbone()
    assert all(not k.startswith("fc.") for k in state)
    result = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    assert all(np.array_equal(v.numpy(), module.backbone.state_dict()[k].numpy()) for k, v in state.items())
