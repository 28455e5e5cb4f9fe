"""Leakage: a test image copied (and resized) from the pre-training data is found; other anatomy is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_curate_duplicates import write_small_ct

from ctreduce.core.dhash import codes_from_hex
from ctreduce.curate.leakage import find_leakage, image_codes, leakage_of, pretrain_codes
from ctreduce.store.curation import LeakageFolder

CLASSES = ("a_without", "b_with")


@pytest.fixture(scope="module")
def setting(sample_volumes, tmp_path_factory) -> dict[str, Path]:
    """Pre-training: lung1 (128 px) reduced with Hash-6, and its PNG export. Task: an image folder
    of lung2 slices (another patient) in train/val/test, plus in test one kept pre-training slice
    resized to 150 x 137 (as COVID-CT's images are) and one training image copied."""
    import SimpleITK as sitk

    import ctreduce
    from ctreduce.io.intensity import Intensity

    root = tmp_path_factory.mktemp("leak")
    write_small_ct(sample_volumes[0], root / "ct" / "lung1.nrrd")
    ctreduce.reduce(root / "ct", root / "run", method="hash")
    ctreduce.export(root / "run", root / "export", format="png")
    lung2 = write_small_ct(sample_volumes[1], root / "other" / "lung2.nrrd")
    u8 = Intensity().to_uint8(sitk.GetArrayFromImage(sitk.ReadImage(str(lung2))))
    task = root / "task"
    for split, slices in {"train": range(0, 20), "val": range(30, 38), "test": range(48, 56)}.items():
        for k in slices:
            folder = task / split / CLASSES[k % 2]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(u8[k]).save(folder / f"lung2_{k:02d}.png")
    pngs = sorted((root / "export" / "images").glob("*.png"))
    exported = pngs[len(pngs) // 2]
    Image.open(exported).resize((150, 137), Image.Resampling.BILINEAR).save(task / "test" / CLASSES[0] / "copy.png")
    Image.fromarray(u8[4]).save(task / "test" / CLASSES[0] / "from_train.png")
    return {"run": root / "run", "export": root / "export", "task": task, "copied": exported}


def test_a_resized_copy_of_a_pretraining_slice_is_found(setting):
    result = find_leakage(setting["run"], setting["task"])
    images = result.images
    assert result.leaked == {"train": 0, "val": 0, "test": 1}
    copy = images[images["name"] == "test/a_without/copy.png"].iloc[0]
    assert copy["leaked"] and copy["distance"] <= 6
    exported_slice = int(setting["copied"].stem.rsplit("__", 1)[1])
    assert copy["nearest_volume_id"] == "ct/lung1" and copy["nearest_slice_index"] == exported_slice
    # different anatomy (another patient's slices) is not
    lung2 = images[images["name"].str.contains("lung2_") | images["name"].str.contains("from_train")]
    assert not lung2["leaked"].any() and lung2["distance"].isna().all()
    assert result.summary()["leaked"]["test"] == 1 and result.meta["pretrain_kind"] == "run"


def test_a_test_image_copied_from_train_is_counted(setting):
    result = find_leakage(setting["run"], setting["task"])
    row = result.images[result.images["name"] == "test/a_without/from_train.png"].iloc[0]
    assert row["in_train"] and row["train_distance"] == 0 and row["train_nearest"] == "train/a_without/lung2_04.png"
    assert result.meta["test_in_train"] >= 1
    train = result.images[result.images["split"] == "train"]
    assert train["train_nearest"].isna().all() and not train["in_train"].any()


def test_counts_equal_brute_force(setting):
    result = find_leakage(setting["run"], setting["task"], threshold=8)
    source = pretrain_codes(setting["run"])
    codes = codes_from_hex(result.images["dhash"].tolist())
    d = np.bitwise_count(codes[:, None] ^ source.codes[None, :])
    within = d.min(axis=1) <= 8
    np.testing.assert_array_equal(result.images["leaked"].to_numpy(), within)
    nearest = source.slices["slice_index"].to_numpy()[np.argmin(d, axis=1)]
    np.testing.assert_array_equal(result.images.loc[within, "nearest_slice_index"].to_numpy(dtype=np.int64),
                                  nearest[within])


def test_pretraining_run_means_its_kept_slices_and_an_export_its_images(setting):
    run, export = pretrain_codes(setting["run"]), pretrain_codes(setting["export"])
    manifest = pd.read_parquet(setting["run"] / "manifest.parquet")
    assert len(run.codes) == int(manifest["kept"].sum()) < len(manifest)
    # the PNG export holds the kept slices' 8-bit images: the same hashes
    np.testing.assert_array_equal(np.sort(export.codes), np.sort(run.codes))
    assert find_leakage(setting["export"], setting["task"]).leaked == {"train": 0, "val": 0, "test": 1}
    with pytest.raises(ValueError, match="neither a run folder"):
        pretrain_codes(setting["task"])


def test_image_codes_equal_the_hashing_module():
    from ctreduce.reduction import hashing

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(30, 40), (28, 28), (30, 40), (9, 8)]]
    assert [f"{int(c):016x}" for c in image_codes(images)] == [hashing.dhash(im) for im in images]


