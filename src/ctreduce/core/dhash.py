"""The 64-bit dHash every manifest records: its text (imagehash's) and its uint64 array forms.

Archive-wide searches (``ctreduce duplicates``, ``ctreduce leakage``, ``reduce --scope archive``) compare
slices by imagehash's difference hash with ``hash_size`` 8. The text format is imagehash's ``str(ImageHash)``:
the hash bits row by row, the first bit most significant, as zero-padded hex (16 digits for 64 bits), so
that ``int(text, 16)`` is the code.

* Many codes travel as ``uint64`` arrays: :func:`codes_from_hex` and :func:`hex_from_codes` (a manifest's
  ``dhash`` column <-> codes), :func:`codes_from_bits` (packed hash bits -> codes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KIND = "dhash"
SIZE = 8  # imagehash's hash_size: 8 x 8 bits
BITS = SIZE * SIZE
_DIGITS = BITS // 4
_TEXT = f"0{_DIGITS}x"


def codes_from_hex(hexes: Sequence[str], *, where: str = "hashes") -> np.ndarray:
    """uint64 codes of 16-hex-digit hash strings (imagehash's ``str`` of a 64-bit hash)."""
    values = list(hexes)
    bad = next((h for h in values if not isinstance(h, str) or len(h) != _DIGITS), None)
    if bad is not None:
        raise ValueError(f"{where}: {bad!r} is not a 64-bit hash (16 hex digits)")
    try:
        return np.fromiter((int(h, 16) for h in values), dtype=np.uint64, count=len(values))
    except ValueError as exc:
        raise ValueError(f"{where}: not a hex hash ({exc})") from exc


def hex_from_codes(codes: np.ndarray) -> list[str]:
    """imagehash's text of each uint64 code."""
    return [format(c, _TEXT) for c in np.asarray(codes, dtype=np.uint64).tolist()]


def codes_from_bits(packed: np.ndarray) -> np.ndarray:
    """uint64 codes of (n, 8) packed hashes (``np.packbits`` of 8 x 8 hash bits, first bit most significant)."""
    if packed.ndim != 2 or packed.shape[1] != BITS // 8 or packed.dtype != np.uint8:
        raise ValueError(f"expected (n, 8) uint8 packed 64-bit hashes, got {packed.dtype} {packed.shape}")
    return np.ascontiguousarray(packed).view(">u8")[:, 0].astype(np.uint64)
