"""Baseline accuracies of the synthetic lesion task (``ctreduce.downstream.synthetic``): how hard it is.

Logistic regression on pixels and a small CNN trained from scratch by the fine-tuning module, per
difficulty and seed; the table in the module's docstring comes from this script::

    python benchmarks/bench_synthetic_task.py [--difficulties 0 0.5 1] [--seeds 0 1 2] [--workers N]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctreduce.downstream.synthetic import LesionSamples, lesion_samples


def baseline_accuracy(samples: LesionSamples, *, C: float = 1.0) -> float:
    """Test accuracy of logistic regression on standardised pixels (train split only; needs scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = samples.images.reshape(len(samples.images), -1).astype(np.float32) / 255.0
    train, test = samples.splits == "train", samples.splits == "test"
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    model.fit(x[train], samples.labels[train])
    return float(model.score(x[test], samples.labels[test]))


def cnn_accuracy(samples: LesionSamples, *, epochs: int = 30, seed: int = 0) -> float:
    """Test accuracy of a three-layer CNN trained from scratch by the fine-tuning module and trainer (Adam 1e-3,
    batch 32, random horizontal flips), taken at the epoch of best validation accuracy as in the paper's protocol."""
    import tempfile
    from collections import OrderedDict

    import pytorch_lightning as pl
    import torch
    from torch import nn
    from torchvision.transforms import v2

    from ctreduce.downstream.datasets import ImageDataset
    from ctreduce.downstream.finetune import fit_best
    from ctreduce.downstream.module import FinetuneModule
    from ctreduce.lightning_setup import resolve
    from ctreduce.tasks.data import Split

    pl.seed_everything(seed, verbose=False)
    layers: list[tuple[str, nn.Module]] = []
    for i, (c_in, c_out) in enumerate(((1, 16), (16, 32), (32, 64))):
        layers += [(f"conv{i}", nn.Conv2d(c_in, c_out, 3, padding=1)), (f"bn{i}", nn.BatchNorm2d(c_out)),
                   (f"relu{i}", nn.ReLU()), (f"pool{i}", nn.MaxPool2d(2) if i < 2 else nn.AdaptiveMaxPool2d(1))]
    model = nn.Sequential(OrderedDict([*layers, ("flatten", nn.Flatten()), ("fc", nn.Linear(64, 2))]))
    module = FinetuneModule(model, 2, lr=1e-3, weight_decay=0.0, head_only_epochs=0)

    def loader(split: str) -> torch.utils.data.DataLoader:
        mask = samples.splits == split
        steps = [v2.ToDtype(torch.float32, scale=True)] + ([v2.RandomHorizontalFlip()] if split == "train" else [])
        data = ImageDataset(Split(samples.images[mask], samples.labels[mask], [""] * int(mask.sum())),
                            v2.Compose(steps))
        return torch.utils.data.DataLoader(data, batch_size=32, shuffle=split == "train",
                                           generator=torch.Generator().manual_seed(seed))

    with tempfile.TemporaryDirectory() as folder:
        fit_best(module, loader("train"), loader("val"), Path(folder),
                 resolve(accelerator="cpu", devices=1, precision="32-true"), epochs=epochs)
    prob, labels = module.probabilities(loader("test"))
    return float((prob.argmax(1) == labels).mean())


def _measure_one(job: tuple[float, int, int, int]) -> dict:
    import torch

    torch.set_num_threads(1)
    difficulty, seed, n_per_class, epochs = job
    samples = lesion_samples(n_per_class, seed=seed, difficulty=difficulty)
    return {"difficulty": difficulty, "seed": seed, "logreg": baseline_accuracy(samples),
            "cnn": cnn_accuracy(samples, epochs=epochs, seed=seed)}


def measure_baselines(difficulties: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0), seeds: tuple[int, ...] = (0, 1, 2),
                      n_per_class: int = 250, epochs: int = 40, workers: int = 1) -> list[dict]:
    """Baseline test accuracies (logistic regression on pixels, small CNN) per difficulty and seed.

    ``python -m ctreduce.downstream.synthetic`` prints the table (needs torch and scikit-learn).
    """
    jobs = [(float(d), int(s), n_per_class, epochs) for d in difficulties for s in seeds]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_measure_one, jobs))
    return [_measure_one(job) for job in jobs]


if __name__ == "__main__":
    import argparse
    import os

    parser = argparse.ArgumentParser(description="Baseline accuracies of the synthetic lesion task")
    parser.add_argument("--difficulties", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-per-class", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    rows = measure_baselines(tuple(args.difficulties), tuple(args.seeds), args.n_per_class, args.epochs, args.workers)
    print("difficulty seed logreg cnn")
    for row in rows:
        print(f"{row['difficulty']:.3f} {row['seed']} {row['logreg']:.3f} {row['cnn']:.3f}", flush=True)
    for d in args.difficulties:
        sel = [r for r in rows if r["difficulty"] == d]
        lr = np.array([r["logreg"] for r in sel])
        cnn = np.array([r["cnn"] for r in sel])
        lr_sd, cnn_sd = (float(x.std(ddof=1)) if x.size > 1 else 0.0 for x in (lr, cnn))
        print(f"difficulty {d:.3f}: logreg {lr.mean():.3f} +- {lr_sd:.3f}, cnn {cnn.mean():.3f} +- {cnn_sd:.3f}")
