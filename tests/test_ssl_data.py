"""Export datasets, intensity statistics and the CT augmentations."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from lightly.transforms.multi_view_transform import MultiViewTransform
from PIL import Image
from torchvision.transforms import v2

import ctreduce
from ctreduce.ssl.augment import RandomGamma, SeparableGaussianBlur, ct_view
from ctreduce.ssl.data import ExportError, SliceDataset, intensity_stats, open_export
from ctreduce.store.export import ExportStore


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    root = tmp_path_factory.mktemp("exp")
    hu, spacing = make_phantom(n_slices=10, size=40, slice_thickness=5.0)
    write_nrrd(hu, spacing, root / "ct" / "p.nrrd")
    ctreduce.reduce(root / "ct", root / "run", method="all")
    ctreduce.export(root / "run", root / "npy", format="npy", size=32)
    ctreduce.export(root / "run", root / "png", format="png")
    return root


def test_array_store_and_png_folder_give_the_same_slices(exports):
    npy, png = open_export(exports / "npy"), open_export(exports / "png")
    assert isinstance(npy, SliceDataset) and isinstance(png, SliceDataset)
    assert len(npy) == len(png) == 10
    assert npy.raw(0).shape == (1, 32, 32) and npy.raw(0).dtype == torch.uint8
    assert png.raw(0).shape == (1, 40, 40)
    stored = ExportStore.open(exports / "npy").array()
    assert torch.equal(npy.raw(3)[0], torch.from_numpy(stored[3]))


def test_intensity_statistics_match_numpy(exports):
    mean, std = intensity_stats(open_export(exports / "npy"))
    pixels = ExportStore.open(exports / "npy").array().astype(np.float64) / 255
    assert mean == pytest.approx(pixels.mean()) and std == pytest.approx(pixels.std())


def test_corrupt_or_incomplete_exports(tmp_path, exports):
    with pytest.raises(ExportError, match="no such export folder"):
        open_export(tmp_path / "none")
    # An interrupted npy export (shards, no index version named yet) is refused, not trained on.
    (tmp_path / "interrupted" / "shards").mkdir(parents=True)
    np.save(tmp_path / "interrupted" / "shards" / "a-0.npy", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ExportError, match="no export.json"):
        open_export(tmp_path / "interrupted")
    bad = shutil.copytree(exports / "npy", tmp_path / "bad")
    shard = next((bad / "shards").glob("*.npy"))
    np.save(shard, np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ExportError, match=f"{shard.name}: expected .*uint8"):
        open_export(bad)
    np.save(shard, np.zeros((1, 32, 32), np.uint8))  # fewer rows than the index names
    with pytest.raises(ExportError, match=f"{shard.name}: the index names row"):
        open_export(bad)
    shard.unlink()
    with pytest.raises(ExportError, match=f"{shard.name}: not a readable .npy shard"):
        open_export(bad)
    short = shutil.copytree(exports / "npy", tmp_path / "short")
    meta = json.loads((short / "export.json").read_text())
    (short / "export.json").write_text(json.dumps({**meta, "slices": meta["slices"] + 1}))
    with pytest.raises(ExportError, match="rows but export.json says"):
        open_export(short)
    (short / "export.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(ExportError, match="incomplete"):
        open_export(short)
    png = shutil.copytree(exports / "png", tmp_path / "png")
    next((png / "images").glob("*.png")).unlink()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png / "images" / "stale.png")
    with pytest.raises(ExportError, match="1 listed but missing.*1 not listed, e.g. images/stale.png"):
        open_export(png)


def test_separable_blur_equals_torchvision():
    x = torch.rand(1, 64, 64)
    torch.manual_seed(3)
    ours = SeparableGaussianBlur(11, (0.1, 2.0))(x)
    torch.manual_seed(3)
    sigma = 0.1 + 1.9 * float(torch.rand(()))
    expected = v2.functional.gaussian_blur(x, [11, 11], [sigma, sigma])
    assert torch.allclose(ours, expected, atol=1e-5)


def test_views_are_normalised_three_channel_crops():
    slice_ = torch.randint(0, 256, (1, 48, 48), dtype=torch.uint8)
    views = MultiViewTransform([ct_view(32, (0.5, 1.0), 0.2, 0.2), ct_view(16, (0.1, 0.3), 0.2, 0.2)])(slice_)
    assert [v.shape for v in views] == [(3, 32, 32), (3, 16, 16)]
    assert all(v.dtype == torch.float32 and torch.equal(v[0], v[1]) for v in views)


def test_gamma_keeps_range_and_rejects_bad_arguments():
    x = torch.rand(1, 8, 8)
    y = RandomGamma(p=1.0)(x)
    assert y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError):
        RandomGamma((0.0, 1.0))


def test_blur_kernel_covers_three_sigma_and_ten_percent_of_the_view():
    from ctreduce.ssl.augment import blur_kernel

    assert blur_kernel(96, 2.0) == 13  # +-3 sigma (Pillow's support) beats 10% of 96
    assert blur_kernel(224, 2.0) == 23  # 10% of 224 (torchvision's rule) beats +-3 sigma
    assert blur_kernel(4, 2.0) == 7  # radius below the view size (reflect padding)
