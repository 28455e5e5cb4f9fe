"""The paper's fine-tuning as its notebooks ran it, per task: the learning rate of every epoch, the normalisation,
the flips and the axis order (Wolf et al. 2024; github.com/Wolfda95/Less_is_More, commit c3ca90d,
``Downstream_Evaluation/COVID-19.ipynb``, ``Brain.ipynb``, ``OrgMNIST.ipynb``). docs/paper-fidelity.md lists each
setting beside the notebook cell it comes from.

The learning rate. The notebooks build ``Adam(self.parameters(), lr)`` (the backbone included) and unfreeze the
backbone with Lightning's ``BackboneFinetuning(unfreeze_backbone_at_epoch=10)``. As the backbone is already in
the optimiser, the callback adds no parameter group at unfreezing and rewrites the only one: epochs 0-9 train the
head and the BatchNorm layers at ``lr``, epoch 10 every layer at ``lr``, epochs 11 on every layer at
``lr x 0.1 x 2`` (its ``backbone_initial_ratio_lr`` times its multiplier, then held there by ``should_align``);
Adam's state is never reset. That is ``schedule="paper"``. ``schedule="constant"`` is what the paper describes
(every layer at ``lr`` after unfreezing) with a fresh Adam state at unfreezing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backbones import Normalisation
from ..config import FINETUNE_NORMALISATIONS, FINETUNE_SCHEDULES, FINETUNE_TRANSFORMS

SCHEDULES = FINETUNE_SCHEDULES
# Lightning's BackboneFinetuning defaults, as the notebooks leave them
BACKBONE_INITIAL_RATIO_LR = 0.1
LR_MULTIPLIER = 2.0


def lr_at(epoch: int, lr: float, head_only_epochs: int, schedule: str = "paper") -> float:
    """The learning rate of every parameter group at ``epoch`` (counted from 0) under ``schedule``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == "constant" or epoch <= head_only_epochs:
        return lr
    return lr * BACKBONE_INITIAL_RATIO_LR * LR_MULTIPLIER


# Which paper task a task spec is: its notebook's constants and pipeline are the default for it.
PAPER_TASKS = ("covid", "brain", "organsmnist")
_MEAN, _STD = (0.5600, 0.5596, 0.5596), (0.2905, 0.2907, 0.2908)  # COVID-19.ipynb cell 15 = Brain.ipynb cell 16
PAPER_NORMALISATION = {
    "covid": Normalisation(_MEAN, _STD, "paper: COVID-19.ipynb cell 15"),
    "brain": Normalisation(_MEAN, _STD, "paper: Brain.ipynb cell 16"),
    "organsmnist": Normalisation.grey(0.5, 0.5, "paper: OrgMNIST.ipynb cell 10"),
}
NORMALISATIONS = FINETUNE_NORMALISATIONS  # task, train, pretraining, imagenet, paper:<task>


@dataclass(frozen=True)
class Pipeline:
    """What a training image goes through besides resizing, normalising and the three grey channels.

    ``transposed``: rows and columns swapped, for training and evaluation alike (MONAI's ``LoadImage`` reads a PNG
    with PIL and returns it transposed); ``flip_p``: the probability of a flip along the first spatial axis of the
    image as the model sees it (MONAI's ``RandFlip(spatial_axis=0)``: on a transposed image, a left-right flip of
    the original); ``hv_p``: independent horizontal and vertical flips; ``resize``: ``area`` (MONAI's ``Resize``
    default) or ``bilinear`` (antialiased).
    """

    name: str
    transposed: bool = False
    flip_p: float = 0.0
    hv_p: float = 0.0
    resize: str = "bilinear"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "transposed": self.transposed, "flip_first_axis_p": self.flip_p,
                "hv_flips_p": self.hv_p, "resize": self.resize}


# The folder notebooks (COVID-19, Brain) load PNGs with LoadImage and flip with p 0.5; OrgMNIST neither.
PIPELINES = {
    "paper-covid": Pipeline("paper-covid", transposed=True, flip_p=0.5, resize="area"),
    "paper-brain": Pipeline("paper-brain", transposed=True, flip_p=0.5, resize="area"),
    "paper-organsmnist": Pipeline("paper-organsmnist", resize="area"),
    "hv": Pipeline("hv", hv_p=0.5),
    "none": Pipeline("none"),
}
TRANSFORMS = FINETUNE_TRANSFORMS  # task and the pipelines above


def paper_task(spec: dict[str, Any]) -> str | None:
    """The paper task a task spec holds, by its layout: the COVID-CT layout is COVID-19, a MedMNIST file of flag
    organsmnist is OrganSMNIST; anything else (the brain-haemorrhage data are a folder) is named by the settings."""
    if spec.get("format") == "covid_ct":
        return "covid"
    if spec.get("format") == "medmnist":
        name = str(spec.get("flag") or spec.get("path") or "").replace("\\", "/").rsplit("/", 1)[-1].lower()
        return "organsmnist" if name.startswith("organsmnist") else None
    return None


def pipeline_for(transforms: str, spec: dict[str, Any]) -> Pipeline:
    """The pipeline ``transforms`` names; ``task``: the paper's for its tasks (a folder task: the folder notebooks',
    MedMNIST: OrgMNIST's), the folder notebooks' otherwise."""
    if transforms != "task":
        return PIPELINES[transforms]
    task = paper_task(spec)
    if task is not None:
        return PIPELINES[f"paper-{task}"]
    return PIPELINES["paper-organsmnist"] if spec.get("format") == "medmnist" else PIPELINES["paper-brain"]


def split_statistics(images: Any, source: str) -> Normalisation:
    """The grey mean and standard deviation of a split's uint8 images on [0, 1] (every pixel counts once)."""
    total, squares, count = 0.0, 0.0, 0
    for image in images:
        values = np.asarray(image, dtype=np.float64) / 255.0
        total += float(values.sum())
        squares += float(np.square(values).sum())
        count += values.size
    if count == 0:
        raise ValueError(f"{source}: no pixels to compute a mean and a standard deviation from")
    mean = total / count
    std = max(squares / count - mean * mean, 0.0) ** 0.5
    if std == 0.0:
        raise ValueError(f"{source}: every pixel has the same value; give normalisation mean/std")
    return Normalisation.grey(mean, std, source)
