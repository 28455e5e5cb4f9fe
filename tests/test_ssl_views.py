"""The MoCo view's rotated crop computed only where the crop keeps it: the same parameters, drawn in the same order,
and the same pixels as torchvision's RandomRotation then RandomResizedCrop of the whole slice."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from ctreduce.io.intensity import Intensity
from ctreduce.sample_data.phantom import make_phantom
from ctreduce.ssl.augment import RotatedResizedCrop, moco_view, rotated_window


@pytest.fixture(scope="module")
def slices() -> torch.Tensor:
    hu, _ = make_phantom(n_slices=6, size=96, slice_thickness=2.5, seed=2)
    return torch.from_numpy(Intensity.parse("minmax").to_uint8(hu))[:, None]  # (6, 1, 96, 96) uint8


def _reference_crop(size: int, scale: tuple[float, float], degrees: float, p: float) -> v2.Compose:
    """What the MoCo view ran before: the whole slice to float, rotated, then cropped and resized."""
    rotation = v2.RandomRotation(degrees, interpolation=v2.InterpolationMode.NEAREST, fill=0)
    rotate = [v2.RandomApply([rotation], p=p)] if p > 0 else []  # the view left it out when off
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), *rotate,
                       v2.RandomResizedCrop(size, scale=scale, antialias=True)])


@pytest.mark.parametrize("angle", [0.0, 12.5, 90.0, 180.0, -37.25, 269.9, 359.0])
def test_a_window_of_the_rotation_is_torchvisions_rotation_there(slices, angle):
    x = slices[1]
    whole = v2.functional.rotate(x.float(), angle, interpolation=v2.InterpolationMode.NEAREST, fill=0)
    for top, left, height, width in ((0, 0, 96, 96), (10, 30, 50, 41), (60, 5, 36, 90)):
        window = rotated_window(x, angle, top, left, height, width).float()
        expected = whole[..., top:top + height, left:left + width]
        assert window.shape == expected.shape
        assert (window != expected).float().mean() < 0.002  # a pixel on an exact half-pixel position at most


def _seeded(ours, theirs, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both transforms of ``x`` from the same random state; they must leave the state alike (as many draws)."""
    torch.manual_seed(seed)
    a = ours(x)
    after_ours = torch.rand(1)
    torch.manual_seed(seed)
    b = theirs(x)
    assert torch.rand(1) == after_ours
    return a, b


@pytest.mark.parametrize(("degrees", "p"), [(180.0, 0.5), (180.0, 1.0), (0.0, 0.0), (30.0, 0.5)])
def test_the_rotated_crop_draws_what_torchvision_draws_and_makes_its_pixels(slices, degrees, p):
    """Over many random states: the same coin, angle and crop box as the two torchvision transforms (they come out
    the same), and the same image within 2 grey levels of 255 on average (to float rounding, every pixel)."""
    fused = RotatedResizedCrop(48, (0.2, 1.0), degrees, p)
    reference = _reference_crop(48, (0.2, 1.0), degrees, p)
    worst = 0.0
    for seed in range(150):
        ours, theirs = _seeded(fused, reference, slices[seed % len(slices)], seed)  # the same coin, angle, box
        assert ours.shape == theirs.shape == (1, 48, 48) and ours.dtype == torch.float32
        worst = max(worst, float((ours - theirs).abs().mean()))
    assert worst * 255 < 2  # mean absolute difference below 2 grey levels, for every draw
    assert worst < 1e-3  # in fact: float rounding


def test_the_moco_view_is_the_one_it_was_draw_for_draw(slices):
    """The whole paper view (crop, jitter, blur, flips, noise, normalisation) against the same view built with the
    rotation of the whole slice: the random state advances identically, the images agree within 2 grey levels."""
    new = moco_view(48, (0.2, 1.0), 0.18, 0.19)
    old = v2.Compose([*_reference_crop(48, (0.2, 1.0), 180.0, 0.5).transforms, *new.transforms[1:]])
    for seed in range(60):
        ours, theirs = _seeded(new, old, slices[seed % len(slices)], seed)  # later draws see the same state
        assert float((ours - theirs).abs().mean()) * 0.19 * 255 < 2  # in grey levels, before normalisation
