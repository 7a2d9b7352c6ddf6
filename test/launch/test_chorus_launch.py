"""launch_pytest test of launch/chorus.launch.py, for robots (``colcon test``).

Skips cleanly where launch_pytest is not installed (dev/CI machines, where ``launch`` is not
installable: there test/ros/test_bringup.py starts the same node set in-process instead).
Needs a checkpoint: set CHORUS_TEST_CHECKPOINT to a checkpoint directory (default: the one in
the params file).
"""
import os
import time
from pathlib import Path

import pytest

launch_pytest = pytest.importorskip("launch_pytest", reason="launch_pytest is not installed (robots only)")
launch_ros = pytest.importorskip("launch_ros", reason="launch_ros is not installed (robots only)")

from launch import LaunchDescription  # noqa: E402  (after the skips: PyPI's `launch` is unrelated)
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

LAUNCH = Path(__file__).resolve().parents[2] / "launch" / "chorus.launch.py"
NS = "launch_test"


@launch_pytest.fixture
def launch_description():
    args = {"namespace": NS, "log_level": "info"}
    if os.environ.get("CHORUS_TEST_CHECKPOINT"):
        args["checkpoint"] = os.environ["CHORUS_TEST_CHECKPOINT"]
    return LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH)), launch_arguments=args.items()),
        launch_pytest.actions.ReadyToTest(),
    ])


@pytest.mark.launch(fixture=launch_description)
def test_both_nodes_come_up_with_status_and_services():
    import rclpy
    from chorus_ros.msg import Status
    from chorus_ros.srv import QueryObjects
    rclpy.init()
    try:
        node = rclpy.create_node("launch_probe")
        got = []
        node.create_subscription(Status, f"/{NS}/chorus_node/status", got.append, 10)
        client = node.create_client(QueryObjects, f"/{NS}/query_node/query")
        end = time.monotonic() + 60
        while time.monotonic() < end and not (got and client.service_is_ready()):
            rclpy.spin_once(node, timeout_sec=0.1)
        assert got, "no ~/status from chorus_node"
        assert client.service_is_ready(), "query_node's ~/query is not available"
        fut = client.call_async(QueryObjects.Request(text=""))
        rclpy.spin_until_future_complete(node, fut, timeout_sec=10)
        assert fut.result() is not None and not fut.result().success
        assert "empty" in fut.result().message
    finally:
        rclpy.shutdown()
