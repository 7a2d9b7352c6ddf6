"""Pure conversions between ROS messages and chorus_ros core types (no ``rclpy.init()`` needed).

* ``sensor_msgs/Image`` <-> numpy (:func:`image_to_numpy`, :func:`numpy_to_image`; plain numpy,
  no cv_bridge; row padding and big-endian data are handled on input).
* ``PoseStamped`` + ``CameraInfo`` -> :class:`~chorus_ros.core.geometry.Camera`
  (:func:`camera_from_msgs`) and back (:func:`camera_to_msgs`); the pose is the camera
  *optical* frame in the map frame (camera-to-world, ROS xyzw quaternion).
* :class:`~chorus_ros.core.labels.LabelSet` <-> ``chorus_ros/LabelInfo``.
* object records -> ``chorus_ros/ObjectMap`` and back to arrays for querying.
* :class:`~chorus_ros.core.pipeline.ViewResult` -> the images a view publishes.

Every function raises :class:`~chorus_ros.core.errors.InvalidInputError` with a message naming
the bad value, so callbacks can log it and keep running.
"""
from __future__ import annotations

import array
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, PoseStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA, Header

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.geometry import Camera, viewmat_to_pose
from chorus_ros.core.labels import UNLABELED, LabelSet

__all__ = [
    "IMAGE_ENCODINGS", "image_to_numpy", "numpy_to_image", "stamp_to_ns", "ns_to_stamp",
    "camera_from_msgs", "camera_to_msgs", "labelset_to_msg", "msg_to_labelset",
    "colors_from_msgs", "objects_to_msg", "ObjectTable", "objectmap_to_table",
    "records_to_msgs", "header", "view_images", "overlay_rgb", "camera_rgb", "pick_by_stamp",
]

IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "16SC1": (np.dtype(np.int16), 1),
    "32SC1": (np.dtype(np.int32), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "64FC1": (np.dtype(np.float64), 1),
}
"""Encodings understood here: name -> (element dtype, channels)."""


