"""``archive_scope`` in process: the columns it rewrites and the summary it returns, on a hand-made manifest
(the command-line tests of ``--scope archive`` run in subprocesses, which mutation testing cannot reach)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctreduce.core.dhash import hex_from_codes
from ctreduce.reduction.archive import archive_scope

A, B, C = 0, 0xFFFF0000FFFF0000, 0x00FF00FF00FF00FF  # pairwise 32 bits or more apart


def manifest() -> pd.DataFrame:
    """v00 keeps A, B, C (slices 0-2); each later volume keeps copies of the first 1-3 of them (A with one bit
    flipped) from slice 5 on, in manifest order v00, v21, v20, ..., v01; every volume also has one slice its
    own pass dropped."""
    rows = []
    for k in [0, *range(21, 0, -1)]:
        vid = f"v{k:02d}"
        codes = [A, B, C] if k == 0 else [A ^ 1, B, C][: 1 + k % 3]
        first = 0 if k == 0 else 5  # later volumes' copies sit at other slice indices than their leaders
        for s, code in enumerate(codes, first):
            rows.append((vid, s, True, code, s, 0.0))
        rows.append((vid, first + len(codes), False, codes[-1], first + len(codes) - 1, 2.0))  # dropped inside
    frame = pd.DataFrame(rows, columns=["volume_id", "slice_index", "kept", "code", "leader", "distance"])
    frame["dhash"] = hex_from_codes(frame.pop("code").to_numpy(np.uint64))
    frame["leader"] = frame["leader"].astype(np.int32)
    return frame


def test_slices_copied_from_an_earlier_volume_point_to_it_and_the_rest_is_kept_as_it_was():
    before = manifest()
    after, summary = archive_scope(before, threshold=6)
    assert after["volume_kept"].tolist() == before["kept"].tolist()
    kept = after[after["kept"]]
    assert set(kept["volume_id"]) == {"v00"} and kept["slice_index"].tolist() == [0, 1, 2]
    across = after[after["volume_kept"] & ~after["kept"]]  # dropped by the archive pass: v00's slices lead
    assert len(across) == sum(1 + k % 3 for k in range(1, 22))
    assert (across["leader_volume"] == "v00").all()
    assert across["leader"].tolist() == (across["slice_index"] - 5).tolist()  # slice 5 + s copies v00's slice s
    assert across["distance"].tolist() == [1.0 if s == 5 else 0.0 for s in across["slice_index"]]
    assert list(after.columns) == [*before.columns, "volume_kept", "leader_volume"]
    inside = after[~after["volume_kept"]]  # dropped inside its own volume: untouched
    assert (inside["leader_volume"] == inside["volume_id"]).all()
    pd.testing.assert_frame_equal(inside[["leader", "distance"]], before[~before["kept"]][["leader", "distance"]])
    assert after["leader"].dtype == np.int32 and after["distance"].dtype == np.float64


def test_the_summary_counts_the_drops_and_lists_the_twenty_largest_volume_pairs():
    after, summary = archive_scope(manifest(), threshold=6)
    dropped = sum(1 + k % 3 for k in range(1, 22))
    assert set(summary) == {"scope", "threshold", "kept_by_volumes", "dropped_across_volumes", "kept",
                            "volumes_with_drops", "top_pairs", "seconds"}
    assert (summary["scope"], summary["threshold"], summary["kept_by_volumes"], summary["dropped_across_volumes"],
            summary["kept"], summary["volumes_with_drops"]) == ("archive", 6, 3 + dropped, dropped, 3, 21)
    pairs = summary["top_pairs"]
    assert len(pairs) == 20 and all(set(p) == {"volume", "leader_volume", "slices"} for p in pairs)
    counts = [p["slices"] for p in pairs]
    assert counts == sorted(counts, reverse=True) and counts[0] == 3 and counts[-1] == 1
    assert all(p["leader_volume"] == "v00" and p["slices"] == 1 + int(p["volume"][1:]) % 3 for p in pairs)
    assert isinstance(summary["seconds"], float) and 0 <= summary["seconds"] < 60
    assert summary["seconds"] == round(summary["seconds"], 3)


def test_a_bad_hash_names_its_volume():
    frame = manifest()
    frame.loc[(frame["volume_id"] == "v05") & (frame["slice_index"] == 5), "dhash"] = "not-a-hash"
    with pytest.raises(ValueError, match=r"^volume v05: 'not-a-hash' is not a 64-bit hash"):
        archive_scope(frame, threshold=6)
