"""The core install (``pip install ctreduce``, no extras): the commands run without torch, scikit-learn,
scikit-image, matplotlib, lightly, Lightning and Ray, and the commands that need them say in one line which
extra to install (exit 2, no traceback).

Each command runs in a subprocess whose ``sitecustomize`` puts a finder first on ``sys.meta_path`` that
refuses those libraries as if they were not installed. ``benchmarks/bench_core_install.py`` builds a real
core-only environment from PyPI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctreduce.sample_data.phantom import make_phantom, write_dicom_series, write_nifti, write_nrrd

NOT_INSTALLED = ("torch", "torchvision", "sklearn", "skimage", "matplotlib", "lightly", "lightning",
                 "pytorch_lightning", "lightning_fabric", "ray", "timm", "omegaconf", "tensorboard")

SITECUSTOMIZE = f'''
import sys

NOT_INSTALLED = {set(NOT_INSTALLED)!r}


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in NOT_INSTALLED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
'''
TRAIN_EXTRA = "pip install 'ctreduce[train]'"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory):
    """``run(*args)``: ``python -m ctreduce.cli *args`` in the core environment, in a working folder that
    holds a small archive (DICOM, NIfTI, NRRD phantoms)."""
    base = tmp_path_factory.mktemp("core")
    (base / "site").mkdir()
    (base / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    archive = base / "archive"
    for i, (n, thickness) in enumerate([(30, 1.0), (20, 2.5)]):
        hu, spacing = make_phantom(n_slices=n, size=64, slice_thickness=thickness, seed=i)
        write_dicom_series(hu, spacing, archive / f"patient{i}" / "ct", seed=i)
    hu, spacing = make_phantom(n_slices=24, size=48, slice_thickness=2.0, seed=5)
    write_nifti(hu, spacing, archive / "p5.nii.gz")
    hu, spacing = make_phantom(n_slices=16, size=48, slice_thickness=3.0, seed=6)
    write_nrrd(hu, spacing, archive / "p6.nrrd")
    paths = [str(base / "site"), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ctreduce.cli", *args], cwd=base, env=env, text=True,
                              capture_output=True, timeout=600)

    hidden = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert hidden.returncode == 1 and "No module named 'torch'" in hidden.stderr  # the finder is in place
    run.base = base
    return run


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def runs(core) -> Path:
    """The archive reduced by every core method, each into runs/<method>."""
    for method in ("hash", "all", "every-n", "mi", "ssim"):
        out = _ok(core("reduce", "archive", "--out", f"runs/{method}", "--method", method, "--quiet"))
        assert "4 volume(s) reduced, 0 failed" in out
    return core.base / "runs"


def test_scan(core) -> None:
    assert "4 volume(s), 90 slices" in _ok(core("scan", "archive"))


@pytest.mark.parametrize("method", ["hash", "all", "every-n", "mi", "ssim"])
def test_reduce(runs: Path, method: str) -> None:
    import pandas as pd

    manifest = pd.read_parquet(runs / method / "manifest.parquet")
    assert len(manifest) == 90 and 0 < manifest["kept"].sum() <= 90
    assert manifest["dhash"].str.fullmatch("[0-9a-f]{16}").all()  # every slice's dHash, whatever the method


def test_reduce_with_the_dhash_and_a_sweep(core, runs: Path) -> None:
    out = _ok(core("reduce", "archive", "--out", "runs/dhash", "--method", "hash", "--hash", "dhash",
                   "--thresholds", "4,6,8", "--workers", "2", "--quiet"))
    assert "threshold 8: kept fraction" in out


def test_export_report_compare_duplicates_and_leakage(core, runs: Path) -> None:
    assert "exported" in _ok(core("export", "runs/hash", "--format", "png", "--out", "export/png", "--quiet"))
    assert "exported" in _ok(core("export", "runs/hash", "--format", "npy", "--size", "64", "--out",
                                  "export/npy", "--quiet"))
    _ok(core("report", "runs/hash", "-o", "report.html"))
    text = (core.base / "report.html").read_text("utf-8")
    assert text.count("data:image/svg+xml;base64,") >= 1 + 4  # histogram and a score plot per volume
    assert "Jaccard" in _ok(core("compare", "runs/hash", "runs/all", "runs/mi", "runs/ssim"))
    assert "volume pair(s)" in _ok(core("duplicates", "runs/hash", "runs/all", "--out", "duplicates"))

    images = sorted((core.base / "export" / "png" / "images").glob("*.png"))
    task = core.base / "task"
    for i, image in enumerate(images):  # a two-class image folder made of the exported slices
        (task / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, task / f"class{i % 2}" / image.name)
    out = _ok(core("leakage", "--pretrain", "runs/hash", "--task", "task", "--out", "leakage"))
    assert "test in train" in out and (core.base / "leakage" / "leakage.json").is_file()


def _says_which_extra(result: subprocess.CompletedProcess[str], extra: str = TRAIN_EXTRA) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(extra), result.stderr


def test_deepnet_and_ssim_on_a_gpu_say_which_extra(core) -> None:
    _says_which_extra(core("reduce", "archive", "--out", "runs/deepnet", "--method", "deepnet"))
    _says_which_extra(core("reduce", "archive", "--out", "runs/ssim-gpu", "--method", "ssim", "--device", "cuda"))
    _says_which_extra(core("reduce", "archive", "--out", "runs/ray", "--backend", "ray", "--workers", "2",
                           "--quiet"), "pip install 'ctreduce[ray]'")
    _says_which_extra(core("export", "runs/hash", "--out", "export/ray", "--backend", "ray", "--quiet"),
                      "pip install 'ctreduce[ray]'")
    for made in ("runs/deepnet", "runs/ssim-gpu", "runs/ray", "export/ray"):  # refused before any folder
        assert not (core.base / made).exists(), made


def test_training_commands_say_which_extra(core, tmp_path: Path) -> None:
    _says_which_extra(core("pretrain", "--data", "export/npy", "--out", str(tmp_path / "pretrain"),
                           "--method", "swav", "--preset", "cpu"))
    _says_which_extra(core("finetune", "--task", "task", "--out", str(tmp_path / "finetune")))
    _says_which_extra(core("evaluate", str(tmp_path / "finetune")))
    config = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())
    config["out"] = str(tmp_path / "experiment")
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(config))
    _says_which_extra(core("experiment", str(tmp_path / "quick.yaml")))
    assert not any(tmp_path.glob("*/*"))  # refused before any output was written
