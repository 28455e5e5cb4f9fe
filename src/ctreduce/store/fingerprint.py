"""Has a source changed since it was reduced? File fingerprints, and digests of the slices themselves.

Two levels, so that a check is cheap when nothing changed and exact when something did:

- ``Fingerprint``: (path, size, mtime_ns) of every input file, from ``stat`` alone; for DICOM also
  (path, mtime_ns) of the folders holding them, whose times change when a file is added or
  removed there. Equal -> unchanged, and nothing is read (the fast path of make and rsync: a file
  rewritten with its size and time kept is not seen; ``reduce --verify`` reads every slice).
- ``slice_digest``: the manifest records, for every slice, a digest of the pixel values its
  decision was made on (column ``pixel_digest``). A file whose stat changed is read again and its
  slices compared (``first_mismatch``): equal -> copied, moved or touched, the results stay valid;
  other -> changed. Every export compares each slice it writes the same way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..io.volume import Volume, VolumeSource

DIGEST_COLUMN = "pixel_digest"


@dataclass(frozen=True)
class Fingerprint:
    files: tuple[tuple[str, int, int], ...]
    folders: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, source: VolumeSource, *, stats: dict[str, tuple[int, int]] | None = None) -> Fingerprint:
        """Stat every file of ``source`` (missing files count as size -1). ``stats``: (size, mtime_ns)
        by path from a walk just made (``io.discover.walk``), not statted again."""
        stats = stats or {}
        files = tuple((path, *(stats.get(path) or _stat(path))) for path in dict.fromkeys(source.paths))
        folders = ()
        if source.format.startswith("dicom"):
            folders = tuple((d, _stat(d)[1]) for d in sorted({os.path.dirname(p) for p in source.paths}))
        return cls(files, folders)

    def to_json(self) -> dict[str, Any]:
        return {"files": [list(f) for f in self.files], "folders": [list(f) for f in self.folders]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(tuple((str(p), int(s), int(m)) for p, s, m in data["files"]),
                   tuple((str(p), int(m)) for p, m in data.get("folders", [])))

    def change(self, now: Fingerprint) -> str:
        """In words, how the files of ``now`` differ from these (empty when they do not)."""
        before = {p: (s, m) for p, s, m in self.files}
        after = {p: (s, m) for p, s, m in now.files}
        added = [p for p in after if p not in before and after[p][0] >= 0]
        removed = [p for p in before if p not in after or after[p][0] < 0]
        modified = [p for p in after if p in before and after[p][0] >= 0 and after[p] != before[p]]
        parts = [f"{len(v)} file(s) {what} (first: {v[0]})"
                 for v, what in ((added, "added"), (removed, "missing"), (modified, "modified")) if v]
        return "; ".join(parts)

    def restatted(self, source: VolumeSource, now: Fingerprint) -> list[int]:
        """The slices of ``source`` (as ``now`` stats it) whose file's stat is not one of these."""
        before = set(self.files)
        stat = {p: (p, s, m) for p, s, m in now.files}
        files = slice_files(source)
        return [i for i, path in enumerate(files) if stat.get(path) not in before]


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, 0
    return int(st.st_size), int(st.st_mtime_ns)


def slice_files(source: VolumeSource) -> tuple[str, ...]:
    """The file each slice of ``source`` comes from, in slice order."""
    if len(source.paths) == source.n_slices:
        return source.paths
    return (source.paths[0],) * source.n_slices


# --- slice digests ------------------------------------------------------------------------------------

_INT16 = np.iinfo(np.int16)


def _algorithms() -> dict[str, Callable[[], Any]]:
    """Digest algorithms by the name that prefixes a recorded digest. xxh3 (xxHash) costs ~0.01 ms per
    512 px int16 slice, BLAKE2b ~0.4 ms, about the time to read the slice (``benchmarks/bench_verify.py``):
    xxh3 is recorded where the xxhash package is installed (a dependency), BLAKE2b otherwise; either
    is recomputed wherever its library is there, and a digest that cannot be is compared by dHash."""
    found: dict[str, Callable[[], Any]] = {"b2b": lambda: hashlib.blake2b(digest_size=8)}
    try:
        import xxhash
    except ImportError:
        return found
    return {"xxh3": xxhash.xxh3_64, **found}


ALGORITHMS = _algorithms()
ALGORITHM = next(iter(ALGORITHMS))  # the one recorded


