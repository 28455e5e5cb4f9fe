"""``ctreduce scan`` as a user types it: what it lists and how it exits."""

from __future__ import annotations

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
