"""``ctreduce pretrain``: one run folder for every method (``ctreduce.store.pretrain`` owns its
layout), resumable, on CPU or GPUs.
"""

from __future__ import annotations

import inspect
import json
import time
import warnings
from importlib import import_module
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from .. import lightning_setup
from ..config import PretrainConfig, make_pretrain_config, pretrain_method
from ..core.validation import SettingsError
from ..core.versions import library_versions
from ..lightning_setup import launched_rank
from ..store.places import check_output_place
from ..store.pretrain import LAST, PretrainRun, PretrainRunError
from .base import SSLMethod
from .batch_views import BatchViews
from .data import ExportError, SliceDataset, Timed, export_info, intensity_stats, open_export

__all__ = ["LoaderBoundWarning", "PretrainError", "TrainingStopped", "launched_rank", "method_class", "pretrain"]


class PretrainError(ValueError):
    """A problem found before training starts: data, settings, run folder."""


class TrainingStopped(PretrainError):
    """Training started but could not go on (non-finite loss); the last checkpoint is kept."""


def method_class(name: str) -> type[SSLMethod]:
    """The implementation of the registered method ``name`` (``ctreduce.config.register_pretrain_method``): its
    class, imported here when it was registered as "module:Class"."""
    try:
        implementation = pretrain_method(name).implementation
    except SettingsError as exc:
        raise PretrainError(str(exc)) from exc
    if isinstance(implementation, str):
        module, _, attribute = implementation.partition(":")
        try:
            implementation = getattr(import_module(module), attribute)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a library the method needs: said by the caller as a missing extra
                raise
            raise PretrainError(f"pre-training method {name!r}: no module {module!r} for its implementation") from exc
        except AttributeError as exc:
            raise PretrainError(f"pre-training method {name!r}: {module} has no {attribute!r}") from exc
    if not (isinstance(implementation, type) and issubclass(implementation, SSLMethod)):
        raise PretrainError(f"pre-training method {name!r}: its implementation {implementation!r} is not an "
                            "SSLMethod subclass")
    return implementation


# What a pre-training run depends on, recorded in its versions.json with the CUDA build of torch
LIBRARIES = ("ctreduce", "torch", "torchvision", "pytorch-lightning", "lightly", "numpy")


# --- callbacks ---------------------------------------------------------------------------------


