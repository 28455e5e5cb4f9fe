"""Property tests of ``store.fingerprint`` beyond ``test_fingerprint.py``: what its docstrings promise.

- ``slice_digest``: equal exactly when the slices hold the same values in the same shape, for
  slices of every dtype a reader gives (integers compared as numbers whatever their dtype, other
  values as their float32 bytes); ``"<algorithm>:<16 hex>"`` for every algorithm, read back by
  ``digest_algorithm``;
- ``Fingerprint``: the stat fast path (stats from a walk are used as given, nothing is statted
  again); ``change`` counts added, missing and modified files, ``restatted`` names exactly the
  slices whose file's stat changed; a file added beside a DICOM series changes its fingerprint;
- ``first_mismatch``: None when every slice holds what was recorded, else the first difference
  in slice order (a position that moved wins over pixels at or after it), naming slice and file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctreduce.io.volume import Volume, VolumeSource
from ctreduce.store.fingerprint import (
    ALGORITHM,
    ALGORITHMS,
    DIGEST_COLUMN,
    Fingerprint,
    digest_algorithm,
    first_mismatch,
    slice_digest,
    slice_digests,
)

INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64]
FLOAT_VALUES = [0.0, -0.0, 1.0, -1.0, 0.5, -1024.0, 0.1, 1e-3, 2.0**40, float("nan"), float("inf"), -float("inf")]
SHAPES = st.sampled_from([(1, 1), (1, 4), (4, 1), (2, 2), (2, 3), (3, 2), (4, 4)])


def slices_of(dtype, shape):
    """Slices of ``dtype`` whose values come from a few, so that equal slices are often drawn."""
    if np.dtype(dtype).kind == "f":
        return hnp.arrays(dtype, shape, elements=st.sampled_from(FLOAT_VALUES).map(dtype))
    info = np.iinfo(dtype)
    few = sorted({0, 1, 2, info.max, int(max(info.min, -1)), int(max(info.min, -32768)), int(min(info.max, 32768))})
    return hnp.arrays(dtype, shape, elements=st.sampled_from(few))


def any_slice(shape):
    return st.sampled_from(INT_DTYPES + [np.float32, np.float64]).flatmap(lambda d: slices_of(d, shape))


def integral(x: np.ndarray) -> bool:
    return x.dtype.kind in "iu" or bool(np.isfinite(x).all() and np.array_equal(np.rint(x), x))


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """The docstring's meaning of "the same slice": shape, and integers as numbers, other values as float32."""
    if a.shape != b.shape or integral(a) != integral(b):
        return False
    if integral(a):
        return [int(v) for v in a.ravel()] == [int(v) for v in b.ravel()]
    return a.astype(np.float32).tobytes() == b.astype(np.float32).tobytes()


@st.composite
def slice_pairs(draw):
    """Two slices that often hold the same values: a copy in another dtype, a copy with one value
    changed, the same values in another shape, or two independent draws."""
    a = draw(SHAPES.flatmap(any_slice))
    how = draw(st.sampled_from(["cast", "change", "reshape", "independent"]))
    if how == "cast":
        dtype = draw(st.sampled_from(INT_DTYPES + [np.float32, np.float64]))
        with np.errstate(invalid="ignore", over="ignore"):
            b = a.astype(dtype)
        exact = np.array_equal(b.astype(np.float64), a.astype(np.float64), equal_nan=True)
        if not exact and not (a.dtype.kind == "f" and dtype == np.float32):  # float64 rounded to float32: kept
            b = a.copy()  # not representable in that dtype: the copy itself
    elif how == "change":
        b = a.copy()
        k = draw(st.integers(0, a.size - 1))
        b.flat[k] = draw(slices_of(a.dtype.type, (1,)))[0]
    elif how == "reshape":
        b = a.reshape(a.shape[::-1])
    else:
        b = draw(any_slice(a.shape))
    return a, b


@settings(max_examples=500)
@given(slice_pairs())
def test_digests_are_equal_exactly_when_the_slices_hold_the_same_values(pair):
    a, b = pair
    assert (slice_digest(a) == slice_digest(b)) == same_values(a, b)
    assert slice_digest(a) == slice_digest(a.copy(order="F")) == slice_digest(a.astype(a.dtype.newbyteorder(">")))


@given(SHAPES.flatmap(lambda shape: hnp.arrays(np.float64, shape, elements=st.floats(-4096, 4096, width=64))))
def test_a_float64_slice_has_the_digest_of_its_float32_values(values):
    """Values that are not all integers are hashed as float32 (what ``hu_array`` gives for them). Not
    claimed where the rounding makes them all integers (1e-100 -> 0.0): readers give no float64."""
    single = values.astype(np.float32)
    if integral(values) == integral(single):
        assert slice_digest(values) == slice_digest(single) == slice_digest(single.astype(np.float64))


