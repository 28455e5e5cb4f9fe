from __future__ import annotations

import numpy as np
import pytest
from conftest import reference_uint8

from ctreduce.io.intensity import Intensity, minmax_uint8


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint16, np.float32, np.float64])
def test_minmax_equals_the_float64_formula(dtype):
    rng = np.random.default_rng(0)
    for lo, hi in [(-1024, 3071), (-1000, -990), (0, 1), (-3000, 30000)]:
        if np.dtype(dtype).kind == "u":
            lo, hi = max(lo, 0), max(hi, 1)
        if dtype is np.int16:
            hi = min(hi, 32767)
        x = rng.integers(lo, hi + 1, size=(37, 53)).astype(dtype)
        np.testing.assert_array_equal(minmax_uint8(x), reference_uint8(x))


def test_float_slices_use_the_exact_formula():
    x = np.random.default_rng(1).normal(0, 300, size=(64, 64)).astype(np.float32)
    np.testing.assert_array_equal(minmax_uint8(x), reference_uint8(x))


def test_constant_slice_gives_zeros():
    assert not minmax_uint8(np.full((8, 8), 42, np.int16)).any()
    stack = np.stack([np.full((4, 4), -1000, np.int16), np.arange(16, dtype=np.int16).reshape(4, 4)])
    out = Intensity().to_uint8(stack)
    assert not out[0].any() and out[1].max() == 255


def test_window_and_range_clip_to_their_hu_interval():
    hu = np.array([[-2000, -1350, -600, 150, 3000]], dtype=np.int16)
    np.testing.assert_array_equal(Intensity.parse("window:-600,1500").to_uint8(hu), [[0, 0, 128, 255, 255]])
    np.testing.assert_array_equal(Intensity.parse("range:-1000,0").to_uint8(hu), [[0, 0, 102, 255, 255]])


@pytest.mark.parametrize("text", ["minmax:1,2", "window:40", "range:10,0", "gamma", "window:a,b"])
def test_bad_policies_are_clear_errors(text):
    with pytest.raises(ValueError):
        Intensity.parse(text)


def test_policy_round_trips_as_text():
    for text in ("minmax", "window:-600,1500", "range:-1000,400"):
        assert str(Intensity.parse(text)) == text


def _old_to_uint8(policy: Intensity, hu: np.ndarray) -> np.ndarray:
    """The scaling as written before it was vectorised: float64 per slice, literally."""
    if policy.kind == "minmax":
        return np.stack([reference_uint8(s) for s in hu])
    lo, hi = policy.bounds
    x = np.clip(hu.astype(np.float64), lo, hi)
    return np.rint((x - lo) / (hi - lo) * 255).astype(np.uint8)


@pytest.mark.parametrize("policy", ["minmax", "window:-600,1500", "window:40,350", "range:-1000,400",
                                    "range:-1024.5,3071.25"])
@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint16, np.float32])
def test_every_policy_equals_the_old_float64_formula(policy, dtype):
    rng = np.random.default_rng(7)
    # CT-like ranges, narrow and wide ones, a constant slice, and ranges near the int16 limits.
    ranges = [(-1024, 3071), (-1024, 1024), (-2048, 2700), (-1000, -990), (5, 5), (0, 1), (-32768, 10911),
              (-32768, 32767), *((-1024, -1024 + int(s)) for s in rng.integers(1, 4500, 40))]
    slices = []
    for lo, hi in ranges:
        if np.dtype(dtype).kind == "u":
            lo, hi = lo + 32768, hi + 32768
        s = rng.integers(lo, hi + 1, size=(24, 40)).astype(dtype)
        s.flat[:2] = lo, hi  # the range's ends are in the slice
        slices.append(s)
    hu = np.stack(slices)
    intensity = Intensity.parse(policy)
    np.testing.assert_array_equal(intensity.to_uint8(hu), _old_to_uint8(intensity, hu))
    np.testing.assert_array_equal(intensity.to_uint8(hu[3]), _old_to_uint8(intensity, hu[3:4])[0])


def test_the_table_is_gathered_where_float32_would_differ():
    from ctreduce.io.intensity import _plan

    # One of the few int16 ranges where float32 arithmetic rounds one value differently.
    assert not _plan(np.dtype(np.int16).str, -32768, 10911, -32768.0, 10911.0).float32
    x = np.arange(-32768, 10912, dtype=np.int16).reshape(1, -1)
    np.testing.assert_array_equal(minmax_uint8(x), reference_uint8(x))
    assert _plan(np.dtype(np.int16).str, -1024, 3071, -1024.0, 3071.0).float32  # the usual CT range
    every = np.arange(-1024, 3072, dtype=np.int16).reshape(64, 64)  # every value of that range
    for policy in ("minmax", "window:-600,1500"):
        intensity = Intensity.parse(policy)
        np.testing.assert_array_equal(intensity.to_uint8(every), _old_to_uint8(intensity, every[None])[0])