class NonFiniteLossGuard(pl.Callback):
    """Stop at the first NaN/infinite loss; the last checkpoint (previous epoch) stays intact."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss.detach()).all():
            raise TrainingStopped(
                f"loss became {float(loss.detach())} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}; stopped. The last good checkpoint is kept "
                "(checkpoints/last.ckpt). Try a lower lr, more warm-up epochs or precision=32."
            )


class LoaderBoundWarning(UserWarning):
    """The training loop spent much of an epoch waiting for the data loader."""


class DataWait(pl.Callback):
    """The time the training loop waits for the data loader: from the end of one training step (or the start of
    the epoch) to the start of the next, against the epoch's whole time. A fraction near 0: the model sets the
    pace; near 1: the loader does (more loader workers, or lighter views, would speed the run up).

    Also the loader's own pace, from :class:`~ctreduce.ssl.data.Timed` batches: the seconds its workers spent
    reading and transforming each slice, hence the images/s one worker makes and ``workers`` of them could make
    (each with a core of its own), beside the images/s the training consumes."""

    SLOW = 0.25  # the first epoch waiting longer than this fraction for data says so (once), with the remedies

    def __init__(self, workers: int = 0, remedies: str = "more num_workers, each on a core of its own") -> None:
        self.workers = max(1, workers)  # 0 workers: the training process reads the slices itself
        self.remedies = remedies
        self._warned = False
        self.wait_s = self.total_s = 0.0  # this session, every epoch
        self.epoch_wait_s = 0.0
        self._epoch_start = self._ready = 0.0
        self.item_s = self.epoch_item_s = 0.0
        self.items = self.epoch_items = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._ready = time.perf_counter()
        self.epoch_wait_s = self.epoch_item_s = 0.0
        self.epoch_items = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.epoch_wait_s += time.perf_counter() - self._ready
        if isinstance(batch, Timed):  # summed where the batch is, read at the epoch's end: no sync per step
            self.epoch_item_s = batch.seconds.sum() + self.epoch_item_s
            self.epoch_items += batch.seconds.numel()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._ready = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.wait_s += self.epoch_wait_s
        self.total_s += time.perf_counter() - self._epoch_start
        self.epoch_item_s = float(self.epoch_item_s)
        self.item_s += self.epoch_item_s
        self.items += self.epoch_items
        fraction = self.epoch_fraction or 0.0
        if fraction > self.SLOW and not self._warned and trainer.is_global_zero:
            self._warned = True
            rate = self.loader_images_per_s(self.epoch_items, self.epoch_item_s)
            warnings.warn(f"epoch {trainer.current_epoch}: {fraction:.0%} of it spent waiting for data (the loader's "
                          f"{self.workers} worker(s) make ~{rate} images/s): the loader, not the model, sets the "
                          f"pace. Remedies: {self.remedies}.", LoaderBoundWarning, stacklevel=1)

    @property
    def epoch_fraction(self) -> float | None:
        seconds = time.perf_counter() - self._epoch_start
        return round(self.epoch_wait_s / seconds, 4) if seconds > 0 else None

    def loader_images_per_s(self, items: int, seconds: float) -> float | None:
        """What the loader's workers together make per second (a worker's rate times the workers)."""
        return round(items / seconds * self.workers, 2) if seconds > 0 else None

    def record(self) -> dict[str, Any]:
        """What summary.json says of the loader for this session."""
        return {"data_wait_s": round(self.wait_s, 3),
                "data_wait_fraction": round(self.wait_s / self.total_s, 4) if self.total_s > 0 else None,
                "images_per_s_per_worker": round(self.items / self.item_s, 2) if self.item_s > 0 else None,
                "images_per_s": self.loader_images_per_s(self.items, self.item_s)}


class EpochMetrics(pl.Callback):
    """Appends loss, lr, images/s, epoch time and the fraction of it spent waiting for data (``wait``) to
    metrics.jsonl after every epoch."""

    def __init__(self, path: Path, images_per_step: int, wait: DataWait) -> None:
        self.path = path
        self.images_per_step = images_per_step
        self.wait = wait
        self._start = 0.0
        self._step0 = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self._step0 = trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._start
        steps = trainer.global_step - self._step0
        metrics = trainer.callback_metrics
        loss = metrics.get("loss_epoch", metrics.get("loss"))
        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "loss": None if loss is None else float(loss),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "images_per_s": round(steps * self.images_per_step / seconds, 2) if seconds > 0 else None,
            "epoch_s": round(seconds, 3),
            "data_wait_fraction": self.wait.epoch_fraction,
            "loader_images_per_s": self.wait.loader_images_per_s(self.wait.epoch_items, self.wait.epoch_item_s),
        }
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


# --- the run -----------------------------------------------------------------------------------


def _check(config: PretrainConfig, run: PretrainRun, overwrite: bool) -> None:
    """Refuse what cannot run before any data is read: missing paths, a folder holding another method's run
    (named first: the method is what differs, not the dozen settings that follow from it)."""
    if config.missing():
        raise PretrainError(config.missing())
    try:  # the export is an input: never written into
        check_output_place(config.out, [config.data])
    except ValueError as exc:
        raise PretrainError(str(exc)) from exc
    recorded = run.config().get("method")
    if recorded is not None and recorded != config.method and not overwrite:
        raise PretrainError(f"{run.path} holds a {recorded} run, not {config.method}: use another --out, or "
                            "--overwrite to replace it")


def _finished(run: PretrainRun, config: PretrainConfig) -> dict[str, Any] | None:
    """The summary of this very run when it already finished in ``run`` (same resolved settings, backbone
    written): a rerun has nothing to train."""
    summary = run.summary()
    if (summary.get("status") == "finished" and run.backbone.is_file()
            and run.config() == config.model_dump(mode="json")):
        return {**summary, "already_finished": True}
    return None


def _trainer_settings(config: PretrainConfig, method: type) -> dict[str, Any]:
    """The shared Lightning set-up for ``config`` (SyncBN on several GPUs where the method asks for it: SwAV, and
    SparK, which synchronises its own sparse BNs; MoCo relies on shuffled BN) plus SparK's global gradient-norm
    clipping (``grad_clip``)."""
    settings = lightning_setup.resolve(accelerator=config.accelerator, devices=config.devices,
                                       strategy=config.strategy, precision=config.precision,
                                       num_nodes=config.num_nodes,
                                       sync_batchnorm=getattr(method, "sync_batchnorm", False))
    return {**settings, "gradient_clip_val": config.grad_clip, "gradient_clip_algorithm": "norm"}


def _device_views(config: PretrainConfig, on_gpu: bool, cls: type[SSLMethod]) -> BatchViews | None:
    """The views made on the device, or None for views made in the loader: ``views_on``, "auto" being the device
    on a GPU where it can be. On the device the slices are stacked into batches, so they must be of one size
    (an export written at one size: ``export --size``), and the method must define ``batch_views``."""
    if config.views_on == "loader" or (config.views_on == "auto" and not on_gpu):
        return None
    views = cls.batch_views(config, config.mean, config.std)
    fixed = export_info(config.data).get("size") is not None
    if config.views_on == "auto":
        return BatchViews(views, seed=config.seed) if fixed and views is not None else None
    if views is None:
        raise PretrainError(f"views_on: device, but the method {config.method} makes its views in the loader only "
                            "(no batch_views); use views_on: loader")
    if not fixed:
        raise PretrainError(f"views_on: device needs slices of one size, and {config.data} is not an export written "
                            "at one size (ctreduce export --size N); use views_on: loader")
    return BatchViews(views, seed=config.seed)


def _remedies(views_on: str, on_gpu: bool) -> str:
    """What speeds up a run whose loader sets the pace, as its set-up allows."""
    if views_on == "device":
        return "more num_workers or a faster disk (the loader only reads the slices)"
    if on_gpu:
        return "views_on=device (the views made on the GPU), or more num_workers, each on a core of its own"
    return "more num_workers, each on a core of its own (on a CPU the loader and the model share its cores)"


def pretrain(config: PretrainConfig | None = None, *, overwrite: bool = False, **values: Any) -> dict[str, Any]:
    """Pre-train ``config.method`` on an export folder; returns the run summary.

    Rerunning the same configuration into the same folder continues from
    ``checkpoints/last.ckpt`` (a finished run returns its summary with ``already_finished``, nothing trained);
    another configuration there is refused unless ``overwrite``.
    """
    if config is None:
        config = make_pretrain_config(values)
    elif values:
        config = make_pretrain_config({**config.model_dump(), **values})
    run = PretrainRun(config.out)
    _check(config, run, overwrite)
    try:
        raw = open_export(config.data)
    except ExportError as exc:
        raise PretrainError(str(exc)) from exc
    cls = method_class(config.method)
    try:
        settings = _trainer_settings(config, cls)
    except ValueError as exc:  # an accelerator that is not there
        raise PretrainError(str(exc)) from exc
    world = lightning_setup.world_size(settings)
    if len(raw) < config.batch_size * world:
        raise PretrainError(
            f"the export {config.data} has {len(raw)} slices, fewer than one batch "
            f"({config.batch_size} x {world} device(s)); lower --batch-size"
        )
    if config.mean is None or config.std is None:
        mean, std = intensity_stats(raw, seed=config.seed)
        config = config.model_copy(update={"mean": config.mean or round(mean, 5), "std": config.std or round(std, 5)})
    finished = None if overwrite else _finished(run, config)
    if finished is not None:
        return finished

    ckpt = run.last_checkpoint
    # Under strategy "ddp" Lightning re-runs this command once per extra device: rank 0 has prepared the
    # run folder before launching them, and another rank must not check, clear or rewrite it meanwhile.
    if launched_rank() == 0:
        try:
            run.prepare(config.model_dump(mode="json"),
                        {**library_versions(LIBRARIES), "cuda": torch.version.cuda or "none"}, overwrite)
        except PretrainRunError as exc:
            raise PretrainError(str(exc)) from exc

    pl.seed_everything(config.seed, workers=True)
    threads = lightning_setup.threads(settings, config.num_workers)
    on_gpu = settings["accelerator"] in ("gpu", "cuda")
    device_views = _device_views(config, on_gpu, cls)
    views_on = "loader" if device_views is None else "device"
    # On the device the loader hands over uint8 slices, stacked; the views are made in the training step.
    dataset = open_export(config.data, None if device_views is not None else cls.views(config, config.mean, config.std),
                          timed=True)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
        num_workers=threads.loader_workers, persistent_workers=threads.loader_workers > 0,
        worker_init_fn=threads.worker_init, pin_memory=torch.cuda.is_available(),
    )
    steps_per_epoch = len(dataset) // (config.batch_size * world)
    extra = {"dataset_size": len(dataset)} if "dataset_size" in inspect.signature(cls).parameters else {}
    module = cls(config, steps_per_epoch, **extra)
    module.device_views = device_views
    callbacks: list[pl.Callback] = [
        # One file, rewritten after every epoch: the newest checkpoint is the one to resume from.
        pl.callbacks.ModelCheckpoint(dirpath=run.checkpoints, filename=LAST, save_top_k=1,
                                     every_n_epochs=1, save_on_train_epoch_end=True,
                                     enable_version_counter=False),
        NonFiniteLossGuard(),
        wait := DataWait(threads.loader_workers, _remedies(views_on, on_gpu)),
        EpochMetrics(run.metrics, config.batch_size * world, wait),
        *module.callbacks(),
    ]
    trainer = lightning_setup.build(settings, root=run.path, logs=run.logs, callbacks=callbacks,
                                    max_epochs=config.epochs, max_steps=config.max_steps,
                                    steps_per_epoch=steps_per_epoch, log_every_n_steps=config.log_every_n_steps)
    resume = ckpt if ckpt.exists() else None
    # Read before training: at its end rank 0 rewrites summary.json while the other ranks build their summary.
    earlier = run.summary() if resume is not None else {}
    start, cpu_start = time.perf_counter(), time.process_time()
    status = "running"
    try:
        with threads.handed_on():
            trainer.fit(module, loader, ckpt_path=resume)
        status = "interrupted" if trainer.interrupted else "finished"
    except TrainingStopped:
        status = "stopped: non-finite loss"
        raise
    except BaseException as exc:
        status = f"interrupted ({type(exc).__name__}); rerun the same command to resume"
        raise
    finally:
        seconds = time.perf_counter() - start
        cpu_seconds = earlier.get("cpu_time_s", 0.0) + time.process_time() - cpu_start
        # Every rank returns the same summary (the CLI runs on every rank under "ddp"); rank 0 writes the files.
        kind, lr, wd = module.optimiser_settings()  # as resolved for this world size
        summary = {**_summary(config, trainer, dataset, earlier.get("wall_time_s", 0.0), seconds, settings,
                              status, resume),
                   # CPU time of this training process (all its threads): comparable between runs whose thread
                   # counts differ, where wall time is not
                   "cpu_time_s": round(cpu_seconds, 2),
                   "optimizer": {"kind": kind, "lr": lr, "weight_decay": wd,
                                 "groups": len(module.parameter_groups(wd)), "lr_scaling": module.lr_scaling()},
                   "threads": threads.as_dict(),
                   "loader": {"workers": threads.loader_workers, "views_on": views_on, **wait.record()},
                   **module.summary_extra()}
        if trainer.is_global_zero:
            if status == "finished":
                torch.save(module.export_backbone(), run.backbone)
            run.write_summary(summary)
    return summary


def _summary(config: PretrainConfig, trainer: pl.Trainer, dataset: SliceDataset, earlier_s: float, seconds: float,
             settings: dict[str, Any], status: str, resumed_from: Path | None) -> dict[str, Any]:
    total_seconds = earlier_s + seconds
    gpus = trainer.num_devices * trainer.num_nodes if settings["accelerator"] == "gpu" else 0
    steps = trainer.global_step
    info = export_info(config.data)
    return {
        "status": status,
        "method": config.method,
        "backbone": config.backbone,
        "data": config.data,
        "dataset_slices": len(dataset),
        # the version this session trained on (the export may have grown since): what reads the same slices again
        "export": {**{k: info.get(k) for k in ("run_dir", "format", "size", "intensity")},
                   "slices": len(dataset), "version": dataset.version} if info else {},
        "epochs_completed": trainer.current_epoch,
        "steps": steps,
        "images_seen": steps * config.batch_size * trainer.world_size,
        "wall_time_s": round(total_seconds, 2),
        "this_session_s": round(seconds, 2),
        "gpu_hours": round(total_seconds * gpus / 3600, 4),
        "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "precision": settings["precision"],
        "seconds_per_epoch": round(total_seconds / max(1, trainer.current_epoch), 3),
        "mean": config.mean,
        "std": config.std,
        "resumed": resumed_from is not None,
    }
