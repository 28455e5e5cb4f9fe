"""Property tests: ctreduce's perceptual hashes equal imagehash, and its LANCZOS resize equals Pillow's,
for any image shape, target size and hash size (upscaling included, where the filter's centre and its
support edges are sampled exactly)."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from ctreduce.core.dhash import hex_of_packed
from ctreduce.reduction import hashing


@st.composite
def images(draw, max_side: int = 40, count: int = 2) -> np.ndarray:
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # smooth ramps: neighbouring pixels close, as in CT
        ramp = np.cumsum(rng.normal(0, 6, size=(count, h, w)), axis=2) + 128
        return np.clip(ramp, 0, 255).astype(np.uint8)
    return rng.integers(0, 256, size=(count, h, w), dtype=np.uint8)


def pillow_resize(u8: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(s).resize((width, height), Image.Resampling.LANCZOS)) for s in u8])


@given(images(), st.integers(8, 48), st.integers(8, 48))
def test_lanczos_resize_equals_pillow(u8, width, height):
    got = hashing.lanczos_resize(u8, width, height)
    assert got.dtype == np.uint8 and got.shape == (len(u8), height, width)
    np.testing.assert_array_equal(got, pillow_resize(u8, width, height))


def test_shapes_no_pass_order_reproduces_are_resized_by_pillow_itself(monkeypatch):
    """The fallback when neither pass order reproduces the installed Pillow: Pillow, slice by slice."""
    monkeypatch.setattr(hashing, "pass_order", lambda *shape: "pillow")
    u8 = np.random.default_rng(5).integers(0, 256, size=(3, 23, 31), dtype=np.uint8)
    got = hashing.lanczos_resize(u8, 9, 8)
    assert got.dtype == np.uint8 and got.shape == (3, 8, 9)
    np.testing.assert_array_equal(got, pillow_resize(u8, 9, 8))


def test_lanczos_resize_equals_pillow_for_small_targets():
    """17 x 2 to 1 x 1 (hypothesis' smallest case): Pillow runs the vertical pass first here, and a random
    probe of this shape often resizes the same either way; pass_order probes until one order alone
    reproduces Pillow (a single probe took the wrong order, and this image came out one grey level off)."""
    column = [[129, 131], [124, 123], [132, 141], [120, 129], [136, 140], [129, 127], [136, 148], [138, 146],
              [130, 122], [127, 131], [120, 122], [130, 134], [120, 116], [125, 118], [138, 135], [129, 128],
              [137, 145]]
    u8 = np.array([column], dtype=np.uint8)
    np.testing.assert_array_equal(hashing.lanczos_resize(u8, 1, 1), pillow_resize(u8, 1, 1))


@given(images(), st.sampled_from(hashing.HASH_KINDS), st.integers(2, 12))
def test_hash_bits_equal_imagehash(u8, kind, hash_size):
    if kind == "whash":  # imagehash's wavelet hash needs a power-of-two size no larger than the image
        hash_size = 2 ** min(hash_size.bit_length() - 1, int(np.log2(min(u8.shape[1:]))) or 1)
        if hash_size > min(u8.shape[1:]):
            return
    fn = getattr(imagehash, hashing.IMAGEHASH_FUNCTIONS[kind])
    expected = np.stack([fn(Image.fromarray(s), hash_size=hash_size).hash for s in u8])
    got = hashing.hash_bits(u8, kind, hash_size)
    np.testing.assert_array_equal(got, expected)
    packed = hashing.pack(got)
    assert hex_of_packed(packed, got[0].size) == [
        str(fn(Image.fromarray(s), hash_size=hash_size)) for s in u8]


def test_defaults_are_the_papers_8x8_dhash():
    u8 = np.random.default_rng(0).integers(0, 256, size=(3, 30, 20), dtype=np.uint8)
    bits = hashing.hash_bits(u8)
    assert bits.shape == (3, 8, 8) and bits.dtype == bool
    assert hex_of_packed(hashing.pack(bits), 64) == [
        str(imagehash.dhash(Image.fromarray(s))) for s in u8]
    assert hashing.dhash(u8[0]) == str(imagehash.dhash(Image.fromarray(u8[0])))


def test_bad_arguments_name_the_problem():
    u8 = np.zeros((1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"^unknown hash 'sha1'; choose one of dhash, phash, ahash, whash$"):
        hashing.hash_bits(u8, "sha1")
    with pytest.raises(ValueError, match=r"^hash_size must be at least 2, got 1$"):
        hashing.hash_bits(u8, "dhash", 1)
    assert hashing.hash_bits(u8, "dhash", 2).shape == (1, 2, 2)
    for bad in (u8.astype(np.float32), u8[0]):
        with pytest.raises(ValueError, match=r"^hash_bits expects a \(slices, rows, cols\) uint8 array$"):
            hashing.hash_bits(bad)


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=12))
def test_hamming_counts_differing_bits(codes):
    packed = np.array([list(c.to_bytes(8, "big")) for c in codes], dtype=np.uint8)
    others = np.arange(len(codes))
    for view in (packed, packed.view(">u8")):  # bytes or whole 64-bit words
        got = hashing.hamming(view, 0, others)
        assert got.dtype == np.int64
        assert got.tolist() == [bin(codes[0] ^ c).count("1") for c in codes]


@pytest.mark.parametrize("shape", [(512, 512), (600, 512), (100, 37), (48, 48), (64, 4096), (4096, 64)])
def test_the_vectorised_resampler_reproduces_pillow_by_itself(shape):
    """For the shapes CT comes in, one of the two pass orders reproduces Pillow exactly, so hashing never
    falls back to Pillow slice by slice (the fallback keeps hashes right but is several times slower, and
    would hide any error in the integer weights or their rounding). 64 x 4096 and 4096 x 64 take the float64
    products in each direction."""
    rng = np.random.default_rng(shape[0] * shape[1])
    for width, height in ((9, 8), (17, 16)):
        order = hashing.pass_order(*shape, width, height)
        assert order in ("hv", "vh")
        for image in (rng.integers(0, 256, size=shape, dtype=np.uint8), np.full(shape, 255, np.uint8)):
            got = hashing._resize_passes(image, width, height, order)
            np.testing.assert_array_equal(got, pillow_resize(image[None], width, height)[0])
