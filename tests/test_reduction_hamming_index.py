"""The Hamming-radius index equals brute force on random and CT-structured codes."""

from __future__ import annotations

import numpy as np
import pytest

from ctreduce.core.dhash import BITS, codes_from_bits
from ctreduce.reduction.hamming_index import HammingIndex, brute_nearest, brute_pairs, brute_query, plan


def _flips(rng: np.random.Generator, n: int, max_bits: int) -> np.ndarray:
    """n random masks of 0..max_bits set bits."""
    masks = np.zeros(n, np.uint64)
    for k in range(n):
        for b in rng.choice(BITS, int(rng.integers(0, max_bits + 1)), replace=False):
            masks[k] |= np.uint64(1) << np.uint64(b)
    return masks


@pytest.fixture(scope="module")
def structured() -> np.ndarray:
    """CT-like codes: dHashes of phantom slices of 4 'patients', each volume stored with small
    perturbations several times, plus exact repeats (ties) and the all-zero code."""
    from ctreduce.io.intensity import Intensity
    from ctreduce.reduction import hashing
    from ctreduce.sample_data.phantom import make_phantom

    rng = np.random.default_rng(7)
    base = []
    for seed in range(4):
        hu, _ = make_phantom(n_slices=40, size=48, seed=seed)
        base.append(codes_from_bits(hashing.pack(hashing.dhash_bits(Intensity().to_uint8(hu)))))
    base = np.concatenate(base)
    copies = [base ^ _flips(rng, len(base), 3) for _ in range(6)]
    return np.concatenate([base, *copies, base[:50], np.zeros(3, np.uint64)])


def _equal(got, ref) -> None:
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.int64), np.asarray(b, np.int64))


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 6, 9, 13])
def test_self_join_equals_brute_force_on_random_codes(radius):
    rng = np.random.default_rng(radius)
    centres = rng.integers(0, 2**63, 40, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    codes = np.concatenate([centres[rng.integers(0, 40, 1500)] ^ _flips(rng, 1500, 10),
                            rng.integers(0, 2**63, 500, dtype=np.int64).astype(np.uint64)])
    _equal(HammingIndex(codes, radius).pairs(), brute_pairs(codes, radius))


@pytest.mark.parametrize("radius", [0, 6, 20, 40, 63, 64])
def test_self_join_equals_brute_force_on_structured_codes(structured, radius):
    codes = structured if radius <= 6 else structured[::7]  # wide radii: nearly every pair matches
    i, j, d = HammingIndex(codes, radius).pairs()
    _equal((i, j, d), brute_pairs(codes, radius))
    assert np.all(i < j)
    if radius == 64:
        assert len(i) == len(codes) * (len(codes) - 1) // 2


def test_pairs_of_other_groups_only(structured):
    groups = np.arange(len(structured)) // 40
    i, j, d = HammingIndex(structured, 6).pairs(groups)
    bi, bj, bd = brute_pairs(structured, 6)
    other = groups[bi] != groups[bj]
    _equal((i, j, d), (bi[other], bj[other], bd[other]))


@pytest.mark.parametrize("radius", [0, 4, 6, 12])
def test_query_and_nearest_equal_brute_force(structured, radius):
    rng = np.random.default_rng(1)
    indexed, queries = structured[:800], structured[800:] ^ _flips(rng, len(structured) - 800, 2)
    index = HammingIndex(indexed, radius)
    _equal(index.query(queries), brute_query(queries, indexed, radius))
    nearest, distance = index.nearest_within(queries)
    ref_nearest, ref_distance = brute_nearest(queries, indexed)  # ties: lowest index
    within = ref_distance <= radius
    np.testing.assert_array_equal(nearest[within], ref_nearest[within])
    np.testing.assert_array_equal(distance[within], ref_distance[within])
    assert np.all(nearest[~within] == -1) and np.all(distance[~within] == 255)
    assert within.any()


def test_ties_resolve_to_the_lowest_index():
    codes = np.array([5, 9, 5, 5, 9], dtype=np.uint64)
    nearest, distance = HammingIndex(codes, 0).nearest_within(np.array([5, 9, 6], dtype=np.uint64))
    assert nearest.tolist() == [0, 1, -1] and distance.tolist() == [0, 0, 255]
    assert [(int(a), int(b)) for a, b, _ in zip(*HammingIndex(codes, 0).pairs(), strict=True)] == \
        [(0, 2), (0, 3), (1, 4), (2, 3)]


def test_empty_and_tiny_inputs():
    empty = np.zeros(0, np.uint64)
    assert all(len(a) == 0 for a in HammingIndex(empty, 6).pairs())
    assert len(HammingIndex(empty, 6).nearest_within(np.array([1], np.uint64))[0]) == 1
    assert all(len(a) == 0 for a in HammingIndex(np.array([3], np.uint64), 64).pairs())


def test_every_radius_plan_satisfies_the_pigeonhole_bound():
    for radius in range(BITS + 1):
        parts = plan(radius)
        assert sum(p.t + 1 for p in parts) >= radius + 1
        assert max(p.t for p in parts) <= 2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="radius"):
        HammingIndex(np.zeros(2, np.uint64), 65)
    with pytest.raises(ValueError, match="uint64"):
        HammingIndex(np.zeros(2, np.int64), 6)
