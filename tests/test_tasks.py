"""Downstream loaders on tiny files in the real layouts, their errors, and the synthetic lesion task."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctreduce.downstream.datasets import ImageDataset
from ctreduce.downstream.synthetic import CLASSES, _knobs, lesion_samples, make_lesion_task
from ctreduce.io.images import read_image_uint8
from ctreduce.io.intensity import Intensity, minmax_uint8
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
from ctreduce.tasks.covid_ct import load_covid_ct
from ctreduce.tasks.data import DataWarning, DownstreamData, Split
from ctreduce.tasks.folder import load_image_folder
from ctreduce.tasks.load import load_task
from ctreduce.tasks.medmnist import load_medmnist
from ctreduce.tasks.spec import DataError, check_task_spec, task_source, task_spec_for

TINY = dict(n_per_class=5, size=32, n_slices=8, seed=0)  # 10 slices: 3/1/1 per class


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("downstream")
    return {
        "folder": make_lesion_task(base / "folder", **TINY),
        "covid_ct": make_lesion_task(base / "covid", format="covid_ct", **TINY),
        "medmnist": make_lesion_task(base / "mm", format="medmnist", **{**TINY, "size": 28}),
    }


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def _png(path: Path, value: int = 100, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


# --- synthetic task ------------------------------------------------------------------------------


def test_lesion_samples_positive_slices_contain_the_nodule() -> None:
    samples = lesion_samples(3, size=32, n_slices=8, seed=1)
    weight, noise_hu, _ = _knobs(0.5)
    assert samples.images.dtype == np.uint8 and samples.images.shape == (6, 32, 32)
    assert sorted(samples.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    to_uint8 = Intensity().to_uint8
    for image, label, name in zip(samples.images, samples.labels, samples.names, strict=True):
        assert name.startswith(CLASSES[label])
        seed, z = name[:-4].split("_")[-2:]
        kwargs = dict(n_slices=8, size=32, slice_thickness=2.5, noise_hu=noise_hu, seed=int(seed))
        with_, _ = make_phantom(lesion=True, **kwargs)
        without, _ = make_phantom(lesion=False, **kwargs)
        k = int(z[1:])
        assert np.any(with_[k] != without[k])  # the chosen slice is one the nodule touches
        plain = to_uint8(without[k])
        if label == 0:
            np.testing.assert_array_equal(image, plain)
        else:
            assert np.abs(image.astype(int) - plain).max() > 20


def test_lesion_samples_are_reproducible_and_seeded() -> None:
    a = lesion_samples(2, size=24, n_slices=6, seed=3)
    b = lesion_samples(2, size=24, n_slices=6, seed=3)
    c = lesion_samples(2, size=24, n_slices=6, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.names == b.names and a.names != c.names


@pytest.mark.parametrize(("kwargs", "message"), [({"difficulty": 1.5}, "difficulty"), ({"size": 8}, "size"),
                                                  ({"format": "nifti"}, "format")])
def test_make_lesion_task_rejects_bad_arguments(tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        make_lesion_task(tmp_path, **{**TINY, **kwargs})


# --- image folder --------------------------------------------------------------------------------


def test_folder_random_split_is_stratified_and_seeded(generated) -> None:
    root = generated["folder"]
    data = load_image_folder(root)
    assert data.classes == ["a_without", "b_with"]
    assert data.summary()["counts"] == {"train": [3, 3], "val": [1, 1], "test": [1, 1]}
    names = [n for s in data.splits().values() for n in s.names]
    assert len(names) == len(set(names)) == 10
    for split in data.splits().values():
        for image, label, name in zip(split.images, split.labels, split.names, strict=True):
            assert image.dtype == np.uint8 and image.shape == (32, 32)
            assert name.startswith(data.classes[label] + "/")
    again = load_image_folder(root)
    assert again.test.names == data.test.names
    other = load_image_folder(root, seed=5, val_fraction=0.2, test_fraction=0.2)
    assert other.test.names != data.test.names or other.val.names != data.val.names


def test_folder_split_csv_from_generator(generated) -> None:
    root = generated["folder"]
    data = load_image_folder(root, split_csv=root / "split.csv")
    rows = (root / "split.csv").read_text().splitlines()[1:]
    expected = {s: sorted(r.split(",")[0] for r in rows if r.split(",")[1] == s) for s in ("train", "val", "test")}
    assert {s: sorted(split.names) for s, split in data.splits().items()} == expected
    assert data.classes == ["a_without", "b_with"]


def test_folder_split_csv_without_label_and_with_integer_labels(tmp_path) -> None:
    for cls in ("a_without", "b_with"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", value=40 * i + (100 if cls == "b_with" else 0))
    lines = [f"{cls}/{i}.png,{split}" for cls in ("a_without", "b_with")
             for i, split in enumerate(("train", "val", "test"))]
    (tmp_path / "s.csv").write_text("path,split\n" + "\n".join(lines) + "\n")
    data = load_image_folder(tmp_path, split_csv="s.csv")
    assert data.classes == ["a_without", "b_with"] and data.val.labels.tolist() == [0, 1]
    (tmp_path / "t.csv").write_text("path,split,label\n" + "\n".join(
        f"{line},{int(line.startswith('b'))}" for line in lines) + "\n")
    data = load_image_folder(tmp_path, split_csv=tmp_path / "t.csv")
    assert data.classes == ["a_without", "b_with"] and data.test.names == ["a_without/2.png", "b_with/2.png"]


def test_folder_train_val_test_folders(tmp_path) -> None:
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("x", "y"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.jpg" if cls == "x" else tmp_path / split / cls / f"{i}.png")
    data = load_image_folder(tmp_path)
    assert data.summary()["counts"] == {"train": [3, 3], "val": [1, 1], "test": [2, 2]}
    assert data.test.names[0] == "test/x/0.jpg"


def test_folder_val_carved_from_train_when_only_train_and_test(tmp_path) -> None:
    for cls in ("a", "b"):
        for i in range(6):
            _png(tmp_path / "train" / cls / f"{i}.png")
        _png(tmp_path / "test" / cls / "t.png")
    data = load_image_folder(tmp_path, val_fraction=0.34, seed=1)
    assert data.summary()["counts"] == {"train": [4, 4], "val": [2, 2], "test": [1, 1]}
    assert not set(data.train.names) & set(data.val.names)
    assert all(n.startswith("train/") for n in data.val.names)
    assert any("carved" in note for note in data.notes)


def test_folder_dicom_images(tmp_path) -> None:
    volumes = {}
    for c, cls in enumerate(("a_without", "b_with")):
        hu, spacing = make_phantom(n_slices=5, size=24, seed=c, lesion=bool(c))
        paths = write_dicom_series(hu, spacing, tmp_path / cls / "patient", seed=c)
        volumes[cls] = {p.name: hu[k] for k, p in enumerate(paths)}
    data = load_image_folder(tmp_path)
    assert data.summary()["counts"] == {"train": [3, 3], "val": [1, 1], "test": [1, 1]}
    for split in data.splits().values():
        for image, name in zip(split.images, split.names, strict=True):
            cls, _, file_name = name.split("/")
            np.testing.assert_array_equal(image, minmax_uint8(volumes[cls][file_name]))


def test_sixteen_bit_png_is_min_max_scaled(tmp_path) -> None:
    values = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "x.png")
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "x.png"), minmax_uint8(values))


@pytest.mark.parametrize("case", ["empty_class", "no_root", "no_classes", "mixed", "no_train"])
def test_folder_layout_errors(tmp_path, case: str) -> None:
    root = tmp_path / "data"
    _png(root / "a" / "1.png")
    if case == "empty_class":
        (root / "b").mkdir()
        (root / "b" / "notes.txt").write_text("x")
        expected = str(root / "b")
    elif case == "no_root":
        root = tmp_path / "nope"
        expected = str(root)
    elif case == "no_classes":
        root = tmp_path / "flat"
        _png(root / "1.png")
        expected = "no class sub-folders"
    elif case == "mixed":
        _png(root / "train" / "a" / "1.png")
        expected = "mixes split folders"
    else:
        _png(root / "val" / "a" / "1.png")
        shutil.rmtree(root / "a")
        expected = "no 'train' folder"
    with pytest.raises(DataError, match=expected.replace("(", r"\(")):
        load_image_folder(root)


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("path,split\na_without/0.png,train\nb_with/missing.png,test\n", "b_with/missing.png"),
        ("path,split\na_without/0.png,training\n", "line 2: split 'training'"),
        ("file,split\na_without/0.png,train\n", "needs columns 'path' and 'split'"),
        ("path,split\na_without/0.png,train\na_without/0.png,test\n", "already listed on line 2"),
        ("path,split,label\na_without/0.png,train,a\nb_with/0.png,val,b\nb_with/1.png,test,b\n", "no training images"),
        ("path,split\na_without/0.png,train\nb_with/0.png,train\na_without/1.png,val\nb_with/1.png,val\n",
         "split 'test' is empty"),
    ],
)
def test_folder_split_csv_errors(tmp_path, csv_text: str, message: str) -> None:
    for cls in ("a_without", "b_with"):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png")
    (tmp_path / "split.csv").write_text(csv_text)
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path, split_csv=tmp_path / "split.csv")


def test_missing_split_csv_named(tmp_path) -> None:
    _png(tmp_path / "a" / "0.png")
    with pytest.raises(DataError, match="nope.csv: split CSV not found"):
        load_image_folder(tmp_path, split_csv=tmp_path / "nope.csv")


# --- COVID-CT ------------------------------------------------------------------------------------


def test_covid_ct_layout_and_labels(generated) -> None:
    root = generated["covid_ct"]
    data = load_covid_ct(root)
    assert data.classes == ["COVID", "NonCOVID"]
    assert data.summary()["counts"] == {"train": [3, 3], "val": [1, 1], "test": [1, 1]}
    for split in data.splits().values():
        for label, name in zip(split.labels, split.names, strict=True):
            folder, file_name = name.split("/")
            assert folder == ("CT_COVID" if label == 0 else "CT_NonCOVID")
            assert file_name.startswith("b_with" if label == 0 else "a_without")  # the lesion class is COVID
    swapped = load_covid_ct(root, covid_label=1)
    assert swapped.classes == ["NonCOVID", "COVID"]
    np.testing.assert_array_equal(swapped.test.labels, 1 - data.test.labels)
    listed = (root / "Data-split" / "COVID" / "testCT_COVID.txt").read_text().split()
    assert sorted(n.split("/")[1] for n, y in zip(data.test.names, data.test.labels, strict=True) if y == 0) == \
        sorted(listed)


@pytest.mark.parametrize("case", ["no_folder", "zipped", "no_list", "missing_image", "twice", "label"])
def test_covid_ct_errors(generated, tmp_path, case: str) -> None:
    root = _copy(generated["covid_ct"], tmp_path)
    kwargs = {}
    if case in ("no_folder", "zipped"):
        shutil.rmtree(root / "Images-processed" / "CT_NonCOVID")
        if case == "zipped":
            (root / "Images-processed" / "CT_NonCOVID.zip").write_bytes(b"PK")
            expected = "unzip .*CT_NonCOVID.zip"
        else:
            expected = "CT_NonCOVID: image folder missing"
    elif case == "no_list":
        (root / "Data-split" / "NonCOVID" / "valCT_NonCOVID.txt").unlink()
        expected = "valCT_NonCOVID.txt: split file missing"
    elif case == "missing_image":
        path = root / "Data-split" / "COVID" / "trainCT_COVID.txt"
        path.write_text(path.read_text() + "ghost.png\n")
        expected = "trainCT_COVID.txt: 1 listed image.* 'ghost.png'"
    elif case == "twice":
        train = root / "Data-split" / "COVID" / "trainCT_COVID.txt"
        test = root / "Data-split" / "COVID" / "testCT_COVID.txt"
        test.write_text(test.read_text() + train.read_text().split()[0] + "\n")
        expected = "testCT_COVID.txt: .* also listed in the train split"
    else:
        kwargs = {"covid_label": 2}
        expected = "covid_label must be 0 or 1"
    with pytest.raises(DataError, match=expected):
        load_covid_ct(root, **kwargs)


def test_covid_ct_names_match_case_insensitively(generated, tmp_path) -> None:
    root = _copy(generated["covid_ct"], tmp_path)
    path = root / "Data-split" / "COVID" / "valCT_COVID.txt"
    path.write_text(path.read_text().upper())
    assert len(load_covid_ct(root).val) == 2


# --- MedMNIST ------------------------------------------------------------------------------------


def _write_npz(path: Path, n_classes: int = 11, label_shape=(1,), rgb: bool = False, size: int = 28) -> dict:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 2 * n_classes), ("val", n_classes), ("test", n_classes)):
        shape = (n, size, size, 3) if rgb else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = np.arange(n) % n_classes
        arrays[f"{split}_labels"] = (labels[:, None] if label_shape == (1,) else
                                     rng.integers(0, 2, (n, *label_shape))).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def test_medmnist_generated_file_by_flag_and_path(generated) -> None:
    path = generated["medmnist"]
    assert path.name == "lesionmnist.npz"
    by_flag = load_medmnist("lesionmnist", root=path.parent)
    by_path = load_medmnist(path)
    with np.load(path) as npz:
        assert npz["train_labels"].shape == (6, 1)
        np.testing.assert_array_equal(by_path.train.labels, npz["train_labels"][:, 0])
        np.testing.assert_array_equal(by_flag.test.images, npz["test_images"])
    assert by_flag.classes == ["0", "1"] and by_flag.name == "lesionmnist"
    assert by_path.summary()["counts"] == {"train": [3, 3], "val": [1, 1], "test": [1, 1]}


def test_organsmnist_sizes_and_class_names(tmp_path) -> None:
    arrays = _write_npz(tmp_path / "organsmnist_64.npz", size=64)
    data = load_medmnist("organsmnist", root=tmp_path, size=64)
    assert data.classes[0] == "bladder" and len(data.classes) == 11
    assert data.train.images.shape == (22, 64, 64) and data.train.labels.shape == (22,)
    np.testing.assert_array_equal(data.val.labels, arrays["val_labels"][:, 0])
    _write_npz(tmp_path / "organsmnist.npz")
    assert load_medmnist(root=tmp_path).train.images.shape == (22, 28, 28)  # default flag, size 28


def test_medmnist_rgb_converted_like_pillow(tmp_path) -> None:
    arrays = _write_npz(tmp_path / "bloodmnist.npz", n_classes=8, rgb=True)
    data = load_medmnist("bloodmnist", root=tmp_path)
    expected = np.asarray(Image.fromarray(arrays["test_images"][0]).convert("L"))
    assert np.abs(data.test.images[0].astype(int) - expected).max() <= 1


def test_medmnist_multilabel_rejected(tmp_path) -> None:
    _write_npz(tmp_path / "chestmnist.npz", n_classes=2, label_shape=(14,))
    with pytest.raises(DataError, match="multi-label not supported"):
        load_medmnist("chestmnist", root=tmp_path)
    _write_npz(tmp_path / "custom.npz", n_classes=2, label_shape=(3,))
    with pytest.raises(DataError, match=r"custom.npz: train_labels has shape \(4, 3\): multi-label not supported"):
        load_medmnist(tmp_path / "custom.npz")


def test_medmnist_missing_file_and_no_silent_download(tmp_path, monkeypatch) -> None:
    with pytest.raises(DataError, match=r"organsmnist_128.npz: MedMNIST file not found. Pass download=True"):
        load_medmnist("organsmnist", root=tmp_path, size=128)
    monkeypatch.setitem(sys.modules, "medmnist", None)  # as if not installed
    with pytest.raises(DataError, match=r"needs the 'medmnist' package .*zenodo.*organsmnist.npz"):
        load_medmnist("organsmnist", root=tmp_path, download=True)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["size", "missing_key", "lengths", "dtype", "3d"])
def test_medmnist_bad_files(tmp_path, case: str) -> None:
    path = tmp_path / "x.npz"
    arrays = _write_npz(path, n_classes=2)
    if case == "size":
        with pytest.raises(DataError, match="size must be one of"):
            load_medmnist("organsmnist", root=tmp_path, size=32)
        return
    if case == "3d":
        with pytest.raises(DataError, match="3D"):
            load_medmnist("organmnist3d", root=tmp_path)
        return
    if case == "missing_key":
        del arrays["val_labels"]
        expected = r"x.npz: missing key\(s\) \['val_labels'\]"
    elif case == "lengths":
        arrays["test_labels"] = arrays["test_labels"][:-1]
        expected = "x.npz: test_images has 2 images but test_labels 1 labels"
    else:
        arrays["train_images"] = arrays["train_images"].astype(np.float32)
        expected = "x.npz: train_images must be uint8"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=expected):
        load_medmnist(path)


# --- validation, torch dataset, dispatch ---------------------------------------------------------


def _data(**changes) -> DownstreamData:
    img = np.zeros((4, 4), np.uint8)
    splits = {s: Split([img, img], np.array([0, 1]), [f"{s}0", f"{s}1"]) for s in ("train", "val", "test")}
    fields = {**splits, "classes": ["a", "b"], "name": "toy", **changes}
    return DownstreamData(**fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"val": Split([], np.array([], dtype=int), [])}, "split 'val' is empty"),
        ({"test": Split([np.zeros((4, 4), np.uint8)], np.array([0, 1]), ["t0"])}, "1 images, 2 labels and 1 names"),
        ({"train": Split([np.zeros((4, 4), np.uint8)] * 2, np.array([0, 2]), ["x", "y"])},
         r"label 2 \(y\) out of range"),
        ({"train": Split([np.zeros((4, 4), np.uint8)] * 2, np.array([0, 0]), ["x", "y"])}, "'b' .* no training images"),
        ({"classes": ["a"]}, "at least 2 classes"),
        ({"train": Split([np.zeros((4, 4), np.float32)] * 2, np.array([0, 1]), ["x", "y"])}, "x must be a 2-D uint8"),
    ],
)
def test_validation_errors(changes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _data(**changes).validate()


def test_class_missing_from_test_only_warns() -> None:
    img = np.zeros((4, 4), np.uint8)
    with pytest.warns(DataWarning, match="'b' is absent from the test split"):
        _data(test=Split([img], np.array([0]), ["t0"])).validate()


def test_image_dataset_item_and_transform(generated) -> None:
    data = load_image_folder(generated["folder"])
    x, y = ImageDataset(data.train)[0]
    assert x.dtype == torch.uint8 and x.shape == (1, 32, 32) and y == int(data.train.labels[0])
    assert torch.equal(x[0], torch.from_numpy(data.train.images[0]))
    xt, _ = ImageDataset(data.test, transform=lambda t: t.float() / 255)[1]
    assert xt.dtype == torch.float32 and float(xt.max()) <= 1.0
    loader = torch.utils.data.DataLoader(ImageDataset(data.train), batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 1, 32, 32) and yb.dtype == torch.int64


def test_load_task_dispatch(generated) -> None:
    folder = load_task({"format": "folder", "root": str(generated["folder"]), "split_csv": "split.csv"})
    assert folder.notes and "split.csv" in folder.notes[0]
    covid = load_task({"format": "covid_ct", "root": generated["covid_ct"], "covid_label": 1})
    assert covid.classes == ["NonCOVID", "COVID"]
    mm = load_task({"format": "medmnist", "path": generated["medmnist"]})
    mm2 = load_task({"format": "medmnist", "flag": "lesionmnist", "root": generated["medmnist"].parent})
    np.testing.assert_array_equal(mm.train.labels, mm2.train.labels)
    with pytest.raises(DataError, match="'format' must be one of"):
        load_task({"format": "nifti", "root": "x"})
    with pytest.raises(DataError, match=r"unknown key\(s\) \['val_fraction'\]"):
        load_task({"format": "covid_ct", "root": "x", "val_fraction": 0.2})
    with pytest.raises(DataError, match="needs 'root'"):
        load_task({"format": "folder"})


def test_task_spec_for_a_path_is_what_load_task_takes(generated, tmp_path) -> None:
    npz = task_spec_for(generated["medmnist"])
    assert npz == {"format": "medmnist", "path": str(generated["medmnist"])}
    assert task_source(npz) == str(generated["medmnist"])
    assert task_spec_for(generated["covid_ct"])["format"] == "covid_ct"
    assert task_spec_for(generated["folder"]) == {"format": "folder", "root": str(generated["folder"])}
    for spec in (npz, task_spec_for(generated["covid_ct"]), task_spec_for(generated["folder"])):
        assert len(load_task(spec).train) > 0
    spec_file = tmp_path / "task.yaml"
    spec_file.write_text(f"format: folder\nroot: {generated['folder']}\nsplit_csv: split.csv\n")
    assert task_spec_for(spec_file)["split_csv"] == "split.csv"
    spec_file.write_text(f"format: medmnist\npath_or_flag: {generated['medmnist']}\n")
    with pytest.raises(DataError, match=r"task.yaml: .*unknown key\(s\) \['path_or_flag'\]"):
        task_spec_for(spec_file)
    with pytest.raises(DataError, match="task spec file not found"):
        task_spec_for(tmp_path / "missing.yaml")


def test_check_task_spec_reads_nothing() -> None:
    assert check_task_spec({"format": "medmnist", "path": "/no/such/file.npz"})["path"] == "/no/such/file.npz"
    assert check_task_spec({"format": "folder", "root": "/no/such/folder", "seed": 3})["seed"] == 3
    with pytest.raises(DataError, match="'path' .* or 'flag', not both"):
        check_task_spec({"format": "medmnist", "path": "x.npz", "flag": "organsmnist"})
    with pytest.raises(DataError, match="must be a mapping"):
        check_task_spec(["folder"])
