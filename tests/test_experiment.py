"""The experiment runner: a tiny grid end to end on CPU, caching, resume, early errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from ctreduce.experiment import ExperimentError, Runner, load_experiment, run_experiment

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


def test_tiny_grid_end_to_end_then_cached(tmp_path):
    log: list[str] = []
    table = run_experiment(write(tmp_path, TINY), log=log.append)
    out = tmp_path / "out"
    assert table["reduction"].tolist() == ["ALL", "Hash-6"]
    assert table.loc[0, "kept_fraction"] == 1.0 and table.loc[1, "kept_fraction"] < 1.0
    assert table.loc[0, "speedup_vs_all"] == 1.0
    assert {"nodule AUC", "nodule F1", "nodule ACC"} <= set(table.columns)
    assert pd.read_csv(out / "results.csv").shape[0] == 2
    markdown = (out / "results.md").read_text()
    assert "| phantom | Hash-6 | MoCo |" in markdown and "nodule AUC" in markdown and "nodule test leaks" in markdown
    assert (table["nodule test images"] > 0).all() and table["nodule test leaks"].notna().all()
    assert len(list((out / "cache" / "leakage").glob("*/leakage/images.parquet"))) == 2
    assert (out / "plots" / "auc_vs_kept_nodule.png").exists() and (out / "plots" / "pretrain_time.png").exists()
    stages = [line.split("]")[0] + "]" for line in log]
    assert stages.count("[pretrain]") == 2 and stages.count("[finetune]") == 2 and stages.count("[leakage]") == 2
    exports = [json.loads(p.read_text()) for p in (out / "cache" / "export").glob("*/done.json")]
    assert len(exports) == 2 and all(e["fused"] for e in exports)  # written in the reduce pass, linked

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


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "bogus"),
    ({"reductions": [{"name": "x", "settings": {"method": "hashh"}}]}, "unknown method"),
    ({"ssl": [{"name": "s", "settings": {"method": "simclr"}}]}, "unknown pre-training method"),
    ({"ssl": [{"name": "s", "settings": {"method": "moco"}, "reductions": ["nope"]}]}, "unknown reductions"),
    ({"finetune": {"mode": "probe"}}, "unknown mode"),
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
    from ctreduce.downstream.datasets import load_task
    from ctreduce.downstream.synthetic import lesion_samples

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
