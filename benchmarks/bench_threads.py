"""CPU threads of a training run on a shared machine: torch's defaults against ``ctreduce.core.devices.thread_policy``.

Issue 11 measured ctreduce SwAV slowing 6.4x under a load of ~3 from another job on a 2-core machine
(lightly-train SimCLR: 3.2x). This benchmark trains SwAV (cpu preset: ResNet-18, 64 px, batch 32, 2 + 2
multi-crops) from a phantom npy export with a plain loop (loader, ``training_loss``, backward, optimiser
step) under three set-ups, interleaved chunk by chunk so that the load of other jobs hits all alike:

  default   torch's intra-op threads (every core) and the preset's 2 loader workers (before issue 11);
  policy    ``thread_policy(2, accelerator="cpu")``: torch threads = the cores free at start, workers at
            most cores - 1 (lightly-train's automatic count), one torch/BLAS thread per worker;
  policy+d  policy with ``torch.use_deterministic_algorithms(True)`` (what Lightning's
            ``deterministic=True`` sets on CPU).

``--load N`` starts N busy-looping processes for the whole measurement (a machine shared with N other
tasks); without it the machine's own load is what the set-ups share. Prints images/s per set-up (median
over chunks), the ratio to ``default``, the policy chosen, the machine and its load.

Run:  .venv/bin/python benchmarks/bench_threads.py [--load 3] [--chunks 6] [--steps 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model, load_line  # noqa: E402

import ctreduce  # noqa: E402
from ctreduce.config import make_pretrain_config  # noqa: E402
from ctreduce.core.devices import thread_policy  # noqa: E402
from ctreduce.sample_data.phantom import make_phantom, write_nifti  # noqa: E402
from ctreduce.ssl.data import open_export  # noqa: E402
from ctreduce.ssl.swav import SwAV  # noqa: E402


def busy() -> None:
    while True:
        pass


def make_export(root: Path) -> Path:
    for seed in range(3):
        hu, spacing = make_phantom(n_slices=64, size=96, slice_thickness=2.0, seed=seed)
        write_nifti(hu, spacing, root / "ct" / f"p{seed}.nii.gz")
    ctreduce.reduce(root / "ct", root / "run", method="all", export="npy", export_size=64)
    return root / "run" / "export"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes started beside the run")
    parser.add_argument("--chunks", type=int, default=6, help="timed chunks per set-up")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per chunk")
    args = parser.parse_args()

    hogs = [mp.Process(target=busy, daemon=True) for _ in range(args.load)]
    for hog in hogs:
        hog.start()
    time.sleep(1.0 if hogs else 0.0)
    policy = thread_policy(2, accelerator="cpu")
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        export = make_export(Path(tmp))
        config = make_pretrain_config({"method": "swav", "preset": "cpu", "data": str(export), "out": "-",
                                       "mean": 0.2, "std": 0.3})
        dataset = open_export(export, SwAV.views(config, config.mean, config.std))
        torch.manual_seed(0)
        module = SwAV(config, steps_per_epoch=100, dataset_size=len(dataset))
        optimiser = module.configure_optimizers()["optimizer"]

        def loader(workers: int, init=None) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                               num_workers=workers, worker_init_fn=init,
                                               persistent_workers=workers > 0)

        setups = {
            "default": (default_threads, False, loader(config.num_workers)),
            "policy": (policy.torch_threads, False, loader(policy.loader_workers, policy.worker_init)),
            "policy+d": (policy.torch_threads, True, loader(policy.loader_workers, policy.worker_init)),
        }
        rates: dict[str, list[float]] = {name: [] for name in setups}
        iterators = {name: iter(setups[name][2]) for name in setups}

        def next_batch(name: str):
            try:
                return next(iterators[name])
            except StopIteration:  # a new epoch over the same persistent workers
                iterators[name] = iter(setups[name][2])
                return next(iterators[name])

        def chunk(name: str) -> float:
            threads, deterministic, _ = setups[name]
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
            start = time.perf_counter()
            for _ in range(args.steps):
                batch = next_batch(name)
                loss = module.training_loss(batch)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            return args.steps * config.batch_size / (time.perf_counter() - start)

        for name in setups:  # warm-up: worker start-up and first allocations, untimed
            chunk(name)
        for _ in range(args.chunks):
            for name in setups:
                rates[name].append(chunk(name))
        torch.use_deterministic_algorithms(False)

    for hog in hogs:
        hog.terminate()
    print(f"machine: {cpu_model()}; {load_line()}; busy-loop processes started: {args.load}")
    print(f"default: {default_threads} torch threads, {config.num_workers} loader workers")
    print(f"policy: {policy.as_dict()}")
    base = statistics.median(rates["default"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:9s} {median:7.1f} images/s (chunks {min(values):.1f}-{max(values):.1f}), "
              f"{median / base:.2f}x default")


if __name__ == "__main__":
    main()
