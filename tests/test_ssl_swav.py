"""SwAV: multi-crop views, loss goes down, prototype freezing (one device and DDP mode), queue, export;
fidelity to the official code (facebookresearch/swav main_swav.py) and the paper's script
(Wolfda95/Less_is_More swav_module_lidc.py): Sinkhorn, loss wiring, prototype normalisation, bias-free
prototypes, LARS = apex LARC, the resolved paper preset (docs/fidelity/swav.md)."""

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

from torch.nn import functional as F  # noqa: E402
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
    names = {type(t).__name__ for view in SwAV.views(cfg, MEAN, STD).transforms for t in view.transforms}
    assert not names & {"RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation"}


def test_loss_decreases(slices):
    torch.manual_seed(0)
    cfg = config(freeze_prototypes_steps=0)
    module = SwAV(cfg, steps_per_epoch=10)
    assert module.name == "swav"
    optimiser = module.configure_optimizers()["optimizer"]  # LARS, the paper's optimiser
    batch = collated(cfg, slices, range(0, 16, 2))
    assert [tuple(v.shape) for v in batch] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 2
    module.train()
    losses = [train_step(module, optimiser, batch) for _ in range(10)]
    assert all(math.isfinite(v) for v in losses)
    assert statistics.mean(losses[-5:]) < statistics.mean(losses[:5]) - 0.2, losses


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
    """Capped to a multiple of batch x world and to the data set; filled from queue_start_epoch on
    and used once full (official main_swav.py and the paper's script); per device queue_length / world."""
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

    assert module.queue_scores(projections()) is None  # epoch 0 < queue_start_epoch 1: nothing enqueued
    assert module._queue_filled == 0
    epoch["value"] = 1
    assert module.queue_scores(projections()) is None  # 8 of 16 filled
    assert module.queue_scores(projections()) is None  # full now, used from the next batch on
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


# --- fidelity to the official code and the paper's script -------------------------------------------


