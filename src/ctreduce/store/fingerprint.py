"""Fingerprints of a volume's input files: has the source changed since it was reduced?

Two levels, so that a check is cheap and a moved archive is not recomputed:

- ``files``: (path, size, mtime_ns) of every input file, from ``stat`` alone; for DICOM also
  (path, mtime_ns) of the folders holding them, whose times change when a file is added or
  removed there (a series that gained a slice is found by reading that folder's headers again).
  Equal -> unchanged.
- ``content``: a digest that does not depend on paths or times. DICOM: each file's
  SOPInstanceUID and size, in slice order (a UID names one instance for ever, so a copied or
  moved series keeps it); single-file formats: SHA-1 of the file's bytes (read once when the
  volume is reduced, while the file is in the page cache). When ``files`` differ but the content
  is equal, the volume was copied, moved or touched: its results stay valid.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from ..io.volume import VolumeSource


@dataclass(frozen=True)
class Fingerprint:
    files: tuple[tuple[str, int, int], ...]
    content: str = ""
    folders: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, source: VolumeSource, *, content: bool = False,
           stats: dict[str, tuple[int, int]] | None = None) -> Fingerprint:
        """Stat every file of ``source`` (missing files count as size -1); optionally the content.
        ``stats``: (size, mtime_ns) by path from a walk just made (``io.discover.walk``), not statted again."""
        stats = stats or {}
        files = tuple((path, *(stats.get(path) or _stat(path))) for path in dict.fromkeys(source.paths))
        folders = ()
        if source.format.startswith("dicom"):
            folders = tuple((d, _stat(d)[1]) for d in sorted({os.path.dirname(p) for p in source.paths}))
        return cls(files, content_digest(source, files) if content else "", folders)

    def with_content(self, source: VolumeSource) -> Fingerprint:
        return self if self.content else Fingerprint(self.files, content_digest(source, self.files), self.folders)

    def to_json(self) -> dict[str, Any]:
        return {"files": [list(f) for f in self.files], "content": self.content,
                "folders": [list(f) for f in self.folders]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(tuple((str(p), int(s), int(m)) for p, s, m in data["files"]), str(data.get("content", "")),
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


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, 0
    return int(st.st_size), int(st.st_mtime_ns)


def content_digest(source: VolumeSource, files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha1(f"{source.format}:{source.n_slices}".encode())
    sizes = {p: s for p, s, _ in files}
    if source.format.startswith("dicom") and len(source.sop_uids) == len(source.paths) and all(source.sop_uids):
        for path, uid in zip(source.paths, source.sop_uids, strict=True):
            digest.update(f"|{uid}:{sizes.get(path, -1)}".encode())
        return digest.hexdigest()
    for path in dict.fromkeys(source.paths):
        try:
            with open(path, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha1").digest())
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()


def same_content(recorded: Fingerprint, source: VolumeSource, now: Fingerprint) -> bool:
    """Whether a source whose files changed on disk still holds the content it had."""
    return bool(recorded.content) and now.with_content(source).content == recorded.content
