"""Pluggable executors: run independent per-shard tasks, yield results as they finish.

Results arrive in completion order; callers sort by shard id, so the output never depends
on which worker finished first. Workers are started with 'spawn' because torch/OpenMP state
does not survive fork reliably.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Any, Callable, Iterable, Iterator

import cv2

from occsynth.errors import UsageError
from occsynth.registry import Registry

Task = Any
Result = Any


def _init_worker() -> None:
    # One thread per worker process: N workers use N cores, and results do not depend on
    # how many threads a kernel happened to get. torch is only configured if already loaded
    # (OMP_NUM_THREADS covers a later import): builds from stored landmarks never import it,
    # which saves seconds of start-up per worker.
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class SerialExecutor:
    """In-process, one task at a time (debugging, tests, --workers 1)."""

    name = "serial"

    def __init__(self, workers: int = 1):
        self.workers = 1

    def map_unordered(self, fn: Callable[[Task], Result], tasks: Iterable[Task]) -> Iterator[Result]:
        import torch  # optional heavy: only serial runs need it configured here

        # torch is imported here so serial runs detect with one thread, like the workers.
        threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
        _init_worker()
        try:
            for task in tasks:
                yield fn(task)
        finally:
            torch.set_num_threads(threads)
            cv2.setNumThreads(cv_threads)


class ProcessExecutor:
    """A local multiprocessing pool (the default)."""

    name = "process"

    def __init__(self, workers: int = 2):
        if not isinstance(workers, int) or workers < 1:
            raise UsageError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers

    def map_unordered(self, fn: Callable[[Task], Result], tasks: Iterable[Task]) -> Iterator[Result]:
        tasks = list(tasks)
        if not tasks:
            return
        ctx = mp.get_context("spawn")
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers
        try:
            pool = ctx.Pool(min(self.workers, len(tasks)), initializer=_init_worker)
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS")
            else:
                os.environ["OMP_NUM_THREADS"] = saved
        with pool:
            yield from pool.imap_unordered(fn, tasks, chunksize=1)


class RayExecutor:
    """Ray tasks, for a cluster (`pip install occsynth[ray]`; connects to RAY_ADDRESS or
    starts a local instance). Every task must read its inputs from storage all nodes see."""

    name = "ray"

    def __init__(self, workers: int = 0):
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("the ray executor needs Ray: pip install 'occsynth[ray]'") from exc
        self.ray = ray
        self.workers = workers
        if not ray.is_initialized():
            ray.init(
                ignore_reinit_error=True,
                include_dashboard=False,
                log_to_driver=False,
                **({"num_cpus": workers} if workers else {}),
            )

    def map_unordered(self, fn: Callable[[Task], Result], tasks: Iterable[Task]) -> Iterator[Result]:
        ray = self.ray

        @ray.remote(num_cpus=1)
        def run(task):
            _init_worker()
            return fn(task)

        pending = [run.remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])


EXECUTORS: Registry[type] = Registry("executor")
for _executor in (SerialExecutor, ProcessExecutor, RayExecutor):
    EXECUTORS.register(_executor.name)(_executor)


def create_executor(name: str, workers: int):
    """`process` with workers=1 runs serially in-process (no pool start-up cost)."""
    cls = EXECUTORS.get(name)
    if name == "process" and workers == 1:
        return SerialExecutor()
    return cls(workers)
