"""Fixtures for the ROS node tests: a private rclpy context per module, an executor spinning in
a background thread, and a probe node to publish, subscribe and call services over DDS.

DDS isolation (loopback only, a private ROS_DOMAIN_ID) is set by test/conftest.py before rclpy
is imported."""
from __future__ import annotations

import threading
import time

import pytest


class Harness:
    """Nodes spun by a MultiThreadedExecutor in a background thread, plus a probe node."""

    def __init__(self, context):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        self.context = context
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.probe = rclpy.create_node("probe", context=context)
        self.executor.add_node(self.probe)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:
            pass

    def add(self, node):
        self.executor.add_node(node)
        return node

    def remove(self, node):
        self.executor.remove_node(node)
        node.destroy_node()

    def collect(self, msg_type, topic, qos=None):
        """Subscribe on the probe node; returns the list that receives the messages."""
        from chorus_ros.ros import qos as q
        got = []
        self.probe.create_subscription(msg_type, topic, got.append, qos or q.images(50))
        return got

    def publisher(self, msg_type, topic, qos=None, wait_for=1, timeout=10.0):
        from chorus_ros.ros import qos as q
        pub = self.probe.create_publisher(msg_type, topic, qos or q.images(10))
        until(lambda: pub.get_subscription_count() >= wait_for, timeout, f"a subscriber of {topic}")
        return pub

    def call(self, srv_type, name, request, timeout=30.0):
        client = self.probe.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        fut = client.call_async(request)
        until(fut.done, timeout, f"a response from {name}")
        self.probe.destroy_client(client)
        return fut.result()

    def shutdown(self):
        self.executor.shutdown(timeout_sec=5.0)
        self.probe.destroy_node()


def until(cond, timeout=20.0, what="the condition", period=0.01):
    """Poll ``cond()`` until true; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def ros_context():
    """A private rclpy Context shared by one test module."""
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    ctx.try_shutdown()


@pytest.fixture(scope="module")
def harness(ros_context):
    h = Harness(ros_context)
    yield h
    h.shutdown()


@pytest.fixture(scope="session")
def wait_until():
    return until
