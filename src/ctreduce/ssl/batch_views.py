"""The methods' views made on the training device, a whole batch at a time (``views_on: device``).

The data loader then only reads and stacks uint8 slices (B, 1, H, W); after the batch reaches the device,
:class:`BatchViews` makes each method's views from it, its steps in the order of the per-slice views of
``ctreduce.ssl.augment`` and ``ssl.spark.spark_view``, every random parameter drawn per slice by the same law
(the MoCo rotation before the crop, the crop box, the colour-jitter factors and their order, gamma, blur sigma,
flips, noise). For fixed parameters the pixels are those views' pixels: the rotated crop is gathered from the slice as
:func:`ctreduce.ssl.augment.rotated_window` gathers it, and the crop's resize is torch's antialiased resize
written as two matrices per slice (the filter weights torch computes: a triangle, or the a = -0.5 cubic,
widened by the downscale factor), so slices of different crop sizes resize in one batched product.

Parameters are drawn on the CPU with the view's own generator (a few numbers a slice); the pixels are computed
where the batch is. Kornia and torchvision's v2 transforms were the alternatives: torchvision applies one draw to
a whole batch, and kornia rotates the whole slice before cropping it and resizes without torch's antialiasing
(``benchmarks/bench_loader.py`` times kornia's MoCo view beside these).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .augment import blur_kernel, rotated_index, rotation_reach

RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop aspect-ratio range, as the per-slice views use it
CROP_TRIES = 10  # torchvision's RandomResizedCrop: tries before its central-crop fallback


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo) + lo


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def _log_uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return torch.exp(_uniform(n, math.log(lo), math.log(hi), generator))


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator,
               ratio: tuple[float, float] = RATIO) -> torch.Tensor:
    """``n`` boxes (top, left, height, width), int64 (n, 4), each drawn as torchvision's ``RandomResizedCrop``
    draws one: up to ten tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio, the
    first that fits placed uniformly, else the central crop of the clamped ratio."""
    area = height * width
    target = area * _uniform(n * CROP_TRIES, *scale, generator).view(n, CROP_TRIES)
    aspect = _log_uniform(n * CROP_TRIES, *ratio, generator).view(n, CROP_TRIES)
    w = torch.sqrt(target * aspect).round().long()  # round half to even, as Python's round
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height
    h = torch.where(found, h, fallback_h)
    w = torch.where(found, w, fallback_w)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor().long(), (height - h) // 2)
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor().long(), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def rotated_windows(x: torch.Tensor, angles: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The crop box of each slice of ``x`` (B, 1, H, W) after rotating it by ``angles`` degrees (0: not
    rotated) about its centre, nearest neighbour, 0 outside: :func:`ctreduce.ssl.augment.rotated_window` for
    every slice at once. Returns float (B, h_max, w_max) on [0, 255]; beyond a box's own size, pixels the resize
    weights leave out. Unrotated slices are sliced (two gathers), rotated ones gathered pixel by pixel."""
    b, _, h, w = x.shape
    dev = x.device
    h_max, w_max = int(boxes[:, 2].max()), int(boxes[:, 3].max())
    rotated = angles != 0  # on the CPU: the split costs the device no synchronisation
    window = torch.empty(b, h_max, w_max, device=dev)
    for part, make in ((torch.nonzero(~rotated)[:, 0], _plain_windows), (torch.nonzero(rotated)[:, 0],
                                                                         _turned_windows)):
        if len(part):
            index = part.to(dev)
            window[index] = make(x.index_select(0, index)[:, 0], angles[part], boxes[part], h_max, w_max)
    return window


def _plain_windows(x: torch.Tensor, angles: torch.Tensor, boxes: torch.Tensor, h_max: int, w_max: int
                   ) -> torch.Tensor:
    b, h, w = x.shape
    dev = x.device
    rows = (boxes[:, 0, None].to(dev) + torch.arange(h_max, device=dev)).clamp_(max=h - 1)
    cols = (boxes[:, 1, None].to(dev) + torch.arange(w_max, device=dev)).clamp_(max=w - 1)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, -1)  # one flat gather: the fastest way measured
    return x.reshape(b, h * w).gather(1, index).view(b, h_max, w_max).float()


