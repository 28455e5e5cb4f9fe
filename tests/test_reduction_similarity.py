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
