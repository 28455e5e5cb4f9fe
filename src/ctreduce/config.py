"""Typed configuration shared by the CLI, the Python API and experiment files (same names)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

SELECTORS = ("all", "every-n")


class ReduceConfig(BaseModel):
    """How every volume is reduced. ``threshold`` defaults to the measure's own default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = "hash"
    threshold: float | None = None
    thresholds: tuple[float, ...] | None = None
    target_fraction: float | None = None
    every_n: int = 10
    intensity: str = "minmax"
    hash_kind: str = "dhash"
    hash_size: int = 8
    ssim_size: int = 128
    mi_bins: int = 64
    backbone: str = "resnet50"
    device: str = "auto"
    batch_size: int = 64
    modality: str = "CT"
    allow_gaps: bool = False

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from .reduction.measures import available_measures

        measures = available_measures()

        value = value.lower().replace("_", "-")
        if value in ("everyn", "every"):
            value = "every-n"
        if value not in SELECTORS and value not in measures:
            known = ", ".join([*SELECTORS, *sorted(measures)])
            raise ValueError(f"unknown method {value!r}; choose one of {known}")
        return value

    @field_validator("intensity")
    @classmethod
    def _known_intensity(cls, value: str) -> str:
        from .reduction.intensity import Intensity

        return str(Intensity.parse(value))

    @field_validator("every_n")
    @classmethod
    def _positive_n(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"every_n must be >= 1, got {value}")
        return value

    @field_validator("target_fraction")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"target_fraction must be in (0, 1], got {value}")
        return value

    @model_validator(mode="after")
    def _threshold_in_range(self) -> ReduceConfig:
        if self.method in SELECTORS:
            if self.threshold is not None or self.thresholds:
                raise ValueError(f"method {self.method!r} takes no threshold")
            if self.target_fraction is not None and self.method == "all":
                raise ValueError("method 'all' keeps every slice; it takes no target fraction")
            return self
        measure = self.measure()
        if self.thresholds is not None:
            if not self.thresholds:
                raise ValueError("thresholds is empty")
            object.__setattr__(self, "thresholds",
                               tuple(sorted({measure.check_threshold(t) for t in self.thresholds})))
        default = self.thresholds[0] if self.thresholds else measure.default_threshold
        object.__setattr__(
            self, "threshold", measure.check_threshold(default if self.threshold is None else self.threshold)
        )
        return self

    def sweep(self) -> tuple[float, ...]:
        """Every threshold whose selection is computed: the sweep, the target grid, or one."""
        if self.method in SELECTORS:
            return ()
        if self.thresholds:
            values = set(self.thresholds)
        elif self.target_fraction is not None:
            values = set(self.measure().sweep_grid())
        else:
            values = set()
        return tuple(sorted(values | {float(self.threshold)}))  # type: ignore[arg-type]

    def measure(self):
        from .reduction.measures import get_measure

        return get_measure(self.method, **self.model_dump())

    def identity(self) -> dict[str, Any]:
        """The settings that decide results: a rerun into the same folder must match them."""
        data = {"method": self.method, "intensity": self.intensity, "modality": self.modality.upper(),
                "allow_gaps": self.allow_gaps}
        if self.method == "every-n":
            data["every_n"] = self.every_n
        elif self.method != "all":
            data["threshold"] = self.threshold
            if self.thresholds:
                data["thresholds"] = list(self.thresholds)
            data.update(self.measure().params())
        if self.target_fraction is not None:
            data["target_fraction"] = self.target_fraction
        return data
