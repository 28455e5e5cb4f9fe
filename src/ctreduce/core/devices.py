"""Where tensors go and how many CPU threads a run uses (torch is imported only where a device is made).

:func:`resolve_device` turns ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a ``torch.device`` (an
unavailable one is refused with the reason). :func:`thread_policy` chooses torch threads, data-loader
workers and BLAS threads for a training run so that a machine shared with other jobs is not
over-subscribed: the issue-11 measurement on a 2-core machine under a load of ~3 from another job saw
SwAV slow down 6.4x with torch's defaults (all cores for torch, plus 2 loader workers) where
lightly-train, whose automatic worker count leaves one core per device to the training process, slowed
3.2x. Torch's OpenMP threads spin at every parallel region's barrier, so a thread that loses its core to
another job stalls the others; the policy therefore counts only the cores free when the run starts
(runnable tasks sampled then, not the 1-minute load average, which still holds the previous stage of an
experiment for a minute).
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # the device names settings accept
THREADS_ENV = "CTREDUCE_THREADS"  # explicit torch threads per training process; rank 0 passes its choice on


class DeviceError(ValueError):
    """A device that was asked for but does not exist here."""


def device_name(name: str) -> str:
    """``name`` checked and normalised (lower case) without importing torch: for settings validated early."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name.strip().lower()):
        raise DeviceError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {name!r}")
    return name.strip().lower()


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; unavailable ones raise."""
    import torch

    name = device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available; use device='cpu' or 'auto'")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError("device 'mps' requested but MPS is not available; use device='cpu' or 'auto'")
    return torch.device(name)


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cgroup cpusets, SLURM), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPolicy:
    """Threads of one training process; :meth:`as_dict` is what a run folder records."""

    cores: int  # usable CPUs of this machine
    processes: int  # training processes on this machine (devices per node under DDP)
    load: float  # other runnable tasks when the policy was made (see busy_cores)
    torch_threads: int  # intra-op threads of the training process (also its BLAS threads)
    loader_workers: int  # data-loader worker processes per training process
    requested_workers: int
    worker_threads: int  # torch and BLAS threads inside each loader worker
    source: str  # how torch_threads was chosen

    def apply(self) -> None:
        """Set the training process's torch and BLAS threads; pass :meth:`worker_init` to the DataLoader."""
        import torch

        torch.set_num_threads(self.torch_threads)
        _limit_blas(self.torch_threads)

    def worker_init(self, worker_id: int) -> None:
        """Loader worker start-up: one torch thread (PyTorch's default there) and one BLAS thread (NumPy's
        OpenBLAS would otherwise start one per core in every worker)."""
        import torch

        torch.set_num_threads(self.worker_threads)
        _limit_blas(self.worker_threads)

    @contextmanager
    def handed_on(self) -> Iterator[None]:
        """Within the block, processes started by a DDP launcher (which copies the environment) take this
        process's torch threads (``CTREDUCE_THREADS``) instead of choosing again while this one is busy."""
        previous = os.environ.get(THREADS_ENV)
        os.environ[THREADS_ENV] = str(self.torch_threads)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(THREADS_ENV, None)
            else:
                os.environ[THREADS_ENV] = previous

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def busy_cores(samples: int = 5, interval_s: float = 0.05) -> float:
    """Runnable tasks of other processes now: the median of ``procs_running`` in /proc/stat over a quarter of a
    second, less this process; elsewhere the 1-minute load average."""
    values = []
    try:
        for i in range(samples):
            with open("/proc/stat") as fh:
                values += [int(line.split()[1]) for line in fh if line.startswith("procs_running")]
            if i + 1 < samples:
                time.sleep(interval_s)
    except (OSError, ValueError, IndexError):
        values = []
    if values:
        return max(0.0, statistics.median(values) - 1)
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _limit_blas(n: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ModuleNotFoundError:  # installed with scikit-learn; without it BLAS keeps its own default
        return
    threadpool_limits(limits=n, user_api="blas")


def thread_policy(requested_workers: int, *, accelerator: str, processes: int = 1,
                  load: float | None = None, cores: int | None = None) -> ThreadPolicy:
    """Threads for a run of ``processes`` training processes on this machine.

    * loader workers: at most ``cores // processes - 1`` per process (lightly-train's automatic count: the
      training process keeps a core), and never more than ``requested_workers``;
    * torch threads (CPU training): the cores per process that other jobs leave free at start
      (:func:`busy_cores`; at least 1); ``CTREDUCE_THREADS`` overrides. GPU training: the cores per process
      the loader workers leave (there the workers are the busy ones). On CPU the workers are not
      subtracted: with the prefetch queue full they sleep, as lightly-train's (torch's default threads
      beside ``cores - 1`` workers);
    * one torch/BLAS thread inside every loader worker.
    """
    if requested_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {requested_workers}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    cores = usable_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    per_process = max(1, cores // processes)
    workers = min(requested_workers, max(0, per_process - 1))
    explicit = os.environ.get(THREADS_ENV)
    if explicit:
        try:
            threads, source = int(explicit), f"{THREADS_ENV}={explicit}"
        except ValueError as exc:
            raise ValueError(f"{THREADS_ENV} must be a whole number of threads, got {explicit!r}") from exc
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be >= 1, got {threads}")
    elif accelerator != "cpu":
        threads, source = max(1, per_process - workers), "accelerator training: the cores the loader workers leave"
    else:
        free = max(1, math.floor(cores - load + 0.5)) // processes
        threads = max(1, min(per_process, free))
        source = f"{cores} cores, {load:g} busy with other tasks at start, {processes} training process(es)"
    return ThreadPolicy(cores=cores, processes=processes, load=round(load, 2), torch_threads=threads,
                        loader_workers=workers, requested_workers=requested_workers, worker_threads=1, source=source)
