"""Perceptual hashes of 8-bit slices, bit-identical to imagehash.

``dhash`` reproduces ``imagehash.dhash(PIL.Image.fromarray(u8), hash_size)`` exactly for a whole
stack of slices at once. imagehash resizes with Pillow's LANCZOS filter, which works in fixed
point: per output pixel, integer weights (22 fractional bits) are applied first along rows, the
result rounded and clipped to 8 bits, then along columns. The same integer weights are built here
(with the same double-precision formula as Pillow's ``Resample.c``) and applied as two matrix
products whose every partial sum is an integer that the floating-point type holds exactly, so
BLAS computes them exactly in any order: in float32 with each weight split as
``high * 2**b + low`` (``split_weights``), or in float64 where no split keeps sums below 2**24.

Hashes are stored as packed bits, most significant bit first, one row per slice: Hamming distance is a
popcount of XOR, and :mod:`ctreduce.core.dhash` writes them as imagehash's ``str(hash)``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..core.dhash import hex_of_packed

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images
# ctreduce name -> imagehash function
IMAGEHASH_FUNCTIONS = {"dhash": "dhash", "phash": "phash", "ahash": "average_hash", "whash": "whash"}
HASH_KINDS = tuple(IMAGEHASH_FUNCTIONS)


def _lanczos(x: float) -> float:
    def sinc(v: float) -> float:
        if v == 0.0:
            return 1.0
        v = v * math.pi
        return math.sin(v) / v

    if -3.0 <= x < 3.0:
        return sinc(x) * sinc(x / 3)
    return 0.0


@lru_cache(maxsize=64)
def lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's integer LANCZOS weights as an (in_size, out_size) float64 matrix."""
    support_lanczos = 3.0
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support_lanczos * filterscale
    weights = np.zeros((in_size, out_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0  # summed in Pillow's order, so normalisation rounds the same way
        for w in k:
            ww += w
        for x, w in enumerate(k):
            if ww != 0.0:
                w = w / ww
            fixed = int(-0.5 + w * (1 << PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << PRECISION_BITS))
            weights[x + xmin, xx] = fixed
    weights.setflags(write=False)
    return weights


def _fixed_point(acc: np.ndarray) -> np.ndarray:
    # ss starts at 1 << (PRECISION_BITS - 1); clip8 is an arithmetic shift then a 0..255 clip.
    return np.clip(np.floor((acc + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)), 0, 255)


@lru_cache(maxsize=64)
def split_weights(in_size: int, out_size: int) -> tuple[np.ndarray, float] | None:
    """Pillow's weights as float32 ``[high | low]`` columns, ``weights = high * base + low``, or None.

    With 8-bit pixels (every pass's input is 0..255) each product is an integer and each partial
    sum of a column is bounded by 255 times the column's sum of absolute weights; a base is
    chosen so that this bound stays below 2**24 for both halves, which float32 holds exactly.
    The large first pass then runs as one float32 product instead of a float64 one (0.55 vs
    0.25 ms per 512 px slice, measured). None when no base fits (very large slices).
    """
    weights = lanczos_weights(in_size, out_size)
    for bits in range(1, 24):
        base = float(1 << bits)
        high = np.round(weights / base)
        low = weights - high * base
        if max(np.abs(high).sum(axis=0).max(), np.abs(low).sum(axis=0).max()) * 255 < 1 << 24:
            halves = np.hstack([high, low]).astype(np.float32)
            halves.setflags(write=False)
            return halves, base
    return None


def _pass(x: np.ndarray, axis: str, size: int) -> np.ndarray:
    """One resampling pass of 8-bit values (any float dtype holding 0..255), rounded as Pillow does."""
    n_in = x.shape[-1] if axis == "h" else x.shape[-2]
    split = split_weights(n_in, size)
    if split is None:
        x = x.astype(np.float64, copy=False)
        weights = lanczos_weights(n_in, size)
        return _fixed_point(x @ weights if axis == "h" else weights.T @ x)
    halves, base = split
    x = x.astype(np.float32, copy=False)
    if axis == "h":
        sums = x @ halves
        high, low = sums[..., :size], sums[..., size:]
    else:
        sums = halves.T @ x
        high, low = sums[..., :size, :], sums[..., size:, :]
    return _fixed_point(high.astype(np.float64) * base + low)


def _resize_passes(x: np.ndarray, width: int, height: int, order: str) -> np.ndarray:
    h, w = x.shape[-2:]
    for axis in order:
        if axis == "h" and w != width:
            x = _pass(x, "h", width)
        elif axis == "v" and h != height:
            x = _pass(x, "v", height)
    return x


@lru_cache(maxsize=64)
def pass_order(h: int, w: int, width: int, height: int) -> str:
    """Which pass the installed Pillow runs first for this resize: "hv", "vh" or "pillow".

    Pillow resamples horizontally first, but newer releases (python-pillow/Pillow#9549) start
    with the vertical pass when the height shrinks much more than the width. Rather than copy a
    version-specific rule, random probe images of this shape ask the installed Pillow. A probe that
    both orders resize alike tells nothing (common for tiny targets), so probes go on until one order
    alone reproduces Pillow; if neither does, or no probe tells them apart, hashing uses Pillow
    itself, so results are never approximate.
    """
    from PIL import Image

    rng = np.random.default_rng(h * 7919 + w)
    for _ in range(_PROBES):
        probe = rng.integers(0, 256, (h, w), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(probe).resize((width, height), Image.Resampling.LANCZOS))
        matching = [order for order in ("hv", "vh")
                    if np.array_equal(_resize_passes(probe, width, height, order), expected)]
        if len(matching) == 1:
            return matching[0]
        if not matching:
            return "pillow"
    return "pillow"


_PROBES = 8  # a 512 px slice to 9 x 8 is told apart by the first


@lru_cache(maxsize=1)
def _threadpools():
    """The process's BLAS thread pools, found once: finding them costs ~2 ms, a slice's hash ~0.3 ms."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def lanczos_resize(u8: np.ndarray, width: int, height: int) -> np.ndarray:
    """``Image.fromarray(s).resize((width, height), LANCZOS)`` for each slice of (n, H, W) uint8."""
    n, h, w = u8.shape
    order = pass_order(h, w, width, height)
    out = np.empty((n, height, width), dtype=np.uint8)
    # Per-slice products are too small for BLAS threads to pay off; they only contend for cores.
    with _threadpools().limit(limits=1, user_api="blas"):
        for i in range(n):  # one slice at a time keeps its float copy in cache
            if order == "pillow":
                from PIL import Image

                image = Image.fromarray(u8[i]).resize((width, height), Image.Resampling.LANCZOS)
                out[i] = np.asarray(image)
            else:
                out[i] = _resize_passes(u8[i], width, height, order)
    return out


def dhash_bits(u8: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """Difference-hash bits (n, hash_size, hash_size): right pixel brighter than left."""
    small = lanczos_resize(u8, hash_size + 1, hash_size)
    return small[:, :, 1:] > small[:, :, :-1]


def hash_bits(u8: np.ndarray, kind: str = "dhash", hash_size: int = 8) -> np.ndarray:
    """Hash bits (n, bits...) of each slice; dhash is vectorised, the others call imagehash."""
    if kind not in HASH_KINDS:
        raise ValueError(f"unknown hash {kind!r}; choose one of {', '.join(HASH_KINDS)}")
    if hash_size < 2:
        raise ValueError(f"hash_size must be at least 2, got {hash_size}")
    if u8.dtype != np.uint8 or u8.ndim != 3:
        raise ValueError("hash_bits expects a (slices, rows, cols) uint8 array")
    if kind == "dhash":
        return dhash_bits(u8, hash_size)
    import imagehash
    from PIL import Image

    fn = getattr(imagehash, IMAGEHASH_FUNCTIONS[kind])
    return np.stack([fn(Image.fromarray(s), hash_size=hash_size).hash for s in u8])


def pack(bits: np.ndarray) -> np.ndarray:
    """Pack (n, ...) boolean hashes into (n, bytes) uint8, first bit most significant."""
    return np.packbits(bits.reshape(bits.shape[0], -1), axis=1)


def hamming(packed: np.ndarray, ref: int, others: np.ndarray) -> np.ndarray:
    """Hamming distances between hash ``ref`` and each hash in ``others`` (row indices)."""
    x = np.bitwise_xor(packed[others], packed[ref])
    return np.bitwise_count(x).sum(axis=1, dtype=np.int64)


def dhash(u8: np.ndarray, hash_size: int = 8) -> str | list[str]:
    """imagehash-compatible hex dHash of one uint8 slice (H, W), or of each slice of (n, H, W)."""
    stack = u8[None] if u8.ndim == 2 else u8
    hexes = hex_of_packed(pack(dhash_bits(stack, hash_size)), hash_size * hash_size)
    return hexes[0] if u8.ndim == 2 else hexes
