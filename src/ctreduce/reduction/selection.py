"""Selection, the pure stage of a reduce run: a volume in, its manifest rows (the decisions) out.

Nothing here reads or writes a file: the workers (``worker``) read a volume and hand it here; the run
(``run``) resolves a target fraction over the rows of every volume (:func:`resolve_target`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..config import ReduceConfig
from ..core.dhash import is_dhash
from ..io.intensity import Intensity
from ..io.volume import Volume
from ..store.fingerprint import DIGEST_COLUMN, slice_digests
from . import hashing
from .leader import Selection, greedy_leader, memoize
from .measures import Measure, Selector
from .plan import for_volumes, identity, method_of, score_column, settings, sweep


@dataclass(frozen=True)
class SliceHashes:
    """The hashes of a volume's slices, computed where each slice was read (``read_once``)."""

    packed: np.ndarray  # (slices, bytes) the method's hash bits, packed (``hashing.pack``); for a measure
    dhash: list[str]  # each slice's 64-bit dHash, as the manifest's ``dhash`` column holds it


def kept_column(threshold: float) -> str:
    return f"kept@{threshold:g}"


def select(volume: Volume, config: ReduceConfig, u8: np.ndarray | None = None,
           hashes: SliceHashes | None = None) -> tuple[dict[float, Selection], dict[str, list[Any]]]:
    """Run the configured method on one volume for every threshold of its sweep.

    Returns one Selection per threshold (a single entry keyed NaN for a selector) and the
    measure's extra per-slice columns. Scores are memoised, so a sweep costs little more than
    its most demanding threshold. ``hashes``: the slices' hashes, computed where they were read
    (``read_once``, for a ``per_slice`` method); the volume then need not hold pixels.
    """
    n = volume.n_slices
    if u8 is None and hashes is None:  # given when the slices were scaled where they were read (chunked reads)
        u8 = Intensity.parse(config.intensity).to_uint8(volume.hu)
    method: Measure | Selector = method_of(config)  # type: ignore[assignment]  # the registry holds no other kind
    if isinstance(method, Selector):
        return {float("nan"): method.select(n)}, {"dhash": hashing.dhash(u8) if hashes is None else hashes.dhash}
    if hashes is not None:
        prepared = method.from_packed(hashes.packed)  # type: ignore[attr-defined]  # per_slice: HashMeasure
    else:
        prepared = method.prepare(u8)  # type: ignore[arg-type]
    thresholds = sweep(config)
    compare = memoize(prepared.compare, n) if len(thresholds) > 1 else prepared.compare
    selections = {t: greedy_leader(n, compare, t, higher_is_similar=method.higher_is_similar)
                  for t in thresholds}
    columns = dict(prepared.columns)
    # Every manifest carries each slice's 64-bit dHash: archive-wide duplicate and leakage searches
    # (``ctreduce.curate``) then need no second read of the archive.
    params = method.params()
    if hashes is not None:
        columns["dhash"] = hashes.dhash
    else:
        columns["dhash"] = (columns["hash"] if is_dhash(params.get("hash"), params.get("hash_size"))
                            else hashing.dhash(u8))
    return selections, columns


