"""rosbag2 files without ``ros2 bag``: the demo bag generator and a raw-CDR replay.

* :func:`make_demo_bag` writes a bag (``rosbags``, MCAP, format 9) of a synthetic room being
  mapped: a FULL ``GaussianMapUpdate`` of the first part of the room, then DELTAs that add the
  rest in azimuth order around the room centre (as a scanning robot would), a few transient
  "clutter" Gaussians that a later DELTA removes again, and after each map step camera views
  (``<camera>/pose`` PoseStamped + ``<camera>/camera_info`` CameraInfo, equal stamps). Messages
  are built as rclpy messages and serialised with rclpy (CDR); the map topic carries its
  latched ``offered_qos_profiles`` so a replay re-creates it as transient-local.
* :func:`replay_bag` publishes the recorded raw CDR bytes on a live node (no deserialisation),
  paced by the recorded timestamps, with an optional hook before each message (the demo uses it
  to step in lock-step with the perception node).

Topic names in the bag are absolute (``/map_updates``, ``/camera_0/pose``); a replay can
prefix a namespace.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera

__all__ = ["DemoBagConfig", "DemoBagInfo", "make_demo_bag", "replay_bag", "read_bag", "msg_dir",
           "chorus_typestore", "MAP_TOPIC"]

MAP_TOPIC = "/map_updates"
_T0_NS = 1_700_000_000 * 1_000_000_000


@dataclass
class DemoBagConfig:
    """What :func:`make_demo_bag` records."""

    steps: int = 5
    """Map updates: one FULL, then steps - 1 DELTAs growing the map."""
    first_fraction: float = 0.4
    """Share of the scene's Gaussians in the FULL update."""
    views_per_step: int = 1
    """Camera views recorded after each map update (per camera)."""
    final_views: int = 4
    """Extra views of the complete map at the end (per camera)."""
    cameras: list[str] = field(default_factory=lambda: ["camera_0"])
    """Camera namespaces."""
    width: int = 160
    """Image width, pixels."""
    height: int = 120
    """Image height, pixels."""
    fov_x_deg: float = 75.0
    """Horizontal field of view, degrees."""
    clutter: int = 200
    """Transient Gaussians added by the second update and removed by the last (0 = none)."""
    step_s: float = 1.0
    """Time between map updates in the bag, seconds."""
    map_id: str = "demo"
    """GaussianMapUpdate.map_id."""
    map_frame: str = "map"
    """Frame of the map and of the camera poses."""
    seed: int = 0
    """Seed of the clutter and the view order."""


@dataclass
class DemoBagInfo:
    """What was written."""

    path: Path
    map_updates: int
    views: int
    total_gaussians: int
    """Gaussians in the final map (clutter removed)."""
    final_ids: np.ndarray
    """Ids of the final map's Gaussians, sorted."""
    view_stamps_ns: list[int]
    """Stamps of every recorded view, in order."""


def msg_dir() -> Path:
    """The package's interface definitions (source tree, else the installed share dir)."""
    src = Path(__file__).resolve().parents[2]
    if (src / "msg" / "GaussianMapUpdate.msg").is_file():
        return src
    from ament_index_python.packages import get_package_share_directory
    return Path(get_package_share_directory("chorus_ros"))


