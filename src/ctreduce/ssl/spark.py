"""SparK: sparse and hierarchical masked modelling for torchvision ResNets.

Tian et al., "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
Modeling", ICLR 2023 (arXiv:2301.03580). Written from the paper's description; no package
provides it. The pieces and the sections they come from:

* Random masking of a patch grid, the same ratio for every image (Sec. 3.1; ratio 0.6, Sec. 4).
* Sparse encoding (Sec. 3.1-3.2): the masked image is treated as a sparse point set, so
  masked positions carry nothing through the encoder. Emulated with dense ops, as the
  official code does: the input is zeroed at masked pixels, every ``Conv2d``, ``MaxPool2d``
  and residual block output is multiplied by the active mask resized to its resolution
  (forward hooks), and every ``BatchNorm2d`` becomes a *sparse* batch norm that normalises
  with, and updates its running statistics from, the active positions only. Without a mask
  set, hooks and sparse BN are exact no-ops, and the backbone's ``state_dict`` keys are those
  of a plain torchvision ResNet, so exported weights load into ``torchvision.models.resnetXX``.
* Hierarchical encoding (Sec. 3.3): the outputs of ``layer1``..``layer4`` (strides 4-32).
* Densifying and a light UNet-style decoder (Sec. 3.3): empty positions of each scale are
  filled with a learned mask embedding ``[M]_i`` (one per scale), then a decoder of
  upsampling blocks with halving widths adds the densified skip features scale by scale up to
  the input resolution; a final 1x1 conv gives 3 channels.
* Loss (Sec. 3.4): MSE on per-patch normalised pixels, averaged over masked patches only.
* Optimisation (Sec. 4 / appendix): LAMB (``ssl/optim.py``, chosen by the base class) and a
  weight decay that follows a cosine from ``weight_decay`` (0.04) to ``spark.weight_decay_end``
  (0.2) over the whole run.

Conventions: ``mask`` is a bool tensor (N, gh, gw) on the patch grid with ``True`` = masked
(hidden); ``active = ~mask``. With ``patch_size`` 32 every patch is one position of the
stride-32 map, exactly as in the paper. Smaller patches (16, 8) are also supported: the mask is
repeated (nearest neighbour) to finer maps and max-pooled ("active if any covered patch is
active", the rule of a strided sparse convolution) to coarser ones. At a resolution that is a
multiple of the grid the two rules coincide with nearest-neighbour resizing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PretrainConfig
from .augment import MultiView, ct_view
from .base import SSLMethod

ENCODER_STRIDE = 32  # total stride of a torchvision ResNet
NORM_EPS = 1e-6  # per-patch target normalisation (Sec. 3.4)


# --- masks ---------------------------------------------------------------------------------------


def random_mask(batch: int, grid: tuple[int, int], ratio: float, *, device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (batch, gh, gw), ``True`` = masked; exactly ``round(ratio * gh * gw)`` per image (Sec. 3.1)."""
    gh, gw = grid
    patches = gh * gw
    n_masked = masked_count(patches, ratio)
    noise = torch.rand(batch, patches, generator=generator, device="cpu" if generator is not None else device)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, patches, dtype=torch.bool, device=order.device)
    mask.scatter_(1, order[:, :n_masked], True)
    return mask.view(batch, gh, gw).to(device) if device is not None else mask.view(batch, gh, gw)


def masked_count(patches: int, ratio: float) -> int:
    """How many of ``patches`` are masked; at least one stays visible and one masked."""
    n_masked = round(ratio * patches)
    if not 0 < n_masked < patches:
        raise ValueError(f"mask_ratio {ratio} masks {n_masked} of {patches} patches; need 1..{patches - 1}")
    return n_masked


