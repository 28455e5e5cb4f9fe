"""SSIM and MI agree with scikit-image and scikit-learn; the leader engine uses them unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity
from sklearn.metrics import normalized_mutual_info_score

from ctreduce.config import ReduceConfig
from ctreduce.io.intensity import Intensity
from ctreduce.reduction.leader import greedy_leader
from ctreduce.reduction.measures import get_measure
from ctreduce.reduction.plan import method_of
from ctreduce.sample_data.phantom import make_phantom


@pytest.fixture(scope="module")
def slices() -> np.ndarray:
    hu, _ = make_phantom(n_slices=12, size=96, slice_thickness=3.0, seed=2)
    u8 = Intensity().to_uint8(hu)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(2, 96, 96), dtype=np.uint8)
    return np.concatenate([u8, noise, np.zeros((1, 96, 96), np.uint8)])


@pytest.mark.parametrize("size", [64, 96])
def test_ssim_matches_skimage(slices, size):
    measure = get_measure("ssim", ssim_size=size, device="cpu", batch_size=5)
    images = measure.resize(slices)
    prepared = measure.prepare(slices)
    others = np.arange(1, len(slices))
    for ref in (0, 5, len(slices) - 1):
        idx = others[others != ref] if ref else others
        expected = [structural_similarity(images[ref], images[i], gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=255) for i in idx]
        np.testing.assert_allclose(prepared.compare(ref, idx), expected, atol=1e-4)


def test_mi_matches_sklearn_on_binned_values(slices):
    measure = get_measure("mi", mi_bins=64, batch_size=4)
    labels = measure.binned(slices).reshape(len(slices), -1)
    prepared = measure.prepare(slices)
    idx = np.arange(1, len(slices))
    expected = [normalized_mutual_info_score(labels[0], labels[i]) for i in idx]
    np.testing.assert_allclose(prepared.compare(0, idx), expected, atol=1e-10)
    constant = len(slices) - 1
    np.testing.assert_allclose(prepared.compare(constant, np.array([0])),
                               [normalized_mutual_info_score(labels[constant], labels[0])])


@pytest.mark.parametrize("name", ["ssim", "mi"])
def test_similarity_leader_keeps_dissimilar_slices(slices, name):
    measure = get_measure(name, device="cpu")
    prepared = measure.prepare(slices)
    n = len(slices)
    strict = greedy_leader(n, prepared.compare, 1.0, higher_is_similar=True)
    loose = greedy_leader(n, prepared.compare, 0.0 if name == "mi" else -1.0, higher_is_similar=True)
    assert strict.n_kept >= n - 1  # only identical slices reach similarity 1
    assert loose.n_kept == 1
    middle = greedy_leader(n, prepared.compare, 0.6, higher_is_similar=True)
    assert 1 < middle.n_kept < n
    dropped = ~middle.kept
    assert (middle.score[dropped] >= 0.6).all()


def test_measure_arguments_are_validated():
    with pytest.raises(ValueError, match="ssim_size"):
        get_measure("ssim", ssim_size=4)
    with pytest.raises(ValueError, match="mi_bins"):
        get_measure("mi", mi_bins=1)
    with pytest.raises(ValueError, match="unknown similarity measure"):
        get_measure("psnr")


def test_preflight_refuses_a_device_this_machine_lacks(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # any machine: as if it had no GPU
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available; use device='cpu'"):
        method_of(ReduceConfig(method="ssim", device="cuda")).preflight()
    method_of(ReduceConfig(method="ssim", device="auto")).preflight()
    method_of(ReduceConfig(method="mi", device="cuda")).preflight()  # MI runs on numpy: no device to check
    method_of(ReduceConfig(method="hash")).preflight()


# --- SSIM without torch: the numpy path keeps the torch path's slices ----------------------------


def test_numpy_ssim_scores_equal_torch_ssim(slices):
    """The two implementations, on the same resized images: scores equal up to the order of the final mean."""
    import torch

    from ctreduce.reduction.similarity import gaussian_window, ssim_numpy, ssim_torch

    measure = get_measure("ssim", ssim_size=64, device="cpu")
    images = (measure.resize(slices) - 128.0).astype(np.float32)
    kernel = gaussian_window().astype(np.float32)
    with_numpy, with_torch = ssim_numpy(images, kernel), ssim_torch(images, kernel, torch.device("cpu"), 5)
    others = np.arange(len(slices))
    for ref in range(len(slices)):
        np.testing.assert_allclose(with_numpy.compare(ref, others), with_torch.compare(ref, others),
                                   rtol=0, atol=1e-9)


def test_numpy_resize_equals_torch_interpolate():
    """``SSIMMeasure.resize`` (numpy) gives torch's antialiased bilinear resize, down and up, odd sizes too."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    for shape, size in [((3, 512, 512), 128), ((2, 333, 517), 128), ((2, 48, 64), 128), ((2, 100, 100), 100)]:
        u8 = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = F.interpolate(torch.from_numpy(u8).double()[:, None], size=(size, size), mode="bilinear",
                                 antialias=True, align_corners=False)[:, 0].clamp(0, 255).numpy()
        got = get_measure("ssim", ssim_size=size, device="cpu").resize(u8)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        assert np.array_equal((got - 128.0).astype(np.float32), (expected - 128.0).astype(np.float32))


SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95)  # 0.9 is the default threshold


def _ssim_runs(inputs, tmp_path, monkeypatch, ssim_size=128):
    """Manifests of one SSIM sweep reduced with torch and again with numpy (torch hidden from the measure)."""
    import pandas as pd

    import ctreduce
    from ctreduce.reduction.similarity import SSIMMeasure

    settings = {"method": "ssim", "thresholds": SWEEP, "ssim_size": ssim_size, "device": "cpu"}
    ctreduce.reduce(inputs, tmp_path / "torch", **settings)
    with monkeypatch.context() as patch:
        patch.setattr(SSIMMeasure, "torch_device", lambda self: None)
        ctreduce.reduce(inputs, tmp_path / "numpy", **settings)
    return [pd.read_parquet(tmp_path / name / "manifest.parquet") for name in ("torch", "numpy")]


def _assert_same_slices(with_torch, with_numpy):
    columns = ["kept"] + [f"kept@{t:g}" for t in SWEEP]
    assert set(columns) <= set(with_torch.columns)
    for column in columns:
        assert with_numpy[column].tolist() == with_torch[column].tolist(), column
    assert with_numpy["leader"].tolist() == with_torch["leader"].tolist()
    np.testing.assert_allclose(with_numpy["similarity"], with_torch["similarity"], rtol=0, atol=1e-9)
    assert 0 < with_torch["kept@0.9"].sum() < len(with_torch)


def test_numpy_ssim_keeps_the_torch_slices_of_the_real_cts(sample_volumes, tmp_path, monkeypatch):
    _assert_same_slices(*_ssim_runs(sample_volumes, tmp_path, monkeypatch))


@pytest.mark.parametrize("ssim_size", [128, 48])
def test_numpy_ssim_keeps_the_torch_slices_of_the_phantom_archive(archive, tmp_path, monkeypatch, ssim_size):
    _assert_same_slices(*_ssim_runs(archive, tmp_path, monkeypatch, ssim_size))
