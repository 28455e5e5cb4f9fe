from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def sample_volumes() -> list[Path]:
    """The two real chest CTs (downloaded once into the cache by ``ctreduce samples``)."""
    from ctreduce.sample_data.real_ct import SamplesUnavailable, fetch

    try:
        return fetch(quiet=True)
    except SamplesUnavailable as exc:
        pytest.skip(f"real sample CTs unavailable (offline?): {exc}")


@pytest.fixture(scope="session")
def real_ct_slice() -> Path:
    """A real CT slice shipped with pydicom-data (installed by the dev extra)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("693_UNCI.dcm"))


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A small mixed archive: two DICOM series, one NIfTI, one NRRD, plus non-volume files."""
    from ctreduce.sample_data.phantom import make_phantom, write_dicom_series, write_nifti, write_nrrd

    root = tmp_path / "archive"
    for i, (thickness, n) in enumerate([(1.0, 30), (2.5, 20)]):
        hu, spacing = make_phantom(n_slices=n, size=64, slice_thickness=thickness, seed=i)
        write_dicom_series(hu, spacing, root / f"patient{i}" / "ct", seed=i)
    hu, spacing = make_phantom(n_slices=24, size=48, slice_thickness=2.0, seed=5)
    write_nifti(hu, spacing, root / "nifti" / "p5.nii.gz")
    hu, spacing = make_phantom(n_slices=16, size=48, slice_thickness=3.0, seed=6)
    write_nrrd(hu, spacing, root / "nrrd" / "p6.nrrd")
    (root / "notes.txt").write_text("not a volume")
    (root / "patient0" / "ct" / "annotation.xml").write_text("<xml/>")
    return root


def tree_fingerprint(root: Path) -> dict[str, str]:
    """Names, sizes, mtimes and contents of every file: proves a tree was not written to."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            stat = path.stat()
            out[str(path)] = f"{stat.st_size}:{stat.st_mtime_ns}:" + hashlib.md5(path.read_bytes()).hexdigest()
    return out


def reference_uint8(hu: np.ndarray) -> np.ndarray:
    """The paper's scaling written out literally, for comparisons."""
    x = hu.astype(np.float64)
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.zeros(x.shape, np.uint8)
    return np.rint((x - lo) / (hi - lo) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: much faster than two on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def slices():
    """16 phantom slices as uint8 (16, 48, 48), the input of the SSL view transforms."""
    import torch

    from ctreduce.io.intensity import Intensity
    from ctreduce.sample_data.phantom import make_phantom

    hu, _ = make_phantom(n_slices=16, size=48)
    return torch.from_numpy(Intensity().to_uint8(hu))


@pytest.fixture(scope="session")
def export_48(tmp_path_factory) -> Path:
    """An npy export (40 px) of 48 phantom slices, 3 NRRD volumes of 16, reduced with method all."""
    import ctreduce
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    root = tmp_path_factory.mktemp("export48")
    for seed in range(3):
        hu, spacing = make_phantom(n_slices=16, size=48, slice_thickness=5.0, seed=seed)
        write_nrrd(hu, spacing, root / "ct" / f"p{seed}.nrrd")
    ctreduce.reduce(root / "ct", root / "run", method="all")
    ctreduce.export(root / "run", root / "export", format="npy", size=40)
    return root / "export"
