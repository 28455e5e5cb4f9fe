"""Downstream evaluation of a backbone: the paper's fine-tuning protocol, linear probe, kNN.

Fine-tuning (Wolf et al. 2024): torchvision ResNet initialised from the backbone, a new linear
head, Adam (lr 1e-4, weight decay 5e-4), batch 64, 70 epochs; the first 10 epochs train only
the head (BatchNorm layers stay trainable), then every layer. The epoch with the best
validation accuracy (the first to reach the maximum) is kept and scored on the test split.
Every seed is a full repetition.

Training is :class:`.module.FinetuneModule` on the Lightning set-up shared with pre-training
(:mod:`ctreduce.lightning_setup`): ``devices`` per machine (DDP when more than one, gloo on CPU; the batch
size is per device), ``precision`` (``auto``: 16-mixed on a GPU, 32-true on CPU), CSV and TensorBoard
logs, a progress bar, a ``ModelCheckpoint`` keeping the best validation epoch and one keeping the
last, from which a rerun of the same command continues (``resume``). CPU threads follow
:func:`ctreduce.core.devices.thread_policy`. The folder layout is :mod:`ctreduce.store.finetune`'s.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from .. import backbones, lightning_setup
from ..backbones import BackboneError, Normalisation
from ..config import FinetuneConfig
from ..core.devices import DeviceError, ThreadPolicy, device_name, resolve_device
from ..core.versions import library_versions
from ..store import finetune as store_finetune
from ..store.finetune import BEST, CHECKPOINTS, HISTORY, LAST, LOGS, MODEL, FinetuneRun, FinetuneRunError
from ..store.places import check_output_place
from ..tasks.data import DownstreamData
from ..tasks.load import load_task
from ..tasks.spec import task_paths
from . import protocol
from .datasets import ImageDataset
from .evaluate import save_predictions, score, write_results
from .module import EpochHistory, FinetuneModule, knn_probabilities

# What a fine-tune's numbers depend on, recorded in its run.json
LIBRARIES = ("ctreduce", "torch", "torchvision", "pytorch-lightning", "scikit-learn")


class FinetuneError(ValueError):
    """Settings, data or initial weights that cannot be used; raised before any training."""


# --- model and data ----------------------------------------------------------------------------


def build_model(config: FinetuneConfig, n_classes: int) -> tuple[nn.Module, Normalisation]:
    """The ResNet of ``config.init`` (:func:`ctreduce.backbones.load`) with a new linear head, and the input
    statistics it was trained with: the pre-training run's when initialised from one, ImageNet's otherwise."""
    try:
        model, norm = backbones.load(config.init, config.backbone)
    except BackboneError as exc:
        raise FinetuneError(str(exc)) from exc
    model.fc = nn.Linear(backbones.feature_dim(model), n_classes)
    return model, norm


def normalisation(config: FinetuneConfig, data: DownstreamData, pretraining: Normalisation) -> Normalisation:
    """The input statistics of a fine-tune: ``config.mean``/``std`` (grey) when both are set, else
    ``config.normalisation``: ``task`` (the paper notebook's constants for its tasks, the training split's own
    statistics for any other), ``train``, ``pretraining`` (``pretraining``: the initial weights'), ``imagenet``
    or ``paper:<task>``."""
    if config.mean is not None and config.std is not None:
        return Normalisation.grey(config.mean, config.std, "config mean/std")
    choice = config.normalisation
    if choice == "task":
        task = protocol.paper_task(config.task)
        choice = f"paper:{task}" if task is not None else "train"
    if choice.startswith("paper:"):
        return protocol.PAPER_NORMALISATION[choice.removeprefix("paper:")]
    if choice == "train":
        try:
            return protocol.split_statistics(data.train.images, f"train split of {data.name}")
        except ValueError as exc:
            raise FinetuneError(str(exc)) from exc
    return backbones.IMAGENET if choice == "imagenet" else pretraining


def transforms(config: FinetuneConfig, norm: Normalisation, train: bool):
    """uint8 (1, H, W) -> float on [0, 1], transposed where the task's pipeline is (``protocol.Pipeline``),
    resized to ``input_size``, its flips when training, three grey copies normalised per channel."""
    from torchvision.transforms import v2

    pipeline = protocol.pipeline_for(config.transforms, config.task)
    size = (config.input_size, config.input_size)
    steps = [v2.ToDtype(torch.float32, scale=True)]
    if pipeline.transposed:
        steps.append(v2.Lambda(_transpose))
    if pipeline.resize == "area":  # MONAI's Resize default: adaptive average pooling
        steps.append(v2.Lambda(functools.partial(_area_resize, size=size)))
    else:
        steps.append(v2.Resize(size, antialias=True))
    if train and pipeline.flip_p:
        steps.append(v2.RandomVerticalFlip(pipeline.flip_p))  # the first spatial axis, as RandFlip(spatial_axis=0)
    if train and pipeline.hv_p:
        steps += [v2.RandomHorizontalFlip(pipeline.hv_p), v2.RandomVerticalFlip(pipeline.hv_p)]
    steps += [v2.Lambda(_three_channels), v2.Normalize(list(norm.mean), list(norm.std))]
    return v2.Compose(steps)


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2).contiguous()


def _area_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return nn.functional.interpolate(x[None], size=size, mode="area")[0]


def _three_channels(x: torch.Tensor) -> torch.Tensor:
    return x.expand(3, *x.shape[1:])


def _loaders(config: FinetuneConfig, data: DownstreamData, norm: Normalisation, seed: int,
             threads: ThreadPolicy) -> dict[str, torch.utils.data.DataLoader]:
    """``train`` (shuffled with ``seed``, augmented) and ``train_eval``/``val``/``test`` in order, unaugmented."""
    common = {"batch_size": config.batch_size, "num_workers": threads.loader_workers,
              "persistent_workers": threads.loader_workers > 0, "worker_init_fn": threads.worker_init,
              "pin_memory": torch.cuda.is_available()}
    loaders = {"train": torch.utils.data.DataLoader(ImageDataset(data.train, transforms(config, norm, True)),
                                                    shuffle=True, generator=torch.Generator().manual_seed(seed),
                                                    **common)}
    for name, split in (("train_eval", data.train), ("val", data.val), ("test", data.test)):
        loaders[name] = torch.utils.data.DataLoader(ImageDataset(split, transforms(config, norm, False)),
                                                    shuffle=False, **common)
    return loaders


def trainer_settings(config: FinetuneConfig) -> dict[str, Any]:
    """Lightning's accelerator, devices, strategy and precision for ``config.device``/``devices``/``precision``."""
    try:
        device = device_name(config.device)
        accelerator = {"auto": "auto", "cpu": "cpu", "mps": "mps"}.get(device, "gpu")
        devices = config.devices
        if ":" in device:  # cuda:N names one GPU
            if devices != 1:
                raise FinetuneError(f"device {device} names one GPU; use device=cuda devices={devices} for several")
            devices = [int(device.split(":")[1])]
        return lightning_setup.resolve(accelerator=accelerator, devices=devices, precision=config.precision,
                                       sync_batchnorm=True)
    except (DeviceError, ValueError) as exc:
        raise FinetuneError(str(exc)) from exc


# --- one seed ----------------------------------------------------------------------------------


def fit_best(module: FinetuneModule, train, val, folder: Path, settings: dict[str, Any], *, epochs: int,
             resume: bool = False, threads: ThreadPolicy | None = None) -> tuple[int, bool] | None:
    """Train ``module`` for ``epochs`` on the set-up ``settings`` (:func:`ctreduce.lightning_setup.resolve`), logs and
    checkpoints under ``folder``, from ``folder/checkpoints/last.ckpt`` when ``resume`` and it exists; then load
    the best validation epoch's weights into ``module``. (best epoch, resumed) on rank 0, None on other ranks."""
    best = pl.callbacks.ModelCheckpoint(dirpath=folder / CHECKPOINTS, filename=BEST, monitor="val_accuracy",
                                        mode="max", save_top_k=1, save_weights_only=True,
                                        enable_version_counter=False)
    last = pl.callbacks.ModelCheckpoint(dirpath=folder / CHECKPOINTS, filename=LAST, save_top_k=1,
                                        enable_version_counter=False)
    trainer = lightning_setup.build(settings, root=folder, logs=folder / LOGS,
                                    callbacks=[EpochHistory(folder / HISTORY), best, last], max_epochs=epochs,
                                    steps_per_epoch=len(train), num_sanity_val_steps=0, enable_model_summary=False)
    checkpoint = folder / CHECKPOINTS / f"{LAST}.ckpt"
    checkpoint = checkpoint if resume and checkpoint.exists() else None
    with threads.handed_on() if threads is not None else nullcontext():
        trainer.fit(module, train, val, ckpt_path=checkpoint)
    if not trainer.is_global_zero:
        return None
    # Our own file (Lightning's checkpoint holds more than tensors), so a full load is safe.
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    return int(state["epoch"]), checkpoint is not None


def run_seed(config: FinetuneConfig, data: DownstreamData, seed: int, run: FinetuneRun, settings: dict[str, Any],
             threads: ThreadPolicy, norm: Normalisation) -> dict[str, Any] | None:
    """Train (or, for ``knn``, embed) and score one seed, its inputs normalised with ``norm`` (:func:`normalisation`);
    a seed an earlier session finished is read back. None on the other DDP ranks (rank 0 scores)."""
    folder = run.seed_dir(seed)
    finished = store_finetune.seed_metrics(folder) if config.resume else None
    if finished is not None:
        return finished
    pl.seed_everything(seed, verbose=False)
    n_classes = len(data.classes)
    model, _ = build_model(config, n_classes)
    module = FinetuneModule(model, n_classes, mode=config.mode, lr=config.lr, weight_decay=config.weight_decay,
                            head_only_epochs=config.head_only, schedule=config.schedule)
    loaders = _loaders(config, data, norm, seed, threads)
    start = time.perf_counter()
    extra: dict[str, Any] = {"best_epoch": None}
    if config.mode == "knn":
        module.to(resolve_device(config.device))
        train_f, train_y = module.features(loaders["train_eval"])
        test_f, test_y = module.features(loaders["test"])
        prob, labels = knn_probabilities(train_f, train_y, test_f, config.knn_k, n_classes), test_y.numpy()
    else:
        fitted = fit_best(module, loaders["train"], loaders["val"], folder, settings, epochs=config.epochs,
                          resume=config.resume, threads=threads)
        if fitted is None:
            return None
        torch.save(module.model.state_dict(), folder / MODEL)
        extra = {"best_epoch": fitted[0], "resumed": fitted[1], "lr_by_epoch": lr_by_epoch(folder / HISTORY)}
        prob, labels = module.probabilities(loaders["test"])
    folder.mkdir(parents=True, exist_ok=True)
    save_predictions(folder, list(data.test.names), labels, prob, data.classes)
    result = score(folder, data.classes, labels, prob, positive_label=config.positive_label,
                   bootstrap=config.bootstrap, seed=seed,
                   extra={**extra, "seconds": round(time.perf_counter() - start, 2), "normalisation": norm.as_dict(),
                          "transforms": protocol.pipeline_for(config.transforms, config.task).as_dict(),
                          "schedule": config.schedule})
    shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)  # model.pt holds the best epoch; metrics.json marks it done
    return result


