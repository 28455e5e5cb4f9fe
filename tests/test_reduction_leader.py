from __future__ import annotations

import numpy as np
import pytest

from ctreduce.reduction.leader import every_n, greedy_leader, keep_all


def matrix_compare(d):
    calls = []

    def compare(ref, others):
        calls.append((ref, others.tolist()))
        return d[ref, others]

    return compare, calls


def test_leader_drops_within_threshold_inclusive_and_repeats():
    # 0~1 (6, inclusive), 0~2 (7, kept), 2~3 (0), 4 far from all
    d = np.full((5, 5), 30.0)
    np.fill_diagonal(d, 0)
    d[0, 1] = d[1, 0] = 6
    d[0, 2] = d[2, 0] = 7
    d[2, 3] = d[3, 2] = 0
    compare, calls = matrix_compare(d)
    sel = greedy_leader(5, compare, 6, higher_is_similar=False)
    assert sel.kept.tolist() == [True, False, True, False, True]
    assert sel.leader.tolist() == [0, 0, 2, 2, 4]
    assert sel.score[1] == 6 and sel.score[3] == 0 and np.isnan(sel.score[0])
    # the reference is compared only with slices that are still remaining
    assert calls == [(0, [1, 2, 3, 4]), (2, [3, 4])]


def test_similarity_measures_drop_at_or_above_threshold():
    s = np.array([[1.0, 0.95, 0.8], [0.95, 1.0, 0.9], [0.8, 0.9, 1.0]])
    compare, _ = matrix_compare(s)
    sel = greedy_leader(3, compare, 0.9, higher_is_similar=True)
    assert sel.kept.tolist() == [True, False, True]


def test_first_slice_leads_and_order_matters():
    # chain 0-1-2 with d(0,1)=d(1,2)=1, d(0,2)=2: threshold 1 keeps 0 and 2
    d = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]], dtype=float)
    compare, _ = matrix_compare(d)
    assert greedy_leader(3, compare, 1, higher_is_similar=False).kept.tolist() == [True, False, True]


def test_every_n_and_all():
    sel = every_n(7, 3)
    assert sel.kept.tolist() == [True, False, False, True, False, False, True]
    assert sel.leader.tolist() == [0, 0, 0, 3, 3, 3, 6]
    assert keep_all(4).n_kept == 4
    with pytest.raises(ValueError):
        every_n(3, 0)