def slice_digest(hu: np.ndarray, algorithm: str | None = None) -> str:
    """A 64-bit digest of one slice's HU values: ``"<algorithm>:<hex>"``.

    Canonical form, so that a slice gives one digest whichever slices were read with it
    (``hu_array`` picks int16, int32 or float32 from the range of all the slices loaded together):
    the values as little-endian int16 when they are all integers in its range (CT's usual case,
    hashed without a copy), else int64 when all are integers, else float32; the shape and that
    choice are hashed too.
    """
    values = np.asarray(hu)
    if values.dtype.kind == "f" and values.size and np.isfinite(values).all() and np.array_equal(np.rint(values),
                                                                                              values):
        if abs(float(values.min())) < 2.0**62 and abs(float(values.max())) < 2.0**62:
            values = values.astype(np.int64)
    if values.dtype.kind in "iub":
        if values.dtype != np.int16:
            lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
            values = values.astype(np.int16 if lo >= _INT16.min and hi <= _INT16.max else np.int64)
        kind = "i2" if values.dtype == np.int16 else "i8"
    else:
        values, kind = values.astype(np.float32), "f4"
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    algorithm = algorithm or ALGORITHM
    digest = ALGORITHMS[algorithm]()
    digest.update(f"{kind}:{'x'.join(map(str, values.shape))}:".encode())
    digest.update(values)
    return f"{algorithm}:{digest.hexdigest()}"


def slice_digests(hu: np.ndarray) -> list[str]:
    """``slice_digest`` of every slice of a (slices, rows, cols) stack."""
    return [slice_digest(s) for s in hu]


def digest_algorithm(recorded: Any) -> str | None:
    """The algorithm of a recorded digest, when this process can compute it (else None)."""
    if not isinstance(recorded, str):
        return None
    name = recorded.partition(":")[0]
    return name if name in ALGORITHMS else None


def first_mismatch(volume: Volume, rows: pd.DataFrame, *, digests: list[str] | None = None,
                   dhashes: Callable[[], list[str]] | None = None) -> str | None:
    """How the first slice of ``volume`` that differs from its manifest row differs, naming it and
    its file; None when every slice holds what was recorded.

    ``rows``: the manifest rows of the slices ``volume`` holds, in that order. A slice is compared
    by its position and its ``pixel_digest`` (``digests``: the slices' digests when already
    computed). Rows without one (runs of an older ctreduce, or a digest whose library is not
    installed here) are compared by their ``dhash``:
    ``dhashes()`` gives every slice's dHash of its 8-bit image under the run's intensity policy
    (without it they cannot be verified, which counts as a difference).
    """
    index = rows["slice_index"].to_numpy(np.int64)
    if len(index) != volume.n_slices:
        return f"{volume.volume_id}: has {volume.n_slices} slices now, {len(index)} when it was reduced"
    if not np.array_equal(volume.slice_index, index):  # a slice unreadable now, or readable again
        k = int(np.flatnonzero(volume.slice_index != index)[0])
        return (f"{volume.volume_id}: holds slice {int(volume.slice_index[k])} ({volume.slice_sources[k]}) where "
                f"the manifest records slice {int(index[k])}")
    z_now, z_then = np.asarray(volume.z_mm, dtype=np.float64), rows["z_mm"].to_numpy(np.float64)
    moved = np.flatnonzero(~np.isclose(z_now, z_then, atol=1e-3, equal_nan=True))
    recorded = rows[DIGEST_COLUMN].tolist() if DIGEST_COLUMN in rows.columns else [None] * len(index)
    algorithms = [digest_algorithm(d) for d in recorded]
    unrecorded = [k for k, name in enumerate(algorithms) if name is None]
    differ = []
    for k, name in enumerate(algorithms):
        if name is not None:
            # Given digests of another algorithm are recomputed (a chunked read keeps no pixels: then differ).
            now = digests[k] if digests is not None and digests[k].startswith(name + ":") else \
                slice_digest(volume.hu[k], name)
            if now != recorded[k]:
                differ.append(k)
    if unrecorded:
        then = rows["dhash"].tolist() if "dhash" in rows.columns else [None] * len(index)
        if dhashes is None or any(not isinstance(then[k], str) for k in unrecorded):
            k = unrecorded[0]
            return (f"{volume.volume_id}: slice {int(index[k])} ({volume.slice_sources[k]}) has no recorded "
                    "pixel digest to compare its pixels with")
        now = dhashes()
        differ = sorted(differ + [k for k in unrecorded if now[k] != then[k]])
    if len(moved) and (not differ or moved[0] <= differ[0]):
        k = int(moved[0])
        return (f"{volume.volume_id}: slice {int(index[k])} ({volume.slice_sources[k]}) is at z {z_now[k]:.1f} mm "
                f"now but {z_then[k]:.1f} mm in the manifest")
    if differ:
        k = differ[0]
        return (f"{volume.volume_id}: slice {int(index[k])} ({volume.slice_sources[k]}) holds other pixels than "
                "the ones it was reduced on")
    return None
