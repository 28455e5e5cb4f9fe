"""Registry of slice-similarity measures used by the greedy leader engine.

A measure turns a volume's 8-bit slices into per-slice features once (``prepare``) and then
scores one reference slice against many others (``Prepared.compare``). Every measure declares
its unit, its valid threshold range, its default threshold and whether higher means more
similar, so one engine serves all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..core.dhash import hex_of_packed
from ..core.plugins import load_plugins
from . import hashing
from .leader import Compare


@dataclass
class Prepared:
    """Features of one volume: how to compare slices, plus per-slice columns for the manifest."""

    compare: Compare
    columns: dict[str, list[Any]] = field(default_factory=dict)


class Measure(ABC):
    name: ClassVar[str]
    unit: ClassVar[str]
    higher_is_similar: ClassVar[bool]
    default_threshold: ClassVar[float]
    threshold_range: ClassVar[tuple[float, float]]

    def check_threshold(self, threshold: float) -> float:
        lo, hi = self.valid_range()
        if not lo <= threshold <= hi:
            raise ValueError(
                f"threshold {threshold:g} is outside the range of {self.name} ({self.unit}): "
                f"[{lo:g}, {hi:g}]"
            )
        return float(threshold)

    def valid_range(self) -> tuple[float, float]:
        return self.threshold_range

    def sweep_grid(self) -> list[float]:
        """Thresholds tried when a target kept fraction is asked for without explicit ones."""
        lo, hi = self.valid_range()
        lo = max(lo, 0.0)
        return [round(v, 3) for v in np.linspace(lo, hi, 101)[:-1]]

    def preflight(self) -> None:
        """Raise ValueError when this measure cannot work on this machine for any volume
        (e.g. a missing GPU or weights), before any volume is read. Must be cheap when it passes."""
        return None  # hash and MI need nothing beyond numpy and their validated parameters

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Parameters that change results; recorded in the manifest and run config."""

    @abstractmethod
    def prepare(self, u8: np.ndarray) -> Prepared:
        """Features of a (slices, rows, cols) uint8 volume."""


MEASURES: dict[str, type[Measure]] = {}


def register_measure(cls: type[Measure]) -> type[Measure]:
    MEASURES[cls.name] = cls
    return cls


_BUILTIN_MODULES = ("ctreduce.reduction.similarity", "ctreduce.reduction.deepnet")


def available_measures() -> dict[str, type[Measure]]:
    """All registered measures; the built-in ones register on first use (their modules are
    imported here, not at package import, to keep start-up fast), then the plug-ins' (``core.plugins``)."""
    from importlib import import_module

    for module in _BUILTIN_MODULES:
        try:
            import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a missing dependency, not a missing built-in module
                raise
    load_plugins()
    return MEASURES


def get_measure(name: str, **params: Any) -> Measure:
    """Instantiate a registered measure, keeping only the parameters it accepts."""
    import inspect

    if name not in available_measures():
        raise ValueError(f"unknown similarity measure {name!r}; available: {', '.join(sorted(MEASURES))}")
    cls = MEASURES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


@register_measure
class HashMeasure(Measure):
    """Hamming distance between perceptual hashes (the paper's HASH; dhash 8x8 by default)."""

    name = "hash"
    unit = "Hamming distance in bits"
    higher_is_similar = False
    default_threshold = 6.0
    threshold_range = (0.0, 64.0)

    def __init__(self, hash_kind: str = "dhash", hash_size: int = 8) -> None:
        if hash_kind not in hashing.HASH_KINDS:
            raise ValueError(f"unknown hash {hash_kind!r}; choose one of {', '.join(hashing.HASH_KINDS)}")
        if not 2 <= hash_size <= 64:
            raise ValueError(f"hash_size must be in [2, 64], got {hash_size}")
        self.hash_kind = hash_kind
        self.hash_size = hash_size

    def valid_range(self) -> tuple[float, float]:
        return 0.0, float(self.hash_size * self.hash_size)

    def params(self) -> dict[str, Any]:
        return {"hash": self.hash_kind, "hash_size": self.hash_size}

    def sweep_grid(self) -> list[float]:
        return [float(t) for t in range(0, min(self.hash_size * self.hash_size, 32) + 1)]

    def prepare(self, u8: np.ndarray) -> Prepared:
        bits = hashing.hash_bits(u8, self.hash_kind, self.hash_size)
        packed = hashing.pack(bits)
        n_bits = int(np.prod(bits.shape[1:]))
        hexes = hex_of_packed(packed, n_bits)
        if packed.shape[1] % 8 == 0:  # XOR whole 64-bit words
            packed = packed.view(">u8")
        return Prepared(lambda ref, others: hashing.hamming(packed, ref, others), {"hash": hexes})
