"""Seconds per seed of the bootstrap intervals: ``bootstrap_ci`` (NumPy over all resamples at once) against the loop
that scores each resample with scikit-learn (``_metric`` per resample, the module's definitions), for every metric of
a binary task (COVID-19-like) and an 11-class one (OrganSMNIST-like); also the largest difference between the
two sets of per-resample values::

    python benchmarks/bench_bootstrap.py [--samples 1000] [--resamples 1000] [--seeds 5] [--loop-seeds 1]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
from machine import cpu_model, load_line, versions

from ctreduce.downstream.metrics import METRICS, _as_inputs, _metric, bootstrap_ci, bootstrap_values

SEED_METRICS = ("accuracy", "auc", "f1")


def task(samples: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Informative softmax outputs rounded to 3 decimals (ties occur, as with float16/32 model outputs)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, samples)
    logits = rng.normal(0, 1, (samples, k))
    logits[np.arange(samples), y] += 1.5
    prob = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 3)
    prob[:, -1] = 1.0 - prob[:, :-1].sum(axis=1)
    return y, np.clip(prob, 0.0, 1.0)


def sklearn_loop(y: np.ndarray, prob: np.ndarray, metric: str, n: int, seed: int) -> np.ndarray:
    """The metric on each resample the seed draws, one scikit-learn call (per class for a multiclass AUC) each."""
    y, p = _as_inputs(y, prob)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([_metric(y[i], p[i], metric, 1, warn=False)
                         for i in (rng.integers(0, y.size, size=y.size) for _ in range(n))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000, help="test images")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5, help="seeds timed for the vectorised bootstrap")
    parser.add_argument("--loop-seeds", type=int, default=1, help="seeds timed for the scikit-learn loop")
    args = parser.parse_args()
    print(f"machine: {platform.node()}, {cpu_model()}, "
          f"{', '.join(f'{k} {v}' for k, v in versions(['numpy', 'scikit-learn']).items())}")
    print(load_line())
    print(f"{args.resamples} resamples of {args.samples} test images; seconds per seed "
          f"(mean over {args.seeds} seeds vectorised, {args.loop_seeds} for the loop)")
    print(f"{'task':<10} {'metric':<9} {'vectorised s':>13} {'sklearn loop s':>15} {'speed-up':>9} {'max |diff|':>11}")
    for name, k in (("binary", 2), ("11 classes", 11)):
        y, prob = task(args.samples, k)
        seed_total = np.zeros(2)  # the intervals a fine-tuning seed computes (downstream.evaluate.score)
        for metric in METRICS:
            start = time.perf_counter()
            for seed in range(args.seeds):
                bootstrap_ci(y, prob, metric, n=args.resamples, seed=seed)
            fast = (time.perf_counter() - start) / args.seeds
            start = time.perf_counter()
            loop = [sklearn_loop(y, prob, metric, args.resamples, seed) for seed in range(args.loop_seeds)]
            slow = (time.perf_counter() - start) / args.loop_seeds
            diff = np.nanmax(np.abs(bootstrap_values(y, prob, metric, args.resamples, 0) - loop[0]))
            print(f"{name:<10} {metric:<9} {fast:>13.3f} {slow:>15.2f} {slow / fast:>8.0f}x {diff:>11.1e}")
            if metric in SEED_METRICS:
                seed_total += (fast, slow)
        fast, slow = seed_total
        print(f"{name:<10} {'+'.join(SEED_METRICS)} (a fine-tuning seed): {fast:.3f} s vectorised, {slow:.2f} s loop")
    print(load_line())


if __name__ == "__main__":
    main()
