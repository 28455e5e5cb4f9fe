"""The device helper, the thread policy and the shared Lightning set-up."""

from __future__ import annotations

import os

import pytest
import torch

from ctreduce import lightning_setup
from ctreduce.core.devices import THREADS_ENV, DeviceError, busy_cores, resolve_device, thread_policy


def test_auto_and_cpu_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")


def test_missing_cuda_and_bad_names_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="'cuda:1' requested but CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="one of auto, cpu, cuda, cuda:N, mps; got 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.parametrize("load, processes, threads, workers", [
    (0.0, 1, 2, 1),  # idle: every core for torch, one worker (the training process keeps a core)
    (3.0, 1, 1, 1),  # shared with 3 busy tasks: one torch thread, so no OpenMP thread waits for a lost core
    (0.0, 2, 1, 0),  # 2 DDP processes on 2 cores: one core each, no room for workers
])
def test_thread_policy_on_two_cores(monkeypatch, load, processes, threads, workers):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    policy = thread_policy(2, accelerator="cpu", processes=processes, load=load, cores=2)
    assert (policy.torch_threads, policy.loader_workers, policy.worker_threads) == (threads, workers, 1)
    assert policy.as_dict()["requested_workers"] == 2


def test_thread_policy_on_a_gpu_machine_keeps_cores_for_the_workers(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    policy = thread_policy(8, accelerator="gpu", load=0.0, cores=16)
    assert (policy.loader_workers, policy.torch_threads) == (8, 8)


def test_explicit_threads_and_their_hand_over(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    policy = thread_policy(0, accelerator="cpu", load=5.0, cores=2)
    assert policy.torch_threads == 3 and THREADS_ENV in policy.source
    monkeypatch.delenv(THREADS_ENV)
    with policy.handed_on():
        assert os.environ[THREADS_ENV] == "3"  # what a DDP launcher copies into its processes
    assert THREADS_ENV not in os.environ
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match="CTREDUCE_THREADS must be a whole number"):
        thread_policy(0, accelerator="cpu")


def test_policy_applies_to_torch_and_blas(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    monkeypatch.delenv(THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores BLAS threads afterwards
        try:
            thread_policy(0, accelerator="cpu", load=0.0, cores=1).apply()
            assert torch.get_num_threads() == 1
            assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        finally:
            torch.set_num_threads(before)


def test_busy_cores_is_the_median_of_runnable_tasks_less_this_process(monkeypatch):
    """Known ``procs_running`` samples: the median, less this process; sampled ``samples`` times."""
    import io

    from ctreduce.core import devices

    readings, sleeps = iter([4, 9, 3, 5, 4]), []

    def fake_open(path, *args, **kwargs):
        assert path == "/proc/stat"
        return io.StringIO(f"cpu  1 2 3 4\nctxt 99\nprocs_running {next(readings)}\nprocs_blocked 7\n")

    monkeypatch.setattr(devices, "open", fake_open, raising=False)
    monkeypatch.setattr(devices.time, "sleep", sleeps.append)
    monkeypatch.setattr(devices.os, "getloadavg", lambda: (50.0, 50.0, 50.0))
    assert busy_cores(samples=5, interval_s=0.25) == 3.0  # median 4, less this process
    assert sleeps == [0.25] * 4
    readings = iter([1, 1])
    assert busy_cores(samples=2, interval_s=0.0) == 0.0  # only this process runs

    def unreadable(path, *args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(devices, "open", unreadable, raising=False)
    assert busy_cores() == 50.0  # elsewhere: the 1-minute load average


def test_busy_cores_counts_busy_child_processes():
    """Two children spinning on the CPU are runnable the whole time: at least two busy cores besides
    this process (other jobs on a shared machine can only add to that)."""
    import subprocess
    import sys
    import time

    spin = [sys.executable, "-c", "while True: pass"]
    children = [subprocess.Popen(spin) for _ in range(2)]
    try:
        time.sleep(0.5)  # started and spinning
        assert busy_cores(samples=5, interval_s=0.02) >= 2
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_trainer_settings_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    single = lightning_setup.resolve()
    assert (single["accelerator"], single["precision"], single["strategy"]) == ("cpu", "32-true", "auto")
    several = lightning_setup.resolve(devices=2, num_nodes=2, sync_batchnorm=True)
    assert several["strategy"] == "ddp" and several["sync_batchnorm"] is False  # no SyncBN kernel on CPU
    assert lightning_setup.world_size(several) == 4 and lightning_setup.local_processes(several) == 2
    with pytest.raises(ValueError, match="accelerator 'gpu' requested but CUDA is not available"):
        lightning_setup.resolve(accelerator="gpu")
    with pytest.raises(ValueError, match="unknown accelerator 'tpu'"):
        lightning_setup.resolve(accelerator="tpu")


def test_trainer_writes_csv_and_tensorboard_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    built = lightning_setup.build(lightning_setup.resolve(), root=tmp_path, logs=tmp_path / "logs", callbacks=[],
                                  max_epochs=1, steps_per_epoch=3, log_every_n_steps=50, enable_model_summary=False)
    names = sorted(type(logger).__name__ for logger in built.loggers)
    assert names == ["CSVLogger", "TensorBoardLogger"] and built.log_every_n_steps == 3
