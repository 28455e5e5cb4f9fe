"""Image-similarity measures: SSIM and normalised mutual information, batched per reference.

Both score one reference slice against many slices at once; per-slice terms (SSIM's local means
and second moments, MI's binned images and marginal entropies) are computed once per volume.
Both run on numpy; SSIM runs through torch where torch is installed (on the GPU when present), else on
numpy with the same arithmetic: the two give the same scores to the bit, so the same slices are kept.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np

from ..core.devices import device_name, resolve_device
from ..core.extras import missing_extra
from .measures import Measure, Prepared, register_measure

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's value for gaussian_weights=True: an 11-tap window
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_DATA_RANGE = 255.0  # slices are compared after the 8-bit intensity policy
CPU_CHUNK = 16


@contextmanager
def cpu_threads(device: Any, n: int = 1):
    """Run small per-batch tensor work on ``n`` CPU threads: intra-op threads cost more than they
    save at these sizes (measured 3-8x slower SSIM with 2 threads on a busy 2-core machine)."""
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian kernel (radius int(truncate * sigma + 0.5)), normalised."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def resize_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of torch's antialiased bilinear resize (``F.interpolate(mode='bilinear',
    antialias=True, align_corners=False)``, Pillow's algorithm): a triangle filter widened by the
    downscaling factor, each row normalised; computed term by term as torch computes them."""
    scale = size_in / size_out
    support, inv_scale = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), size_in)
        w = np.clip(1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) * inv_scale), 0.0, None)
        total = sum(w.tolist())
        weights[i, lo:hi] = w / total if total else w
    return weights


def _banded_product(x: np.ndarray, weights: np.ndarray, axis: int, block: int = 8) -> np.ndarray:
    """``x`` resized along ``axis`` (-1 or -2) by ``weights`` (out, in), which are zero outside a narrow band:
    a matrix product per block of outputs over the inputs that block reaches (about 10x fewer operations
    than one dense product when shrinking 512 px to 128)."""
    shape = list(x.shape)
    shape[axis] = len(weights)
    out = np.empty(shape)
    for start in range(0, len(weights), block):
        rows = weights[start : start + block]
        reached = np.flatnonzero(rows.any(axis=0))
        lo, hi = reached[0], reached[-1] + 1
        if axis == -1:
            np.matmul(x[..., lo:hi], rows[:, lo:hi].T, out=out[..., start : start + block])
        else:
            np.matmul(rows[:, lo:hi], x[..., lo:hi, :], out=out[..., start : start + block, :])
    return out


