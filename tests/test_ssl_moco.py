"""MoCo v2: the paper preset (queue, warm-up, decay, head, views), the loss against the queue of before
the step, loss goes down, momentum-only key encoder, shuffled BN, queue capping and checkpoints, export."""

from __future__ import annotations

import json
import math
import statistics
import warnings

import pytest
import yaml

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("lightly")
pytest.importorskip("pytorch_lightning")

from torch.nn import functional as F  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from ctreduce.config import make_pretrain_config  # noqa: E402
from ctreduce.ssl.augment import RandomGamma, RotatedResizedCrop  # noqa: E402
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


def steps_of(transform) -> list:
    """The single steps of a view, RandomApply and Compose unpacked, a rotated crop as its rotation and crop."""
    if isinstance(transform, (v2.Compose, v2.RandomApply)):
        return [step for inner in transform.transforms for step in steps_of(inner)]
    if isinstance(transform, RotatedResizedCrop):
        return [transform.rotation, transform.crop] if transform.p > 0 else [transform.crop]
    return [transform]


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
    names = {type(t).__name__ for view in MoCoV2.views(cfg, MEAN, STD).transforms for t in steps_of(view)}
    assert {"RandomRotation", "RandomResizedCrop", "ColorJitter", "SeparableGaussianBlur", "RandomHorizontalFlip",
            "RandomVerticalFlip", "LogUniformGaussianNoise"} <= names


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


# --- the paper preset ----------------------------------------------------------------------------

HASH6_LIDC, ALL_LIDC = 23_936, 243_958  # training slices of a Hash-6 LIDC subset and of ALL


