"""The experiment runner: a tiny grid end to end on CPU, caching, resume, early errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ctreduce.experiment.runner import ExperimentError, Runner, load_experiment, run_experiment

TINY = {
    "name": "tiny",
    "out": "out",
    "datasets": [{"name": "phantom", "phantom": {"n_volumes": 2, "n_slices": 12, "size": 32, "formats": ["nrrd"]}}],
    "reductions": [{"name": "ALL", "settings": {"method": "all"}},
                   {"name": "Hash-6", "settings": {"method": "hash", "threshold": 6}}],
    "ssl": [{"name": "MoCo", "settings": {"method": "moco", "preset": "cpu", "backbone": "resnet18", "epochs": 1,
                                          "batch_size": 2, "input_size": 32, "num_workers": 0}}],
    "tasks": [{"name": "nodule", "synthetic": {"n_per_class": 8, "size": 32, "format": "folder"}}],
    "finetune": {"backbone": "resnet18", "epochs": 1, "head_only_epochs": 0, "input_size": 32, "batch_size": 8,
                 "num_workers": 0, "bootstrap": 10},
    "seeds": [0],
}


def write(tmp_path, config) -> str:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_tiny_grid_end_to_end_then_cached(tmp_path, monkeypatch):
    from PIL import Image

    from ctreduce.core import devices
    from ctreduce.store.export import ExportStore
    from ctreduce.store.finetune import FinetuneRun
    from ctreduce.store.pretrain import PretrainRun
    from ctreduce.store.run import RunFolder

    # The machine gets busier after the start: per stage the policy would pick 2, then 1 thread; the grid keeps 2.
    monkeypatch.delenv("CTREDUCE_THREADS", raising=False)
    busy = iter([0.0] + [1.0] * 1000)
    monkeypatch.setattr(devices, "busy_cores", lambda *a, **k: next(busy))
    monkeypatch.setattr(devices, "usable_cores", lambda: 2)
    log: list[str] = []
    table = run_experiment(write(tmp_path, TINY), log=log.append)
    out = tmp_path / "out"
    stages = [line.split("]")[0] + "]" for line in log]
    assert stages.count("[pretrain]") == 2 and stages.count("[finetune]") == 2 and stages.count("[leakage]") == 2
    assert table["reduction"].tolist() == ["ALL", "Hash-6"]
    assert table.equals(pd.read_csv(out / "results.csv")[table.columns].astype(table.dtypes))

    def done(stage: str) -> list[dict]:
        return [json.loads(p.read_text()) | {"folder": p.parent} for p in (out / "cache" / stage).glob("*/done.json")]

    reduced = {d["description"].split(" / ")[1]: d for d in done("reduce")}
    pretrained = {PretrainRun(d["folder"] / "run").summary()["export"]["slices"]: d for d in done("pretrain")}
    for _, row in table.iterrows():
        # Reduction: the counts of the run folder's manifest.
        run = RunFolder(reduced[row["reduction"]]["folder"] / "run")
        manifest = run.manifest()
        assert row["kept_slices"] == manifest["kept"].sum() == run.summary()["totals"]["kept"]
        assert row["kept_fraction"] == pytest.approx(manifest["kept"].mean())
        assert row["method"] == {"ALL": "all", "Hash-6": "hash"}[row["reduction"]]
        # Pre-training on exactly the kept slices: images seen, CPU and wall seconds and threads of its summary.
        pre = PretrainRun(pretrained[row["kept_slices"]]["folder"] / "run").summary()
        export = ExportStore.open(Path(pre["data"]))
        assert export.meta["slices"] == row["kept_slices"] and export.meta["size"] == 32
        assert row["images_seen"] == pre["images_seen"] == pre["steps"] * 2 and row["epochs"] == 1
        assert (row["pretrain_cpu_s"], row["pretrain_s"]) == (pre["cpu_time_s"], pre["wall_time_s"])
        assert row["threads"] == pre["threads"]["torch_threads"] == 2
        assert pre["threads"]["source"] == "CTREDUCE_THREADS=2"
        # Fine-tuning: the metrics of its results.json, run with the grid's threads too.
        matching = [r for r in (FinetuneRun(d["folder"] / "run") for d in done("finetune"))
                    if Path(r.config()["init"]).parent == pretrained[row["kept_slices"]]["folder"]]
        assert len(matching) == 1
        ft = matching[0].results()
        assert row["nodule AUC"] == ft["auc"]["mean"] and row["nodule ACC"] == ft["accuracy"]["mean"]
        assert row["nodule F1"] == ft["f1"]["mean"] and ft["threads"]["torch_threads"] == 2
        # Leakage: the cached stage's counts; synthetic task against a phantom archive: the shared-anatomy flag.
        leak = [d for d in done("leakage") if Path(pre["data"]).parent.name in d["description"]]
        assert len(leak) == 1
        assert (row["nodule test leaks"], row["nodule test in train"], row["nodule test images"]) == (
            leak[0]["leaked"]["test"], leak[0]["test_in_train"], leak[0]["images"]["test"])
        assert row["nodule phantom anatomy"]
    all_cpu = table.loc[0, "pretrain_cpu_s"]
    assert table["speedup_vs_all"].tolist() == pytest.approx([1.0, all_cpu / table.loc[1, "pretrain_cpu_s"]])
    assert table.loc[0, "images_seen"] > table.loc[1, "images_seen"]

    markdown = (out / "results.md").read_text()
    header, _, *rows = [[c.strip() for c in line.split("|")[1:-1]] for line in markdown.splitlines()
                        if line.startswith("|")]
    cells = [dict(zip(header, r, strict=True)) for r in rows]
    for cell, (_, row) in zip(cells, table.iterrows(), strict=True):
        assert cell["Reduction"] == row["reduction"] and cell["Images seen"] == str(row["images_seen"])
        assert cell["CPU s"] == f"{row['pretrain_cpu_s']:.1f}" and cell["Threads"] == "2"
        assert cell["Speed-up"] == f"{row['speedup_vs_all']:.1f}x"
        assert cell["nodule test leaks"] == (f"{row['nodule test leaks']}/{row['nodule test images']}† "
                                                    f"({row['nodule test in train']})")
        assert cell["nodule AUC"].startswith(f"{row['nodule AUC']:.3f}")
    assert "every cell's training ran with 2 torch thread(s), chosen once at the start of the run" in markdown
    assert "† The task's images are synthetic phantom slices and the pre-training archive holds phantom" in markdown
    for plot in ("auc_vs_kept_nodule.png", "pretrain_time.png"):
        with Image.open(out / "plots" / plot) as png:
            assert png.format == "PNG" and min(png.size) > 100
    exports = done("export")
    assert len(exports) == 2 and all(e["fused"] for e in exports)  # written in the reduce pass, linked
    assert sorted(e["slices"] for e in exports) == sorted(table["kept_slices"])

    log.clear()
    run_experiment(write(tmp_path, TINY), log=log.append)
    assert log == []  # nothing recomputed

    grown = {**TINY, "reductions": TINY["reductions"] + [{"name": "EveryN",
                                                          "settings": {"method": "every-n", "every_n": 3}}]}
    run_experiment(write(tmp_path, grown), log=log.append)
    assert [line.split("]")[0] + "]" for line in log if line.startswith("[")] == [
        "[reduce]", "[export]", "[pretrain]", "[finetune]", "[leakage]"]

    # One reduction setting changed: that reduce stage and all that depends on it run again, the ALL cell not.
    log.clear()
    hash4 = {**TINY, "reductions": [TINY["reductions"][0], {"name": "Hash-6", "settings": {"method": "hash",
                                                                                             "threshold": 4}}]}
    run_experiment(write(tmp_path, hash4), log=log.append)
    assert [line.split("]")[0] + "]" for line in log if line.startswith("[")] == [
        "[reduce]", "[export]", "[pretrain]", "[finetune]", "[leakage]"]
    assert "Hash-6" in log[0]

    # Keys hash the resolved settings: the default threshold (6) left out is the cached Hash-6 cell.
    log.clear()
    implicit = {**TINY, "reductions": [TINY["reductions"][0], {"name": "Hash-6", "settings": {"method": "hash"}}]}
    run_experiment(write(tmp_path, implicit), log=log.append)
    assert log == []


def test_cells_that_differ_only_in_export_size_do_not_share_an_export(tmp_path):
    from ctreduce.store.export import ExportStore

    runner = Runner(load_experiment(write(tmp_path, TINY)), log=lambda line: None)
    dataset, reduction = runner.config.datasets[0], runner.config.reductions[0]
    reduce_folder, reduce_key = runner.reduce(dataset, reduction, 32)  # fuses a 32 px export into the reduce pass
    small, small_key = runner.export(reduce_folder, reduce_key, 32)
    large, large_key = runner.export(reduce_folder, reduce_key, 40)
    assert small != large and small_key != large_key
    stores = {size: ExportStore.open(folder / "data") for size, folder in ((32, small), (40, large))}
    for size, store in stores.items():
        assert store.meta["size"] == size and store.array().shape[1:] == (size, size)
    assert stores[32].meta["slices"] == stores[40].meta["slices"] == 24
    assert runner.export(reduce_folder, reduce_key, 40) == (large, large_key)  # cached by size


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "bogus"),
    ({"reductions": [{"name": "x", "settings": {"method": "hashh"}}]}, "unknown method"),
    ({"ssl": [{"name": "s", "settings": {"method": "simclr"}}]}, "method 'simclr' is not one of swav, moco, spark"),
    ({"ssl": [{"name": "s", "settings": {"method": "moco"}, "reductions": ["nope"]}]}, "unknown reductions"),
    ({"finetune": {"mode": "probe"}}, "finetune: mode 'probe' is not one of finetune, linear, knn"),
    ({"tasks": [{"name": "t"}]}, "needs 'data'"),
])
def test_bad_experiment_files_fail_before_any_stage(tmp_path, change, message):
    with pytest.raises(ExperimentError, match=message):
        run_experiment(write(tmp_path, {**TINY, **change}))
    assert not (tmp_path / "out" / "cache").exists()


def test_task_with_a_missing_class_fails_before_training(tmp_path):
    folder = tmp_path / "task"
    (folder / "a_without").mkdir(parents=True)
    (folder / "b_with").mkdir()
    config = {**TINY, "tasks": [{"name": "t", "data": {"format": "folder", "root": str(folder)}}]}
    with pytest.raises(ExperimentError, match="task 't'"):
        run_experiment(write(tmp_path, config))
    assert not (tmp_path / "out" / "cache" / "pretrain").exists()


@pytest.mark.parametrize("fmt, class_of", [
    ("medmnist", {0: "0", 1: "1"}),
    ("covid_ct", {0: "NonCOVID", 1: "COVID"}),  # the paper's labels: the lesion (COVID) class is 0
])
def test_synthetic_tasks_in_every_format_load(tmp_path, fmt, class_of):
    """The task an experiment generates and loads holds the generator's images, each under its class and in
    its split: what fine-tuning reads is what ``lesion_samples`` drew."""
    from ctreduce.downstream.synthetic import lesion_samples
    from ctreduce.tasks.load import load_task

    config = {**TINY, "tasks": [{"name": "t", "synthetic": {"n_per_class": 5, "size": 32, "format": fmt}}]}
    runner = Runner(load_experiment(write(tmp_path, config)), log=lambda line: None)
    runner.check_tasks()
    data = load_task(runner.task_spec(runner.config.tasks[0]))
    samples = lesion_samples(5, size=32)  # make_lesion_task's defaults with the experiment's settings
    assert sorted(data.classes) == sorted(class_of.values())
    for split_name, split in data.splits().items():
        drawn = samples.splits == split_name
        per_class = {"train": 3, "val": 1, "test": 1}[split_name]  # 60/20/20 of 5 per class
        assert len(split) == drawn.sum() == 2 * per_class and split.counts(2) == [per_class, per_class]
        assert all(image.shape == (32, 32) and image.dtype == np.uint8 for image in split.images)
        got = sorted((data.classes[label], np.asarray(image).tobytes()) for image, label in zip(
            split.images, split.labels.tolist(), strict=True))
        want = sorted((class_of[label], image.tobytes()) for image, label in zip(
            samples.images[drawn], samples.labels[drawn].tolist(), strict=True))
        assert got == want


def test_a_cell_pretrained_on_two_devices_runs_each_stage_once(tmp_path):
    """strategy "ddp" re-runs the launching command per device: the pretrain stage is its own command,
    so the experiment itself runs once (the real launcher, 2 CPU processes with gloo)."""
    ddp = {**TINY, "reductions": TINY["reductions"][:1],
           "ssl": [{"name": "MoCo", "settings": {**TINY["ssl"][0]["settings"], "devices": 2, "strategy": "ddp",
                                                 "accelerator": "cpu"}}]}
    log: list[str] = []
    table = run_experiment(write(tmp_path, ddp), log=log.append)
    stages = [line.split("]")[0] + "]" for line in log if line.startswith("[")]
    assert sorted(stages) == ["[data]", "[data]", "[export]", "[finetune]", "[leakage]", "[pretrain]", "[reduce]"]
    assert table.loc[0, "epochs"] == 1 and table.loc[0, "pretrain_s"] > 0