def _filter_numpy(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter without padding, float32: (m, S, S) -> (m, S - 2r, S - 2r).

    Each tap is added as one fused multiply-add (the product and the sum rounded once to float32,
    through float64, where a float32 product is exact), as torch's vectorised ``add_(x, alpha=k)``
    does on CPU and GPU: the numpy and torch filters agree to the bit.
    """
    taps = len(kernel)
    wide = kernel.astype(np.float64)

    def one_axis(x: np.ndarray, axis: int) -> np.ndarray:
        n = x.shape[axis] - taps + 1

        def shifted(i: int) -> np.ndarray:
            return x[..., i : i + n] if axis == -1 else x[..., i : i + n, :]

        out = shifted(0) * kernel[0]
        acc = np.empty(out.shape, np.float64)
        for i in range(1, taps):
            np.multiply(shifted(i), wide[i], out=acc)
            acc += out
            out[...] = acc
        return out

    return one_axis(one_axis(images, -1), -2)


def _filter_torch(images, kernel):
    """The same filter in torch: in-place shifted sums (11 taps per axis), about 10x fewer operations than a
    product with a banded matrix and faster than a one-channel conv2d on CPU."""
    taps = kernel.numel()
    width = images.shape[-1] - taps + 1
    rows = images[..., :, 0:width] * kernel[0]
    for i in range(1, taps):
        rows.add_(images[..., :, i : i + width], alpha=float(kernel[i]))
    height = images.shape[-2] - taps + 1
    out = rows[..., 0:height, :] * kernel[0]
    for i in range(1, taps):
        out.add_(rows[..., i : i + height, :], alpha=float(kernel[i]))
    return out


def ssim_map(x, mu_x, xx, others, mu_y, yy, filtered):
    """SSIM maps of reference ``x`` against each image in ``others`` (Wang et al. 2004, Eq. 13), numpy
    arrays or torch tensors alike; ``filtered`` is the Gaussian filter of the same kind.

    Local statistics use a Gaussian window (sigma 1.5, 11 taps) and population covariance, as
    ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``;
    the maps cover the pixels whose window lies inside the image, which is exactly skimage's crop of
    the filter radius, so no padding convention is involved. Images arrive centred on 128 (variances
    and covariances do not change; means are shifted back for the luminance term), which keeps
    float32 sums accurate.
    """
    xy = filtered(others * x[None])
    vx = xx - mu_x * mu_x
    vy = yy - mu_y * mu_y
    vxy = xy - mu_x[None] * mu_y
    mx, my = mu_x[None] + 128.0, mu_y + 128.0
    c1, c2 = (SSIM_K1 * SSIM_DATA_RANGE) ** 2, (SSIM_K2 * SSIM_DATA_RANGE) ** 2
    return ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx[None] + vy + c2))


@register_measure
class SSIMMeasure(Measure):
    """Structural similarity of slices resized to ``ssim_size`` (batched; torch where installed, else numpy)."""

    name = "ssim"
    unit = "mean SSIM"
    higher_is_similar = True
    default_threshold = 0.9
    threshold_range = (-1.0, 1.0)

    def __init__(self, ssim_size: int = 128, device: str = "auto", batch_size: int = 64) -> None:
        if ssim_size < 16:
            raise ValueError(f"ssim_size must be at least 16 pixels, got {ssim_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.ssim_size = ssim_size
        self.device = device_name(device)
        self.batch_size = batch_size

    def torch_device(self) -> Any:
        """The torch device SSIM runs on, or None where torch is not installed: then numpy on the CPU, which
        gives the same scores to the bit (tested). A device that was asked for and is missing raises."""
        try:
            return resolve_device(self.device)
        except ModuleNotFoundError as exc:
            if self.device in ("cpu", "auto"):
                return None
            missing = missing_extra(exc, f"ssim on device {self.device!r}")
            if missing is None:
                raise
            raise missing from exc

    def preflight(self) -> None:
        """The requested device exists (``device='cuda'`` on a machine without CUDA fails here)."""
        self.torch_device()

    def params(self) -> dict[str, Any]:
        return {"ssim_size": self.ssim_size, "sigma": SSIM_SIGMA, "K1": SSIM_K1, "K2": SSIM_K2,
                "data_range": SSIM_DATA_RANGE}

    def resize(self, u8: np.ndarray) -> np.ndarray:
        """The images SSIM compares (float64): bilinear, antialiased resize to ssim_size x ssim_size, along
        rows first, as torch's ``F.interpolate(antialias=True)`` (equal to it after the float32 cast: tested)."""
        u8 = np.asarray(u8)
        size = self.ssim_size
        if u8.shape[-2:] == (size, size):
            return u8.astype(np.float64)
        across, down = resize_weights(u8.shape[-1], size), resize_weights(u8.shape[-2], size)
        out = np.empty((len(u8), size, size))
        for start in range(0, len(u8), 8):  # 8 slices at a time: no float64 copy of the whole volume
            x = u8[start : start + 8].astype(np.float64)
            out[start : start + 8] = _banded_product(_banded_product(x, across, axis=-1), down, axis=-2)
        return out.clip(0, 255, out=out)

    def prepare(self, u8: np.ndarray) -> Prepared:
        images = (self.resize(u8) - 128.0).astype(np.float32)
        kernel = gaussian_window().astype(np.float32)
        device = self.torch_device()
        if device is None:
            return ssim_numpy(images, kernel)
        return ssim_torch(images, kernel, device, self.batch_size)


def ssim_numpy(images: np.ndarray, kernel: np.ndarray) -> Prepared:
    """SSIM of float32 images centred on 128 with numpy (where torch is not installed)."""
    mu = _filter_numpy(images, kernel)
    sq = _filter_numpy(images * images, kernel)

    def filtered(x: np.ndarray) -> np.ndarray:
        return _filter_numpy(x, kernel)

    def compare(ref: int, others: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(others), CPU_CHUNK):
            idx = others[start : start + CPU_CHUNK]
            s = ssim_map(images[ref], mu[ref], sq[ref], images[idx], mu[idx], sq[idx], filtered)
            out.append(s.reshape(len(idx), -1).mean(axis=1, dtype=np.float64))
        return np.concatenate(out) if out else np.zeros(0)

    return Prepared(compare)


def ssim_torch(images: np.ndarray, kernel: np.ndarray, device: Any, batch_size: int) -> Prepared:
    """SSIM of float32 images centred on 128 with torch on ``device`` (CPU or GPU)."""
    import torch

    images = torch.from_numpy(images).to(device)
    kernel = torch.from_numpy(kernel).to(device)
    mu = _filter_torch(images, kernel)
    sq = _filter_torch(images * images, kernel)
    # On CPU, chunks of 16 slices keep the float32 maps in cache (measured 1.4x faster than 64).
    chunk = batch_size if device.type != "cpu" else min(batch_size, CPU_CHUNK)

    def filtered(x):
        return _filter_torch(x, kernel)

    def compare(ref: int, others: np.ndarray) -> np.ndarray:
        out = []
        with cpu_threads(device):
            for start in range(0, len(others), chunk):
                idx = torch.from_numpy(others[start : start + chunk]).to(device)
                s = ssim_map(images[ref], mu[ref], sq[ref], images[idx], mu[idx], sq[idx], filtered)
                out.append(s.flatten(1).double().mean(dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    return Prepared(compare)


def nmi_from_joint(joint: np.ndarray) -> np.ndarray:
    """Normalised mutual information MI / mean(H(x), H(y)) of (m, bins, bins) joint counts.

    Matches ``sklearn.metrics.normalized_mutual_info_score`` (arithmetic mean): 1 when both
    images are constant, 0 when the mutual information is 0.
    """
    total = joint.sum(axis=(1, 2), keepdims=True)
    p = joint / total
    px, py = p.sum(axis=2), p.sum(axis=1)

    def entropy(q: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(q > 0, q * np.log(q), 0.0).sum(axis=-1)

    hx, hy = entropy(px), entropy(py)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = p / (px[:, :, None] * py[:, None, :])
        mi = np.where(p > 0, p * np.log(ratio), 0.0).sum(axis=(1, 2))
    mi = np.clip(mi, 0.0, None)
    denom = (hx + hy) / 2
    nmi = np.where(denom > 0, mi / np.where(denom > 0, denom, 1.0), 0.0)
    both_constant = ((px > 0).sum(axis=1) == 1) & ((py > 0).sum(axis=1) == 1)
    return np.where(both_constant, 1.0, np.where(mi == 0, 0.0, nmi))


@register_measure
class MIMeasure(Measure):
    """Normalised mutual information of the 8-bit slices from a joint histogram of ``mi_bins``."""

    name = "mi"
    unit = "normalised mutual information"
    higher_is_similar = True
    default_threshold = 0.5
    threshold_range = (0.0, 1.0)

    def __init__(self, mi_bins: int = 64, batch_size: int = 64) -> None:
        if not 2 <= mi_bins <= 256:
            raise ValueError(f"mi_bins must be in [2, 256], got {mi_bins}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.mi_bins = mi_bins
        self.batch_size = batch_size

    def params(self) -> dict[str, Any]:
        return {"mi_bins": self.mi_bins}

    def binned(self, u8: np.ndarray) -> np.ndarray:
        """Equal-width bins of the 8-bit range: value * bins // 256."""
        return (u8.astype(np.uint16) * self.mi_bins // 256).astype(np.uint16)

    def prepare(self, u8: np.ndarray) -> Prepared:
        bins = self.mi_bins
        labels = self.binned(u8).reshape(len(u8), -1)

        def compare(ref: int, others: np.ndarray) -> np.ndarray:
            out = []
            x = labels[ref].astype(np.int64) * bins
            for start in range(0, len(others), self.batch_size):
                idx = others[start : start + self.batch_size]
                offsets = (np.arange(len(idx), dtype=np.int64) * bins * bins)[:, None]
                flat = (labels[idx] + x[None] + offsets).ravel()
                joint = np.bincount(flat, minlength=len(idx) * bins * bins).reshape(len(idx), bins, bins)
                out.append(nmi_from_joint(joint.astype(np.float64)))
            return np.concatenate(out) if out else np.zeros(0)

        return Prepared(compare)
