"""The command line as a user runs it: exit codes, messages, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CTREDUCE = [str(Path(sys.executable).with_name("ctreduce"))]


def run(*args, check_code: int | None = 0):
    proc = subprocess.run([*CTREDUCE, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check_code is not None:
        assert proc.returncode == check_code, proc.stdout + proc.stderr
    return proc


def test_scan_lists_volumes_and_skipped_files(archive):
    out = run("scan", archive).stdout
    assert "archive/patient0/ct" in out and "dicom" in out and "4 volume(s), 90 slices" in out
    assert "notes.txt: not a volume format" in out
    data = json.loads(run("scan", archive, "--json").stdout)
    assert {v["format"] for v in data["volumes"]} == {"dicom", "nifti", "sitk"}


def test_reduce_export_and_rerun(archive, tmp_path):
    out = tmp_path / "run"
    proc = run("reduce", archive, "--out", out, "--csv", "--quiet", "--workers", "2")
    assert "4 volume(s) reduced, 0 failed" in proc.stdout
    assert (out / "manifest.csv").exists()
    again = run("reduce", archive, "--out", out, "--quiet")
    assert "4 volume(s) reduced" in again.stdout
    conflict = run("reduce", archive, "--out", out, "--threshold", "3", "--quiet", check_code=2)
    assert "other settings" in conflict.stderr and "--overwrite" in conflict.stderr
    run("export", out, "--out", tmp_path / "png")
    proc = run("export", out, "--out", tmp_path / "npy", "--format", "npy", "--size", "32")
    assert "exported" in proc.stdout


def test_failed_volume_gives_exit_1_after_the_rest(archive, tmp_path):
    (archive / "broken.nrrd").write_text("NRRD0004\ntype: nonsense\n")
    # a file whose header cannot be read is skipped with its reason, not a failed volume: exit status 0
    proc = run("reduce", archive, "--out", tmp_path / "run", "--quiet", check_code=0)
    assert "file(s)/series skipped" in proc.stdout and "0 failed" in proc.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["totals"]["volumes_reduced"] == 4 and summary["totals"]["volumes_failed"] == 0
    skipped = [s for s in summary["skipped"] if s["path"].endswith("broken.nrrd")]
    assert skipped and "SimpleITK" in skipped[0]["reason"]
    # a readable header with unreadable data fails at reduction time: exit status 1
    hdr = archive / "trunc.nrrd"
    data = (archive / "nrrd" / "p6.nrrd").read_bytes()
    hdr.write_bytes(data[: len(data) // 2])
    proc = run("reduce", archive, "--out", tmp_path / "run2", "--quiet", check_code=1)
    assert "trunc.nrrd" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["reduce", "{missing}", "--out", "{tmp}/o"], "no such file or folder"),
    (["reduce", "{archive}", "--out", "{tmp}/o", "--method", "sha"], "unknown method"),
    (["reduce", "{archive}", "--out", "{tmp}/o", "--threshold", "99"], "outside the range"),
    (["reduce", "{archive}", "--out", "{tmp}/o", "--intensity", "window:1"], "window:WL,WW"),
    (["reduce", "{archive}", "--out", "{archive}/o"], "inside the input folder"),
    (["reduce", "{archive}", "--out", "{tmp}/o", "--workers", "0"], "--workers"),
    (["export", "{tmp}/none", "--out", "{tmp}/e"], "no manifest"),
    (["reduce", "{tmp}/empty", "--out", "{tmp}/o"], "no volumes found"),
    # A setting that cannot work for any volume is one usage error before any volume is read.
    (["reduce", "{archive}", "--out", "{tmp}/o", "--method", "ssim", "--device", "cuda:99"], "cuda:99' requested"),
    (["reduce", "{archive}", "--out", "{tmp}/o", "--method", "deepnet", "--backbone", "{tmp}/none.pt"],
     "none.pt"),
])
def test_unusable_arguments_exit_2_with_a_message(archive, tmp_path, args, message):
    fill = {"missing": tmp_path / "missing", "tmp": tmp_path, "archive": archive}
    (tmp_path / "empty").mkdir()
    proc = run(*[a.format(**fill) for a in args], check_code=2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_report_command(archive, tmp_path):
    out = tmp_path / "run"
    run("reduce", archive, "--out", out, "--quiet")
    proc = run("report", out)
    assert (out / "report.html").exists() and "report:" in proc.stdout
    import pandas as pd

    kept = pd.read_parquet(out / "manifest.parquet")["kept"]
    assert f"kept {int(kept.sum())} of {len(kept)} slices" in (out / "report.html").read_text()
    bad = run("report", out, "--column", "kept@99", check_code=2)
    assert "kept@99" in bad.stderr
