"""Views made on the device from whole batches (``views_on: device``), on CPU tensors: for the same parameters the
pixels of the per-slice views, parameters drawn by the same laws, and each method's views wired to the settings its
per-slice views read."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ctreduce.config import make_pretrain_config
from ctreduce.io.intensity import Intensity
from ctreduce.sample_data.phantom import make_phantom
from ctreduce.ssl import augment
from ctreduce.ssl.augment import blur_kernel, rotated_window
from ctreduce.ssl.batch_views import (
    BatchView,
    BatchViews,
    crop_boxes,
    ct_batch_view,
    moco_batch_view,
    spark_batch_view,
)
from ctreduce.ssl.moco import MoCoV2
from ctreduce.ssl.spark import SparK
from ctreduce.ssl.swav import SwAV

GREY = 255.0
N = 4000  # draws per law; p-values below 1e-4 fail (fixed seeds: a planted 5% shift gives p < 1e-6)


@pytest.fixture(scope="module")
def slices() -> torch.Tensor:
    hu, _ = make_phantom(n_slices=6, size=96, slice_thickness=2.5, seed=2)
    return torch.from_numpy(Intensity.parse("minmax").to_uint8(hu))[:, None]  # (6, 1, 96, 96) uint8


def per_slice_view(view: BatchView, x: torch.Tensor, params: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    """Slice ``i``'s view with ``params`` made as the per-slice views make it: torchvision's functional steps (and
    ``rotated_window``, itself tested against torchvision's rotation) in the per-slice views' order."""
    top, left, height, width = (int(v) for v in params["box"][i])
    angle = float(params["angle"][i])
    window = rotated_window(x[i], angle, top, left, height, width) if angle else x[i][..., top:top + height,
                                                                                     left:left + width]
    if view.cubic:  # SparK: the 8-bit slice resized, then to [0, 1]
        y = TF.to_dtype(TF.resize(window, [view.size] * 2, interpolation=v2.InterpolationMode.BICUBIC,
                                  antialias=True), torch.float32, scale=True)
    else:
        y = TF.resize(TF.to_dtype(window, torch.float32, scale=True), [view.size] * 2, antialias=True)
    brightness, contrast = float(params["brightness"][i]), float(params["contrast"][i])
    if params["brightness_first"][i]:
        y = TF.adjust_contrast(TF.adjust_brightness(y, brightness), contrast)
    else:
        y = TF.adjust_brightness(TF.adjust_contrast(y, contrast), brightness)
    y = y.clamp(0, 1) ** float(params["gamma"][i])
    sigma = float(params["blur_sigma"][i])
    if sigma > 0:
        kernel = blur_kernel(view.size, view.blur_sigma[1])
        y = TF.gaussian_blur(y, [kernel, kernel], [sigma, sigma])
    if params["hflip"][i]:
        y = TF.horizontal_flip(y)
    if params["vflip"][i]:
        y = TF.vertical_flip(y)
    return TF.normalize(y.expand(3, -1, -1), list(view.mean), list(view.std))


VIEWS = {
    "moco": moco_batch_view(40, (0.2, 1.0), 0.3, 0.2, noise_p=0.0),
    "moco_gamma_large": moco_batch_view(128, (0.2, 1.0), 0.3, 0.2, noise_p=0.0, gamma_p=0.5),
    "swav_local": ct_batch_view(24, (0.1, 0.33), 0.3, 0.2),
    "swav_global": ct_batch_view(64, (0.9, 1.0), 0.3, 0.2),
    "spark": spark_batch_view(64, (0.67, 1.0), (0.3, 0.31, 0.32), (0.2, 0.21, 0.22)),
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_for_the_same_parameters_the_pixels_of_the_per_slice_views(slices, name):
    """Every step drawn on (rotation, crop, jitter in both orders, gamma, blur, flips): bilinear views equal within
    float rounding; bicubic (SparK) within torch's own 8-bit fixed-point rounding, 1 grey level at a few pixels."""
    view = VIEWS[name]
    generator = torch.Generator().manual_seed(3)
    for _ in range(4):
        params = view.make_params(len(slices), 96, 96, generator)
        made = view.apply(slices, params)
        assert made.shape == (len(slices), 3, view.size, view.size) and made.dtype == torch.float32
        std = torch.tensor(view.std).view(1, 3, 1, 1)
        for i in range(len(slices)):
            diff = (made[i] - per_slice_view(view, slices, params, i)).abs() * std[0] * GREY
            if view.cubic:
                assert float(diff.max()) <= 1.001 and float(diff.mean()) < 0.02
            else:
                assert float(diff.max()) < 0.01


def test_the_draws_cover_every_branch(slices):
    """The pixel test above is only as good as the branches its draws take: each is taken and left."""
    params = VIEWS["moco"].make_params(24, 96, 96, torch.Generator().manual_seed(3))
    for flag in ("hflip", "vflip", "brightness_first"):
        assert 0 < int(params[flag].sum()) < 24
    for name, neutral in (("angle", 0.0), ("blur_sigma", 0.0)):
        assert 0 < int((params[name] != neutral).sum()) < 24


def _torchvision_boxes(n: int, height: int, width: int, scale: tuple[float, float]) -> np.ndarray:
    crop = v2.RandomResizedCrop(8, scale=scale)
    image = torch.zeros(1, height, width)
    torch.manual_seed(5)
    return np.array([[p["top"], p["left"], p["height"], p["width"]]
                     for p in (crop.make_params([image]) for _ in range(n))])


@pytest.mark.parametrize("height, width, scale", [(96, 96, (0.2, 1.0)), (96, 96, (0.1, 0.33)), (96, 96, (0.9, 1.0)),
                                                  (80, 120, (0.67, 1.0)),
                                                  (200, 30, (0.5, 1.0))])  # the last falls back to the centre often
def test_crop_boxes_follow_torchvisions_law(height, width, scale):
    ours = crop_boxes(N, height, width, scale, torch.Generator().manual_seed(4)).numpy()
    theirs = _torchvision_boxes(N, height, width, scale)
    for name, f in {"area": lambda b: b[:, 2] * b[:, 3], "log ratio": lambda b: np.log(b[:, 3] / b[:, 2]),
                    "top": lambda b: b[:, 0] / np.maximum(height - b[:, 2], 1),
                    "left": lambda b: b[:, 1] / np.maximum(width - b[:, 3], 1)}.items():
        assert stats.ks_2samp(f(ours), f(theirs)).pvalue > 1e-4, name
    full = (ours[:, 3] == width).mean(), (theirs[:, 3] == width).mean()  # full-width boxes, as often
    assert stats.binomtest(int(full[0] * N), N, max(full[1], 1 / N)).pvalue > 1e-4 or full[0] == full[1]
    movable = (ours[:, 2] < height) & (ours[:, 3] < width)
    if movable.sum() > 100:  # top and left drawn apart
        assert abs(np.corrcoef(ours[movable, 0] / (height - ours[movable, 2]),
                               ours[movable, 1] / (width - ours[movable, 3]))[0, 1]) < 0.1
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= width).all()


