"""chorus_node: open-vocabulary semantics and instances over a live 3D Gaussian map.

Keeps a :class:`~chorus_ros.core.pipeline.PerceptionPipeline` (Gaussian map + Chorus encoder +
decoders), applies map updates, re-encodes incrementally and renders the views requested by
camera poses. Heavy work (encoding, rendering) runs in one worker thread behind a keep-newest
queue; callbacks only convert and enqueue.

Subscriptions (relative names, so the node's namespace applies):
    map_updates                   chorus_ros/GaussianMapUpdate  reliable, transient-local, depth
                                  ``map_update_depth`` (FULL snapshots and DELTAs, by sequence);
                                  its cloud may be a plain coloured point cloud (x y z + packed
                                  rgb or r g b, ``point_cloud.*`` defaults; a 'gaussian'
                                  checkpoint then logs a warning that it reads defaults, naming checkpoints/pointcloud)
    <camera>/pose                 geometry_msgs/PoseStamped     best effort (matches reliable too)
    <camera>/camera_info          sensor_msgs/CameraInfo        best effort; paired with the pose
                                  by stamp (``pair_tolerance_s``), never "latest"
    (TF instead of <camera>/pose when ``pose_source`` = 'tf' and tf2_ros is installed)
    <camera>/image_raw            sensor_msgs/Image             best effort; only read when
                                  ``pipeline.per_view.fusion`` = 'camera': paired with the view by
                                  stamp (``pair_tolerance_s``); without a partner the fusion
                                  decoder uses the rendered RGB

Publications (every image copies the request's stamp and the camera frame):
    <camera>/semantic/image_raw          16UC1 class ids, 65535 = unlabeled
    <camera>/semantic_color/image_raw    rgb8 class colours
    <camera>/semantic_overlay/image_raw  rgb8 colours blended over the rendered RGB
    <camera>/instance/image_raw          32SC1 instance ids (0 = none)
    <camera>/confidence/image_raw        32FC1 label confidence
    <camera>/depth/image_raw             32FC1 metres (``publish_depth``)
    <camera>/rendered/image_raw          rgb8 rendered colour (``publish_rgb``)
    semantic/label_info                  chorus_ros/LabelInfo, latched
    objects                              chorus_ros/ObjectMap, latched, whenever it changes
    ~/status                             chorus_ros/Status heartbeat (``status_rate_hz``)
    Images: reliable, volatile, depth 2. Every entity accepts ``qos_overrides`` parameters.

Services (own callback group):
    ~/save_map (SaveMap), ~/load_map (LoadMap), ~/set_labels (SetLabels),
    ~/render_relevance (RenderRelevance). Every service and subscription callback is
    :func:`~chorus_ros.ros.runtime.guarded`: an unexpected exception becomes ``success = false``
    and a ``~/status`` last_error, never the end of the executor.
    Saves live in ``save_root`` (paths confined to it) and are written and checked as one set
    (:mod:`chorus_ros.core.persist`); ~/load_map validates the whole save before swapping map,
    codebook and labels in together; the sequence afterwards follows ``load_sequence``.

Map ownership: ``map_id`` ('' = the map of the first applied FULL) is the map followed; updates
of other maps are refused and counted ('update_foreign_map'), unless ``follow_any_map``.

Parameters: :class:`ChorusNodeConfig` (docstrings = descriptions), including the core
:class:`~chorus_ros.core.pipeline.PipelineConfig` under ``pipeline.*``; see config/chorus.yaml.
Per-message errors are logged (throttled per kind), counted in ``~/status`` and survived; the
map is left unchanged by any rejected update.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from chorus_ros.core import persist
from chorus_ros.core.errors import ChorusError, CheckpointError, InvalidInputError
from chorus_ros.core.memory import pin_mmap_threshold, trim_heap
from chorus_ros.core.plain_cloud import LAYOUT_POINTCLOUD, PointCloudInputConfig, variant_warning
from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
from chorus_ros.ros import conversions as cv
from chorus_ros.ros import qos
from chorus_ros.ros.map_updates import MapUpdate, map_update_from_msg
from chorus_ros.ros.params import ParameterBinding, flatten_config
from chorus_ros.ros.runtime import (UPDATE_FULL, DropCounter, ErrorReporter, ForeignMapError, KeepNewestQueue,
                                    MapOwnership, RateMeter, SequenceTracker, StampPairer, StampRateLimiter,
                                    guarded)

__all__ = ["ChorusNodeConfig", "ChorusNode", "OUTPUTS", "ViewTiming", "parameter_specs", "parameter_names", "main"]

OUTPUTS: dict[str, tuple[str, str]] = {
    "semantic": ("semantic/image_raw", "16UC1"),
    "semantic_color": ("semantic_color/image_raw", "rgb8"),
    "overlay": ("semantic_overlay/image_raw", "rgb8"),
    "instance": ("instance/image_raw", "32SC1"),
    "confidence": ("confidence/image_raw", "32FC1"),
    "depth": ("depth/image_raw", "32FC1"),
    "rgb": ("rendered/image_raw", "rgb8"),
}
"""Output name -> (topic under the camera namespace, encoding)."""

TRIM_INTERVAL_S = 30.0
"""Freed heap memory is returned to the OS after every full encode and at most this often after
incremental ones (glibc ``malloc_trim``; see :mod:`chorus_ros.core.memory` and
docs/reliability.md)."""

DROP_REASONS = ("view_rejected", "view_over_pixel_budget", "view_rate_limited", "view_queue_full",
                "view_render_failed", "view_stamp_rewind", "pose_unpaired", "camera_info_unpaired",
                "update_rejected", "update_queue_full", "update_foreign_map", "service_rejected")
"""Reasons counted in ``~/status`` (drop_reasons/drop_counts). Every paired view request ends as
one published view or one count of a ``view_*`` reason except 'view_stamp_rewind' (counted when
a stamp rewind resets the rate limiter; that view is still served). ``*_unpaired``: poses and
CameraInfos discarded without a partner; ``update_*``: map updates; ``service_rejected``:
service calls answered with success=false."""


@dataclass
class ChorusNodeConfig:
    """Parameters of chorus_node (each field is one ROS parameter, ``pipeline.*`` nested)."""

    checkpoint: str = ""
    """Checkpoint directory (model.safetensors + config.yaml). Setting it at run time switches the encoder: the checkpoint is loaded and checked in the parameter callback (a bad one is refused with the reason, the old one keeps running), then the worker re-encodes the kept map with it (~/status: state 'switching_checkpoint', then 'checkpoint' = the new folder)."""
    map_frame: str = "map"
    """Frame of the Gaussian map; camera poses must be expressed in it."""
    cameras: list[str] = field(default_factory=lambda: ["camera_0"])
    """Camera namespaces; each has <cam>/pose, <cam>/camera_info and its own outputs."""
    pose_source: str = "topic"
    """'topic' (<cam>/pose PoseStamped) or 'tf' (map -> CameraInfo frame; needs tf2_ros)."""
    pair_tolerance_s: float = 0.0
    """Largest stamp difference for pairing a pose with a CameraInfo, seconds (0 = exact)."""
    queue_size: int = 2
    """Views kept per camera while the worker is busy (keep-newest: the oldest is dropped)."""
    max_rate_hz: float = 0.0
    """Largest accepted view rate per camera, by stamp, Hz (0 = unlimited). A stamp older than the last accepted one (bag restart, clock jump) resets the limiter and is counted ('view_stamp_rewind' in ~/status)."""
    publish_semantic_color: bool = True
    """Publish <cam>/semantic_color/image_raw."""
    publish_overlay: bool = True
    """Publish <cam>/semantic_overlay/image_raw."""
    publish_instance: bool = True
    """Publish <cam>/instance/image_raw."""
    publish_confidence: bool = True
    """Publish <cam>/confidence/image_raw."""
    publish_depth: bool = False
    """Publish <cam>/depth/image_raw."""
    publish_rgb: bool = False
    """Publish <cam>/rendered/image_raw."""
    publish_object_embeddings: bool = True
    """Include per-object language embeddings in the object map (the query node needs them)."""
    strict_quaternions: bool = True
    """Reject camera poses whose quaternion is not unit length (instead of normalising)."""
    max_image_pixels: int = 1920 * 1200
    """Pixel budget of one view (width x height): larger view requests are refused and counted ('view_over_pixel_budget'), also by ~/render_relevance. A 4096x4096 view costs about 25 s and 8 GB on a CPU."""
    service_queue_depth: int = 100
    """Request queue depth of each service (rclpy QoS depth): concurrent clients beyond it lose requests."""
    map_update_depth: int = 16
    """Reader-side depth of the map update subscription (unprocessed deltas kept)."""
    max_pending_updates: int = 256
    """Converted map updates waiting for the worker; beyond this an update is dropped (logged)."""
    min_encode_interval_s: float = 0.0
    """Least time from the end of one map encode to the next application of map updates, seconds
    (0 = apply and encode as soon as an update arrives). Updates that arrive sooner wait in the
    node's queue (``max_pending_updates``: keep it above this interval times the update rate) and
    are applied and encoded together; views meanwhile come from the last encoding. Trades map
    freshness (``~/status`` encode lag grows by up to this) for view throughput when the mapper
    publishes faster than the encoder keeps up (docs/reliability.md, "Load")."""
    malloc_mmap_threshold_kib: int = 256
    """glibc's mmap threshold for this process, KiB, fixed at start-up (chorus_ros.core.memory.pin_mmap_threshold): encode temporaries at least this large are mapped and unmapped on their own instead of staying in the heap. 0 = glibc's dynamic threshold. Measured in the soak benchmark: about 100 MiB less resident memory (peaks 1109-1122 MiB in three 8-minute runs against 1231-1234 MiB in two with 0) at the same view throughput (docs/reliability.md, "A fixed mmap threshold")."""
    status_rate_hz: float = 1.0
    """Rate of the ~/status heartbeat, Hz."""
    error_throttle_s: float = 5.0
    """Errors of one kind are logged at most once per this many seconds (all are counted)."""
    max_label_count: int = 1000
    """Most class names accepted by ~/set_labels."""
    max_label_length: int = 200
    """Longest class name accepted by ~/set_labels, characters."""
    save_root: str = ""
    """Folder holding the saves of ~/save_map and ~/load_map ('' = $ROS_HOME/chorus_ros/maps, or
    ~/.ros/chorus_ros/maps). Request paths are names inside it (or absolute paths inside it): no
    '..', no hidden names, no symbolic links. Leftovers of interrupted saves in it are cleaned
    at start-up. Read at start."""
    save_max_depth: int = 4
    """Most folder levels of a save path below save_root."""
    save_min_free_mb: float = 256.0
    """Free space that must remain on the save volume after a save, MiB; a save that would leave
    less is refused before anything is written."""
    map_id: str = ""
    """The map this node follows: updates of other maps are refused and counted
    ('update_foreign_map' in ~/status). '' = adopt the map of the first FULL update applied (or
    of a save restored by ~/load_map)."""
    follow_any_map: bool = False
    """Let a FULL update of any map replace the map (which then becomes the followed one)."""
    load_sequence: str = "keep"
    """What ~/load_map does with the map update sequence: 'keep' (the followed publisher's live
    deltas keep applying on top of the loaded map), 'reset' (deltas are refused until the next
    FULL update) or 'restore' (take the map id and sequence stored with the save, so the
    publisher's deltas after it apply; refused for a save of another map)."""
    point_cloud: PointCloudInputConfig = field(default_factory=PointCloudInputConfig)
    """How a map update that arrives as a plain coloured point cloud (no 3DGS fields) becomes
    Gaussians (chorus_ros.core.plain_cloud)."""


READ_ONLY = ["map_frame", "cameras", "pose_source", "queue_size", "save_root",
             "map_update_depth", "max_pending_updates", "status_rate_hz", "service_queue_depth",
             "malloc_mmap_threshold_kib"]
"""ChorusNodeConfig parameters that need a restart (declared read-only)."""
PIPELINE_MUTABLE = ["render.near", "render.far", "render.eps2d", "render.sh_degree", "render.background",
                    "render.radius_clip", "semantic.min_alpha", "semantic.min_confidence", "overlay_alpha"]
"""PipelineConfig parameters (declared at the top level: ``map.*``, ``render.*``, ``semantic.*``,
``device``...) that take effect at run time; every other one is read-only."""
RANGES = {"pair_tolerance_s": (0.0, 10.0), "queue_size": (1, 100), "max_rate_hz": (0.0, 1000.0),
          "map_update_depth": (1, 10000), "max_pending_updates": (1, 100000), "min_encode_interval_s": (0.0, 3600.0),
          "status_rate_hz": (0.01, 100.0), "error_throttle_s": (0.0, 3600.0),
          "malloc_mmap_threshold_kib": (0, 32768),
          "max_image_pixels": (1, 1 << 31), "max_label_count": (1, 65534), "service_queue_depth": (1, 100000),
          "max_label_length": (1, 100000), "save_max_depth": (1, 32), "save_min_free_mb": (0.0, 1e9)}


def parameter_specs() -> list:
    """The :class:`~chorus_ros.ros.params.ParamSpec` of every parameter chorus_node declares from
    its config dataclasses, with the read-only flags and ranges the node uses."""
    from chorus_ros.ros.params import param_specs
    pipe = PipelineConfig()
    return (param_specs(ChorusNodeConfig(), read_only=READ_ONLY, ranges=RANGES)
            + param_specs(pipe, read_only=[n for n in flatten_config(pipe) if n not in PIPELINE_MUTABLE]))


def parameter_names() -> set[str]:
    """Every parameter chorus_node declares from its config dataclasses (no node needed;
    ``use_sim_time`` and ``qos_overrides.*`` come on top)."""
    return {s.name for s in parameter_specs()}


@dataclass
class ViewTiming:
    """Where the time of one published view went (seconds; see :attr:`ChorusNode.view_timings`)."""

    stamp_ns: int
    queued: float
    """Paired request -> taken by the worker (waiting behind encodes and other views)."""
    lock_wait: float
    """Waiting for the pipeline (a service call holding it)."""
    render: float
    """``PerceptionPipeline.render_view``: rendering and decoding."""
    publish: float
    """Conversion to Image messages and publishing them."""


@dataclass
class _View:
    camera: str
    stamp_ns: int
    stamp: Any
    cam: Any
    received: float


class ChorusNode(Node):
    """The perception node (see the module docstring). ``pipeline`` may be injected (tests)."""

    def __init__(self, node_name: str = "chorus_node", *, pipeline: PerceptionPipeline | None = None,
                 **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        try:
            self._setup(pipeline)
        except BaseException:
            self.destroy_node()     # release the rcl node: a half-built node must not linger
            raise

    def _setup(self, pipeline: PerceptionPipeline | None) -> None:
        self.params = ParameterBinding(self, ChorusNodeConfig(), read_only=READ_ONLY, ranges=RANGES,
                                       validate=self._validate_params, on_change=self._on_params)
        pipe_default = pipeline.config if pipeline is not None else PipelineConfig()
        self.pipeline_params = ParameterBinding(
            self, pipe_default, read_only=[n for n in flatten_config(pipe_default)
                                           if n not in PIPELINE_MUTABLE],
            on_change=self._on_pipeline_params)
        cfg: ChorusNodeConfig = self.params.config
        self.errors = ErrorReporter(self.get_logger().error, cfg.error_throttle_s)
        if cfg.malloc_mmap_threshold_kib > 0:   # process-wide (chorus_ros.core.memory)
            pin_mmap_threshold(cfg.malloc_mmap_threshold_kib * 1024)
        if pipeline is None:
            if not cfg.checkpoint:
                raise InvalidInputError("parameter 'checkpoint' is empty: set it to a checkpoint "
                                        "directory (launch argument checkpoint:=DIR)")
            pipeline = PerceptionPipeline.from_checkpoint(cfg.checkpoint, self.pipeline_params.config)
            self.pipeline = pipeline
        else:   # an injected pipeline keeps its config; the run-time parameters still apply
            self.pipeline = pipeline
            self._on_pipeline_params(self.pipeline_params.config, PIPELINE_MUTABLE)
        self.encoded_version = 0
        self.last_encode = None                 # EncodeSummary of the last encode
        self.encodes = 0
        """Successful map encodes so far."""
        self.full_encodes = 0
        """... of which full passes (a FULL update, or a change the cached path found cheaper to redo)."""
        self._lock = threading.RLock()          # guards the pipeline (worker vs services)
        self._views = KeepNewestQueue(cfg.queue_size)
        self._updates: deque[MapUpdate] = deque()
        self._updates_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._tracker = SequenceTracker()
        self._owner = MapOwnership(cfg.map_id, cfg.follow_any_map)
        self._save_root = (persist.default_save_root() if not cfg.save_root
                           else Path(cfg.save_root).expanduser())
        self._clean_save_root(cfg)
        self._pairer = StampPairer(int(cfg.pair_tolerance_s * 1e9))
        self._camera_images: dict[str, dict[int, Image]] = {}  # camera -> stamp ns -> Image (newest 8)
        self._limiter = StampRateLimiter(cfg.max_rate_hz)
        self._unpaired_seen = 0
        self._rate = RateMeter(5.0)
        self.drops = DropCounter(DROP_REASONS)
        """Dropped work by reason (published in ~/status drop_reasons/drop_counts)."""
        self.encode_error = ""                  # '' or why the last encode failed
        self._state_lock = threading.Lock()     # ~/status reads state and encode_error as one pair
        self._active_checkpoint = cfg.checkpoint  # the checkpoint the features come from
        self._failed_version: int | None = None  # map version whose encode failed (not retried)
        self._last_trim = time.monotonic()
        self.dropped_updates = 0
        self.updates_received = 0               # map update messages seen by the callback
        self.views_received = 0                 # paired pose + CameraInfo (view requests)
        self.rate_limited = 0
        self.encode_lag_s = 0.0
        self.views_published = 0
        self.view_timings: deque[ViewTiming] = deque(maxlen=100)
        """Timing of the last published views (benchmarks, diagnosis)."""
        self._enqueued = 0                      # updates + views accepted for the worker
        self._done = 0                          # ... and finished (applied, rejected, published)
        self._dirty_since: float | None = None
        self._encode_end = -math.inf            # monotonic time the last encode ended (min_encode_interval_s)
        self._state = "waiting_for_map"
        self._map_stamp = None
        self._plain_warned: set[tuple[str, str]] = set()   # (map id, checkpoint) warned about a plain cloud

        inputs = MutuallyExclusiveCallbackGroup()
        services = MutuallyExclusiveCallbackGroup()
        timers = MutuallyExclusiveCallbackGroup()
        from chorus_ros.msg import GaussianMapUpdate, LabelInfo, ObjectMap, Status
        from chorus_ros.srv import LoadMap, RenderRelevance, SaveMap, SetLabels
        self.create_subscription(GaussianMapUpdate, "map_updates", self._on_map_update,
                                 qos.map_updates_sub(cfg.map_update_depth), callback_group=inputs,
                                 qos_overriding_options=qos.overrides(durability=True))
        self._label_pub = self.create_publisher(LabelInfo, "semantic/label_info", qos.latched(),
                                                qos_overriding_options=qos.overrides(durability=True))
        self._objects_pub = self.create_publisher(ObjectMap, "objects", qos.latched(),
                                                  qos_overriding_options=qos.overrides(durability=True))
        self._status_pub = self.create_publisher(Status, "~/status", qos.status(),
                                                 qos_overriding_options=qos.overrides())
        self._image_pubs: dict[str, dict[str, Any]] = {}
        self._tf = self._setup_tf(cfg)
        for cam in cfg.cameras:
            cam = cam.strip("/")
            if self._tf is None:
                self.create_subscription(PoseStamped, f"{cam}/pose",
                                         lambda m, c=cam: self._on_pose(c, m), qos.sensor_input(),
                                         callback_group=inputs, qos_overriding_options=qos.overrides())
            self.create_subscription(CameraInfo, f"{cam}/camera_info",
                                     lambda m, c=cam: self._on_camera_info(c, m), qos.sensor_input(),
                                     callback_group=inputs, qos_overriding_options=qos.overrides())
            self.create_subscription(Image, f"{cam}/image_raw", lambda m, c=cam: self._on_camera_image(c, m),
                                     qos.sensor_input(), callback_group=inputs,
                                     qos_overriding_options=qos.overrides())
            self._image_pubs[cam] = {
                name: self.create_publisher(Image, f"{cam}/{topic}", qos.images(),
                                            qos_overriding_options=qos.overrides())
                for name, (topic, _) in OUTPUTS.items()}
        srv_qos = qos.services(cfg.service_queue_depth)
        self.create_service(SaveMap, "~/save_map", self._srv_save, callback_group=services, qos_profile=srv_qos)
        self.create_service(LoadMap, "~/load_map", self._srv_load, callback_group=services, qos_profile=srv_qos)
        self.create_service(SetLabels, "~/set_labels", self._srv_set_labels, callback_group=services,
                            qos_profile=srv_qos)
        self.create_service(RenderRelevance, "~/render_relevance", self._srv_relevance,
                            callback_group=services, qos_profile=srv_qos)
        self.create_timer(1.0 / cfg.status_rate_hz, self._publish_status, callback_group=timers)
        self._publish_labels()
        self._worker = threading.Thread(target=self._run_worker, name="chorus_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"chorus_node ready: cameras {cfg.cameras}, device {self.pipeline.config.device}, "
                               f"{len(self.pipeline.labels)} labels")

    # ----------------------------------------------------------------------- parameters
    @property
    def config(self) -> ChorusNodeConfig:
        return self.params.config

    def _validate_params(self, cfg: ChorusNodeConfig, names: list[str]) -> None:
        if cfg.pose_source not in ("topic", "tf"):
            raise ValueError(f"pose_source must be 'topic' or 'tf', got {cfg.pose_source!r}")
        if cfg.load_sequence not in ("keep", "reset", "restore"):
            raise ValueError(f"load_sequence must be 'keep', 'reset' or 'restore', got {cfg.load_sequence!r}")
        if cfg.save_root and not Path(cfg.save_root).expanduser().is_absolute():
            raise ValueError(f"save_root must be an absolute path (or '' for the ROS home), got {cfg.save_root!r}")
        cfg.point_cloud.validate()
        if "checkpoint" in names and getattr(self, "_worker", None) is not None:
            self._stage_checkpoint(cfg.checkpoint)   # a bad checkpoint raises: refused, old one kept

    def _clean_save_root(self, cfg: ChorusNodeConfig) -> None:
        """Remove (or put back) what interrupted saves left in save_root."""
        try:
            for line in persist.clean_orphans(self._save_root, max_depth=cfg.save_max_depth):
                self.get_logger().warning(f"save_root clean-up: {line}")
        except OSError as e:
            self.errors.report("save_root clean-up", e)

    def _on_params(self, cfg: ChorusNodeConfig, names: list[str]) -> None:
        self._pairer.tolerance_ns = int(cfg.pair_tolerance_s * 1e9)
        self._limiter.max_rate_hz = float(cfg.max_rate_hz)
        self.errors.throttle_s = cfg.error_throttle_s
        if hasattr(self, "_owner"):
            self._owner.configure(cfg.map_id, cfg.follow_any_map)
        if "checkpoint" in names and getattr(self, "_staged", None) is not None:
            self._switch_pending, self._staged = self._staged, None
            self._wake.set()

    def _on_pipeline_params(self, cfg: PipelineConfig, names: list[str]) -> None:
        with self._pipeline_lock():  # in place: the decoders hold references to the sub-configs
            for name in names:
                *path, leaf = name.split(".")
                src, dst = cfg, self.pipeline.config
                for p in path:
                    src, dst = getattr(src, p), getattr(dst, p)
                setattr(dst, leaf, getattr(src, leaf))

    def _pipeline_lock(self):
        lock = getattr(self, "_lock", None)   # not yet created while __init__ applies parameters
        return lock if lock is not None else threading.RLock()

    def _setup_tf(self, cfg: ChorusNodeConfig):
        if cfg.pose_source != "tf":
            return None
        try:
            import tf2_ros  # robots only; not installable from PyPI
        except ImportError:
            self.get_logger().warning("pose_source is 'tf' but tf2_ros is not installed here: "
                                      "using the <camera>/pose PoseStamped topics instead")
            return None
        buf = tf2_ros.Buffer()
        self._tf_listener = tf2_ros.TransformListener(buf, self)
        return buf

    # ------------------------------------------------------------------------- callbacks
    @guarded("map update callback")
    def _on_map_update(self, msg) -> None:
        self.updates_received += 1
        try:
            # a plain point cloud is decoded by the worker (its kNN spacing takes seconds on big maps)
            upd = map_update_from_msg(msg, self.config.map_frame, self.config.point_cloud, defer_plain=True)
        except (ChorusError, ValueError) as e:
            self.drops.add("update_rejected")
            self.errors.report("map update rejected", e)
            return
        with self._updates_lock:
            if len(self._updates) >= self.config.max_pending_updates:
                self.dropped_updates += 1
                self.drops.add("update_queue_full")
                self.errors.report("map update dropped", f"{len(self._updates)} updates pending "
                                   f"(max_pending_updates); later deltas will wait for a FULL update")
                return
            self._updates.append(upd)
            self._enqueued += 1
        self._wake.set()

    def _warn_plain_cloud(self, upd: MapUpdate) -> None:
        """Log once per map and checkpoint that a plain cloud meets a 'gaussian' encoder."""
        variant = getattr(getattr(self.pipeline.model, "config", None), "variant", None)
        key = (upd.map_id, self._active_checkpoint)
        text = variant_warning(variant, what=f"map {upd.map_id!r}") if variant else None
        if text is None or key in self._plain_warned:
            return
        self._plain_warned.add(key)
        self.get_logger().warning(f"{text} ({upd.note})")

    @guarded("pose callback")
    def _on_pose(self, camera: str, msg: PoseStamped) -> None:
        pair = self._pairer.add_a(camera, cv.stamp_to_ns(msg.header.stamp), msg)
        self._count_unpaired(camera)
        if pair is not None:
            self._request_view(camera, *pair)

    def _count_unpaired(self, camera: str) -> None:
        """Count poses / CameraInfos the pairer discarded without a partner, and say why."""
        un = self._pairer.unpaired
        self.drops.set("pose_unpaired", un["a"])
        self.drops.set("camera_info_unpaired", un["b"])
        total = un["a"] + un["b"]
        if total > self._unpaired_seen:
            self._unpaired_seen = total
            gap = self._pairer.last_gap_ns
            near = "no counterpart received" if gap is None else f"nearest counterpart {gap} ns away"
            self.errors.report(f"pose/camera_info on {camera} unpaired",
                               f"{un['a']} poses and {un['b']} camera_infos discarded without a partner; "
                               f"{near}, tolerance {self._pairer.tolerance_ns} ns (pair_tolerance_s)")

    @guarded("camera_info callback")
    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        if self._tf is not None:
            pose = self._lookup_tf_pose(msg)
            if pose is not None:
                self._request_view(camera, pose, msg, cv.stamp_to_ns(msg.header.stamp))
            return
        pair = self._pairer.add_b(camera, cv.stamp_to_ns(msg.header.stamp), msg)
        self._count_unpaired(camera)
        if pair is not None:
            self._request_view(camera, *pair)

    def _lookup_tf_pose(self, info: CameraInfo) -> PoseStamped | None:
        try:
            t = self._tf.lookup_transform(self.config.map_frame, info.header.frame_id,
                                          rclpy.time.Time.from_msg(info.header.stamp))
        except Exception as e:  # tf2 raises several unrelated exception types
            self.errors.report("camera pose from TF", e)
            return None
        pose = PoseStamped(header=t.header)
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (
            t.transform.translation.x, t.transform.translation.y, t.transform.translation.z)
        pose.pose.orientation = t.transform.rotation
        return pose

    def _request_view(self, camera: str, pose: PoseStamped, info: CameraInfo, stamp_ns: int) -> None:
        cfg = self.config
        self.views_received += 1
        pixels = int(info.width) * int(info.height)
        if pixels > cfg.max_image_pixels:
            self.drops.add("view_over_pixel_budget")
            self.errors.report(f"view request on {camera} rejected",
                               f"CameraInfo size {info.width}x{info.height} exceeds the limit of "
                               f"{cfg.max_image_pixels} pixels (the pixel budget max_image_pixels)")
            return
        try:
            cam = cv.camera_from_msgs(pose, info, map_frame=cfg.map_frame,
                                      strict_quaternion=cfg.strict_quaternions,
                                      max_pixels=cfg.max_image_pixels,
                                      default_frame=f"{camera}_optical_frame")
        except (ChorusError, ValueError) as e:
            self.drops.add("view_rejected")
            self.errors.report(f"view request on {camera} rejected", e)
            return
        verdict = self._limiter.accept(camera, stamp_ns)
        if verdict == "limited":
            self.rate_limited += 1
            self.drops.add("view_rate_limited")
            return
        if verdict == "rewind":
            self.drops.add("view_stamp_rewind")
            self.errors.report(f"view stamps on {camera} went back",
                               f"stamp {stamp_ns} ns is older than the last accepted view; the rate "
                               f"limiter was reset (bag restart or clock jump?)")
        with self._updates_lock:
            self._enqueued += 1
            if self._views.put(_View(camera, stamp_ns, pose.header.stamp, cam, time.monotonic()),
                               key=camera) is not None:
                self._done += 1                 # the dropped (older) view counts as finished
                self.drops.add("view_queue_full")
        self._wake.set()

    # ------------------------------------------------------------------ checkpoint switch
    def _stage_checkpoint(self, path: str) -> None:
        """Load and check ``path`` (parameter callback); raise ValueError to refuse it."""
        from chorus_ros.core.adapt.switch import load_switch
        try:
            self._staged = load_switch(path, self.pipeline.config)
        except ChorusError as e:
            msg = f"checkpoint {path!r} refused, still using {self._active_checkpoint!r}: {e}"
            self.errors.report("checkpoint switch", msg)
            raise ValueError(msg) from e

    def _switch_if_pending(self) -> None:
        """Worker: put a staged checkpoint into the pipeline and re-encode the kept map."""
        staged, self._switch_pending = getattr(self, "_switch_pending", None), None
        if staged is None:
            return
        from chorus_ros.core.adapt.switch import apply_switch
        self._state = "switching_checkpoint"
        try:
            with self._lock:
                summary = apply_switch(self.pipeline, staged)
                objects = self.pipeline.objects()
        except Exception as e:      # noqa: BLE001 - the previous checkpoint is restored and keeps running
            self.errors.report("checkpoint switch", f"re-encoding with {staged.path!r} failed, still using "
                                                    f"{self._active_checkpoint!r}: {type(e).__name__}: {e}")
            self._state = "running"
            return
        self._active_checkpoint = staged.path
        self._failed_version, self.encode_error = None, ""
        self.encoded_version, self.last_encode = int(summary.map_version), summary
        self._dirty_since = None
        self._state = "running"
        self._publish_labels()
        self._publish_objects(objects)
        self.get_logger().info(f"switched to checkpoint {staged.path} ({len(self.pipeline.labels)} labels, "
                               f"{summary.updated_gaussians} Gaussians re-encoded)")

    # ---------------------------------------------------------------------------- worker
    def _updates_wait_s(self) -> float:
        """Seconds until pending map updates may be applied (0 = now; ``min_encode_interval_s``)."""
        interval = float(self.config.min_encode_interval_s)
        if interval <= 0:
            return 0.0
        return max(0.0, self._encode_end + interval - time.monotonic())

    def _run_worker(self) -> None:
        while not self._stop.is_set():
            if not self._updates:
                self._wake.wait(0.25)
            elif (wait := self._updates_wait_s()) > 0:
                self._wake.wait(min(0.25, wait))   # a view, or the end of the interval
            self._wake.clear()
            try:
                if self._updates_wait_s() <= 0:
                    self._apply_pending_updates()
                self._switch_if_pending()
                self._encode_if_needed()
                view = self._views.get_nowait()
                while view is not None and not self._stop.is_set():
                    try:
                        self._render_and_publish(view)
                    finally:
                        self._finish()
                    if self._updates and self._updates_wait_s() <= 0:
                        self._wake.set()
                        break
                    view = self._views.get_nowait()
            except Exception as e:  # keep the worker alive whatever happens
                self.errors.report("worker", e)

    def _apply_pending_updates(self) -> None:
        while True:
            with self._updates_lock:
                if not self._updates:
                    return
                upd = self._updates.popleft()
            try:
                self._owner.check(upd.map_id, upd.update_type)
                self._tracker.check(upd.map_id, upd.sequence, upd.update_type)
                if upd.layout == LAYOUT_POINTCLOUD:
                    upd.resolve()               # a deferred plain cloud: decoded here, off the executor
                    self._warn_plain_cloud(upd)
                with self._lock:
                    if upd.removed_ids.numel():   # the pipeline ignores unknown ids: refuse them here
                        known = self.pipeline.contains(upd.removed_ids)
                        if not bool(known.all()):
                            bad = upd.removed_ids[~known][:10].tolist()
                            raise InvalidInputError(f"cannot remove unknown Gaussian ids {bad} "
                                                    f"({int((~known).sum())} unknown)")
                    self.pipeline.apply_update(upd.gaussians, upd.removed_ids, full=upd.full)
                self._tracker.commit(upd.map_id, upd.sequence, upd.update_type)
                self._owner.commit(upd.map_id, upd.update_type)
                self._map_stamp = upd.stamp
                if self._dirty_since is None:
                    self._dirty_since = upd.received
            except ForeignMapError as e:
                self.drops.add("update_foreign_map")
                self.errors.report("map update refused", e)
            except (ChorusError, ValueError, KeyError) as e:
                self.drops.add("update_rejected")
                self.errors.report(f"map update seq {upd.sequence} ({upd.kind}) rejected, map unchanged", e)
            finally:
                self._finish()

    def _finish(self) -> None:
        with self._updates_lock:
            self._done += 1

    def _encode_if_needed(self) -> None:
        if self._dirty_since is None:
            return
        version = int(self.pipeline.map.version)
        if self._failed_version == version:
            return                  # failed on this very map: wait for the next change, keep serving
        self._state = "encoding"
        try:
            with self._lock:        # after a failure the caches may be stale: re-encode everything
                summary = self.pipeline.encode(full=self._failed_version is not None)
                objects = self.pipeline.objects()
        except Exception as e:      # noqa: BLE001 - any failure: report, keep the last good encoding
            self._failed_version = version
            ids = list(getattr(e, "ids", []) or [])
            error = (f"encode of map version {version} failed: {type(e).__name__}: {e}"
                     + (f"; offending Gaussian ids {ids[:20]}" if ids else "")
                     + f"; serving views of the last good encoding (version {self.encoded_version}) "
                       "until the map changes")
            with self._state_lock:  # a status never shows the error with the state of before
                self.encode_error, self._state = error, "encode_failed"
            self.errors.report("encode", error)
            return
        finally:
            self._encode_end = time.monotonic()   # min_encode_interval_s counts from here
        self._failed_version = None
        self.encode_error = ""
        now = time.monotonic()
        if summary.full or now - self._last_trim > TRIM_INTERVAL_S:
            trim_heap()             # hand the encode's freed temporaries back (chorus_ros.core.memory)
            self._last_trim = now
        self.encoded_version = int(summary.map_version)
        self.last_encode = summary
        self.encodes += 1
        self.full_encodes += int(bool(summary.full))
        self.encode_lag_s = time.monotonic() - self._dirty_since
        self._state = "running"
        self._publish_objects(objects)
        self._dirty_since = None

    @guarded("camera image callback")
    def _on_camera_image(self, camera: str, msg: Image) -> None:
        """Keep the newest few camera images per camera for fusion (mode 'camera' only)."""
        if getattr(getattr(self.pipeline.config, "per_view", None), "fusion", "off") != "camera":
            return
        buf = self._camera_images.setdefault(camera, {})
        buf[cv.stamp_to_ns(msg.header.stamp)] = msg
        while len(buf) > 8:
            del buf[min(buf)]

    def _camera_image_for(self, view: _View):
        """The camera image paired with ``view`` by stamp as [H, W, 3] uint8, or None."""
        buf = self._camera_images.get(view.camera)
        if not buf or getattr(getattr(self.pipeline.config, "per_view", None), "fusion", "off") != "camera":
            return None
        msg = cv.pick_by_stamp(dict(buf), view.stamp_ns, self._pairer.tolerance_ns)
        if msg is None:
            self.drops.add("camera_image_unpaired")
            return None
        try:
            return cv.camera_rgb(msg, view.cam.width, view.cam.height)
        except ChorusError as e:
            self.drops.add("camera_image_rejected")
            self.errors.report(f"camera image on {view.camera} not used for fusion", e)
            return None

    def _render_and_publish(self, view: _View) -> None:
        cfg = self.config
        t0 = time.monotonic()
        try:
            image = self._camera_image_for(view)
            with self._lock:
                t1 = time.monotonic()
                result = (self.pipeline.render_view(view.cam, image=image) if image is not None
                          else self.pipeline.render_view(view.cam))
                labels = self.pipeline.labels
        except Exception as e:      # noqa: BLE001 - counted and reported; the worker goes on
            self.drops.add("view_render_failed")
            self.errors.report(f"rendering a view of {view.camera}", e)
            return
        t2 = time.monotonic()
        hdr = cv.header(view.stamp, view.cam.frame_id)
        images = cv.view_images(result, labels, self.pipeline.config.overlay_alpha)
        wanted = {"semantic": True, "semantic_color": cfg.publish_semantic_color,
                  "overlay": cfg.publish_overlay, "instance": cfg.publish_instance,
                  "confidence": cfg.publish_confidence, "depth": cfg.publish_depth,
                  "rgb": cfg.publish_rgb}
        pubs = self._image_pubs[view.camera]
        for name, (_, enc) in OUTPUTS.items():
            if wanted[name] and name in images:
                pubs[name].publish(cv.numpy_to_image(images[name], enc, hdr))
        self.views_published += 1
        self._rate.tick()
        self.view_timings.append(ViewTiming(view.stamp_ns, t0 - view.received, t1 - t0, t2 - t1,
                                            time.monotonic() - t2))

    # -------------------------------------------------------------------------- outputs
    def _publish_labels(self) -> None:
        self._label_pub.publish(self._label_info())

    def _label_info(self):
        # LabelInfo.threshold: the smallest class probability that still labels a pixel
        return cv.labelset_to_msg(self.pipeline.labels, self.get_clock().now().to_msg(),
                                  self.pipeline.config.semantic.min_confidence)

    def _publish_objects(self, objects=None) -> None:
        with self._lock:
            objects = self.pipeline.objects() if objects is None else objects
            version = self.pipeline.map.version
        stamp = self._map_stamp or self.get_clock().now().to_msg()
        seq = self._tracker.last_sequence or 0
        msg = cv.objects_to_msg(objects, cv.header(stamp, self.config.map_frame),
                                map_id=self._tracker.map_id or "", map_sequence=seq, map_version=version,
                                include_embeddings=self.config.publish_object_embeddings)
        self._objects_pub.publish(msg)

    @guarded("status")
    def _publish_status(self) -> None:
        from chorus_ros.msg import Status
        p = self.pipeline
        msg = Status(header=cv.header(self.get_clock().now().to_msg(), self.config.map_frame))
        with self._state_lock:
            state, encode_error = self._state, self.encode_error
        msg.state = ("waiting_for_map" if self._tracker.waiting_for_full and len(p.map) == 0
                     else state)
        msg.map_size, msg.map_version = len(p.map), int(p.map.version)
        msg.map_sequence = int(self._tracker.last_sequence or 0)
        msg.encoded_version = int(self.encoded_version)
        msg.encode_lag_s = float(self.encode_lag_s)
        msg.output_rate_hz = float(self._rate.rate())
        msg.dropped_requests = int(self._views.dropped + self.dropped_updates)
        msg.last_error = self.errors.last_error
        counts = self.drops.snapshot()
        msg.drop_reasons = list(counts)
        msg.drop_counts = [int(v) for v in counts.values()]
        msg.encode_error = encode_error
        msg.checkpoint = str(getattr(self, "_active_checkpoint", ""))
        self._status_pub.publish(msg)

    # ------------------------------------------------------------------------- services
    @guarded("save_map", service=True)
    def _srv_save(self, req, res):
        cfg = self.config
        try:
            target = persist.resolve_in_root(self._save_root, req.path, max_depth=cfg.save_max_depth)
            with self._lock:
                persist.check_free_space(target, self.pipeline.saved_nbytes(), int(cfg.save_min_free_mb * 2 ** 20))
                meta = {"map_id": self._tracker.map_id or self._owner.owner or "",
                        "map_sequence": self._tracker.last_sequence, "map_version": int(self.pipeline.map.version)}
                self.pipeline.save(target, meta=meta)
                n = len(self.pipeline.map)
            res.success, res.message = True, f"saved {n} Gaussians to {target}"
        except (ChorusError, ValueError, OSError) as e:
            self.drops.add("service_rejected")
            res.success, res.message = False, self.errors.report("save_map", e)
        return res

    @guarded("load_map", service=True)
    def _srv_load(self, req, res):
        """Validate the whole save first (pipeline untouched), then swap map, codebook and labels
        in together; the sequence follows ``load_sequence``."""
        cfg = self.config
        mode = cfg.load_sequence
        try:
            path = persist.resolve_in_root(self._save_root, req.path, max_depth=cfg.save_max_depth)
            state = self.pipeline.read_saved(path)
            meta = state.manifest.meta
            saved_id, saved_seq = meta.get("map_id"), meta.get("map_sequence")
            if mode == "restore":
                if not (isinstance(saved_id, str) and saved_id and isinstance(saved_seq, int)
                        and not isinstance(saved_seq, bool) and 0 <= saved_seq < 2 ** 63):
                    raise CheckpointError(f"{path}: the save records no map id and sequence; load_sequence "
                                          f"'restore' needs them (use 'keep' or 'reset')")
                if not self._owner.may_adopt(saved_id):
                    raise InvalidInputError(f"{path} is a save of map {saved_id!r}; this node follows map "
                                            f"{self._owner.owner!r} (load_sequence 'restore' refuses it; "
                                            f"'keep' or 'reset' load it without its sequence)")
            with self._lock:
                self.pipeline.install(state)
                if mode == "reset":       # publisher deltas no longer apply: wait for a FULL
                    self._tracker.reset()
                elif mode == "restore":
                    self._tracker.commit(saved_id, saved_seq, UPDATE_FULL)
                    self._owner.commit(saved_id, UPDATE_FULL)
                self._dirty_since = None
                self.encoded_version = int(self.pipeline.map.version)   # features come with the save
                n = len(self.pipeline.map)
            self._publish_objects()
            res.success = True
            res.message = (f"loaded {n} Gaussians from {path} (saved from map {saved_id!r} at sequence "
                           f"{saved_seq}); sequence {mode}: last applied {self._tracker.last_sequence}")
        except (ChorusError, ValueError, OSError) as e:
            self.drops.add("service_rejected")
            res.success, res.message = False, self.errors.report("load_map", e)
        return res

    @guarded("set_labels", service=True)
    def _srv_set_labels(self, req, res):
        cfg = self.config
        try:
            names = [str(n).strip() for n in req.names]
            if not names or len(names) > cfg.max_label_count:
                raise InvalidInputError(f"set_labels needs 1..{cfg.max_label_count} names, got {len(names)}")
            long = [n[:40] for n in names if len(n) > cfg.max_label_length]
            if long:
                raise InvalidInputError(f"class names longer than {cfg.max_label_length} characters: {long}")
            if req.colors and len(req.colors) != len(names):
                raise InvalidInputError(f"got {len(req.colors)} colours for {len(names)} names")
            colors = cv.colors_from_msgs(req.colors) if req.colors else None
            with self._lock:
                self.pipeline.set_labels(names, colors)
            self._publish_labels()
            self._publish_objects()
            res.label_info = self._label_info()
            res.success, res.message = True, f"{len(names)} labels set"
        except (ChorusError, ValueError) as e:
            res.success, res.message = False, self.errors.report("set_labels", e)
        return res

    @guarded("render_relevance", service=True)
    def _srv_relevance(self, req, res):
        cfg = self.config
        try:
            emb = np.asarray(req.embedding, dtype=np.float32)
            cam = cv.camera_from_msgs(req.pose, req.camera_info, map_frame=cfg.map_frame,
                                      strict_quaternion=cfg.strict_quaternions,
                                      max_pixels=cfg.max_image_pixels)
            with self._lock:
                rel = self.pipeline.relevance_view(emb, cam)
            res.image = cv.numpy_to_image(np.asarray(rel, dtype=np.float32), "32FC1",
                                          cv.header(req.pose.header.stamp, cam.frame_id))
            res.map_sequence = int(self._tracker.last_sequence or 0)
            res.success, res.message = True, ""
        except (ChorusError, ValueError) as e:
            self.drops.add("service_rejected")
            res.success, res.message = False, self.errors.report("render_relevance", e)
        return res

    # ---------------------------------------------------------------------------- control
    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued update and view is finished and the map is encoded."""
        end = time.monotonic() + timeout
        while True:
            with self._updates_lock:
                idle = self._done >= self._enqueued and self._dirty_since is None
            if idle:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)

    def destroy_node(self) -> None:
        worker = getattr(self, "_worker", None)   # absent when __init__ failed
        if worker is not None:
            self._stop.set()
            self._wake.set()
            self._views.close()
            if worker.is_alive() and threading.current_thread() is not worker:
                worker.join(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run chorus_ros chorus_node``."""
    from chorus_ros.ros.bringup import run_nodes
    return run_nodes([ChorusNode], args=args)


if __name__ == "__main__":
    raise SystemExit(main())
