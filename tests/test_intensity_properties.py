"""Property tests: every intensity policy equals its float64 formula on any slice, and policies parse,
print and refuse as documented."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctreduce.io.intensity import Intensity, minmax_uint8

DTYPES = [np.int16, np.int32, np.uint16, np.uint8, np.float32, np.float64]


def formula(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``rint((clip(x, lo, hi) - lo) / (hi - lo) * 255)`` in float64, zeros when the range is empty."""
    if hi == lo:
        return np.zeros(x.shape, np.uint8)
    x = np.clip(x.astype(np.float64), lo, hi)
    return np.rint((x - lo) / (hi - lo) * 255).astype(np.uint8)


@st.composite
def volumes(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    if dtype.kind == "f":
        lo, hi = -4000.0, 4000.0
    else:
        info = np.iinfo(dtype)
        lo, hi = max(int(info.min), -40000), min(int(info.max), 40000)
    first = draw(st.integers(int(lo), int(hi)))
    span = draw(st.sampled_from([0, 1, 2, 255, 256, 4095, 70000]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(first, min(first + span, int(hi)) + 1, size=(n, h, w))
    if dtype.kind == "f" and draw(st.booleans()):
        values = values + rng.random((n, h, w))
    return values.astype(dtype)


POLICIES = st.one_of(
    st.just("minmax"),
    st.builds(lambda c, w: f"window:{c},{w}", st.integers(-2000, 2000), st.integers(1, 4000)),
    st.builds(lambda a, b: f"range:{min(a, b)},{max(a, b) + 1}", st.integers(-3000, 3000), st.integers(-3000, 3000)),
    st.builds(lambda a, b: f"range:{a / 4},{a / 4 + b / 8}", st.integers(-4000, 4000), st.integers(1, 8000)),
)


@given(volumes(), POLICIES)
def test_every_policy_equals_its_float64_formula(hu, text):
    policy = Intensity.parse(text)
    out = policy.to_uint8(hu)
    assert out.dtype == np.uint8 and out.shape == hu.shape
    for s, got in zip(hu, out, strict=True):
        lo, hi = (s.min(), s.max()) if policy.kind == "minmax" else policy.bounds
        np.testing.assert_array_equal(got, formula(s, float(lo), float(hi)))
    np.testing.assert_array_equal(policy.to_uint8(hu[0]), out[0])  # one 2-D slice as in a stack
    if policy.kind == "minmax":
        np.testing.assert_array_equal(minmax_uint8(hu[0]), out[0])
        np.testing.assert_array_equal(minmax_uint8(hu), formula(hu, float(hu.min()), float(hu.max())))


@given(st.sampled_from(["window", "range"]), st.integers(-3000, 3000), st.integers(1, 3000))
def test_policies_print_and_parse_back(kind, a, b):
    if kind == "range":
        b = a + b
    policy = Intensity.parse(f" {kind.upper()}: {a} , {b} ")
    assert (policy.kind, policy.a, policy.b) == (kind, float(a), float(b))
    assert str(policy) == f"{kind}:{a:g},{b:g}" and Intensity.parse(str(policy)) == policy
    assert Intensity.parse(policy) is policy
    lo, hi = policy.bounds
    assert (lo, hi) == ((a - b / 2, a + b / 2) if kind == "window" else (a, b))
    assert str(Intensity.parse("minmax")) == "minmax" == str(Intensity())


def test_bad_policies_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"^intensity policy 'gamma' not understood; use 'minmax', 'window:WL,WW' "
                                         r"\(e.g. window:-600,1500\) or 'range:LO,HI' \(e.g. range:-1000,400\)$"):
        Intensity.parse("gamma")
    with pytest.raises(ValueError, match="^'minmax' takes no parameters$"):
        Intensity.parse("minmax:1,2")
    for kind in ("window", "range"):
        with pytest.raises(ValueError, match=f"^'{kind}' needs two numbers, e.g. {kind}:-600,1500$"):
            Intensity.parse(kind)
    with pytest.raises(ValueError, match=r"^intensity policy 'range:10,0' gives an empty HU range \[10.0, 0.0\]$"):
        Intensity.parse("range:10,0")
    with pytest.raises(ValueError, match=r"^intensity policy 'window:40,0' gives an empty HU range \[40.0, 40.0\]$"):
        Intensity.parse("window:40,0")
    with pytest.raises(ValueError, match="^minmax has no fixed bounds$"):
        Intensity().bounds  # noqa: B018
    assert Intensity.parse("range:-1e3,4E2").bounds == (-1000.0, 400.0)
