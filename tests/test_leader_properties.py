"""Property tests: the greedy leader equals a literal copy of the paper's loop, thresholds inclusive.

The paper (Wolf et al. 2024, Sec. 2, HASH): take the first remaining slice as reference, compare it
with every remaining slice, drop all with distance <= threshold, keep the reference, repeat until
none remain; the similarity measures use similarity >= threshold. Scores are drawn from a few
values so that scores equal to the threshold are common.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctreduce.reduction.leader import every_n, greedy_leader, keep_all, memoize


def paper_loop(n: int, score, threshold: float, higher_is_similar: bool) -> tuple[list[bool], list[int], list[float]]:
    """The paper's procedure, one pair at a time (kept flags, leader of each slice, score to it)."""
    kept, leader, to_leader = [False] * n, list(range(n)), [float("nan")] * n
    remaining = list(range(n))
    while remaining:
        ref, rest = remaining[0], []
        kept[ref] = True
        for k in remaining[1:]:
            s = score(ref, k)
            redundant = s >= threshold if higher_is_similar else s <= threshold
            if redundant:
                leader[k], to_leader[k] = ref, s
            else:
                rest.append(k)
        remaining = rest
    return kept, leader, to_leader


@st.composite
def score_matrices(draw, values, symmetric: bool):
    n = draw(st.integers(0, 12))
    m = np.array([[draw(st.sampled_from(values)) for _ in range(n)] for _ in range(n)], dtype=np.float64)
    if symmetric:
        m = np.triu(m) + np.triu(m, 1).T
    return m


DISTANCES = [0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 64.0]
SIMILARITIES = [-1.0, 0.0, 0.5, 0.9, 0.95, 1.0]


def _check_against_paper(m: np.ndarray, threshold: float, higher: bool) -> None:
    n = len(m)
    calls = []

    def compare(ref, others):
        calls.append(len(others))
        return m[ref, others]

    got = greedy_leader(n, compare, threshold, higher_is_similar=higher)
    kept, leader, to_leader = paper_loop(n, lambda r, k: m[r, k], threshold, higher)
    assert got.kept.tolist() == kept
    assert got.leader.tolist() == leader
    np.testing.assert_array_equal(got.score, np.array(to_leader, dtype=np.float64))
    assert got.kept.dtype == bool and got.leader.dtype == np.int64 and got.n_kept == sum(kept)
    assert all(c > 0 for c in calls)  # never called with nothing to compare


@given(score_matrices(DISTANCES, symmetric=False), st.sampled_from(DISTANCES))
def test_distance_leader_equals_the_paper_loop(m, threshold):
    _check_against_paper(m, threshold, higher=False)


@given(score_matrices(SIMILARITIES, symmetric=False), st.sampled_from(SIMILARITIES))
def test_similarity_leader_equals_the_paper_loop(m, threshold):
    _check_against_paper(m, threshold, higher=True)


@given(st.integers(2, 10), st.sampled_from(SIMILARITIES), st.booleans())
def test_a_score_equal_to_the_threshold_is_redundant(n, value, higher):
    """Every pair scores exactly the threshold: inclusive means one leader keeps all others."""
    m = np.full((n, n), value)
    sel = greedy_leader(n, lambda ref, others: m[ref, others], value, higher_is_similar=higher)
    assert sel.kept.tolist() == [True] + [False] * (n - 1)
    assert sel.leader.tolist() == [0] * n and sel.score[1:].tolist() == [value] * (n - 1)
    # one step past the threshold: nothing is redundant
    past = np.nextafter(value, np.inf if higher else -np.inf)
    assert greedy_leader(n, lambda ref, others: m[ref, others], past, higher_is_similar=higher).kept.all()


@given(score_matrices(DISTANCES, symmetric=True), st.lists(st.sampled_from(DISTANCES), min_size=1, max_size=4))
def test_kept_slices_are_pairwise_apart_and_memoised_sweeps_agree(m, thresholds):
    n = len(m)
    calls = []

    def compare(ref, others):
        calls.append((ref, np.asarray(others).copy()))
        return m[ref, others]

    cached = memoize(compare, n)
    for t in thresholds:
        direct = greedy_leader(n, lambda ref, others: m[ref, others], t, higher_is_similar=False)
        memo = greedy_leader(n, cached, t, higher_is_similar=False)
        assert memo.kept.tolist() == direct.kept.tolist() and memo.leader.tolist() == direct.leader.tolist()
        np.testing.assert_array_equal(memo.score, direct.score)
        kept = np.flatnonzero(direct.kept)
        assert not (m[np.ix_(kept, kept)][~np.eye(len(kept), dtype=bool)] <= t).any()
        dropped = ~direct.kept
        assert direct.kept[direct.leader].all() and (direct.leader[dropped] < np.flatnonzero(dropped)).all()
    # the cache never asks for a pair twice, either way round
    asked = [tuple(sorted((ref, int(o)))) for ref, others in calls for o in others]
    assert len(asked) == len(set(asked))


