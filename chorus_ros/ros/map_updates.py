"""``chorus_ros/GaussianMapUpdate`` <-> :class:`MapUpdate` (pure; no ``rclpy.init()`` needed).

The Gaussians travel as a ``sensor_msgs/PointCloud2`` (see msg/GaussianMapUpdate.msg), converted
by :mod:`chorus_ros.ros.pointcloud`. This module adds the update envelope: map id, sequence,
FULL/DELTA and removed ids, and checks the envelope (frame, removed ids of a FULL update).
The cloud may also be a plain coloured point cloud (x y z + packed ``rgb`` or ``r g b``): its
Gaussians get the defaults of :class:`~chorus_ros.core.plain_cloud.PointCloudInputConfig`
(:attr:`MapUpdate.layout` = 'pointcloud'); without an ``id`` field only a FULL update is
accepted (ids ``0..N-1``), since a DELTA must name the Gaussians it replaces. Filling in a plain
cloud's parameters costs a kNN search (about 1 s per 60K points on one core), so a node can defer
it off its executor: ``map_update_from_msg(..., defer_plain=True)`` checks the envelope and the
field names only, and :meth:`MapUpdate.resolve` (in the worker) decodes the cloud.
Sequence rules are applied by :class:`chorus_ros.ros.runtime.SequenceTracker`.
"""
from __future__ import annotations

import array
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.plain_cloud import LAYOUT_3DGS, LAYOUT_POINTCLOUD, PointCloudInputConfig
from chorus_ros.ros.conversions import header as make_header
from chorus_ros.ros.pointcloud import decode_pointcloud2, gaussians_to_pointcloud2, is_plain_cloud
from chorus_ros.ros.runtime import UPDATE_DELTA, UPDATE_FULL

__all__ = ["MapUpdate", "map_update_from_msg", "map_update_to_msg"]


@dataclass
class MapUpdate:
    """One decoded map update.

    Attributes:
        map_id: the map it belongs to.
        sequence: publisher's sequence number.
        update_type: UPDATE_FULL (0) or UPDATE_DELTA (1).
        gaussians: upserted Gaussians (all of them for FULL: then never None, possibly empty),
            with ``ids``; None for a DELTA without upserts.
        removed_ids: ``[R]`` int64 ids removed before the upserts (DELTA only).
        stamp: ``builtin_interfaces/Time`` of the map state.
        frame_id: map frame of the Gaussian positions.
        received: ``time.monotonic()`` when it was decoded (encode-lag measurement).
        layout: '3dgs', or 'pointcloud' when the Gaussians came from a plain coloured cloud.
        note: for 'pointcloud': the colour source and the defaults filled in (after decoding).
        pending: a plain cloud not decoded yet (``defer_plain``); :meth:`resolve` decodes it.
        point_cloud: the plain-cloud defaults :meth:`resolve` uses.
    """

    map_id: str
    sequence: int
    update_type: int
    gaussians: GaussianArrays | None
    removed_ids: torch.Tensor
    stamp: Any = None
    frame_id: str = ""
    received: float = field(default_factory=time.monotonic)
    layout: str = LAYOUT_3DGS
    note: str = ""
    pending: Any = None
    point_cloud: PointCloudInputConfig | None = None

    @property
    def full(self) -> bool:
        return self.update_type == UPDATE_FULL

    @property
    def kind(self) -> str:
        return "FULL" if self.full else "DELTA"

    def resolve(self) -> "MapUpdate":
        """Decode a deferred plain cloud into :attr:`gaussians` (no-op when nothing is pending).
        Raises InvalidInputError naming the problem (the update is then unusable)."""
        if self.pending is None:
            return self
        res = decode_pointcloud2(self.pending, point_cloud=self.point_cloud)
        self.pending = None
        self.gaussians, self.note = _checked(res.gaussians, self.full), res.note
        return self


def _empty() -> GaussianArrays:
    return GaussianArrays(torch.zeros(0, 3), torch.zeros(0, 1, 3), torch.zeros(0), torch.zeros(0, 3),
                          torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))