def official_sinkhorn(out: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """facebookresearch/swav main_swav.py ``distributed_sinkhorn`` on one process (world size 1)."""
    Q = torch.exp(out / epsilon).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def paper_sinkhorn(out: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Wolfda95/Less_is_More swav_module_lidc.py ``sinkhorn`` (one GPU, the paper's runs)."""
    Q = torch.exp(out / epsilon).t()
    Q /= torch.sum(Q)
    K, B = Q.shape
    r, c = torch.ones(K, dtype=Q.dtype) / K, torch.ones(B, dtype=Q.dtype) / B
    for _ in range(iterations):
        u = torch.sum(Q, dim=1)
        Q *= (r / u).unsqueeze(1)
        Q *= (c / torch.sum(Q, dim=0)).unsqueeze(0)
    return (Q / torch.sum(Q, dim=0, keepdim=True)).t()


def official_loss(scores: list[torch.Tensor], crops_for_assign=(0, 1), temperature=0.1, epsilon=0.05,
                  iterations=3) -> torch.Tensor:
    """main_swav.py ``train``: codes of crops_for_assign, every other crop predicts them."""
    loss = 0
    for crop_id in crops_for_assign:
        q = official_sinkhorn(scores[crop_id].detach(), epsilon, iterations)
        subloss = 0
        for v in np.delete(np.arange(len(scores)), crop_id):
            subloss -= torch.mean(torch.sum(q * F.log_softmax(scores[v] / temperature, dim=1), dim=1))
        loss += subloss / (len(scores) - 1)
    return loss / len(crops_for_assign)


def test_sinkhorn_is_the_official_and_the_papers():
    """lightly's sinkhorn (without gathering) = official distributed_sinkhorn on one process = the
    paper's sinkhorn: 3 iterations, epsilon 0.05, on cosine scores."""
    from lightly.loss.swav_loss import sinkhorn

    torch.manual_seed(3)
    z = F.normalize(torch.randn(64, 32, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(50, 32, dtype=torch.float64), dim=1)
    out = z @ c.t()
    q = sinkhorn(out.clone(), iterations=3, epsilon=0.05, gather_distributed=False)
    assert torch.allclose(q, official_sinkhorn(out.clone(), 0.05, 3), rtol=1e-9, atol=1e-12)
    assert torch.allclose(q, paper_sinkhorn(out.clone(), 0.05, 3), rtol=1e-9, atol=1e-12)
    assert torch.allclose(q.sum(dim=1), torch.ones(64, dtype=torch.float64))  # each sample: a distribution


def test_codes_only_from_the_global_crops_and_the_loss_is_the_officials(slices, monkeypatch):
    """Without a queue: Sinkhorn sees exactly the two global crops' scores (crops_for_assign [0, 1]),
    the scores are z^T c (bias-free, unit-norm prototypes), and the loss equals main_swav.py's."""
    import lightly.loss.swav_loss as swav_loss

    torch.manual_seed(4)
    cfg = config(freeze_prototypes_steps=0, local_crops=2)
    module = SwAV(cfg, steps_per_epoch=10)
    module.train()
    real, seen = swav_loss.sinkhorn, []
    monkeypatch.setattr(swav_loss, "sinkhorn", lambda out, **kw: seen.append(out.clone()) or real(out, **kw))
    batch = collated(cfg, slices, range(0, 16, 2))
    loss = module.training_loss(batch)
    with torch.no_grad():  # BatchNorm in training mode: the same batch statistics as in the loss
        z = module.project(batch)
        prototypes = module.prototypes.heads[0].weight
        scores = [zi @ prototypes.t() for zi in z]
    assert len(seen) == 2, f"Sinkhorn ran on {len(seen)} crops, expected the 2 global crops"
    for got, expected in zip(seen, scores[:2], strict=True):
        assert got.shape == (8, 16) and torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(loss.detach(), official_loss(scores), atol=1e-5)


def test_prototypes_off_the_sphere_are_unit_norm_when_scored_each_step(slices, monkeypatch):
    """As main_swav.py (normalize + copy_ before every forward): prototypes moved off the unit sphere
    are back on it when the scores of the next step are computed, so every score is a cosine."""
    torch.manual_seed(5)
    cfg = config({"optimizer": "sgd", "lr": 0.5}, freeze_prototypes_steps=0, local_crops=1)
    module = SwAV(cfg, steps_per_epoch=10)
    optimiser = module.configure_optimizers()["optimizer"]
    weight = module.prototypes.heads[0].weight
    with torch.no_grad():
        weight.mul_(3.0)  # off the unit sphere (norm 3)
    start = weight.detach().clone()
    seen = []
    forward = module.criterion.forward

    def recording(high, low, queue=None):
        seen.append((weight.detach().clone(), [s.detach().clone() for s in high + low]))
        return forward(high, low, queue)

    monkeypatch.setattr(module.criterion, "forward", recording)
    batch = collated(cfg, slices, range(0, 16, 4))
    module.train()
    for step in range(3):
        train_step(module, optimiser, batch)
        used, scores = seen[-1]
        assert torch.allclose(used.norm(dim=1), torch.ones(16), atol=1e-5), f"step {step}: not unit norm"
        assert max(float(s.abs().max()) for s in scores) <= 1 + 1e-5  # cosines
    assert torch.allclose(seen[0][0], F.normalize(start, dim=1), atol=1e-6)
    assert not torch.allclose(seen[1][0], seen[0][0])  # the prototypes train between the steps


def test_prototypes_are_bias_free_in_every_preset():
    """Official: nn.Linear(feat_dim, nmb_prototypes, bias=False); lightly's default heads have a bias."""
    for preset in ("paper", "cpu"):
        values = {"preset": preset, "method": "swav", "backbone": "resnet18", "swav": {"n_prototypes": 16}}
        module = SwAV(make_pretrain_config(values), steps_per_epoch=1)
        assert [head.bias for head in module.prototypes.heads] == [None]
        assert [name for name, _ in module.prototypes.named_parameters()] == ["heads.0.weight"]


def larc_sgd_reference(params, grads, lr, wd, steps, momentum=0.9, trust=0.001, eps=1e-8):
    """apex.parallel.LARC(torch.optim.SGD(params, lr, momentum=0.9, weight_decay=wd),
    trust_coefficient=0.001, clip=False) as main_swav.py builds it: LARC takes the weight decay out of
    SGD, adds it to the gradient and scales both by trust * ||p|| / (||g|| + wd ||p|| + eps), unless
    ||p|| or ||g|| is 0 (then the plain gradient, no decay); SGD then applies momentum."""
    params = [p.detach().clone() for p in params]
    buffers = [None] * len(params)
    for step in range(steps):
        for i, p in enumerate(params):
            g = grads[step][i].clone()
            p_norm, g_norm = torch.norm(p), torch.norm(g)
            if p_norm != 0 and g_norm != 0:
                adaptive = trust * p_norm / (g_norm + p_norm * wd + eps)
                g = (g + wd * p) * adaptive
            buffers[i] = g.clone() if buffers[i] is None else buffers[i] * momentum + g
            params[i] = p - lr * buffers[i]
    return params


def test_paper_preset_lars_step_is_the_official_larc_on_every_parameter():
    """Paper preset: one LARS group with wd 1e-6 holding every parameter, so BatchNorm weights and
    biases and Linear biases get the LARS-scaled, decayed update of apex LARC (trust 0.001, clip False,
    SGD momentum 0.9), as main_swav.py and the paper's script (LARS on self.parameters())."""
    torch.manual_seed(6)
    cfg = make_pretrain_config({"method": "swav", "backbone": "resnet18", "swav": {"n_prototypes": 16}})
    module = SwAV(cfg, steps_per_epoch=1).double()  # float64: updates are ~1e-5 of the weights
    optimiser = module.configure_optimizers()["optimizer"]
    names = [name for name, _ in module.named_parameters()]
    params = [p for _, p in module.named_parameters()]
    with torch.no_grad():
        for p in params:  # a trained state: norm and bias parameters are not 1 and 0
            p.add_(torch.randn_like(p) * 0.1)
        module.backbone.layer1[0].bn2.bias.zero_()  # and one zero parameter: LARC leaves it unscaled
    lr = optimiser.param_groups[0]["lr"]
    assert lr == pytest.approx(0.15 / 10)  # lr 0.15 (batch 128), first of 10 warm-up steps

    # gradients as small as the decay term (||g|| = wd ||p||), so scaling and decay both show
    grads = [[F.normalize(torch.randn_like(p).flatten(), dim=0).view_as(p) * 1e-6 * max(float(p.detach().norm()), 1.0)
              for p in params] for _ in range(2)]
    expected = larc_sgd_reference(params, grads, lr, 1e-6, steps=2)
    before = [p.detach().clone() for p in params]
    for step in range(2):
        for p, g in zip(params, grads[step], strict=True):
            p.grad = g.clone()
        optimiser.step()
    for name, p, b, e in zip(names, params, before, expected, strict=True):
        assert (e - b).abs().max() > 0 and torch.allclose(p.detach() - b, e - b, rtol=1e-9, atol=1e-15), name

    index = {name: i for i, name in enumerate(names)}
    for name in ("backbone.bn1.weight", "backbone.bn1.bias", "backbone.layer4.1.bn2.weight",
                 "projection_head.layers.3.bias", "prototypes.heads.0.weight"):
        i = index[name]
        p0, g0 = before[i], grads[0][i]
        update = expected[i] - before[i]
        plain = -lr * (g0 + 0.9 * g0 + grads[1][i])  # SGD without LARS scaling
        undecayed = larc_sgd_reference([p0], [[g0], [grads[1][i]]], lr, 0.0, steps=2)[0] - p0
        assert (update - plain).norm() > 0.5 * plain.norm(), f"{name}: not LARS-scaled"
        assert (update - undecayed).norm() > 0.1 * update.norm(), f"{name}: not decayed"


def test_resolved_paper_preset():
    """Every SwAV setting of the paper preset, as config fields (config.yaml shows them)."""
    from lightly.utils.lars import LARS

    from ctreduce.ssl.augment import RandomGamma, SeparableGaussianBlur

    cfg = make_pretrain_config({"method": "swav"})
    assert (cfg.preset, cfg.backbone, cfg.input_size, cfg.epochs, cfg.batch_size, cfg.warmup_epochs) == (
        "paper", "resnet50", 224, 800, 128, 10)
    assert (cfg.mean, cfg.std) == (0.1806, 0.1907)  # fixed normalisation of the paper's MultiCropDataset
    assert (cfg.optimizer, cfg.weight_decay, cfg.decay_norm_and_bias, cfg.grad_clip) == ("lars", 1e-6, True, None)
    s = cfg.swav
    assert (s.n_prototypes, s.projection_hidden_dim, s.projection_dim) == (500, 2048, 128)
    assert (s.temperature, s.sinkhorn_epsilon, s.sinkhorn_iterations) == (0.1, 0.05, 3)
    assert (s.freeze_prototypes_steps, s.queue_length, s.queue_start_epoch) == (313, 0, 15)
    assert (s.global_crops, s.global_crop_scale, s.local_crops, s.local_crop_size, s.local_crop_scale) == (
        2, (0.9, 1.0), 6, 96, (0.10, 0.33))
    assert (s.jitter, s.jitter_p, s.gamma_p, s.blur_p, s.blur_sigma) == ((0.4, 0.4), 0.8, 0.0, 0.5, (0.1, 2.0))

    # the views are built from those fields
    views = SwAV.views(cfg, cfg.mean, cfg.std).transforms
    assert len(views) == 8
    for i, view in enumerate(views):
        size, scale = (224, (0.9, 1.0)) if i < 2 else (96, (0.10, 0.33))
        steps = {type(t).__name__: t for t in view.transforms}
        assert steps["RandomResizedCrop"].size == (size, size) and steps["RandomResizedCrop"].scale == scale
        jitter, blur = (t for t in view.transforms if type(t).__name__ == "RandomApply")
        assert jitter.p == 0.8 and jitter.transforms[0].brightness == (0.6, 1.4)
        assert jitter.transforms[0].contrast == (0.6, 1.4)
        assert jitter.transforms[0].saturation is None and jitter.transforms[0].hue is None
        assert isinstance(blur.transforms[0], SeparableGaussianBlur) and blur.p == 0.5
        assert blur.transforms[0].sigma_range == (0.1, 2.0) and blur.transforms[0].kernel_size == (23 if i < 2 else 13)
        assert [t.p for t in view.transforms if isinstance(t, RandomGamma)] == [0.0]
        assert not set(steps) & {"RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation", "GaussianNoise"}
        assert steps["Normalize"].mean == [0.1806] * 3 and steps["Normalize"].std == [0.1907] * 3

    module = SwAV(cfg, steps_per_epoch=100)
    assert all(head.bias is None for head in module.prototypes.heads)
    optimiser = module.configure_optimizers()["optimizer"]
    assert isinstance(optimiser, LARS) and len(optimiser.param_groups) == 1
    group = optimiser.param_groups[0]
    assert {id(p) for p in group["params"]} == {id(p) for p in module.parameters()}  # BN and biases too
    assert (group["weight_decay"], group["momentum"], group["trust_coefficient"], group["eps"]) == (
        1e-6, 0.9, 0.001, 1e-8)
    assert (group["nesterov"], group["dampening"]) == (False, 0)
    assert group["initial_lr"] == pytest.approx(0.15)  # the published command: lr 0.15 at batch 128, 1 GPU


def test_prototype_freeze_is_counted_in_steps_not_epochs(monkeypatch):
    """Frozen for 313 optimiser steps (official freeze_prototypes_niters), not 313 epochs (the
    paper's script compared current_epoch with freeze_prototypes_epochs=313: a bug not copied)."""
    state = {"step": 0, "epoch": 0}
    monkeypatch.setattr(SwAV, "global_step", property(lambda self: state["step"]))
    monkeypatch.setattr(SwAV, "current_epoch", property(lambda self: state["epoch"]))
    values = {"method": "swav", "backbone": "resnet18", "swav": {"n_prototypes": 16}}
    module = SwAV(make_pretrain_config(values), steps_per_epoch=100)
    assert module.freeze_prototypes_steps == module.prototypes.n_steps_frozen_prototypes == 313
    weight = module.prototypes.heads[0].weight

    def grad_kept(step: int, epoch: int) -> bool:
        state.update(step=step, epoch=epoch)
        weight.grad = torch.ones_like(weight)
        module.on_after_backward()
        return weight.grad is not None

    assert not grad_kept(0, 0) and not grad_kept(312, 3)
    assert grad_kept(313, 3) and grad_kept(10_000, 100)


def test_cpu_preset_keeps_the_modern_choices():
    """The cpu preset keeps norms and biases out of weight decay and LARS (two groups) and random gamma."""
    cfg = config()
    assert not cfg.decay_norm_and_bias and cfg.swav.gamma_p == 0.3
    module = SwAV(cfg, steps_per_epoch=1)
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["weight_decay"] for g in groups] == [1e-6, 0.0]
    assert id(module.backbone.bn1.weight) in {id(p) for p in groups[1]["params"]}


def test_lr_scaling_record():
    """summary.json's ``optimizer.lr_scaling``: the method's lr at 256 scaled to the global batch (one process
    before a trainer says otherwise; the runs' records: tests/test_ssl_pretrain.py), or a configured lr as given."""
    scaled = SwAV(config(), steps_per_epoch=1)
    assert scaled.lr_scaling() == {"rule": "linear: base_lr x global_batch / 256", "base_lr": 0.3, "batch_size": 8,
                                   "processes": 1, "global_batch": 8, "lr": 0.3 * 8 / 256}
    fixed = SwAV(config({"lr": 0.05}), steps_per_epoch=1)
    assert fixed.lr_scaling() == {"rule": "as configured (lr), not scaled", "base_lr": None, "batch_size": 8,
                                  "processes": 1, "global_batch": 8, "lr": 0.05}
    assert fixed.optimiser_settings()[1] == 0.05
