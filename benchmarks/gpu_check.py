"""GPU check of issues 11, 19 and 20: the CUDA paths that have no figure yet, in one run of at most 8 minutes.

Sections (each timed and reported on its own; a failing section prints its error and the rest go on):

  1. reduction   SSIM and DeepNet reduction through ``ctreduce.reduce`` of phantom NIfTI volumes, on the
                 CPU (``--cpu-workers`` processes) and on the device (in-process): the kept sets per
                 threshold must be equal; the largest difference of the ``similarity`` column where both
                 chose the same leader is printed. DeepNet uses a seeded random ResNet-50 state-dict file
                 (no network there for ImageNet weights), its thresholds at the quartiles of the CPU's
                 similarities; when the device's kept sets differ, the device run is repeated without
                 TF32 convolutions (``torch.backends.cudnn.allow_tf32 = False``) to tell whether TF32 is why.
  2. ssl         SwAV, MoCo v2 and SparK, ResNet-50, paper preset at 224 px, ``--batch`` images per step,
                 ``bf16-mixed``, through a Lightning ``Trainer`` (``ctreduce.lightning_setup`` settings) fed one
                 batch of views already made (no loader cost): training images/s over ``--steps`` steps
                 after ``--warmup`` untimed ones, and peak GPU memory.
  3. finetune    ``ctreduce.downstream.module.FinetuneModule`` on a ResNet-50 with an 11-class head
                 (OrganSMNIST), every layer training (the protocol after its head-only epochs), Adam, batch
                 64 at 224 px, ``bf16-mixed``: steps/s and images/s, fed like (2).
  4. loader      images/s of the views each method trains on, from an npy export of the phantoms at 512 px, the
                 loader workers ``ctreduce.core.devices.thread_policy`` grants and all cores less one, both ways:
                 ``loader_*`` the views made in the workers, ``device_*`` the workers reading uint8 slices and
                 the views made from each batch on the GPU (``views_on: device``); ``views_*_device`` the GPU's
                 own images/s of those views from a resident batch, and their peak memory. All against the GPU's
                 appetite from (2) (``loader_over_gpu``: >= 1, the loader keeps up).
  5. pretrain    real ``ctreduce.pretrain`` SwAV runs (paper preset, ResNet-50, bf16-mixed, loader included)
                 from the 512 px export, views made on the device and in the loader: images/s and the fraction
                 of each epoch spent waiting for data from metrics.jsonl, the loader's record and threads.
  6. syncbn      SwAV and SparK, 2 steps under DDP with ``ctreduce.lightning_setup.SyncBatchNorm`` (the plugin a
                 run on several GPUs gets) on this GPU: the batch-norm layer kinds the model trains with (SwAV:
                 ``SyncBatchNorm``; SparK: ``SparseSyncBatchNorm2d`` and the decoder's ``SyncBatchNorm``) and a
                 finite loss. One GPU makes a process group of one: the layers run their CUDA path, the
                 statistics exchange between GPUs needs two. Skipped, with a message, without CUDA.

``--quick`` shrinks every size (ResNet-18, 64 px, batch 8, a few steps, float32 on CPU) so that the whole
script runs on a CPU in a couple of minutes: a check that it works, not a figure.

On the GPU machine (python3 with torch, torchvision, Lightning, pandas, pyarrow, scikit-image, timm,
torchmetrics): the missing packages travel as py3.12 wheels in ``build/gpu-wheels`` (ignored by git; 14 MB),
the versions of this project's environment, fetched here once with::

    P="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64"
    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $P \
      -d build/gpu-wheels lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.1 pydantic==2.14.4 \
      pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
      nibabel==5.4.2 pydicom==3.0.2 ImageHash==4.3.2 PyWavelets==1.9.0
    .venv/bin/python -m pip wheel --no-deps -w build/gpu-wheels antlr4-python3-runtime==4.9.3  # sdist only

and the device run (``carry: ["build/gpu-wheels"]``, timeout 600 s)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site build/gpu-wheels/*.whl \
      && PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT

Run here:  .venv/bin/python benchmarks/gpu_check.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pytorch_lightning as pl  # noqa: E402

import ctreduce  # noqa: E402
from ctreduce import backbones, lightning_setup  # noqa: E402
from ctreduce.config import make_pretrain_config  # noqa: E402
from ctreduce.core.devices import resolve_device, thread_policy, usable_cores  # noqa: E402
from ctreduce.reduction.deepnet import DeepNetMeasure  # noqa: E402
from ctreduce.reduction.selection import kept_column  # noqa: E402
from ctreduce.sample_data.phantom import make_phantom, write_nifti  # noqa: E402
from ctreduce.ssl.batch_views import BatchViews  # noqa: E402
from ctreduce.ssl.data import open_export  # noqa: E402
from ctreduce.ssl.pretrain import method_class, pretrain  # noqa: E402

METHODS = ("swav", "moco", "spark")
ORGANSMNIST_CLASSES = 11


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"volumes": 2, "slices": 24, "size": 64, "backbone": "resnet18", "input": 64, "batch": 8,
                "steps": 3, "warmup": 1, "ft_batch": 8, "loader_batches": 4, "pretrain_epochs": 2}
    return {"volumes": 4, "slices": 96, "size": 512, "backbone": "resnet50", "input": 224, "batch": 128,
            "steps": 20, "warmup": 5, "ft_batch": 64, "loader_batches": 30, "pretrain_epochs": 3}


class Section:
    """Runs one check within the budget; prints and records its figures or its error."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s
        self.results: dict[str, Any] = {}

    def __call__(self, name: str, check: Callable[[], dict[str, Any]], needs_s: float) -> None:
        left = self.deadline - time.monotonic()
        if left < needs_s:
            self.results[name] = {"skipped": f"{left:.0f} s of the budget left, needs about {needs_s:.0f} s"}
            print(f"[{name}] skipped: {self.results[name]['skipped']}", flush=True)
            return
        start = time.perf_counter()
        try:
            out = check()
        except Exception as exc:  # one section's failure must not cost the rest of a scarce GPU run
            out = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        out["seconds"] = round(time.perf_counter() - start, 1)
        self.results[name] = out
        print(f"[{name}] {json.dumps(out, default=str)}", flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- 1. reduction -----------------------------------------------------------------------------------


def write_volumes(root: Path, s: dict[str, Any]) -> tuple[Path, np.ndarray]:
    """Phantom CT volumes as NIfTI files under ``root/ct``; returns the folder and the first volume's HU."""
    volumes = [make_phantom(n_slices=s["slices"], size=s["size"], slice_thickness=2.0, seed=seed)
               for seed in range(s["volumes"])]
    for seed, (hu, spacing) in enumerate(volumes):
        write_nifti(hu, spacing, root / "ct" / f"p{seed}.nii.gz")
    return root / "ct", volumes[0][0]


def compare_manifests(cpu, dev, thresholds) -> dict[str, Any]:
    same_leader = (cpu["leader"].to_numpy() == dev["leader"].to_numpy()) & cpu["similarity"].notna().to_numpy()
    diff = np.abs(cpu["similarity"].to_numpy()[same_leader] - dev["similarity"].to_numpy()[same_leader])
    out = {"kept_equal": {}, "kept_cpu": {}, "kept_device": {}}
    for t in thresholds:
        column = kept_column(t)
        out["kept_equal"][f"{t:.6g}"] = bool((cpu[column].to_numpy() == dev[column].to_numpy()).all())
        out["kept_cpu"][f"{t:.6g}"] = int(cpu[column].sum())
        out["kept_device"][f"{t:.6g}"] = int(dev[column].sum())
    out["max_similarity_diff"] = float(diff.max()) if diff.size else 0.0
    return out


def reduction_check(method: str, ct: Path, first_hu: np.ndarray, device: torch.device, cpu_workers: int,
                    backbone_file: Path) -> dict[str, Any]:
    settings: dict[str, Any] = {"method": method}
    if method == "deepnet":
        settings["backbone"] = str(backbone_file)
        # Quartiles of the CPU similarities of the first volume: a random ResNet-50 puts every slice near 1.
        quartiles = np.quantile(similarity_sample(first_hu, backbone_file), [0.25, 0.5, 0.75])
        settings["thresholds"] = tuple(sorted({float(f"{v:.6g}") for v in quartiles}))
    else:
        settings["thresholds"] = (0.7, 0.8, 0.9)
    start = time.perf_counter()
    cpu = ctreduce.reduce(ct, device="cpu", workers=cpu_workers, **settings).manifest
    cpu_s = time.perf_counter() - start
    start = time.perf_counter()
    dev = ctreduce.reduce(ct, device=str(device), workers=1, **settings).manifest
    dev_s = time.perf_counter() - start
    out = {"slices": len(cpu), "cpu_s": round(cpu_s, 2), "cpu_workers": cpu_workers, "device_s": round(dev_s, 2),
           **compare_manifests(cpu, dev, settings["thresholds"])}
    if device.type == "cuda" and not all(out["kept_equal"].values()):
        torch.backends.cudnn.allow_tf32 = False
        try:
            exact = ctreduce.reduce(ct, device=str(device), workers=1, **settings).manifest
        finally:
            torch.backends.cudnn.allow_tf32 = True
        out["without_tf32"] = compare_manifests(cpu, exact, settings["thresholds"])
    return out


def similarity_sample(hu: np.ndarray, backbone_file: Path) -> np.ndarray:
    from ctreduce.io.intensity import Intensity

    u8 = Intensity.parse("minmax").to_uint8(hu)
    compare = DeepNetMeasure(str(backbone_file), "cpu", 32).prepare(u8).compare
    return np.concatenate([compare(i, np.arange(i + 1, len(u8))) for i in range(0, len(u8) - 1, 4)])


# --- 2./3. training steps through Lightning ------------------------------------------------------------


class StepTimer(pl.Callback):
    """Wall time of the steps after ``warmup`` (the device synchronised at both ends)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        now = time.perf_counter()
        if batch_idx + 1 == self.warmup:
            self.start = now
        elif batch_idx + 1 > self.warmup:
            self.end, self.steps = now, batch_idx + 1 - self.warmup


class SameBatch(torch.utils.data.Dataset):
    """The one batch, ``steps`` times (collated already: the DataLoader runs with ``batch_size=None``)."""

    def __init__(self, batch: Any, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> Any:
        return self.batch


def timed_fit(module: pl.LightningModule, batch: Any, s: dict[str, Any], device: torch.device,
              precision: str, images: int) -> dict[str, Any]:
    settings = lightning_setup.resolve(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                               precision=precision)
    timer = StepTimer(s["warmup"])
    total = s["warmup"] + s["steps"]
    fit = pl.Trainer(max_steps=total, max_epochs=1, callbacks=[timer], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **settings)
    loader = torch.utils.data.DataLoader(SameBatch(batch, total), batch_size=None, pin_memory=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fit.fit(module, loader)
    seconds = timer.end - timer.start
    out = {"precision": settings["precision"], "batch": images, "steps": timer.steps,
           "steps_per_s": round(timer.steps / seconds, 2), "images_per_s": round(timer.steps * images / seconds, 1)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
    return out


def ssl_config(method: str, s: dict[str, Any], export: Path | None = None):
    values = {"method": method, "preset": "paper", "backbone": s["backbone"], "input_size": s["input"],
              "batch_size": s["batch"], "num_workers": 4}
    if s["input"] < 96:  # --quick: SwAV's local crops and SparK's patches must fit the tiny input
        values.update({"swav": {"local_crop_size": 32}, "spark": {"patch_size": 16, "decoder_width": 128}})
    if export is not None:
        values.update({"data": str(export), "out": "-"})
    return make_pretrain_config(values)


def view_batch(method: str, s: dict[str, Any], slices: torch.Tensor) -> Any:
    config = ssl_config(method, s)
    views = method_class(method).views(config, config.mean, config.std)
    return torch.utils.data.default_collate([views(slices[i % len(slices)]) for i in range(s["batch"])])


def ssl_check(method: str, s: dict[str, Any], device: torch.device, slices: torch.Tensor,
              precision: str) -> dict[str, Any]:
    config = ssl_config(method, s)
    cls = method_class(method)
    extra = {"dataset_size": len(slices)} if method in ("swav", "moco") else {}
    torch.manual_seed(0)
    module = cls(config, steps_per_epoch=s["warmup"] + s["steps"], **extra)
    return timed_fit(module, view_batch(method, s, slices), s, device, precision, s["batch"])


def finetune_check(s: dict[str, Any], device: torch.device, precision: str) -> dict[str, Any]:
    from ctreduce.downstream.module import FinetuneModule

    model = backbones.build(s["backbone"])
    model.fc = torch.nn.Linear(backbones.feature_dim(model), ORGANSMNIST_CLASSES)
    module = FinetuneModule(model, ORGANSMNIST_CLASSES, head_only_epochs=0)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(s["ft_batch"], 3, s["input"], s["input"], generator=g),
             torch.randint(0, ORGANSMNIST_CLASSES, (s["ft_batch"],), generator=g))
    return timed_fit(module, batch, s, device, precision, s["ft_batch"])


# --- 4./5. loader and a real run -------------------------------------------------------------------------


def loader_check(method: str, export: Path, s: dict[str, Any], workers: int, views_on: str,
                 device: torch.device) -> dict[str, Any]:
    """Images/s of the views a run trains on, from the 512 px export: ``loader``, the method's views made in the
    loader's workers; ``device``, the workers only read and stack the uint8 slices and the views are made from
    each batch on the device (``views_on: device``), the batch's copy to the device included."""
    config = ssl_config(method, s, export)
    cls = method_class(method)
    on_device = views_on == "device"
    dataset = open_export(export, None if on_device else cls.views(config, config.mean, config.std))
    views = BatchViews(cls.batch_views(config, config.mean, config.std)) if on_device else None
    policy = thread_policy(workers, accelerator="gpu", load=0.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=s["batch"], shuffle=True, drop_last=False,
                                         num_workers=workers, worker_init_fn=policy.worker_init,
                                         persistent_workers=False, pin_memory=device.type == "cuda")

    def made(batch: Any) -> Any:
        return views(batch.to(device, non_blocking=True)) if views is not None else batch

    it, seen = iter(loader), 0
    made(next(it))  # worker start-up excluded
    synchronize(device)
    start = time.perf_counter()
    for _ in range(s["loader_batches"]):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        made(batch)
        seen += len(batch) if views is not None else len(batch[0])
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"workers": workers, "views_on": views_on, "images_per_s": round(seen / seconds, 1)}


