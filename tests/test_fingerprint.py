"""Properties of input fingerprints and slice digests (``ctreduce.store.fingerprint``): equal inputs give
equal fingerprints; any change of size, time or pixels is detected, and a slice's digest does not
depend on which other slices were read with it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctreduce.io.discover import load, scan
from ctreduce.io.volume import VolumeSource, hu_array
from ctreduce.sample_data.phantom import write_nifti
from ctreduce.store.fingerprint import Fingerprint, first_mismatch, slice_digest, slice_digests

SLOW = settings(max_examples=25, deadline=None)

stacks = hnp.arrays(np.uint16, st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)),
                    elements=st.integers(0, 4095))
rescales = st.tuples(st.sampled_from([1.0, 2.0, 0.5, 1.25]), st.sampled_from([-1024.0, 0.0, -1000.5, 30000.0]))


@given(hnp.arrays(np.int64, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=st.integers(-2**23, 2**23)))
def test_a_slice_has_one_digest_whatever_dtype_holds_its_values(values):
    digest = slice_digest(values)
    assert slice_digest(values.astype(np.int32)) == digest
    assert slice_digest(values.astype(np.float32)) == digest
    assert slice_digest(values.astype(">i8")) == digest  # byte order is part of the canonical form
    if np.abs(values).max() < 2**15:
        assert slice_digest(values.astype(np.int16)) == digest


@given(stacks, st.data())
def test_a_slice_digest_does_not_depend_on_the_slices_read_with_it(raw, data):
    """``hu_array`` picks int16, int32 or float32 from all the slices loaded together; an export reads
    only the kept ones, a chunked read a contiguous run: each slice's digest must not change."""
    n = raw.shape[0]
    slope, intercept = (np.array(v) for v in zip(*data.draw(st.lists(rescales, min_size=n, max_size=n)), strict=True))
    whole = slice_digests(hu_array(raw, slope, intercept))
    index = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))))
    subset = slice_digests(hu_array(raw[index], slope[index], intercept[index]))
    assert subset == [whole[i] for i in index]


@given(stacks, st.data())
def test_any_changed_value_changes_the_digest(raw, data):
    hu = raw.astype(np.int16)
    k, r, c = (data.draw(st.integers(0, s - 1)) for s in hu.shape)
    delta = data.draw(st.integers(1, 2000))
    other = hu.copy()
    other[k, r, c] += delta
    assert slice_digest(other[k]) != slice_digest(hu[k])
    if hu.shape[1] != hu.shape[2]:  # the same values in another shape are another slice
        assert slice_digest(hu[k].reshape(hu.shape[2], hu.shape[1])) != slice_digest(hu[k])


def _files(root: Path, contents: list[bytes]) -> VolumeSource:
    paths = []
    for i, blob in enumerate(contents):
        path = root / f"s{i:02d}.dcm"
        path.write_bytes(blob)
        paths.append(str(path))
    return VolumeSource("v", "dicom", tuple(paths), n_slices=len(paths))


@SLOW
@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=6), st.data())
def test_fingerprints_equal_for_equal_files_and_differ_for_any_size_or_time_change(contents, data):
    with tempfile.TemporaryDirectory() as tmp:
        source = _files(Path(tmp), contents)
        before = Fingerprint.of(source)
        assert Fingerprint.of(source) == before
        assert Fingerprint.from_json(before.to_json()) == before
        k = data.draw(st.integers(0, len(contents) - 1))
        path = source.paths[k]
        if data.draw(st.booleans()):
            delta = data.draw(st.integers(1, 10**12).map(lambda v: v * data.draw(st.sampled_from([-1, 1]))))
            stat = os.stat(path)
            assume(stat.st_mtime_ns + delta > 0)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + delta))
        else:
            stat = os.stat(path)
            with open(path, "ab") as fh:
                fh.write(data.draw(st.binary(min_size=1, max_size=8)))
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the size alone changed
        now = Fingerprint.of(source)
        assert now != before and before.change(now) == f"1 file(s) modified (first: {path})"
        assert before.restatted(source, now) == [k]


@SLOW
@given(hnp.arrays(np.int16, st.tuples(st.integers(2, 5), st.integers(2, 8), st.integers(2, 8)),
                  elements=st.integers(-1024, 3000)), st.data())
def test_pixels_rewritten_with_size_and_time_kept_pass_the_stat_but_not_the_digest(hu, data):
    """The stat fast path trusts such a file (as make and rsync do); reading it finds the change."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_nifti(hu, (2.0, 1.0, 1.0), Path(tmp) / "v.nii")
        (source,) = scan([path]).volumes
        volume = load(source)
        rows = pd.DataFrame({"slice_index": np.arange(volume.n_slices), "z_mm": volume.z_mm,
                             "pixel_digest": slice_digests(volume.hu)})
        before = Fingerprint.of(source)
        assert first_mismatch(load(source), rows) is None

        k = data.draw(st.integers(0, hu.shape[0] - 1))
        other = hu.copy()
        other[k] = np.roll(other[k], 1, axis=data.draw(st.integers(0, 1)))
        assume(not np.array_equal(other[k], hu[k]))
        stat = os.stat(path)
        write_nifti(other, (2.0, 1.0, 1.0), path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert Fingerprint.of(source) == before
        mismatch = first_mismatch(load(source), rows)
        assert mismatch == f"{source.volume_id}: slice {k} ({path}) holds other pixels than the ones it was reduced on"
