"""The pre-training command: run folder, resume, reliability, errors, DDP on CPU."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml

from ctreduce.config import SettingsError, make_pretrain_config
from ctreduce.ssl import pretrain as train_module
from ctreduce.ssl.pretrain import PretrainError, TrainingStopped, pretrain
from ctreduce.ssl.swav import CollapseWarning

TINY = {"preset": "cpu", "backbone": "resnet18", "input_size": 32, "batch_size": 8, "epochs": 2,
        "num_workers": 0, "swav": {"local_crop_size": 16, "n_prototypes": 16}}


@pytest.fixture
def export_dir(export_48: Path) -> Path:
    return export_48


def crash_in_second_epoch(monkeypatch):
    """Training raises at the start of its second epoch (after the first epoch's checkpoint); returns the hook
    to put back for the resume."""
    original = train_module.EpochMetrics.on_train_epoch_start

    def crash(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")
        original(self, trainer, pl_module)

    monkeypatch.setattr(train_module.EpochMetrics, "on_train_epoch_start", crash)
    return original


def settings(export_dir: Path, out: Path, **extra):
    return make_pretrain_config({**TINY, "data": str(export_dir), "out": str(out), **extra})


@pytest.mark.parametrize("method", ["swav", "moco", "spark"])
def test_each_method_writes_the_run_folder(export_dir, tmp_path, method):
    from ctreduce.ssl.data import intensity_stats, open_export

    out = tmp_path / method
    summary = pretrain(settings(export_dir, out, method=method))
    steps_per_epoch = 48 // 8
    # The checkpoint is the last epoch's, and backbone.pt is its backbone (what fine-tuning loads).
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == summary["steps"] == 2 * steps_per_epoch
    backbone = torch.load(out / "backbone.pt")
    trained = {k.removeprefix("backbone."): v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
    assert backbone.keys() == {k for k in trained if not k.startswith("fc.")}
    assert all(torch.equal(backbone[k], trained[k]) for k in backbone)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(backbone, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    assert not torch.equal(backbone["conv1.weight"], torchvision.models.resnet18().conv1.weight)  # trained
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in lines] == [(0, steps_per_epoch), (1, 2 * steps_per_epoch)]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 and r["epoch_s"] > 0 for r in lines)
    assert lines[0]["lr"] > lines[1]["lr"] >= 0  # warm-up for the first epoch, then the cosine decay
    # config.yaml: the settings as run, the statistics filled in from the export's pixels.
    config = yaml.safe_load((out / "config.yaml").read_text())
    mean, std = intensity_stats(open_export(export_dir), seed=0)
    assert config == {**settings(export_dir, out, method=method).model_dump(mode="json"),
                      "mean": round(mean, 5), "std": round(std, 5)}
    assert json.loads((out / "versions.json").read_text())["torch"] == importlib.metadata.version("torch")
    # summary.json is the returned summary: counts from the data and the schedule, times measured.
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["status"] == "finished" and summary["method"] == method and summary["dataset_slices"] == 48
    assert summary["epochs_completed"] == 2 and summary["images_seen"] == 2 * steps_per_epoch * 8
    assert (summary["mean"], summary["std"]) == (config["mean"], config["std"])
    assert summary["export"]["slices"] == 48 and summary["export"]["size"] == 40
    assert summary["wall_time_s"] > 0 and summary["cpu_time_s"] > 0 and not summary["resumed"]
    # The learning rate of the global batch (one device here) and the rule that gave it.
    base = {"swav": 0.15 * 256 / 128, "moco": 0.015 * 256 / 128, "spark": 2e-4}[method]
    assert summary["optimizer"]["lr_scaling"] == {"rule": "linear: base_lr x global_batch / 256", "base_lr": base,
                                                  "batch_size": 8, "processes": 1, "global_batch": 8,
                                                  "lr": base * 8 / 256} and summary["optimizer"]["lr"] == base * 8 / 256
    threads = summary["threads"]
    assert threads["torch_threads"] >= 1 and threads["loader_workers"] == 0 and threads["requested_workers"] == 0
    logged = pd.read_csv(next((out / "logs" / "csv").rglob("metrics.csv")))
    assert logged["epoch"].dropna().astype(int).max() == 1


def test_rerun_resumes_from_the_stored_step(export_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = crash_in_second_epoch(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(settings(export_dir, out, method="moco"))
    assert "interrupted" in json.loads((out / "summary.json").read_text())["status"]
    stored = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert stored["global_step"] == 6 and not (out / "backbone.pt").exists()

    monkeypatch.setattr(train_module.EpochMetrics, "on_train_epoch_start", original)
    summary = pretrain(settings(export_dir, out, method="moco"))
    assert summary["resumed"] and summary["steps"] == 12 and summary["status"] == "finished"
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]


def test_other_settings_in_the_same_run_folder_are_refused(export_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = pretrain(settings(export_dir, out, method="spark", epochs=1))
    with pytest.raises(PretrainError, match="other settings"):
        pretrain(settings(export_dir, out, method="spark", epochs=1, seed=3))
    # Another method: named first, before the settings that follow from it (and before any data is read).
    with pytest.raises(PretrainError, match=rf"^{re.escape(str(out))} holds a spark run, not moco: "):
        pretrain(settings(tmp_path / "no-such-export", out, method="moco", epochs=1))

    # The same finished run again: its summary, and no trainer is built (no model table, nothing trained).
    def no_trainer(*args, **kwargs):
        raise AssertionError("a finished run entered Lightning")

    monkeypatch.setattr(train_module.lightning_setup, "build", no_trainer)
    again = pretrain(settings(export_dir, out, method="spark", epochs=1))
    assert again == {**first, "already_finished": True}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(export_dir, tmp_path, monkeypatch):
    from ctreduce.ssl.moco import MoCoV2

    real = MoCoV2.training_loss

    def nan_in_second_epoch(self, batch):
        loss = real(self, batch)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(MoCoV2, "training_loss", nan_in_second_epoch)
    out = tmp_path / "nan"
    with pytest.raises(TrainingStopped, match="loss became nan"):
        pretrain(settings(export_dir, out, method="moco"))
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    assert json.loads((out / "summary.json").read_text())["status"] == "stopped: non-finite loss"


def test_same_seed_same_backbone_on_cpu(export_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CTREDUCE_THREADS", "1")  # CPU results are bitwise equal for equal thread counts
    a = pretrain(settings(export_dir, tmp_path / "a", method="swav", epochs=1))
    b = pretrain(settings(export_dir, tmp_path / "b", method="swav", epochs=1))
    assert a["steps"] == b["steps"]
    wa, wb = torch.load(tmp_path / "a" / "backbone.pt"), torch.load(tmp_path / "b" / "backbone.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_errors_before_training(export_dir, tmp_path):
    with pytest.raises(PretrainError, match="no such export folder"):
        pretrain(settings(tmp_path / "missing", tmp_path / "o"))
    with pytest.raises(PretrainError, match="fewer than one batch"):
        pretrain(settings(export_dir, tmp_path / "o", batch_size=64))
    with pytest.raises(SettingsError, match=r"^backbone 'vgg16' is not one of resnet18, resnet34, resnet50, "):
        settings(export_dir, tmp_path / "o", backbone="vgg16")
    if not torch.cuda.is_available():
        with pytest.raises(PretrainError, match="accelerator 'gpu' requested but CUDA is not available"):
            pretrain(settings(export_dir, tmp_path / "o", accelerator="gpu"))
    corrupt = Path(shutil.copytree(export_dir, tmp_path / "corrupt"))
    next((corrupt / "shards").glob("*.npy")).write_bytes(b"garbage")
    with pytest.raises(PretrainError, match=re.escape(str(corrupt))):  # the message names the export
        pretrain(settings(corrupt, tmp_path / "o"))
    with pytest.raises(SettingsError, match=r"^unknown setting swav.n_protoypes \(did you mean n_prototypes\?\)$"):
        make_pretrain_config({**TINY, "swav": {"n_protoypes": 1}})
    assert not (tmp_path / "o").exists()


def test_collapse_warning_after_patience_epochs():
    class FakeTrainer:
        callback_metrics = {"loss_epoch": torch.tensor(float(torch.log(torch.tensor(64.0))))}

    callback = CollapseWarning(n_prototypes=64, patience=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.on_train_epoch_end(FakeTrainer(), None)
        assert not caught
        callback.on_train_epoch_end(FakeTrainer(), None)
    assert len(caught) == 1 and "sinkhorn_epsilon" in str(caught[0].message)


# Records each rank's exit status: Lightning's "ddp" launcher re-runs this script (sys.argv) once per extra device.
RANK_EXITS = """
import os, sys
from pathlib import Path

from ctreduce.cli import main

code = 1  # any exception but SystemExit
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    raise
finally:
    Path(os.environ["RANK_EXITS"], "rank" + os.environ.get("LOCAL_RANK", "0")).write_text(str(code))
"""


def test_ddp_on_cpu_every_rank_runs_the_cli_and_exits_0(export_dir, tmp_path):
    script, exits, out = tmp_path / "ctreduce_cli.py", tmp_path / "exits", tmp_path / "ddp"
    script.write_text(RANK_EXITS)
    exits.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    command = [sys.executable, str(script), "pretrain", "--method", "swav", "--data", str(export_dir),
               "--out", str(out), "--devices", "2", "--epochs", "1", "--batch-size", "4", "preset=cpu",
               "backbone=resnet18", "input_size=32", "accelerator=cpu", "strategy=ddp", "num_workers=0",
               "swav.local_crop_size=16", "swav.n_prototypes=16"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**env, "RANK_EXITS": str(exits)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name: p.read_text() for p in exits.iterdir()} == {"rank0": "0", "rank1": "0"}, proc.stderr[-3000:]
    assert proc.stdout.count("swav resnet18: 1 epochs") == 1  # rank 0 reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["devices"] == 2
    assert summary["images_seen"] == summary["steps"] * 4 * 2 == (48 // 8) * 8
    scaling = summary["optimizer"]["lr_scaling"]  # the learning rate of the global batch of both processes
    assert (scaling["processes"], scaling["global_batch"], scaling["lr"]) == (2, 8, 0.15 * 256 / 128 * 8 / 256)
    assert summary["optimizer"]["lr"] == scaling["lr"]
    missing, _ = torchvision.models.resnet18().load_state_dict(torch.load(out / "backbone.pt"), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize("method", ["swav", "moco", "spark"])
def test_a_paper_preset_run_records_every_resolved_setting(export_dir, tmp_path, method):
    """config.yaml holds every setting as resolved, so a run can be checked against docs/paper-fidelity.md."""
    from ctreduce.config import PretrainConfig

    out = tmp_path / method
    tiny = {"preset": "paper", "method": method, "backbone": "resnet18", "batch_size": 8, "epochs": 1,
            "max_steps": 2, "num_workers": 0, "swav": {"local_crop_size": 16},
            "input_size": 64 if method == "spark" else 32}  # SparK masks 32 px patches: 2x2 of them
    pretrain(make_pretrain_config({**tiny, "data": str(export_dir), "out": str(out)}))
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    resolved = make_pretrain_config({**tiny, "data": str(export_dir), "out": str(out)}).model_dump(mode="json")

    def keys(tree, prefix=""):
        return {f"{prefix}{k}" for k, v in tree.items()} | {
            key for k, v in tree.items() if isinstance(v, dict) for key in keys(v, f"{prefix}{k}.")}

    assert keys(recorded) == keys(resolved) == keys(PretrainConfig().model_dump(mode="json"))
    assert recorded == resolved  # nothing left for the code to fill in silently
    assert (recorded["mean"], recorded["std"]) == (0.1806, 0.1907)  # the paper's fixed statistics
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["mean"], summary["std"]) == (0.1806, 0.1907)
    assert summary["optimizer"]["lr"] > 0 and summary["optimizer"]["groups"] == (2 if method == "spark" else 1)


def several_gpus(monkeypatch, count: int) -> None:
    """CUDA present with ``count`` GPUs, as far as ctreduce and Lightning ask (nothing runs on them)."""
    import lightning_fabric.accelerators.cuda as fabric_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(fabric_cuda, "num_cuda_devices", lambda: count)


@pytest.mark.parametrize(("method", "gpus", "accelerator", "devices", "synchronised"), [
    ("swav", 4, "auto", "auto", "SyncBatchNorm"),  # configs/paper.yaml's devices: auto on a 4-GPU machine
    ("swav", 4, "gpu", -1, "SyncBatchNorm"),
    ("spark", 4, "auto", "auto", "SparseSyncBatchNorm2d"),
    ("swav", 1, "auto", "auto", None),  # one GPU: nothing to synchronise
    ("moco", 4, "auto", "auto", None),  # shuffled BN instead
    ("swav", 4, "cpu", 2, None),  # CPU DDP (gloo): SyncBatchNorm has no CPU kernel
])
def test_batchnorms_are_synchronised_on_several_gpus(export_dir, tmp_path, monkeypatch, method, gpus, accelerator,
                                                     devices, synchronised):
    """The trainer ``pretrain`` builds converts the module before DDP wraps it (``strategy._layer_sync``, applied
    here in place of the fit, which cannot run on mocked GPUs); the record states the learning rate of the global
    batch. A real multi-GPU fit: benchmarks/gpu_check.py."""
    several_gpus(monkeypatch, gpus)
    seen: dict = {}

    def no_fit(trainer, model, *args, **kwargs):
        model.trainer = trainer
        layer_sync = getattr(trainer.strategy, "_layer_sync", None)  # a one-device strategy has none
        converted = layer_sync.apply(model) if layer_sync is not None else model
        seen["norms"] = {type(m).__name__ for m in converted.modules()
                         if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        seen["world"] = trainer.world_size

    monkeypatch.setattr(train_module.pl.Trainer, "fit", no_fit)
    summary = pretrain(settings(export_dir, tmp_path / "run", method=method, accelerator=accelerator, devices=devices,
                                batch_size=4, **({"input_size": 64} if method == "spark" else {})))
    if synchronised is None:
        assert not any("Sync" in name for name in seen["norms"])
    else:
        assert seen["norms"] == {synchronised} | ({"SyncBatchNorm"} if method == "spark" else set())
    processes = 2 if accelerator == "cpu" else gpus
    scaling = summary["optimizer"]["lr_scaling"]
    assert seen["world"] == processes == scaling["processes"]
    base = {"swav": 0.15 * 256 / 128, "moco": 0.015 * 256 / 128, "spark": 2e-4}[method]
    assert scaling == {"rule": "linear: base_lr x global_batch / 256", "base_lr": base, "batch_size": 4,
                       "processes": processes, "global_batch": 4 * processes, "lr": base * 4 * processes / 256}
    assert summary["optimizer"]["lr"] == scaling["lr"]


def test_swav_queue_is_restored_on_resume(export_dir, tmp_path, monkeypatch):
    """The queue as saved with the last checkpoint, pointer and fill count included, is the one the resumed run
    scores against at its first step (official main_swav.py saves and reloads ``queue{rank}.pth``)."""
    from ctreduce.ssl.swav import SwAV

    out = tmp_path / "run"
    queued = {"swav": {**TINY["swav"], "queue_length": 16, "queue_start_epoch": 0}}
    original = crash_in_second_epoch(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(settings(export_dir, out, method="swav", **queued))
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["swav_queue"]
    assert saved["banks"].shape == (1, 2, 16, 64)  # devices, global crops, length, projection dim (cpu preset)
    assert saved["filled"].tolist() == [[6 * 8]] and saved["pointers"].tolist() == [[[0], [0]]]

    first: dict = {}
    real = SwAV.queue_scores

    def recording(self, high_z):
        if not first:
            first.update(banks=torch.stack([q.bank.clone() for q in self.queues]).cpu(),
                         pointers=torch.stack([q.bank_ptr.clone() for q in self.queues]).cpu(),
                         filled=self._queue_filled)
            scores = real(self, high_z)
            first["used"] = scores is not None
            return scores
        return real(self, high_z)

    monkeypatch.setattr(train_module.EpochMetrics, "on_train_epoch_start", original)
    monkeypatch.setattr(SwAV, "queue_scores", recording)
    summary = pretrain(settings(export_dir, out, method="swav", **queued))
    assert summary["resumed"] and summary["status"] == "finished"
    assert torch.equal(first["banks"], saved["banks"][0]) and torch.equal(first["pointers"], saved["pointers"][0])
    assert first["filled"] == 48 and first["used"]  # full at once: no refill from zero


def test_a_run_records_how_long_it_waited_for_data(export_dir, tmp_path, monkeypatch):
    """summary.json ``loader.data_wait_fraction`` (and each epoch's in metrics.jsonl): near 1 when the loader sets
    the pace (each slice here takes 50 ms to load, 0.4 s a batch), and lower when it does not; and the loader's own
    images/s, from the seconds it spent on each slice: at most 20 at 50 ms a slice."""
    import time

    from ctreduce.ssl.data import SliceDataset

    with warnings.catch_warnings():
        warnings.simplefilter("error", train_module.LoaderBoundWarning)  # a loader that keeps up: no warning
        fast = pretrain(settings(export_dir, tmp_path / "fast", method="spark", epochs=1))
    real = SliceDataset.raw

    def slow(self, index):
        time.sleep(0.05)
        return real(self, index)

    monkeypatch.setattr(SliceDataset, "raw", slow)
    with pytest.warns(train_module.LoaderBoundWarning, match=r"epoch 0: \d+% of it spent waiting for data.*"
                                                               r"1 worker\(s\) make ~1\d\.\d+ images/s.*num_workers"):
        slowed = pretrain(settings(export_dir, tmp_path / "slow", method="spark", epochs=1))
    wait, waited = fast["loader"], slowed["loader"]
    assert wait["workers"] == waited["workers"] == 0
    assert waited["data_wait_s"] >= 48 * 0.05 * 0.9  # every slice's sleep, in the loop's wait
    assert waited["data_wait_fraction"] > 0.6 and 0 <= wait["data_wait_fraction"] < waited["data_wait_fraction"] - 0.3
    assert 10 < waited["images_per_s"] == waited["images_per_s_per_worker"] <= 20  # one worker: the training process
    assert wait["images_per_s"] > 10 * waited["images_per_s"]
    epoch = json.loads((tmp_path / "slow" / "metrics.jsonl").read_text().splitlines()[0])
    assert epoch["data_wait_fraction"] == pytest.approx(waited["data_wait_fraction"], abs=0.05)
    assert epoch["loader_images_per_s"] == pytest.approx(waited["images_per_s"], rel=0.01)


@pytest.mark.parametrize("method", ["moco", "swav", "spark"])
def test_views_made_on_the_device_train_and_are_recorded(export_dir, tmp_path, method):
    """``views_on: device``: the loader hands over uint8 slices, the step makes the method's views from the batch
    (on the CPU here: the same code on a GPU), the run trains and says where its views were made; ``auto`` on the
    CPU makes them in the loader."""
    from ctreduce.ssl import base

    made = []
    real = base.BatchViews.__call__

    def spy(self, x):
        made.append((x.dtype, tuple(x.shape)))
        return real(self, x)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(base.BatchViews, "__call__", spy)
        summary = pretrain(settings(export_dir, tmp_path / "device", method=method, epochs=1, views_on="device"))
    assert summary["status"] == "finished" and summary["loader"]["views_on"] == "device"
    assert made == [(torch.uint8, (8, 1, 40, 40))] * (48 // 8)
    assert np.isfinite(json.loads((tmp_path / "device" / "metrics.jsonl").read_text().splitlines()[0])["loss"])
    auto = pretrain(settings(export_dir, tmp_path / "auto", method=method, epochs=1, max_steps=1))
    assert auto["loader"]["views_on"] == "loader"


def test_device_views_need_slices_of_one_size(tmp_path):
    """A folder of PNGs of any size cannot be stacked into batches: refused before training, saying what to do."""
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, size in enumerate([40, 40, 48] * 4):
        Image.fromarray(np.full((size, size), 10 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(PretrainError, match=r"views_on: device needs slices of one size.*pngs.*views_on: loader"):
        pretrain(settings(folder, tmp_path / "out", views_on="device"))


def test_auto_makes_the_views_on_a_gpu_where_it_can(export_dir, tmp_path):
    """``views_on: auto``: on the device on a GPU, for an export of one size and a method with batch views; in the
    loader on the CPU, for PNGs of any size, or for a method (a plug-in) that defines only per-slice views."""
    from ctreduce.ssl.base import SSLMethod
    from ctreduce.ssl.moco import MoCoV2

    class LoaderOnly(MoCoV2):
        batch_views = SSLMethod.batch_views

    folder = tmp_path / "pngs"
    folder.mkdir()
    gpu, cpu = True, False
    config = settings(export_dir, tmp_path / "o", method="moco", mean=0.3, std=0.2)
    assert isinstance(train_module._device_views(config, gpu, MoCoV2), train_module.BatchViews)
    assert train_module._device_views(config, cpu, MoCoV2) is None
    assert train_module._device_views(config.model_copy(update={"data": str(folder)}), gpu, MoCoV2) is None
    assert train_module._device_views(config, gpu, LoaderOnly) is None
    assert train_module._device_views(config.model_copy(update={"views_on": "loader"}), gpu, MoCoV2) is None
    with pytest.raises(PretrainError, match="makes its views in the loader only"):
        train_module._device_views(config.model_copy(update={"views_on": "device"}), gpu, LoaderOnly)
    with pytest.raises(SettingsError, match="views_on"):
        settings(export_dir, tmp_path / "o", views_on="gpu")
    # what a run whose loader sets the pace is told to try, as its set-up allows
    assert "views_on=device" in train_module._remedies("loader", gpu)
    assert "views_on" not in train_module._remedies("loader", cpu) + train_module._remedies("device", gpu)


def test_each_process_and_each_resume_draws_its_own_device_views(export_dir, tmp_path):
    """The device views are reseeded at the start of training from the seed, the process's rank and the step it
    starts from: two ranks, or a resumed session, do not repeat each other's crops."""
    from unittest.mock import PropertyMock, patch

    from ctreduce.ssl.base import SSLMethod
    from ctreduce.ssl.moco import MoCoV2

    config = settings(export_dir, tmp_path / "o", method="moco", mean=0.3, std=0.2)
    module = MoCoV2(config, steps_per_epoch=6, dataset_size=48)
    module.device_views = train_module.BatchViews(MoCoV2.batch_views(config, 0.3, 0.2), seed=config.seed)
    states = []
    for rank, step in ((0, 0), (1, 0), (0, 12), (0, 0)):
        with patch.object(SSLMethod, "global_rank", new_callable=PropertyMock, return_value=rank), \
                patch.object(SSLMethod, "global_step", new_callable=PropertyMock, return_value=step):
            module.on_train_start()
        states.append(module.device_views.generator.get_state())
    assert not torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])
    assert torch.equal(states[0], states[3])  # the same process at the same step: the same draws
