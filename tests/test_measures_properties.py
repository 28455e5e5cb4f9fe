"""Properties of the measure registry and the hash measure: threshold ranges, sweep grids, parameters,
errors, and Hamming distances equal to imagehash's."""

from __future__ import annotations

import re
import sys

import imagehash
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from ctreduce.reduction import measures
from ctreduce.reduction.measures import HashMeasure, available_measures, get_measure

NAMES = ["deepnet", "hash", "mi", "ssim"]


@pytest.mark.parametrize("name", NAMES)
def test_thresholds_inside_the_range_are_accepted_and_outside_refused(name):
    settings = {"device": "cpu"} if name in ("ssim", "deepnet") else {}
    measure = get_measure(name, **settings)
    lo, hi = measure.valid_range()
    for t in (lo, hi, (lo + hi) / 2, np.float32(hi)):
        got = measure.check_threshold(t)
        assert got == float(t) and type(got) is float
    for t in (lo - 0.5, hi + 0.5):
        message = (f"threshold {t:g} is outside the range of {measure.name} ({measure.unit}): "
                   f"[{lo:g}, {hi:g}]")
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            measure.check_threshold(t)


@pytest.mark.parametrize("name, lo, hi", [("ssim", 0.0, 1.0), ("mi", 0.0, 1.0), ("deepnet", 0.0, 1.0)])
def test_sweep_grid_of_the_similarity_measures(name, lo, hi):
    """100 thresholds from the range's non-negative start, the top excluded, rounded to 3 decimals."""
    grid = get_measure(name, device="cpu").sweep_grid()
    assert grid == [round(v, 3) for v in np.linspace(lo, hi, 101)[:-1]]
    assert len(grid) == 100 and grid[0] == 0.0 and grid[1] == 0.01 and grid[-1] == 0.99


@given(st.integers(2, 64))
def test_hash_measure_range_grid_and_parameters(hash_size):
    measure = HashMeasure("dhash", hash_size)
    assert measure.valid_range() == (0.0, float(hash_size * hash_size))
    assert measure.sweep_grid() == [float(t) for t in range(min(hash_size * hash_size, 32) + 1)]
    assert measure.params() == {"hash": "dhash", "hash_size": hash_size}
    assert measure.check_threshold(hash_size * hash_size) == hash_size * hash_size


def test_hash_measure_refuses_bad_settings():
    with pytest.raises(ValueError, match="^unknown hash 'md5'; choose one of dhash, phash, ahash, whash$"):
        HashMeasure("md5")
    for size in (1, 65):
        with pytest.raises(ValueError, match=rf"^hash_size must be in \[2, 64\], got {size}$"):
            HashMeasure("dhash", size)
    assert HashMeasure("phash", 64).hash_size == 64 and HashMeasure("dhash", 2).hash_size == 2
    assert (HashMeasure().hash_kind, HashMeasure().hash_size) == ("dhash", 8)


@pytest.mark.parametrize("kind, size", [("dhash", 8), ("dhash", 4), ("dhash", 11), ("phash", 8), ("ahash", 8)])
def test_hash_measure_scores_are_imagehash_distances(kind, size):
    rng = np.random.default_rng(size)
    u8 = np.clip(np.cumsum(rng.normal(0, 9, size=(6, 40, 44)), axis=2) + 128, 0, 255).astype(np.uint8)
    prepared = get_measure("hash", hash_kind=kind, hash_size=size, device="cpu").prepare(u8)
    fn = getattr(imagehash, {"dhash": "dhash", "phash": "phash", "ahash": "average_hash"}[kind])
    reference = [fn(Image.fromarray(s), hash_size=size) for s in u8]
    assert prepared.columns == {"hash": [str(h) for h in reference]}
    for ref in range(len(u8)):
        others = np.arange(len(u8))
        scores = prepared.compare(ref, others)
        assert scores.tolist() == [reference[ref] - h for h in reference]


def test_get_measure_keeps_only_the_parameters_a_measure_takes():
    measure = get_measure("hash", hash_kind="phash", hash_size=6, device="cuda", mi_bins=3, threshold=99)
    assert isinstance(measure, HashMeasure) and measure.params() == {"hash": "phash", "hash_size": 6}
    assert get_measure("mi", mi_bins=16, hash_size=3).params() == {"mi_bins": 16}
    assert get_measure("hash").preflight() is None and get_measure("mi").preflight() is None  # nothing to load
    with pytest.raises(ValueError, match="^unknown similarity measure 'psnr'; available: deepnet, hash, mi, ssim$"):
        get_measure("psnr")


def test_available_measures_skip_a_missing_builtin_but_not_a_missing_dependency(tmp_path, monkeypatch):
    assert sorted(available_measures()) == NAMES
    monkeypatch.setattr(measures, "_BUILTIN_MODULES", ("ctreduce.reduction.not_shipped",))
    assert sorted(available_measures()) == NAMES  # a built-in module that is not installed: skipped
    (tmp_path / "measure_needing_a_package.py").write_text("import package_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(measures, "_BUILTIN_MODULES", ("measure_needing_a_package",))
    with pytest.raises(ModuleNotFoundError, match="package_that_is_not_installed"):
        available_measures()
    sys.modules.pop("measure_needing_a_package", None)