def _uniform_cdf(lo: float, hi: float):
    return stats.uniform(lo, hi - lo).cdf


def _log_uniform_cdf(lo: float, hi: float):
    return stats.loguniform(lo, hi).cdf


def test_every_parameter_follows_its_law():
    """Coins with their probabilities (binomial tests) and, where a step applies, its value's law (KS tests): the
    MoCo view of the paper with every coin at its own probability, gamma on."""
    view = moco_batch_view(32, (0.2, 1.0), 0.3, 0.2, gamma_p=0.3, jitter_p=0.8, jitter=(0.3, 0.5, 0.4, 0.1))
    p = {k: v.numpy() for k, v in view.make_params(N, 64, 64, torch.Generator().manual_seed(6)).items()}
    coins = {"rotation": (p["angle"] != 0, 0.5), "jitter": (p["brightness"] != 1, 0.8), "gamma": (p["gamma"] != 1, 0.3),
             "blur": (p["blur_sigma"] > 0, 0.5), "hflip": (p["hflip"], 0.5), "vflip": (p["vflip"], 0.5),
             "noise": (p["noise_sigma"] > 0, 0.5), "brightness first": (p["brightness_first"], 0.5)}
    for name, (taken, prob) in coins.items():
        assert stats.binomtest(int(taken.sum()), N, prob).pvalue > 1e-4, name
    laws = {"angle": (p["angle"][p["angle"] != 0], _uniform_cdf(-180, 180)),
            "brightness": (p["brightness"][p["brightness"] != 1], _uniform_cdf(0.7, 1.3)),
            "contrast": (p["contrast"][p["contrast"] != 1], _uniform_cdf(0.5, 1.5)),
            "gamma": (p["gamma"][p["gamma"] != 1], _log_uniform_cdf(0.7, 1.4)),
            "blur sigma": (p["blur_sigma"][p["blur_sigma"] > 0], _uniform_cdf(0.1, 2.0)),
            "noise variance": (p["noise_sigma"][p["noise_sigma"] > 0] ** 2, _log_uniform_cdf(1e-5, 1e-4))}
    for name, (values, cdf) in laws.items():
        assert stats.kstest(values, cdf).pvalue > 1e-4, name


