"""The HTML report of a run folder: self-contained, counts from the manifest, robust, renders in a browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ctreduce
from ctreduce.report import pick_slices, write_report
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series, write_nifti, write_nrrd

ODD_NAME = "p&<odd>"  # a file name that must be HTML-escaped
IMG = re.compile(r"<img\b[^>]*>")
DATA_PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
DATA_SVG = re.compile(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')


def _archive(root: Path) -> Path:
    """Three small volumes, one per format; the NRRD one has a name that needs escaping."""
    hu, spacing = make_phantom(n_slices=24, size=32, slice_thickness=1.0, seed=0)
    write_dicom_series(hu, spacing, root / "patient0" / "ct", seed=0)
    hu, spacing = make_phantom(n_slices=16, size=32, slice_thickness=2.5, seed=1)
    write_nifti(hu, spacing, root / "patient1.nii.gz")
    hu, spacing = make_phantom(n_slices=60, size=32, slice_thickness=1.0, seed=2)
    write_nrrd(hu, spacing, root / f"{ODD_NAME}.nrrd")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report")
    out = base / "run"
    ctreduce.reduce(_archive(base / "archive"), out)
    return out


@pytest.fixture(scope="module")
def report(run_dir: Path) -> Path:
    return write_report(run_dir, run_dir.parent / "report.html")


def _manifest(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "manifest.parquet")


def _volume_blocks(text: str) -> list[str]:
    return re.findall(r'<section class="volume".*?</section>', text, flags=re.S)


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    tags = IMG.findall(text)
    assert len(tags) >= 1 + 2 * 3  # histogram, then a strip and a plot per volume
    charts = [tag for tag in tags if DATA_SVG.search(tag)]
    assert len(charts) == 1 + 3  # the histogram and a score plot per volume, drawn as SVG
    for tag in tags:
        if tag in charts:
            svg = ElementTree.fromstring(base64.b64decode(DATA_SVG.search(tag).group(1)))
            assert svg.tag == "{http://www.w3.org/2000/svg}svg"
            assert int(svg.get("width")) > 0 and int(svg.get("height")) > 0
            assert f'width="{svg.get("width")}"' in tag and svg.findall(".//{http://www.w3.org/2000/svg}text")
            continue
        data = DATA_PNG.search(tag).group(1)  # the thumbnail strips
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG"
            image.load()
            assert image.width > 0 and image.height > 0


def test_counts_match_manifest(run_dir: Path, report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    manifest = _manifest(run_dir)
    assert f"kept {int(manifest['kept'].sum())} of {len(manifest)} slices" in text
    blocks = _volume_blocks(text)
    assert len(blocks) == manifest["volume_id"].nunique() == 3
    for block, (vid, rows) in zip(blocks, manifest.groupby("volume_id", sort=False), strict=True):
        assert f"kept {int(rows['kept'].sum())} of {len(rows)}" in block
        assert vid.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in block
        assert len(IMG.findall(block)) == 2  # thumbnail strip and distance plot
    assert 0 < manifest["kept"].sum() < len(manifest)  # the phantom has near-duplicates to drop


def test_names_are_escaped(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert ODD_NAME not in text
    assert "p&amp;&lt;odd&gt;" in text


def test_max_volumes_caps_blocks_and_says_how_many_more(run_dir: Path, tmp_path: Path) -> None:
    text = write_report(run_dir, tmp_path / "one.html", max_volumes=1).read_text(encoding="utf-8")
    assert len(_volume_blocks(text)) == 1
    assert "Showing the first 1 of 3 volumes; 2 more are not shown" in text
    assert "--max-volumes" in text
    assert "histogram of the kept fraction per volume" in text  # dataset figures still cover all volumes

    text = write_report(run_dir, tmp_path / "none.html", max_volumes=0).read_text(encoding="utf-8")
    assert _volume_blocks(text) == [] and "3 more are not shown" in text


def test_thumbnails_are_capped(run_dir: Path, tmp_path: Path) -> None:
    text = write_report(run_dir, tmp_path / "small.html", thumbs_per_volume=5, thumb_px=16).read_text("utf-8")
    for block in _volume_blocks(text):
        strip = DATA_PNG.search(block).group(1)
        with Image.open(io.BytesIO(base64.b64decode(strip))) as image:
            assert image.width <= 5 * (16 + 7)


def test_pick_slices_keeps_kept_ones_when_there_is_room() -> None:
    kept = np.zeros(100, bool)
    kept[[3, 50, 51, 97]] = True
    picked = pick_slices(kept, 10)
    assert len(picked) == 10 and np.all(np.diff(picked) > 0)
    assert set(np.flatnonzero(kept)) <= set(picked)
    assert picked[0] == 0 and picked[-1] == 99  # dropped ones spread over the whole volume

    many = np.ones(100, bool)
    picked = pick_slices(many, 10)
    assert len(picked) == 10 and picked[0] == 0 and picked[-1] == 99
    assert list(pick_slices(kept[:8], 10)) == list(range(8))


def test_unreadable_volume_shows_message(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    for i in range(2):
        hu, spacing = make_phantom(n_slices=12, size=32, slice_thickness=2.0, seed=i)
        write_nrrd(hu, spacing, root / f"v{i}.nrrd")
    ctreduce.reduce(root, tmp_path / "run")
    (root / "v1.nrrd").unlink()

    with pytest.raises(ValueError, match=r"inputs of 1 volume\(s\).*v1: 1 file\(s\) missing"):
        write_report(tmp_path / "run", tmp_path / "report.html")
    text = write_report(tmp_path / "run", tmp_path / "report.html", allow_changed=True).read_text(encoding="utf-8")
    readable, gone = _volume_blocks(text)
    assert "could not be read" not in readable and len(IMG.findall(readable)) == 2
    assert "Volume could not be read" in gone and "v1.nrrd" in gone
    assert "kept" in gone and len(IMG.findall(gone)) == 1  # the distance plot comes from the manifest


def test_missing_volume_list_shows_message_for_every_volume(run_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(run_dir, tmp_path / "run")
    (copy / "volumes.parquet").unlink()
    with pytest.raises(ValueError, match="volumes.parquet"):
        write_report(copy, tmp_path / "report.html")
    text = write_report(copy, tmp_path / "report.html", allow_changed=True).read_text(encoding="utf-8")
    assert all("volumes.parquet" in block for block in _volume_blocks(text))


def test_sweep_columns_give_kept_fraction_per_threshold(run_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(run_dir, tmp_path / "run")
    manifest = _manifest(copy)
    rng = np.random.default_rng(0)
    manifest["kept@3"] = manifest["kept"] | (rng.random(len(manifest)) < 0.5)
    manifest["kept@10"] = manifest["kept"] & (rng.random(len(manifest)) < 0.5)
    manifest.to_parquet(copy / "manifest.parquet", index=False)

    text = write_report(copy, tmp_path / "report.html").read_text(encoding="utf-8")
    table = re.search(r'<table class="sweep">.*?</table>', text, flags=re.S).group(0)
    rows = re.findall(r"<tr><td[^>]*>([^<]*)</td><td[^>]*>(\d+)</td><td[^>]*>([\d.]+)%</td></tr>", table)
    assert [r[0] for r in rows] == ["3", "6 (run)", "10"]  # sorted by threshold
    for (_, kept, percent), column in zip(rows, ["kept@3", "kept", "kept@10"], strict=True):
        assert int(kept) == manifest[column].sum()
        assert float(percent) == pytest.approx(100 * manifest[column].mean(), abs=0.05)
    assert 'alt="kept fraction per threshold"' in text

    text = write_report(copy, tmp_path / "at10.html", column="kept@10").read_text(encoding="utf-8")
    assert f"kept {int(manifest['kept@10'].sum())} of {len(manifest)} slices" in text
    for block, (_, rows_) in zip(_volume_blocks(text), manifest.groupby("volume_id", sort=False), strict=True):
        assert f"kept {int(rows_['kept@10'].sum())} of {len(rows_)}" in block
    with pytest.raises(ValueError, match="kept@10"):
        write_report(copy, tmp_path / "bad.html", column="kept@99")


def test_sweep_that_includes_the_run_threshold_lists_it_once(run_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(run_dir, tmp_path / "run")
    manifest = _manifest(copy)
    manifest["kept@6"] = manifest["kept"]  # as `ctreduce reduce --thresholds 6,...` writes it
    manifest["kept@8"] = manifest["kept"] & (np.arange(len(manifest)) % 2 == 0)
    manifest.to_parquet(copy / "manifest.parquet", index=False)

    text = write_report(copy, tmp_path / "report.html").read_text(encoding="utf-8")
    table = re.search(r'<table class="sweep">.*?</table>', text, flags=re.S).group(0)
    assert re.findall(r"<tr><td[^>]*>([^<]*)</td>", table) == ["6 (run)", "8"]


# --- a real browser ------------------------------------------------------------------------------


def _chromium() -> str:
    """An installed Chromium or Chrome; the test is skipped, never installing anything, when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium, chromium-browser or google-chrome on PATH: the report is not rendered in a browser")


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_report_renders_in_chromium(run_dir: Path, report: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    dom = _headless(chromium, tmp_path / "profile", "--dump-dom", report.as_uri()).stdout
    titles = [re.search(r"<h3>(.*?)</h3>", block, flags=re.S).group(1) for block in _volume_blocks(dom)]
    ids = list(_manifest(run_dir)["volume_id"].unique())
    assert len(titles) == len(ids)
    for title, vid in zip(titles, ids, strict=True):
        assert vid.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in title
    drawn = re.findall(r'<img src="data:image/(png|svg\+xml);base64,', dom)
    assert len(drawn) == len(IMG.findall(report.read_text("utf-8")))

    shot = tmp_path / "shot.png"
    _headless(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    colours = np.unique(pixels @ [1 << 16, 1 << 8, 1])
    assert len(colours) > 50  # not blank: text, figures and thumbnails drew
    green = np.abs(pixels - [46, 158, 62]).sum(axis=1) < 40
    assert green.sum() > 100  # the green frames of kept slices in the thumbnail strips


def test_chart_ticks_are_round_and_cover_the_range() -> None:
    from ctreduce.core.charts import nice_ticks

    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.5, 47.5) == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert nice_ticks(0.0, 2.1, integer=True) == [0.0, 1.0, 2.0]  # counts: no half volumes
    assert nice_ticks(0.8275, 0.9925) == [0.85, 0.9, 0.95]
    assert nice_ticks(3.0, 3.0) == [3.0]
