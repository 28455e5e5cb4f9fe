"""Reading a volume costs about one copy of it: peak RSS in a child process, and the HU rules kept.

The full-size figures (512 x 512 x 600) are printed by ``benchmarks/bench_read_memory.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctreduce.io.discover import read_volume
from ctreduce.io.volume import hu_array
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series, write_nifti, write_nrrd

CHILD = r"""
import gc, json, re, sys
import numpy as np, nibabel, pydicom, SimpleITK  # noqa: F401
from ctreduce.io.discover import read_volume

def rss(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024

read_volume(sys.argv[2])  # lazily imported readers and codecs belong to the baseline
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak RSS starts again from the current RSS
before = rss("VmRSS")
volume = read_volume(sys.argv[1])
print(json.dumps({"growth": rss("VmHWM") - before, "bytes": volume.hu.nbytes, "dtype": str(volume.hu.dtype)}))
"""


def _peak_rss_can_be_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _write(kind: str, folder: Path, hu: np.ndarray, spacing) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "nii":
        return write_nifti(hu, spacing, folder / "v.nii")
    if kind == "nii.gz":
        return write_nifti(hu, spacing, folder / "v.nii.gz")
    if kind == "scaled nii":  # uint16 on disk, HU through the header's intercept
        image = nib.Nifti1Image(np.transpose((hu.astype(np.int32) + 1024).astype(np.uint16), (2, 1, 0)),
                                np.diag([spacing[2], spacing[1], spacing[0], 1.0]))
        image.header.set_slope_inter(1.0, -1024.0)
        nib.save(image, str(folder / "s.nii"))
        return folder / "s.nii"
    if kind in ("nrrd", "mha"):
        return write_nrrd(hu, spacing, folder / f"v.{kind}")
    write_dicom_series(hu, spacing, folder / "dicom")
    return folder / "dicom"


@pytest.mark.skipif(not _peak_rss_can_be_reset(), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("kind", ["nii", "nii.gz", "scaled nii", "nrrd", "mha", "dicom"])
def test_reading_an_int16_volume_costs_at_most_twice_its_size(tmp_path, kind):
    hu, spacing = make_phantom(n_slices=48, size=256, seed=2)
    path = _write(kind, tmp_path / "big", hu, spacing)
    tiny = _write(kind, tmp_path / "tiny", hu[:3, :16, :16], spacing)
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(tiny)], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout)
    assert result["dtype"] == "int16" and result["bytes"] == hu.nbytes
    # before: 4x for NIfTI (memory map + int32 copy + int16 copy), 2x for SimpleITK; now about 1x
    assert result["growth"] <= 2 * hu.nbytes, f"peak grew by {result['growth'] / hu.nbytes:.2f}x the volume"


@pytest.mark.parametrize("flip", [False, True])
def test_nifti_values_and_order_are_those_of_nibabel(tmp_path, flip):
    """The voxels read into our own array equal nibabel's ``get_fdata`` (flipped axis included)."""
    hu, spacing = make_phantom(n_slices=7, size=12, seed=4)
    data = np.transpose(hu, (2, 1, 0)).astype(np.int16)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    if flip:
        affine[2, 2], affine[2, 3] = -spacing[0], 6 * spacing[0]
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "v.nii.gz"))
    volume = read_volume(tmp_path / "v.nii.gz")
    expected = np.transpose(nib.load(str(tmp_path / "v.nii.gz")).get_fdata(), (2, 1, 0))
    assert np.array_equal(volume.hu, expected[::-1] if flip else expected)
    assert volume.hu.dtype == np.int16 and volume.hu.flags.c_contiguous


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("raw_dtype, values, slopes, intercepts, expected", [
    (np.int16, (-32768, 32767), (1, 1, 1), (0, 0, 0), np.int16),
    (np.uint16, (0, 4095), (1, 1, 1), (-1024, -1024, -1024), np.int16),
    (np.uint16, (0, 4095), (1, 2, 1), (-1024, -1024, 0), np.int16),  # per-slice rescale
    (np.int16, (-2000, 3000), (-1, -1, -1), (100, 100, 100), np.int16),
    (np.uint16, (0, 65535), (1, 1, 1), (-1024, -1024, -1024), np.int32),  # beyond int16
    (np.uint32, (0, 2**32 - 1), (1, 1, 1), (0, 0, 0), np.float32),  # beyond int32: never wraps
    (np.int16, (-2000, 3000), (0.5, 0.5, 0.5), (-1024, -1024, -1024), np.float32),
    (np.float32, (-2000, 3000), (1, 1, 1), (0, 0, 0), np.float32),
    (np.float32, (-2000, 3000), (2, 2, 2), (-1000.5, -1000.5, -1000.5), np.float32),
    (np.dtype(">i2"), (0, 4095), (1, 1, 1), (-1024, -1024, -1024), np.int16),  # big-endian NIfTI
])
def test_hu_array_dtype_rules_and_values(raw_dtype, values, slopes, intercepts, expected, in_place):
    raw = np.random.default_rng(0).integers(*values, size=(3, 5, 7), endpoint=True).astype(raw_dtype)
    raw[0, 0, :2] = values  # both extremes occur
    slope, intercept = np.array(slopes, dtype=float), np.array(intercepts, dtype=float)
    given = raw.copy()
    hu = hu_array(given, slope, intercept, in_place=in_place)
    assert hu.dtype == expected and hu.shape == raw.shape
    if hu.dtype.kind == "f":  # float32 arithmetic, as ever
        f32 = raw.astype(np.float32)
        want = f32 * slope.astype(np.float32)[:, None, None] + intercept.astype(np.float32)[:, None, None]
        assert np.array_equal(hu, want)
    else:  # exact
        assert np.array_equal(hu, raw.astype(np.float64) * slope[:, None, None] + intercept[:, None, None])
    if not in_place:
        assert np.array_equal(given, raw) and not np.shares_memory(hu, given)