def test_noise_has_each_slices_sigma_on_each_channel_apart():
    """Additive Gaussian noise of the slice's drawn sigma, independent on each of the 3 channels, then clamped."""
    view = BatchView(32, (1.0, 1.0), (0.0,) * 3, (1.0,) * 3, noise_p=1.0, noise_var=(1e-4, 1e-2))
    grey = torch.full((8, 1, 32, 32), 128, dtype=torch.uint8)
    params = view.make_params(8, 32, 32, torch.Generator().manual_seed(7))
    noisy = view.apply(grey, params, torch.Generator().manual_seed(8))
    residual = noisy - 128 / 255
    assert torch.allclose(residual.std(dim=(1, 2, 3)), params["noise_sigma"].float(), rtol=0.06)
    channels = residual.flatten(2)
    assert float(torch.corrcoef(channels[0])[0, 1:].abs().max()) < 0.1


def test_each_method_gives_its_per_slice_views_structure(slices):
    """The views of one batch as the per-slice views give them after collation: the same number of views, sizes,
    dtype, and the statistics of each view's pixels alike (10 batches of the same slices)."""
    for cls, extra in ((MoCoV2, {}), (SwAV, {"swav": {"local_crop_size": 24}}), (SparK, {})):
        config = make_pretrain_config({"preset": "cpu", "method": cls.name, "input_size": 48, **extra})
        per_slice = cls.views(config, 0.3, 0.2)
        batch = BatchViews(cls.batch_views(config, 0.3, 0.2), seed=1)

        def collated(view=per_slice) -> list[torch.Tensor]:
            return [torch.stack(v) for v in zip(*(view(s) for s in slices), strict=True)]

        made = batch(slices)
        assert [v.shape for v in made] == [v.shape for v in collated()], cls.name
        assert all(v.dtype == torch.float32 for v in made)
        torch.manual_seed(0)
        reference = torch.cat([torch.cat([v.flatten() for v in collated()]) for _ in range(10)])
        ours = torch.cat([torch.cat([v.flatten() for v in batch(slices)]) for _ in range(10)])
        assert abs(float(ours.mean() - reference.mean())) < 0.1 and abs(float(ours.std() / reference.std()) - 1) < 0.1


@pytest.mark.parametrize("per_slice, batched", [(augment.moco_view, moco_batch_view),
                                                 (augment.ct_view, ct_batch_view)])
def test_the_batch_views_take_the_per_slice_views_arguments(per_slice, batched):
    """One ``view_settings`` feeds both: the two functions take the same arguments with the same defaults."""
    ours, theirs = inspect.signature(batched).parameters, inspect.signature(per_slice).parameters
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]


def test_a_setting_reaches_the_device_views():
    """A method's view settings change its device views as they change its per-slice views."""
    config = make_pretrain_config({"preset": "cpu", "method": "moco", "moco": {"blur_p": 0.0, "rotation_p": 0.25,
                                                                               "crop_scale": [0.5, 0.9]}})
    view = MoCoV2.batch_views(config, 0.3, 0.2)[0]
    assert (view.blur_p, view.rotation_p, view.scale, view.size) == (0.0, 0.25, (0.5, 0.9), config.input_size)
    spark = make_pretrain_config({"preset": "cpu", "method": "spark", "spark": {"crop_scale": [0.4, 0.8],
                                                                                 "input_mean": [0.1, 0.2, 0.3],
                                                                                 "input_std": [0.4, 0.5, 0.6]}})
    view = SparK.batch_views(spark, 0.3, 0.2)[0]
    assert (view.scale, view.mean, view.std, view.cubic) == ((0.4, 0.8), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), True)


