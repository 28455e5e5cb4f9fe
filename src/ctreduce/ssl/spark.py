"""SparK: sparse and hierarchical masked modelling for torchvision ResNets.

Tian et al., "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
Modeling", ICLR 2023 (arXiv:2301.03580), laid out as the official code (keyu-tian/SparK
``pretrain/``, commit a63e386, which the paper's SparK script copies unchanged in these parts).
No package provides it. The pieces, and the official file each one follows
(settings and their sources: docs/paper-fidelity.md (SparK)):

* Random masking (``spark.py: SparK.mask``): per image, ``round(L * (1 - ratio))`` of the
  ``L`` patches stay visible, drawn as the first indices of ``argsort(rand(B, L))`` (ratio 0.6).
* Sparse encoding (``encoder.py``; here ``ssl/sparse.py``): the masked image is treated as a sparse point set,
  emulated with dense ops: the input is zeroed at masked pixels, every ``Conv2d``, ``MaxPool2d``
  and residual block output is multiplied by the active mask at its resolution (forward hooks),
  and every ``BatchNorm2d`` becomes a *sparse* batch norm that normalises with, and updates its
  running statistics from, the active positions only. Without a mask set, hooks and sparse BN
  are exact no-ops, and the backbone's ``state_dict`` keys are those of a plain torchvision
  ResNet, so exported weights load into ``torchvision.models.resnetXX``. Official SparK builds
  its ResNet with timm: stochastic depth on each residual branch (``drop_path_rate``, forward hook
  on the branch's last BN) and a zero-initialised last BN per branch (``zero_init_last_bn``).
  Under DDP on several GPUs every BN is synchronised (``synchronise_batchnorm``), as official SparK's ``sbn``.
* Hierarchical encoding: the outputs of ``layer1``..``layer4`` (strides 4-32).
* Densifying (``spark.py``): per scale, deepest first, a sparse BN (``densify_norms``), then the
  empty positions are filled with that scale's mask token ``[M]_i`` in *encoder* space
  (``mask_tokens``), then a projection to the decoder width of that stage (``densify_projs``:
  1x1 conv for the deepest scale, or identity if the widths already match, 3x3 convs for the
  others, all with bias).
* Light decoder (``decoder.py: LightDecoder``): five x2 ``UNetBlock``s with halving widths from
  ``decoder_width`` (768): transposed conv, then conv3x3-BN-ReLU6-conv3x3-BN (no activation
  after the last BN); the densified scale of each resolution is added before its block; a final
  1x1 conv gives 3 channels. Initialised as the official ``LightDecoder.initialize``.
* Loss (``spark.py: SparK.forward``): MSE on per-patch normalised pixels (unbiased variance,
  eps 1e-6), averaged over masked patches only.
* Optimisation (``main.py``, ``utils/lr_control.py``): LAMB (``ssl/base.py: lamb``), learning rate
  warming up linearly from 0.5 % of the peak, then a cosine to 0.1 % of it; weight decay on
  weights only, a cosine from ``weight_decay`` (0.04) to ``spark.weight_decay_end`` (0.2).

Conventions: ``mask`` is a bool tensor (N, gh, gw) on the patch grid with ``True`` = masked
(hidden); ``active = ~mask``. With ``patch_size`` 32 every patch is one position of the
stride-32 map, exactly as official SparK. Smaller patches (16, 8; the cpu preset) are also
supported: the mask is repeated (nearest neighbour) to finer maps and max-pooled ("active if
any covered patch is active", the rule of a strided sparse convolution) to coarser ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.utils.scheduler import cosine_schedule
from torch import nn
from torchvision.transforms import v2

from ..config import PretrainConfig
from .augment import ToThreeChannels
from .base import SSLMethod
from .batch_views import BatchView, spark_batch_view
from .sparse import ActiveState, SparseBatchNorm2d, add_drop_path, sparsify, synchronise, zero_init_last_bn

ENCODER_STRIDE = 32  # total stride of a torchvision ResNet
NORM_EPS = 1e-6  # per-patch target normalisation (Sec. 3.4)


# --- masks ---------------------------------------------------------------------------------------


def random_mask(batch: int, grid: tuple[int, int], ratio: float, *, device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (batch, gh, gw), ``True`` = masked, drawn as official ``SparK.mask``.

    ``round(L * (1 - ratio))`` of the ``L`` patches stay visible: the first indices of
    ``argsort(rand(batch, L))``, drawn on the CPU (from ``generator`` or the default generator),
    so the same seed gives the official code's mask.
    """
    gh, gw = grid
    patches = gh * gw
    n_keep = patches - masked_count(patches, ratio)
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    active = torch.zeros(batch, patches, dtype=torch.bool).scatter_(1, order[:, :n_keep], True)
    mask = ~active.view(batch, gh, gw)
    return mask.to(device) if device is not None else mask


