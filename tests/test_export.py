from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ctreduce
from ctreduce.io.intensity import Intensity
from ctreduce.store.export import ExportStore


@pytest.fixture
def run(archive, tmp_path):
    out = tmp_path / "run"
    ctreduce.reduce(archive, out)
    return out


def test_png_export_is_the_kept_slices_as_an_image_folder(run, tmp_path):
    from torchvision.datasets import ImageFolder

    out = tmp_path / "png"
    summary = ctreduce.export(run, out, format="png")
    manifest = pd.read_parquet(run / "manifest.parquet")
    kept = manifest[manifest.kept]
    assert summary["slices"] == len(kept) == len(list((out / "images").glob("*.png")))
    dataset = ImageFolder(str(out))
    assert len(dataset) == len(kept) and dataset.classes == ["images"]
    index = pd.read_parquet(out / "index.parquet")
    row = index.iloc[0]
    volume = ctreduce.read_volume(row["source"])
    expected = Intensity.parse("minmax").to_uint8(volume.hu[row["slice_index"]])
    np.testing.assert_array_equal(np.asarray(Image.open(out / row["file"])), expected)


def test_npy_export_is_memory_mappable_with_an_index(run, tmp_path):
    out = tmp_path / "npy"
    ctreduce.export(run, out, format="npy", size=40)
    index, slices = read_with_numpy_alone(out)
    array = np.stack(slices)
    manifest = pd.read_parquet(run / "manifest.parquet")
    assert array.shape == (int(manifest.kept.sum()), 40, 40) and array.dtype == np.uint8
    assert all(isinstance(s, np.memmap) for s in slices)  # memory-mapped, not read whole
    assert index["row"].tolist() == list(range(len(array)))
    assert index["shard"].nunique() == manifest.loc[manifest.kept, "volume_id"].nunique()  # one shard a volume
    np.testing.assert_array_equal(array, ExportStore.open(out).array())
    kept_pairs = set(map(tuple, manifest.loc[manifest.kept, ["volume_id", "slice_index"]].to_numpy()))
    assert set(map(tuple, index[["volume_id", "slice_index"]].to_numpy())) == kept_pairs
    assert array[0].max() > 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["size"] == 40 and meta["intensity"] == "minmax"


def read_with_numpy_alone(out: Path) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The recipe of docs/formats.md ("Reading an npy export with numpy alone"), run as it is written there."""
    text = (Path(__file__).parents[1] / "docs" / "formats.md").read_text()
    recipe = re.search(r"with numpy alone.*?```python\n(.*?)```", text, re.S)[1]
    scope: dict = {"out": str(out)}
    exec(recipe, scope)
    return scope["index"], scope["slices"]


def test_resize_pad_keeps_aspect():
    from ctreduce.store.export_formats import resize_pad

    out = resize_pad(np.full((20, 40), 200, np.uint8), 32)
    assert out.shape == (32, 32)
    assert out[:8].max() == 0 and out[24:].max() == 0 and out[8:24].min() == 200


def test_export_errors(run, tmp_path):
    with pytest.raises(ValueError, match="no manifest"):
        ctreduce.export(tmp_path / "nothing", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown export format"):
        ctreduce.export(run, tmp_path / "x", format="jpeg")


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_two_workers_write_the_same_export_as_one(run, tmp_path, fmt):
    from ctreduce.store.export import ExportStore

    one = ctreduce.export(run, tmp_path / "one", format=fmt, size=32)
    two = ctreduce.export(run, tmp_path / "two", format=fmt, size=32, workers=2)
    assert one["slices"] == two["slices"] and two["workers"] == 2
    a, b = ExportStore.open(tmp_path / "one"), ExportStore.open(tmp_path / "two")
    pd.testing.assert_frame_equal(a.index, b.index)
    if fmt == "npy":
        np.testing.assert_array_equal(a.array(), b.array())
    else:
        for x, y in zip(a.image_paths(), b.image_paths(), strict=True):
            assert x.read_bytes() == y.read_bytes()


def test_a_dicom_export_reads_only_the_kept_files(run, monkeypatch, tmp_path):
    from ctreduce.io import dicom

    read = []
    real = dicom._read_pixels
    monkeypatch.setattr(dicom, "_read_pixels", lambda path: read.append(path) or real(path))
    ctreduce.export(run, tmp_path / "png")
    manifest = pd.read_parquet(run / "manifest.parquet")
    dicom_rows = manifest[manifest["source"].str.endswith(".dcm")]
    assert sorted(read) == sorted(dicom_rows.loc[dicom_rows["kept"], "source"])
    assert len(read) < len(dicom_rows)


def test_a_dicom_file_rewritten_at_another_position_is_not_exported(run, tmp_path):
    import pydicom

    manifest = pd.read_parquet(run / "manifest.parquet")
    kept = manifest[manifest["kept"] & manifest["source"].str.endswith(".dcm")]
    path = kept["source"].iloc[-1]
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [999.0]
    ds.save_as(path)
    meta = ctreduce.export(run, tmp_path / "png", allow_changed=True)
    (error,) = meta["errors"]
    assert error["volume_id"] == kept["volume_id"].iloc[-1] and "999.00 mm along the normal now" in error["error"]
