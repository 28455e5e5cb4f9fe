"""The registry of reduction methods: what ``--method`` names, and what each can do.

Two kinds of method register here. A :class:`Measure` turns a volume's 8-bit slices into per-slice features
once (``prepare``) and then scores one reference slice against many others (``Prepared.compare``); it declares
its unit, its valid threshold range, its default threshold and whether higher means more similar, so one
greedy leader rule serves all of them. A :class:`Selector` keeps slices by position alone (``all``,
``every-n``): no score, no threshold.

Both declare their capabilities (:class:`Method`), which the run's stages read instead of a method's name:
whether a few large series may be read in chunks by every worker, and whether the method loads a network
(Ray then keeps it loaded in one actor per GPU).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..core.dhash import hex_of_packed
from ..core.plugins import load_plugins
from . import hashing
from .leader import Compare, Selection, every_n, keep_all


class Method(ABC):
    """What ``--method`` names, with the capabilities the execution backends ask about."""

    name: ClassVar[str]
    # Its work after the slices are scaled to 8 bits is light (a hash, a rule by position): when fewer large
    # DICOM series than workers are reduced, every worker reads a chunk of each. False where comparing slices
    # costs more than reading them (SSIM, MI, DeepNet).
    chunkable: ClassVar[bool] = False
    # It loads a network once per process (weights, a GPU's memory): Ray runs it in one actor per GPU (per
    # worker without GPUs) that keeps the network loaded, where other methods run as plain tasks.
    loads_network: ClassVar[bool] = False
    # Its decisions need only per-slice hashes, each computed from one slice (``reduction.read_once``): a DICOM
    # file is then read once, its header and pixels together, and hashed as it is read. False where the
    # measure compares the slices' images (SSIM, MI, DeepNet): their workers read the ordered volume.
    per_slice: ClassVar[bool] = False

    def preflight(self) -> None:
        """Raise ValueError when this method cannot work on this machine for any volume
        (e.g. a missing GPU or weights), before any volume is read. Must be cheap when it passes."""
        return None  # hash, MI and the selectors need nothing beyond numpy and their validated parameters

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Parameters that change results; recorded in the manifest and run config."""


class Selector(Method):
    """A rule that keeps slices by their position alone: no score, no threshold."""

    chunkable = True

    @abstractmethod
    def select(self, n_slices: int) -> Selection:
        """The slices kept of a volume of ``n_slices`` slices, and the kept slice each dropped one points to."""

    def fit_target(self, slice_counts: Sequence[int], target: float) -> dict[str, Any]:
        """The settings whose kept fraction over volumes of ``slice_counts`` slices is closest to ``target``:
        known from the scan, before any pixel is read."""
        raise ValueError(f"method {self.name!r} takes no target fraction")


@dataclass
class Prepared:
    """Features of one volume: how to compare slices, plus per-slice columns for the manifest."""

    compare: Compare
    columns: dict[str, list[Any]] = field(default_factory=dict)


class Measure(Method):
    """A slice similarity: the greedy leader rule keeps a slice unless it is redundant with a kept one."""

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

    @abstractmethod
    def prepare(self, u8: np.ndarray) -> Prepared:
        """Features of a (slices, rows, cols) uint8 volume."""


MEASURES: dict[str, type[Measure]] = {}
SELECTORS: dict[str, type[Selector]] = {}


def register_measure(cls: type[Measure]) -> type[Measure]:
    MEASURES[cls.name] = cls
    return cls


def register_selector(cls: type[Selector]) -> type[Selector]:
    SELECTORS[cls.name] = cls
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


def method_names() -> list[str]:
    """Every name ``--method`` takes: the selectors, then the measures in alphabetical order."""
    return [*SELECTORS, *sorted(available_measures())]


def get_measure(name: str, **params: Any) -> Measure:
    """Instantiate a registered measure, keeping only the parameters it accepts."""
    if name not in available_measures():
        raise ValueError(f"unknown similarity measure {name!r}; available: {', '.join(sorted(MEASURES))}")
    return _instance(MEASURES[name], params)


def get_method(name: str, **params: Any) -> Method:
    """Instantiate a registered selector or measure, keeping only the parameters it accepts."""
    if name in SELECTORS:
        return _instance(SELECTORS[name], params)
    return get_measure(name, **params)


M = TypeVar("M", bound=Method)


def _instance(cls: type[M], params: dict[str, Any]) -> M:
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


@register_selector
class KeepAll(Selector):
    """Every slice (the paper's ALL)."""

    name = "all"
    per_slice = True

    def params(self) -> dict[str, Any]:
        return {}

    def select(self, n_slices: int) -> Selection:
        return keep_all(n_slices)


@register_selector
class EveryN(Selector):
    """Every N-th slice along z, starting with the first (the paper's fixed-interval baseline)."""

    name = "every-n"
    per_slice = True

    def __init__(self, every_n: int = 10) -> None:
        self.every_n = every_n

    def params(self) -> dict[str, Any]:
        return {"every_n": self.every_n}

    def select(self, n_slices: int) -> Selection:
        return every_n(n_slices, self.every_n)

    def fit_target(self, slice_counts: Sequence[int], target: float) -> dict[str, Any]:
        return {"every_n": every_n_for_target(slice_counts, target)}


def every_n_for_target(slice_counts: Sequence[int], target: float) -> int:
    """The N whose every-n kept fraction over these volumes is closest to ``target``."""
    counts = np.asarray(slice_counts, dtype=np.int64)
    if counts.size == 0 or counts.sum() == 0:
        return 1
    candidates = np.arange(1, int(counts.max()) + 1)
    kept = np.array([np.ceil(counts / k).sum() for k in candidates])
    fractions = kept / counts.sum()
    return int(candidates[np.argmin(np.abs(fractions - target))])


@register_measure
class HashMeasure(Measure):
    """Hamming distance between perceptual hashes (the paper's HASH; dhash 8x8 by default)."""

    name = "hash"
    chunkable = True  # hashing a slice costs less than reading it
    per_slice = True
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
        return self.from_packed(hashing.pack(hashing.hash_bits(u8, self.hash_kind, self.hash_size)))

    def from_packed(self, packed: np.ndarray) -> Prepared:
        """What ``prepare`` makes of the (slices, bytes) packed hashes of the slices."""
        hexes = hex_of_packed(packed, self.hash_size * self.hash_size)  # every kind has hash_size**2 bits
        if packed.shape[1] % 8 == 0:  # XOR whole 64-bit words
            packed = packed.view(">u8")
        return Prepared(lambda ref, others: hashing.hamming(packed, ref, others), {"hash": hexes})
