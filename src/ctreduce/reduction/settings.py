"""What a ReduceConfig means: checked against the measure registry, resolved, summarised.

``ctreduce.config.ReduceConfig`` holds the settings as typed values (the CLI, the API and
experiment files share its names); this module gives them their meaning, so that the config
module imports no algorithm.
"""

from __future__ import annotations

from typing import Any

from ..config import SELECTORS, ReduceConfig
from ..io.intensity import Intensity
from .measures import Measure, available_measures, get_measure


def resolve(config: ReduceConfig) -> ReduceConfig:
    """``config`` with a known method, a canonical intensity policy, thresholds checked against the
    measure's range and sorted, and ``threshold`` set (the measure's default when None). ValueError
    names what is wrong. Idempotent."""
    measures = available_measures()
    if config.method not in SELECTORS and config.method not in measures:
        known = ", ".join([*SELECTORS, *sorted(measures)])
        raise ValueError(f"unknown method {config.method!r}; choose one of {known}")
    update: dict[str, Any] = {"intensity": str(Intensity.parse(config.intensity))}
    if config.method not in SELECTORS:
        measure = measure_of(config)
        if config.thresholds:
            update["thresholds"] = tuple(sorted({measure.check_threshold(t) for t in config.thresholds}))
        default = update["thresholds"][0] if config.thresholds else measure.default_threshold
        update["threshold"] = measure.check_threshold(default if config.threshold is None else config.threshold)
    return config.model_copy(update=update)


def measure_of(config: ReduceConfig) -> Measure:
    return get_measure(config.method, **config.model_dump())


def sweep(config: ReduceConfig) -> tuple[float, ...]:
    """Every threshold whose selection is computed: the sweep, the target grid, or one."""
    if config.method in SELECTORS:
        return ()
    if config.thresholds:
        values = set(config.thresholds)
    elif config.target_fraction is not None:
        values = set(measure_of(config).sweep_grid())
    else:
        values = set()
    return tuple(sorted(values | {float(config.threshold)}))  # type: ignore[arg-type]


def identity(config: ReduceConfig) -> dict[str, Any]:
    """The settings that decide results: a rerun into the same folder must match them."""
    data = {"method": config.method, "intensity": config.intensity, "modality": config.modality.upper(),
            "allow_gaps": config.allow_gaps}
    if config.method == "every-n":
        data["every_n"] = config.every_n
    elif config.method != "all":
        data["threshold"] = config.threshold
        if config.thresholds:
            data["thresholds"] = list(config.thresholds)
        data.update(measure_of(config).params())
    if config.target_fraction is not None:
        data["target_fraction"] = config.target_fraction
    if config.scope != "volume":  # absent for the default, so runs from before --scope still resume
        data["scope"] = config.scope
    return data


def score_column(config: ReduceConfig) -> str:
    """The manifest column of each slice's score to its leader, named for what it holds."""
    if config.method in SELECTORS or not measure_of(config).higher_is_similar:
        return "distance"  # Hamming bits (hash); empty for all/every-n
    return "similarity"  # SSIM, NMI or cosine