def test_each_seed_has_its_own_noise_stream():
    """The noise's generator follows the seed (each process, each resume its own) on a stream apart from the
    parameters' own."""
    seeds = [BatchViews([VIEWS["moco"]], seed=s)._noise_generator(torch.device("cpu")).initial_seed()
             for s in (1, 3, 5, 7, 9)]
    assert len(set(seeds)) == 5 and not {1, 3, 5, 7, 9} & set(seeds)


def test_same_seed_same_views_and_a_reseed_draws_others(slices):
    views = [moco_batch_view(32, (0.2, 1.0), 0.3, 0.2)]
    first, again = BatchViews(views, seed=3)(slices), BatchViews(views, seed=3)(slices)
    assert torch.equal(first[0], again[0])
    other = BatchViews(views, seed=3)
    other.reseed(4)
    assert not torch.equal(first[0], other(slices)[0])


def test_mixed_precision_leaves_the_views_in_float32(slices):
    """Under autocast (bf16 here) the views are still made in float32: those of the view's own ``apply`` with the
    parameters the same seed draws."""
    view = ct_batch_view(32, (0.2, 1.0), 0.3, 0.2)
    expected = view.apply(slices, view.make_params(len(slices), 96, 96, torch.Generator().manual_seed(2)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = BatchViews([view], seed=2)(slices)[0]
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, expected, atol=1e-5)
    assert torch.allclose(BatchViews([view], seed=2)(slices)[0], expected, atol=1e-5)


def test_bad_arguments_are_refused(slices):
    views = BatchViews([ct_batch_view(32, (0.2, 1.0), 0.3, 0.2)])
    for wrong in (slices.float(), slices.expand(-1, 3, -1, -1), slices[:, 0]):
        with pytest.raises(ValueError, match=r"expected a uint8 batch of grey slices \(B, 1, H, W\), got"):
            views(wrong)
    with pytest.raises(ValueError, match=r"jitter must be >= 0, got \(-0.1, 0.4\)"):
        BatchView(32, (0.2, 1.0), (0.3,) * 3, (0.2,) * 3, jitter=(-0.1, 0.4))
    with pytest.raises(ValueError, match="blur_p"):
        BatchView(32, (0.2, 1.0), (0.3,) * 3, (0.2,) * 3, blur_p=1.5)
    with pytest.raises(ValueError, match="scale"):
        BatchView(32, (0.0, 1.0), (0.3,) * 3, (0.2,) * 3)
    with pytest.raises(ValueError, match="^BatchViews needs at least one view$"):
        BatchViews([])


def test_each_builder_passes_every_argument_to_its_view():
    """The per-slice views' arguments, defaults included, reach the fields of the device views."""
    assert moco_batch_view(224, (0.2, 1.0), 0.3, 0.2) == BatchView(
        224, (0.2, 1.0), (0.3,) * 3, (0.2,) * 3, rotation_degrees=180.0, rotation_p=0.5, jitter=(0.4, 0.4),
        jitter_p=1.0, gamma_p=0.0, blur_p=0.5, blur_sigma=(0.1, 2.0), hflip_p=0.5, vflip_p=0.5, noise_p=0.5,
        noise_var=(1e-5, 1e-4))
    assert moco_batch_view(64, (0.3, 0.9), 0.1, 0.4, rotation_degrees=90.0, rotation_p=0.25, jitter=(0.1, 0.2, 0, 0),
                           jitter_p=0.6, gamma_p=0.7, blur_p=0.2, blur_sigma=(0.5, 1.5), hflip=False, vflip=False,
                           noise_p=0.3, noise_var=(1e-3, 1e-2)) == BatchView(
        64, (0.3, 0.9), (0.1,) * 3, (0.4,) * 3, rotation_degrees=90.0, rotation_p=0.25, jitter=(0.1, 0.2),
        jitter_p=0.6, gamma_p=0.7, blur_p=0.2, blur_sigma=(0.5, 1.5), noise_p=0.3, noise_var=(1e-3, 1e-2))
    assert ct_batch_view(96, (0.1, 0.33), 0.3, 0.2) == BatchView(
        96, (0.1, 0.33), (0.3,) * 3, (0.2,) * 3, jitter=(0.4, 0.4), jitter_p=0.8, gamma_p=0.3, blur_p=0.5)
    assert ct_batch_view(32, (0.5, 1.0), 0.1, 0.4, jitter=(0.2, 0.3), jitter_p=0.1, gamma_p=0.2, blur_p=0.9,
                         blur_sigma=(0.2, 1.0)) == BatchView(
        32, (0.5, 1.0), (0.1,) * 3, (0.4,) * 3, jitter=(0.2, 0.3), jitter_p=0.1, gamma_p=0.2, blur_p=0.9,
        blur_sigma=(0.2, 1.0))
    assert spark_batch_view(32, (0.67, 1.0), [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]) == BatchView(
        32, (0.67, 1.0), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), cubic=True, hflip_p=0.5)


