"""Camera paths inside a synthetic room.

:func:`make_trajectory` returns a smooth loop at head height that looks around the room,
followed by random views aimed at objects. Every camera centre keeps ``clearance`` metres from
the walls, floor, ceiling and every object's bounding box, so no view starts inside furniture.
Poses are camera-to-world in the optical frame (x right, y down, z forward) as built by
:func:`chorus_ros.core.geometry.look_at_pose` with the world z axis up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.geometry import Camera, look_at_pose
from chorus_ros.core.synthetic.room import SyntheticScene

__all__ = ["TrajectoryConfig", "Trajectory", "make_trajectory", "position_is_free"]


@dataclass
class TrajectoryConfig:
    """Camera path settings."""

    loop_views: int = 24
    """Views on the head-height loop."""
    random_views: int = 8
    """Random views aimed at objects, after the loop."""
    width: int = 320
    """Image width, pixels."""
    height: int = 240
    """Image height, pixels."""
    fov_x_deg: float = 75.0
    """Horizontal field of view, degrees (square pixels, principal point at the centre)."""
    head_height: float = 1.6
    """Height of the loop above the floor, metres."""
    clearance: float = 0.25
    """Minimum distance from a camera centre to walls, floor, ceiling and object boxes, metres."""
    pitch_deg: tuple[float, float] = (-30.0, -8.0)
    """Range of the loop's downward look (it oscillates inside this range), degrees."""
    random_height: tuple[float, float] = (0.9, 2.0)
    """Height range of random views, metres."""
    min_target_distance: float = 0.8
    """Random views look at targets at least this far away, metres."""
    seed: int | None = None
    """Seed for the random views; None uses the scene's seed."""
    frame_id: str = "camera_optical_frame"
    """Frame id given to the cameras."""

    def validate(self) -> None:
        if self.loop_views < 0 or self.random_views < 0 or self.loop_views + self.random_views == 0:
            raise InvalidInputError(f"need at least one view, got loop_views={self.loop_views}, "
                                    f"random_views={self.random_views}")
        if self.width <= 0 or self.height <= 0:
            raise InvalidInputError(f"image size must be positive, got {self.width}x{self.height}")
        if not 10 <= self.fov_x_deg <= 150:
            raise InvalidInputError(f"fov_x_deg must be in [10, 150], got {self.fov_x_deg}")
        if self.clearance < 0:
            raise InvalidInputError(f"clearance must be >= 0, got {self.clearance}")


@dataclass
class Trajectory:
    """Views of one scene."""

    cameras: list[Camera]
    """One camera per view (world-to-camera ``viewmat`` and ``K``)."""
    c2w: np.ndarray
    """[V, 4, 4] float64 camera-to-world, optical frame."""
    K: np.ndarray
    """[3, 3] float64 intrinsics shared by all views."""
    width: int
    height: int
    kinds: list[str] = field(default_factory=list)
    """'loop' or 'random' per view."""

    def __len__(self) -> int:
        return len(self.cameras)


def position_is_free(scene: SyntheticScene, p: np.ndarray, clearance: float) -> np.ndarray:
    """``[M]`` bool: points ``[M, 3]`` keep ``clearance`` from the room boundary and object boxes."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    ok = np.all((p >= scene.room_min + clearance) & (p <= scene.room_max - clearance), axis=1)
    lo, hi = scene.obstacles()
    if len(lo):
        inside = np.all((p[:, None] > lo[None] - clearance) & (p[:, None] < hi[None] + clearance), axis=2)
        ok &= ~inside.any(1)
    return ok


def _loop_positions(scene: SyntheticScene, n: int, cfg: TrajectoryConfig, rng: np.random.Generator):
    lo, hi = scene.room_min, scene.room_max
    size = hi[:2] - lo[:2]
    centre0 = (lo[:2] + hi[:2]) / 2
    th = np.linspace(0, 2 * math.pi, max(n, 64), endpoint=False)
    z = np.clip(cfg.head_height, lo[2] + cfg.clearance, hi[2] - cfg.clearance)
    centres = [centre0] + [centre0 + rng.uniform(-0.25, 0.25, 2) * size for _ in range(30)]
    for f in np.arange(0.7, 0.05, -0.05):
        for c in centres:
            ring = np.stack([c[0] + f * size[0] / 2 * np.cos(th), c[1] + f * size[1] / 2 * np.sin(th),
                             z + 0.05 * np.sin(2 * th)], 1)
            if position_is_free(scene, ring, cfg.clearance).all():
                t = np.linspace(0, 2 * math.pi, n, endpoint=False)
                return c, f, t
    raise InvalidInputError("no free head-height loop in this room (clearance "
                            f"{cfg.clearance} m); lower the clearance or head_height")


def make_trajectory(scene: SyntheticScene, config: TrajectoryConfig | None = None) -> Trajectory:
    """Camera views inside ``scene``: a loop at head height, then random views at objects."""
    cfg = config or TrajectoryConfig()
    cfg.validate()
    seed = scene.seed if cfg.seed is None else cfg.seed
    rng = np.random.default_rng([int(seed), 99])
    K = Camera.intrinsics_from_fov(cfg.width, cfg.height, cfg.fov_x_deg)
    size = scene.room_max[:2] - scene.room_min[:2]
    poses, kinds = [], []

    if cfg.loop_views:
        c, f, t = _loop_positions(scene, cfg.loop_views, cfg, rng)
        z = np.clip(cfg.head_height, scene.room_min[2] + cfg.clearance, scene.room_max[2] - cfg.clearance)
        p0, p1 = np.deg2rad(cfg.pitch_deg)
        for ti in t:
            eye = np.array([c[0] + f * size[0] / 2 * math.cos(ti), c[1] + f * size[1] / 2 * math.sin(ti),
                            z + 0.05 * math.sin(2 * ti)])
            # look across the room (inward), swinging left and right, pitch oscillating in range
            yaw = ti + math.pi + 0.9 * math.sin(3 * ti)
            pitch = p0 + (p1 - p0) * (0.5 + 0.5 * math.sin(2 * ti))
            d = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
            poses.append(look_at_pose(eye, eye + d))
            kinds.append("loop")

    things = [info for info in scene.instances.values() if not info.stuff]
    lo = scene.room_min + cfg.clearance
    hi = scene.room_max - cfg.clearance
    made, tries = 0, 0
    while made < cfg.random_views:
        tries += 1
        if tries > 5000 * max(1, cfg.random_views):
            raise InvalidInputError("could not place random views: the room has no free space for "
                                    f"clearance {cfg.clearance} m")
        eye = np.array([rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1]),
                        rng.uniform(max(cfg.random_height[0], lo[2]), min(cfg.random_height[1], hi[2]))])
        if not position_is_free(scene, eye, cfg.clearance)[0]:
            continue
        if things and rng.random() < 0.8:
            info = things[int(rng.integers(len(things)))]
            target = (np.asarray(info.aabb_min) + np.asarray(info.aabb_max)) / 2
        else:
            target = np.array([rng.uniform(scene.room_min[0], scene.room_max[0]),
                               rng.uniform(scene.room_min[1], scene.room_max[1]), rng.uniform(0.0, 1.5)])
        d = target - eye
        dist = np.linalg.norm(d)
        if dist < cfg.min_target_distance or abs(d[2]) > 0.95 * dist:
            continue
        poses.append(look_at_pose(eye, target))
        kinds.append("random")
        made += 1

    c2w = np.stack(poses)
    cams = [Camera.from_c2w(p, K, cfg.width, cfg.height, cfg.frame_id) for p in c2w]
    return Trajectory(cams, c2w, K, cfg.width, cfg.height, kinds)