@pytest.fixture(scope="module")
def paper_module():
    """The resolved paper preset for MoCo (ResNet-50, 224 px) on a Hash-6-sized data set."""
    cfg = make_pretrain_config({"method": "moco"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 65,536 is a multiple of 128 and is not capped: no warning
        return MoCoV2(cfg, steps_per_epoch=HASH6_LIDC // cfg.batch_size, dataset_size=HASH6_LIDC)


def test_paper_preset_settings():
    cfg = make_pretrain_config({"method": "moco"})
    moco = cfg.moco
    assert (cfg.backbone, cfg.input_size, cfg.batch_size, cfg.epochs) == ("resnet50", 224, 128, 800)
    assert (cfg.mean, cfg.std) == (0.1806, 0.1907)  # fixed, the same for ALL and every subset
    assert cfg.warmup_epochs == 0 and cfg.decay_norm_and_bias and cfg.precision == "32-true"
    assert cfg.lr is None and cfg.weight_decay is None and cfg.optimizer is None  # SGD 0.015 @ 128, wd 1e-4
    assert (moco.queue_length, moco.queue_cap_to_data, moco.mlp_head, moco.projection_dim) == (65536, False, False, 128)
    assert (moco.momentum, moco.temperature) == (0.999, 0.07)
    assert (moco.rotation_degrees, moco.rotation_p, tuple(moco.crop_scale)) == (180.0, 0.5, (0.2, 1.0))
    assert (tuple(moco.jitter), moco.jitter_p, moco.gamma_p) == ((0.4, 0.4, 0.4, 0.1), 1.0, 0.0)
    assert (moco.blur_p, tuple(moco.blur_sigma), moco.hflip, moco.vflip) == (0.5, (0.1, 2.0), True, True)
    assert (moco.noise_p, tuple(moco.noise_var)) == (0.5, (1e-5, 1e-4))
    # the cpu preset keeps MoCo v2's MLP head and a queue capped to its small exports
    cpu = make_pretrain_config({"method": "moco", "preset": "cpu"})
    assert cpu.moco.mlp_head and cpu.moco.queue_cap_to_data and cpu.moco.queue_length == 1024


def test_paper_queue_is_65536_whatever_the_data_size(paper_module):
    module = paper_module
    assert module.queue_length == 65536
    assert tuple(module.criterion.memory_bank.bank.shape) == (65536, 128)
    assert module.summary_extra()["moco"]["queue_length"] == 65536
    for size in (ALL_LIDC, 1000):
        module.dataset_size = size
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            module._configure(world_size=1)
        assert module.queue_length == 65536
    module.dataset_size = HASH6_LIDC
    module._configure(world_size=1)


def test_paper_head_is_one_linear_layer(paper_module):
    head = paper_module.projection_head
    assert isinstance(head, torch.nn.Linear) and (head.in_features, head.out_features) == (2048, 128)
    assert isinstance(paper_module.projection_head_momentum, torch.nn.Linear)
    assert paper_module.summary_extra()["moco"]["head"] == "linear"


def test_paper_optimiser_decays_every_parameter_without_warmup(paper_module):
    """As main_moco.py: SGD(model.parameters(), lr, momentum=0.9, weight_decay=1e-4), cosine from the
    first step (no warm-up); lr 0.015 at batch 128 (the paper's script)."""
    module = paper_module
    optimisers = module.configure_optimizers()
    optimiser, scheduler = optimisers["optimizer"], optimisers["lr_scheduler"]["scheduler"]
    assert isinstance(optimiser, torch.optim.SGD) and len(optimiser.param_groups) == 1
    group = optimiser.param_groups[0]
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert {id(p) for p in group["params"]} == {id(p) for p in trainable}
    assert any(p.ndim == 1 for p in group["params"])  # BN weights and biases are decayed too
    assert group["weight_decay"] == 1e-4 and group["momentum"] == 0.9 and not group["nesterov"]
    assert group["initial_lr"] == pytest.approx(0.015) and group["lr"] == pytest.approx(0.015)
    factor = scheduler.lr_lambdas[0]
    total = module.total_steps
    assert factor(0) == 1.0 and factor(1) == pytest.approx(1.0, abs=1e-6)
    assert factor(total // 2) == pytest.approx(0.5, abs=1e-3) and factor(total) == pytest.approx(0.0, abs=1e-9)


# --- views ---------------------------------------------------------------------------------------

ALL_OFF = {"rotation_p": 0.0, "crop_scale": (1.0, 1.0), "jitter_p": 0.0, "blur_p": 0.0, "hflip": False,
           "vflip": False, "noise_p": 0.0}


def paper_view(size: int, **moco):
    """One view of the paper preset, with the steps not named in ``moco`` turned off."""
    cfg = make_pretrain_config({"method": "moco", "input_size": size, "moco": {**ALL_OFF, **moco}})
    return MoCoV2.views(cfg, cfg.mean, cfg.std).transforms[0], cfg


def test_rotation_draws_angles_in_the_whole_circle():
    """rotation(180) of the paper's script is RandomRotation(180): an angle uniform in [-180, 180],
    not exactly 180 (which the flips already give)."""
    torch.manual_seed(4)
    cfg = make_pretrain_config({"method": "moco"})
    rotations = [t for t in steps_of(MoCoV2.views(cfg, MEAN, STD).transforms[0]) if isinstance(t, v2.RandomRotation)]
    assert len(rotations) == 1
    angles = torch.tensor([rotations[0].make_params([])["angle"] for _ in range(2000)])
    assert angles.min() >= -180 and angles.max() <= 180
    assert (angles < -90).float().mean() > 0.2 and (angles > 90).float().mean() > 0.2
    assert ((angles.abs() > 10) & (angles.abs() < 170)).float().mean() > 0.8

    # the view itself: a bright ray from the centre to the right comes out in every direction
    view, _ = paper_view(65, rotation_p=0.5)
    ray = torch.zeros(1, 65, 65, dtype=torch.uint8)
    ray[0, 31:34, 34:62] = 255
    directions = []
    for _ in range(300):
        out = view(ray)[0] * STD + MEAN
        ys, xs = torch.nonzero(out > 0.5, as_tuple=True)
        directions.append(math.degrees(math.atan2(-(ys.float().mean() - 32), xs.float().mean() - 32)))
    directions = torch.tensor(directions)
    unrotated = (directions.abs() < 3).float().mean()
    assert 0.35 < unrotated < 0.8  # p = 0.5 (a draw near 0 degrees adds a little)
    steep = (directions.deg2rad().sin().abs() > 0.7).float().mean()
    assert steep > 0.15, directions  # up or down: no flip of a horizontal ray gives those


def test_noise_level_is_the_papers():
    """GaussNoise of the paper's script: p=0.5, variance log-uniform in [1e-5, 1e-4], clamped to [0, 1]."""
    torch.manual_seed(5)
    view, cfg = paper_view(64, noise_p=0.5)
    grey = torch.full((1, 64, 64), 128, dtype=torch.uint8)
    variances = []
    for _ in range(200):
        noise = view(grey) * cfg.std + cfg.mean - 128 / 255
        assert noise.shape == (3, 64, 64)
        variance = float(noise.var())
        if variance > 1e-8:
            assert not torch.equal(noise[0], noise[1])  # each channel gets its own noise, as the paper's
            variances.append(variance)
    assert 0.35 < len(variances) / 200 < 0.65
    assert 1e-5 * 0.85 < min(variances) and max(variances) < 1e-4 * 1.15, (min(variances), max(variances))
    assert min(variances) < 2e-5 and max(variances) > 6e-5  # spread over the decade
    # clamped to [0, 1]
    view, cfg = paper_view(64, noise_p=1.0)
    for value, check in ((0, lambda x: x.min() >= -1e-6), (255, lambda x: x.max() <= 1 + 1e-6)):
        image = torch.full((1, 64, 64), value, dtype=torch.uint8)
        for _ in range(20):
            assert check(view(image) * cfg.std + cfg.mean)


def test_no_gamma_in_the_paper_views(slices):
    cfg = make_pretrain_config({"method": "moco"})
    views = MoCoV2.views(cfg, MEAN, STD).transforms
    assert not any(isinstance(t, RandomGamma) for view in views for t in steps_of(view))
    # with rotation, crop, jitter, blur, flips and noise off, nothing else changes a paper view
    torch.manual_seed(6)
    view, cfg = paper_view(48)
    expected = (slices[3][None].float() / 255).expand(3, 48, 48)
    for _ in range(40):
        assert torch.allclose(view(slices[3][None]) * cfg.std + cfg.mean, expected, atol=1e-6)
    # the gamma step is still there for whoever asks for it
    gamma_view, _ = paper_view(48, gamma_p=0.3)
    assert any(isinstance(t, RandomGamma) for t in steps_of(gamma_view))


# --- the queue -----------------------------------------------------------------------------------


def test_loss_uses_the_queue_from_before_the_step(slices):
    """The negatives of a step are the queue before this step's keys are enqueued: enqueuing first
    would make each query's positive key one of its own negatives."""
    torch.manual_seed(7)
    module = MoCoV2(config(queue_length=16, momentum=0.9), steps_per_epoch=1)  # two batches of 8
    module.train()
    batch = collated(module.config, slices, range(0, 16, 2))
    bank = module.criterion.memory_bank
    queue_before, ptr = bank.bank.clone(), int(bank.bank_ptr)
    loss = module.training_loss(batch)
    queue_after = bank.bank.clone()
    keys = queue_after[ptr:ptr + 8]  # this step's keys, L2-normalised, enqueued by the step
    assert torch.equal(queue_after[8:], queue_before[8:]) and not torch.equal(keys, queue_before[:8])
    with torch.no_grad():
        q = F.normalize(module.query(batch[0]), dim=1)

    def info_nce(negatives: torch.Tensor) -> float:
        logits = torch.cat([(q * keys).sum(1, keepdim=True), q @ negatives.T], dim=1) / module.config.moco.temperature
        return float(F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long)))

    assert float(loss.detach()) == pytest.approx(info_nce(queue_before), abs=1e-4)
    assert abs(info_nce(queue_after) - info_nce(queue_before)) > 0.05  # the two orders differ


def test_queue_is_capped_only_on_request():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = MoCoV2(config(queue_length=1024, queue_cap_to_data=False), steps_per_epoch=12, dataset_size=100)
    assert module.queue_length == 1024
    with pytest.warns(UserWarning, match="capped to 96: the data set has only 100 slices"):
        module = MoCoV2(config(queue_length=1024, queue_cap_to_data=True), steps_per_epoch=12, dataset_size=100)
    assert module.queue_length == 96
    assert module.summary_extra()["moco"] == {"queue_length": 96, "queue_length_setting": 1024,
                                              "queue_cap_to_data": True, "dataset_size": 100, "global_batch": 8,
                                              "head": "mlp"}


def test_queue_is_kept_in_checkpoints(slices):
    torch.manual_seed(8)
    module = MoCoV2(config(queue_length=16), steps_per_epoch=1)
    module.train()
    module.training_loss(collated(module.config, slices, range(8)))
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["moco_queue"]["ptr"] == 8
    resumed = MoCoV2(config(queue_length=16), steps_per_epoch=1)
    assert not torch.equal(resumed.criterion.memory_bank.bank, module.criterion.memory_bank.bank)
    resumed.on_load_checkpoint(checkpoint)
    assert torch.equal(resumed.criterion.memory_bank.bank, module.criterion.memory_bank.bank)
    assert int(resumed.criterion.memory_bank.bank_ptr) == 8
    other = MoCoV2(config(queue_length=24), steps_per_epoch=1)
    before = other.criterion.memory_bank.bank.clone()
    with pytest.warns(UserWarning, match="starts again from random keys"):
        other.on_load_checkpoint(checkpoint)
    assert torch.equal(other.criterion.memory_bank.bank, before)


@pytest.mark.parametrize(("preset", "used"), [("cpu", 48), ("paper", 64)])
def test_run_folder_records_the_queue(export_48, tmp_path, preset, used):
    """A 48-slice export: the cpu preset caps the queue to the data, the paper preset keeps its length;
    summary.json records the length used, config.yaml every MoCo setting, the checkpoint the queue."""
    from ctreduce.ssl.pretrain import pretrain

    out = tmp_path / "pretrain"
    settings = {"method": "moco", "preset": preset, "backbone": "resnet18", "input_size": 32, "batch_size": 8,
                "epochs": 1, "num_workers": 0, "data": str(export_48), "out": str(out),
                "moco": {"queue_length": 64 if preset == "paper" else 1024}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="moco.queue_length=1024 capped")
        summary = pretrain(make_pretrain_config(settings))
    assert summary["moco"]["queue_length"] == used
    assert json.loads((out / "summary.json").read_text())["moco"]["queue_length"] == used
    written = yaml.safe_load((out / "config.yaml").read_text())["moco"]
    assert written["queue_cap_to_data"] == (preset == "cpu") and written["mlp_head"] == (preset == "cpu")
    assert {"rotation_degrees", "jitter", "jitter_p", "gamma_p", "blur_sigma", "noise_var", "noise_p"} <= set(written)
    stored = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert stored["moco_queue"]["keys"].shape[0] == used
