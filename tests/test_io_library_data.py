"""`ctreduce scan` and `ctreduce reduce`, as a user types them, over every test file that pydicom,
pydicom-data and nibabel ship: no traceback, exit status 0 or 1, and every file accounted for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest

CTREDUCE = [str(Path(sys.executable).with_name("ctreduce"))]


def _library_data() -> dict[str, Path]:
    import nibabel
    from pydicom.data.data_manager import external_data_sources

    sources = external_data_sources()
    assert "pydicom-data" in sources, "pydicom-data is not installed: 'make test' installs the dev extra"
    return {
        "pydicom": Path(pydicom.__file__).parent / "data" / "test_files",
        "pydicom-data": Path(sources["pydicom-data"].data_path),
        "nibabel": Path(nibabel.__file__).parent / "tests" / "data",
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The three test-data folders, linked (not copied) under one input folder."""
    root = tmp_path_factory.mktemp("library") / "inputs"
    root.mkdir()
    for name, folder in _library_data().items():
        (root / name).symlink_to(folder, target_is_directory=True)
    return root


def _files(root: Path) -> set[str]:
    return {str(Path(d) / f) for d, _, names in os.walk(root, followlinks=True) for f in names}


def _ctreduce(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CTREDUCE, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc


def test_scan_every_library_test_file(inputs):
    data = json.loads(_ctreduce("scan", "--modality", "any", "--json", inputs).stdout)
    assert data["volumes"] and data["skipped"] and data["errors"]
    assert all(s["reason"] for s in data["skipped"]) and all(e["error"] and e["paths"] for e in data["errors"])
    ids = [v["volume_id"] for v in data["volumes"]] + [e["volume_id"] for e in data["errors"]]
    assert len(ids) == len(set(ids))
    # the enhanced CT sample is read, the other multi-frame and colour files are skipped with a reason
    sources = {Path(v["source"]).name: v for v in data["volumes"]}
    assert sources["eCT_Supplemental.dcm"]["slices"] == 2
    reasons = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
    assert "is not a CT image" in reasons["emri_small.dcm"] and "SamplesPerPixel 3" in reasons["SC_rgb.dcm"]


def test_reduce_every_library_test_file(inputs, tmp_path):
    out = tmp_path / "run"
    _ctreduce("reduce", "--modality", "any", "--method", "hash", "--out", out, "--quiet", inputs)
    summary = json.loads((out / "summary.json").read_text())
    volumes = pd.read_parquet(out / "volumes.parquet")
    accounted = {p for paths in volumes["paths"] for p in paths}
    for entry in summary["skipped"]:
        assert entry["reason"]
        accounted.add(entry["path"])
        accounted.update(entry.get("paths", ()))
    for error in summary["errors"]:
        assert error["error"]
        accounted.update(error.get("paths", ()))
    missing = _files(inputs) - accounted
    assert not missing, sorted(missing)[:10]
    # every scanned volume was either reduced or failed with its reason
    totals = summary["totals"]
    assert totals["volumes_reduced"] > 0 and totals["volumes_pending"] == 0
    assert totals["volumes_reduced"] + totals["volumes_failed"] == totals["volumes_found"]