def resize_active(active: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bool (N, gh, gw) active grid -> bool (N, 1, h, w) at a feature map's resolution.

    Finer maps repeat each grid cell (nearest neighbour); coarser maps are active where any
    covered cell is active (max pooling), the output-site rule of a strided sparse conv.
    """
    h, w = int(size[0]), int(size[1])
    gh, gw = active.shape[-2:]
    grid = active[:, None]
    if (h, w) == (gh, gw):
        return grid
    if h % gh == 0 and w % gw == 0:
        return grid.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)
    if gh % h == 0 and gw % w == 0:
        return F.max_pool2d(grid.float(), kernel_size=(gh // h, gw // w)) > 0
    if h >= gh and w >= gw:
        return F.interpolate(grid.float(), size=(h, w), mode="nearest") > 0
    return F.adaptive_max_pool2d(grid.float(), (h, w)) > 0


class ActiveState:
    """The active mask of the current masked forward pass, shared by hooks and sparse BNs.

    A plain object (not a module), so it never appears in a ``state_dict``. Resized masks are
    cached per resolution for the duration of one pass.
    """

    def __init__(self) -> None:
        self.active: torch.Tensor | None = None
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def set(self, active: torch.Tensor | None) -> None:
        self.active = active
        self._cache = {}

    def at(self, size: Sequence[int]) -> torch.Tensor | None:
        """Bool (N, 1, h, w) active mask at ``size``, or None when no mask is set."""
        if self.active is None:
            return None
        key = (int(size[0]), int(size[1]))
        if key not in self._cache:
            self._cache[key] = resize_active(self.active, key)
        return self._cache[key]


# --- sparse encoder emulation ----------------------------------------------------------------------


class SparseBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that, while a mask is set, sees only active positions (SparK's SparseBatchNorm2d).

    Active positions are gathered into a (1, C, n_active, 1) tensor and passed to the ordinary
    batch norm, so batch statistics, running-statistics updates (momentum, unbiased variance)
    and eval-mode behaviour are exactly ``nn.BatchNorm2d``'s, restricted to the visible set;
    masked positions come out as zeros. With no mask set it *is* ``nn.BatchNorm2d``
    (same parameters, buffers and ``state_dict`` keys).
    """

    state: ActiveState | None = None

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, state: ActiveState) -> SparseBatchNorm2d:
        sparse = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                     track_running_stats=bn.track_running_stats,
                     device=bn.weight.device if bn.weight is not None else None,
                     dtype=bn.weight.dtype if bn.weight is not None else None)
        sparse.load_state_dict(bn.state_dict())
        sparse.train(bn.training)
        sparse.state = state
        return sparse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self.state.at(x.shape[-2:]) if self.state is not None else None
        if active is None:
            return super().forward(x)
        n, c, h, w = x.shape
        keep = active.expand(n, 1, h, w).reshape(n, h, w)
        visible = x.permute(0, 2, 3, 1)[keep]  # (n_active, C)
        normed = super().forward(visible.t().reshape(1, c, -1, 1)).reshape(c, -1).t()
        out = x.new_zeros(n, c, h, w)  # contiguous NCHW, filled through a channels-last view
        out.permute(0, 2, 3, 1)[keep] = normed.to(out.dtype)
        return out


