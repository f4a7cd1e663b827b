"""Pluggable executors: run independent per-shard tasks, yield results as they finish.

Results arrive in completion order; callers sort by shard id, so the output never depends
on which worker (or the caller) finished first. Workers never fork from the caller (torch/OpenMP state does not
survive fork reliably): on Linux they fork from multiprocessing's fork server, a fresh process
that imported only the preload modules (numpy, OpenCV, occsynth's build: no torch) with
OMP_NUM_THREADS=1, so N workers cost one import instead of N (~0.6 s of CPU each, and on 2 cores
~0.6 s sooner at work: all of LFW re-aligned on 2 workers in 15.9-16.2 s against 16.7 with
'spawn'); elsewhere they are spawned.

An executor used as a context manager keeps its workers for every `map_unordered` inside the
`with` block: a build of several datasets (lfw-block's ten levels) starts its workers once, and
each worker keeps what it loaded (stored landmarks, compiled occluders, the source) for the
next task. Without `with`, each `map_unordered` starts and stops its own workers.

`create_executor("process", N)` makes the caller one of the N: it starts N - 1 workers and runs
tasks itself between collecting their results (ProcessExecutor(parent_works=True)). It is at work
as soon as a serial run would be (all of LFW re-aligned on 2 cores: first task at 0.33 s), where
2 workers and an idle caller started at 0.5-0.6 s (the fork server's imports, then the tasks'
pickles); see DEVELOPERS.md, "The parent works".

`Shared(obj)` sends an object to the workers once instead of once per task: it is pickled once
in the parent and unpickled once per worker process (a source listing 13,233 LFW images takes
~0.2 s to pickle and unpickle; twelve tasks per level carried it each time).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import logging
import multiprocessing as mp
import os
import pickle
import queue
import sys
import threading
import uuid
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator

import cv2

try:
    from multiprocessing import forkserver
except ImportError:  # pragma: no cover - a platform without it spawns its workers (_context)
    forkserver = None

from occsynth.errors import UsageError
from occsynth.registry import Registry

logger = logging.getLogger(__name__)

Task = Any
Result = Any

# True in worker processes and while a serial executor runs tasks: OpenCV and torch use one
# thread (configure_threads), so results never depend on how many threads a kernel got.
_ONE_THREAD = False
_SAVED_TORCH_THREADS: list[int] = []  # torch's thread count before a serial run changed it


def configure_threads() -> None:
    """One thread for OpenCV and, once it is imported, torch, inside an executor's tasks.

    Builds from stored landmarks never import torch (seconds of start-up saved); detection
    imports it, and stages.detector() calls this right after, so detection runs on one thread
    whether the first task imported torch or not."""
    if not _ONE_THREAD:
        return
    cv2.setNumThreads(1)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        if not _SAVED_TORCH_THREADS:
            _SAVED_TORCH_THREADS.append(torch.get_num_threads())
        torch.set_num_threads(1)


def _init_worker(preload: tuple[str, ...] = (), warm: tuple = ()) -> None:
    # One thread per worker process: N workers use N cores. OMP_NUM_THREADS=1 (set for the
    # spawned workers) covers a later import of torch.
    global _ONE_THREAD
    _ONE_THREAD = True
    configure_threads()
    # what the tasks will need, made while the parent still plans (ProcessExecutor.start)
    for module in preload:
        importlib.import_module(module)
    for fn, args in warm:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a task meets the same error and reports it as its own
            logger.debug("worker warm-up %s failed", getattr(fn, "__name__", fn), exc_info=True)


def _call_frozen(fn: Callable[[Task], Result], task: Task) -> Result:
    """fn(task) in a pool worker, with what the worker holds when the task starts (modules,
    caches, the shared source, the task's samples) frozen out of the cyclic GC's collections
    (gc.freeze), which otherwise went through all of it again as the task allocated: ~1 s of a
    worker's ~13 s per lfw-block level. What the last task left is collected first, so no
    garbage cycle is frozen; a cycle frozen alive (a cache's) and dropped later stays until the
    worker ends."""
    gc.collect()
    gc.freeze()
    return fn(task)


class Shared:
    """An object pickled once in the parent and unpickled once per process that receives it;
    `get()` returns it (the object itself in the process that made it)."""

    _MEMO: OrderedDict[str, Any] = OrderedDict()  # token -> object, per process
    _MEMO_SIZE = 4

    def __init__(self, obj: Any):
        self.token = uuid.uuid4().hex
        self._obj = obj
        self._payload: bytes | None = None

    def __getstate__(self) -> dict:
        if self._payload is None:
            self._payload = pickle.dumps(self._obj, protocol=pickle.HIGHEST_PROTOCOL)
        return {"token": self.token, "payload": self._payload}

    def __setstate__(self, state: dict) -> None:
        self.token, self._payload, self._obj = state["token"], state["payload"], None

    def get(self) -> Any:
        if self._obj is None:
            memo = Shared._MEMO
            if self.token not in memo:
                memo[self.token] = pickle.loads(self._payload)
                while len(memo) > Shared._MEMO_SIZE:
                    memo.popitem(last=False)
            self._obj = memo[self.token]
        return self._obj


def shared_value(value: Any) -> Any:
    """`value.get()` for a Shared, else the value itself."""
    return value.get() if isinstance(value, Shared) else value


class SerialExecutor:
    """In-process, one task at a time (debugging, tests, --workers 1)."""

    name = "serial"

    def __init__(self, workers: int = 1):
        self.workers = 1

    def __enter__(self) -> SerialExecutor:
        return self

    def start(self, preload: tuple[str, ...] = (), warm: tuple = ()) -> None:
        """Nothing to start: tasks run here."""

    def __exit__(self, *exc) -> None:
        pass

    def map_unordered(self, fn: Callable[[Task], Result], tasks: Iterable[Task]) -> Iterator[Result]:
        with _one_thread():
            for task in tasks:
                yield fn(task)


@contextlib.contextmanager
def _one_thread():
    """Tasks run in this process on one OpenCV (and torch) thread, as in a worker; the counts
    before are restored after. (Nothing changes inside a worker or a serial run: already one.)"""
    global _ONE_THREAD
    if _ONE_THREAD:
        yield
        return
    cv_threads = cv2.getNumThreads()
    _ONE_THREAD = True
    try:
        configure_threads()
        yield
    finally:
        _ONE_THREAD = False
        cv2.setNumThreads(cv_threads)
        torch = sys.modules.get("torch")
        if torch is not None and _SAVED_TORCH_THREADS:
            torch.set_num_threads(_SAVED_TORCH_THREADS.pop())


def _context(preload: tuple[str, ...]):
    """The start method of the workers: the fork server on Linux (started by the first pool,
    it stays for the life of this process with what it imported then), 'spawn' elsewhere."""
    if forkserver is None or not sys.platform.startswith("linux") or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", *preload])  # read when the server starts, not after
    return ctx


class _Starting:
    """A pool being made in a thread; get() waits for it (and raises what making it raised)."""

    def __init__(self, make: Callable[[], Any]):
        self._made, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(make,), name="occsynth-workers", daemon=True)
        self._thread.start()

    def _run(self, make: Callable[[], Any]) -> None:
        try:
            self._made = make()
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for the pool
            self._error = exc

    def get(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._made


class ProcessExecutor:
    """A local multiprocessing pool (the default)."""

    name = "process"

    def __init__(self, workers: int = 2, parent_works: bool = False):
        if not isinstance(workers, int) or workers < 1:
            raise UsageError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers  # processes at work: the pool's, plus the caller if parent_works
        # the caller runs tasks too and starts one worker fewer (with 2 or more workers)
        self.parent_works = parent_works and workers > 1
        self._keep = False  # inside `with`: the pool lives until the block ends
        self._pool = None
        self._size = 0

    def _start(self, size: int, preload: tuple[str, ...] = (), warm: tuple = (), background: bool = False):
        ctx = _context(preload)

        def make():
            return ctx.Pool(size, initializer=_init_worker, initargs=(tuple(preload), tuple(warm)))

        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers (or the fork server)
        try:
            if ctx.get_start_method() != "forkserver":
                return make()
            forkserver.ensure_running()  # the server starts now, with these settings for its workers
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS")
            else:
                os.environ["OMP_NUM_THREADS"] = saved
        # making the pool waits until the server has imported the preload modules (~0.5 s): in a
        # thread, the caller's listing and planning go on meanwhile (start())
        return _Starting(make) if background else make()

    def _ready(self):
        """The pool, once a pool being made in a thread (start()) is made."""
        if isinstance(self._pool, _Starting):
            starting, self._pool = self._pool, None
            self._pool = starting.get()
        return self._pool

    def __enter__(self) -> ProcessExecutor:
        self._keep = True
        return self

    def start(self, preload: tuple[str, ...] = (), warm: tuple = ()) -> None:
        """Inside `with`: start all the workers now, importing the modules `preload` and calling
        each (function, args) of `warm` (errors ignored: the tasks meet them), so that their
        start-up (~1 s: an interpreter, numpy, OpenCV, occsynth, stored landmarks) overlaps
        the caller's listing and planning instead of following it. (A build of fewer shards
        than workers then has an idle worker; without start() only as many as there are tasks
        are started.)"""
        if self._keep and self._pool is None:
            size = self.workers - self.parent_works
            self._pool, self._size = self._start(size, preload, warm, background=True), size

    def __exit__(self, exc_type, exc, tb) -> None:
        self._keep = False
        self._close()

    def _close(self) -> None:
        # every map_unordered has been consumed (or abandoned on an error): nothing is pending,
        # and terminating idle workers is immediate where close() waits for each to wind down
        try:
            self._ready()
        except Exception:  # noqa: BLE001 - no task ran on it: the caller's own error (if any) stands
            logger.debug("starting the workers failed", exc_info=True)
        pool, self._pool, self._size = self._pool, None, 0
        if pool is not None:
            pool.terminate()
            pool.join()

    def map_unordered(self, fn: Callable[[Task], Result], tasks: Iterable[Task]) -> Iterator[Result]:
        tasks = list(tasks)
        if not tasks:
            return
        if self.parent_works:
            yield from self._map_with_parent(fn, tasks)
            return
        size = min(self.workers, len(tasks))  # no idle worker is started
        call = functools.partial(_call_frozen, fn)
        if not self._keep:
            with self._start(size) as pool:
                yield from pool.imap_unordered(call, tasks, chunksize=1)
            return
        self._kept_pool(size)
        yield from self._ready().imap_unordered(call, tasks, chunksize=1)

    def _kept_pool(self, size: int, background: bool = False):
        """Inside `with`: the kept pool (or the one being made), started anew if it has fewer
        than `size` workers."""
        if self._pool is None or self._size < size:
            self._close()
            self._pool, self._size = self._start(size, background=background), size
        return self._pool

    def _map_with_parent(self, fn: Callable[[Task], Result], tasks: list[Task]) -> Iterator[Result]:
        """The pool's workers and this process take the tasks one at a time from one list: each
        worker is handed its next task as its result arrives (in the pool's result thread), and
        this process runs one whenever no result waits to be yielded. It starts at once, while the
        workers may still be starting (their first tasks are handed over when they are ready)."""
        size = min(self.workers - 1, len(tasks) - 1)  # this process takes one task at least
        if size < 1:
            yield from SerialExecutor().map_unordered(fn, tasks)
            return
        owned = None if self._keep else self._start(size, background=True)
        starting = owned if owned is not None else self._kept_pool(size, background=True)
        call = functools.partial(_call_frozen, fn)
        lock = threading.Lock()
        todo = iter(tasks)
        arrived: queue.SimpleQueue = queue.SimpleQueue()  # (ok, result or exception), as they finish
        stop = threading.Event()  # the caller stopped (an error, or it left): hand out no more

        def take() -> Any:
            with lock:
                return _END if stop.is_set() else next(todo, _END)

        def hand_out(pool) -> None:
            task = take()
            if task is _END:
                return
            try:
                pool.apply_async(
                    call,
                    (task,),
                    callback=lambda r: (arrived.put((True, r)), hand_out(pool)),
                    error_callback=lambda e: arrived.put((False, e)),
                )
            except Exception as exc:  # noqa: BLE001 - the pool was closed under us: the caller stops
                arrived.put((False, exc))

        def feed() -> None:
            try:
                pool = starting.get() if isinstance(starting, _Starting) else starting
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                arrived.put((False, exc))
                return
            for _ in range(size):
                hand_out(pool)

        threading.Thread(target=feed, name="occsynth-feed", daemon=True).start()
        try:
            with _one_thread():
                for _ in range(len(tasks)):
                    try:
                        ok, result = arrived.get_nowait()
                    except queue.Empty:
                        task = take()
                        if task is _END:  # every task is out: wait for the workers' last ones
                            ok, result = arrived.get()
                        else:
                            # run here (keeping this process's objects out of the GC is the
                            # caller's part: build_all freezes them, not a worker's gc.freeze)
                            ok, result = True, fn(task)
                    if not ok:
                        raise result
                    yield result
        finally:
            stop.set()
            if owned is not None:
                self._pool = owned
                self._close()


_END = object()  # no task left to hand out


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

    def __enter__(self) -> RayExecutor:
        return self

    def start(self, preload: tuple[str, ...] = (), warm: tuple = ()) -> None:
        """Ray starts its workers itself."""

    def __exit__(self, *exc) -> None:
        pass

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
    """`process` with workers=1 runs serially in-process (no pool start-up cost); with more, the
    caller is one of the `workers` processes at work (ProcessExecutor(parent_works=True))."""
    cls = EXECUTORS.get(name)
    if name == "process" and workers == 1:
        return SerialExecutor()
    if name == "process":
        return cls(workers, parent_works=True)
    return cls(workers)
