"""Execution backends: the volumes to reduce spread over workers, each result yielded as it finishes.

Three ways, the same results: a local process pool (a few volumes in flight per worker), chunked reading
(fewer large DICOM series than workers, for a method that declares itself ``chunkable``: every worker reads
a chunk of each series) and Ray tasks (actors keeping the network loaded for a method that ``loads_network``).
Which one runs is decided from the method's declared capabilities (``measures.Method``), never its name.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

import numpy as np

from ..config import ReduceConfig
from ..core.workers import RAY_RETRIES, RAY_SPREAD, ray_failure, ray_nodes_see, ray_session, terminate
from ..core.workers import pool as process_pool
from ..io.discover import ReadSlices, load, preload_readers
from ..io.intensity import Intensity
from ..io.volume import Volume, VolumeSource
from ..store.fingerprint import Fingerprint, slice_digests
from .plan import method_of
from .worker import Outputs, VolumeResult, errors_returned, finish, process_source, verify_source


def run_volumes(todo: list[VolumeSource], config: ReduceConfig, *, workers: int, backend: str,
                ray_address: str | None, outputs: Outputs | None, verify: set[str],
                read: dict[str, ReadSlices] | None = None) -> Iterator[VolumeResult]:
    """Reduce ``todo`` (those in ``verify``: read again and compared with their parts, ``verify_source``;
    those whose slices the scan read, ``read`` by first path: from what it computed, ``process_source``)."""
    if backend == "ray":
        return _run_ray(todo, config, workers, ray_address, outputs, verify)
    return _run_pool(todo, config, workers, outputs, verify, read or {})


# Few large volumes: the slices of one DICOM series are read (and scaled) by every worker, in
# contiguous chunks, and the selection runs here. Only for methods whose work after scaling is
# light (``Method.chunkable``); for SSIM/MI/DeepNet comparisons are the cost there, not reading.
_MIN_CHUNK = 16  # slices: below this, one more task costs more than it saves


def chunkable(todo: list[VolumeSource], config: ReduceConfig, workers: int) -> bool:
    return (method_of(config).chunkable and 0 < len(todo) < workers
            and all(s.format == "dicom" and not s.frames and s.n_slices >= 2 * _MIN_CHUNK for s in todo))


def _read_chunk(source: VolumeSource, index: np.ndarray, intensity: str) -> tuple[Volume, np.ndarray, list[str]]:
    """Slices ``index`` of a series, their 8-bit images and pixel digests (the volume keeps no
    pixels: they would only travel back to be dropped)."""
    volume = load(source, index, allow_gaps=source.allow_gaps)  # a chunk leaves out what the whole would
    u8 = Intensity.parse(intensity).to_uint8(volume.hu)
    return dataclasses.replace(volume, hu=volume.hu[:, :0, :0]), u8, slice_digests(volume.hu)


def _run_chunked(todo: list[VolumeSource], config: ReduceConfig, workers: int,
                 outputs: Outputs | None, verify: set[str]) -> Iterator[VolumeResult]:
    preload_readers(s.format for s in todo)
    pool = process_pool(workers)
    finished = False
    try:
        for source in todo:
            start = time.perf_counter()
            with errors_returned(source, outputs, start) as result:
                before = Fingerprint.of(source)
                n_chunks = min(workers * 2, source.n_slices // _MIN_CHUNK)  # 2 per worker: even finish
                chunks = np.array_split(np.arange(source.n_slices), n_chunks)
                futures = [pool.submit(_read_chunk, source, index, config.intensity) for index in chunks]
                pieces = [f.result() for f in futures]
                volume = dataclasses.replace(
                    pieces[0][0], hu=np.concatenate([v.hu for v, _, _ in pieces]),
                    z_mm=np.concatenate([v.z_mm for v, _, _ in pieces]),
                    slice_sources=tuple(p for v, _, _ in pieces for p in v.slice_sources),
                    slice_index=np.concatenate([v.slice_index for v, _, _ in pieces]),
                    warnings=list(dict.fromkeys(w for v, _, _ in pieces for w in v.warnings)))
                result.append(finish(source, volume, np.concatenate([u8 for _, u8, _ in pieces]), config, outputs,
                                     before, start, [d for _, _, digests in pieces for d in digests],
                                     verify=source.volume_id in verify))
            yield result[0]
        finished = True
    finally:
        if not finished:
            terminate(pool)
        pool.shutdown(wait=finished, cancel_futures=True)


def _job(source: VolumeSource, config: ReduceConfig, parts: Outputs | None, verify: set[str],
         read: dict[str, ReadSlices]) -> tuple:
    """What a worker runs for ``source``, and its arguments: verify it against its part (``verify_source``),
    or reduce it (from what the scan read of it, when it did: ``read``)."""
    if source.volume_id in verify:
        return verify_source, source, config, parts
    if source.paths and source.paths[0] in read:
        return process_source, source, config, parts, read.pop(source.paths[0])  # held by its worker now
    return process_source, source, config, parts


def _run_pool(todo: list[VolumeSource], config: ReduceConfig, workers: int,
              parts: Outputs | None, verify: set[str], read: dict[str, ReadSlices]) -> Iterator[VolumeResult]:
    if not read and chunkable(todo, config, workers):
        yield from _run_chunked(todo, config, workers, parts, verify)
        return
    if workers <= 1:
        for source in todo:
            fn, *args = _job(source, config, parts, verify, read)
            yield fn(*args)
        return
    preload_readers(s.format for s in todo)
    pool = process_pool(workers)
    finished = False
    try:
        pending: set[Future] = set()
        queue = iter(todo)
        # A few volumes in flight per worker: memory stays bounded by the volumes being read.
        for source in queue:
            pending.add(pool.submit(*_job(source, config, parts, verify, read)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(*_job(nxt, config, parts, verify, read)))
        finished = True
    finally:
        if not finished:  # interrupted or failed: stop the workers now, not after their volume
            terminate(pool)
        pool.shutdown(wait=finished, cancel_futures=True)


def _run_ray(todo: list[VolumeSource], config: ReduceConfig, workers: int, address: str | None,
             parts: Outputs | None, verify: set[str]) -> Iterator[VolumeResult]:
    """The same per-volume work as Ray tasks (actors holding the network for a method that loads one).

    Connects to ``address`` (or RAY_ADDRESS); without one, starts a local Ray with ``workers``
    CPUs. Every node needs ctreduce installed (or a runtime_env that installs it), the inputs at the
    same paths and the run folder (its workers write the volumes' parts there). A volume whose worker
    died (or whose node was lost) is run again ``RAY_RETRIES`` times, then recorded as its error.
    """
    with ray_session(workers, address) as ray:
        if todo:
            written = {parts.parts: "the run folder (each node writes its volumes' parts)"} if parts else {}
            if parts is not None and parts.export is not None:  # reduce --export: each node writes its export part
                written[parts.export.folder] = "the export's folder (each node writes its volumes' export parts)"
            ray_nodes_see(ray, {Path(todo[0].source): "the inputs"}, written)
        if method_of(config).loads_network:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            # One actor per GPU (or per worker on CPUs): the network is loaded once per actor.
            actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_restarts=-1, max_task_retries=RAY_RETRIES,
                                   scheduling_strategy=RAY_SPREAD)(_RayReducer)
            actors = [actor_cls.remote() for _ in range(gpus or workers)]
            submits = [actor.run.remote for actor in actors]
            in_flight = 2 * len(actors)
        else:
            submits = [ray.remote(num_cpus=1, max_retries=RAY_RETRIES, scheduling_strategy=RAY_SPREAD)(_on_node).remote]
            in_flight = 2 * max(workers, int(ray.cluster_resources().get("CPU", workers)))
        pending: dict = {}  # object ref -> its volume
        for i, source in enumerate(todo):
            pending[submits[i % len(submits)](source, config, parts, source.volume_id in verify)] = source
            if len(pending) >= in_flight:
                yield _ray_result(ray, pending)
        while pending:
            yield _ray_result(ray, pending)


def _ray_result(ray, pending: dict) -> VolumeResult:
    """The next volume to finish; a worker that died on it (its retries spent) is that volume's error, not the
    run's. The errors a task raises itself (a full disk) stop the run as they do locally."""
    ready, _ = ray.wait(list(pending), num_returns=1)
    source = pending.pop(ready[0])
    try:
        return ray.get(ready[0])
    except ray.exceptions.RayTaskError:
        raise
    except ray.exceptions.RayError as exc:
        return VolumeResult(source.volume_id, source.source, error=f"{source.source}: {ray_failure(exc)}")


def _on_node(source: VolumeSource, config: ReduceConfig, parts: Outputs | None, verify: bool) -> VolumeResult:
    """A Ray task: the volume's result, with the node that ran it."""
    import ray

    result = verify_source(source, config, parts) if verify else process_source(source, config, parts)
    result.node = ray.get_runtime_context().get_node_id()
    return result


class _RayReducer:
    def run(self, source: VolumeSource, config: ReduceConfig, parts: Outputs | None, verify: bool) -> VolumeResult:
        return _on_node(source, config, parts, verify)
