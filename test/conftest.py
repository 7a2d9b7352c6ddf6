"""Shared pytest set-up for chorus_ros.

At import time (before any test module can import rclpy) DDS is confined to loopback and the
run gets its own ROS domain id (:func:`chorus_ros.tools.isolate_ros_env`: 1..101, reserved
with a lock file so concurrent runs on one machine do not see each other's nodes); subprocesses
started by tests inherit both.

Markers:
  gpu   needs CUDA; skipped unless ``torch.cuda.is_available()`` (torch is only imported when
        a collected test carries the marker).
  ros   needs rclpy; skipped when rclpy cannot be imported.
  slow  takes more than a few seconds or is opt-in via an environment variable.
"""
from __future__ import annotations

import importlib.util

import pytest

from chorus_ros.tools import isolate_ros_env

ROS_DOMAIN_ID = isolate_ros_env()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "ros: needs rclpy (skipped when it cannot be imported)")
    config.addinivalue_line("markers", "slow: slower than a few seconds, or opt-in via an env var")


def pytest_report_header(config: pytest.Config) -> str:
    return f"chorus_ros: ROS_DOMAIN_ID={ROS_DOMAIN_ID}, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)
    ros_items = [item for item in items if item.get_closest_marker("ros")]
    if ros_items and importlib.util.find_spec("rclpy") is None:
        skip = pytest.mark.skip(reason="needs rclpy (not importable here)")
        for item in ros_items:
            item.add_marker(skip)