def device_views_check(method: str, export: Path, s: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The device's own cost of ``views_on: device``: images/s of the method's views made from a batch of 512 px
    slices already on the device, and their peak memory."""
    config = ssl_config(method, s, export)
    cls = method_class(method)
    views = BatchViews(cls.batch_views(config, config.mean, config.std))
    dataset = open_export(export)
    batch = torch.stack([dataset[i] for i in range(min(s["batch"], len(dataset)))]).to(device)
    views(batch)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(s["steps"]):
        views(batch)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": round(s["steps"] * len(batch) / seconds, 1), "batch": len(batch),
            "peak_gib": None if peak is None else round(peak, 2)}


def pretrain_check(export: Path, out: Path, s: dict[str, Any], precision: str, views_on: str) -> dict[str, Any]:
    summary = pretrain(
        data=str(export), out=str(out), method="swav", preset="paper", backbone=s["backbone"],
        input_size=s["input"], batch_size=min(s["batch"], 64), epochs=s["pretrain_epochs"], precision=precision,
        swav=ssl_config("swav", s).swav.model_dump(), views_on=views_on, overwrite=True)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"status": summary["status"], "precision": summary["precision"], "threads": summary["threads"],
            "loader": summary["loader"], "images_per_s_per_epoch": [e["images_per_s"] for e in epochs],
            "data_wait_per_epoch": [e["data_wait_fraction"] for e in epochs], "wall_s": summary["wall_time_s"]}


# --- 6. synchronised batch norms --------------------------------------------------------------------------


def syncbn_check(method: str, s: dict[str, Any], device: torch.device, slices: torch.Tensor,
                 precision: str) -> dict[str, Any]:
    if device.type != "cuda":
        print(f"[syncbn_{method}] skipped: no CUDA device (SyncBatchNorm has no CPU kernel)", flush=True)
        return {"skipped": "no CUDA device"}
    config = ssl_config(method, s)
    extra = {"dataset_size": len(slices)} if method == "swav" else {}
    torch.manual_seed(0)
    module = method_class(method)(config, steps_per_epoch=2, **extra)
    seen: dict[str, Any] = {}

    class Layers(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            norms = [m for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            seen["norm_layers"] = {name: sum(type(m).__name__ == name for m in norms)
                                   for name in sorted({type(m).__name__ for m in norms})}
            seen["all_synchronised"] = all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)

    fit = pl.Trainer(max_steps=2, max_epochs=1, accelerator="gpu", devices=[device.index or 0], strategy="ddp",
                     precision=precision, plugins=[lightning_setup.SyncBatchNorm()], callbacks=[Layers()],
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    batch = view_batch(method, s, slices)
    fit.fit(module, torch.utils.data.DataLoader(SameBatch(batch, 2), batch_size=None))
    loss = fit.callback_metrics.get("loss_step", fit.callback_metrics.get("loss"))
    print(f"[syncbn_{method}] SyncBatchNorm layers in the model: {seen.get('all_synchronised')} "
          f"{seen.get('norm_layers')}", flush=True)
    return {**seen, "steps": fit.global_step, "loss_finite": loss is not None and bool(torch.isfinite(loss))}


# --- main ------------------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__,
            "cpu_cores": usable_cores(), "load": [round(v, 2) for v in os.getloadavg()],
            "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": props.name, "gpu_gib": round(props.total_memory / 2**30, 1),
                     "bf16": torch.cuda.is_bf16_supported(), "cudnn": torch.backends.cudnn.version()})
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, runs on a CPU: checks the script works")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--budget-s", type=float, default=470.0, help="sections that would overrun are skipped")
    parser.add_argument("--cpu-workers", type=int, default=0, help="CPU reduction processes (0: cores less one)")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json")
    args = parser.parse_args()

    s = sizes(args.quick)
    device = resolve_device(args.device)
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    cpu_workers = args.cpu_workers or max(1, usable_cores() - 1)
    sections = Section(args.budget_s)
    sections.results["machine"] = machine(device)
    sections.results["sizes"] = s
    print(json.dumps(sections.results, default=str), flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        ct, first_hu = write_volumes(work, s)
        run = ctreduce.reduce(ct, work / "all", method="all", export="npy", export_size=s["input"]).manifest
        export = work / "all" / "export"
        backbone_file = work / "resnet50.pt"
        torch.manual_seed(0)
        torch.save(backbones.export_state_dict(backbones.build(s["backbone"])), backbone_file)
        exported = open_export(export)
        slices = torch.stack([exported[i] for i in range(len(exported))])  # (N, 1, input, input) uint8
        print(f"data: {len(run)} slices in {s['volumes']} volumes, export {export}", flush=True)

        for method in ("ssim", "deepnet"):
            sections(f"reduction_{method}",
                     lambda m=method: reduction_check(m, ct, first_hu, device, cpu_workers, backbone_file), 40)
        for method in METHODS:
            sections(f"ssl_{method}", lambda m=method: ssl_check(m, s, device, slices, precision), 30)
        sections("finetune", lambda: finetune_check(s, device, precision), 30)
        granted = thread_policy(4, accelerator="gpu", load=0.0).loader_workers
        slices_512 = work / "export512"  # the paper's export size: the views crop 512 px slices
        ctreduce.export(work / "all", slices_512, format="npy", size=s["size"])
        for method in METHODS:
            sections(f"views_{method}_device", lambda m=method: device_views_check(m, slices_512, s, device), 10)
            for workers in sorted({granted, max(1, usable_cores() - 1)}):
                for views_on in ("loader", "device"):
                    sections(f"{views_on}_{method}_{workers}w",
                             lambda m=method, w=workers, v=views_on: loader_check(m, slices_512, s, w, v, device), 15)
        for views_on in ("device", "loader"):
            sections(f"pretrain_swav_{views_on}",
                     lambda v=views_on: pretrain_check(slices_512, work / f"pretrain_{v}", s, precision, v), 60)
        for method in ("swav", "spark"):  # last: DDP leaves its process group (of one) behind
            sections(f"syncbn_{method}", lambda m=method: syncbn_check(m, s, device, slices, precision), 20)

    appetite = {m: sections.results.get(f"ssl_{m}", {}).get("images_per_s") for m in METHODS}
    feeding = {k: v["images_per_s"] / appetite[k.split("_")[1]]
               for k, v in sections.results.items()
               if k.startswith(("loader_", "device_", "views_")) and "images_per_s" in v
               and appetite.get(k.split("_")[1])}
    sections.results["loader_over_gpu"] = {k: round(v, 2) for k, v in feeding.items()}
    print("loader images/s over GPU training images/s (>= 1: the loader keeps up):",
          json.dumps(sections.results["loader_over_gpu"]), flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(sections.results, indent=2, default=str))


if __name__ == "__main__":
    main()