def _checked(g: GaussianArrays | None, full: bool) -> GaussianArrays | None:
    """None for an empty DELTA, an empty map for an empty FULL; refuses duplicated ids."""
    if g is not None and len(g) == 0:
        g = None
    if g is None and full:   # an empty snapshot clears the map
        g = _empty()
    if g is not None:
        u = torch.unique(g.ids)
        if len(u) != len(g):
            raise InvalidInputError(f"map update has duplicate Gaussian ids ({len(g) - len(u)} repeated)")
    return g


def map_update_from_msg(msg, map_frame: str = "map", point_cloud: PointCloudInputConfig | None = None, *,
                        defer_plain: bool = False) -> MapUpdate:
    """Decode and check a ``GaussianMapUpdate``; raises InvalidInputError naming the problem.
    ``point_cloud``: the defaults for a plain coloured cloud; ``defer_plain``: leave a plain
    cloud undecoded in :attr:`MapUpdate.pending` for :meth:`MapUpdate.resolve` (module docstring)."""
    if msg.update_type not in (UPDATE_FULL, UPDATE_DELTA):
        raise InvalidInputError(f"unknown update_type {msg.update_type} (0 = FULL, 1 = DELTA)")
    frame = msg.header.frame_id
    if frame and frame.lstrip("/") != map_frame.lstrip("/"):
        raise InvalidInputError(f"map update is in frame {frame!r}, expected the map frame {map_frame!r}")
    removed = np.frombuffer(memoryview(msg.removed_ids), dtype=np.uint32).astype(np.int64) \
        if len(msg.removed_ids) else np.zeros(0, np.int64)
    if msg.update_type == UPDATE_FULL and removed.size:
        raise InvalidInputError(f"FULL update carries {removed.size} removed_ids (must be empty)")
    cloud = msg.gaussians
    full = msg.update_type == UPDATE_FULL
    g, pending = None, None
    layout, note = LAYOUT_3DGS, ""
    if int(cloud.width) * int(cloud.height) > 0 or len(cloud.data):
        names = {f.name for f in cloud.fields}
        if is_plain_cloud(names):
            layout = LAYOUT_POINTCLOUD
            if "id" not in names and not full:
                raise InvalidInputError("DELTA update carries a plain point cloud without an 'id' field: a DELTA "
                                        "must name the Gaussians it adds or replaces (only a FULL update may omit "
                                        "ids: they become 0..N-1)")
        if layout == LAYOUT_POINTCLOUD and defer_plain:
            pending = cloud
        else:
            res = decode_pointcloud2(cloud, point_cloud=point_cloud)
            g, note = res.gaussians, res.note
    if pending is None:
        g = _checked(g, full)
    return MapUpdate(str(msg.map_id), int(msg.sequence), int(msg.update_type), g,
                     torch.from_numpy(removed), msg.header.stamp, frame, layout=layout, note=note,
                     pending=pending, point_cloud=point_cloud)


def map_update_to_msg(gaussians: GaussianArrays | None, *, map_id: str, sequence: int, full: bool,
                      removed_ids=None, stamp: Any = 0, frame_id: str = "map",
                      include_extras: bool = False):
    """Build a ``GaussianMapUpdate`` (FULL when ``full``) from Gaussians with ids
    (``include_extras``: also send ``gaussians.extras`` as extra point fields)."""
    from chorus_ros.msg import GaussianMapUpdate
    hdr = make_header(stamp, frame_id)
    msg = GaussianMapUpdate(header=hdr, map_id=map_id, sequence=int(sequence),
                            update_type=UPDATE_FULL if full else UPDATE_DELTA)
    if gaussians is not None:
        msg.gaussians = gaussians_to_pointcloud2(gaussians, make_header(stamp, frame_id),
                                                include_extras=include_extras)
    else:
        msg.gaussians.header = make_header(stamp, frame_id)
        msg.gaussians.is_dense = True
        msg.gaussians.height = 1
    if removed_ids is not None and len(removed_ids):
        r = np.asarray(removed_ids.cpu() if hasattr(removed_ids, "cpu") else removed_ids, dtype=np.int64)
        if r.min() < 0 or r.max() > 0xFFFFFFFF:
            raise InvalidInputError("removed ids must fit in uint32")
        msg.removed_ids = array.array("I", r.astype(np.uint32).tobytes())
    return msg
