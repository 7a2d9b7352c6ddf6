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

* :func:`make_scene_bag` writes a bag (MCAP or SQLite3) of any scene folder
  (:func:`chorus_ros.core.datasets.open_scene`): the map (ground truth stripped) arriving in
  spatial pieces, then the posed views with their ground-truth images on topics of their own
  (:data:`SCENE_BAG_TOPICS`); :func:`read_scene_bag` reads the ground truth back
  (``chorus-eval --bag`` scores the nodes' outputs against it).

Topic names in the bag are absolute (``/map_updates``, ``/camera_0/pose``); a replay can
prefix a namespace.
"""
from __future__ import annotations

import array
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
           "chorus_typestore", "MAP_TOPIC", "SceneBagConfig", "SceneBagInfo", "SceneBag", "make_scene_bag",
           "read_scene_bag", "apply_map_update", "scene_bag_topics", "SCENE_INFO_TOPIC", "GT_LABELS_TOPIC",
           "GT_GAUSSIANS_TOPIC"]

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


# ----------------------------------------------------------------------------- scene bags
SCENE_INFO_TOPIC = "/ground_truth/scene_info"
"""std_msgs/String (JSON) describing a scene bag (see :func:`scene_bag_topics`)."""
GT_LABELS_TOPIC = "/ground_truth/label_info"
"""chorus_ros/LabelInfo: the scene folder's class table (ids as in the ground-truth images)."""
GT_GAUSSIANS_TOPIC = "/ground_truth/gaussian_labels"
"""sensor_msgs/PointCloud2 with UINT32 fields id, label, instance: per-Gaussian ground truth."""
SCENE_BAG_FORMAT = "chorus_ros.scene_bag"
_GT_KINDS = {"semantic": "16UC1", "instance": "16UC1", "depth": "32FC1"}


def scene_bag_topics(camera: str = "camera_0") -> dict[str, tuple[str, str]]:
    """Topic -> (message type, what it carries) of a bag written by :func:`make_scene_bag`.

    The first four are the nodes' inputs (``chorus-eval --bag`` replays only these; the camera
    image is read by chorus_node's fusion mode 'camera' only); everything under ``/ground_truth``
    is for scoring and never reaches the nodes."""
    cam = camera.strip("/")
    gt = f"/ground_truth/{cam}"
    return {
        MAP_TOPIC: ("chorus_ros/msg/GaussianMapUpdate", "the map (ground truth stripped) in spatial pieces: "
                    "piece 0 as a FULL update, the others as DELTAs; reliable + transient-local"),
        f"/{cam}/pose": ("geometry_msgs/msg/PoseStamped", "camera pose of each view in the map frame "
                         "(optical frame, OpenCV axes), after the last map piece"),
        f"/{cam}/camera_info": ("sensor_msgs/msg/CameraInfo", "intrinsics of each view; same stamp as its pose"),
        f"/{cam}/image_raw": ("sensor_msgs/msg/Image", "rgb8 the folder's colour image of each view, same "
                              "header stamp, recorded 1 us before the pose (optional)"),
        SCENE_INFO_TOPIC: ("std_msgs/msg/String", "JSON: scene name, class table, unlabeled and no-instance "
                           "ids, stuff classes, frame indices, view stamps, camera, pieces; latched"),
        GT_LABELS_TOPIC: ("chorus_ros/msg/LabelInfo", "the folder's class table (ids of the ground-truth "
                          "images); latched"),
        GT_GAUSSIANS_TOPIC: ("sensor_msgs/msg/PointCloud2", "per-Gaussian ground truth (UINT32 fields id, "
                             "label, instance) when the PLY carries it; latched"),
        f"{gt}/semantic/image_raw": ("sensor_msgs/msg/Image", "16UC1 ground-truth class ids (folder ids; "
                                     "the folder's unlabeled id = none), the view's stamp"),
        f"{gt}/instance/image_raw": ("sensor_msgs/msg/Image", "16UC1 ground-truth instance ids (the folder's "
                                     "no-instance id = none)"),
        f"{gt}/depth/image_raw": ("sensor_msgs/msg/Image", "32FC1 the folder's depth, metres, 0 = none "
                                  "(optional)"),
    }


@dataclass
class SceneBagConfig:
    """What :func:`make_scene_bag` records."""

    pieces: int = 4
    """Spatial pieces of the map (a sweep around the map centre): the first arrives as a FULL
    update, each other one as a DELTA."""
    storage: str = "mcap"
    """rosbag2 storage: 'mcap' or 'sqlite3'."""
    camera: str = "camera_0"
    """Camera namespace of the poses, CameraInfo and ground-truth images."""
    map_frame: str = "map"
    """Frame of the map and of the camera poses."""
    map_id: str = ""
    """GaussianMapUpdate.map_id ('' = the scene's name)."""
    map_period_s: float = 1.0
    """Time between map pieces in the bag, seconds."""
    view_period_s: float = 0.1
    """Time between views in the bag, seconds (the views follow the last map piece)."""
    include_rgb: bool = True
    """Record the folder's colour images (as the camera's ``image_raw``)."""
    include_depth: bool = True
    """Record the folder's depth images."""


@dataclass
class SceneBagInfo:
    """What :func:`make_scene_bag` wrote."""

    path: Path
    map_updates: int
    views: int
    total_gaussians: int
    view_stamps_ns: list[int]
    topics: list[str]
    """Topics written, sorted."""
    ignored_properties: list[str]
    """PLY properties of the map that were not recorded (ground truth and other extras)."""


def _check_new_bag(path: Path) -> None:
    if path.exists():
        raise InvalidInputError(f"bag path {path} already exists")
    if not path.parent.is_dir():
        raise InvalidInputError(f"cannot write bag {path}: folder {path.parent} does not exist")


def _storage_plugin(name: str):
    from rosbags.rosbag2 import StoragePlugin
    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if name not in plugins:
        raise InvalidInputError(f"unknown bag storage {name!r}; known: {sorted(plugins)}")
    return plugins[name]


def _map_pieces(g: GaussianArrays, pieces: int) -> list[torch.Tensor]:
    """Row indices of ``pieces`` spatial pieces (a sweep around the centre, equal counts)."""
    order = torch.from_numpy(_growth_order(g, 0).copy()) if len(g) else torch.zeros(0, dtype=torch.long)
    return [p for p in torch.tensor_split(order, max(1, min(pieces, max(len(g), 1))))]


def make_scene_bag(path: str | Path, scene, config: SceneBagConfig | None = None,
                   progress: Callable[[int, int], None] | None = None) -> SceneBagInfo:
    """Record a scene folder as a bag (topics: :func:`scene_bag_topics`).

    Args:
        path: bag directory to create (must not exist; its parent must).
        scene: a :class:`~chorus_ros.core.datasets.SceneFolder` (:func:`~chorus_ros.core.datasets.open_scene`);
            its map is recorded without any extra PLY property (ground truth never reaches the nodes).
        config: see :class:`SceneBagConfig`.
        progress: optional ``f(done, total)`` after each view.

    Timeline: the scene info and class table at t0, map piece ``k`` at ``t0 + k * map_period_s``,
    view ``j`` at ``t0 + pieces * map_period_s + j * view_period_s`` (pose, CameraInfo and the
    ground-truth images share that stamp).
    """
    import json

    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import Writer
    from std_msgs.msg import ColorRGBA, String

    from chorus_ros.core.datasets import strip_gaussians
    from chorus_ros.msg import LabelEntry, LabelInfo
    from chorus_ros.ros.conversions import camera_to_msgs, header, numpy_to_image
    from chorus_ros.ros.map_updates import map_update_to_msg

    cfg = config or SceneBagConfig()
    if cfg.pieces < 1:
        raise InvalidInputError(f"pieces must be >= 1, got {cfg.pieces}")
    if cfg.map_period_s <= 0 or cfg.view_period_s <= 0:
        raise InvalidInputError(f"map_period_s and view_period_s must be > 0, got {cfg.map_period_s}, "
                                f"{cfg.view_period_s}")
    plugin = _storage_plugin(cfg.storage)
    path = Path(path)
    _check_new_bag(path)
    cam_ns = cfg.camera.strip("/")
    if not cam_ns:
        raise InvalidInputError("camera namespace is empty")
    topics = scene_bag_topics(cam_ns)
    g = strip_gaussians(scene.gaussians)
    pieces = _map_pieces(g, cfg.pieces)
    map_ns, view_ns = int(cfg.map_period_s * 1e9), int(cfg.view_period_s * 1e9)
    t_views = _T0_NS + len(pieces) * map_ns
    stamps = [t_views + j * view_ns for j in range(len(scene))]
    map_id = cfg.map_id or scene.name
    info = {"format": SCENE_BAG_FORMAT, "version": 1, "scene": scene.name,
            "source": str(scene.root) if scene.root is not None else "",
            "map": str(scene.map_path) if scene.map_path is not None else "",
            "ignored_properties": list(scene.ignored_properties),
            "classes": [{"id": int(i), "name": scene.classes[i]} for i in sorted(scene.classes)],
            "unlabeled_id": int(scene.unlabeled_id), "instance_none_id": int(scene.instance_none_id),
            "stuff": sorted(scene.stuff_names), "camera": cam_ns, "map_frame": cfg.map_frame,
            "map_id": map_id, "pieces": len(pieces), "gaussians": len(g),
            "frame_indices": [int(i) for i in scene.frame_indices], "view_stamps_ns": stamps,
            "width": scene.camera.width if scene.camera else 0,
            "height": scene.camera.height if scene.camera else 0}
    from chorus_ros.core.decode.semantic import default_colors
    ids = sorted(scene.classes)
    cols = default_colors(len(ids))
    labels = LabelInfo(header=header(_T0_NS, ""), threshold=0.0)
    labels.labels = [LabelEntry(id=int(i), name=scene.classes[i],
                                color=ColorRGBA(r=c[0] / 255.0, g=c[1] / 255.0, b=c[2] / 255.0, a=1.0))
                     for i, c in zip(ids, np.asarray(cols).tolist())]
    ts = chorus_typestore()
    written: set[str] = set()
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns: dict[str, Any] = {}

        def put(topic: str, t_ns: int, msg, latched: bool = False) -> None:
            if topic not in conns:
                kw = {"offered_qos_profiles": [_latched_qos()]} if latched else {}
                conns[topic] = w.add_connection(topic, topics[topic][0], typestore=ts, **kw)
            w.write(conns[topic], t_ns, serialize_message(msg))
            written.add(topic)

        put(SCENE_INFO_TOPIC, _T0_NS, String(data=json.dumps(info)), latched=True)
        put(GT_LABELS_TOPIC, _T0_NS, labels, latched=True)
        if scene.gt_gaussian_labels is not None:
            put(GT_GAUSSIANS_TOPIC, _T0_NS, _gt_cloud(g.ids.cpu().numpy(), scene.gt_gaussian_labels,
                                                      scene.gt_gaussian_instances, scene.instance_none_id,
                                                      header(_T0_NS, cfg.map_frame)), latched=True)
        for k, idx in enumerate(pieces):
            t = _T0_NS + k * map_ns
            msg = map_update_to_msg(g.index(idx), map_id=map_id, sequence=k, full=(k == 0), stamp=t,
                                    frame_id=cfg.map_frame)
            put(MAP_TOPIC, t, msg, latched=True)
        for j in range(len(scene)):
            f = scene.frame(j)
            c = f.camera
            cam = Camera(c.viewmat, c.K, c.width, c.height, f"{cam_ns}_optical_frame")
            pose, cinfo = camera_to_msgs(cam, stamps[j], cfg.map_frame)
            if cfg.include_rgb and f.rgb is not None:   # before its pose: a fusing node has it in time
                put(f"/{cam_ns}/image_raw", stamps[j] - 1000,
                    numpy_to_image(np.asarray(f.rgb, dtype=np.uint8), "rgb8", header(stamps[j], cam.frame_id)))
            put(f"/{cam_ns}/pose", stamps[j], pose)
            put(f"/{cam_ns}/camera_info", stamps[j], cinfo)
            imgs = {"semantic": f.semantic, "instance": f.instance,
                    "depth": f.depth if cfg.include_depth else None}
            for kind, img in imgs.items():
                if img is None:
                    continue
                arr = np.asarray(img, dtype=np.float32 if kind == "depth" else np.uint16)
                put(f"/ground_truth/{cam_ns}/{kind}/image_raw", stamps[j],
                    numpy_to_image(arr, _GT_KINDS[kind], header(stamps[j], cam.frame_id)))
            if progress is not None:
                progress(j + 1, len(scene))
    return SceneBagInfo(path, len(pieces), len(scene), len(g), stamps, sorted(written),
                        list(scene.ignored_properties))


_GT_FIELDS = ("id", "label", "instance")


def _gt_cloud(ids: np.ndarray, labels: np.ndarray, instances: np.ndarray | None, none_id: int, hdr):
    """PointCloud2 (UINT32 id, label, instance; little-endian) of per-Gaussian ground truth."""
    from sensor_msgs.msg import PointCloud2, PointField
    n = len(ids)
    table = np.zeros((n, 3), dtype="<u4")
    table[:, 0], table[:, 1] = ids, labels
    table[:, 2] = instances if instances is not None else none_id
    msg = PointCloud2(header=hdr, height=1, width=n, is_bigendian=False, point_step=12, row_step=12 * n,
                      is_dense=True)
    msg.fields = [PointField(name=f, offset=4 * i, datatype=PointField.UINT32, count=1)
                  for i, f in enumerate(_GT_FIELDS)]
    msg.data = array.array("B", table.tobytes())
    return msg


def _gt_from_cloud(msg, source) -> dict[str, np.ndarray]:
    from chorus_ros.core.errors import DatasetError
    names = [f.name for f in msg.fields]
    n = int(msg.width) * int(msg.height)
    if names != list(_GT_FIELDS) or msg.point_step != 12 or len(msg.data) != 12 * n:
        raise DatasetError(f"{source}: {GT_GAUSSIANS_TOPIC} is not a UINT32 (id, label, instance) cloud")
    t = np.frombuffer(bytes(msg.data), dtype="<u4").reshape(n, 3).astype(np.int64)
    return {"id": t[:, 0], "label": t[:, 1], "instance": t[:, 2]}


@dataclass
class SceneBag:
    """The ground truth of a scene bag (:func:`read_scene_bag`)."""

    path: Path
    info: dict
    """The scene info JSON (class table, ids, camera, stamps...)."""
    semantic: dict[int, np.ndarray]
    """View stamp (ns) -> ``[H, W]`` uint16 ground-truth class ids (folder ids)."""
    instance: dict[int, np.ndarray]
    """View stamp (ns) -> ``[H, W]`` uint16 ground-truth instance ids (empty without them)."""
    view_stamps_ns: list[int]
    """Stamps of the recorded poses, in order."""
    input_topics: list[str]
    """The nodes' input topics present in the bag (map updates, poses, CameraInfo)."""
    rgb: dict[int, np.ndarray] = field(default_factory=dict)
    """View stamp -> ``[H, W, 3]`` uint8 colour image (``with_inputs``; empty without them)."""
    cameras: dict[int, Camera] = field(default_factory=dict)
    """View stamp -> the view's camera from its pose + CameraInfo (``with_inputs``)."""
    gaussians: GaussianArrays | None = None
    """The map after the bag's last map update (``with_inputs``), with the per-Gaussian ground
    truth as ``extras['label' / 'instance']`` when the bag has it."""

    @property
    def camera(self) -> str:
        return str(self.info.get("camera", "camera_0"))

    @property
    def classes(self) -> dict[int, str]:
        return {int(c["id"]): str(c["name"]) for c in self.info["classes"]}


def apply_map_update(current: GaussianArrays | None, upd) -> GaussianArrays | None:
    """The map after one decoded :class:`~chorus_ros.ros.map_updates.MapUpdate` (the message's rules:
    FULL replaces everything; DELTA removes ``removed_ids``, then upserts by id)."""
    if upd.full:
        return upd.gaussians
    if current is None:
        raise InvalidInputError(f"DELTA update seq {upd.sequence} before any FULL update")
    cur = current
    drop = upd.removed_ids.long()
    if upd.gaussians is not None and len(upd.gaussians):
        drop = torch.cat([drop, upd.gaussians.ids.long()])
    if drop.numel():
        cur = cur.index(torch.nonzero(~torch.isin(cur.ids.long(), drop)).reshape(-1))
    if upd.gaussians is not None and len(upd.gaussians):
        cur = GaussianArrays.concat([cur, upd.gaussians])
    return cur


def read_scene_bag(path: str | Path, *, with_inputs: bool = False) -> SceneBag:
    """Read the scene info and ground-truth label images of a bag written by :func:`make_scene_bag`
    (``with_inputs``: also the colour images, the view cameras and the final map).

    Raises:
        DatasetError: no such bag, not a readable rosbag2, or a bag without the ground-truth
            topics (all naming the bag).
    """
    import json

    from chorus_ros.core.errors import DatasetError
    from chorus_ros.ros.conversions import image_to_numpy, stamp_to_ns
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"bag not found: {path}")
    try:
        from rosbags.highlevel import AnyReader
        reader = AnyReader([path], default_typestore=chorus_typestore())
        reader.open()
    except Exception as e:  # rosbags raises several unrelated types for unreadable bags
        raise DatasetError(f"{path}: not a readable rosbag2 bag ({type(e).__name__}: {e})") from None
    try:
        present = {c.topic: c for c in reader.connections}
        if SCENE_INFO_TOPIC not in present:
            raise DatasetError(f"{path}: no ground-truth topics (no {SCENE_INFO_TOPIC}; it has "
                               f"{sorted(present)}): write it with `chorus-ros make-bag --dataset DIR`")
        info = None
        for c, _, raw in reader.messages(connections=[present[SCENE_INFO_TOPIC]]):
            info = json.loads(reader.deserialize(raw, c.msgtype).data)
            break
        if not isinstance(info, dict) or info.get("format") != SCENE_BAG_FORMAT:
            raise DatasetError(f"{path}: {SCENE_INFO_TOPIC} is not a {SCENE_BAG_FORMAT} description")
        cam = str(info.get("camera", "camera_0"))
        sem_t, ins_t = f"/ground_truth/{cam}/semantic/image_raw", f"/ground_truth/{cam}/instance/image_raw"
        pose_t = f"/{cam}/pose"
        if sem_t not in present:
            raise DatasetError(f"{path}: no ground-truth class images ({sem_t}): nothing to score against")
        info_t, rgb_t = f"/{cam}/camera_info", f"/{cam}/image_raw"
        semantic: dict[int, np.ndarray] = {}
        instance: dict[int, np.ndarray] = {}
        rgb: dict[int, np.ndarray] = {}
        poses: dict[int, Any] = {}
        infos: dict[int, Any] = {}
        gmap = None
        stamps: list[int] = []
        gt_g = None
        topics = [sem_t, ins_t, pose_t] + ([rgb_t, info_t, MAP_TOPIC, GT_GAUSSIANS_TOPIC] if with_inputs else [])
        wanted = [present[t] for t in topics if t in present]
        from geometry_msgs.msg import PoseStamped
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        from chorus_ros.msg import GaussianMapUpdate
        from chorus_ros.ros.map_updates import map_update_from_msg
        for c, _, raw in reader.messages(connections=wanted):
            try:
                if c.topic == pose_t:
                    m = deserialize_message(bytes(raw), PoseStamped)
                    stamps.append(stamp_to_ns(m.header.stamp))
                    poses[stamps[-1]] = m
                elif c.topic == info_t:
                    m = deserialize_message(bytes(raw), CameraInfo)
                    infos[stamp_to_ns(m.header.stamp)] = m
                elif c.topic == MAP_TOPIC:
                    upd = map_update_from_msg(deserialize_message(bytes(raw), GaussianMapUpdate),
                                              str(info.get("map_frame", "map")))
                    gmap = apply_map_update(gmap, upd)
                elif c.topic == GT_GAUSSIANS_TOPIC:
                    gt_g = _gt_from_cloud(deserialize_message(bytes(raw), PointCloud2), path)
                else:
                    msg = deserialize_message(bytes(raw), Image)
                    dst = {sem_t: semantic, ins_t: instance, rgb_t: rgb}[c.topic]
                    dst[stamp_to_ns(msg.header.stamp)] = image_to_numpy(msg)
            except InvalidInputError as e:
                raise DatasetError(f"{path}: bad message on {c.topic}: {e}") from None
        inputs = [t for t in (MAP_TOPIC, rgb_t, pose_t, info_t) if t in present]
    finally:
        reader.close()
    missing = [s for s in stamps if s not in semantic]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} of {len(stamps)} views have no ground-truth class image "
                           f"on {sem_t}")
    cameras = {}
    if with_inputs:
        from chorus_ros.ros.conversions import camera_from_msgs
        for s in stamps:
            if s not in infos:
                raise DatasetError(f"{path}: the pose at stamp {s} has no CameraInfo with the same stamp")
            try:
                cameras[s] = camera_from_msgs(poses[s], infos[s], map_frame=str(info.get("map_frame", "map")))
            except InvalidInputError as e:
                raise DatasetError(f"{path}: view at stamp {s}: {e}") from None
        if gmap is None:
            raise DatasetError(f"{path}: no map updates on {MAP_TOPIC}")
        if gt_g is not None:   # align the per-Gaussian ground truth to the map's rows by id
            order = np.argsort(gt_g["id"], kind="stable")
            mid = gmap.ids.cpu().numpy().astype(np.int64)
            pos = np.clip(np.searchsorted(gt_g["id"][order], mid), 0, max(len(order) - 1, 0))
            rows = order[pos]
            if len(order) == 0 or not np.array_equal(gt_g["id"][rows], mid):
                raise DatasetError(f"{path}: {GT_GAUSSIANS_TOPIC} does not cover every Gaussian id of the map")
            gmap = GaussianArrays(gmap.means, gmap.sh, gmap.opacities, gmap.log_scales, gmap.quats, gmap.ids,
                                  {"label": torch.from_numpy(gt_g["label"][rows]),
                                   "instance": torch.from_numpy(gt_g["instance"][rows])})
    return SceneBag(path, info, semantic, instance, stamps, inputs, rgb, cameras, gmap)
