"""The fine-tuning protocol: outputs, head-only schedule, linear probe, kNN, init, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from ctreduce.config import FinetuneConfig
from ctreduce.downstream.datasets import _ORGAN_LABELS
from ctreduce.downstream.evaluate import EvaluateError, evaluate_run
from ctreduce.downstream.finetune import FinetuneError, build_model, finetune, set_trainable, transforms
from ctreduce.downstream.synthetic import make_lesion_task

TINY = {"backbone": "resnet18", "input_size": 32, "batch_size": 8, "num_workers": 0, "bootstrap": 20}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("task") / "lesion"
    make_lesion_task(root, n_per_class=10, size=32, format="folder")
    return {"format": "folder", "root": str(root)}


@pytest.fixture(scope="module")
def init_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("init") / "backbone.pt"
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    torch.save(state, path)
    return path


def test_outputs_for_every_seed_and_the_summary(task, tmp_path):
    out = tmp_path / "ft"
    summary = finetune(task=task, out=str(out), init="random", epochs=2, head_only_epochs=1, seeds=(0, 1), **TINY)
    for seed in (0, 1):
        for name in ("model.pt", "history.jsonl", "predictions.csv", "metrics.json", "confusion.png", "roc.png"):
            assert (out / f"seed{seed}" / name).exists(), name
        metrics = json.loads((out / f"seed{seed}" / "metrics.json").read_text())
        assert {"accuracy", "auc", "f1", "ci95", "best_epoch"} <= set(metrics)
        assert metrics["ci95"]["auc"]["low"] <= metrics["auc"] <= metrics["ci95"]["auc"]["high"]
    assert summary["accuracy"]["n"] == 2 and summary["split_sizes"]["train"] > 0
    line = pd.read_csv(out / "results.csv")
    assert len(line) == 1 and {"accuracy_mean", "auc_sd", "f1_mean"} <= set(line.columns)


def test_head_only_epochs_keep_the_backbone_fixed(task, tmp_path, init_file):
    out = tmp_path / "ft"
    finetune(task=task, out=str(out), init=str(init_file), epochs=1, head_only_epochs=1, **TINY)
    start = torch.load(init_file)
    trained = torch.load(out / "seed0" / "model.pt")
    convs = [k for k in start if "conv" in k or "downsample.0" in k]
    assert convs and all(torch.equal(start[k], trained[k]) for k in convs)
    assert not torch.equal(start["bn1.weight"], trained["bn1.weight"])  # BatchNorm stays trainable
    history = [json.loads(x) for x in (out / "seed0" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["head+bn"]


def test_schedule_unfreezes_after_the_head_only_epochs(task, tmp_path):
    out = tmp_path / "ft"
    finetune(task=task, out=str(out), init="random", epochs=3, head_only_epochs=1, **TINY)
    history = [json.loads(x) for x in (out / "seed0" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["head+bn", "all", "all"]
    assert history[0]["trainable_parameters"] < history[1]["trainable_parameters"]


def test_set_trainable_phases():
    model = torchvision.models.resnet18(num_classes=2)
    head = sum(p.numel() for p in model.fc.parameters())
    bn = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert set_trainable(model, "head") == head
    assert set_trainable(model, "head+bn") == head + bn
    assert set_trainable(model, "all") == sum(p.numel() for p in model.parameters())


def test_linear_probe_changes_only_the_head(task, tmp_path, init_file):
    out = tmp_path / "lin"
    finetune(task=task, out=str(out), init=str(init_file), mode="linear", epochs=2, head_only_epochs=0, **TINY)
    start, trained = torch.load(init_file), torch.load(out / "seed0" / "model.pt")
    assert all(torch.equal(start[k], trained[k]) for k in start)


def test_knn_evaluation(task, tmp_path):
    summary = finetune(task=task, out=str(tmp_path / "knn"), init="random", mode="knn", knn_k=5, **TINY)
    assert 0 <= summary["accuracy"]["mean"] <= 1


def test_init_from_a_pretraining_run_folder_uses_its_statistics(task, tmp_path, init_file):
    run = tmp_path / "pretrain"
    run.mkdir()
    (run / "backbone.pt").write_bytes(init_file.read_bytes())
    (run / "config.yaml").write_text("mean: 0.25\nstd: 0.2\n")
    out = tmp_path / "ft"
    finetune(task=task, out=str(out), init=str(run), epochs=1, head_only_epochs=1, **TINY)
    assert (out / "seed0" / "model.pt").exists()
    config = FinetuneConfig(task=task, out=str(out), init=str(run), **TINY)
    assert build_model(config, 2)[1:] == (0.25, 0.2)
    norm = transforms(config, 0.25, 0.2, train=False).transforms[-1]
    assert list(norm.mean) == [0.25] * 3 and list(norm.std) == [0.2] * 3
    # SparK normalises per channel (ImageNet statistics in the paper preset): fine-tuning follows it.
    (run / "config.yaml").write_text("method: spark\nmean: 0.25\nstd: 0.2\n"
                                     "spark: {input_mean: [0.485, 0.456, 0.406], input_std: [0.229, 0.224, 0.225]}\n")
    _, mean, std = build_model(config, 2)
    assert mean == (0.485, 0.456, 0.406) and std == (0.229, 0.224, 0.225)
    assert list(transforms(config, mean, std, train=False).transforms[-1].mean) == [0.485, 0.456, 0.406]


def test_bad_inputs_fail_before_training(task, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(FinetuneError, match="bad.pt"):
        finetune(task=task, out=str(tmp_path / "o1"), init=str(bad), **TINY)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(FinetuneError, match="not a torchvision ResNet"):
        finetune(task=task, out=str(tmp_path / "o2"), init=str(tmp_path / "other.pt"), **TINY)
    with pytest.raises(FinetuneError, match="no such file"):
        finetune(task=task, out=str(tmp_path / "o3"), init=str(tmp_path / "missing"), **TINY)
    empty = tmp_path / "onecls"
    (empty / "a_without").mkdir(parents=True)
    (empty / "b_with").mkdir()
    with pytest.raises(FinetuneError):
        finetune(task={"format": "folder", "root": str(empty)}, out=str(tmp_path / "o4"), init="random", **TINY)
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3", "o4"))


def test_evaluate_recomputes_the_saved_metrics(task, tmp_path):
    out = tmp_path / "ft"
    first = finetune(task=task, out=str(out), init="random", epochs=1, head_only_epochs=0, **TINY)
    again = evaluate_run(out, bootstrap=20)
    assert again["accuracy"] == first["accuracy"] and again["auc"] == first["auc"]
    assert np.isclose(again["per_seed"][0]["f1"], first["per_seed"][0]["f1"])
    with pytest.raises(EvaluateError, match="no config.yaml"):
        evaluate_run(tmp_path)


def organsmnist_npz(path: Path, per_class: dict[str, int]) -> Path:
    """A tiny MedMNIST-format file: every one of OrganSMNIST's 11 classes in every split, 28x28 uint8."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in per_class.items():
        labels = np.repeat(np.arange(len(_ORGAN_LABELS), dtype=np.uint8), n)[:, None]  # (N, 1) as MedMNIST
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return path


def test_cli_finetune_on_a_medmnist_npz_then_evaluate(tmp_path):
    npz = organsmnist_npz(tmp_path / "organsmnist.npz", {"train": 2, "val": 1, "test": 1})
    ctreduce = str(Path(sys.executable).with_name("ctreduce"))
    out = tmp_path / "ft"
    proc = subprocess.run([ctreduce, "finetune", "--task", str(npz), "--init", "random", "--out", str(out),
                           "epochs=1", "head_only_epochs=0", "backbone=resnet18", "input_size=32", "batch_size=8",
                           "num_workers=0", "bootstrap=10"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == _ORGAN_LABELS and results["split_sizes"] == {"train": 22, "val": 11, "test": 11}
    (out / "results.json").unlink()  # evaluate then names the task from the saved spec
    proc = subprocess.run([ctreduce, "evaluate", str(out), "--bootstrap", "10"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy:" in proc.stdout and "auc:" in proc.stdout
    again = json.loads((out / "results.json").read_text())
    assert again["task"] == str(npz) and again["accuracy"] == results["accuracy"]
