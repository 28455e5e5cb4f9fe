"""Property tests: the Hamming index equals a pure-Python brute force at every radius.

Codes are drawn as clusters (a centre and copies with a few bits flipped), so pairs near the radius
are common; tiny ``CHUNK``/``WINDOW`` values also drive the block-wise, chunked and dense paths that
the default sizes reach only at archive scale.
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctreduce.core.dhash import codes_from_bits, codes_from_hex, hex_from_codes
from ctreduce.reduction import hamming_index as hamming
from ctreduce.reduction.hamming_index import HammingIndex


def distance(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def brute_pairs(codes: list[int], radius: int) -> list[tuple[int, int, int]]:
    return [(i, j, distance(codes[i], codes[j])) for i in range(len(codes)) for j in range(i + 1, len(codes))
            if distance(codes[i], codes[j]) <= radius]


def brute_query(queries: list[int], codes: list[int], radius: int) -> list[tuple[int, int, int]]:
    return [(q, j, distance(x, c)) for q, x in enumerate(queries) for j, c in enumerate(codes)
            if distance(x, c) <= radius]


def triples(arrays) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in row) for row in zip(*arrays, strict=True)]


@st.composite
def clustered_codes(draw, max_size: int = 40) -> list[int]:
    """Centres anywhere in 64 bits, members with up to 12 bits flipped, repeats and all-zero/all-one codes."""
    centres = draw(st.lists(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 2**64 - 1])),
                            min_size=1, max_size=4))
    codes = []
    for _ in range(draw(st.integers(0, max_size))):
        code = draw(st.sampled_from(centres))
        for bit in draw(st.lists(st.integers(0, 63), max_size=12)):
            code ^= 1 << bit
        codes.append(code)
    return codes


def as_array(codes: list[int]) -> np.ndarray:
    return np.array(codes, dtype=np.uint64).reshape(-1)


SIZES = {"default": (hamming.CHUNK, hamming.WINDOW), "tiny": (8, 2)}
sizes = pytest.mark.parametrize("sizes", sorted(SIZES))


@contextmanager
def block_sizes(name: str):
    """The index with ``CHUNK``/``WINDOW`` set as named (module constants, read at call time)."""
    chunk, window = SIZES[name]
    with patch.object(hamming, "CHUNK", chunk), patch.object(hamming, "WINDOW", window):
        yield


@sizes
@settings(max_examples=50)  # each runs at two block sizes
@given(codes=clustered_codes(), data=st.data())
def test_pairs_equal_brute_force_at_any_radius(sizes, codes, data):
    radius = data.draw(st.integers(0, 64 if sizes == "default" else 12), label="radius")
    with block_sizes(sizes):
        index = HammingIndex(as_array(codes), radius)
        i, j, d = index.pairs()
        chunks = [triples(chunk) for chunk in index.iter_pairs()]
    assert triples((i, j, d)) == brute_pairs(codes, radius)  # sorted by (i, j), each pair once
    assert d.dtype == np.uint8 and len(index) == len(codes)
    # indices: int32 below 2**31 codes (half the memory of an archive's pairs), int64 when there are none
    assert i.dtype == j.dtype == (np.int32 if len(i) else np.int64)
    assert sorted(t for chunk in chunks for t in chunk) == brute_pairs(codes, radius)


@sizes
@settings(max_examples=50)  # each runs at two block sizes
@given(codes=clustered_codes(), radius=st.integers(0, 16), data=st.data())
def test_pairs_of_other_groups_equal_brute_force(sizes, codes, radius, data):
    groups = np.array(data.draw(st.lists(st.integers(0, 3), min_size=len(codes), max_size=len(codes))), dtype=np.int64)
    with block_sizes(sizes):
        got = triples(HammingIndex(as_array(codes), radius).pairs(groups))
    assert got == [(i, j, d) for i, j, d in brute_pairs(codes, radius) if groups[i] != groups[j]]


@sizes
@settings(max_examples=50)  # each runs at two block sizes
@given(codes=clustered_codes(), queries=clustered_codes(max_size=15), data=st.data())
def test_query_and_nearest_equal_brute_force(sizes, codes, queries, data):
    # tiny chunks cost a numpy call per chunk: small radii suffice to drive those paths
    radius = data.draw(st.integers(0, 64 if sizes == "default" else 12), label="radius")
    with block_sizes(sizes):
        index = HammingIndex(as_array(codes), radius)
        q, j, d = index.query(as_array(queries))
        nearest, dist = index.nearest_within(as_array(queries))
    expected = brute_query(queries, codes, radius)
    assert triples((q, j, d)) == expected and d.dtype == np.uint8
    for q in range(len(queries)):
        found = [(d, j) for qq, j, d in expected if qq == q]
        want = min(found) if found else (255, -1)  # nearest, ties: the lowest index
        assert (int(dist[q]), int(nearest[q])) == want
    assert nearest.dtype == np.int64 and dist.dtype == np.uint8


@given(codes=clustered_codes(max_size=70), radius=st.integers(0, 64))
def test_brute_force_helpers_agree_with_the_definition(codes, radius):
    """``brute_pairs``/``brute_query``/``brute_nearest`` (the references of the benchmark) by definition."""
    array = as_array(codes)
    pairs = hamming.brute_pairs(array, radius, chunk=7)
    assert triples(pairs) == brute_pairs(codes, radius) and pairs[2].dtype == np.uint8
    assert triples(HammingIndex(array, radius).pairs()) == triples(pairs)
    found = hamming.brute_query(array[:9], array, radius, chunk=4)
    assert triples(found) == brute_query(codes[:9], codes, radius) and found[2].dtype == np.uint8
    nearest, dist = hamming.brute_nearest(array[:9], array, chunk=4)
    assert nearest.dtype == np.int64 and dist.dtype == np.uint8
    for q, x in enumerate(codes[:9]):
        d, j = min((distance(x, c), j) for j, c in enumerate(codes))
        assert (int(dist[q]), int(nearest[q])) == (d, j)
    empty_nearest, empty_dist = hamming.brute_nearest(array[:3], as_array([]))
    assert empty_nearest.tolist() == [-1] * min(3, len(codes)) and empty_dist.tolist() == [255] * min(3, len(codes))


@given(st.lists(st.integers(0, 2**64 - 1), max_size=20), st.integers(1, 22))
def test_interleave_is_a_bit_permutation_into_contiguous_parts(codes, m):
    array = as_array(codes)
    out = hamming.interleave(array, m)
    for x, y in zip(codes, out.tolist(), strict=True):
        assert bin(x).count("1") == bin(y).count("1")
    # bit b lands in part b % m while that part has room (parts as in ``plan``)
    edges = [64 * s // m for s in range(m + 1)]
    for b in range(min(64, m)):
        moved = int(hamming.interleave(as_array([1 << b]), m)[0])
        assert edges[b % m] <= moved.bit_length() - 1 < edges[b % m + 1]
    # a permutation: distances are unchanged
    for a, b in zip(codes, codes[1:], strict=False):
        assert distance(a, b) == distance(*(int(v) for v in hamming.interleave(as_array([a, b]), m)))


@given(st.integers(0, 64))
def test_plan_covers_the_radius_with_small_tolerances(radius):
    """``radius + 1`` units over ``m = max(3, ceil((radius + 1) / 3))`` parts of 64 bits, the first
    parts taking the remainder; a part's tolerance is its units - 1 (parts without units dropped)."""
    parts = hamming.plan(radius)
    m = max(3, -(-(radius + 1) // 3))
    edges = [64 * s // m for s in range(m + 1)]
    units = [(radius + 1) // m + (1 if s < (radius + 1) % m else 0) for s in range(m)]
    expected = [(edges[s], edges[s + 1] - edges[s], units[s] - 1) for s in range(m) if units[s]]
    assert [(p.shift, p.width, p.t) for p in parts] == expected
    assert sum(p.t + 1 for p in parts) == radius + 1 and all(0 <= p.t <= 2 for p in parts)
    for p in parts:
        assert int(p.mask) == ((1 << p.width) - 1) << p.shift
        flips = p.flips().tolist()
        assert len(flips) == len(set(flips)) and all(0 < f < 1 << p.width and bin(f).count("1") <= p.t for f in flips)
        assert len(flips) == sum(_binomial(p.width, k) for k in range(1, p.t + 1))


def _binomial(n: int, k: int) -> int:
    from math import comb

    return comb(n, k)


@given(st.lists(st.integers(0, 2**64 - 1), max_size=20))
def test_hex_and_packed_bits_round_trip(codes):
    array = as_array(codes)
    hexes = hex_from_codes(array)
    assert hexes == [f"{c:016x}" for c in codes]
    assert codes_from_hex(hexes).tolist() == codes
    packed = np.array([list(c.to_bytes(8, "big")) for c in codes], dtype=np.uint8).reshape(-1, 8)
    assert codes_from_bits(packed).tolist() == codes
    # any sequence of 64-bit codes: a list mixing small and large codes, signed storage of the same bits
    assert hex_from_codes(codes + [1, 2**64 - 1]) == hexes + ["0000000000000001", "ffffffffffffffff"]
    assert hex_from_codes(array.view(np.int64)) == hexes


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="manifest: 'abc' is not a 64-bit hash"):
        codes_from_hex(["abc"], where="manifest")
    with pytest.raises(ValueError, match="manifest: 12 is not a 64-bit hash"):
        codes_from_hex([12], where="manifest")
    with pytest.raises(ValueError, match="hashes: not a hex hash"):
        codes_from_hex(["zzzzzzzzzzzzzzzz"])
    with pytest.raises(ValueError, match=r"expected \(n, 8\) uint8 packed 64-bit hashes, got uint8 \(2, 4\)"):
        codes_from_bits(np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="expected"):
        codes_from_bits(np.zeros((2, 8), np.int16))
    with pytest.raises(ValueError, match="expected"):
        codes_from_bits(np.zeros(8, np.uint8))
    with pytest.raises(ValueError, match=r"queries must be a 1-D uint64 array of 64-bit codes, got int64 \(2,\)"):
        HammingIndex(as_array([1]), 3).query(np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="codes must be"):
        HammingIndex(np.zeros((2, 2), np.uint64), 3)
    for radius in (-1, 65, 2.5, True):
        with pytest.raises(ValueError, match=rf"radius must be an integer number of bits in \[0, 64\], got {radius!r}"):
            HammingIndex(as_array([1]), radius)
    assert HammingIndex(as_array([1]), 64.0).radius == 64 and HammingIndex(as_array([1]), 0).radius == 0
    with pytest.raises(ValueError, match=r"groups has shape \(3,\), codes \(2,\)"):
        HammingIndex(as_array([1, 2]), 3).pairs(np.zeros(3))
    with pytest.raises(ValueError, match="^queries must be a 1-D uint64 array"):
        HammingIndex(as_array([1]), 3).nearest_within(np.zeros(2, np.int64))
    good, bad = as_array([1, 2]), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="^codes must be a 1-D uint64 array"):
        hamming.brute_pairs(bad, 3)
    for brute in (hamming.brute_query, lambda q, c, *r: hamming.brute_nearest(q, c)):
        with pytest.raises(ValueError, match="^queries must be a 1-D uint64 array"):
            brute(bad, good, 3)
        with pytest.raises(ValueError, match="^codes must be a 1-D uint64 array"):
            brute(good, bad, 3)


@given(st.lists(st.integers(0, 9), max_size=30), st.integers(1, 20))
def test_chunks_are_consecutive_maximal_ranges_within_the_limit(sizes, limit):
    sizes = np.array(sizes, dtype=np.int64)
    ranges = list(hamming._chunks(sizes, limit))
    assert [lo for lo, _ in ranges] == [0] + [hi for _, hi in ranges[:-1]] if len(sizes) else ranges == []
    assert (ranges[-1][1] if ranges else 0) == len(sizes)
    for lo, hi in ranges:
        assert hi > lo and (sizes[lo:hi].sum() <= limit or hi - lo == 1)
        assert hi == len(sizes) or sizes[lo:hi + 1].sum() > limit  # as long as the limit allows


def test_chunks_cover_every_size_in_order():
    sizes = np.array([5, 1, 0, 7, 2, 2, 9])
    ranges = list(hamming._chunks(sizes, 6))
    assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(hi > lo for lo, hi in ranges)
    # each range stays within the limit unless it holds a single size
    assert all(sizes[lo:hi].sum() <= 6 or hi - lo == 1 for lo, hi in ranges)
    assert ranges == [(0, 3), (3, 4), (4, 6), (6, 7)]  # each as long as the limit allows
    assert list(hamming._chunks(np.zeros(0, np.int64), 6)) == []


def test_pair_indices_are_int32_below_2_31_codes():
    """Half the memory for an archive's pairs: int32 indices for any index under 2**31 codes."""
    codes = np.repeat(as_array([5, 2**63 + 5]), 50)  # 100 codes, two groups of 50 equal codes
    i, j, d = HammingIndex(codes, 0).pairs()
    assert len(i) == 2 * 50 * 49 // 2 and i.dtype == j.dtype == np.int32 and d.dtype == np.uint8
    assert int(j.max()) == 99
