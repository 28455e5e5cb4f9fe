"""The paper's fine-tuning as its notebooks ran it (Wolfda95/Less_is_More, Downstream_Evaluation/*.ipynb): the
learning rate Lightning's BackboneFinetuning realises, each task's normalisation, its flips and axis order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ctreduce.config import FinetuneConfig
from ctreduce.downstream import protocol
from ctreduce.downstream.finetune import finetune, normalisation, transforms
from ctreduce.downstream.synthetic import make_lesion_task
from ctreduce.tasks.load import load_task

TINY = {"backbone": "resnet18", "input_size": 32, "batch_size": 8, "num_workers": 0, "bootstrap": 20}


class _Notebook(pl.LightningModule):
    """The notebooks' module in miniature: a ``backbone`` and a head, ``Adam(self.parameters(), lr)``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def on_train_epoch_end(self) -> None:
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-4, weight_decay=5e-4)


def test_lightnings_backbone_finetuning_realises_the_paper_schedule(tmp_path):
    """The schedule ``schedule="paper"`` follows is what Lightning's callback does with the notebooks' optimiser:
    no new parameter group at unfreezing, the only one set to lr x 0.1 x 2 from the epoch after it."""
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    module = _Notebook()
    trainer = pl.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[pl.callbacks.BackboneFinetuning(unfreeze_backbone_at_epoch=3)])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert len(trainer.optimizers[0].param_groups) == 1
    assert module.lrs == pytest.approx([protocol.lr_at(e, 1e-4, 3) for e in range(8)])
    assert module.lrs == pytest.approx([1e-4] * 4 + [2e-5] * 4)
    assert [protocol.lr_at(e, 1e-4, 3, "constant") for e in range(8)] == [1e-4] * 8


@pytest.fixture(scope="module")
def folder_task(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("task") / "lesion"
    make_lesion_task(root, n_per_class=10, size=32, format="folder")
    return {"format": "folder", "root": str(root), "split_csv": str(root / "split.csv")}


@pytest.mark.parametrize(("epochs", "head_only"), [(12, 10), (4, 10)])
def test_a_finetune_records_the_learning_rate_of_every_epoch_and_its_normalisation(folder_task, tmp_path, epochs,
                                                                                   head_only):
    summary = finetune(task=folder_task, out=str(tmp_path / "ft"), init="random", epochs=epochs,
                       head_only_epochs=head_only, **TINY)
    seed = summary["per_seed"][0]
    expected = [1e-4] * min(epochs, head_only + 1) + [2e-5] * max(0, epochs - head_only - 1)
    assert seed["lr_by_epoch"] == pytest.approx(expected)  # epochs 0-9 head+bn, 10 all at 1e-4, 11 all at 2e-5
    assert seed["schedule"] == "paper"
    pixels = np.concatenate([im.ravel() for im in load_task(folder_task).train.images]).astype(np.float64) / 255
    assert seed["normalisation"]["mean"] == pytest.approx([pixels.mean()] * 3, rel=1e-9)
    assert seed["normalisation"]["std"] == pytest.approx([pixels.std()] * 3, rel=1e-9)
    assert seed["normalisation"]["source"].startswith("train split of")
    assert seed["transforms"] == protocol.PIPELINES["paper-brain"].as_dict()
    metrics = json.loads((tmp_path / "ft" / "seed0" / "metrics.json").read_text())
    assert metrics["lr_by_epoch"] == seed["lr_by_epoch"]


def _config(task: dict, **values) -> FinetuneConfig:
    return FinetuneConfig(task=task, init="random", **{**TINY, **values})


def test_each_task_gets_its_notebooks_normalisation(tmp_path):
    covid = {"format": "covid_ct", "root": str(make_lesion_task(tmp_path / "covid", n_per_class=6, size=16,
                                                                 format="covid_ct"))}
    organ = {"format": "medmnist", "path": str(make_lesion_task(tmp_path / "organ", n_per_class=6, size=16,
                                                                 format="medmnist", flag="organsmnist"))}
    other = {"format": "medmnist", "path": str(make_lesion_task(tmp_path / "other", n_per_class=6, size=16,
                                                                 format="medmnist", flag="pneumoniamnist"))}
    imagenet = protocol.Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "pretraining run")
    norm = normalisation(_config(covid), load_task(covid), imagenet)
    assert (norm.mean, norm.std) == ((0.5600, 0.5596, 0.5596), (0.2905, 0.2907, 0.2908))
    norm = normalisation(_config(organ), load_task(organ), imagenet)
    assert (norm.mean, norm.std) == ((0.5,) * 3, (0.5,) * 3)
    data = load_task(other)
    pixels = np.concatenate([im.ravel() for im in data.train.images]).astype(np.float64) / 255
    assert normalisation(_config(other), data, imagenet).mean == pytest.approx((pixels.mean(),) * 3, rel=1e-9)
    # named choices
    assert normalisation(_config(other, normalisation="paper:brain"), data, imagenet).source.startswith("paper: Brain")
    assert normalisation(_config(covid, normalisation="pretraining"), data, imagenet) is imagenet
    assert normalisation(_config(covid, mean=0.3, std=0.2), data, imagenet).mean == (0.3,) * 3
    with pytest.raises(ValueError, match="normalisation"):
        _config(covid, normalisation="paper:lidc")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b.float(), atol=1e-3)


