"""Hamming-radius search over 64-bit codes (ctreduce's dHash) at archive scale.

:class:`HammingIndex` finds every pair of codes within ``radius`` bits (a self-join) and every
indexed code within ``radius`` of a query, exactly, by multi-index hashing (Norouzi et al.,
"Fast search in Hamming space with multi-index hashing", CVPR 2012) with the general pigeonhole
principle of Qin et al. ("GPH", ICDE 2018): the 64 bits are dealt into ``m`` parts (bit ``b``
to part ``b % m``, :func:`interleave`) and part ``s`` gets a tolerance ``t_s`` with
``sum(t_s + 1) >= radius + 1``; two codes within
``radius`` then differ in at most ``t_s`` bits of at least one part ``s``. Each part is a
direct-address table (value -> bucket of codes sorted by that value); candidates are the codes of
the buckets within ``t_s`` of a code's part value, checked with a full popcount. A pair is
reported only by the first part that generates it, so every result appears once.

Why not FAISS (measured on this project's shared 2-core machine, ``benchmarks/bench_curate.py``):
the radius-6 self-join of the benchmark's first 50,000 CT-like codes took 4.6 s with
``faiss.IndexBinaryMultiHash`` range search (4 tables of 16 bits, nflip 1: exact at radius 6),
0.74 s with this index; on a more clustered set of 100,000 codes 75 s against 1.5 s. FAISS's
exhaustive ``IndexBinaryFlat`` took 174 s for the nearest of 25,000 queries among 1,000,000
codes, this index 3 s within 6 bits. Searches are therefore bounded by the radius: "nearest"
means nearest within the radius.

Memory is linear in the number of codes: per part the sort order, the codes in that order and
one table of ``2**bits`` int32 (4 MiB for 22-bit parts); results stream out in chunks.

Codes are ``uint64`` as :mod:`ctreduce.core.dhash` reads them from a manifest (imagehash's bit order).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..core.dhash import BITS

# Candidate pairs handled per vectorised step: bounds the temporary arrays (~40 bytes each).
CHUNK = 1 << 21
# Buckets larger than this are compared block by block (outer XOR over row chunks); smaller
# ones through windows of the sorted codes (see HammingIndex._blocks).
WINDOW = 1 << 11


def _check_codes(codes: np.ndarray, what: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype != np.uint64:
        raise ValueError(f"{what} must be a 1-D uint64 array of 64-bit codes, got {codes.dtype} {codes.shape}")
    return codes


def _check_radius(radius: int) -> int:
    if isinstance(radius, bool) or int(radius) != radius or not 0 <= radius <= BITS:
        raise ValueError(f"radius must be an integer number of bits in [0, {BITS}], got {radius!r}")
    return int(radius)


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


@dataclass(frozen=True)
class Part:
    """Bits ``shift .. shift + width - 1`` (least significant first) with tolerance ``t``."""

    shift: int
    width: int
    t: int

    @property
    def mask(self) -> np.uint64:
        return np.uint64(((1 << self.width) - 1) << self.shift)

    def values(self, codes: np.ndarray) -> np.ndarray:
        return ((codes >> np.uint64(self.shift)) & np.uint64((1 << self.width) - 1)).astype(np.int64)

    def flips(self) -> np.ndarray:
        """Every non-zero pattern of at most ``t`` bits inside the part."""
        masks = [sum(1 << b for b in combo) for k in range(1, self.t + 1)
                 for combo in itertools.combinations(range(self.width), k)]
        return np.asarray(masks, dtype=np.int64)


def plan(radius: int) -> list[Part]:
    """The parts used for ``radius``: ``m = max(3, ceil((radius + 1) / 3))`` parts so that no
    tolerance exceeds 2 (at most 253 probes per 22-bit part value); ``radius + 1`` units shared
    out as evenly as possible, part tolerance = its units - 1 (a part with none is not searched).
    Three parts for radius <= 8 (measured: fewer candidates than 4 x 16 bits on CT-like codes)."""
    radius = _check_radius(radius)
    m = _parts_count(radius)
    edges = [BITS * s // m for s in range(m + 1)]
    units = radius + 1
    parts = []
    for s in range(m):
        k = units // m + (1 if s < units % m else 0)
        parts.append(Part(edges[s], edges[s + 1] - edges[s], k - 1))
    return [p for p in parts if p.t >= 0]


def _parts_count(radius: int) -> int:
    return min(max(3, math.ceil((radius + 1) / 3)), BITS // 2)


class _Table:
    """One part: codes sorted by the part's value, bucket starts and counts, value -> bucket."""

    def __init__(self, part: Part, codes: np.ndarray) -> None:
        self.part = part
        values = part.values(codes)
        self.order = np.argsort(values, kind="stable")
        self.codes = codes[self.order]
        sorted_values = values[self.order]
        if len(codes):
            self.starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_values)) + 1]).astype(np.int64)
        else:
            self.starts = np.zeros(0, np.int64)
        self.counts = np.diff(np.concatenate([self.starts, [len(codes)]])).astype(np.int64)
        self.values = sorted_values[self.starts]
        self.padded = np.concatenate([self.codes, np.zeros(WINDOW, np.uint64)])  # windows past the end
        self.lookup = np.full(1 << part.width, -1, dtype=np.int32)
        self.lookup[self.values] = np.arange(len(self.values), dtype=np.int32)


