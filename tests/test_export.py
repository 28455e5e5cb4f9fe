from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ctreduce
from ctreduce.reduction.intensity import Intensity


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
    array = np.load(out / "slices.npy", mmap_mode="r")
    index = pd.read_parquet(out / "index.parquet")
    manifest = pd.read_parquet(run / "manifest.parquet")
    assert array.shape == (int(manifest.kept.sum()), 40, 40) and array.dtype == np.uint8
    assert index["row"].tolist() == list(range(len(array)))
    kept_pairs = set(map(tuple, manifest.loc[manifest.kept, ["volume_id", "slice_index"]].to_numpy()))
    assert set(map(tuple, index[["volume_id", "slice_index"]].to_numpy())) == kept_pairs
    assert array[0].max() > 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["size"] == 40 and meta["intensity"] == "minmax"


def test_resize_pad_keeps_aspect():
    from ctreduce.exporting import resize_pad

    out = resize_pad(np.full((20, 40), 200, np.uint8), 32)
    assert out.shape == (32, 32)
    assert out[:8].max() == 0 and out[24:].max() == 0 and out[8:24].min() == 200


def test_export_errors(run, tmp_path):
    with pytest.raises(ValueError, match="no manifest"):
        ctreduce.export(tmp_path / "nothing", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown export format"):
        ctreduce.export(run, tmp_path / "x", format="jpeg")
