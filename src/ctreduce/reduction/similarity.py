"""Image-similarity measures: SSIM and normalised mutual information, batched per reference.

Both score one reference slice against many slices at once; per-slice terms (SSIM's local means
and second moments, MI's binned images and marginal entropies) are computed once per volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .measures import Measure, Prepared, register_measure

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's value for gaussian_weights=True: an 11-tap window
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_DATA_RANGE = 255.0  # slices are compared after the 8-bit intensity policy


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian kernel (radius int(truncate * sigma + 0.5)), normalised."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def band_matrix(size: int, kernel: np.ndarray) -> np.ndarray:
    """(size, size - 2r) matrix whose product applies ``kernel`` without padding ("valid")."""
    k = len(kernel)
    band = np.zeros((size, size - k + 1))
    for j in range(size - k + 1):
        band[j : j + k, j] = kernel
    return band


def _valid_filter(images, band):
    """Separable Gaussian filter without padding: (m, S, S) -> (m, S - 2r, S - 2r).

    Two products with a banded matrix: several times faster than conv2d for one channel.
    """
    return band.T @ images @ band


def ssim_map_mean(x, mu_x, xx, others, mu_y, yy, band):
    """Mean SSIM of reference ``x`` against each image in ``others`` (Wang et al. 2004, Eq. 13).

    Local statistics use a Gaussian window (sigma 1.5, 11 taps) and population covariance, as
    ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``;
    the mean is over the pixels whose window lies inside the image, which is exactly skimage's
    crop of the filter radius, so no padding convention is involved.
    """
    xy = _valid_filter(others * x[None], band)
    vx = xx - mu_x * mu_x
    vy = yy - mu_y * mu_y
    vxy = xy - mu_x[None] * mu_y
    c1, c2 = (SSIM_K1 * SSIM_DATA_RANGE) ** 2, (SSIM_K2 * SSIM_DATA_RANGE) ** 2
    s = ((2 * mu_x[None] * mu_y + c1) * (2 * vxy + c2)) / (
        (mu_x[None] ** 2 + mu_y**2 + c1) * (vx[None] + vy + c2)
    )
    return s.flatten(1).mean(dim=1)


@register_measure
class SSIMMeasure(Measure):
    """Structural similarity of slices resized to ``ssim_size`` (batched, GPU when present)."""

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
        self.device = device
        self.batch_size = batch_size

    def params(self) -> dict[str, Any]:
        return {"ssim_size": self.ssim_size, "sigma": SSIM_SIGMA, "K1": SSIM_K1, "K2": SSIM_K2,
                "data_range": SSIM_DATA_RANGE}

    def resize(self, u8: np.ndarray) -> np.ndarray:
        """The images SSIM compares: bilinear, antialiased resize to ssim_size x ssim_size."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(u8)).to(torch.float64)[:, None]
        if x.shape[-2:] != (self.ssim_size, self.ssim_size):
            x = F.interpolate(x, size=(self.ssim_size, self.ssim_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return x[:, 0].clamp(0, 255).numpy()

    def prepare(self, u8: np.ndarray) -> Prepared:
        import torch

        device = resolve_device(self.device)
        dtype = torch.float64 if device == "cpu" else torch.float32
        images = torch.from_numpy(self.resize(u8)).to(device=device, dtype=dtype)
        band = torch.from_numpy(band_matrix(self.ssim_size, gaussian_window())).to(device=device, dtype=dtype)
        mu = _valid_filter(images, band)
        sq = _valid_filter(images * images, band)

        def compare(ref: int, others: np.ndarray) -> np.ndarray:
            out = []
            for start in range(0, len(others), self.batch_size):
                idx = torch.from_numpy(others[start : start + self.batch_size]).to(device)
                out.append(ssim_map_mean(images[ref], mu[ref], sq[ref], images[idx], mu[idx], sq[idx],
                                         band).double().cpu().numpy())
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