def _image(height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.arange(height * width, dtype=torch.uint8).reshape(1, height, width) % 251


def test_the_covid_and_brain_pipelines_transpose_and_flip_left_right_as_monai_did():
    """MONAI's LoadImage returns a PNG transposed; RandFlip(spatial_axis=0, prob=0.5) then flips the transposed
    image's first axis: the original's columns. Evaluation images are transposed, never flipped."""
    config = _config({"format": "covid_ct", "root": "-"})
    norm = protocol.Normalisation.grey(0.0, 1.0 / 255, "identity")  # values stay the uint8 ones
    x = _image()
    transposed = x.transpose(-1, -2).float()
    assert _same(transforms(config, norm, train=False)(x)[0], transposed[0])
    torch.manual_seed(0)
    outputs = [transforms(config, norm, train=True)(x)[0] for _ in range(200)]
    flipped = transposed[0].flip(0)  # = the transpose of the original flipped left-right
    assert torch.equal(flipped, x[0].flip(1).transpose(0, 1).float())
    n_flipped = sum(_same(o, flipped) for o in outputs)
    assert sum(_same(o, transposed[0]) for o in outputs) + n_flipped == 200
    assert 70 < n_flipped < 130  # p = 0.5


def test_organsmnist_is_neither_flipped_nor_transposed_and_other_pipelines_are_named():
    config = _config({"format": "medmnist", "path": "/data/organsmnist.npz"})
    norm = protocol.Normalisation.grey(0.0, 1.0 / 255, "identity")
    x = _image()
    torch.manual_seed(0)
    assert all(_same(transforms(config, norm, train=True)(x)[0], x[0]) for _ in range(50))
    hv = _config({"format": "medmnist", "path": "/data/organsmnist.npz"}, transforms="hv")
    seen = {tuple(transforms(hv, norm, train=True)(x)[0][0, :2].round().tolist()) for _ in range(100)}
    assert len(seen) == 4  # horizontal and vertical flips, each on its own
    assert protocol.pipeline_for("task", {"format": "folder", "root": "-"}).name == "paper-brain"
    assert protocol.pipeline_for("task", {"format": "medmnist", "flag": "pneumoniamnist"}).name == "paper-organsmnist"
    assert set(protocol.TRANSFORMS) == {"task", *protocol.PIPELINES}


def test_resizing_averages_areas_as_monais_resize():
    config = _config({"format": "medmnist", "path": "/data/organsmnist.npz"}, input_size=2)
    norm = protocol.Normalisation.grey(0.0, 1.0 / 255, "identity")
    x = torch.tensor([[[0, 2, 10, 10], [4, 6, 10, 10], [0, 0, 8, 8], [0, 4, 8, 8]]], dtype=torch.uint8)
    assert _same(transforms(config, norm, train=False)(x)[0], torch.tensor([[3.0, 10.0], [1.0, 8.0]]))


def test_the_learning_rate_of_each_epoch_and_a_misspelt_schedule():
    assert [protocol.lr_at(e, 1e-4, 10) for e in (0, 9, 10, 11, 69)] == pytest.approx([1e-4] * 3 + [2e-5] * 2)
    assert [protocol.lr_at(e, 3e-4, 0) for e in (0, 1)] == pytest.approx([3e-4, 6e-5])  # unfrozen from the start
    with pytest.raises(ValueError, match=r"schedule must be one of paper, constant, got 'cosine'"):
        protocol.lr_at(0, 1e-4, 10, "cosine")


@pytest.mark.parametrize(("spec", "task"), [
    ({"format": "covid_ct", "root": "/data/COVID-CT"}, "covid"),
    ({"format": "medmnist", "flag": "organsmnist"}, "organsmnist"),
    ({"format": "medmnist", "path": "/data/OrganSMNIST_64.npz"}, "organsmnist"),
    ({"format": "medmnist", "path": "C:\\data\\organsmnist.npz"}, "organsmnist"),
    ({"format": "medmnist", "path": "/organsmnist/pneumoniamnist.npz"}, None),  # the file's name, not its folder's
    ({"format": "medmnist", "flag": "pneumoniamnist"}, None),
    ({"format": "folder", "root": "/data/brain"}, None),
])
def test_a_paper_task_is_recognised_by_its_layout(spec, task):
    assert protocol.paper_task(spec) == task
    expected = f"paper-{task}" if task else ("paper-organsmnist" if spec["format"] == "medmnist" else "paper-brain")
    assert protocol.pipeline_for("task", spec).name == expected
    assert protocol.pipeline_for("hv", spec).name == "hv"


def test_a_pipeline_is_recorded_under_stable_keys():
    assert protocol.PIPELINES["paper-covid"].as_dict() == {"name": "paper-covid", "transposed": True,
                                                           "flip_first_axis_p": 0.5, "hv_flips_p": 0.0,
                                                           "resize": "area"}
    assert protocol.PIPELINES["hv"].as_dict() == {"name": "hv", "transposed": False, "flip_first_axis_p": 0.0,
                                                  "hv_flips_p": 0.5, "resize": "bilinear"}


def test_split_statistics_are_numpys_over_every_pixel():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (7, 5), dtype=np.uint8), rng.integers(40, 90, (3, 11), dtype=np.uint8)]
    pixels = np.concatenate([im.ravel() for im in images]) / 255.0
    norm = protocol.split_statistics(images, "train split of x")
    assert norm.mean == pytest.approx((pixels.mean(),) * 3, rel=1e-12)
    assert norm.std == pytest.approx((pixels.std(),) * 3, rel=1e-12)
    assert norm.source == "train split of x"
    with pytest.raises(ValueError, match="train split of x: every pixel has the same value"):
        protocol.split_statistics([np.full((4, 4), 7, np.uint8)], "train split of x")
    with pytest.raises(ValueError, match="train split of x: no pixels"):
        protocol.split_statistics([], "train split of x")
