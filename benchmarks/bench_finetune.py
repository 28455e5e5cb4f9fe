"""Fine-tuning on a fixed synthetic task: test accuracy and best epoch per seed, and the time it took.

The task (``--task``): ``lesion``, ``make_lesion_task`` (phantom lung nodule present or not), 64 px,
``--difficulty`` (0.25), ``--n-per-class`` (100) slices per class split 60/20/20 by the task's own
``split.csv`` (seed 0); or ``brightness``, 32 px images of a random grey level U(70, 170) plus 40 for
class 1 and pixel noise (sd 30), ``--n-per-class`` per class split 60/20/20 (seed 0): learnable in a
few epochs from random weights (the best threshold scores about 0.72), where the lesion task needs
far more images than a CPU benchmark can train on. The protocol:
``ctreduce.downstream.finetune.finetune`` with a randomly initialised ResNet-18 at 64 px, batch 32,
``--epochs`` epochs of which the first ``--head-only-epochs`` train only the head and BatchNorm,
Adam 1e-4 / wd 5e-4 (the paper's), seeds 0, 1, 2. Printed per seed: test accuracy, AUC, the
best-validation epoch, seconds; then mean +- sample sd, the machine and its load. Used to check
that a new training loop reaches the accuracy of the previous one within the spread over seeds.

Run:  .venv/bin/python benchmarks/bench_finetune.py [--task lesion|brightness] [--epochs 12]
      [--head-only-epochs 3] [--n-per-class 100] [--extra lr=0.001 input_size=32 ...] [--workdir DIR]

Measured (2 shared cores, load 6-8 from other jobs; brightness task, 100 per class, 10 epochs of which 2
head-only, lr 1e-3, 32 px): the previous hand-written loop (commit 002ec46) 0.750 / 0.650 / 0.650,
best epochs 8 / 2 / 3, 0.683 +- 0.058; the Lightning module 0.675 / 0.775 / 0.650, best epochs 6 / 8 / 4,
0.700 +- 0.066. Both pick the first epoch of the highest validation accuracy. On the lesion task (64 px,
difficulty 0 or 0.25) a random ResNet-18 stays at chance with either loop (0.47-0.53 over 3 seeds).
Threads (``--task brightness --n-per-class 60 --epochs 3 --head-only-epochs 1 --seeds 0 --extra
input_size=32``, interleaved, load average 4.7-5.5 on 2 cores): the thread policy chose 1 torch thread and
trained the seed in 7.75 s and 5.86 s; ``CTREDUCE_THREADS=2`` (torch's default here) took 22.05 s and
33.13 s, with the same accuracy (0.625) and AUC.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_model, load_line

from ctreduce.downstream.finetune import finetune
from ctreduce.downstream.synthetic import make_lesion_task


def brightness_task(root: Path, n_per_class: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,split,label"]
    for label in (0, 1):
        for i in range(n_per_class):
            split = "train" if i < 0.6 * n_per_class else "val" if i < 0.8 * n_per_class else "test"
            level = rng.uniform(70, 170) + 40 * label
            path = root / f"class{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(rng.normal(level, 30, (32, 32)), 0, 255).astype(np.uint8)).save(path)
            rows.append(f"class{label}/{i}.png,{split},class{label}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--head-only-epochs", type=int, default=3)
    parser.add_argument("--task", choices=("lesion", "brightness"), default="lesion")
    parser.add_argument("--difficulty", type=float, default=0.25)
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extra", nargs="*", default=[], help="FinetuneConfig fields as key=value (lr=0.001 ...)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    if args.task == "lesion":
        root = make_lesion_task(work / "task", n_per_class=args.n_per_class, size=64, difficulty=args.difficulty,
                                seed=0, format="folder")
    else:
        root = brightness_task(work / "task", args.n_per_class)
    extra = dict(item.split("=", 1) for item in args.extra)
    start = time.perf_counter()
    settings = {"init": "random", "backbone": "resnet18", "input_size": 64, "batch_size": 32, "epochs": args.epochs,
                "head_only_epochs": args.head_only_epochs, "seeds": tuple(args.seeds), "num_workers": 0,
                "bootstrap": 10, **extra}
    summary = finetune(task={"format": "folder", "root": str(root), "split_csv": "split.csv"}, out=str(work / "run"),
                       **settings)
    seconds = time.perf_counter() - start
    threads = json.loads((work / "run" / "run.json").read_text())["threads"]
    print(f"machine: {platform.node()}, {cpu_model()}, torch {torch.__version__}, threads chosen: {threads}")
    print(load_line())
    print("seed accuracy auc best_epoch seconds")
    for row in summary["per_seed"]:
        print(f"{row['seed']} {row['accuracy']:.3f} {row['auc']:.3f} {row['best_epoch']} {row['seconds']}")
    for seed in args.seeds:
        history = [json.loads(x) for x in (work / "run" / f"seed{seed}" / "history.jsonl").read_text().splitlines()]
        print(f"seed {seed} val accuracy per epoch: {[round(h['val_accuracy'], 3) for h in history]}")
    accs = [r["accuracy"] for r in summary["per_seed"]]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"accuracy {statistics.mean(accs):.3f} +- {sd:.3f} over {len(accs)} seed(s); {seconds:.1f} s in all")


if __name__ == "__main__":
    main()
