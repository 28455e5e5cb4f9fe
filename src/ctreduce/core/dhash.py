"""The 64-bit dHash every manifest records, and the text format of perceptual hashes (imagehash's).

Archive-wide searches (``ctreduce duplicates``, ``ctreduce leakage``, ``reduce --scope archive``) compare
slices by imagehash's difference hash with ``hash_size`` 8: :func:`is_dhash` says whether a hash setting
gives it (the one place that knows). The text format is imagehash's ``str(ImageHash)``: the hash bits row
by row, the first bit most significant, as zero-padded hex (16 digits for 64 bits), so that
``int(text, 16)`` is the code.

* :class:`DHash` is one code, modelled on imagehash's ``ImageHash``: ``str(h)`` is the hex that
  ``str(imagehash.dhash(image))`` gives, :meth:`DHash.parse` reads it back, ``a - b`` is the Hamming
  distance in bits.
* Many codes travel as ``uint64`` arrays: :func:`codes_from_hex` and :func:`hex_from_codes` (a manifest's
  ``dhash`` column <-> codes), :func:`codes_from_bits` (packed hash bits -> codes).
* :func:`hex_of_packed` writes the same text for hashes of any size (phash, whash, a 16 x 16 dhash...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where arrays are made: config.py imports this module for is_dhash
    import numpy as np

KIND = "dhash"
SIZE = 8  # imagehash's hash_size: 8 x 8 bits
BITS = SIZE * SIZE
_DIGITS = BITS // 4
_TEXT = f"0{_DIGITS}x"


def is_dhash(kind: str | None, size: int | None) -> bool:
    """Whether hashes of ``kind`` (imagehash's function name) and ``hash_size`` are this 64-bit dHash."""
    return kind == KIND and size == SIZE


class DHash:
    """One 64-bit dHash: ``str`` is imagehash's hex, ``a - b`` the Hamming distance, equal codes are equal."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        value = int(value)
        if not 0 <= value < 1 << BITS:
            raise ValueError(f"a 64-bit hash lies in [0, 2**64), got {value}")
        self.value = value

    @classmethod
    def parse(cls, text: str, *, where: str = "hash") -> DHash:
        """The hash written as ``text`` (16 hex digits); a ValueError naming ``where`` otherwise."""
        return cls(int(codes_from_hex([text], where=where)[0]))

    def __str__(self) -> str:
        return format(self.value, _TEXT)

    def __repr__(self) -> str:
        return f"DHash('{self}')"

    def __int__(self) -> int:
        return self.value

    def __sub__(self, other: DHash) -> int:
        if not isinstance(other, DHash):
            return NotImplemented
        return (self.value ^ other.value).bit_count()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DHash) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def codes_from_hex(hexes: Sequence[str], *, where: str = "hashes") -> np.ndarray:
    """uint64 codes of 16-hex-digit hash strings (imagehash's ``str`` of a 64-bit hash)."""
    import numpy as np

    values = list(hexes)
    bad = next((k for k, h in enumerate(values) if not isinstance(h, str) or len(h) != _DIGITS), None)
    if bad is not None:  # an index: the bad value itself may be None
        raise ValueError(f"{where}: {values[bad]!r} is not a 64-bit hash (16 hex digits)")
    try:
        return np.fromiter((int(h, 16) for h in values), dtype=np.uint64, count=len(values))
    except ValueError as exc:
        raise ValueError(f"{where}: not a hex hash ({exc})") from exc


def hex_from_codes(codes: np.ndarray) -> list[str]:
    """imagehash's text of each uint64 code."""
    import numpy as np

    return [format(c, _TEXT) for c in np.asarray(codes, dtype=np.uint64).tolist()]


def codes_from_bits(packed: np.ndarray) -> np.ndarray:
    """uint64 codes of (n, 8) packed hashes (``np.packbits`` of 8 x 8 hash bits, first bit most significant)."""
    import numpy as np

    if packed.ndim != 2 or packed.shape[1] != BITS // 8 or packed.dtype != np.uint8:
        raise ValueError(f"expected (n, 8) uint8 packed 64-bit hashes, got {packed.dtype} {packed.shape}")
    return np.ascontiguousarray(packed).view(">u8")[:, 0].astype(np.uint64)


def hex_of_packed(packed: np.ndarray, n_bits: int) -> list[str]:
    """imagehash's ``str`` of each row of (n, bytes) packed hashes of ``n_bits`` bits (any hash size)."""
    if n_bits == BITS and packed.ndim == 2 and packed.shape[1] == BITS // 8:
        return hex_from_codes(codes_from_bits(packed))
    digits, spare = math.ceil(n_bits / 4), packed.shape[1] * 8 - n_bits
    return [format(int.from_bytes(row.tobytes(), "big") >> spare, f"0{digits}x") for row in packed]
