"""Intensity policies: how HU slices become the 8-bit images that are hashed and exported.

Pillow's ``convert('L')`` clips 16-bit data to 255, so the scaling is explicit and recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_SPEC = re.compile(r"^(minmax|window|range)(?::\s*(-?[\d.eE+-]+)\s*,\s*(-?[\d.eE+-]+))?$")


@dataclass(frozen=True)
class Intensity:
    """``minmax`` (paper default, per slice), ``window:WL,WW`` or ``range:LO,HI`` (in HU)."""

    kind: str = "minmax"
    a: float | None = None
    b: float | None = None

    @classmethod
    def parse(cls, text: str | Intensity) -> Intensity:
        if isinstance(text, Intensity):
            return text
        match = _SPEC.match(str(text).strip().lower())
        if not match:
            raise ValueError(
                f"intensity policy {text!r} not understood; use 'minmax', 'window:WL,WW' "
                "(e.g. window:-600,1500) or 'range:LO,HI' (e.g. range:-1000,400)"
            )
        kind, a, b = match.groups()
        if kind == "minmax":
            if a is not None:
                raise ValueError("'minmax' takes no parameters")
            return cls("minmax")
        if a is None or b is None:
            raise ValueError(f"'{kind}' needs two numbers, e.g. {kind}:-600,1500")
        policy = cls(kind, float(a), float(b))
        lo, hi = policy.bounds
        if not hi > lo:
            raise ValueError(f"intensity policy {text!r} gives an empty HU range [{lo}, {hi}]")
        return policy

    @property
    def bounds(self) -> tuple[float, float]:
        """The fixed HU range of ``window``/``range`` policies."""
        if self.kind == "window":
            return self.a - self.b / 2, self.a + self.b / 2  # type: ignore[operator]
        if self.kind == "range":
            return self.a, self.b  # type: ignore[return-value]
        raise ValueError("minmax has no fixed bounds")

    def __str__(self) -> str:
        if self.kind == "minmax":
            return "minmax"
        return f"{self.kind}:{self.a:g},{self.b:g}"

    def to_uint8(self, hu: np.ndarray) -> np.ndarray:
        """Scale (slices, rows, cols) or (rows, cols) HU to uint8 with this policy."""
        squeeze = hu.ndim == 2
        stack = hu[None] if squeeze else hu
        if self.kind == "minmax":
            out = np.empty(stack.shape, dtype=np.uint8)
            for i, s in enumerate(stack):
                out[i] = minmax_uint8(s)
        else:
            lo, hi = self.bounds
            x = np.clip(stack.astype(np.float64), lo, hi)
            out = np.rint((x - lo) / (hi - lo) * 255).astype(np.uint8)
        return out[0] if squeeze else out


def minmax_uint8(x: np.ndarray) -> np.ndarray:
    """The paper's per-slice scaling: ``rint((x - min) / (max - min) * 255)`` in float64.

    A constant slice gives zeros. Integer slices take an exact lookup table (the same float64
    arithmetic on each distinct value) instead of four full-size float64 passes.
    """
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.zeros(x.shape, dtype=np.uint8)
    if np.issubdtype(x.dtype, np.integer) and int(hi) - int(lo) <= 1 << 16:
        span = int(hi) - int(lo)
        lut = np.rint(np.arange(span + 1, dtype=np.float64) / float(span) * 255).astype(np.uint8)
        if x.dtype == np.int16:
            # Shift into uint16 without widening the slice: v + 32768 via the sign bit.
            index = x.view(np.uint16) ^ np.uint16(0x8000)
            full = np.zeros(1 << 16, dtype=np.uint8)
            start = int(lo) + 32768
            full[start : start + span + 1] = lut
            return full[index]
        return lut[x.astype(np.int64) - int(lo)]
    xf = x.astype(np.float64)
    return np.rint((xf - float(lo)) / (float(hi) - float(lo)) * 255).astype(np.uint8)