def lr_by_epoch(history: Path) -> list[float]:
    """The learning rate every epoch trained at (epochs counted from 0), as ``EpochHistory`` recorded it."""
    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    return [float(row["lr"]) for row in sorted(rows, key=lambda row: row["epoch"])]


# --- the run -----------------------------------------------------------------------------------


def finetune(config: FinetuneConfig | None = None, **values: Any) -> dict[str, Any]:
    """Run the protocol for every seed; returns per-seed results and mean +- sd (an empty dict on the other
    processes of a DDP run: rank 0 scores and writes).

    A rerun into the same folder with the same settings (``resume``) keeps the finished seeds and continues
    an interrupted one from its last checkpoint; other settings there are refused; ``resume=False`` starts over.
    """
    config = config if config is not None and not values else FinetuneConfig(
        **{**(config.model_dump() if config else {}), **values})
    if not config.out:
        raise FinetuneError("no output folder: pass --out DIR")
    if not config.task:
        raise FinetuneError("no task: pass --task (a folder, a COVID-CT root or a MedMNIST .npz)")
    try:  # the task and the initial weights are inputs: never written into
        weights = [config.init] if Path(config.init).is_file() else []
        check_output_place(config.out, [*task_paths(config.task), *weights])
    except ValueError as exc:
        raise FinetuneError(str(exc)) from exc
    try:
        data = load_task(config.task)
    except (FileNotFoundError, ValueError) as exc:
        raise FinetuneError(str(exc)) from exc
    # bad initial weights fail here, before training; the statistics are the same for every seed
    norm = normalisation(config, data, build_model(config, len(data.classes))[1])
    settings = trainer_settings(config)
    run = FinetuneRun(config.out)
    rank = lightning_setup.launched_rank()
    # Under DDP Lightning re-runs this command for the other devices once rank 0 trains: only rank 0 writes here.
    if rank == 0:
        try:
            run.prepare(config.model_dump(mode="json"), config.resume)
        except FinetuneRunError as exc:
            raise FinetuneError(str(exc)) from exc
    threads = lightning_setup.threads(settings, config.num_workers)
    setup = {"trainer": {k: settings[k] for k in ("accelerator", "devices", "strategy", "precision")},
             "threads": threads.as_dict()}
    if rank == 0:
        run.write_run_info({**setup, "versions": library_versions(LIBRARIES)})
    per_seed = [run_seed(config, data, seed, run, settings, threads, norm) for seed in config.seeds]
    if rank != 0:
        return {}
    info = {"task": data.name, "classes": list(data.classes), "init": config.init, "mode": config.mode,
            "seeds": list(config.seeds), "epochs": config.epochs, "head_only_epochs": config.head_only,
            "notes": config.notes(),
            "split_sizes": {k: len(getattr(data, k).labels) for k in ("train", "val", "test")}, **setup}
    leakage = pretraining_leakage(config.init, data)
    if leakage is not None:
        info["leakage"] = leakage
    return write_results(run, info, per_seed)


def pretraining_leakage(init: str, data: DownstreamData) -> dict[str, Any] | None:
    """For a backbone pre-trained by ``ctreduce pretrain``: task images within the dHash threshold of
    a slice it was pre-trained on (``ctreduce leakage``), per split, and test images in the training
    split. A warning when test images leak: their metrics are optimistic. None for other inits."""
    from ..curate.leakage import leakage_of
    from ..store.pretrain import PretrainRun

    pretrain_data = PretrainRun(init).config().get("data") if Path(init).is_dir() else None
    if not pretrain_data or not Path(pretrain_data).exists():
        return None
    found = leakage_of(data, pretrain_data).summary()
    test, in_train = found["leaked"]["test"], found["test_in_train"]
    if test or in_train:
        warnings.warn(f"{test} of {found['images']['test']} test images of {data.name} lie within "
                      f"{found['threshold']} bits (dHash) of a slice the backbone was pre-trained on, {in_train} of a "
                      "training image: their metrics are optimistic (ctreduce leakage lists them)", LeakageWarning,
                      stacklevel=2)
    return found


class LeakageWarning(UserWarning):
    """Test images of a downstream task also sit in the pre-training data or the training split."""
