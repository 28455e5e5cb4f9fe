"""Property tests of the SSIM and MI measures against scikit-image, scikit-learn and SciPy on drawn images,
plus their settings, errors and CPU thread handling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import normalized_mutual_info_score

from ctreduce.reduction import similarity
from ctreduce.reduction.measures import get_measure
from ctreduce.reduction.similarity import MIMeasure, SSIMMeasure, gaussian_window, nmi_from_joint

torch = pytest.importorskip("torch")


@st.composite
def stacks(draw, max_side: int = 40, min_side: int = 1) -> np.ndarray:
    n, h, w = draw(st.integers(2, 5)), draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["noise", "smooth", "constant", "few"]))
    if kind == "noise":
        return rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    if kind == "constant":
        return np.full((n, h, w), draw(st.integers(0, 255)), np.uint8)
    if kind == "few":  # two or three grey levels: binned images with empty and single bins
        return rng.choice(np.array([0, 128, 255], np.uint8), (n, h, w))
    return np.clip(np.cumsum(rng.normal(0, 8, (n, h, w)), axis=2) + 128, 0, 255).astype(np.uint8)


@settings(max_examples=40)
@given(stacks(), st.integers(2, 256), st.integers(1, 4))
def test_mi_equals_sklearn_nmi_of_the_binned_slices(u8, bins, batch_size):
    measure = MIMeasure(bins, batch_size)
    labels = measure.binned(u8).reshape(len(u8), -1)
    np.testing.assert_array_equal(labels, u8.reshape(len(u8), -1).astype(np.int64) * bins // 256)
    prepared = measure.prepare(u8)
    for ref in range(len(u8)):
        others = np.array([k for k in range(len(u8)) if k != ref])
        expected = [normalized_mutual_info_score(labels[ref], labels[k]) for k in others]
        np.testing.assert_allclose(prepared.compare(ref, others), expected, atol=1e-10)
    assert prepared.compare(0, np.zeros(0, np.int64)).shape == (0,)


@given(st.integers(1, 4), st.integers(2, 9), st.data())
def test_nmi_from_joint_equals_sklearn_on_any_counts(m, bins, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    joints, expected = [], []
    for _ in range(m):
        x = rng.integers(0, bins, data.draw(st.integers(1, 40)))
        y = rng.integers(0, data.draw(st.integers(1, bins)), len(x))
        joints.append(np.histogram2d(x, y, bins=bins, range=[[0, bins], [0, bins]])[0])
        expected.append(normalized_mutual_info_score(x, y))
    np.testing.assert_allclose(nmi_from_joint(np.stack(joints)), expected, atol=1e-12)


@settings(max_examples=30)
@given(stacks(max_side=36, min_side=16), st.sampled_from([16, 24, 32]), st.integers(1, 5))
def test_ssim_equals_skimage_on_the_resized_slices(u8, size, batch_size):
    from skimage.metrics import structural_similarity

    measure = SSIMMeasure(size, "cpu", batch_size)
    images = measure.resize(u8)
    assert images.shape == (len(u8), size, size) and images.min() >= 0 and images.max() <= 255
    prepared = measure.prepare(u8)
    others = np.arange(len(u8))
    for ref in (0, len(u8) - 1):
        expected = [structural_similarity(images[ref], images[k], gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=255) for k in others]
        np.testing.assert_allclose(prepared.compare(ref, others), expected, atol=2e-4)


def test_ssim_resize_is_torch_bilinear_antialiased_and_keeps_the_right_size():
    import torch.nn.functional as F

    u8 = np.random.default_rng(3).integers(0, 256, (2, 50, 70), dtype=np.uint8)
    x = torch.from_numpy(u8).to(torch.float64)[:, None]
    expected = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)[:, 0]
    np.testing.assert_allclose(SSIMMeasure(32, "cpu").resize(u8), expected.clamp(0, 255).numpy())
    same = np.random.default_rng(4).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(SSIMMeasure(32, "cpu").resize(same), same.astype(np.float64))


def test_gaussian_window_is_scipys_kernel():
    from scipy.ndimage import gaussian_filter1d

    w = gaussian_window()
    impulse = np.zeros(31)
    impulse[15] = 1.0
    np.testing.assert_allclose(w, gaussian_filter1d(impulse, 1.5, truncate=3.5)[10:21], atol=1e-15)
    assert len(w) == 11 and np.isclose(w.sum(), 1.0)
    assert len(gaussian_window(2.0, 2.0)) == 9


def test_measures_settings_parameters_and_errors():
    assert SSIMMeasure(64, "CPU", 8).params() == {"ssim_size": 64, "sigma": 1.5, "K1": 0.01, "K2": 0.03,
                                                  "data_range": 255.0}
    assert (SSIMMeasure().ssim_size, SSIMMeasure().device, SSIMMeasure().batch_size) == (128, "auto", 64)
    assert SSIMMeasure(16, "cpu").ssim_size == 16 and MIMeasure(2, 1).mi_bins == 2 and MIMeasure(256).mi_bins == 256
    assert (MIMeasure().mi_bins, MIMeasure().batch_size) == (64, 64)
    with pytest.raises(ValueError, match="^ssim_size must be at least 16 pixels, got 15$"):
        SSIMMeasure(15)
    with pytest.raises(ValueError, match="^batch_size must be >= 1, got 0$"):
        SSIMMeasure(32, "cpu", 0)
    for bins in (1, 257):
        with pytest.raises(ValueError, match=rf"^mi_bins must be in \[2, 256\], got {bins}$"):
            MIMeasure(bins)
    with pytest.raises(ValueError, match="^batch_size must be >= 1, got 0$"):
        MIMeasure(8, 0)
    contract = [(m.name, m.unit, m.higher_is_similar, m.default_threshold, m.threshold_range)
                for m in (SSIMMeasure, MIMeasure)]
    assert contract == [("ssim", "mean SSIM", True, 0.9, (-1.0, 1.0)),
                        ("mi", "normalised mutual information", True, 0.5, (0.0, 1.0))]
    assert get_measure("ssim", ssim_size=32, device="cpu", batch_size=2).batch_size == 2


def test_cpu_work_runs_on_one_thread_and_restores_the_count():
    before = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(2)
        with similarity.cpu_threads("cpu"):
            seen.append(torch.get_num_threads())
        with similarity.cpu_threads(torch.device("cpu"), 3):
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())
        with pytest.raises(RuntimeError, match="inside"):
            with similarity.cpu_threads("cpu"):
                raise RuntimeError("inside")
        seen.append(torch.get_num_threads())
        with similarity.cpu_threads("meta"):  # not a CPU device: threads untouched
            seen.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 3, 2, 2, 2]
