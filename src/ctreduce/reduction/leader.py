"""The paper's greedy "leader" reduction, shared by every similarity measure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# compare(ref, others) -> one score per index in ``others``
Compare = Callable[[int, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Selection:
    """Per-slice outcome of a reduction: kept flag, representing leader, score to the leader."""

    kept: np.ndarray  # bool (n,)
    leader: np.ndarray  # int64 (n,); itself when kept
    score: np.ndarray  # float64 (n,); NaN when kept or when the method computes no score

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())


def greedy_leader(n: int, compare: Compare, threshold: float, *, higher_is_similar: bool) -> Selection:
    """Greedy leader clustering inside one volume (Wolf et al. 2024, Sec. 2, HASH procedure).

    Take the first remaining slice as reference, score it against every remaining slice, drop
    all that are redundant (distance <= threshold, or similarity >= threshold when
    ``higher_is_similar``), keep the reference, repeat until none remain. O(n^2) comparisons in
    the worst case, each call vectorised over all remaining slices.
    """
    kept = np.zeros(n, dtype=bool)
    leader = np.arange(n, dtype=np.int64)
    score = np.full(n, np.nan)
    remaining = np.arange(n, dtype=np.int64)
    while remaining.size:
        ref, others = int(remaining[0]), remaining[1:]
        kept[ref] = True
        if not others.size:
            break
        values = np.asarray(compare(ref, others), dtype=np.float64)
        redundant = values >= threshold if higher_is_similar else values <= threshold
        dropped = others[redundant]
        leader[dropped] = ref
        score[dropped] = values[redundant]
        remaining = others[~redundant]
    return Selection(kept, leader, score)


def every_n(n: int, step: int) -> Selection:
    """Keep every ``step``-th slice along z starting with the first; the others point back."""
    if step < 1:
        raise ValueError(f"every-n needs N >= 1, got {step}")
    index = np.arange(n, dtype=np.int64)
    return Selection(index % step == 0, index - index % step, np.full(n, np.nan))


def keep_all(n: int) -> Selection:
    return Selection(np.ones(n, dtype=bool), np.arange(n, dtype=np.int64), np.full(n, np.nan))


def memoize(compare: Compare, n: int, *, symmetric: bool = True) -> Compare:
    """Cache scores so that several thresholds reuse every pair already scored.

    The leader procedure for another threshold asks for other (reference, slice) pairs, but
    many repeat; with ``symmetric`` measures a pair scored either way round is reused.
    """
    cache = np.full((n, n), np.nan)

    def cached(ref: int, others: np.ndarray) -> np.ndarray:
        row = cache[ref, others]
        missing = others[np.isnan(row)]
        if missing.size:
            values = np.asarray(compare(ref, missing), dtype=np.float64)
            cache[ref, missing] = values
            if symmetric:
                cache[missing, ref] = values
        return cache[ref, others]

    return cached