@given(SHAPES.flatmap(any_slice), st.sampled_from(sorted(ALGORITHMS)))
def test_every_algorithm_gives_a_named_64_bit_digest(values, algorithm):
    digest = slice_digest(values, algorithm)
    name, _, hexdigest = digest.partition(":")
    assert name == algorithm and digest_algorithm(digest) == algorithm
    assert len(hexdigest) == 16 and int(hexdigest, 16) >= 0
    assert slice_digest(values) == slice_digest(values, ALGORITHM)  # the recorded one by default


@given(st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=12),
                 st.sampled_from(["xxh3:0123", "b2b:ff", "md5:00", "xxh3", "b2b", ":b2b", "XXH3:00"])))
def test_a_digest_of_an_unknown_algorithm_or_no_digest_has_no_algorithm(recorded):
    expected = recorded.partition(":")[0] if isinstance(recorded, str) else None
    assert digest_algorithm(recorded) == (expected if expected in ALGORITHMS else None)


# --- file fingerprints: the stat fast path ------------------------------------------------------------

STATS = st.tuples(st.integers(0, 10**9), st.integers(0, 2**62))


@st.composite
def restat(draw):
    """A DICOM-like source (one file per slice), the stats of a walk, and the stats of a later walk in
    which some files changed size or time, some disappeared and some new ones appeared."""
    n = draw(st.integers(1, 8))
    paths = tuple(f"/nowhere/series/{k:03d}.dcm" for k in range(n))
    before = {p: draw(STATS) for p in paths}
    after = dict(before)
    changed = sorted(draw(st.sets(st.integers(0, n - 1))))
    missing = sorted(draw(st.sets(st.integers(0, n - 1))) - set(changed))
    for k in changed:
        after[paths[k]] = draw(STATS.filter(lambda s, old=before[paths[k]]: s != old))
    for k in missing:
        del after[paths[k]]
    added = tuple(f"/nowhere/series/new{k}.dcm" for k in range(draw(st.integers(0, 3))))
    after.update({p: draw(STATS) for p in added})
    return paths, added, before, after, changed, missing


@settings(max_examples=300)
@given(restat())
def test_the_stat_fast_path_uses_a_walks_stats_and_names_exactly_what_changed(case):
    paths, added, before_stats, after_stats, changed, missing = case
    source = VolumeSource("series", "nifti", paths, n_slices=len(paths))  # no folders: nothing is statted
    before = Fingerprint.of(source, stats=before_stats)
    assert before.files == tuple((p, *before_stats[p]) for p in paths)  # the walk's stats, as given
    assert Fingerprint.of(source, stats=before_stats) == before and before.change(before) == ""
    later = VolumeSource("series", "nifti", paths + added, n_slices=len(paths) + len(added))
    now = Fingerprint.of(later, stats=after_stats)
    # files the walk no longer saw are statted: they do not exist, so size -1
    assert all(f[1:] == (-1, 0) for f in now.files if f[0] in {paths[k] for k in missing})
    assert (now.files[:len(paths)] == before.files) == (not changed and not missing)
    lists = ((list(added), "added"), ([paths[k] for k in missing], "missing"),
             ([paths[k] for k in changed], "modified"))
    expected = [f"{len(v)} file(s) {what} (first: {v[0]})" for v, what in lists if v]
    assert before.change(now) == "; ".join(expected)
    assert before.restatted(later, now) == sorted(changed + missing) + list(range(len(paths), len(paths) + len(added)))


@settings(max_examples=100)
@given(st.integers(1, 6), STATS, STATS)
def test_a_single_file_volumes_slices_are_restatted_together(n, old, new):
    source = VolumeSource("v", "nifti", ("/nowhere/v.nii.gz",), n_slices=n)
    before = Fingerprint.of(source, stats={source.paths[0]: old})
    now = Fingerprint.of(source, stats={source.paths[0]: new})
    assert before.restatted(source, now) == ([] if old == new else list(range(n)))


@settings(max_examples=10)
@given(st.integers(1, 4), st.integers(0, 3))
def test_a_file_added_beside_a_dicom_series_changes_its_fingerprint(n, which):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        folder.mkdir()
        paths = []
        for k in range(n):
            (folder / f"{k}.dcm").write_bytes(b"x" * (k + 1))
            paths.append(str(folder / f"{k}.dcm"))
        os.utime(folder, ns=(10**18, 10**18))
        source = VolumeSource("series", "dicom", tuple(paths), n_slices=n)
        before = Fingerprint.of(source)
        assert before.folders == ((str(folder), 10**18),)
        (folder / f"extra{which}.dcm").write_bytes(b"y")  # not in the series (yet): only the folder's time says so
        now = Fingerprint.of(source)
        assert now != before and now.files == before.files
        assert Fingerprint.from_json(now.to_json()) == now