# -------------------------------------------------------------------------- time / header
def stamp_to_ns(stamp: Time) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> ``builtin_interfaces/Time``."""
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def header(stamp: Time | int, frame_id: str) -> Header:
    """A Header from a Time (copied) or integer nanoseconds."""
    if isinstance(stamp, Time):
        stamp = Time(sec=stamp.sec, nanosec=stamp.nanosec)
    else:
        stamp = ns_to_stamp(stamp)
    return Header(stamp=stamp, frame_id=frame_id)


# --------------------------------------------------------------------------------- images
def image_to_numpy(msg: Image) -> np.ndarray:
    """Decode an Image into ``[H, W]`` (one channel) or ``[H, W, C]`` numpy (a copy).

    Raises InvalidInputError for unknown encodings or inconsistent sizes/steps."""
    enc = msg.encoding
    if enc not in IMAGE_ENCODINGS:
        raise InvalidInputError(f"unsupported image encoding {enc!r}; known: {sorted(IMAGE_ENCODINGS)}")
    dtype, ch = IMAGE_ENCODINGS[enc]
    h, w = int(msg.height), int(msg.width)
    row = w * ch * dtype.itemsize
    if msg.step < row:
        raise InvalidInputError(f"image step {msg.step} is smaller than width*channels*size = {row}")
    buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    if buf.size < h * msg.step:
        raise InvalidInputError(f"image data has {buf.size} bytes, expected height*step = {h * msg.step}")
    rows = buf[: h * msg.step].reshape(h, msg.step)[:, :row]
    dt = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    out = np.ascontiguousarray(rows).view(dt).astype(dtype, copy=False)
    out = out.reshape(h, w, ch) if ch > 1 else out.reshape(h, w)
    return out.copy() if not out.flags.owndata else out


def numpy_to_image(data: np.ndarray, encoding: str, hdr: Header | None = None) -> Image:
    """Encode ``[H, W]`` / ``[H, W, C]`` numpy (dtype and channels must match ``encoding``)."""
    if encoding not in IMAGE_ENCODINGS:
        raise InvalidInputError(f"unsupported image encoding {encoding!r}; known: {sorted(IMAGE_ENCODINGS)}")
    dtype, ch = IMAGE_ENCODINGS[encoding]
    a = np.asarray(data)
    if a.ndim == 3 and a.shape[2] == 1 and ch == 1:
        a = a[..., 0]
    if (ch == 1 and a.ndim != 2) or (ch > 1 and (a.ndim != 3 or a.shape[2] != ch)):
        raise InvalidInputError(f"encoding {encoding!r} needs shape [H, W{', ' + str(ch) if ch > 1 else ''}], "
                                f"got {a.shape}")
    if a.dtype != dtype:
        raise InvalidInputError(f"encoding {encoding!r} needs dtype {dtype}, got {a.dtype}")
    a = np.ascontiguousarray(a.astype(dtype.newbyteorder("<"), copy=False))
    msg = Image()
    if hdr is not None:
        msg.header = hdr
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(a.shape[1] * ch * dtype.itemsize)
    msg.data = array.array("B", a.tobytes())
    return msg


# --------------------------------------------------------------------------------- camera
def camera_from_msgs(pose: PoseStamped, info: CameraInfo, *, map_frame: str = "map",
                     strict_quaternion: bool = True, max_pixels: int = 4096 * 4096,
                     default_frame: str = "camera_optical_frame") -> Camera:
    """Build the view of one request.

    Args:
        pose: camera optical frame in ``map_frame`` (camera-to-world; x right, y down, z forward).
            An empty ``header.frame_id`` means the map frame.
        info: image size and intrinsics ``k`` (distortion ignored); ``header.frame_id`` names the
            camera frame copied into the outputs.
        map_frame: the map frame; a pose in another frame is rejected (use TF for those).
        strict_quaternion: reject non-unit quaternions instead of normalising them.
        max_pixels: refuse images larger than this (width * height).
        default_frame: camera frame used when ``info.header.frame_id`` is empty.
    """
    w, h = int(info.width), int(info.height)
    if w <= 0 or h <= 0:
        raise InvalidInputError(f"CameraInfo has zero image size {w}x{h} (frame {info.header.frame_id!r})")
    if w * h > max_pixels:
        raise InvalidInputError(f"CameraInfo size {w}x{h} exceeds the limit of {max_pixels} pixels")
    k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise InvalidInputError(f"CameraInfo k needs finite positive focal lengths, got {k.ravel().tolist()}")
    pf = pose.header.frame_id
    if pf and pf.lstrip("/") != map_frame.lstrip("/"):
        raise InvalidInputError(f"camera pose is in frame {pf!r}, expected the map frame {map_frame!r}")
    p, q = pose.pose.position, pose.pose.orientation
    position = np.array([p.x, p.y, p.z], dtype=np.float64)
    quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    frame = info.header.frame_id or default_frame
    return Camera.from_pose(position, quat, k, w, h, frame, strict=strict_quaternion)


def camera_to_msgs(camera: Camera, stamp: Time | int, map_frame: str = "map") -> tuple[PoseStamped, CameraInfo]:
    """Inverse of :func:`camera_from_msgs` (pinhole, no distortion)."""
    pos, quat = viewmat_to_pose(camera.viewmat.double().numpy())
    pose = PoseStamped(header=header(stamp, map_frame))
    pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in pos)
    (pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z,
     pose.pose.orientation.w) = (float(v) for v in quat)
    info = CameraInfo(header=header(stamp, camera.frame_id))
    info.width, info.height = int(camera.width), int(camera.height)
    K = camera.K.double().numpy()
    info.k = [float(v) for v in K.ravel()]
    info.p = [float(K[0, 0]), 0.0, float(K[0, 2]), 0.0, 0.0, float(K[1, 1]), float(K[1, 2]), 0.0,
              0.0, 0.0, 1.0, 0.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    return pose, info


# --------------------------------------------------------------------------------- labels
def _label_msgs():
    from chorus_ros.msg import LabelEntry, LabelInfo  # generated interfaces (make install)
    return LabelEntry, LabelInfo


def labelset_to_msg(labels: LabelSet, stamp: Time | int = 0, threshold: float = 0.0):
    """:class:`LabelSet` -> ``chorus_ros/LabelInfo`` (ids 0..K-1, colours scaled to [0, 1])."""
    LabelEntry, LabelInfo = _label_msgs()
    msg = LabelInfo(header=header(stamp, ""), threshold=float(threshold))
    msg.labels = [LabelEntry(id=i, name=n, color=ColorRGBA(r=c[0] / 255.0, g=c[1] / 255.0,
                                                          b=c[2] / 255.0, a=1.0))
                  for i, (n, c) in enumerate(zip(labels.names, labels.colors.tolist()))]
    return msg


def msg_to_labelset(msg, name: str = "labels") -> LabelSet:
    """``chorus_ros/LabelInfo`` -> :class:`LabelSet`; ids must be exactly 0..K-1 (any order)."""
    entries = sorted(msg.labels, key=lambda e: e.id)
    ids = [int(e.id) for e in entries]
    if ids != list(range(len(ids))):
        raise InvalidInputError(f"LabelInfo ids must be 0..{len(ids) - 1}, got {ids}")
    colors = colors_from_msgs([e.color for e in entries])
    return LabelSet([e.name for e in entries], colors, name=name)


def colors_from_msgs(colors: Sequence[ColorRGBA]) -> np.ndarray:
    """``ColorRGBA`` (components in [0, 1]) -> ``[K, 3]`` uint8 RGB."""
    c = np.array([[x.r, x.g, x.b] for x in colors], dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(c)) or c.size and (c.min() < 0 or c.max() > 1):
        raise InvalidInputError(f"colours must have r, g, b in [0, 1], got {c.tolist()}")
    return np.round(c * 255).astype(np.uint8)


# -------------------------------------------------------------------------------- objects
def _point(v) -> Point:
    v = [float(x) for x in np.asarray(v, dtype=np.float64).reshape(3)]
    return Point(x=v[0], y=v[1], z=v[2])


def _np(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def records_to_msgs(records: Iterable[Any], *, include_embeddings: bool = True) -> list:
    """Core object records -> ``chorus_ros/ObjectRecord`` messages (a label id outside
    0..65534, e.g. -1 for a class removed from the label set, becomes UNLABELED).

    A record needs ``instance_id, label_id, label, score, centroid [3], bbox_min [3],
    bbox_max [3], gaussian_count`` and ``embedding [D]``, and may have ``code_id`` (codebook
    prototype index, -1 none; default -1) and ``confidence`` (in [0, 1]; default ``score``
    clipped to [0, 1]) (duck-typed: the core
    :class:`~chorus_ros.core.decode.instances.ObjectRecord` dataclass). A code id below -1 or a
    confidence outside [0, 1] raises InvalidInputError naming the instance."""
    from chorus_ros.msg import ObjectRecord
    out = []
    for r in records:
        lid = int(r.label_id)
        code = int(getattr(r, "code_id", ObjectRecord.CODE_NONE))
        conf = getattr(r, "confidence", None)
        conf = min(max(float(r.score), 0.0), 1.0) if conf is None else float(conf)
        if code < ObjectRecord.CODE_NONE or not 0.0 <= conf <= 1.0:
            raise InvalidInputError(f"object {r.instance_id}: code_id must be >= -1 and confidence in "
                                    f"[0, 1], got code_id={code}, confidence={conf}")
        m = ObjectRecord(instance_id=int(r.instance_id), label_id=lid if 0 <= lid < UNLABELED else UNLABELED,
                         label=str(r.label or ""), score=float(r.score),
                         centroid=_point(_np(r.centroid)), bbox_min=_point(_np(r.bbox_min)),
                         bbox_max=_point(_np(r.bbox_max)),
                         gaussian_count=int(getattr(r, "gaussian_count", None) or getattr(r, "count", 0)),
                         code_id=code, confidence=conf)
        if include_embeddings and getattr(r, "embedding", None) is not None:
            m.embedding = array.array("f", _np(r.embedding).astype(np.float32).ravel().tobytes())
        out.append(m)
    return out


def objects_to_msg(records: Iterable[Any], hdr: Header, *, map_id: str = "", map_sequence: int = 0,
                   map_version: int = 0, include_embeddings: bool = True):
    """Core object records -> ``chorus_ros/ObjectMap`` (see :func:`records_to_msgs`)."""
    from chorus_ros.msg import ObjectMap
    objs = records_to_msgs(records, include_embeddings=include_embeddings)
    dims = {len(o.embedding) for o in objs}
    if len(dims) > 1:
        raise InvalidInputError(f"object embeddings differ in length: {sorted(dims)}")
    dim = dims.pop() if dims else 0
    return ObjectMap(header=hdr, map_id=map_id, map_sequence=int(map_sequence),
                     map_version=int(map_version), embedding_dim=int(dim), objects=objs)


@dataclass
class ObjectTable:
    """An ObjectMap as arrays, ready for querying.

    Attributes:
        msg: the ObjectMap it came from (records are returned from it).
        embeddings: ``[M, D]`` float32 unit rows (zeros where a record had none).
        has_embedding: ``[M]`` bool.
    """

    msg: Any
    embeddings: np.ndarray
    has_embedding: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def objectmap_to_table(msg) -> ObjectTable:
    """``chorus_ros/ObjectMap`` -> :class:`ObjectTable` (embeddings re-normalised)."""
    d = int(msg.embedding_dim)
    m = len(msg.objects)
    emb = np.zeros((m, d), dtype=np.float32)
    has = np.zeros(m, dtype=bool)
    for i, o in enumerate(msg.objects):
        e = np.frombuffer(memoryview(o.embedding), dtype=np.float32) if len(o.embedding) else np.zeros(0, np.float32)
        if e.size == 0:
            continue
        if e.size != d:
            raise InvalidInputError(f"object {o.instance_id} embedding has {e.size} values, "
                                    f"ObjectMap.embedding_dim is {d}")
        n = float(np.linalg.norm(e))
        if math.isfinite(n) and n > 0:
            emb[i] = e / n
            has[i] = True
    return ObjectTable(msg, emb, has)


# ---------------------------------------------------------------------------------- views
def _u8_rgb(a) -> np.ndarray:
    a = _np(a)
    if a.dtype == np.uint8:
        return a
    return np.clip(np.round(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def overlay_rgb(rgb: np.ndarray, colors: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over ``rgb`` (uint8 ``[H, W, 3]``) where ``labels`` != 65535."""
    out = rgb.astype(np.float32)
    m = labels != UNLABELED
    out[m] = (1 - alpha) * out[m] + alpha * colors[m].astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def view_images(view: Any, labels: LabelSet, overlay_alpha: float = 0.5) -> dict[str, np.ndarray]:
    """The images of one rendered view, keyed like :data:`chorus_ros.ros.chorus_node.OUTPUTS`.

    ``view`` is a :class:`~chorus_ros.core.pipeline.ViewResult` (``labels`` [H, W] class ids with
    65535 unlabeled, ``confidence``, ``instances``, ``rgb``, ``depth``; optional ``color`` and
    ``overlay`` images); numpy or torch. Missing optional parts are derived or left out."""
    out: dict[str, np.ndarray] = {}
    lab = _np(view.labels).astype(np.int64)
    bad = (lab < 0) | ((lab > 65534) & (lab != UNLABELED))
    if bad.any():
        raise InvalidInputError(f"view labels outside uint16: {np.unique(lab[bad])[:5].tolist()}")
    out["semantic"] = lab.astype(np.uint16)
    color = getattr(view, "color", None)
    out["semantic_color"] = _u8_rgb(color) if color is not None else labels.colorize(out["semantic"])
    rgb = getattr(view, "rgb", None)
    if rgb is not None:
        out["rgb"] = _u8_rgb(rgb)
    ov = getattr(view, "overlay", None)
    if ov is not None:
        out["overlay"] = _u8_rgb(ov)
    elif rgb is not None:
        out["overlay"] = overlay_rgb(out["rgb"], out["semantic_color"], out["semantic"], overlay_alpha)
    for name, dtype in (("instance", np.int32), ("confidence", np.float32), ("depth", np.float32)):
        v = getattr(view, name, None)
        if v is None and name == "instance":
            v = getattr(view, "instances", None)
        if v is not None:
            out[name] = np.ascontiguousarray(_np(v).astype(dtype, copy=False))
    return out


