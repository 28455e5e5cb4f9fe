"""Property tests: ``archive_greedy`` equals the literal greedy loop over the kept leaders.

Walking the volumes in the given order and each volume's slices in ascending slice order, a slice
is dropped when it lies within the threshold of an earlier slice that was KEPT, and its leader is
the first such kept slice (the paper's procedure applied to the concatenated order). Codes are
drawn as random walks of a few bit flips per step, so chains a ~ b ~ c with a and c apart, where
"near a kept leader" and "near any earlier slice" differ, are common.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctreduce.reduction.archive import VolumeCodes, archive_greedy


def literal_greedy(codes: list[int], threshold: int) -> tuple[list[bool], list[int], list[int]]:
    """Per slice of the concatenated order: kept, index of its leader, distance to the leader."""
    kept, leader, dist = [], [], []
    for k, code in enumerate(codes):
        near = [i for i in range(k) if kept[i] and bin(codes[i] ^ code).count("1") <= threshold]
        kept.append(not near)
        leader.append(near[0] if near else k)
        dist.append(bin(codes[near[0]] ^ code).count("1") if near else 0)
    return kept, leader, dist


@st.composite
def archives(draw) -> list[tuple[str, list[int], list[int]]]:
    """Volumes (id, ascending slice indices, codes); codes walk from a random start by 0-4 flips a step,
    and a later volume may restart from an earlier volume's code (a copy of the same scan)."""
    volumes, seen = [], []
    for v in range(draw(st.integers(0, 5))):
        n = draw(st.integers(0, 8))
        start = draw(st.sampled_from(seen)) if seen and draw(st.booleans()) else draw(st.integers(0, 2**64 - 1))
        codes, code = [], start
        for _ in range(n):
            for bit in draw(st.lists(st.integers(0, 63), max_size=4)):
                code ^= 1 << bit
            codes.append(code)
        seen += codes
        index = sorted(draw(st.sets(st.integers(0, 200), min_size=n, max_size=n)))
        volumes.append((f"vol{v}", index, codes))
    return volumes


@given(archives(), st.integers(0, 8))
def test_archive_greedy_equals_the_literal_loop(volumes, threshold):
    table = archive_greedy([VolumeCodes(vid, np.array(index, np.int64), np.array(codes, np.uint64).reshape(-1))
                            for vid, index, codes in volumes], threshold)
    volume_of = [vid for vid, index, _ in volumes for _ in index]
    slice_of = [s for _, index, _ in volumes for s in index]
    codes = [c for _, _, cs in volumes for c in cs]
    kept, leader, dist = literal_greedy(codes, threshold)
    assert list(table.columns) == ["volume_id", "slice_index", "kept", "leader_volume", "leader_slice", "distance"]
    assert table["volume_id"].tolist() == volume_of and table["slice_index"].tolist() == slice_of
    assert table["kept"].tolist() == kept
    assert table["leader_volume"].tolist() == [volume_of[k] for k in leader]
    assert table["leader_slice"].tolist() == [slice_of[k] for k in leader]
    assert table["distance"].tolist() == dist
    assert table["kept"].dtype == bool and table["slice_index"].dtype == np.int64


def test_a_chain_keeps_the_slice_near_only_a_dropped_one():
    """a ~ b and b ~ c within the threshold, a and c apart: a kept, b dropped for a, c kept."""
    a, b, c = 0, 0b111, 0b111111
    table = archive_greedy([VolumeCodes("x", np.array([0]), np.array([a], np.uint64)),
                            VolumeCodes("y", np.array([3, 5]), np.array([b, c], np.uint64))], 3)
    assert table["kept"].tolist() == [True, False, True]
    assert table["leader_volume"].tolist() == ["x", "x", "y"] and table["leader_slice"].tolist() == [0, 0, 5]
    assert table["distance"].tolist() == [0, 3, 0]
    assert (table["slice_index"].dtype, table["leader_slice"].dtype, table["distance"].dtype) == (np.int64,) * 3
    narrow = archive_greedy([VolumeCodes("x", np.array([0, 4], np.int32), np.array([a, c], np.uint64))], 3)
    assert narrow["slice_index"].dtype == np.int64 and narrow["leader_slice"].tolist() == [0, 4]


def test_volume_codes_are_checked():
    with pytest.raises(ValueError, match="volume x: 2 slice indices but 1 codes"):
        VolumeCodes("x", np.array([1, 2]), np.zeros(1, np.uint64))
    with pytest.raises(ValueError, match="volume x: slice indices must be strictly ascending"):
        VolumeCodes("x", np.array([1, 1]), np.zeros(2, np.uint64))
    empty = archive_greedy([], 6)
    assert len(empty) == 0 and list(empty.columns)[:3] == ["volume_id", "slice_index", "kept"]


def test_the_leader_is_the_first_kept_slice_not_the_nearest():
    """c lies within the threshold of two kept slices, a (4 bits) and b (2 bits): the paper takes the first
    remaining slice as leader and drops all within its threshold, so c's leader is a, at distance 4."""
    a, b, c = 0, 0b111111, 0b1111
    table = archive_greedy([VolumeCodes("x", np.array([0]), np.array([a], np.uint64)),
                            VolumeCodes("y", np.array([1, 2]), np.array([b, c], np.uint64))], 4)
    assert table["kept"].tolist() == [True, True, False]
    assert table["leader_volume"].tolist() == ["x", "y", "x"] and table["leader_slice"].tolist() == [0, 1, 0]
    assert table["distance"].tolist() == [0, 0, 4]


@given(st.lists(st.lists(st.integers(0, 255), max_size=8), max_size=4), st.integers(1, 4))
def test_leaders_equal_the_literal_loop_where_slices_lie_near_several_kept_ones(volumes, threshold):
    """Codes of 8 bits: slices within the threshold of two or more kept slices, at different distances,
    are common here (rare among the random walks above)."""
    table = archive_greedy([VolumeCodes(f"v{k}", np.arange(len(codes), dtype=np.int64), np.array(codes, np.uint64))
                            for k, codes in enumerate(volumes)], threshold)
    codes = [c for cs in volumes for c in cs]
    volume_of = [f"v{v}" for v, cs in enumerate(volumes) for _ in cs]
    slice_of = [s for cs in volumes for s in range(len(cs))]
    kept, leader, dist = literal_greedy(codes, threshold)
    assert table["kept"].tolist() == kept and table["distance"].tolist() == dist
    assert table["leader_volume"].tolist() == [volume_of[k] for k in leader]
    assert table["leader_slice"].tolist() == [slice_of[k] for k in leader]