# --- first_mismatch: what it reports -----------------------------------------------------------------


@st.composite
def recorded_volumes(draw):
    """A volume as read now, its manifest rows as recorded, and what changed in between."""
    n = draw(st.integers(1, 6))
    hu = draw(hnp.arrays(np.int16, (n, 3, 3), elements=st.integers(-1024, 3000)))
    z = np.arange(n) * 2.5 - 10.0
    rows = pd.DataFrame({"slice_index": np.arange(n), "z_mm": z, DIGEST_COLUMN: slice_digests(hu),
                         "dhash": [f"{k:016x}" for k in range(n)]})
    changed = sorted(draw(st.sets(st.integers(0, n - 1))))
    moved = sorted(draw(st.sets(st.integers(0, n - 1))))
    undigested = sorted(draw(st.sets(st.integers(0, n - 1))))  # rows recorded by a ctreduce without digests
    now = hu.copy()
    for k in changed:
        now[k, draw(st.integers(0, 2)), draw(st.integers(0, 2))] += draw(st.sampled_from([-1, 1, 7]))
    z_now = z.copy()
    for k in moved:
        z_now[k] += draw(st.sampled_from([-2.5, 0.01, 1.0]))
    rows.loc[undigested, DIGEST_COLUMN] = None
    files = tuple(f"/archive/s/{k}.dcm" for k in range(n))
    return Volume("s", now, (2.5, 1.0, 1.0), z_now, files), rows, changed, moved, undigested


def _dhashes_now(rows: pd.DataFrame, changed: list[int]):
    """The dHash of each slice read now, as the run's intensity policy would give it: the recorded one,
    another one for a changed slice (a stand-in: only equality is compared)."""
    return lambda: [h + ("!" if k in changed else "") for k, h in enumerate(rows["dhash"])]


@settings(max_examples=300)
@given(recorded_volumes())
def test_first_mismatch_reports_the_first_difference_in_slice_order(case):
    volume, rows, changed, moved, undigested = case
    report = first_mismatch(volume, rows, dhashes=_dhashes_now(rows, changed))
    first_changed = changed[0] if changed else None
    if moved and (first_changed is None or moved[0] <= first_changed):
        k = moved[0]
        assert report == (f"s: slice {k} (/archive/s/{k}.dcm) is at z {volume.z_mm[k]:.1f} mm now but "
                          f"{rows['z_mm'][k]:.1f} mm in the manifest")
    elif changed:
        k = first_changed
        assert report == f"s: slice {k} (/archive/s/{k}.dcm) holds other pixels than the ones it was reduced on"
    else:
        assert report is None
    # digests handed in are used as computed; digests of another algorithm are computed again
    assert first_mismatch(volume, rows, digests=slice_digests(volume.hu), dhashes=_dhashes_now(rows, changed)) == report
    for algorithm in set(ALGORITHMS) - {ALGORITHM}:
        other = [slice_digest(s, algorithm) for s in volume.hu]
        assert first_mismatch(volume, rows, digests=other, dhashes=_dhashes_now(rows, changed)) == report
    if undigested:  # without the dHashes of the slices read now those rows cannot be verified
        k = undigested[0]
        assert first_mismatch(volume, rows) == (f"s: slice {k} (/archive/s/{k}.dcm) has no recorded pixel digest "
                                                "to compare its pixels with")


@settings(max_examples=100)
@given(recorded_volumes(), st.data())
def test_first_mismatch_reports_slices_that_are_missing_or_other_ones(case, data):
    volume, rows, _, _, _ = case
    n = volume.n_slices
    if n > 1:
        k = data.draw(st.integers(0, n - 1))
        keep = [i for i in range(n) if i != k]
        fewer = Volume("s", volume.hu[keep], volume.spacing, volume.z_mm[keep], tuple(volume.slice_sources[i]
                                                                                       for i in keep))
        assert first_mismatch(fewer, rows) == f"s: has {n - 1} slices now, {n} when it was reduced"
    index = volume.slice_index.copy()
    k = data.draw(st.integers(0, n - 1))
    index[k:] += 1  # slice k unreadable now (--allow-gaps): the slices after it shift up by one
    gap = Volume("s", volume.hu, volume.spacing, volume.z_mm, volume.slice_sources, slice_index=index)
    assert first_mismatch(gap, rows) == (f"s: holds slice {k + 1} (/archive/s/{k}.dcm) where the manifest "
                                         f"records slice {k}")
