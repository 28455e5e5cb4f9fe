"""SparK (Tian et al., ICLR 2023): masking, sparse encoder emulation, decoder, loss, schedule, export."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from ctreduce.config import make_pretrain_config
from ctreduce.ssl.spark import (
    ActiveState,
    SparK,
    SparseBatchNorm2d,
    random_mask,
    resize_active,
    spark_loss,
    weight_decay_at,
)

SETTINGS = {"preset": "cpu", "method": "spark", "backbone": "resnet18", "input_size": 64, "batch_size": 4,
            "spark": {"patch_size": 16, "decoder_width": 64}}


def make_module(steps_per_epoch: int = 10, **overrides) -> SparK:
    torch.manual_seed(0)
    return SparK(make_pretrain_config({**SETTINGS, **overrides}), steps_per_epoch=steps_per_epoch)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def module() -> SparK:
    return make_module()


@pytest.fixture(scope="module")
def slices() -> torch.Tensor:
    """8 normalised phantom slices (8, 3, 64, 64), the way the views present them."""
    from ctreduce.phantom import make_phantom
    from ctreduce.reduction.intensity import Intensity

    hu, _ = make_phantom(n_slices=8, size=64, seed=1)
    x = torch.from_numpy(Intensity().to_uint8(hu)).float().div(255)[:, None].expand(-1, 3, -1, -1)
    return ((x - 0.1806) / 0.1907).contiguous()


def pixel_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Bool (N, 1, size, size): True at pixels of masked patches."""
    return resize_active(mask, (size, size))


def test_mask_counts_and_differs_between_images(module):
    torch.manual_seed(1)
    mask = module.random_mask(6)
    assert mask.shape == (6, 4, 4) and mask.dtype == torch.bool
    expected = round(0.6 * 16)
    assert mask.flatten(1).sum(1).tolist() == [expected] * 6
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 1
    gen = torch.Generator().manual_seed(3)
    assert random_mask(2, (7, 7), 0.6, generator=gen).flatten(1).sum(1).tolist() == [round(0.6 * 49)] * 2


def test_resize_active_nearest_up_and_any_active_down():
    active = torch.tensor([[[True, False], [False, False]]])
    up = resize_active(active, (4, 4))[0, 0]
    assert up[:2, :2].all() and not up[2:].any() and not up[:, 2:].any()
    down = resize_active(torch.tensor([[[True, False], [False, False]]]), (1, 1))
    assert down.item() is True


def test_sparse_batchnorm_uses_active_positions_only():
    torch.manual_seed(7)
    state = ActiveState()
    dense = nn.BatchNorm2d(5)
    sparse = SparseBatchNorm2d.from_batchnorm(dense, state)
    reference = nn.BatchNorm1d(5)
    x = torch.randn(3, 5, 8, 8) * 2 + 1
    active = torch.rand(3, 2, 2) > 0.4
    active[0, 0, 0] = True
    state.set(active)
    out = sparse(x)
    keep = resize_active(active, (8, 8))
    expected = reference(x.permute(0, 2, 3, 1)[keep[:, 0]])
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[keep[:, 0]], expected)
    assert (out * ~keep).abs().max() == 0 and out.is_contiguous()
    torch.testing.assert_close(sparse.running_mean, reference.running_mean)
    torch.testing.assert_close(sparse.running_var, reference.running_var)
    state.set(None)
    torch.testing.assert_close(sparse(x), dense(x))
    assert list(sparse.state_dict()) == list(dense.state_dict())


def test_deep_copy_keeps_hooks_and_sparse_bns_consistent(module, slices):
    clone = copy.deepcopy(module)
    mask = clone.random_mask(2)
    with torch.no_grad():
        features = clone.masked_forward(slices[:2], mask)
    for f in features:
        assert (f * ~resize_active(~mask, f.shape[-2:])).abs().max() == 0


@pytest.mark.parametrize("train", [True, False])
def test_encoder_ignores_masked_pixels_but_not_visible_ones(module, slices, train):
    x = slices[:4]
    torch.manual_seed(2)
    mask = module.random_mask(4)
    hidden = pixel_mask(mask, 64).expand_as(x)
    module.train(train)
    with torch.no_grad():
        ref = module.masked_forward(x, mask)
        changed = torch.where(hidden, torch.randn_like(x) * 5, x)
        assert not torch.equal(changed, x)
        out = module.masked_forward(changed, mask)
        for a, b in zip(ref, out, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        # One visible pixel: the centre of the first visible patch of image 0.
        r, c = (~mask[0]).nonzero()[0].tolist()
        poked = x.clone()
        poked[0, :, r * 16 + 8, c * 16 + 8] += 5.0
        out = module.masked_forward(poked, mask)
        for a, b in zip(ref, out, strict=True):
            assert (a - b).abs().max() > 1e-4
    module.train()


def test_masked_positions_are_zero_after_every_layer(module, slices):
    x = slices[:4]
    torch.manual_seed(3)
    mask = module.random_mask(4)
    seen = []

    def check(mod, inputs, output):
        hidden = ~resize_active(~mask, output.shape[-2:])
        seen.append(type(mod).__name__)
        assert (output * hidden).abs().max().item() == 0.0, type(mod).__name__

    handles = [m.register_forward_hook(check) for m in module.backbone.modules()
               if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.MaxPool2d | nn.ReLU)
               or type(m).__name__ == "BasicBlock"]
    try:
        with torch.no_grad():
            features = module.masked_forward(x, mask)
    finally:
        for h in handles:
            h.remove()
    assert {"Conv2d", "SparseBatchNorm2d", "MaxPool2d", "BasicBlock"} <= set(seen)
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
    for f in features:
        assert (f * ~resize_active(~mask, f.shape[-2:])).abs().max() == 0
        assert f.abs().sum() > 0
    rec = module.reconstruct(x, mask)
    assert rec.shape == x.shape


