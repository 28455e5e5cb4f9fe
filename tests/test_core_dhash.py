"""The dHash value type owns imagehash's text: str, parse, Hamming distance, and the uint64 array forms."""

from __future__ import annotations

import ast
from pathlib import Path

import imagehash
import numpy as np
import pydicom
import pytest
from PIL import Image

from ctreduce.core.dhash import (
    BITS,
    DHash,
    codes_from_bits,
    codes_from_hex,
    hex_from_codes,
    hex_of_packed,
    is_dhash,
)
from ctreduce.io.intensity import minmax_uint8
from ctreduce.reduction import hashing

SRC = Path(__file__).resolve().parents[1] / "src" / "ctreduce"


@pytest.fixture(scope="module")
def slices(real_ct_slice) -> np.ndarray:
    """A real CT slice, its mirror image and a noisy copy (uint8)."""
    u8 = minmax_uint8(pydicom.dcmread(real_ct_slice).pixel_array.astype(np.float64))
    noisy = np.clip(u8.astype(np.int16) + np.random.default_rng(0).integers(-40, 41, u8.shape), 0, 255)
    return np.stack([u8, u8[:, ::-1], noisy.astype(np.uint8)])


def _imagehash(u8: np.ndarray) -> imagehash.ImageHash:
    return imagehash.dhash(Image.fromarray(u8))


def test_a_dhash_reads_and_writes_as_imagehash_does(slices):
    codes = codes_from_bits(hashing.pack(hashing.dhash_bits(slices)))
    theirs = [_imagehash(s) for s in slices]
    ours = [DHash(c) for c in codes]
    assert [str(h) for h in ours] == [str(h) for h in theirs] == hashing.dhash(slices)
    assert [DHash.parse(str(h)) for h in theirs] == ours
    for a, ta in zip(ours, theirs, strict=True):
        for b, tb in zip(ours, theirs, strict=True):
            assert a - b == ta - tb  # imagehash's Hamming distance
    assert ours[0] - ours[1] > 0 and repr(ours[0]) == f"DHash('{theirs[0]}')" and int(ours[0]) == codes[0]
    assert len({ours[0], DHash.parse(str(theirs[0]))}) == 1  # hashable, equal by value


def test_the_array_forms_agree_with_the_value_type(slices):
    codes = codes_from_bits(hashing.pack(hashing.dhash_bits(slices)))
    text = hex_from_codes(codes)
    assert text == [str(DHash(c)) for c in codes] == hex_of_packed(hashing.pack(hashing.dhash_bits(slices)), BITS)
    np.testing.assert_array_equal(codes_from_hex(text), codes)
    assert hex_from_codes(np.array([0, 2**64 - 1], np.uint64)) == ["0" * 16, "f" * 16]


@pytest.mark.parametrize("text, message", [("abc", "16 hex digits"), ("zz" * 8, "not a hex hash"), (None, "16 hex")])
def test_a_bad_hash_is_one_line_naming_where(text, message):
    with pytest.raises(ValueError, match=message) as caught:
        codes_from_hex(["0" * 16, text], where="run/manifest.parquet")
    assert str(caught.value).startswith("run/manifest.parquet: ")
    with pytest.raises(ValueError, match=message) as caught:
        DHash.parse(text, where="leakage.json")
    assert str(caught.value).startswith("leakage.json: ")
    with pytest.raises(ValueError, match=rf"^hash: .*{message}"):  # where, by default
        DHash.parse(text)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        DHash(2**64)
    with pytest.raises(ValueError, match="got -1"):
        DHash(-1)


def test_the_value_type_holds_every_64_bit_code_and_compares_by_value():
    for code in (0, 1, 2**64 - 1):  # both ends of [0, 2**64) are hashes
        assert int(DHash(code)) == code and DHash.parse(str(DHash(code))) == DHash(code)
    assert str(DHash(0)) == "0" * 16
    assert DHash(1) != DHash(2) and DHash(3) == DHash(3) and DHash(1) != 1 and DHash(1) != "0000000000000001"
    assert hash(DHash(1)) != hash(DHash(2)) and hash(DHash(7)) == hash(DHash.parse("0000000000000007"))
    assert len({DHash(5), DHash(5), DHash(6)}) == 2 and DHash(0b1011) - DHash(0) == 3


def test_other_hash_sizes_keep_imagehash_text():
    rng = np.random.default_rng(5)
    u8 = rng.integers(0, 256, size=(3, 40, 40), dtype=np.uint8)
    for size in (5, 16):
        packed = hashing.pack(hashing.dhash_bits(u8, size))
        assert hex_of_packed(packed, size * size) == [str(imagehash.dhash(Image.fromarray(s), size)) for s in u8]
    # fewer than 64 bits in 8 bytes: the hex of those bits only, not of the 64-bit code
    assert hex_of_packed(np.array([[0xAB] * 8], np.uint8), 60) == ["abababababababa"]


def test_the_64_bit_dhash_identity_is_decided_in_one_place():
    assert is_dhash("dhash", 8) and not is_dhash("dhash", 16) and not is_dhash("phash", 8)
    # Nowhere else spells "dhash of size 8" in one condition (config, the engine and duplicates once each did).
    spelled = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.BoolOp, ast.Compare)):
                constants = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
                if {"dhash", 8} <= constants:
                    spelled.add(f"{path.relative_to(SRC)}:{node.lineno}")
    assert sorted(spelled) == []