def volume_frame(volume: Volume, config: ReduceConfig, u8: np.ndarray | None = None,
                 digests: list[str] | None = None, hashes: SliceHashes | None = None) -> pd.DataFrame:
    """Manifest rows of one volume; with a target fraction, also every threshold's leaders and
    distances (private ``_leader@``/``_distance@`` columns resolved across the dataset).
    ``digests``: the slices' pixel digests when computed where they were read (chunked reads);
    ``hashes``: their hashes, likewise (``select``)."""
    selections, columns = select(volume, config, u8, hashes)
    primary = selections[config.threshold] if config.threshold is not None else next(iter(selections.values()))
    n = volume.n_slices
    index = volume.slice_index  # the slice's index in the scanned volume: a slice left out unread leaves a gap
    params = json.dumps({k: v for k, v in identity(config).items()
                         if k not in ("method", "threshold", "thresholds", "target_fraction", "intensity",
                                      "modality", "allow_gaps")}, sort_keys=True)
    frame = pd.DataFrame({
        "volume_id": [volume.volume_id] * n,
        "source": list(volume.slice_sources),
        "slice_index": index.astype(np.int32),
        "z_mm": np.asarray(volume.z_mm, dtype=np.float64),
        "kept": primary.kept,
        "leader": index[primary.leader].astype(np.int32),
        score_column(config): primary.score,
        "method": config.method,
        "threshold": np.nan if config.threshold is None else float(config.threshold),
        "params": params,
        "intensity": config.intensity,  # of the 8-bit images hashed (dhash) and compared
    })
    frame["hash"] = columns.get("hash", [None] * n)
    frame["dhash"] = columns["dhash"] if n else []
    # What the decision was made on: every reader that reads the sources again compares it.
    frame[DIGEST_COLUMN] = digests if digests is not None else slice_digests(volume.hu)
    if len(selections) > 1:
        extra: dict[str, np.ndarray] = {kept_column(t): sel.kept for t, sel in selections.items()}
        if config.target_fraction is not None:
            for t, sel in selections.items():
                extra[f"_leader@{t:g}"] = index[sel.leader].astype(np.int32)
                extra[f"_score@{t:g}"] = sel.score
        frame = pd.concat([frame, pd.DataFrame(extra)], axis=1)
    return frame


def resolve_target(manifest: pd.DataFrame, config: ReduceConfig) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Pick the sweep threshold whose kept fraction over ``manifest`` is closest to the target
    and make it the manifest's primary selection; returns the manifest and a report. A selector's
    target was met before (``plan.fitted``): its manifest is returned as it is."""
    if config.target_fraction is None or manifest.empty or not isinstance(method_of(config), Measure):
        return manifest, None
    fractions = {t: float(manifest[kept_column(t)].mean()) for t in sweep(config)}
    best = float(min(fractions, key=lambda t: (abs(fractions[t] - config.target_fraction), t)))
    manifest = manifest.copy()
    manifest["kept"] = manifest[kept_column(best)]
    manifest["leader"] = manifest[f"_leader@{best:g}"]
    manifest[score_column(config)] = manifest[f"_score@{best:g}"]
    manifest["threshold"] = best
    manifest = manifest.drop(columns=[c for c in manifest.columns if c.startswith("_")])
    return manifest, {"target_fraction": config.target_fraction, "threshold": best,
                      "kept_fraction": fractions[best]}


def reduce_volume(volume: Volume, config: ReduceConfig | None = None, **overrides: Any) -> pd.DataFrame:
    """Reduce one volume; one manifest row per slice (see ``ctreduce.reduce`` for the columns).

    ``overrides`` are ReduceConfig fields. A target fraction is met on this volume alone; ``reduce``
    meets it over the whole dataset.
    """
    config = for_volumes(settings(config, **overrides), [volume.n_slices])
    frame, _ = resolve_target(volume_frame(volume, config), config)
    return frame


def empty_manifest() -> pd.DataFrame:
    """The manifest of a run that reduced no volume."""
    return pd.DataFrame({
        "volume_id": pd.Series(dtype=str), "source": pd.Series(dtype=str),
        "slice_index": pd.Series(dtype=np.int32), "z_mm": pd.Series(dtype=np.float64),
        "kept": pd.Series(dtype=bool), "leader": pd.Series(dtype=np.int32),
        "distance": pd.Series(dtype=np.float64), "method": pd.Series(dtype=str),
        "threshold": pd.Series(dtype=np.float64), "params": pd.Series(dtype=str),
        "intensity": pd.Series(dtype=str), "hash": pd.Series(dtype=object), "dhash": pd.Series(dtype=str),
        DIGEST_COLUMN: pd.Series(dtype=str),
    })