def masked_count(patches: int, ratio: float) -> int:
    """How many of ``patches`` are masked: ``patches - round(patches * (1 - ratio))`` (official ``len_keep``);
    at least one stays visible and one masked."""
    n_masked = patches - round(patches * (1 - ratio))
    if not 0 < n_masked < patches:
        raise ValueError(f"mask_ratio {ratio} masks {n_masked} of {patches} patches; need 1..{patches - 1}")
    return n_masked


# --- decoder -----------------------------------------------------------------------------------


class UNetBlock(nn.Module):
    """Official ``decoder.py: UNetBlock``: x2 transposed conv, conv3x3-BN-ReLU6-conv3x3-BN (no final activation)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up_sample = nn.ConvTranspose2d(c_in, c_in, kernel_size=4, stride=2, padding=1, bias=True)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in, kernel_size=3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c_in),
            nn.ReLU6(inplace=True),
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up_sample(x))


class LightDecoder(nn.Module):
    """Official ``decoder.py: LightDecoder``: ``log2(32) = 5`` UNet blocks of widths ``width / 2**i``.

    ``forward`` takes the densified scales deepest first; scale ``i`` is added to the state
    before block ``i`` (the first block starts from scale 0 alone); a 1x1 conv gives 3 channels.
    """

    def __init__(self, width: int, up_sample_ratio: int = ENCODER_STRIDE, out_channels: int = 3) -> None:
        super().__init__()
        stages = int(round(math.log2(up_sample_ratio)))
        if 2**stages != up_sample_ratio:
            raise ValueError(f"up_sample_ratio must be a power of 2, got {up_sample_ratio}")
        self.width = width
        self.widths = [width // 2**i for i in range(stages + 1)]
        if self.widths[-1] < 1:
            raise ValueError(f"spark.decoder_width must be at least {2**stages}, got {width}")
        self.dec = nn.ModuleList(UNetBlock(c_in, c_out)
                                 for c_in, c_out in zip(self.widths[:-1], self.widths[1:], strict=True))
        self.proj = nn.Conv2d(self.widths[-1], out_channels, kernel_size=1, stride=1, bias=True)
        self.initialize()

    def initialize(self) -> None:
        """Official ``LightDecoder.initialize``: convs trunc-normal(0.02), transposed convs Kaiming
        (fan-out), biases 0, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, to_dec: Sequence[torch.Tensor]) -> torch.Tensor:
        x: torch.Tensor | float = 0.0
        for i, block in enumerate(self.dec):
            if i < len(to_dec):
                x = x + to_dec[i]
            x = block(x)
        return self.proj(x)