def test_leakage_command_and_folder(setting, tmp_path):
    import typer
    from typer.testing import CliRunner

    from ctreduce.curate.cli import leakage

    app = typer.Typer()
    app.command()(leakage)
    out = tmp_path / "leak"
    result = CliRunner().invoke(app, ["--pretrain", str(setting["run"]), "--task", str(setting["task"]),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "test : 1 of" in result.output and "warning" in result.output
    folder = LeakageFolder.open(out)
    assert folder.meta["splits"]["test"]["leaked"] == 1 and len(folder.images) == folder.meta["splits"]["train"][
        "images"] + folder.meta["splits"]["val"]["images"] + folder.meta["splits"]["test"]["images"]


def test_a_loaded_task_gives_the_same_result(setting):
    from ctreduce.tasks.folder import load_image_folder

    loaded = leakage_of(load_image_folder(setting["task"]), setting["run"])
    direct = find_leakage(setting["run"], setting["task"])
    pd.testing.assert_frame_equal(loaded.images, direct.images)
    assert loaded.summary() == direct.summary()


def test_unreadable_task_images_are_skipped_and_all_listed(setting, tmp_path):
    import shutil

    import typer
    from typer.testing import CliRunner

    from ctreduce.curate.cli import leakage

    task = tmp_path / "task"
    shutil.copytree(setting["task"], task)
    good = sorted((task / "train" / CLASSES[0]).glob("*.png"))
    bad = [task / "train" / CLASSES[0] / "empty.png", task / "val" / CLASSES[1] / "text.png",
           task / "test" / CLASSES[1] / "scan.dcm", good[0]]
    bad[0].write_bytes(b"")
    bad[1].write_text("not an image")
    bad[2].write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    good[0].write_bytes(good[0].read_bytes()[:60])  # cut short
    result = find_leakage(setting["run"], task)
    assert sorted(item["file"] for item in result.unreadable) == sorted(map(str, bad))
    assert all(item["error"].startswith(item["file"]) for item in result.unreadable)
    clean = find_leakage(setting["run"], setting["task"])
    assert len(result.images) == len(clean.images) - 1  # three added and one spoilt were left out
    assert result.leaked == clean.leaked

    app = typer.Typer()
    app.command()(leakage)
    run = CliRunner().invoke(app, ["--pretrain", str(setting["run"]), "--task", str(task), "--out",
                                   str(tmp_path / "leak")])
    assert run.exit_code == 1, run.output
    assert "error: 4 task image(s) could not be read and were left out:" in run.output
    assert all(f"  {path}: " in run.output for path in bad)
    assert len(LeakageFolder.open(tmp_path / "leak").meta["unreadable"]) == 4
