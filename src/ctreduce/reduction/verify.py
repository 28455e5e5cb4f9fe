"""Is a finished volume still what its manifest records? The reduction's side of ``store.fingerprint``.

A rerun trusts the volumes whose files have the size and time they had (``still_valid``); the others
(and, with ``reduce --verify``, all) are read again by a worker, whose slices are compared with the
volume's manifest part (``recorded_frame``) before its results are kept.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ..io.intensity import Intensity
from ..io.volume import Volume, VolumeSource
from ..store.fingerprint import DIGEST_COLUMN, Fingerprint, digest_algorithm, first_mismatch
from . import hashing

# What to do about a volume whose slices no longer hold what the manifest records
REDO_HINT = "Rerun the same 'ctreduce reduce' command with --verify to reduce it again"


def legacy_dhashes(hu: np.ndarray, intensity: str) -> list[str]:
    """Each slice's dHash under the run's intensity policy: how slices of runs recorded without pixel
    digests are compared (as ``engine.select`` computes the manifest's ``dhash``)."""
    u8 = Intensity.parse(intensity).to_uint8(hu)
    return hashing.dhash(u8) if len(u8) else []


def recorded_frame(volume: Volume, recorded: pd.DataFrame | None, digests: list[str], u8: np.ndarray
                   ) -> tuple[pd.DataFrame | None, str]:
    """The recorded rows of ``volume``, pointed at the files read now, when its slices hold what they
    record (else None: it is reduced again), and how they differ ("" when they do not).

    Rows recorded without pixel digests (an older ctreduce, or an algorithm whose library is not
    installed here) are compared by dHash, which cannot tell
    near-identical neighbours apart: such a volume is reduced again whatever the comparison says.
    """
    if recorded is None:
        return None, "its manifest part is missing"
    legacy = DIGEST_COLUMN not in recorded.columns or any(digest_algorithm(d) is None for d in recorded[DIGEST_COLUMN])
    rows = recorded.sort_values("slice_index").reset_index(drop=True)
    mismatch = first_mismatch(volume, rows, digests=digests, dhashes=lambda: hashing.dhash(u8))
    if mismatch is not None:
        return None, mismatch.removeprefix(f"{volume.volume_id}: ")
    if legacy:
        return None, ""
    rows["source"] = list(volume.slice_sources)
    return rows, ""


def still_valid(sources: list[VolumeSource], stats: dict[str, tuple[int, int]], done: dict[str, dict[str, Any]],
                fingerprints: dict[str, str], changed: dict[str, str], recheck: dict[str, str],
                verify: bool) -> dict[str, dict[str, Any]]:
    """The finished volumes whose files have the stat they had (all of them, with ``verify``: none);
    fills ``fingerprints`` (as JSON text), ``changed`` and ``recheck``.

    A finished volume whose files' stat changed goes to ``recheck`` (with the change in words): a
    worker reads it and compares its slices with its part (``verify_source``): copied, moved or
    touched, its results stand; else it is reduced again. Without a recorded fingerprint: again.
    """
    valid = {}
    for source in sources:
        entry = done.get(source.volume_id)
        if entry is None:
            continue
        now = Fingerprint.of(source, stats=stats)
        recorded = Fingerprint.from_json(entry["fingerprint"]) if "fingerprint" in entry else None
        if recorded is None:
            changed[source.volume_id] = "no recorded input fingerprint"
        elif now.files == recorded.files and not verify:
            fingerprints[source.volume_id] = json.dumps(Fingerprint(recorded.files, now.folders).to_json())
            valid[source.volume_id] = {k: v for k, v in entry.items() if k != "fingerprint"}  # in ``fingerprints``
        else:
            recheck[source.volume_id] = recorded.change(now)
    return valid
