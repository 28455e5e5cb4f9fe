"""One volume in a worker: read it, select its slices (``selection``), write its parts; never raise for bad data.

The execution backends (``backends``) run these functions in a process pool, in chunks or as Ray tasks; the
run (``run``) records what they return. A full disk is the one error that is raised: every later volume would
fail the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import ReduceConfig
from ..io.discover import ReadSlices, load
from ..io.intensity import Intensity
from ..io.volume import Volume, VolumeSource
from ..store.export import ExportParts
from ..store.files import DiskFull, disk_full, is_disk_full
from ..store.fingerprint import Fingerprint, slice_digests
from ..store.run import read_part, write_part
from .read_once import slice_hasher
from .selection import volume_frame
from .verify import recorded_frame


@dataclass
class VolumeResult:
    volume_id: str
    source: str
    frame: pd.DataFrame | None = None
    error: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    fingerprint: Fingerprint | None = None
    # ``verify_source``: "" when the slices read hold what the volume's part records (its results
    # stand), else how they differ (the volume was reduced again); None for other volumes
    verified: str | None = None
    node: str | None = None  # the Ray node that read it (Ray backend), recorded in its journal line

    def entry(self) -> dict[str, Any]:
        """The journal line of this volume (also what the summary is built from)."""
        entry: dict[str, Any] = {"volume_id": self.volume_id, "source": self.source,
                                 "seconds": round(self.seconds, 4), "warnings": self.warnings,
                                 "error": self.error}
        if self.frame is not None:
            entry["slices"] = len(self.frame)
            entry["kept"] = int(self.frame["kept"].sum())
        if self.fingerprint is not None:
            entry["fingerprint"] = self.fingerprint.to_json()
        if self.node is not None:
            entry["node"] = self.node
        return entry


@dataclass(frozen=True)
class Outputs:
    """What a worker writes beside its result: the volume's manifest part, and with ``reduce
    --export`` its export part (the kept slices, while the volume is in memory)."""

    parts: Path
    export: ExportParts | None = None


def process_source(source: VolumeSource, config: ReduceConfig, outputs: Outputs | None = None,
                   read: ReadSlices | None = None) -> VolumeResult:
    """Read and reduce one scanned volume; never raises for bad data (the error is returned).

    With ``outputs``, the worker also writes the volume's manifest part (atomically), so that
    Parquet encoding runs in parallel, and its export part; the parent only appends the journal
    line. A full disk is the one error that is raised: every later volume would fail the same way.
    ``read``: what the scan computed from the volume's slices when it read them (``read_once``); the
    decisions are then made from it, and only an export reads the kept slices again.
    """
    if read is not None:
        return _reduce_read(source, read, config, outputs)
    start = time.perf_counter()
    with errors_returned(source, outputs, start) as result:
        before = Fingerprint.of(source)  # stat before reading: a file changed meanwhile shows up later
        result.append(finish(source, load(source), None, config, outputs, before, start))
    return result[0]


def _reduce_read(source: VolumeSource, read: ReadSlices, config: ReduceConfig, outputs: Outputs | None
                 ) -> VolumeResult:
    """``process_source`` of a volume the scan read: the greedy rule on its ordered hashes, and with an export
    its kept slices read again and written (reduced again from a whole read when one of them changed since)."""
    start = time.perf_counter()
    with errors_returned(source, outputs, start) as result:
        hasher = slice_hasher(config)
        if hasher is None or read.features.shape != (source.n_slices, hasher.nbytes):
            raise ValueError(f"the scan computed other slice features than {config.method} needs")
        # stat from the walk, before the scan read the files: a file changed since shows up in a rerun
        before = Fingerprint.of(source, stats={p: (int(s), int(m)) for p, (s, m) in zip(source.paths, read.stats,
                                                                                          strict=True)})
        digests, hashes = hasher.unpack(read.features)
        volume = Volume(source.volume_id, np.empty((source.n_slices, 0, 0), dtype=np.int16), source.spacing,
                        np.asarray(source.z_mm, dtype=np.float64), source.paths, modality=source.modality,
                        series_uid=source.series_uid, format="dicom", warnings=list(source.warnings))
        frame = volume_frame(volume, config, digests=digests, hashes=hashes)
        if outputs is not None and outputs.export is not None:
            kept = np.flatnonzero(frame["kept"].to_numpy())
            again = load(source, kept)
            if slice_digests(again.hu) != [digests[k] for k in kept]:  # a file changed since the scan read it
                return process_source(source, config, outputs)
            outputs.export.write(source.volume_id, again.slice_index,
                                 Intensity.parse(config.intensity).to_uint8(again.hu))
        if outputs is not None:
            write_part(outputs.parts, source.volume_id, frame)
        result.append(VolumeResult(source.volume_id, source.source, frame, seconds=time.perf_counter() - start,
                                   warnings=volume.warnings, fingerprint=before))
    return result[0]


def verify_source(source: VolumeSource, config: ReduceConfig, outputs: Outputs) -> VolumeResult:
    """Read a finished volume again and compare it with its manifest part (files whose stat changed,
    or ``reduce --verify``): the same pixels at the same positions -> its results stand, pointed at
    the files read now; else it is reduced again from this read. ``verified`` says which."""
    start = time.perf_counter()
    with errors_returned(source, outputs, start) as result:
        before = Fingerprint.of(source)
        result.append(finish(source, load(source), None, config, outputs, before, start, verify=True))
    return result[0]


def finish(source: VolumeSource, volume: Volume, u8: np.ndarray | None, config: ReduceConfig,
           outputs: Outputs | None, before: Fingerprint, start: float, digests: list[str] | None = None,
           verify: bool = False) -> VolumeResult:
    """Select (or, verifying, keep the recorded selection of the same pixels), and write the manifest
    and export parts of a volume that was read."""
    if u8 is None:  # scaled once: hashed, compared and exported
        u8 = Intensity.parse(config.intensity).to_uint8(volume.hu)
    if digests is None:
        digests = slice_digests(volume.hu)
    frame, verified = None, None
    if verify and outputs is not None:
        frame, verified = recorded_frame(volume, read_part(outputs.parts, source.volume_id), digests, u8)
    has_part = frame is not None and outputs is not None and outputs.export is not None and outputs.export.has(
        source.volume_id)
    if frame is None:
        frame = volume_frame(volume, config, u8, digests)
    if outputs is not None and outputs.export is not None and not has_part:
        kept = np.flatnonzero(frame["kept"].to_numpy())
        outputs.export.write(source.volume_id, volume.slice_index[kept], u8[kept])
    if outputs is not None:
        write_part(outputs.parts, source.volume_id, frame)
    return VolumeResult(source.volume_id, source.source, frame, seconds=time.perf_counter() - start,
                        warnings=volume.warnings, fingerprint=before, verified=verified)


@contextmanager
def errors_returned(source: VolumeSource, outputs: Outputs | None, start: float) -> Iterator[list[VolumeResult]]:
    """Run the block; any error but a full disk becomes the volume's error result (one bad volume
    never stops the others). The block appends its result to the list yielded."""
    result: list[VolumeResult] = []
    try:
        yield result
    except DiskFull:
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(outputs.parts if outputs is not None else source.source, exc) from exc
        result[:] = [VolumeResult(source.volume_id, source.source, error=_named(source, exc),
                                  seconds=time.perf_counter() - start)]
    except Exception as exc:
        result[:] = [VolumeResult(source.volume_id, source.source, error=_named(source, exc),
                                  seconds=time.perf_counter() - start)]


def _named(source: VolumeSource, exc: Exception) -> str:
    """The error in words, naming the volume's file or folder when the message does not."""
    text = str(exc) or type(exc).__name__
    if any(p in text for p in (source.source, *source.paths[:1])):
        return text
    return f"{source.source}: {type(exc).__name__}: {text}"
