"""The one backbone factory: build, feature dimension, loading (ImageNet, file, run), input statistics."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
import yaml

from ctreduce import backbones
from ctreduce.backbones import IMAGENET, PAPER_GREY, BackboneError, Normalisation
from ctreduce.config import PRESETS


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_build_gives_a_headless_resnet_and_its_feature_dim(name, dim):
    model = backbones.build(name)
    assert isinstance(model.fc, torch.nn.Identity) and backbones.feature_dim(model) == dim
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, dim)
    missing, unexpected = getattr(torchvision.models, name)().load_state_dict(
        backbones.export_state_dict(model), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


def test_unknown_backbone_names_the_choices():
    with pytest.raises(BackboneError, match="unknown backbone 'vgg16'; choose one of resnet18"):
        backbones.build("vgg16")


def test_offline_imagenet_weights_name_the_file_to_provide(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneError, match="could not load the ImageNet weights of backbone 'resnet18'") as info:
        backbones.load("imagenet", "resnet18")
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    assert f"{torch.hub.get_dir()}/checkpoints/{url.rsplit('/', 1)[1]}" in str(info.value)


def test_imagenet_weights_are_loaded_from_the_hub_cache(monkeypatch):
    reference = torchvision.models.resnet18()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: reference.state_dict())
    model, stats = backbones.load("imagenet", "resnet18")
    assert torch.equal(model.conv1.weight, reference.conv1.weight) and stats == IMAGENET


def _run_folder(tmp_path, config: dict, weights: dict | None):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if weights is not None:
        torch.save(weights, run / "backbone.pt")
    return run


def test_a_pretrain_run_gives_its_weights_and_its_grey_statistics(tmp_path):
    trained = backbones.build("resnet18")
    run = _run_folder(tmp_path, {"method": "swav", "mean": 0.21, "std": 0.3}, backbones.export_state_dict(trained))
    model, stats = backbones.load(str(run), "resnet50")  # the depth is the file's
    assert torch.equal(model.layer4[1].bn2.running_var, trained.layer4[1].bn2.running_var)
    assert stats.mean == (0.21,) * 3 and stats.std == (0.3,) * 3


def test_a_spark_run_gives_its_per_channel_statistics(tmp_path):
    run = _run_folder(tmp_path, {"method": "spark", "mean": 0.2, "std": 0.3,
                                 "spark": {"input_mean": list(IMAGENET.mean), "input_std": list(IMAGENET.std)}},
                      backbones.export_state_dict(backbones.build("resnet18")))
    assert backbones.load(str(run))[1].mean == IMAGENET.mean


def test_an_unfinished_run_and_a_missing_file_are_named(tmp_path):
    run = _run_folder(tmp_path, {"method": "swav", "mean": 0.2, "std": 0.3}, None)
    with pytest.raises(BackboneError, match=r"run: no backbone.pt"):
        backbones.load(str(run))
    with pytest.raises(BackboneError, match="nothing.pt: no such file"):
        backbones.load(str(tmp_path / "nothing.pt"))


def test_a_file_of_another_depth_is_refused_when_a_depth_is_asked_for(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(backbones.export_state_dict(backbones.build("resnet18")), path)
    with pytest.raises(BackboneError, match="holds a resnet18, not the requested resnet50"):
        backbones.from_file(path, "resnet50")


def test_one_meaning_per_statistics_name():
    assert PAPER_GREY == Normalisation.grey(PRESETS["paper"]["mean"], PRESETS["paper"]["std"], "paper")
    assert PAPER_GREY.mean == (0.1806,) * 3 and IMAGENET.mean == (0.485, 0.456, 0.406)