def test_loss_counts_masked_patches_only(slices):
    x = slices[:2]
    torch.manual_seed(4)
    mask = random_mask(2, (4, 4), 0.6)
    pred = torch.randn_like(x)
    loss = spark_loss(pred, x, mask, 16)
    visible = ~pixel_mask(mask, 64).expand_as(x)
    other = torch.where(visible, torch.randn_like(x) * 10, pred)
    torch.testing.assert_close(spark_loss(other, x, mask, 16), loss)
    masked = torch.where(visible, pred, pred + 1.0)
    assert spark_loss(masked, x, mask, 16) > loss + 0.5
    # Perfect prediction of the per-patch normalised target gives zero loss.
    patches = x.reshape(2, 3, 4, 16, 4, 16)
    mean = patches.mean(dim=(1, 3, 5), keepdim=True)
    var = patches.var(dim=(1, 3, 5), keepdim=True)
    target = ((patches - mean) / (var + 1e-6).sqrt()).reshape_as(x)
    assert spark_loss(target, x, mask, 16).item() < 1e-8


def test_loss_decreases_with_configured_optimiser(slices):
    model = make_module(steps_per_epoch=30, lr=1e-2, warmup_epochs=0, epochs=1)
    opt = model.configure_optimizers()["optimizer"]
    x = slices[:4]
    fixed = torch.Generator().manual_seed(5)
    eval_masks = [model.random_mask(4, generator=fixed) for _ in range(2)]

    def probe() -> float:
        with torch.no_grad():
            return sum(spark_loss(model.reconstruct(x, m), x, m, 16).item() for m in eval_masks) / len(eval_masks)

    model.train()
    before = probe()
    torch.manual_seed(6)
    losses = []
    for step in range(25):
        model.apply_weight_decay(opt, step)
        loss = model.training_loss([x])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    assert losses[-1] < losses[0] - 0.1, losses
    after = probe()
    assert after < before - 0.1, (before, after)


def test_export_is_plain_torchvision_and_wrappers_are_transparent(slices):
    model = make_module()
    assert any(isinstance(m, SparseBatchNorm2d) for m in model.backbone.modules())
    # Train a little state into the BNs (running stats differ from defaults).
    with torch.no_grad():
        model.train()
        model.masked_forward(slices, model.random_mask(8))
    weights = model.export_backbone()
    reference = torchvision.models.resnet18()
    result = reference.load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    assert set(weights) == {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    reference.fc = nn.Identity()
    backbone = copy.deepcopy(model.backbone)
    for mode in (False, True):
        reference.train(mode)
        backbone.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(backbone(slices), reference(slices), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(backbone.layer1[0].bn1.running_mean, reference.layer1[0].bn1.running_mean)


def test_weight_decay_follows_cosine():
    model = make_module(steps_per_epoch=10, epochs=5)  # 50 steps
    opt = model.configure_optimizers()["optimizer"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == pytest.approx(0.04) and plain["weight_decay"] == 0
    total = model.total_steps
    for step in (0, 1, 10, 25, 37, total - 1, total + 5):
        model.apply_weight_decay(opt, step)
        progress = min(1.0, step / (total - 1))
        expected = 0.2 + (0.04 - 0.2) * 0.5 * (1 + math.cos(math.pi * progress))
        assert decayed["weight_decay"] == pytest.approx(expected)
        assert plain["weight_decay"] == 0
    assert weight_decay_at(0, total, 0.04, 0.2) == pytest.approx(0.04)
    assert weight_decay_at(total - 1, total, 0.04, 0.2) == pytest.approx(0.2)
    assert weight_decay_at((total - 1) / 2, total, 0.04, 0.2) == pytest.approx(0.12)
    # The Lightning hook applies it at the trainer's global step.
    model._trainer = SimpleNamespace(optimizers=[opt], global_step=12)
    try:
        model.on_train_batch_start(None, 0)
    finally:
        model._trainer = None
    assert decayed["weight_decay"] == pytest.approx(weight_decay_at(12, total, 0.04, 0.2))


def test_views_one_normalised_view():
    config = make_pretrain_config(SETTINGS)
    transform = SparK.views(config, 0.1806, 0.1907)
    out = transform(torch.randint(0, 256, (1, 80, 80), dtype=torch.uint8))
    assert isinstance(out, list) and len(out) == 1
    assert out[0].shape == (3, 64, 64) and out[0].dtype == torch.float32


def test_rejects_bad_geometry():
    with pytest.raises(ValueError, match="input_size"):
        make_module(input_size=80)
    with pytest.raises(ValueError, match="patch_size"):
        make_module(spark={"patch_size": 24, "decoder_width": 64})
