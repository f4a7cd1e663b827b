"""ProcessExecutor(parent_works=True): the caller runs tasks too, beside N-1 pool workers."""

from __future__ import annotations

import os
import time

import cv2
import pytest

from occsynth.build.executor import ProcessExecutor, SerialExecutor, create_executor


def _where(x):
    """The task, the process that ran it, and OpenCV's thread count there."""
    time.sleep(0.02)  # long enough for both processes to take some tasks
    return x, os.getpid(), cv2.getNumThreads()


def _fail_in(task):
    """Fails where it is told to: in the caller (whose pid it carries) or in a worker."""
    where, caller, x = task
    time.sleep(0.05)
    if (os.getpid() == caller) == (where == "caller"):
        raise ValueError(f"task {x} failed in the {where}")
    return x


def test_create_executor_makes_the_caller_one_of_the_workers():
    executor = create_executor("process", 3)
    assert isinstance(executor, ProcessExecutor) and executor.parent_works and executor.workers == 3
    assert not ProcessExecutor(2).parent_works  # the class alone keeps the caller out
    assert not ProcessExecutor(1, parent_works=True).parent_works  # one worker: a pool of one
    assert isinstance(create_executor("process", 1), SerialExecutor)


def test_the_caller_and_one_worker_share_the_tasks_and_give_every_result_once():
    threads_before = cv2.getNumThreads()
    with ProcessExecutor(2, parent_works=True) as executor:
        executor.start()
        assert executor._size == 1  # one worker started: the caller is the other
        first = list(executor.map_unordered(_where, range(40)))
        second = list(executor.map_unordered(_where, range(6)))
    for results, n in ((first, 40), (second, 6)):
        assert sorted(x for x, _, _ in results) == list(range(n))
    pids = {pid for _, pid, _ in first + second}
    assert os.getpid() in pids and len(pids) == 2  # the caller and the same worker both times
    assert all(threads == 1 for _, _, threads in first + second)  # one OpenCV thread, as in a worker
    assert cv2.getNumThreads() == threads_before  # the caller's count is back


def test_without_with_each_map_starts_and_closes_its_own_worker():
    executor = ProcessExecutor(2, parent_works=True)
    one = {pid for _, pid, _ in executor.map_unordered(_where, range(20))}
    two = {pid for _, pid, _ in executor.map_unordered(_where, range(20))}
    assert one & two == {os.getpid()} and executor._pool is None


def test_a_single_task_runs_in_the_caller_without_starting_a_worker():
    executor = ProcessExecutor(2, parent_works=True)
    assert [pid for _, pid, _ in executor.map_unordered(_where, [0])] == [os.getpid()]
    assert executor._pool is None


@pytest.mark.parametrize("where", ["caller", "worker"])
def test_a_failing_task_raises_its_own_error_and_the_executor_goes_on(where):
    with ProcessExecutor(2, parent_works=True) as executor:
        executor.start()
        executor._ready()  # the worker is up: it takes a task as soon as the map starts
        with pytest.raises(ValueError, match=f"failed in the {where}"):
            list(executor.map_unordered(_fail_in, [(where, os.getpid(), x) for x in range(10)]))
        assert sorted(executor.map_unordered(_where, [5, 6, 7]))[0][0] == 5


def test_a_caller_that_stops_early_leaves_the_executor_usable():
    with ProcessExecutor(2, parent_works=True) as executor:
        results = executor.map_unordered(_where, range(50))
        next(results)
        results.close()  # the caller left: no more tasks are handed out
        assert sorted(x for x, _, _ in executor.map_unordered(_where, range(5))) == list(range(5))