def _turned_windows(x: torch.Tensor, angles: torch.Tensor, boxes: torch.Tensor, h_max: int, w_max: int
                    ) -> torch.Tensor:
    b, h, w = x.shape
    dev = x.device
    top, left = boxes[:, 0].to(dev), boxes[:, 1].to(dev)
    r = torch.deg2rad(-(angles.double() % 360))  # in float64 then float32, as the Python floats there
    cos, sin = (v.to(dev, torch.float32)[:, None, None] for v in (torch.cos(r), torch.sin(r)))
    # Beyond a box's own size (up to the batch's largest) rows and columns stay in the slice, within the fill's
    # reach; the resize weights leave those pixels out.
    ys = (torch.arange(h_max, device=dev, dtype=torch.float32)[None, :] + top[:, None]).clamp_(max=h - 1)[:, :, None]
    xs = (torch.arange(w_max, device=dev, dtype=torch.float32)[None, :] + left[:, None]).clamp_(max=w - 1)[:, None, :]
    pad = rotation_reach(h, w)
    index = rotated_index(ys, xs, cos, sin, h, w, pad).view(b, -1)  # rotated_window's indices, slice by slice
    framed = F.pad(x, (pad, pad, pad, pad)).reshape(b, -1)
    return framed.gather(1, index).view(b, h_max, w_max).float()


def resize_weights(lengths: torch.Tensor, out_size: int, span: int, cubic: bool, device: torch.device
                   ) -> torch.Tensor:
    """(B, out_size, span) matrices that resize a length ``lengths[i]`` to ``out_size`` as torch's antialiased
    interpolation does (``_compute_weights_aa``: centre ``scale * (i + 0.5)``, the filter evaluated at distance /
    max(scale, 1), normalised over the taps inside the length; torch's tap range, half the filter's width times
    max(scale, 1) about the centre, is where the filter is not 0); columns at and beyond a length are 0."""
    length = lengths.to(device, torch.float64)[:, None, None]
    scale = length / out_size
    stretch = scale.clamp(min=1.0)
    centre = scale * (torch.arange(out_size, device=device) + 0.5)[None, :, None]
    j = torch.arange(span, device=device)[None, None, :]
    t = ((j - centre + 0.5) / stretch).abs()
    if cubic:  # torch's aa bicubic filter, a = -0.5
        a = -0.5
        k = torch.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                        torch.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, torch.zeros_like(t)))
    else:
        k = (1 - t).clamp(min=0.0)
    k = k * (j < length)
    return (k / k.sum(dim=2, keepdim=True)).float()


def resized_crops(x: torch.Tensor, angles: torch.Tensor, boxes: torch.Tensor, size: int, cubic: bool
                  ) -> torch.Tensor:
    """Each slice's box (rotated by its angle) resized to ``size`` x ``size`` with antialiasing, float (B, 1,
    size, size) on [0, 255]: one gather and two batched matrix products for the whole batch, the columns first.
    Bicubic is resized as torch resizes 8-bit images: rounded to 8 bits after each pass (torch's float bicubic
    differs from its 8-bit one by up to 4 grey levels where the cubic overshoots)."""
    window = rotated_windows(x, angles, boxes)
    rows = resize_weights(boxes[:, 2], size, window.shape[1], cubic, x.device)
    cols = resize_weights(boxes[:, 3], size, window.shape[2], cubic, x.device)
    y = torch.bmm(window, cols.transpose(1, 2))
    if cubic:
        y = y.round_().clamp_(0, 255)
    y = torch.bmm(rows, y)
    return (y.round_().clamp_(0, 255) if cubic else y)[:, None]