def densify_layout(encoder_channels: Sequence[int], width: int) -> list[tuple[int, int, int]]:
    """Official densify layers, deepest scale first: (encoder width, decoder width, projection kernel).

    Kernel 1 for the deepest scale, 3 for the others; 0 means identity (the deepest scale's
    widths already match: official ``nn.Identity()``).
    """
    out = []
    for i, e_width in enumerate(reversed(list(encoder_channels))):
        d_width = width // 2**i
        kernel = 0 if i == 0 and e_width == d_width else (1 if i == 0 else 3)
        out.append((e_width, d_width, kernel))
    return out


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
    dtype = torch.promote_types(torch.promote_types(prediction.dtype, image.dtype), torch.float32)  # fp32 under AMP
    target = normalised_patches(image.to(dtype), patch_size)
    pred = patchify(prediction.to(dtype), patch_size)
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (N, L)
    weight = mask.reshape(mask.shape[0], -1).to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Official ``lr_wd_annealing`` learning-rate factor of the peak lr.

    Linear warm-up from 0.005 at step 0 (reaching 1 at step ``warmup``; lightly's warm-up starts one step
    further, ``(step + 1) / warmup``), then lightly's ``cosine_schedule`` from 1 to 0.001 at the last step
    ``total - 1`` (the official formula); constant after it.
    """
    if step < warmup:
        return 0.005 + 0.995 * step / warmup
    return cosine_schedule(max(0, min(step, total - 1) - warmup), total - warmup, 1.0, 0.001)


# --- the method ----------------------------------------------------------------------------------


class SparK(SSLMethod):
    """SparK pre-training (Tian et al., ICLR 2023) of a torchvision ResNet backbone.

    Module names follow official ``spark.py``/``decoder.py`` (``densify_norms``, ``densify_projs``,
    ``mask_tokens``, ``dense_decoder.dec``, ``dense_decoder.proj``); the mask tokens are stored
    1-D (C,) instead of (1, C, 1, 1), so the optimiser's "1-D parameters get no weight decay" rule
    covers them as official SparK's ``'mask_token'`` name rule does.
    """

    name = "spark"
    sync_batchnorm = True  # official SparK synchronises all its BNs when distributed: see ``synchronise_batchnorm``

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
        if settings.zero_init_last_bn:
            zero_init_last_bn(self.backbone)
        self._active = ActiveState()
        self._hooks = sparsify(self.backbone, self._active) + add_drop_path(self.backbone, settings.drop_path_rate)
        dim = self.feature_dim
        self.encoder_channels = [dim // 8, dim // 4, dim // 2, dim]  # layer1..layer4

        # Densify (official spark.py): per scale, deepest first, sparse BN, mask token, projection.
        self.densify_norms = nn.ModuleList()
        self.densify_projs = nn.ModuleList()
        self.mask_tokens = nn.ParameterList()
        for e_width, d_width, kernel in densify_layout(self.encoder_channels, settings.decoder_width):
            token = nn.Parameter(torch.zeros(e_width))
            nn.init.trunc_normal_(token, mean=0.0, std=0.02, a=-0.02, b=0.02)
            self.mask_tokens.append(token)
            norm = SparseBatchNorm2d(e_width)
            norm.state = self._active
            self.densify_norms.append(norm)
            self.densify_projs.append(nn.Identity() if kernel == 0 else
                                      nn.Conv2d(e_width, d_width, kernel_size=kernel, stride=1,
                                                padding=kernel // 2, bias=True))
        self.dense_decoder = LightDecoder(settings.decoder_width)

    @staticmethod
    def views(config: PretrainConfig, mean: float, std: float) -> MultiViewTransform:
        """One view as official SparK's data pipeline: random resized crop (``spark.crop_scale``) with
        bicubic resampling of the 8-bit slice, horizontal flip, per-channel normalisation
        (``spark.input_mean``/``input_std``, else ``mean``/``std`` on every channel)."""
        return MultiViewTransform([spark_view(config, mean, std)])

    @staticmethod
    def batch_views(config: PretrainConfig, mean: float, std: float) -> list[BatchView]:
        """The view of :meth:`views`, made on the device."""
        return [spark_batch_view(config.input_size, tuple(config.spark.crop_scale),
                                 *input_normalisation(config, mean, std))]

    def summary_extra(self) -> dict[str, Any]:
        """The per-channel input normalisation SparK trained with (the paper preset's is ImageNet's,
        not the run's ``mean``/``std``)."""
        try:
            mean, std = input_normalisation(self.config, self.config.mean, self.config.std)
        except ValueError:
            return {}
        return {"input_mean": list(mean), "input_std": list(std)}

    # -- masking, the sparse encoder and densifying --

    def random_mask(self, batch: int, device: torch.device | str | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool (batch, gh, gw), True = masked, as official ``SparK.mask``."""
        return random_mask(batch, self.grid, self.mask_ratio, device=device, generator=generator)

    def _check_mask(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        expected = (x.shape[0], *self.grid)
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match {expected} for input {tuple(x.shape)}")
        return ~mask.to(device=x.device, dtype=torch.bool)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = self.backbone
        x = x * self._active.at(x.shape[-2:]).to(x.dtype)
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        features = []
        for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
            x = layer(x)
            features.append(x)
        return features

    def _densify(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Deepest first: ``proj_i(where(active, norm_i(S_i), [M]_i))`` (official ``SparK.forward`` step 3)."""
        out = []
        for i, feat in enumerate(reversed(features)):
            feat = self.densify_norms[i](feat)
            token = self.mask_tokens[i].view(1, -1, 1, 1).to(feat.dtype)
            feat = torch.where(self._active.at(feat.shape[-2:]), feat, token)
            out.append(self.densify_projs[i](feat))
        return out

    def masked_forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Sparse hierarchical encoding: features of layer1..layer4 for ``mask``.

        Masked input pixels are zeroed and stay zero after every conv, BN, pooling and residual
        block; BN statistics come from visible positions only (in train mode). The result does
        not depend on the masked pixels' values.
        """
        self._active.set(self._check_mask(x, mask))
        try:
            return self._encode(x)
        finally:
            self._active.set(None)

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decoder output (N, 3, H, W) in per-patch-normalised pixel units."""
        self._active.set(self._check_mask(x, mask))
        try:
            to_dec = self._densify(self._encode(x))
        finally:
            self._active.set(None)
        return self.dense_decoder(to_dec)

    def synchronise_batchnorm(self, on: bool) -> None:
        """Swap every batch norm for its synchronised kind (``on``) or back, keeping parameters, statistics and
        sparsity; ``ctreduce.lightning_setup.SyncBatchNorm`` calls it before DDP wraps the model (torch's own
        conversion would make the sparse BNs dense)."""
        synchronise(self, on)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense backbone features (no mask): what fine-tuning sees."""
        return self.backbone(x)

    def training_loss(self, batch: Any) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        mask = self.random_mask(x.shape[0], device=x.device)
        return spark_loss(self.reconstruct(x, mask), x, mask, self.patch_size)

    # -- learning-rate and weight-decay schedules (official lr_wd_annealing) --

    def configure_optimizers(self):
        out = super().configure_optimizers()
        optimiser = out["optimizer"]
        for group in optimiser.param_groups:
            group["initial_weight_decay"] = group["weight_decay"]
            # Scheduled: the decayed group (weights; norms, biases and mask tokens stay at 0).
            group["schedule_weight_decay"] = group["weight_decay"] > 0 or any(p.ndim > 1 for p in group["params"])
        warmup, total = self.config.warmup_epochs * self.steps_per_epoch, self.total_steps
        out["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: lr_factor(step, total, warmup))
        return out

    def apply_weight_decay(self, optimiser: torch.optim.Optimizer, step: int) -> float:
        """Set the cosine weight decay of ``step`` (``weight_decay`` -> ``spark.weight_decay_end``)."""
        end = self.config.spark.weight_decay_end
        value = end
        for group in optimiser.param_groups:
            if not group.get("schedule_weight_decay", group["weight_decay"] > 0):
                continue
            start = group.get("initial_weight_decay", self.optimiser_settings()[2])
            # Official lr_wd_annealing: a cosine over the whole run, ending at the last step; lightly's formula.
            value = cosine_schedule(min(step, self.total_steps - 1), self.total_steps, start, end)
            group["weight_decay"] = value
        return value

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        for optimiser in self.trainer.optimizers:
            self.apply_weight_decay(optimiser, self.global_step)


# --- views ---------------------------------------------------------------------------------------


def input_normalisation(config: PretrainConfig, mean: float | None, std: float | None
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of SparK's inputs: ``spark.input_mean``/``input_std`` or the run's on each channel."""
    settings = config.spark
    if (settings.input_mean is None) != (settings.input_std is None):
        raise ValueError("set both spark.input_mean and spark.input_std, or neither")
    if settings.input_mean is not None:
        return tuple(settings.input_mean), tuple(settings.input_std)
    if mean is None or std is None:
        raise ValueError("SparK needs the input mean and std (spark.input_mean/input_std or mean/std)")
    return (mean,) * 3, (std,) * 3


def spark_view(config: PretrainConfig, mean: float | None, std: float | None) -> v2.Compose:
    """Official SparK's ``build_dataset_to_pretrain`` on a uint8 (1, H, W) slice.

    ``RandomResizedCrop(size, scale=crop_scale, interpolation=BICUBIC)`` on the 8-bit image (as
    PIL: rounded and clipped to 0..255), ``RandomHorizontalFlip()``, to [0, 1], grey to 3 channels,
    ``Normalize(mean, std)`` per channel.
    """
    mean3, std3 = input_normalisation(config, mean, std)
    return v2.Compose([
        v2.RandomResizedCrop(config.input_size, scale=tuple(config.spark.crop_scale),
                             interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        ToThreeChannels(),
        v2.Normalize(list(mean3), list(std3)),
    ])
