"""The vectorised dHash must equal imagehash.dhash bit for bit."""

from __future__ import annotations

import imagehash
import numpy as np
import pydicom
import pytest
from conftest import reference_uint8
from PIL import Image

from ctreduce.core.dhash import hex_of_packed
from ctreduce.io.intensity import Intensity
from ctreduce.reduction import hashing


def imagehash_hex(u8: np.ndarray, kind: str = "dhash", hash_size: int = 8) -> str:
    fn = getattr(imagehash, hashing.IMAGEHASH_FUNCTIONS[kind])
    return str(fn(Image.fromarray(u8), hash_size=hash_size))


def test_real_dicom_ct_slice_matches_imagehash(real_ct_slice):
    ds = pydicom.dcmread(real_ct_slice)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    u8 = reference_uint8(hu)
    assert hashing.dhash(u8) == imagehash_hex(u8)
    for policy in ("window:-600,1500", "range:-1000,400"):
        u8 = Intensity.parse(policy).to_uint8(hu)
        assert hashing.dhash(u8) == imagehash_hex(u8)


def test_every_slice_of_the_sample_volumes_matches_imagehash(sample_volumes):
    import SimpleITK as sitk

    for path in sample_volumes:
        hu = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        u8 = Intensity.parse("minmax").to_uint8(hu)
        assert hashing.dhash(u8) == [imagehash_hex(s) for s in u8]


@pytest.mark.parametrize("shape", [(512, 512), (600, 512), (512, 600), (100, 37), (9, 8), (5, 4), (1, 1)])
@pytest.mark.parametrize("hash_size", [8, 5, 16])
def test_random_and_smooth_images_match_imagehash(shape, hash_size):
    rng = np.random.default_rng(hash(shape) % 1000 + hash_size)
    noise = rng.integers(0, 256, size=(3, *shape), dtype=np.uint8)
    smooth = np.clip(np.cumsum(rng.normal(0, 4, size=(3, *shape)), axis=2) + 128, 0, 255).astype(np.uint8)
    stack = np.concatenate([noise, smooth])
    assert hashing.dhash(stack, hash_size) == [imagehash_hex(s, "dhash", hash_size) for s in stack]


def test_resize_equals_pillow_lanczos_for_many_shapes():
    rng = np.random.default_rng(3)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        width, height = (int(v) for v in rng.integers(2, 30, 2))
        u8 = rng.integers(0, 256, size=(2, h, w), dtype=np.uint8)
        expected = np.stack([np.asarray(Image.fromarray(s).resize((width, height), Image.Resampling.LANCZOS))
                             for s in u8])
        np.testing.assert_array_equal(hashing.lanczos_resize(u8, width, height), expected)


@pytest.mark.parametrize("kind", ["phash", "ahash", "whash"])
def test_other_hashes_are_imagehash(kind):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, size=(4, 64, 64), dtype=np.uint8)
    packed = hashing.pack(hashing.hash_bits(u8, kind, 8))
    assert hex_of_packed(packed, 64) == [imagehash_hex(s, kind) for s in u8]


def test_hamming_equals_imagehash_difference():
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, size=(6, 40, 40), dtype=np.uint8)
    packed = hashing.pack(hashing.dhash_bits(u8)).view(">u8")
    got = hashing.hamming(packed, 0, np.arange(1, 6))
    ref = imagehash.dhash(Image.fromarray(u8[0]))
    assert got.tolist() == [ref - imagehash.dhash(Image.fromarray(s)) for s in u8[1:]]


def test_bad_hash_arguments_are_rejected():
    u8 = np.zeros((1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="unknown hash"):
        hashing.hash_bits(u8, "sha1")
    with pytest.raises(ValueError, match="uint8"):
        hashing.hash_bits(u8.astype(np.float32))


@pytest.mark.parametrize("side", [512, 1024, 2048, 4096])
def test_float32_split_passes_equal_pillow_at_their_largest_sums(side):
    """The float32 products are exact only while every partial sum stays below 2**24; images that
    push the sums to their bound (all 255, 255 exactly where a column's high or low weights are
    positive) still resize as Pillow does, and a size with no safe split takes float64."""
    split = hashing.split_weights(side, 9)
    if side <= 2048:
        halves, base = split
        np.testing.assert_array_equal(halves[:, :9].astype(np.float64) * base + halves[:, 9:],
                                      hashing.lanczos_weights(side, 9))
        extremes = [np.where(halves[:, k] > 0, 255, 0) for k in (4, 13)]
    else:
        assert split is None
        extremes = [np.where(hashing.lanczos_weights(side, 9)[:, 4] > 0, 255, 0)]
    rows = 64  # the horizontal pass is the large one; a few rows make the test fast
    images = [np.full((rows, side), 255), np.random.default_rng(side).integers(0, 256, (rows, side)),
              *(np.tile(e, (rows, 1)) for e in extremes)]
    u8 = np.stack(images).astype(np.uint8)
    expected = np.stack([np.asarray(Image.fromarray(s).resize((9, 8), Image.Resampling.LANCZOS)) for s in u8])
    np.testing.assert_array_equal(hashing.lanczos_resize(u8, 9, 8), expected)