def test_scores_are_compared_as_the_numbers_they_are():
    """A measure returning float32 scores: 0.9 in float32 is 0.89999998, below a threshold of 0.9 (a
    comparison done in float32 would round the threshold instead and call the slice redundant)."""
    scores = np.array([np.float32(0.9), np.float32(0.95)], dtype=np.float32)
    sel = greedy_leader(3, lambda ref, others: scores[others - 1], 0.9, higher_is_similar=True)
    assert sel.kept.tolist() == [True, True, False] and sel.score[2] == np.float64(np.float32(0.95))


def test_memoize_asymmetric_keeps_each_direction():
    m = np.array([[0.0, 1.0], [5.0, 0.0]])
    calls = []

    def compare(ref, others):
        calls.append(ref)
        return m[ref, others]

    cached = memoize(compare, 2, symmetric=False)
    assert cached(0, np.array([1])).tolist() == [1.0] and cached(1, np.array([0])).tolist() == [5.0]
    assert cached(1, np.array([0])).tolist() == [5.0] and calls == [0, 1]
    symmetric = memoize(compare, 2)
    assert symmetric(0, np.array([1])).tolist() == [1.0] and symmetric(1, np.array([0])).tolist() == [1.0]


def test_every_n_refuses_a_step_below_one():
    for step in (0, -2):
        with pytest.raises(ValueError, match=f"^every-n needs N >= 1, got {step}$"):
            every_n(5, step)


@given(st.integers(0, 40), st.integers(1, 9))
def test_every_n_keeps_every_nth_and_points_back(n, step):
    sel = every_n(n, step)
    assert sel.kept.tolist() == [i % step == 0 for i in range(n)]
    assert sel.leader.tolist() == [i - i % step for i in range(n)]
    assert np.isnan(sel.score).all() and sel.score.shape == (n,)
    everything = keep_all(n)
    assert everything.kept.all() and everything.leader.tolist() == list(range(n)) and everything.n_kept == n
    assert np.isnan(everything.score).all() and everything.score.shape == (n,)


# --- the measures through the public API: a score exactly at the threshold is redundant ------------


def _two_slice_volume():
    from ctreduce.io.volume import Volume
    from ctreduce.sample_data.phantom import make_phantom

    hu, spacing = make_phantom(n_slices=6, size=48, slice_thickness=5.0, seed=3)
    hu = hu[[1, 4]]  # two different slices: a score strictly between the measure's extremes
    return Volume("v", hu, spacing, np.array([0.0, 5.0]), ("v.nrrd", "v.nrrd"))


@pytest.mark.parametrize("method", ["hash", "ssim", "mi", "deepnet"])
def test_reduce_volume_drops_a_slice_scored_exactly_at_the_threshold(method, tmp_path):
    """The paper's inclusive rule (distance <= t, similarity >= t) for every measure, end to end:
    the threshold set to the very score of slice 1 against slice 0 drops slice 1; one float step
    past it keeps both."""
    from ctreduce import reduce_volume
    from ctreduce.io.intensity import Intensity
    from ctreduce.reduction.measures import get_measure

    settings: dict = {"device": "cpu"}
    if method in ("ssim", "deepnet"):
        torch = pytest.importorskip("torch")
    if method == "deepnet":
        torchvision = pytest.importorskip("torchvision")
        torch.manual_seed(0)
        settings["backbone"] = str(tmp_path / "resnet18.pt")
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), settings["backbone"])
    volume = _two_slice_volume()
    measure = get_measure(method, **settings)
    score = float(measure.prepare(Intensity().to_uint8(volume.hu)).compare(0, np.array([1]))[0])
    lo, hi = measure.valid_range()
    assert lo < score < hi  # not a trivial extreme
    at = reduce_volume(volume, method=method, threshold=score, **settings)
    assert at["kept"].tolist() == [True, False] and at["leader"].tolist() == [0, 0]
    assert at["similarity" if measure.higher_is_similar else "distance"].iloc[1] == score
    past = np.nextafter(score, np.inf if measure.higher_is_similar else -np.inf)
    past = reduce_volume(volume, method=method, threshold=float(past), **settings)
    assert past["kept"].tolist() == [True, True] and past["leader"].tolist() == [0, 1]
