"""The warm-up + cosine learning-rate factor of SwAV and MoCo (lightly's cosine_schedule underneath)."""

from __future__ import annotations

import math

import pytest
import torch

from ctreduce.ssl.base import warmup_cosine


def official_swav_cosine(t: int, n: int) -> float:
    """Official SwAV main_swav.py after warm-up (final_lr 0): 0.5 * (1 + cos(pi * t / N)), t < N."""
    return 0.5 * (1 + math.cos(math.pi * t / n))


def test_warm_up_then_the_official_cosine():
    total, warmup = 50, 10
    for step in range(warmup):
        assert warmup_cosine(step, total, warmup) == pytest.approx((step + 1) / warmup)
    for step in range(warmup, total):
        assert warmup_cosine(step, total, warmup) == pytest.approx(official_swav_cosine(step - warmup, total - warmup))
    assert warmup_cosine(total, total, warmup) == pytest.approx(0.0)  # one step after the last, as official


def test_a_warm_up_longer_than_the_run_keeps_ramping():
    assert [warmup_cosine(s, 3, 10) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])


def test_the_factor_drives_the_optimiser_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.SGD([param], lr=0.3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, 8, 2))
    rates = []
    for _ in range(8):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        scheduler.step()
    assert rates == pytest.approx([0.15, 0.3] + [0.3 * official_swav_cosine(t, 6) for t in range(6)])
