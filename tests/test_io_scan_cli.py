"""``ctreduce scan`` as a user types it: what it lists and how it exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CTREDUCE = [str(Path(sys.executable).with_name("ctreduce"))]


def _scan(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CTREDUCE, "scan", *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("as_json", [False, True])
def test_scan_of_a_folder_without_volumes_exits_2_with_one_line_like_reduce(tmp_path, as_json):
    (tmp_path / "empty").mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no images here")
    for folder, reason in ((tmp_path / "empty", "empty folder"), (notes, "readme.txt: not a volume format")):
        proc = _scan(folder, *(["--json"] if as_json else []))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith(f"error: no volumes found in {folder}") and reason in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout
        reduced = subprocess.run([*CTREDUCE, "reduce", str(folder), "--out", str(tmp_path / "o")],
                                 capture_output=True, text=True, timeout=120)
        assert reduced.returncode == 2 and reduced.stderr == proc.stderr  # the same line


def test_a_name_that_is_not_utf8_is_skipped_and_named_and_the_rest_reduced(tmp_path):
    """A folder whose name holds bytes that are not UTF-8 (legal on Linux) is listed as skipped with its bytes
    shown, and every other volume is reduced: no output can hold such a name as text."""
    import json

    import pandas as pd

    from ctreduce.sample_data.phantom import make_phantom, write_dicom_series

    root = tmp_path / "in"
    bad = Path(os.fsdecode(bytes(root) + b"/caf\xe9"))
    for folder in (root / "good", bad):
        hu, spacing = make_phantom(n_slices=6, size=32, slice_thickness=5.0, seed=1)
        write_dicom_series(hu, spacing, folder, seed=1)
    run = tmp_path / "run"
    proc = subprocess.run([*CTREDUCE, "reduce", str(root), "--out", str(run), "--quiet"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert set(pd.read_parquet(run / "manifest.parquet")["volume_id"]) == {"in/good"}
    skipped = json.loads((run / "summary.json").read_text())["skipped"]
    assert [s["path"] for s in skipped] == [f"{root}/caf\\xe9"] and "not valid UTF-8" in skipped[0]["reason"]
    listed = _scan(root)
    assert listed.returncode == 0 and "caf\\xe9" in listed.stdout + listed.stderr, listed.stdout + listed.stderr
    refused = _scan(bad)
    assert refused.returncode == 2 and "caf\\xe9: the name is not valid UTF-8" in refused.stderr