def camera_rgb(msg: Image, width: int, height: int) -> np.ndarray:
    """A live camera Image as ``[height, width, 3]`` uint8 RGB for the fusion decoder.

    Accepts rgb8/bgr8/rgba8/bgra8/mono8/8UC3 (channels reordered / replicated). The image must
    already be in the view's pixel grid (the CameraInfo that defines the view): a different size
    raises :class:`InvalidInputError` naming both sizes (no silent resampling).
    """
    arr = image_to_numpy(msg)
    enc = msg.encoding
    if arr.dtype != np.uint8:
        raise InvalidInputError(f"camera image encoding {enc!r} is not 8-bit colour; use rgb8/bgr8/mono8")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif enc in ("bgr8", "bgra8"):
        arr = arr[..., [2, 1, 0]]
    else:
        arr = arr[..., :3]
    if arr.shape[:2] != (int(height), int(width)):
        raise InvalidInputError(f"camera image is {arr.shape[1]}x{arr.shape[0]} but the view (CameraInfo) is "
                                f"{int(width)}x{int(height)}")
    return np.ascontiguousarray(arr)


def pick_by_stamp(buffer: dict[int, Any], stamp_ns: int, tolerance_ns: int) -> Any | None:
    """The entry of ``buffer`` (stamp ns -> item) whose stamp is closest to ``stamp_ns`` within
    ``tolerance_ns`` (ties: the older one), or None. Pairing by stamp, never "latest"."""
    best, best_dt = None, None
    for s in sorted(buffer):
        dt = abs(int(s) - int(stamp_ns))
        if dt <= tolerance_ns and (best_dt is None or dt < best_dt):
            best, best_dt = buffer[s], dt
    return best
