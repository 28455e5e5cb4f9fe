from __future__ import annotations

import numpy as np
import pytest
from conftest import reference_uint8

from ctreduce.reduction.intensity import Intensity, minmax_uint8


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
