"""The executor the nodes run in: rclpy's MultiThreadedExecutor without its busy loop.

rclpy's ``MultiThreadedExecutor`` (Kilted, rclpy 9.1) keeps every callback it has handed to its
thread pool in a task list, and each pass of ``wait_for_ready_callbacks`` first yields again every
task that is "not executing and not done". A task that waits in the pool's queue (all threads
busy, or a thread not yet scheduled) is exactly that, so at every wake of the wait set the spin
thread submits each queued task once more. The pool's queue and the executor's futures list fill
with copies, which the spin thread scans on every pass, and every pass also rebuilds the wait
set (every subscription, service and QoS event handler of every node) in Python. Under load the
wakes never stop and the queue never empties, and in one process with the GIL that starves
everything else. Under the load benchmark (30 Hz views, 10 Hz map deltas, 20 query clients) the
spin thread held the GIL about half of the time. An incremental encode of a 1 % delta took 20 s
instead of a fraction of a second. Map updates piled up in DDS until the oldest were overwritten
(a sequence gap; docs/reliability.md, "The load benchmark's stall"). Upstream this is
ros2/rclpy issue 1452, fixed by pull request 1547 (merged 2025-11-25) in releases newer than
the Kilted wheels installed here; test/ros/test_executor.py notices when the installed rclpy
has the fix.

:class:`NodeExecutor` submits each task once. When the wait yields a task that is still queued,
the spin thread blocks until a pool thread takes a task (or 50 ms pass, or the spin's own timeout)
instead of spinning.
Everything else (callback groups, futures, coroutine tasks, shutdown) is rclpy's.
"""
from __future__ import annotations

import threading
from typing import Callable

from rclpy.executors import (ConditionReachedException, ExternalShutdownException, MultiThreadedExecutor,
                             ShutdownException, TimeoutException)

__all__ = ["NodeExecutor"]

QUEUED_WAIT_S = 0.05
"""Longest the spin thread blocks when the wait yields a task that still waits for a pool thread."""


class NodeExecutor(MultiThreadedExecutor):
    """A ``MultiThreadedExecutor`` that submits each task to its pool once (see the module doc).

    Args:
        num_threads: pool threads (rclpy's default when None: the CPU count, at least 2).
        context: the rclpy context.
    """

    def __init__(self, num_threads: int | None = None, *, context=None) -> None:
        super().__init__(num_threads=num_threads, context=context)
        self._queued: set[int] = set()          # id() of tasks submitted and not yet started
        self._taken = threading.Condition()
        self.requeued = 0
        """Times the wait yielded a task that was still queued (it is not submitted again)."""

    def _run_task(self, task) -> None:
        with self._taken:
            self._queued.discard(id(task))
            self._taken.notify_all()
        task()

    def _spin_once_impl(self, timeout_sec: float | None = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            handler, _entity, _node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        with self._taken:
            if id(handler) in self._queued:
                self.requeued += 1
                limit = getattr(timeout_sec, "timeout", timeout_sec)   # a float, None or a TimeoutObject
                self._taken.wait(QUEUED_WAIT_S if limit is None or limit < 0 else min(QUEUED_WAIT_S, limit))
                return
            self._queued.add(id(handler))
        try:
            self._executor.submit(self._run_task, handler)
        except RuntimeError:                     # the pool was shut down: nothing will run it
            with self._taken:
                self._queued.discard(id(handler))
            raise
        self._futures.append(handler)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()                  # raise any exceptions

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"NodeExecutor(threads={self._executor._max_workers}, queued={len(self._queued)})"