def blurred(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Each slice of ``x`` (B, 1, H, W) blurred with its own sigma (0: left as it is) by two 1-D Gaussian
    convolutions with reflect padding, as :class:`ctreduce.ssl.augment.SeparableGaussianBlur`."""
    b, _, h, w = x.shape
    radius = kernel_size // 2
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype)[:, None]
    k = torch.exp(-0.5 * (t / s.clamp(min=1e-12)) ** 2)  # sigma 0: exp(-inf) off the centre, the identity
    k = k / k.sum(dim=1, keepdim=True)
    y = F.pad(x.view(1, b, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b, 1, 1, -1), groups=b)
    y = F.conv2d(y, k.view(b, 1, -1, 1), groups=b)
    return y.view(b, 1, h, w)


@dataclass(frozen=True)
class BatchView:
    """One view of every slice of a uint8 batch, in the order of the per-slice views: rotation (probability
    ``rotation_p``, angle uniform in +-``rotation_degrees``) and crop (area fraction in ``scale``), resized to
    ``size`` (bilinear, or bicubic rounded to 8 bits as ``spark_view``), brightness and contrast factors uniform in
    1 +- ``jitter`` in random order with probability ``jitter_p``, gamma log-uniform in ``gamma_range`` with
    ``gamma_p``, blur sigma uniform in ``blur_sigma`` with ``blur_p``, flips with ``hflip_p``/``vflip_p``, three
    channels, noise of log-uniform variance ``noise_var`` on each with ``noise_p``, then ``(x - mean) / std``."""

    size: int
    scale: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rotation_degrees: float = 0.0
    rotation_p: float = 0.0
    cubic: bool = False
    jitter: tuple[float, float] = (0.0, 0.0)  # brightness, contrast
    jitter_p: float = 0.0
    gamma_p: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.4)
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    hflip_p: float = 0.0
    vflip_p: float = 0.0
    noise_p: float = 0.0
    noise_var: tuple[float, float] = (1e-5, 1e-4)

    def __post_init__(self) -> None:
        for name in ("rotation_p", "jitter_p", "gamma_p", "blur_p", "hflip_p", "vflip_p", "noise_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be positive and ordered, got {self.scale}")
        if any(j < 0 for j in self.jitter):
            raise ValueError(f"jitter must be >= 0, got {self.jitter}")

    def make_params(self, n: int, height: int, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The random parameters of ``n`` views (CPU tensors); a step that does not apply has its neutral value
        (angle 0, factors 1, sigma 0, no flip, noise sigma 0)."""
        rotate = _coin(n, self.rotation_p, generator)
        angle = torch.where(rotate, _uniform(n, -self.rotation_degrees, self.rotation_degrees, generator), 0.0)
        jitter = _coin(n, self.jitter_p, generator)
        brightness = _uniform(n, max(0.0, 1 - self.jitter[0]), 1 + self.jitter[0], generator)
        contrast = _uniform(n, max(0.0, 1 - self.jitter[1]), 1 + self.jitter[1], generator)
        gamma = _log_uniform(n, *self.gamma_range, generator)
        sigma = _uniform(n, *self.blur_sigma, generator)
        noise = _log_uniform(n, *self.noise_var, generator).sqrt()
        return {
            "box": crop_boxes(n, height, width, self.scale, generator),
            "angle": angle,
            "brightness": torch.where(jitter, brightness, 1.0),
            "contrast": torch.where(jitter, contrast, 1.0),
            "brightness_first": _coin(n, 0.5, generator),
            "gamma": torch.where(_coin(n, self.gamma_p, generator), gamma, 1.0),
            "blur_sigma": torch.where(_coin(n, self.blur_p, generator), sigma, 0.0),
            "hflip": _coin(n, self.hflip_p, generator),
            "vflip": _coin(n, self.vflip_p, generator),
            "noise_sigma": torch.where(_coin(n, self.noise_p, generator), noise, 0.0),
        }

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor], noise: torch.Generator | None = None
              ) -> torch.Tensor:
        """The views of uint8 ``x`` (B, 1, H, W) with ``params``: float (B, 3, size, size) where ``x`` is."""
        dev = x.device

        def per_slice(name: str) -> torch.Tensor:
            return params[name].to(dev, torch.float32).view(-1, 1, 1, 1)

        y = resized_crops(x, params["angle"], params["box"], self.size, self.cubic)
        y = y / 255.0
        if self.jitter_p > 0:
            y = self._jitter(y, per_slice("brightness"), per_slice("contrast"),
                             params["brightness_first"].to(dev).view(-1, 1, 1, 1))
        if self.gamma_p > 0:
            y = y.clamp(0, 1) ** per_slice("gamma")
        if self.blur_p > 0:
            y = blurred(y, params["blur_sigma"], blur_kernel(self.size, self.blur_sigma[1]))
        for flag, dim in (("hflip", -1), ("vflip", -2)):
            if params[flag].any():
                y = torch.where(params[flag].to(dev).view(-1, 1, 1, 1), y.flip(dim), y)
        y = y.expand(-1, 3, -1, -1)
        if self.noise_p > 0:
            sigma = per_slice("noise_sigma")
            draws = torch.randn(y.shape, device=dev, generator=noise)
            y = torch.where(sigma > 0, (y + draws * sigma).clamp(0, 1), y)
        mean = torch.tensor(self.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=dev).view(1, 3, 1, 1)
        return (y - mean) / std

    @staticmethod
    def _jitter(y: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, brightness_first: torch.Tensor
                ) -> torch.Tensor:
        """torchvision's ``adjust_brightness`` and ``adjust_contrast`` (blend with the slice's mean), each clamped
        to [0, 1], in each slice's order."""
        def bright(z: torch.Tensor) -> torch.Tensor:
            return (z * brightness).clamp(0, 1)

        def contrasted(z: torch.Tensor) -> torch.Tensor:
            return (z * contrast + (1 - contrast) * z.mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)

        return torch.where(brightness_first, contrasted(bright(y)), bright(contrasted(y)))