def sparsify(backbone: nn.Module, state: ActiveState) -> list[torch.utils.hooks.RemovableHandle]:
    """Make a torchvision ResNet run sparsely while ``state`` holds a mask (Sec. 3.1-3.2).

    Every ``BatchNorm2d`` is replaced in place by a :class:`SparseBatchNorm2d` carrying the
    same parameters and buffers (``state_dict`` keys unchanged), and forward hooks on every
    ``Conv2d``, ``MaxPool2d`` and residual block zero the masked positions of their outputs.
    Returns the hook handles.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for parent in list(backbone.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(parent, name, SparseBatchNorm2d.from_batchnorm(child, state))

    hook = ZeroMasked(state)
    handles = []
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d | nn.MaxPool2d | BasicBlock | Bottleneck):
            handles.append(module.register_forward_hook(hook))
    return handles


class ZeroMasked:
    """Forward hook: multiply a module's output by the active mask at its resolution (no-op without mask).

    A top-level class rather than a closure, so that a deep copy of the model gets hooks bound
    to the copy's :class:`ActiveState` and the model still pickles (e.g. for spawned workers).
    """

    def __init__(self, state: ActiveState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        active = self.state.at(output.shape[-2:])
        if active is None:
            return None
        return output * active.to(output.dtype)


# --- decoder -----------------------------------------------------------------------------------


class UpBlock(nn.Module):
    """One decoder stage (SparK's UNetBlock): x2 transposed-conv upsampling, two 3x3 conv-BN-ReLU6."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in, kernel_size=4, stride=2, padding=1)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, padding=1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU6(inplace=True),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class LightDecoder(nn.Module):
    """Densify + light UNet-like decoder (Sec. 3.3).

    ``encoder_channels`` are the channels of layer1..layer4 (strides 4..32). Widths run
    ``width, width/2, ...`` from stride 32 up to stride 1 (five x2 stages). Each encoder scale
    is projected by a 1x1 conv to the decoder width of its stage, its empty (masked) positions
    are filled with that scale's mask embedding ``[M]_i``, and it is added to the decoder state
    before the stage at that resolution. (The official code fills in encoder space and then
    projects; for a 1x1 projection the two are the same function class, since
    ``proj(fill(S, M)) = fill(proj(S), proj(M))``.)
    """

    def __init__(self, encoder_channels: Sequence[int], width: int, out_channels: int = 3) -> None:
        super().__init__()
        stages = int(round(math.log2(ENCODER_STRIDE)))
        widths = [max(1, width // 2**i) for i in range(stages + 1)]
        deep_first = list(reversed(encoder_channels))  # layer4, layer3, layer2, layer1
        if len(deep_first) > stages:
            raise ValueError(f"at most {stages} encoder scales, got {len(deep_first)}")
        self.widths = widths
        self.proj = nn.ModuleList(nn.Conv2d(c, widths[i], 1) for i, c in enumerate(deep_first))
        # One mask embedding per scale; stored 1-D so the optimiser does not decay it.
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(widths[i])) for i in range(len(deep_first)))
        self.blocks = nn.ModuleList(UpBlock(widths[i], widths[i + 1]) for i in range(stages))
        self.head = nn.Conv2d(widths[-1], out_channels, 1)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02 * 2, b=0.02 * 2)

    def densify(self, features: Sequence[torch.Tensor], actives: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Deepest first: ``where(active, proj_i(S_i), [M]_i)`` for each scale."""
        out = []
        for i, (feat, active) in enumerate(zip(reversed(features), reversed(actives), strict=True)):
            projected = self.proj[i](feat)
            token = self.mask_tokens[i].view(1, -1, 1, 1).to(projected.dtype)
            out.append(torch.where(active, projected, token))
        return out

    def forward(self, features: Sequence[torch.Tensor], actives: Sequence[torch.Tensor]) -> torch.Tensor:
        skips = self.densify(features, actives)
        x: torch.Tensor | float = 0.0
        for i, block in enumerate(self.blocks):
            if i < len(skips):
                x = x + skips[i]
            x = block(x)
        return self.head(x)


# --- loss ----------------------------------------------------------------------------------------


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, gh*gw, C*p*p), patches in row-major grid order."""
    n, c, h, w = x.shape
    p = patch_size
    x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def normalised_patches(x: torch.Tensor, patch_size: int, eps: float = NORM_EPS) -> torch.Tensor:
    """Reconstruction targets (Sec. 3.4): every patch standardised by its own mean and variance."""
    patches = patchify(x, patch_size)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def spark_loss(prediction: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean squared error on per-patch normalised pixels, averaged over masked patches only (Sec. 3.4).

    ``prediction`` and ``image`` are (N, C, H, W); ``mask`` is bool (N, gh, gw), True = masked.
    Visible patches contribute nothing, whatever the prediction there.
    """
    target = normalised_patches(image.float(), patch_size)
    pred = patchify(prediction.float(), patch_size)
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (N, L)
    weight = mask.reshape(mask.shape[0], -1).to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


def weight_decay_at(step: int, total: int, start: float, end: float) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (last step ``total - 1``), then constant."""
    progress = min(1.0, max(0.0, step / max(1, total - 1)))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- the method ----------------------------------------------------------------------------------


class SparK(SSLMethod):
    """SparK pre-training (Tian et al., ICLR 2023) of a torchvision ResNet backbone."""

    name = "spark"

    def __init__(self, config: PretrainConfig, steps_per_epoch: int) -> None:
        super().__init__(config, steps_per_epoch)
        settings = config.spark
        size, patch = config.input_size, settings.patch_size
        if size % ENCODER_STRIDE:
            raise ValueError(f"SparK needs input_size divisible by {ENCODER_STRIDE} (the ResNet stride), got {size}")
        if patch < 1 or size % patch or not (ENCODER_STRIDE % patch == 0 or patch % ENCODER_STRIDE == 0):
            raise ValueError(f"spark.patch_size {patch} must divide input_size {size} and divide or be a "
                             f"multiple of {ENCODER_STRIDE}")
        self.patch_size = patch
        self.grid = (size // patch, size // patch)
        self.mask_ratio = settings.mask_ratio
        masked_count(self.grid[0] * self.grid[1], self.mask_ratio)  # validates the ratio
        self._active = ActiveState()
        self._hooks = sparsify(self.backbone, self._active)
        dim = self.feature_dim
        self.encoder_channels = [dim // 8, dim // 4, dim // 2, dim]  # layer1..layer4
        self.decoder = LightDecoder(self.encoder_channels, settings.decoder_width)

    @staticmethod
    def views(config: PretrainConfig, mean: float, std: float) -> MultiView:
        """One view: random resized crop (``spark.crop_scale``), horizontal flip, no colour changes."""
        return MultiView([ct_view(config.input_size, tuple(config.spark.crop_scale), mean, std, hflip=True,
                                  jitter_p=0.0, gamma_p=0.0, blur_p=0.0)])

    # -- masking and the sparse encoder --

    def random_mask(self, batch: int, device: torch.device | str | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool (batch, gh, gw), True = masked, ``round(mask_ratio * patches)`` per image."""
        return random_mask(batch, self.grid, self.mask_ratio, device=device, generator=generator)

    def _check_mask(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        expected = (x.shape[0], *self.grid)
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match {expected} for input {tuple(x.shape)}")
        return ~mask.to(device=x.device, dtype=torch.bool)

    def masked_forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Sparse hierarchical encoding (Sec. 3.1-3.3): features of layer1..layer4 for ``mask``.

        Masked input pixels are zeroed and stay zero after every conv, BN, pooling and residual
        block; BN statistics come from visible positions only (in train mode). The result does
        not depend on the masked pixels' values.
        """
        active = self._check_mask(x, mask)
        b = self.backbone
        self._active.set(active)
        try:
            x = x * self._active.at(x.shape[-2:]).to(x.dtype)
            x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            features = []
            for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
                x = layer(x)
                features.append(x)
        finally:
            self._active.set(None)
        return features

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decoder output (N, 3, H, W) in per-patch-normalised pixel units (Sec. 3.3)."""
        features = self.masked_forward(x, mask)
        active = self._check_mask(x, mask)
        actives = [resize_active(active, f.shape[-2:]) for f in features]
        return self.decoder(features, actives)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense backbone features (no mask): what fine-tuning sees."""
        return self.backbone(x)

    def training_loss(self, batch: Any) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        mask = self.random_mask(x.shape[0], device=x.device)
        return spark_loss(self.reconstruct(x, mask), x, mask, self.patch_size)

    # -- weight-decay schedule --

    def configure_optimizers(self):
        out = super().configure_optimizers()
        for group in out["optimizer"].param_groups:
            group["initial_weight_decay"] = group["weight_decay"]
            # Scheduled: the decayed group (weights; norms, biases and mask tokens stay at 0).
            group["schedule_weight_decay"] = group["weight_decay"] > 0 or any(p.ndim > 1 for p in group["params"])
        return out

    def apply_weight_decay(self, optimiser: torch.optim.Optimizer, step: int) -> float:
        """Set the cosine weight decay of ``step`` (``weight_decay`` -> ``spark.weight_decay_end``)."""
        end = self.config.spark.weight_decay_end
        value = end
        for group in optimiser.param_groups:
            if not group.get("schedule_weight_decay", group["weight_decay"] > 0):
                continue
            start = group.get("initial_weight_decay", self.optimiser_settings()[2])
            value = weight_decay_at(step, self.total_steps, start, end)
            group["weight_decay"] = value
        return value

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        for optimiser in self.trainer.optimizers:
            self.apply_weight_decay(optimiser, self.global_step)