def chorus_typestore():
    """rosbags typestore (ROS 2 Kilted) with chorus_ros's messages registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    ts = get_typestore(Stores.ROS2_KILTED)
    types: dict = {}
    for f in sorted((msg_dir() / "msg").glob("*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"chorus_ros/msg/{f.stem}"))
    ts.register(types)
    return ts


def _latched_qos():
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    inf = QosTime(0x7FFFFFFF, 0xFFFFFFFF)
    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
               inf, inf, QosLiveliness.AUTOMATIC, inf, False)


def _growth_order(g: GaussianArrays, seed: int) -> np.ndarray:
    """Gaussian indices in the order a robot scanning around the room centre would add them."""
    xy = g.means[:, :2].numpy().astype(np.float64)
    c = (xy.min(0) + xy.max(0)) / 2
    ang = np.arctan2(xy[:, 1] - c[1], xy[:, 0] - c[0])
    start = np.random.default_rng(seed).uniform(-np.pi, np.pi)
    return np.argsort(np.mod(ang - start, 2 * np.pi), kind="stable")


def _clutter(g: GaussianArrays, n: int, seed: int, first_id: int) -> GaussianArrays:
    rng = np.random.default_rng([seed, 7])
    lo, hi = g.means.min(0).values.numpy(), g.means.max(0).values.numpy()
    mid = (lo + hi) / 2
    means = mid + (rng.random((n, 3)) - 0.5) * (hi - lo) * 0.3
    k = g.sh.shape[1]
    sh = np.zeros((n, k, 3), np.float32)
    sh[:, 0] = rng.normal(0, 1.0, (n, 3))
    return GaussianArrays(torch.tensor(means, dtype=torch.float32), torch.from_numpy(sh),
                          torch.full((n,), 2.0), torch.full((n, 3), float(np.log(0.03))),
                          torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                          torch.arange(first_id, first_id + n, dtype=torch.int64))


def _views(scene, cfg: DemoBagConfig, count: int):
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    tcfg = TrajectoryConfig(loop_views=max(count, 1), random_views=0, width=cfg.width,
                            height=cfg.height, fov_x_deg=cfg.fov_x_deg, seed=cfg.seed)
    return make_trajectory(scene, tcfg).cameras


def make_demo_bag(path: str | Path, scene=None, config: DemoBagConfig | None = None) -> DemoBagInfo:
    """Record the demo bag of ``scene`` (default: the built-in default synthetic scene).

    Args:
        path: bag directory to create (must not exist).
        scene: a :class:`~chorus_ros.core.synthetic.SyntheticScene`; its ground-truth extras
            are *not* recorded (the map carries only 3DGS parameters and ids).
        config: see :class:`DemoBagConfig`.
    """
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer

    from chorus_ros.ros.conversions import camera_to_msgs
    from chorus_ros.ros.map_updates import map_update_to_msg

    cfg = config or DemoBagConfig()
    if cfg.steps < 1 or not 0 < cfg.first_fraction <= 1:
        raise InvalidInputError(f"need steps >= 1 and first_fraction in (0, 1], got {cfg.steps}, "
                                f"{cfg.first_fraction}")
    if scene is None:
        from chorus_ros.core.synthetic import generate_scene
        scene = generate_scene(default_scene_config())
    path = Path(path)
    if path.exists():
        raise InvalidInputError(f"bag path {path} already exists")
    g = scene.gaussians
    g = GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids)  # drop GT extras
    order = _growth_order(g, cfg.seed)
    n = len(g)
    n_first = max(1, int(round(cfg.first_fraction * n)))
    bounds = [0, n_first] + [n_first + int(round((n - n_first) * (s / max(cfg.steps - 1, 1))))
                             for s in range(1, cfg.steps)]
    bounds[-1] = n
    clutter = _clutter(g, cfg.clutter, cfg.seed, int(g.ids.max()) + 1) if cfg.clutter and cfg.steps >= 3 else None
    per_step = cfg.views_per_step
    cams = _views(scene, cfg, max(1, per_step * cfg.steps + cfg.final_views))
    ts = chorus_typestore()
    step_ns = int(cfg.step_s * 1e9)
    view_stamps: list[int] = []
    n_views = 0
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_map = w.add_connection(MAP_TOPIC, "chorus_ros/msg/GaussianMapUpdate", typestore=ts,
                                 offered_qos_profiles=[_latched_qos()])
        c_pose = {c: w.add_connection(f"/{c}/pose", "geometry_msgs/msg/PoseStamped", typestore=ts)
                  for c in cfg.cameras}
        c_info = {c: w.add_connection(f"/{c}/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
                  for c in cfg.cameras}

        def write_views(t_ns: int, k: int) -> None:
            nonlocal n_views
            for j in range(k):
                stamp = t_ns + (j + 1) * step_ns // (k + 1)
                for ci, c in enumerate(cfg.cameras):
                    v = cams[(n_views + ci * 3) % len(cams)]
                    cam = Camera(v.viewmat, v.K, v.width, v.height, f"{c}_optical_frame")
                    pose, info = camera_to_msgs(cam, stamp, cfg.map_frame)
                    w.write(c_pose[c], stamp, serialize_message(pose))
                    w.write(c_info[c], stamp, serialize_message(info))
                view_stamps.append(stamp)
                n_views += 1

        for s in range(cfg.steps):
            t = _T0_NS + s * step_ns
            part = g.index(torch.from_numpy(order[bounds[s]:bounds[s + 1]].copy()))
            removed = None
            if clutter is not None and s == 1:
                part = GaussianArrays.concat([part, clutter])
            if clutter is not None and s == cfg.steps - 1:
                removed = clutter.ids
            msg = map_update_to_msg(part if len(part) else None, map_id=cfg.map_id, sequence=s,
                                    full=(s == 0), removed_ids=removed, stamp=t, frame_id=cfg.map_frame)
            w.write(c_map, t, serialize_message(msg))
            write_views(t, per_step)
        t_end = _T0_NS + cfg.steps * step_ns
        write_views(t_end, cfg.final_views)
    return DemoBagInfo(path, cfg.steps, n_views, n, np.sort(g.ids.numpy()), view_stamps)


def default_scene_config():
    """The built-in default scene of the demo (a modest size so the demo runs on 2 CPU cores)."""
    from chorus_ros.core.synthetic import SceneConfig
    try:  # the foundation demo's default scene, when it defines one
        from chorus_ros.tools.demo import demo_scene_config
        return demo_scene_config()
    except (ImportError, AttributeError):
        return SceneConfig(seed=0, target_gaussians=20_000)


# --------------------------------------------------------------------------------- replay
@dataclass
class BagMessage:
    """One recorded message."""

    topic: str
    msgtype: str
    t_ns: int
    raw: bytes
    qos: Any = None


def read_bag(path: str | Path) -> Iterator[BagMessage]:
    """Messages of a bag in time order, as raw CDR bytes (rosbags' AnyReader)."""
    from rosbags.highlevel import AnyReader
    with AnyReader([Path(path)]) as r:
        for c, t, raw in r.messages():
            qos = getattr(c.ext, "offered_qos_profiles", None)
            yield BagMessage(c.topic, c.msgtype, int(t), bytes(raw), qos[0] if qos else None)


def _msg_class(msgtype: str):
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def _rclpy_qos(bag_qos, msgtype: str, map_depth: int):
    from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    if bag_qos is None:
        return QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
    rel = (QoSReliabilityPolicy.BEST_EFFORT if bag_qos.reliability.name == "BEST_EFFORT"
           else QoSReliabilityPolicy.RELIABLE)
    dur = (QoSDurabilityPolicy.TRANSIENT_LOCAL if bag_qos.durability.name == "TRANSIENT_LOCAL"
           else QoSDurabilityPolicy.VOLATILE)
    depth = max(int(bag_qos.depth), 1)
    if dur == QoSDurabilityPolicy.TRANSIENT_LOCAL and rel == QoSReliabilityPolicy.RELIABLE:
        # a latched topic recorded at depth 1 still must not lose a delta to a slow reader
        depth = max(depth, map_depth)
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth, reliability=rel, durability=dur)


