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


def _dhash_of(u8):
    """imagehash's dHash (the reference the manifest's ``dhash`` must equal) of one 8-bit image."""
    import imagehash
    from PIL import Image

    return str(imagehash.dhash(Image.fromarray(u8)))


def test_reduce_export_and_rerun(archive, tmp_path):
    import numpy as np
    import pandas as pd
    from PIL import Image

    from ctreduce import read_volume, scan
    from ctreduce.io.intensity import Intensity
    from ctreduce.store.export import ExportStore

    out = tmp_path / "run"
    proc = run("reduce", archive, "--out", out, "--csv", "--quiet", "--workers", "2")
    manifest = pd.read_parquet(out / "manifest.parquet")
    kept = manifest[manifest["kept"]]
    assert f"4 volume(s) reduced, 0 failed; kept {len(kept)} of 90 slices" in proc.stdout
    # the CSV is the manifest; the summary counts what the manifest holds
    columns = ["volume_id", "slice_index", "kept", "leader", "dhash"]
    csv = pd.read_csv(out / "manifest.csv", dtype={"dhash": str})
    assert csv[columns].values.tolist() == manifest[columns].values.tolist()
    totals = json.loads((out / "summary.json").read_text())["totals"]
    assert (totals["volumes_reduced"], totals["slices"], totals["kept"]) == (4, 90, len(kept))
    # every slice of every volume, with the dHash of its 8-bit image; Hash-6 decided on those hashes
    expected = {}
    for source in scan([archive]).volumes:
        u8 = Intensity().to_uint8(read_volume(source.source).hu)
        expected.update({(source.volume_id, k): _dhash_of(s) for k, s in enumerate(u8)})
    keys = zip(manifest["volume_id"], manifest["slice_index"], strict=True)
    assert dict(zip(keys, manifest["dhash"], strict=True)) == expected
    codes = {key: int(h, 16) for key, h in expected.items()}
    for vid, rows in manifest.groupby("volume_id"):
        leaders = rows.set_index("slice_index")["leader"]
        for k, leader in leaders.items():
            d = bin(codes[vid, k] ^ codes[vid, leader]).count("1")
            assert bool(rows.set_index("slice_index").loc[leader, "kept"]) and (leader == k or (leader < k and d <= 6))
        kept_here = rows.loc[rows["kept"], "slice_index"].tolist()
        assert all(bin(codes[vid, a] ^ codes[vid, b]).count("1") > 6 for a in kept_here for b in kept_here if a < b)
    # a rerun with the same settings changes nothing and says so
    before = (out / "manifest.parquet").read_bytes()
    again = run("reduce", archive, "--out", out, "--quiet")
    assert "nothing to do" in again.stdout and f"kept {len(kept)} of 90 slices" in again.stdout
    assert (out / "manifest.parquet").read_bytes() == before
    conflict = run("reduce", archive, "--out", out, "--threshold", "3", "--quiet", check_code=2)
    assert "other settings" in conflict.stderr and "--overwrite" in conflict.stderr
    # exports: the kept rows in manifest order, each image the kept slice's pixels
    proc = run("export", out, "--out", tmp_path / "png")
    assert f"exported {len(kept)} slices of 4 volume(s)" in proc.stdout
    index = pd.read_parquet(tmp_path / "png" / "index.parquet")
    assert list(zip(index["volume_id"], index["slice_index"], strict=True)) == list(
        zip(kept["volume_id"], kept["slice_index"], strict=True))
    assert len(list((tmp_path / "png" / "images").glob("*.png"))) == len(kept)
    pngs = [np.asarray(Image.open(tmp_path / "png" / f)) for f in index["file"]]
    assert [_dhash_of(p) for p in pngs] == kept["dhash"].tolist()
    proc = run("export", out, "--out", tmp_path / "npy", "--format", "npy", "--size", "32")
    assert f"exported {len(kept)} slices of 4 volume(s)" in proc.stdout
    npy_store = ExportStore.open(tmp_path / "npy")
    rows, npy_index = npy_store.array(), npy_store.index
    keys = ["volume_id", "slice_index"]
    assert npy_index[keys].values.tolist() == index[keys].values.tolist()
    assert rows.shape == (len(kept), 32, 32) and rows.dtype == np.uint8
    for row, png in zip(rows, pngs, strict=True):  # square slices: resized (Pillow bicubic), no padding
        np.testing.assert_array_equal(row, np.asarray(Image.fromarray(png).resize((32, 32), Image.Resampling.BICUBIC)))


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
    """The report states what the run recorded: totals, settings, each volume's kept count, source and z
    range, the duplicate pairs ``ctreduce duplicates`` finds; every image is a PNG of its stated size."""
    import base64
    import html
    import io
    import re

    import pandas as pd
    from PIL import Image

    from ctreduce.curate.duplicates import find_duplicates

    out = tmp_path / "run"
    run("reduce", archive, "--out", out, "--quiet")
    proc = run("report", out)
    assert proc.stdout.strip() == f"report: {out / 'report.html'}"
    page = (out / "report.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]+"', "", page)))
    text = re.sub(r"\s+", " ", text)
    manifest = pd.read_parquet(out / "manifest.parquet")
    kept = int(manifest["kept"].sum())
    assert f"Volumes 4 Slices kept {kept} of 90 slices ({kept / 90:.1%})" in text
    assert "Method hash, threshold 6, intensity minmax" in text and "Errors 0" in text
    for number, (vid, rows) in enumerate(manifest.groupby("volume_id", sort=False), 1):
        n, k = len(rows), int(rows["kept"].sum())
        assert f"{number}. {vid} — kept {k} of {n} ({k / n:.1%})" in text
        source = rows["source"].iloc[0]
        source = str(Path(source).parent) if source.endswith(".dcm") else source
        assert f"{source} · z {rows['z_mm'].min():.1f} to {rows['z_mm'].max():.1f} mm" in text
    found = find_duplicates([out])
    assert f"{found.meta['slices_with_duplicate']} of 90 slices have a near-duplicate" in text
    for pair in found.volume_pairs.itertuples():
        assert (f"{pair.volume_a} {pair.matched_a}/{pair.slices_a} ({pair.share_a:.0%}) {pair.volume_b} "
                f"{pair.matched_b}/{pair.slices_b} ({pair.share_b:.0%})") in text
    images = re.findall(r'<img src="data:image/(png|svg\+xml);base64,([^"]+)" width="(\d+)" height="(\d+)"', page)
    assert len(images) == page.count("<img") >= 1 + 2 * 4  # the histogram, two figures per volume, pairs
    for kind, data, width, height in images:  # slice strips are PNG, charts SVG: each of its stated size
        if kind == "png":
            assert Image.open(io.BytesIO(base64.b64decode(data))).size == (int(width), int(height))
        else:
            svg = base64.b64decode(data).decode()
            assert re.search(rf'<svg[^>]*\bwidth="{width}(pt|px)?"[^>]*\bheight="{height}(pt|px)?"', svg), svg[:200]
    bad = run("report", out, "--column", "kept@99", check_code=2)
    assert "kept@99" in bad.stderr
