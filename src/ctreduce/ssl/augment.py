"""CT augmentations for grey slices, applied to uint8 tensors (1, H, W) in data-loader workers.

Colour jitter on replicated grey channels would only change brightness and contrast, so the
views use brightness/contrast/gamma, blur, noise, crops and the flips/rotations each method's
preset asks for. Every view ends as a normalised float tensor (3, size, size); a method's views of one
slice are lightly's ``MultiViewTransform`` of them.

Each random step of ours draws its parameters in ``make_params`` (torchvision v2's name and signature), which its
``forward`` calls first: the laws of a view's parameters can be sampled without making pixels, draw for draw as
the view would (tests/test_ssl_view_laws.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import v2


class RandomGamma(torch.nn.Module):
    """x ** gamma on [0, 1] images, log-uniform gamma in ``gamma_range``, with probability p."""

    def __init__(self, gamma_range: tuple[float, float] = (0.7, 1.4), p: float = 0.5) -> None:
        super().__init__()
        if not 0 < gamma_range[0] <= gamma_range[1]:
            raise ValueError(f"gamma_range must be positive and ordered, got {gamma_range}")
        self.gamma_range, self.p = gamma_range, p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """The coin, then the gamma; ``gamma`` None: the image is left as it is."""
        if torch.rand(()) >= self.p:
            return {"gamma": None}
        lo, hi = math.log(self.gamma_range[0]), math.log(self.gamma_range[1])
        return {"gamma": math.exp(lo + (hi - lo) * float(torch.rand(())))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.make_params([x])["gamma"]
        return x if gamma is None else x.clamp(0, 1) ** gamma


class SeparableGaussianBlur(torch.nn.Module):
    """Gaussian blur with sigma drawn from ``sigma_range``, as two 1-D passes of ``kernel_size`` taps, reflected edges.

    Same result as torchvision's 2-D Gaussian kernel (it is separable, up to float rounding) at a fraction of the
    cost. Each pass is a sum of shifted copies weighted by the kernel's taps, skipping the outer taps whose weight
    (below 1e-8 of the whole, sigma small beside the kernel) moves no output by more than float rounding: a third of
    the cost of a grouped ``conv2d`` with the whole kernel.
    """

    def __init__(self, kernel_size: int, sigma_range: tuple[float, float] = (0.1, 2.0)) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        self.kernel_size, self.sigma_range = kernel_size, sigma_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.sigma_range
        return {"sigma": lo + (hi - lo) * float(torch.rand(()))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.make_params([x])["sigma"]
        radius = self.kernel_size // 2
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        kept = int((k[radius:] >= 1e-8).sum()) - 1  # the taps beyond this radius weigh less than float rounding
        if kept == 0:
            return x.clone()
        taps = k[radius - kept:radius + kept + 1].tolist()
        height, width = x.shape[-2:]
        y = torch.nn.functional.pad(x[None], (kept, kept, kept, kept), mode="reflect")[0]
        rows = y[..., :width] * taps[0]
        for i, tap in enumerate(taps[1:], 1):
            rows.add_(y[..., i:i + width], alpha=tap)
        out = rows[..., :height, :] * taps[0]
        for i, tap in enumerate(taps[1:], 1):
            out.add_(rows[..., i:i + height, :], alpha=tap)
        return out


class ToThreeChannels(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x


def blur_kernel(size: int, sigma_max: float) -> int:
    """Odd kernel covering +-3 sigma_max, as Pillow's ``GaussianBlur`` of the paper's views (three box blurs:
    support about 3 sigma), and at least torchvision's 10%-of-size kernel; the radius stays below ``size``
    (reflect padding)."""
    radius = max(math.ceil(3 * sigma_max), int(0.1 * size) // 2, 1)
    return 2 * min(radius, size - 1) + 1


def ct_view(size: int, scale: tuple[float, float], mean: float, std: float, *,
            jitter: tuple[float, float] = (0.4, 0.4), jitter_p: float = 0.8, gamma_p: float = 0.3,
            blur_p: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0)) -> v2.Compose:
    """One random view of a uint8 (1, H, W) slice as a normalised float (3, size, size): crop, brightness and
    contrast jitter, random gamma, Gaussian blur (:func:`blur_kernel`), no flips and no noise (SwAV's views)."""
    steps: list[torch.nn.Module] = [
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomResizedCrop(size, scale=scale, antialias=True),
        v2.RandomApply([v2.ColorJitter(brightness=jitter[0], contrast=jitter[1])], p=jitter_p),
        RandomGamma(p=gamma_p),
    ]
    if blur_p > 0:
        steps.append(v2.RandomApply([SeparableGaussianBlur(blur_kernel(size, blur_sigma[1]), blur_sigma)], p=blur_p))
    steps += [ToThreeChannels(), v2.Normalize([mean] * 3, [std] * 3)]
    return v2.Compose(steps)


# --- MoCo: the paper's views -------------------------------------------------------------------


class RotatedResizedCrop(torch.nn.Module):
    """``RandomApply([RandomRotation(degrees, NEAREST, fill=0)], p)`` then ``RandomResizedCrop(size, scale)`` of a
    uint8 (1, H, W) slice, as a float (1, size, size) on [0, 1], computing the rotation only where the crop keeps it.

    The parameters come from torchvision's own transforms, drawn in their order (the rotation's coin and angle,
    then the crop box on the rotated image, which has the slice's size): the same laws and, for one random state,
    the same values as the two transforms in a row. The rotated pixels inside the crop box are gathered from the
    slice by nearest neighbour with torchvision's geometry (rotation about the image centre, outside filled with
    0), equal to its rotation up to float rounding at exact half-pixel positions; rotating the whole 512 px slice
    through torchvision's affine grid was about half of a MoCo view's cost.
    """

    def __init__(self, size: int, scale: tuple[float, float], degrees: float, p: float) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.size, self.p = size, p
        self.rotation = v2.RandomRotation(degrees, interpolation=v2.InterpolationMode.NEAREST, fill=0)
        self.crop = v2.RandomResizedCrop(size, scale=scale, antialias=True)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """The rotation's coin and angle (None: not rotated), then the crop box (top, left, height, width)."""
        angle = None
        if self.p > 0 and torch.rand(1) < self.p:  # v2.RandomApply's coin
            angle = self.rotation.make_params(flat_inputs)["angle"]
        return {"angle": angle, **self.crop.make_params(flat_inputs)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self.make_params([x])
        angle, top, left, height, width = (params[k] for k in ("angle", "top", "left", "height", "width"))
        if angle is None:
            window = x[..., top:top + height, left:left + width]
        else:
            window = rotated_window(x, angle, top, left, height, width)
        window = v2.functional.to_dtype(window, torch.float32, scale=True)
        return v2.functional.resize(window, [self.size, self.size], antialias=True)


def rotated_window(x: torch.Tensor, angle: float, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Rows ``top``.. and columns ``left``.. of ``x`` (C, H, W) rotated by ``angle`` degrees counter-clockwise about
    its centre, nearest neighbour, 0 outside: torchvision's ``rotate`` (its inverse affine matrix, and grid_sample's
    pixel centres and round-half-to-even) evaluated only on that window.

    The slice is padded with the fill as far as a rotated pixel can reach (:func:`rotation_reach`), so every source
    index is within the padded slice, and ``torch.take`` gathers them (a third of the time of clamped indices, a
    mask and advanced indexing)."""
    r = math.radians(-(angle % 360))
    h, w = x.shape[-2:]
    pad = rotation_reach(h, w)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # the fill, 0, around the slice
    ys = torch.arange(top, top + height, dtype=torch.float32)[:, None]
    xs = torch.arange(left, left + width, dtype=torch.float32)[None, :]
    index = rotated_index(ys, xs, math.cos(r), math.sin(r), h, w, pad)
    return torch.stack([torch.take(plane, index) for plane in padded])


def rotation_reach(h: int, w: int) -> int:
    """How far outside an h x w slice a pixel rotated about its centre can fall (its corners' distance from the
    centre): the fill's margin around the slice."""
    return math.ceil(0.5 * math.hypot(h - 1, w - 1) - 0.5 * min(h - 1, w - 1)) + 1


def rotated_index(ys: torch.Tensor, xs: torch.Tensor, cos: float | torch.Tensor, sin: float | torch.Tensor,
                  h: int, w: int, pad: int) -> torch.Tensor:
    """Flat int64 indices, into an h x w slice padded by ``pad``, of the source pixels of rows ``ys`` and columns
    ``xs`` (float32, broadcastable; a batch's with its own ``cos``/``sin``) after rotating the slice by the angle
    whose cosine and sine are given: torchvision's inverse affine map, float32 arithmetic, round half to even."""
    ys = ys - (h - 1) * 0.5
    xs = xs - (w - 1) * 0.5
    ix = (xs * cos + (ys * sin + (w * 0.5 - 0.5))).round_()
    iy = ((ys * cos + (h * 0.5 - 0.5)) - xs * sin).round_()
    padded_width = w + 2 * pad
    if (h + 2 * pad) * padded_width > 2**24:  # float32 holds the flat indices exactly below 2**24, float64 above
        iy = iy.double()
    return iy.mul_(padded_width).add_(ix).add_(pad * padded_width + pad).to(torch.int64)


class LogUniformGaussianNoise(torch.nn.Module):
    """Additive Gaussian noise as the paper's MoCo views (``GaussNoise`` in its
    ``moco_data_module.py``): with probability p, a variance drawn log-uniformly from
    ``var_range`` (images on [0, 1]), independent noise for every element (each channel of a
    3-channel image gets its own), then clamped to [0, 1]."""

    def __init__(self, var_range: tuple[float, float] = (1e-5, 1e-4), p: float = 0.5) -> None:
        super().__init__()
        if not 0 < var_range[0] <= var_range[1]:
            raise ValueError(f"var_range must be positive and ordered, got {var_range}")
        self.var_range, self.p = var_range, p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """The coin, then the noise's standard deviation (the square root of the variance); None: no noise. The
        noise itself is drawn by ``forward`` after these."""
        if torch.rand(()) >= self.p:
            return {"sigma": None}
        lo, hi = math.log(self.var_range[0]), math.log(self.var_range[1])
        return {"sigma": math.exp(0.5 * (lo + (hi - lo) * float(torch.rand(()))))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.make_params([x])["sigma"]
        if sigma is None:
            return x
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device)
        return noise.mul_(sigma).add_(x).clamp_(0, 1)  # x + noise * sigma, clamped, in one buffer


def moco_view(
    size: int,
    scale: tuple[float, float],
    mean: float,
    std: float,
    *,
    rotation_degrees: float = 180.0,
    rotation_p: float = 0.5,
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 1.0,
    gamma_p: float = 0.0,
    blur_p: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    hflip: bool = True,
    vflip: bool = True,
    noise_p: float = 0.5,
    noise_var: tuple[float, float] = (1e-5, 1e-4),
) -> v2.Compose:
    """One MoCo view of a uint8 (1, H, W) slice as a normalised float (3, size, size), in the
    order of the paper's script (``moco_data_module.py``: RandomApply(RandomRotation(180), 0.5),
    RandomResizedCrop(224, (0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1), RandomApply(GaussianBlur
    (0.1-2), 0.5), horizontal and vertical flips, ToTensor, GaussNoise(p=0.5), Normalize):

    - rotation by an angle uniform in [-rotation_degrees, rotation_degrees], nearest neighbour,
      corners filled with 0, on the whole slice before the crop (torchvision's defaults), computed only
      where the crop keeps it (:class:`RotatedResizedCrop`);
    - torchvision's ColorJitter with ``jitter`` (brightness, contrast, saturation, hue) applied to
      every view (``jitter_p`` 1): on a grey slice saturation and hue change nothing (torchvision
      returns a 1-channel image unchanged, as Pillow does for grey RGB), so it is brightness and
      contrast factors in [0.6, 1.4] in random order;
    - optional random gamma (``gamma_p``, not in the paper);
    - Gaussian blur with sigma uniform in ``blur_sigma`` pixels (kernel covers +-3 sigma, at least
      10% of ``size``), flips, then the 3 channels, noise on each, normalisation.
    """
    rotating = rotation_p > 0 and rotation_degrees > 0
    steps: list[torch.nn.Module] = [RotatedResizedCrop(size, scale, rotation_degrees if rotating else 0.0,
                                                       rotation_p if rotating else 0.0)]
    if jitter_p > 0 and any(jitter):
        brightness, contrast, saturation, hue = jitter
        colour = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        steps.append(colour if jitter_p >= 1 else v2.RandomApply([colour], p=jitter_p))
    if gamma_p > 0:
        steps.append(RandomGamma(p=gamma_p))
    if blur_p > 0:
        steps.append(v2.RandomApply([SeparableGaussianBlur(blur_kernel(size, blur_sigma[1]), blur_sigma)], p=blur_p))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    steps.append(ToThreeChannels())
    if noise_p > 0:
        steps.append(LogUniformGaussianNoise(noise_var, p=noise_p))
    steps.append(v2.Normalize([mean] * 3, [std] * 3))
    return v2.Compose(steps)
