"""Planning, the first stage of a reduce run: everything decided before a pixel is read.

The settings are resolved once against the method registry (:func:`settings`); the inputs are scanned from
their headers, and the settings each volume is reduced with are fixed (a selector's target fraction is met from
the slice counts: every-n's N) into one :class:`Plan`. What the settings mean for the later stages is answered
here too: the thresholds computed (:func:`sweep`), what a rerun must match (:func:`identity`), the score column.

``ctreduce.config.ReduceConfig`` holds the settings as typed values (the CLI, the API and experiment files
share its names); this module gives them their meaning, so that the config module imports no algorithm.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ReduceConfig
from ..io.discover import HeaderCache, Listing, ScanResult, SliceFunction, scan
from ..io.intensity import Intensity
from .measures import Measure, Method, Selector, get_method, method_names


class NoVolumes(ValueError):
    """The inputs hold no volume at all (nothing is written)."""


def settings(config: ReduceConfig | None = None, **overrides: Any) -> ReduceConfig:
    """``config`` (default: the defaults) with ``overrides``, resolved (:func:`resolve`); ValueError for
    unusable settings."""
    if config is None or overrides:
        base = config.model_dump() if config is not None else {}
        config = ReduceConfig(**{**base, **overrides})
    return resolve(config)


def resolve(config: ReduceConfig) -> ReduceConfig:
    """``config`` with a known method, a canonical intensity policy, thresholds checked against the
    measure's range and sorted, and ``threshold`` set (the measure's default when None). ValueError
    names what is wrong. Idempotent."""
    known = method_names()
    if config.method not in known:
        raise ValueError(f"unknown method {config.method!r}; choose one of {', '.join(known)}")
    update: dict[str, Any] = {"intensity": str(Intensity.parse(config.intensity))}
    measure = method_of(config)
    if isinstance(measure, Measure):
        if config.thresholds:
            update["thresholds"] = tuple(sorted({measure.check_threshold(t) for t in config.thresholds}))
        default = update["thresholds"][0] if config.thresholds else measure.default_threshold
        update["threshold"] = measure.check_threshold(default if config.threshold is None else config.threshold)
    return config.model_copy(update=update)


def method_of(config: ReduceConfig) -> Method:
    """The registered selector or measure ``config`` names, with its parameters."""
    return get_method(config.method, **config.model_dump())


def for_volumes(config: ReduceConfig, slice_counts: Sequence[int]) -> ReduceConfig:
    """What volumes of these slice counts are reduced with: ``config``, a selector's target fraction met
    (every-n: the N whose kept fraction is closest to it)."""
    chosen = fitted(config, slice_counts)
    return settings(config, **chosen) if chosen else config


def fitted(config: ReduceConfig, slice_counts: Sequence[int]) -> dict[str, Any]:
    """The settings a selector chooses to meet ``config``'s target fraction ({} for measures, whose target is
    met by a threshold sweep over the whole dataset, and without a target)."""
    method = method_of(config)
    if config.target_fraction is None or not isinstance(method, Selector):
        return {}
    return method.fit_target(slice_counts, config.target_fraction)


def kept_known_per_volume(config: ReduceConfig) -> bool:
    """Whether a volume's kept slices are known when it is reduced: not when a measure meets a target
    fraction, whose threshold is chosen once every volume is done."""
    return config.target_fraction is None or not isinstance(method_of(config), Measure)


def sweep(config: ReduceConfig) -> tuple[float, ...]:
    """Every threshold whose selection is computed: the sweep, the target grid, or one (none for selectors)."""
    measure = method_of(config)
    if not isinstance(measure, Measure):
        return ()
    if config.thresholds:
        values = set(config.thresholds)
    elif config.target_fraction is not None:
        values = set(measure.sweep_grid())
    else:
        values = set()
    return tuple(sorted(values | {float(config.threshold)}))  # type: ignore[arg-type]


def identity(config: ReduceConfig) -> dict[str, Any]:
    """The settings that decide results: a rerun into the same folder must match them."""
    data = {"method": config.method, "intensity": config.intensity, "modality": config.modality.upper(),
            "allow_gaps": config.allow_gaps}
    method = method_of(config)
    if isinstance(method, Measure):
        data["threshold"] = config.threshold
        if config.thresholds:
            data["thresholds"] = list(config.thresholds)
    data.update(method.params())
    if config.target_fraction is not None:
        data["target_fraction"] = config.target_fraction
    if config.scope != "volume":  # absent for the default, so runs from before --scope still resume
        data["scope"] = config.scope
    return data


def score_column(config: ReduceConfig) -> str:
    """The manifest column of each slice's score to its leader, named for what it holds."""
    method = method_of(config)
    if isinstance(method, Measure) and method.higher_is_similar:
        return "similarity"  # SSIM, NMI or cosine
    return "distance"  # Hamming bits (hash); empty for the selectors


def input_paths(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input paths given")
    return paths


@dataclass
class Plan:
    """What a run will do, decided before a pixel is read."""

    inputs: list[Path]
    config: ReduceConfig  # the resolved settings as given: what a rerun into the same folder must match
    volume_config: ReduceConfig  # what every volume is reduced with (``config``, a selector's target met)
    fitted: dict[str, Any]  # the settings chosen for a selector's target fraction (every-n: its N)
    found: ScanResult
    scan_seconds: float
    rewrite_cache: bool  # a header was read or a file went away: the run folder's header cache is rewritten


def plan(paths: list[Path], listing: Listing, config: ReduceConfig, *, header_cache: HeaderCache | None,
         workers: int, start: float, slices: SliceFunction | None = None,
         progress: Callable[[int], None] | None = None) -> Plan:
    """Scan ``listing`` (reading only the headers the cache does not hold) and fix the volumes' settings;
    NoVolumes when the inputs hold none. ``start``: when the run began (the scan's time is counted from it).
    ``slices``: computed from each DICOM slice as its header is read (``read_once``), in ``found.read``;
    ``progress``: called with 1 for each file read."""
    found = scan(paths, modality=config.modality, allow_gaps=config.allow_gaps, workers=workers,
                 header_cache=header_cache, listing=listing, slices=slices, progress=progress)
    rewrite_cache = found.headers_read > 0 or len(header_cache or {}) != len(found.headers)
    if not found.volumes and not found.errors:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in found.skipped[:5])
        raise NoVolumes(f"no volumes found in {', '.join(map(str, paths))}" + (f" ({reasons})" if reasons else ""))
    scan_seconds = time.perf_counter() - start
    # Slice counts are known from the headers, so a selector's target is met before any pixel is read.
    chosen = fitted(config, [s.n_slices for s in found.volumes])
    return Plan(paths, config, settings(config, **chosen) if chosen else config, chosen, found, scan_seconds,
                rewrite_cache)
