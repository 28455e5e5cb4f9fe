"""Read once: each DICOM file's header and pixels from one open, its slice hashed as it is read.

For a method whose decisions need only per-slice hashes (``Method.per_slice``: hash, all, every-n) the scan
(``io.discover.scan(slices=...)``) opens every DICOM file once, in its worker processes and in whatever order
files come, reads its header and its pixels, and computes there what the selection needs of that slice
(:class:`SliceHasher`: the pixel digest, the dHash and the method's hash). Series are then grouped and ordered
from the headers as always, and ``worker.process_source`` runs the greedy rule on the ordered hashes: no file is read
again for the decisions. ``reduce --export`` reads the kept slices again (kept slices only; every slice for
``all``), each checked against the digest of its first read.

A volume the scan could not read whole this way (a multi-frame file, a header from the run folder's cache, a
slice whose pixels cannot be read, slices of several HU dtypes) is read by its worker as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import ReduceConfig
from ..core.dhash import is_dhash
from ..io.intensity import Intensity
from ..store import fingerprint
from . import hashing
from .measures import HashMeasure
from .plan import method_of
from .selection import SliceHashes

_DHASH = 8  # bytes of a 64-bit dHash


@dataclass(frozen=True)
class SliceHasher:
    """What the scan computes from each slice's HU values for a ``per_slice`` method (``io.discover.SliceFunction``):
    the slice's pixel digest, its 64-bit dHash and, for a hash measure that is not the 8x8 dHash, its own hash,
    all of the 8-bit image ``intensity`` makes of it."""

    intensity: str
    hash_kind: str | None = None  # a hash measure's; None for a selector (or when its hash is the dHash)
    hash_size: int = 8
    # of the pixel digests: the one this process records (``store.fingerprint.ALGORITHM``)
    algorithm: str = field(default_factory=lambda: fingerprint.ALGORITHM)

    @property
    def digest_bytes(self) -> int:
        return fingerprint.ALGORITHMS[self.algorithm]().digest_size

    @property
    def nbytes(self) -> int:
        return self.digest_bytes + _DHASH + (-(-self.hash_size ** 2 // 8) if self.hash_kind else 0)

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        u8 = Intensity.parse(self.intensity).to_uint8(hu)[None]
        digest = bytes.fromhex(fingerprint.slice_digest(hu, self.algorithm).partition(":")[2])
        parts = [np.frombuffer(digest, dtype=np.uint8), hashing.pack(hashing.dhash_bits(u8))[0]]
        if self.hash_kind:
            parts.append(hashing.pack(hashing.hash_bits(u8, self.hash_kind, self.hash_size))[0])
        return np.concatenate(parts)

    def unpack(self, features: np.ndarray) -> tuple[list[str], SliceHashes]:
        """The digests and hashes of a volume's slices from their (slices, ``nbytes``) features."""
        at = self.digest_bytes
        digests = [f"{self.algorithm}:{row.tobytes().hex()}" for row in features[:, :at]]
        dhash = features[:, at:at + _DHASH]
        packed = features[:, at + _DHASH:] if self.hash_kind else dhash
        return digests, SliceHashes(np.ascontiguousarray(packed), hashing.hex_of_packed(dhash, 64))


def slice_hasher(config: ReduceConfig) -> SliceHasher | None:
    """What the scan computes per slice for ``config``'s method, or None when the method needs the ordered
    volume's images (``Method.per_slice`` is False: its workers read each volume)."""
    method = method_of(config)
    if not method.per_slice:
        return None
    if isinstance(method, HashMeasure) and not is_dhash(method.hash_kind, method.hash_size):
        return SliceHasher(config.intensity, method.hash_kind, method.hash_size)
    return SliceHasher(config.intensity)