def replay_bag(path: str | Path, node, *, rate: float = 1.0, namespace: str = "",
               wait_for_subscribers: float = 5.0, before_publish: Callable[[BagMessage], None] | None = None,
               topics: list[str] | None = None, map_depth: int = 64,
               stop: Callable[[], bool] | None = None) -> int:
    """Publish a bag's messages as raw CDR on ``node`` (which must be spun by someone else).

    Args:
        path: the bag.
        node: an rclpy node used to create the publishers.
        rate: speed factor on the recorded timing (0 = as fast as possible).
        namespace: prefix for the recorded (absolute) topic names, e.g. 'robot1'.
        wait_for_subscribers: seconds to wait for every publisher to be matched before starting.
        before_publish: called with each message before it is published (e.g. to wait until a
            node is idle: a lock-step replay).
        topics: only these recorded topics (default: all).
        map_depth: writer depth used for reliable transient-local topics (see the code).
        stop: polled between messages; True ends the replay early.

    Returns:
        Number of messages published.
    """
    msgs = [m for m in read_bag(path) if topics is None or m.topic in topics]
    pubs: dict[str, Any] = {}
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    for m in msgs:
        if m.topic not in pubs:
            pubs[m.topic] = node.create_publisher(_msg_class(m.msgtype), ns + m.topic,
                                                  _rclpy_qos(m.qos, m.msgtype, map_depth))
    end = time.monotonic() + wait_for_subscribers
    while time.monotonic() < end and any(p.get_subscription_count() == 0 for p in pubs.values()):
        time.sleep(0.02)
    if not msgs:
        return 0
    t_first, wall_first = msgs[0].t_ns, time.monotonic()
    n = 0
    for m in msgs:
        if stop is not None and stop():
            break
        if rate > 0:
            delay = wall_first + (m.t_ns - t_first) / 1e9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if before_publish is not None:
            before_publish(m)
        pubs[m.topic].publish(m.raw)
        n += 1
    return n
