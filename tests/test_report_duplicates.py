"""The report's "same scan stored twice" section."""

from __future__ import annotations

import re

from test_reduction_scope import twice  # noqa: F401  (fixture)

import ctreduce
from ctreduce.report import write_report


def test_report_shows_a_scan_stored_twice_side_by_side(twice, tmp_path):  # noqa: F811
    ctreduce.reduce(twice, tmp_path / "run")
    html = write_report(tmp_path / "run", tmp_path / "report.html").read_text()
    section = html.split("<h2>Same scan stored twice?</h2>")[1].split("<h2>")[0]
    assert "1 volume pair(s)" in section
    assert re.search(r"<td>in/a_first</td><td class=num>30/30 \(100%\)</td><td>in/b_copy</td>", section)
    assert section.count('<img src="data:image/png;base64,') == 2  # matched slices above their matches
    assert "Hamming distances of the pairs shown: 0, 0" in section


def test_report_says_when_no_volume_is_stored_twice(twice, tmp_path):  # noqa: F811
    ctreduce.reduce(twice / "c_other", tmp_path / "run")
    html = write_report(tmp_path / "run", tmp_path / "report.html").read_text()
    assert "0 volume pair(s)" in html.split("<h2>Same scan stored twice?</h2>")[1]
