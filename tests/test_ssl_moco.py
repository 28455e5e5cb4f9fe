"""MoCo v2: two views, loss goes down, momentum-only key encoder, shuffled BN, queue capping, export."""

from __future__ import annotations

import math
import statistics
import warnings

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("lightly")
pytest.importorskip("pytorch_lightning")

from torch.utils.data import default_collate  # noqa: E402

from ctreduce.config import make_pretrain_config  # noqa: E402
from ctreduce.ssl.moco import MoCoV2, fit_queue_length  # noqa: E402

MEAN, STD = 0.1806, 0.1907
MOCO = {"projection_hidden_dim": 64, "projection_dim": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(extra: dict | None = None, **moco):
    return make_pretrain_config({"preset": "cpu", "backbone": "resnet18", "input_size": 32, "batch_size": 8,
                                 "method": "moco", "warmup_epochs": 0, "moco": {**MOCO, **moco}, **(extra or {})})


def collated(cfg, slices: torch.Tensor, indices) -> list[torch.Tensor]:
    transform = MoCoV2.views(cfg, MEAN, STD)
    return default_collate([transform(slices[i][None]) for i in indices])


def key_parameters(module) -> list[torch.Tensor]:
    return [*module.backbone_momentum.parameters(), *module.projection_head_momentum.parameters()]


def query_parameters(module) -> list[torch.Tensor]:
    return [*module.backbone.parameters(), *module.projection_head.parameters()]


def test_views_two_views():
    cfg = config()
    x = torch.randint(0, 256, (1, 48, 48), dtype=torch.uint8)
    views = MoCoV2.views(cfg, MEAN, STD)(x)
    assert len(views) == 2
    assert all(tuple(v.shape) == (3, 32, 32) and v.dtype == torch.float32 for v in views)
    names = {type(t).__name__ for view in MoCoV2.views(cfg, MEAN, STD).views for t in view.transforms}
    assert {"RandomHorizontalFlip", "RandomVerticalFlip", "RandomResizedCrop", "GaussianNoise"} <= names


def test_loss_decreases(slices):
    """Two batches of 8 slices alternate and the queue holds exactly one batch, so its keys are
    always the other batch's (true negatives). AdamW and momentum 0.9: a short run has to move."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 8 is a multiple of the batch and below the data set size
        module = MoCoV2(config({"optimizer": "adamw", "lr": 1e-3}, queue_length=8, momentum=0.9),
                        steps_per_epoch=10, dataset_size=16)
    assert module.name == "moco" and module.queue_length == 8
    optimiser = module.configure_optimizers()["optimizer"]
    in_optimiser = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert not in_optimiser & {id(p) for p in key_parameters(module)}
    batches = [collated(module.config, slices, range(0, 8)), collated(module.config, slices, range(8, 16))]
    module.train()
    losses = []
    for step in range(16):
        loss = module.training_loss(batches[step % 2])
        optimiser.zero_grad()
        loss.backward()
        assert all(p.grad is None and not p.requires_grad for p in key_parameters(module))
        optimiser.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    # step 0 compares against the random initial queue (trivially easy): leave it out
    assert statistics.mean(losses[-5:]) < statistics.mean(losses[1:6]) - 0.2, losses


def test_key_encoder_moves_only_by_momentum(slices):
    torch.manual_seed(1)
    module = MoCoV2(config({"optimizer": "sgd", "lr": 0.5}, queue_length=8, momentum=0.9), steps_per_epoch=4)
    optimiser = module.configure_optimizers()["optimizer"]
    batch = collated(module.config, slices, range(0, 16, 4))
    module.train()
    for _ in range(2):
        k_before = [p.detach().clone() for p in key_parameters(module)]
        q_before = [p.detach().clone() for p in query_parameters(module)]
        loss = module.training_loss(batch)  # momentum update first, then keys and loss
        for k, k0, q0 in zip(key_parameters(module), k_before, q_before, strict=True):
            assert torch.allclose(k, 0.9 * k0 + 0.1 * q0, atol=1e-6)
        k_after_update = [p.detach().clone() for p in key_parameters(module)]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        assert all(p.grad is None for p in key_parameters(module))
        assert all(torch.equal(k, k1) for k, k1 in zip(key_parameters(module), k_after_update, strict=True))
        assert not all(torch.equal(q, q0) for q, q0 in zip(query_parameters(module), q_before, strict=True))
    # query and key encoders have drifted apart; the key encoder followed by momentum only
    assert not torch.equal(module.backbone.conv1.weight, module.backbone_momentum.conv1.weight)


def test_shuffled_keys_come_back_in_order():
    torch.manual_seed(2)
    module = MoCoV2(config(queue_length=8), steps_per_epoch=1)
    module.eval()  # running BN statistics: the shuffle must then change nothing at all
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        plain = module.projection_head_momentum(torch.flatten(module.backbone_momentum(x), 1))
        assert torch.allclose(module.key(x), plain, atol=1e-5)


def test_queue_capping():
    assert fit_queue_length(0, 8, 100, "q") == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_queue_length(1024, 8, None, "q") == 1024
        assert fit_queue_length(1024, 8, 5000, "q") == 1024
    with pytest.warns(UserWarning, match="q=1000 capped to 992: it must be a multiple of the global batch size 16"):
        assert fit_queue_length(1000, 16, None, "q") == 992
    with pytest.warns(UserWarning, match="q=1024 capped to 96: the data set has only 100 slices"):
        assert fit_queue_length(1024, 8, 100, "q") == 96
    with pytest.warns(UserWarning, match="multiple of the global batch size 8"):
        assert fit_queue_length(5, 8, None, "q") == 8  # never below one batch

    with pytest.warns(UserWarning, match="moco.queue_length=1024 capped to 96"):
        module = MoCoV2(config(queue_length=1024), steps_per_epoch=12, dataset_size=100)
    assert module.queue_length == 96
    assert tuple(module.criterion.memory_bank.bank.shape) == (96, 32)
    assert not module.criterion.gather_distributed
    # world size 2 (as decided in setup): the global batch is 16, keys are gathered before enqueueing
    with pytest.warns(UserWarning, match="capped to 96"):
        module._configure(world_size=2)
    assert module.queue_length == 96 and module.criterion.gather_distributed
    with pytest.warns(UserWarning, match="moco.queue_length=1024 capped to 80"):
        module._configure(world_size=5)  # global batch 40: 100 slices -> 80
    assert tuple(module.criterion.memory_bank.bank.shape) == (80, 32)


@pytest.mark.parametrize("mlp_head", [True, False], ids=["mlp-head", "linear-head"])
def test_export_loads_into_torchvision(mlp_head):
    module = MoCoV2(config(mlp_head=mlp_head), steps_per_epoch=1)
    head = module.projection_head
    assert isinstance(head, torch.nn.Linear) != mlp_head
    assert head(torch.randn(2, module.feature_dim)).shape == (2, 32)
    state = module.export_backbone()
    result = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    # the query encoder is exported, not the momentum copy
    assert all(torch.equal(v, module.backbone.state_dict()[k]) for k, v in state.items())