def interleave(codes: np.ndarray, m: int) -> np.ndarray:
    """The codes with bit ``b`` moved into part ``b % m`` (parts of ``plan`` stay contiguous).

    Neighbouring dHash bits compare neighbouring pixels of one row and are strongly correlated in
    CT; spreading them over the parts cut the candidates of the radius-6 self-join of 1,000,000
    CT-like codes by ~20% (measured). Hamming distances are unchanged by any bit permutation."""
    edges = [BITS * s // m for s in range(m + 1)]
    target, filled = np.zeros(BITS, np.int64), [0] * m
    for b in range(BITS):
        s = b % m
        if filled[s] == edges[s + 1] - edges[s]:  # parts differ by at most one bit: spill over
            s = next(k for k in range(m) if filled[k] < edges[k + 1] - edges[k])
        target[b] = edges[s] + filled[s]
        filled[s] += 1
    out = np.zeros_like(codes)
    one = np.uint64(1)
    for b in range(BITS):
        out |= ((codes >> np.uint64(b)) & one) << np.uint64(target[b])
    return out


class HammingIndex:
    """Exact Hamming-radius search over ``codes`` (uint64), built once for one ``radius``."""

    def __init__(self, codes: np.ndarray, radius: int) -> None:
        self.codes = _check_codes(codes, "codes")
        self.radius = _check_radius(radius)
        self.parts = plan(self.radius)
        self.m = _parts_count(self.radius)
        permuted = interleave(self.codes, self.m)
        self.tables = [_Table(p, permuted) for p in self.parts]

    def __len__(self) -> int:
        return len(self.codes)

    # --- self-join ----------------------------------------------------------------------------

    def iter_pairs(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Chunks ``(i, j, d)`` (int64, int64, uint8; ``i < j``) of every pair of codes within
        the radius, each pair exactly once, in no particular order."""
        for s, table in enumerate(self.tables):
            counts = table.counts
            bucket = np.arange(len(counts), dtype=np.int64)
            same = bucket[counts > 1]
            yield from self._blocks(s, table, same, same, upper=True)
            for flip in table.part.flips():
                other = table.lookup[table.values ^ flip].astype(np.int64)
                keep = other > bucket  # each unordered bucket pair once
                yield from self._blocks(s, table, bucket[keep], other[keep], upper=False)

    def pairs(self, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair within the radius as arrays ``(i, j, d)`` sorted by (i, j), ``i < j``;
        with ``groups`` (one label per code), only pairs whose labels differ."""
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != self.codes.shape:
                raise ValueError(f"groups has shape {groups.shape}, codes {self.codes.shape}")
        found_i, found_j, found_d = [], [], []
        for i, j, d in self.iter_pairs():
            if groups is not None:
                other = groups[i] != groups[j]
                i, j, d = i[other], j[other], d[other]
            found_i.append(i.astype(np.int32 if len(self) < 2**31 else np.int64))
            found_j.append(j.astype(found_i[-1].dtype))
            found_d.append(d)
        return _sorted_pairs(found_i, found_j, found_d)

    def _blocks(self, s: int, table: _Table, a: np.ndarray, b: np.ndarray, *, upper: bool,
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Compare every code of bucket ``a[k]`` with every code of bucket ``b[k]`` (``upper``:
        ``a == b``, pairs of positions i < j only).

        Buckets are contiguous in ``table.codes``, so bucket ``b[k]`` is read as one window of
        ``W`` codes (``W`` its size rounded up to a power of two) and compared
        with each code of bucket ``a[k]`` in one (rows, W) popcount: no per-pair index arithmetic.
        """
        ca, cb = table.counts[a], table.counts[b]
        wide = cb > WINDOW
        for k in np.flatnonzero(wide):
            yield from self._dense(s, table, int(table.starts[a[k]]), int(ca[k]), int(table.starts[b[k]]),
                                   int(cb[k]), upper)
        a, ca, cb = a[~wide], ca[~wide], cb[~wide]
        sb = table.starts[b[~wide]]
        widths = np.left_shift(1, np.ceil(np.log2(np.maximum(cb, 1))).astype(np.int64))
        for width in np.unique(widths):
            sel = widths == width
            sa_w, na_w, sb_w, nb_w = table.starts[a[sel]], ca[sel], sb[sel], cb[sel]
            windows = np.lib.stride_tricks.sliding_window_view(table.padded, int(width))
            shift = int(width).bit_length() - 1
            block_of_row = np.repeat(np.arange(len(na_w)), na_w)  # one row per code of bucket a
            first = np.repeat(np.cumsum(na_w) - na_w, na_w)
            row_pos = sa_w[block_of_row] + np.arange(len(block_of_row)) - first
            step = max(1, CHUNK // int(width))
            for r0 in range(0, len(block_of_row), step):
                block, pi = block_of_row[r0:r0 + step], row_pos[r0:r0 + step]
                start = sb_w[block]
                hit = np.flatnonzero(popcount(table.codes[pi][:, None] ^ windows[start]) <= self.radius)
                row, col = hit >> shift, hit & (width - 1)
                # Padding columns hold the codes after bucket b (or zeros past the end): drop them
                # here, on the few hits, rather than masking every compared pair.
                keep = col < nb_w[block[row]]
                row, col = row[keep], col[keep]
                pj = start[row] + col
                if upper:
                    keep = pi[row] < pj
                    row, pj = row[keep], pj[keep]
                yield from self._verify(s, table, pi[row], pj)

    def _dense(self, s: int, table: _Table, sa: int, na: int, sb: int, nb: int, upper: bool,
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        rows = max(1, CHUNK // nb)
        right = table.codes[sb:sb + nb]
        for r0 in range(0, na, rows):
            left = table.codes[sa + r0:sa + min(na, r0 + rows)]
            d = popcount(left[:, None] ^ right[None, :])
            hit = d <= self.radius
            if upper:
                hit &= np.arange(r0, r0 + len(left))[:, None] < np.arange(nb)[None, :]
            li, rj = np.nonzero(hit)
            yield from self._verify(s, table, sa + r0 + li, sb + rj)

    def _verify(self, s: int, table: _Table, pi: np.ndarray, pj: np.ndarray,
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        x = table.codes[pi] ^ table.codes[pj]
        d = popcount(x)
        keep = d <= self.radius
        x, d, pi, pj = x[keep], d[keep], pi[keep], pj[keep]
        for earlier in self.parts[:s]:  # reported by an earlier part already
            keep = popcount(x & earlier.mask) > earlier.t
            x, d, pi, pj = x[keep], d[keep], pi[keep], pj[keep]
        if len(d):
            i, j = table.order[pi], table.order[pj]
            yield np.minimum(i, j), np.maximum(i, j), d.astype(np.uint8)

    # --- queries ------------------------------------------------------------------------------

    def iter_query(self, queries: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Chunks ``(q, j, d)``: query ``q`` is within the radius of indexed code ``j``; each
        (query, code) pair exactly once, in no particular order."""
        queries = interleave(_check_codes(queries, "queries"), self.m)
        qindex = np.arange(len(queries), dtype=np.int64)
        for s, table in enumerate(self.tables):
            qvalues = table.part.values(queries)
            for flip in np.concatenate([[0], table.part.flips()]).astype(np.int64):
                bucket = table.lookup[qvalues ^ flip].astype(np.int64)
                hit = bucket >= 0
                q, bucket = qindex[hit], bucket[hit]
                sizes = table.counts[bucket]
                for lo, hi in _chunks(sizes, CHUNK):
                    n = int(sizes[lo:hi].sum())
                    if n == 0:
                        continue
                    first = np.cumsum(sizes[lo:hi]) - sizes[lo:hi]
                    block = np.repeat(np.arange(lo, hi), sizes[lo:hi])
                    pos = table.starts[bucket[block]] + np.arange(n, dtype=np.int64) - np.repeat(first, sizes[lo:hi])
                    yield from self._verify_query(s, table, queries, q[block], pos)

    def _verify_query(self, s: int, table: _Table, queries: np.ndarray, q: np.ndarray, pos: np.ndarray,
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        x = queries[q] ^ table.codes[pos]
        d = popcount(x)
        keep = d <= self.radius
        x, d, q, pos = x[keep], d[keep], q[keep], pos[keep]
        for earlier in self.parts[:s]:
            keep = popcount(x & earlier.mask) > earlier.t
            x, d, q, pos = x[keep], d[keep], q[keep], pos[keep]
        if len(d):
            yield q, table.order[pos], d.astype(np.uint8)

    def query(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query, indexed code) pair within the radius as ``(q, j, d)`` sorted by (q, j)."""
        found = list(self.iter_query(queries))
        return _sorted_pairs([f[0] for f in found], [f[1] for f in found], [f[2] for f in found])

    def nearest_within(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query the nearest indexed code within the radius (ties: lowest index) and its
        distance; -1 and 255 where none is within the radius."""
        queries = _check_codes(queries, "queries")
        best = np.full(len(queries), np.iinfo(np.int64).max, dtype=np.int64)
        for q, j, d in self.iter_query(queries):
            np.minimum.at(best, q, d.astype(np.int64) << 40 | j)
        return _unpack_best(best)


def _unpack_best(best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    none = best == np.iinfo(np.int64).max
    index = np.where(none, -1, best & ((1 << 40) - 1))
    distance = np.where(none, 255, best >> 40).astype(np.uint8)
    return index, distance


def _chunks(sizes: np.ndarray, limit: int) -> Iterator[tuple[int, int]]:
    """Consecutive ranges of ``sizes`` whose sums stay near ``limit`` (a range holds at least one)."""
    if len(sizes) == 0:
        return
    ends = np.cumsum(sizes)
    lo = 0
    while lo < len(sizes):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + limit, side="right")))
        yield lo, hi
        lo = hi


def _sorted_pairs(i: list[np.ndarray], j: list[np.ndarray], d: list[np.ndarray],
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    i, j, d = np.concatenate(i), np.concatenate(j), np.concatenate(d)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


# --- brute-force reference (tests, benchmark) ----------------------------------------------------


def brute_pairs(codes: np.ndarray, radius: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j within ``radius`` by comparing every pair (numpy popcount, row chunks)."""
    codes, radius = _check_codes(codes, "codes"), _check_radius(radius)
    found_i, found_j, found_d = [], [], []
    for r0 in range(0, len(codes), chunk):
        rows = codes[r0:r0 + chunk]
        d = popcount(rows[:, None] ^ codes[None, :])
        hit = (d <= radius) & (np.arange(r0, r0 + len(rows))[:, None] < np.arange(len(codes))[None, :])
        li, j = np.nonzero(hit)
        found_i.append(r0 + li)
        found_j.append(j)
        found_d.append(d[li, j].astype(np.uint8))
    return _sorted_pairs(found_i, found_j, found_d)


def brute_query(queries: np.ndarray, codes: np.ndarray, radius: int, chunk: int = 2048,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    queries, codes = _check_codes(queries, "queries"), _check_codes(codes, "codes")
    radius = _check_radius(radius)
    found_q, found_j, found_d = [], [], []
    for r0 in range(0, len(queries), chunk):
        d = popcount(queries[r0:r0 + chunk, None] ^ codes[None, :])
        q, j = np.nonzero(d <= radius)
        found_q.append(r0 + q)
        found_j.append(j)
        found_d.append(d[q, j].astype(np.uint8))
    return _sorted_pairs(found_q, found_j, found_d)


def brute_nearest(queries: np.ndarray, codes: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Every query's nearest code (ties: lowest index, as ``np.argmin``) and its distance."""
    queries, codes = _check_codes(queries, "queries"), _check_codes(codes, "codes")
    index, distance = np.full(len(queries), -1, np.int64), np.full(len(queries), 255, np.uint8)
    if len(codes) == 0:
        return index, distance
    for r0 in range(0, len(queries), chunk):
        d = popcount(queries[r0:r0 + chunk, None] ^ codes[None, :])
        index[r0:r0 + len(d)] = np.argmin(d, axis=1)
        distance[r0:r0 + len(d)] = d.min(axis=1)
    return index, distance
