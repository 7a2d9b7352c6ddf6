"""QoS profiles of chorus_ros topics (REP-2003), in one place.

==================  ==========================================  ===============================
stream              profile                                     why
==================  ==========================================  ===============================
map updates (sub)   reliable, transient-local, keep-last N      late joiners get the last FULL
                                                                snapshot; N > 1 on the *reader*
                                                                so a busy executor never
                                                                overwrites an unprocessed delta
map updates (pub)   reliable, transient-local, keep-last 1      latched snapshot (REP-2003 map)
label info,         reliable, transient-local, keep-last 1      latched tables: late joiners
object map                                                      receive the current one
poses, camera_info  best effort, volatile, keep-last 30         SensorDataQoS-compatible; a
                                                                best-effort reader also matches
                                                                reliable publishers; 1 s at
                                                                30 Hz, so a busy executor does
                                                                not lose requests uncounted
                                                                (the keep-newest view queue
                                                                drops and counts them)
images (outputs)    reliable, volatile, keep-last 2             derived data, small depth
status              reliable, volatile, keep-last 1             heartbeat
services            reliable, volatile, keep-last N             N = ``service_queue_depth``
                                                                (default 100; rclpy's 10 loses
                                                                requests of >10 clients)
==================  ==========================================  ===============================

Every publisher and subscription is created with :func:`overrides` so deployments can change
history/depth/reliability (and durability) through ``qos_overrides.<topic>.<entity>.<policy>``
parameters without code changes.
"""
from __future__ import annotations

from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSPolicyKind, QoSProfile,
                       QoSReliabilityPolicy)
from rclpy.qos_overriding_options import QoSOverridingOptions

__all__ = ["latched", "map_updates_sub", "sensor_input", "images", "status", "services", "overrides"]


def latched(depth: int = 1) -> QoSProfile:
    """Reliable + transient-local keep-last ``depth``: map snapshots, label tables, object maps."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


def map_updates_sub(depth: int = 16) -> QoSProfile:
    """Reader side of the map-update topic: latched, with room for ``depth`` unprocessed deltas."""
    return latched(depth)


def sensor_input(depth: int = 30) -> QoSProfile:
    """Poses and CameraInfo: best effort (matches best-effort *and* reliable publishers)."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=QoSReliabilityPolicy.BEST_EFFORT,
                      durability=QoSDurabilityPolicy.VOLATILE)


def images(depth: int = 2) -> QoSProfile:
    """Derived images: reliable, volatile, small depth."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.VOLATILE)


def status() -> QoSProfile:
    """The ``~/status`` heartbeat."""
    return images(1)


def services(depth: int = 100) -> QoSProfile:
    """Service request/response queues: reliable, volatile, keep-last ``depth`` (requests of more
    concurrent clients than ``depth`` would be lost by the middleware, uncounted)."""
    return images(int(depth))


def overrides(*, durability: bool = False) -> QoSOverridingOptions:
    """Options that declare ``qos_overrides.*`` parameters (history, depth, reliability, and
    durability when ``durability``) for one publisher or subscription."""
    kinds = [QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY]
    if durability:
        kinds.append(QoSPolicyKind.DURABILITY)
    return QoSOverridingOptions(kinds)