def test_every_tensor_is_made_where_the_batch_is():
    """On a device other than the CPU (the meta device here: shapes without data) every step keeps to it; a
    tensor made on the CPU by mistake would fail there as on a GPU."""
    x = torch.zeros(4, 1, 64, 64, dtype=torch.uint8, device="meta")
    for view in (moco_batch_view(32, (0.2, 1.0), 0.3, 0.2, rotation_p=1.0, gamma_p=1.0, blur_p=1.0),
                 ct_batch_view(32, (0.2, 1.0), 0.3, 0.2), spark_batch_view(32, (0.5, 1.0), (0.3,) * 3, (0.2,) * 3)):
        for rotate in (0.0, 1.0):  # a batch with every slice rotated, and one with none
            params = {**view.make_params(4, 64, 64, torch.Generator().manual_seed(1)), "angle": torch.full((4,), 0.0)}
            params["angle"] += 33.0 * rotate
            made = view.apply(x, params)
            assert made.device.type == "meta" and made.shape == (4, 3, 32, 32)


def test_the_rotated_windows_are_rotated_window_to_the_pixel(slices):
    """Nearest-neighbour rotation gathers whole pixels: the batch's windows equal the per-slice ones exactly,
    at the angles where rounding ties are most common (quarter turns) and between."""
    from ctreduce.ssl.batch_views import rotated_windows

    boxes = torch.tensor([[0, 0, 96, 96], [10, 20, 50, 60], [5, 0, 91, 40], [30, 30, 66, 66], [0, 50, 20, 46],
                          [1, 1, 94, 94]])
    # 8.82 degrees: two pixels of the whole slice fall on a rounding tie that float64 arithmetic breaks otherwise
    for angles in ([90.0, 180.0, 270.0, -90.0, 45.0, 12.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                   [-37.25, 0.0, 359.0, 0.0, 135.0, 269.9], [8.82, 0.0, 0.0, 23.38, 0.0, 0.0]):
        windows = rotated_windows(slices, torch.tensor(angles, dtype=torch.float64), boxes)
        for i, angle in enumerate(angles):
            top, left, height, width = (int(v) for v in boxes[i])
            expected = rotated_window(slices[i], angle, top, left, height, width)[0].float()
            assert torch.equal(windows[i, :height, :width], expected), (angle, i)


def test_bicubic_overshoot_is_clipped_to_8_bits_as_torch_does():
    """A black and white checkerboard makes the cubic overshoot below 0 and above 255 at every edge: the device
    view clips it as torch's 8-bit resize does (one grey level of fixed-point rounding, at few pixels)."""
    board = ((torch.arange(96)[:, None] // 6 + torch.arange(96)[None, :] // 6) % 2 * 255).to(torch.uint8)
    x = board.expand(4, 1, 96, 96).contiguous()
    view = spark_batch_view(64, (0.3, 1.0), (0.0,) * 3, (1.0,) * 3)
    params = view.make_params(4, 96, 96, torch.Generator().manual_seed(2))
    made = view.apply(x, params)
    for i in range(4):
        diff = (made[i] - per_slice_view(view, x, params, i)).abs() * GREY
        assert float(diff.max()) <= 1.001 and float((diff > 0.5).float().mean()) < 0.02
    assert float(made.min()) == 0.0 and float(made.max()) == 1.0


def test_noise_is_clamped_to_the_image_range():
    view = BatchView(16, (1.0, 1.0), (0.0,) * 3, (1.0,) * 3, noise_p=1.0, noise_var=(1e-3, 1e-2))
    for value in (0, 255):
        x = torch.full((4, 1, 16, 16), value, dtype=torch.uint8)
        made = view.apply(x, view.make_params(4, 16, 16, torch.Generator().manual_seed(3)))
        assert float(made.min()) >= 0.0 and float(made.max()) <= 1.0
        assert 0.3 < float((made == value / 255).float().mean()) < 0.7  # the half pushed out, clamped back
