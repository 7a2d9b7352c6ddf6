"""chorus_ros.ros.executor.NodeExecutor: rclpy's MultiThreadedExecutor without the busy loop that
submits a task again while it still waits for a pool thread (docs/reliability.md, "The load
benchmark's stall")."""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("rclpy")


def _run(executor_cls, ros_context, hold_s: float = 0.6):
    """Two pool threads: one held by a blocking callback, the other kept busy by three 1 kHz timers
    whose callbacks take 3 ms, so tasks wait in the pool's queue while others finish.

    Returns ``(submits while held, distinct tasks among them, wait calls while held,
    fast callbacks run while held, most callbacks of the exclusive group running at once)``."""
    import rclpy
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup

    ex = executor_cls(num_threads=2, context=ros_context)
    node = rclpy.create_node("executor_probe", context=ros_context)
    ex.add_node(node)
    release, started = threading.Event(), threading.Event()
    runs: list[float] = []
    active = [0, 0]

    def blocker():
        if not started.is_set():
            started.set()
            release.wait(5.0)       # holds one pool thread

    def fast():
        active[0] += 1
        active[1] = max(active[1], active[0])
        time.sleep(0.003)
        active[0] -= 1
        runs.append(time.monotonic())

    node.create_timer(0.01, blocker, callback_group=ReentrantCallbackGroup())
    group = MutuallyExclusiveCallbackGroup()
    for _ in range(3):
        node.create_timer(0.001, fast, callback_group=group)
    submitted: list = []            # the task objects themselves (kept alive: no id reuse)
    calls = [0]
    pool_submit, wait = ex._executor.submit, ex.wait_for_ready_callbacks

    def submit(*a, **k):
        submitted.append(a[-1])
        return pool_submit(*a, **k)

    def counting_wait(*a, **k):
        calls[0] += 1
        return wait(*a, **k)
    ex._executor.submit = submit
    ex.wait_for_ready_callbacks = counting_wait
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    try:
        assert started.wait(5.0), "the blocking callback never ran"
        s0, c0, r0 = len(submitted), calls[0], len(runs)
        time.sleep(hold_s)
        held = submitted[s0:]
        result = (len(held), len({id(t) for t in held}), calls[0] - c0, len(runs) - r0)
    finally:
        release.set()
        ex.shutdown(timeout_sec=5.0)
        th.join(timeout=5.0)        # the spin thread ends before the node's timers are destroyed
        node.destroy_node()
    return (*result, active[1])


def test_node_executor_submits_each_task_once(ros_context):
    from chorus_ros.ros.executor import NodeExecutor
    submits, distinct, waits, runs, max_active = _run(NodeExecutor, ros_context)
    assert submits == distinct, f"{submits - distinct} tasks were handed to the pool twice"
    assert runs >= 20, runs                      # the free thread kept working
    assert waits <= 4 * (runs + 20), (waits, runs)   # wakes follow work, not a spin
    assert max_active == 1                       # rclpy's callback-group rules hold


def test_rclpy_multithreaded_executor_submits_queued_tasks_again(ros_context):
    """The reason for NodeExecutor, on the installed rclpy. If this starts failing, rclpy has fixed
    the re-submission and NodeExecutor can go (keep the test above either way)."""
    from rclpy.executors import MultiThreadedExecutor
    submits, distinct, waits, runs, _ = _run(MultiThreadedExecutor, ros_context)
    assert submits > distinct, (submits, distinct)


def test_node_executor_spin_once_keeps_its_timeout_while_a_task_is_queued(ros_context):
    """spin_once(timeout_sec=0) must not block for the queued-task wait (50 ms)."""
    import rclpy
    from rclpy.callback_groups import ReentrantCallbackGroup

    from chorus_ros.ros.executor import QUEUED_WAIT_S, NodeExecutor
    ex = NodeExecutor(num_threads=2, context=ros_context)
    node = rclpy.create_node("executor_timeout_probe", context=ros_context)
    ex.add_node(node)
    release = threading.Event()
    group = ReentrantCallbackGroup()
    for _ in range(3):   # two hold both pool threads, the third's task waits in the pool's queue
        node.create_timer(0.001, lambda: release.wait(5.0), callback_group=group)
    try:
        end = time.monotonic() + 2.0
        while ex.requeued == 0 and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.01)
        assert ex.requeued > 0, "no task was ever re-yielded while queued"
        longest = 0.0
        for _ in range(20):
            t0 = time.monotonic()
            ex.spin_once(timeout_sec=0)
            longest = max(longest, time.monotonic() - t0)
        assert longest < QUEUED_WAIT_S * 0.8, longest
    finally:
        release.set()
        ex.shutdown(timeout_sec=5.0)
        node.destroy_node()
