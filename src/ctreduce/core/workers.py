"""Process pools for per-volume work: how workers start, and that they end with their parent."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def pool(workers: int) -> ProcessPoolExecutor:
    """A pool whose workers die with this process and use one BLAS/torch thread each."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=worker_init,
                               initargs=(os.getpid(),))


def _context():
    """fork when this process holds no CUDA/torch state (workers start instantly with every module
    already imported), spawn otherwise (forking an initialised torch is unsafe)."""
    import multiprocessing as mp

    if "fork" in mp.get_all_start_methods() and "torch" not in sys.modules:
        return mp.get_context("fork")
    return mp.get_context("spawn")


def terminate(executor: ProcessPoolExecutor) -> None:
    """Stop the workers now, not after their current task (no public API before Python 3.14)."""
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()


def worker_init(parent_pid: int | None = None) -> None:
    """Pool worker set-up: end with the parent, and one BLAS/torch thread.

    The kernel sends SIGKILL to the worker when its parent dies (kill -9 included), so no worker
    outlives a run and keeps writing while a rerun works. The workers are the parallelism; BLAS
    or torch threads on top of them only contend for cores (measured: 4x slower SSIM with 2
    torch threads in each of 2 workers).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if parent_pid is not None and os.getppid() != parent_pid:
            os._exit(1)  # the parent died before the signal was armed
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # read when torch is imported
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


# A Ray task whose worker died (a crash, the OOM killer, a lost node) is run again this often, on any node;
# then that one volume is recorded as failed (``ray_failure``) and the run goes on.
RAY_RETRIES = 2
# Volumes are spread over the nodes, not packed onto the driver's until it is full: every node's disks and
# network read at once, and short volumes do not all run where they were submitted.
RAY_SPREAD = "SPREAD"


def ray_failure(exc: BaseException) -> str:
    """The one-line error of a volume whose Ray worker died on every try (``ray.exceptions.RayError`` other
    than ``RayTaskError``: those the task raised itself, which stop the run as they would locally)."""
    reason = (str(exc).strip().splitlines() or [""])[0]
    return f"its Ray worker died ({RAY_RETRIES + 1} tries): {type(exc).__name__}: {reason}"


class NodeStorageError(ValueError):
    """A Ray node that does not see, at the same path, what its tasks read or write."""


def ray_nodes_see(ray: Any, read: dict[Path, str], written: dict[Path, str]) -> None:
    """NodeStorageError (one line) unless every Ray node that runs tasks sees each file of ``read`` and each
    folder of ``written`` (the same folder: a file made there now is seen), at the same path; the values say
    what each is, for the message. A task pinned to each node looks, before any volume is read: a node
    without the shared file system would otherwise fail every volume it is given, or write where no one reads."""
    import uuid

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marks = {folder / f".ctreduce-node-check-{uuid.uuid4().hex}": what for folder, what in written.items()}
    try:
        for mark in marks:
            mark.touch()
        wanted = {**read, **marks}
        look = ray.remote(num_cpus=0)(_missing)
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            [str(p) for p in wanted]) for n in nodes]
        for node, missing in zip(nodes, ray.get(refs), strict=True):
            if missing:
                path = Path(missing[0])
                shown = path.parent if path in marks else path
                raise NodeStorageError(
                    f"{shown}: not seen by Ray node {node['NodeManagerAddress']} ({node['NodeID'][:8]}); "
                    f"--backend ray needs {wanted[path]} at the same path on every node (a shared file system)")
    finally:
        for mark in marks:
            mark.unlink(missing_ok=True)


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


@contextmanager
def ray_session(workers: int, address: str | None = None) -> Iterator[Any]:
    """The ``ray`` module, connected to ``address`` (or RAY_ADDRESS), else to a local Ray started
    with ``workers`` CPUs; a Ray started here is shut down on leaving, and ends with this process
    however it ends (``_reaper``). SIGTERM keeps the handler this process had (the CLI's: stop like
    Ctrl-C), not Ray's (a stack dump). Every node needs ctreduce installed (or a runtime_env that
    installs it)."""
    try:
        import ray
    except ImportError as exc:
        raise ValueError("the Ray backend needs the ray extra (ray is not installed): "
                         "pip install 'ctreduce[ray]'") from exc
    started = False
    reaper = None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        term = signal.getsignal(signal.SIGTERM)
        try:
            if address:  # Ray's INFO lines ("Connecting to existing Ray cluster") stay out of the CLI's output
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                reaper = _reaper()
                # "local": a new Ray of our own, even where `ray start` runs a cluster on this machine (which
                # ray.init() would join, refusing num_cpus)
                ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING,
                         **({"_temp_dir": str(reaper.root)} if reaper is not None else {}))
        except SystemExit as exc:  # Ray's own SIGTERM handler, while it starts: stop as the CLI does
            if exc.code == signal.SIGTERM:
                raise KeyboardInterrupt("terminated") from None
            raise
        finally:
            _restore_sigterm(term)
            if reaper is not None and not ray.is_initialized():
                reaper.close()
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
        if reaper is not None:
            reaper.close()


def _restore_sigterm(handler: Any) -> None:
    import threading

    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


# Reads its stdin until the driver's end closes it (the driver exited, or was killed: kill -9 too),
# then kills every process that has a file open under the local Ray's own temporary folder (each of
# its processes writes its logs there), and removes the folder. Ray's fate-sharing ends its raylet
# and GCS with the driver, but the agents the raylet started wait ~60 s for the dead GCS first.
_REAP = """
import os, shutil, signal, sys, time
driver, root = int(sys.argv[1]), sys.argv[2].rstrip("/") + "/"
sys.stdin.buffer.read()
killed = []
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) in (driver, os.getpid()):
        continue
    try:
        if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(root) for fd in os.listdir(f"/proc/{pid}/fd")):
            os.kill(int(pid), signal.SIGKILL)
            killed.append(pid)
    except OSError:
        pass
deadline = time.monotonic() + 10
while any(os.path.exists(f"/proc/{pid}/fd") for pid in killed) and time.monotonic() < deadline:
    time.sleep(0.05)  # gone, not just signalled: none of them writes into the folder any more
shutil.rmtree(root, ignore_errors=True)
"""


class _Reaper:
    """A small process that ends a local Ray's processes when this process ends (Linux: /proc)."""

    def __init__(self) -> None:
        import subprocess
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="ctreduce-ray-"))
        self.process = subprocess.Popen([sys.executable, "-c", _REAP, str(os.getpid()), str(self.root)],
                                        stdin=subprocess.PIPE, start_new_session=True)

    def close(self) -> None:
        """Ray was shut down: the reaper ends whatever of it is left, removes its folder and exits."""
        import subprocess

        if self.process.stdin.closed:
            return
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _reaper() -> _Reaper | None:
    return _Reaper() if sys.platform.startswith("linux") and os.path.isdir("/proc") else None