class BatchViews:
    """A method's views of a uint8 batch (B, 1, H, W) on any device: a list of float (B, 3, s, s) tensors, one
    per :class:`BatchView`, as the per-slice views give them after collation. ``seed`` seeds the parameter draws
    (and the noise): give each process its own (the run's seed and its rank)."""

    NOISE_STREAM = 0x9E3779B97F4A7C15  # the noise's seed: the parameters' seed plus this (another stream)

    def __init__(self, views: list[BatchView], seed: int = 0) -> None:
        if not views:
            raise ValueError("BatchViews needs at least one view")
        self.views = views
        self.generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        self._noise_seed = (seed + self.NOISE_STREAM) % 2**63
        self._noise: dict[torch.device, torch.Generator] = {}

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        if device not in self._noise:
            self._noise[device] = torch.Generator(device=device).manual_seed(self._noise_seed)
        return self._noise[device]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected a uint8 batch of grey slices (B, 1, H, W), got {x.dtype} {tuple(x.shape)}")
        b, _, h, w = x.shape
        noise = self._noise_generator(x.device)
        with torch.autocast(x.device.type, enabled=False):  # the resize in float32 under mixed precision too
            return [view.apply(x, view.make_params(b, h, w, self.generator), noise) for view in self.views]


# --- each method's views, with the arguments of its per-slice view ------------------------------


def moco_batch_view(size: int, scale: tuple[float, float], mean: float, std: float, *,
                    rotation_degrees: float = 180.0, rotation_p: float = 0.5,
                    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 1.0,
                    gamma_p: float = 0.0, blur_p: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0),
                    hflip: bool = True, vflip: bool = True, noise_p: float = 0.5,
                    noise_var: tuple[float, float] = (1e-5, 1e-4)) -> BatchView:
    """:func:`ctreduce.ssl.augment.moco_view` made on the device (its arguments; saturation and hue change no
    grey slice, so only the jitter's brightness and contrast are drawn; a rotation of 0 degrees, or with
    probability 0, and jitter factors of 0 leave the slice as it is)."""
    return BatchView(size, scale, (mean,) * 3, (std,) * 3, rotation_degrees=rotation_degrees, rotation_p=rotation_p,
                     jitter=(jitter[0], jitter[1]), jitter_p=jitter_p, gamma_p=gamma_p, blur_p=blur_p,
                     blur_sigma=blur_sigma, hflip_p=0.5 if hflip else 0.0, vflip_p=0.5 if vflip else 0.0,
                     noise_p=noise_p, noise_var=noise_var)


def ct_batch_view(size: int, scale: tuple[float, float], mean: float, std: float, *,
                  jitter: tuple[float, float] = (0.4, 0.4), jitter_p: float = 0.8, gamma_p: float = 0.3,
                  blur_p: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0)) -> BatchView:
    """:func:`ctreduce.ssl.augment.ct_view` (SwAV's crops) made on the device (its arguments)."""
    return BatchView(size, scale, (mean,) * 3, (std,) * 3, jitter=jitter, jitter_p=jitter_p, gamma_p=gamma_p,
                     blur_p=blur_p, blur_sigma=blur_sigma)


def spark_batch_view(size: int, scale: tuple[float, float], mean: tuple[float, ...], std: tuple[float, ...]
                     ) -> BatchView:
    """SparK's view (``ctreduce.ssl.spark.spark_view``) made on the device: bicubic crop of the 8-bit slice,
    horizontal flip, per-channel normalisation."""
    return BatchView(size, scale, tuple(mean), tuple(std), cubic=True, hflip_p=0.5)
