"""Procedural indoor rooms made of surface Gaussians, with per-Gaussian class and instance ids.

:func:`generate_scene` builds one room from a :class:`SceneConfig`:

1. Room: an axis-aligned box ``[0, Lx] x [0, Ly] x [0, H]`` (world frame, z up, metres) with a
   floor, four walls and (optionally) a ceiling.
2. Layout (random, seeded): a door and 1-2 windows cut into the walls (with a keep-out zone in
   front of the door); furniture against the walls (bed, sofa, desk, shelf, cabinet); a table
   with chairs on a rug; a floor lamp and plants in free spots; monitors, lamps and small plants
   on tables and cabinets; books on shelf boards; pillows on beds and sofas; pictures on walls.
   Objects never overlap: each one's axis-aligned bounding box is checked against everything
   placed before it (children only touch their support parent), and floor objects stay inside
   the room.
3. Gaussians: every primitive surface is sampled at one spacing ``h`` (stuff surfaces at
   ``h / sqrt(stuff_density)``), ``h`` being solved so that the total is close to
   ``target_gaussians``. Each sample becomes a flat Gaussian (see
   :func:`~chorus_ros.core.synthetic.primitives.surfels_from_samples`) with a material colour
   (picked per instance, jittered, textured) and opacity.

Ids: class ids index :func:`~chorus_ros.core.synthetic.classes.synthetic_label_set`. Instance
ids start at 1 (0 is never used, 65535 means "none" in images): the floor is instance 1, the
walls 2-5 (south, east, north, west), the ceiling 6 (when present), then the things in placement
order. Stuff classes (floor, wall, ceiling) are background surfaces; they have instance ids so
every Gaussian has one, but they are not objects.

Determinism: the layout depends only on ``seed`` and the room parameters; the sampling of each
object uses its own stream seeded by ``(seed, instance id)``. The same config gives a bitwise
identical scene, and changing ``target_gaussians`` keeps the layout.

Example::

    scene = generate_scene(SceneConfig(seed=3, target_gaussians=50_000))
    scene.gaussians.extras["label"]      # [N] int64 class ids
    scene.instances[7].class_name        # e.g. 'door'
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.labels import UNLABELED, LabelSet
from chorus_ros.core.synthetic import objects as ob
from chorus_ros.core.synthetic.classes import MATERIALS, class_id, synthetic_label_set
from chorus_ros.core.synthetic.primitives import Rect, RectPatch, rot_z, surfels_from_samples

__all__ = ["SceneConfig", "InstanceInfo", "SceneObject", "SyntheticScene", "generate_scene",
           "solve_spacing"]


@dataclass
class SceneConfig:
    """Configuration of the synthetic room generator."""

    seed: int = 0
    """Random seed; the same config gives a bitwise identical scene."""
    target_gaussians: int = 200_000
    """Approximate number of Gaussians (density knob); realised within a few percent."""
    room_x: tuple[float, float] = (4.5, 7.0)
    """Range of the room's extent along x, metres."""
    room_y: tuple[float, float] = (4.0, 6.0)
    """Range of the room's extent along y, metres."""
    room_height: tuple[float, float] = (2.5, 3.0)
    """Range of the room's height, metres."""
    ceiling: bool = True
    """Build a ceiling (class 'ceiling')."""
    stuff_density: float = 0.35
    """Density of Gaussians on floor/walls/ceiling relative to objects (fewer on plain surfaces)."""
    furniture_probability: float = 0.75
    """Probability to include each of bed, sofa, desk, shelf and cabinet."""
    max_windows: int = 2
    """At most this many windows (at least one)."""
    max_pictures: int = 3
    """At most this many pictures (at least one)."""
    sh_degree: int = 0
    """SH degree of the output (higher bands are zero: colours are view-independent)."""
    tangent_factor: float = 0.8
    """In-plane Gaussian std as a fraction of the sample spacing; 0.8 makes opaque surfaces
    (accumulated alpha > 0.99 between samples) as in optimised 3DGS scenes."""
    semi_transparent_fraction: float = 0.03
    """Fraction of (non-glass) Gaussians given a low opacity in [0.2, 0.6], as in real captures."""
    stuff_density_range: tuple[float, ...] = ()
    """Optional (lo, hi): draw ``stuff_density`` per seed uniformly in this range (training randomisation of the floor/wall Gaussian sizes relative to objects; 1.0 = same sizes on every surface). Empty uses ``stuff_density``."""

    def validate(self) -> None:
        """Raise :class:`InvalidInputError` naming the bad field."""
        if int(self.target_gaussians) < 1000:
            raise InvalidInputError(f"target_gaussians must be >= 1000, got {self.target_gaussians}")
        for name in ("room_x", "room_y", "room_height"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise InvalidInputError(f"{name} must be a range 0 < lo <= hi, got {(lo, hi)}")
        if min(self.room_x[0], self.room_y[0]) < 3.5 or self.room_height[0] < 2.2:
            raise InvalidInputError("rooms must be at least 3.5 x 3.5 x 2.2 m to hold the furniture, got "
                                    f"room_x={self.room_x}, room_y={self.room_y}, room_height={self.room_height}")
        if not 0 < self.stuff_density <= 4:
            raise InvalidInputError(f"stuff_density must be in (0, 4], got {self.stuff_density}")
        r = tuple(self.stuff_density_range)
        if r and (len(r) != 2 or not 0 < r[0] <= r[1] <= 4):
            raise InvalidInputError(f"stuff_density_range must be (lo, hi) with 0 < lo <= hi <= 4, got {r}")
        if not 0 <= self.furniture_probability <= 1 or not 0 <= self.semi_transparent_fraction <= 1:
            raise InvalidInputError("furniture_probability and semi_transparent_fraction must be in [0, 1]")
        if self.sh_degree not in (0, 1, 2, 3):
            raise InvalidInputError(f"sh_degree must be 0..3, got {self.sh_degree}")
        if self.max_windows < 1 or self.max_pictures < 1:
            raise InvalidInputError("max_windows and max_pictures must be >= 1")
        if not 0.2 <= self.tangent_factor <= 2:
            raise InvalidInputError(f"tangent_factor must be in [0.2, 2], got {self.tangent_factor}")


@dataclass(frozen=True)
class InstanceInfo:
    """One row of a scene's instance table."""

    id: int
    """Instance id (>= 1), as in ``gaussians.extras['instance']``."""
    class_id: int
    """Class id in the scene's label set."""
    class_name: str
    name: str
    """Readable unique name, e.g. ``chair_2`` or ``wall_north``."""
    aabb_min: tuple[float, float, float]
    """World bounding box of the object's geometry, metres."""
    aabb_max: tuple[float, float, float]
    parent: int = 0
    """Instance id of the object this one stands on or hangs in (0: none)."""
    stuff: bool = False
    """True for floor, walls and ceiling."""

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "InstanceInfo":
        return cls(int(d["id"]), int(d["class_id"]), str(d["class_name"]), str(d["name"]),
                   tuple(float(v) for v in d["aabb_min"]), tuple(float(v) for v in d["aabb_max"]),
                   int(d.get("parent", 0)), bool(d.get("stuff", False)))


@dataclass
class SceneObject:
    """An object's geometry in the world frame (kept for tests, trajectories and evaluation)."""

    instance_id: int
    class_name: str
    name: str
    parts: list[ob.Part]
    """Primitives in the world frame with their materials."""
    rot: np.ndarray
    """[3, 3] object-to-world rotation (yaw only; identity for stuff)."""
    origin: np.ndarray
    """[3] object origin in the world, metres."""
    parent: int = 0
    stuff: bool = False

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.prim.aabb() for p in self.parts]
        return np.min([b[0] for b in boxes], 0), np.max([b[1] for b in boxes], 0)


@dataclass
class SyntheticScene:
    """A generated room."""

    gaussians: GaussianArrays
    """N Gaussians (world frame) with ``extras['label']`` [N] int64 class ids and
    ``extras['instance']`` [N] int64 instance ids; ``ids`` = 0..N-1."""
    labels: LabelSet
    """The label set the class ids index."""
    instances: dict[int, InstanceInfo]
    """Instance table: id -> class, name, bounding box, parent."""
    room_min: np.ndarray
    """[3] room interior minimum corner (the origin), metres."""
    room_max: np.ndarray
    """[3] room interior maximum corner (Lx, Ly, H), metres."""
    seed: int
    config: SceneConfig
    objects: list[SceneObject] = field(default_factory=list, repr=False)
    """World-frame geometry of every instance (same order as instance ids)."""
    spacing: float = 0.0
    """Sample spacing ``h`` used for things, metres."""

    def __len__(self) -> int:
        return len(self.gaussians)

    def instance_to_class(self) -> np.ndarray:
        """``[max_id + 1]`` int64 lookup: instance id -> class id (65535 for unused ids)."""
        lut = np.full(max(self.instances) + 1, UNLABELED, dtype=np.int64)
        for i, info in self.instances.items():
            lut[i] = info.class_id
        return lut

    def obstacles(self, *, include_stuff: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """World AABBs ``(lo [M, 3], hi [M, 3])`` of all (thing) instances."""
        rows = [(info.aabb_min, info.aabb_max) for info in self.instances.values()
                if include_stuff or not info.stuff]
        return np.array([r[0] for r in rows]).reshape(-1, 3), np.array([r[1] for r in rows]).reshape(-1, 3)


# ----------------------------------------------------------------------------- layout
_EPS = 1e-6


@dataclass
class _Wall:
    name: str
    corner: np.ndarray  # start corner on the floor
    along: np.ndarray  # unit direction along the wall (object-local x)
    normal: np.ndarray  # unit inward normal (object-local y)
    length: float
    yaw: float
    holes: list = field(default_factory=list)  # (z0, z1, s0, s1) metres


class _Layout:
    """Random non-overlapping placement of objects in a room."""

    def __init__(self, cfg: SceneConfig, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        self.lx = float(rng.uniform(*cfg.room_x))
        self.ly = float(rng.uniform(*cfg.room_y))
        self.h = float(rng.uniform(*cfg.room_height))
        lx, ly = self.lx, self.ly
        self.walls = [
            _Wall("south", np.array([0.0, 0, 0]), np.array([1.0, 0, 0]), np.array([0.0, 1, 0]), lx, 0.0),
            _Wall("east", np.array([lx, 0, 0]), np.array([0.0, 1, 0]), np.array([-1.0, 0, 0]), ly, math.pi / 2),
            _Wall("north", np.array([lx, ly, 0]), np.array([-1.0, 0, 0]), np.array([0.0, -1, 0]), lx, math.pi),
            _Wall("west", np.array([0.0, ly, 0]), np.array([0.0, -1, 0]), np.array([1.0, 0, 0]), ly, -math.pi / 2),
        ]
        self.objects: list[SceneObject] = []
        self.blockers: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.rugs: list[tuple[np.ndarray, np.ndarray]] = []
        self.next_id = 1
        self.counts: dict[str, int] = {}
        self.supports: dict[int, list[ob.Support]] = {}
        """Support rectangles (object-local) of each placed object, by instance id."""
        self.opening_walls: dict[int, str] = {}
        # stuff first: fixed ids 1..6
        self.floor_id = self._reserve()
        self.wall_ids = [self._reserve() for _ in self.walls]
        self.ceiling_id = self._reserve() if cfg.ceiling else 0

    def _reserve(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    # ------------------------------------------------------------------ checks
    def free(self, lo: np.ndarray, hi: np.ndarray, *, ignore: tuple[int, ...] = (), margin: float = 0.0) -> bool:
        """True if the box ``lo..hi`` grown by ``margin`` in x and y (not z: things stand on
        each other) touches no blocker except those owned by ``ignore``."""
        m = np.array([margin, margin, 0.0])
        lo, hi = lo - m, hi + m
        for blo, bhi, owner in self.blockers:
            if owner in ignore:
                continue
            if np.all(lo < bhi - _EPS) and np.all(blo < hi - _EPS):
                return False
        return True

    def inside_room(self, lo: np.ndarray, hi: np.ndarray) -> bool:
        return bool(np.all(lo >= -_EPS) and hi[0] <= self.lx + _EPS and hi[1] <= self.ly + _EPS
                    and hi[2] <= self.h - 0.05)

    def floor_height(self, lo: np.ndarray, hi: np.ndarray) -> float:
        """Height of the highest rug under the footprint ``lo..hi`` (0 if none)."""
        z = 0.0
        for rlo, rhi in self.rugs:
            if np.all(lo[:2] < rhi[:2] - _EPS) and np.all(rlo[:2] < hi[:2] - _EPS):
                z = max(z, float(rhi[2]))
        return z

    # --------------------------------------------------------------- placement
    @staticmethod
    def _world_parts(built: ob.Built, rot: np.ndarray, origin: np.ndarray) -> list[ob.Part]:
        return [ob.Part(p.prim.transformed(rot, origin), p.material) for p in built.parts]

    @staticmethod
    def _aabb(parts: list[ob.Part]) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.prim.aabb() for p in parts]
        return np.min([b[0] for b in boxes], 0), np.max([b[1] for b in boxes], 0)

    def try_add(self, cls: str, built: ob.Built, rot: np.ndarray, origin: np.ndarray, *, parent: int = 0,
                margin: float = 0.03, in_room: bool = True, extra_block: list | None = None,
                on_floor: bool = False) -> SceneObject | None:
        """Place ``built`` at ``rot``/``origin`` if it collides with nothing; return the object."""
        origin = np.asarray(origin, dtype=np.float64).copy()
        parts = self._world_parts(built, rot, origin)
        lo, hi = self._aabb(parts)
        if on_floor:  # stand on a rug if there is one under the footprint
            dz = self.floor_height(lo, hi)
            if dz > 0:
                origin[2] += dz
                parts = self._world_parts(built, rot, origin)
                lo, hi = self._aabb(parts)
        if in_room and not self.inside_room(lo, hi):
            return None
        if not self.free(lo, hi, ignore=(parent,), margin=margin):
            return None
        for elo, ehi in extra_block or []:
            if not self.free(elo, ehi, ignore=(parent,)):
                return None
        iid = self._reserve()
        k = self.counts.get(cls, 0)
        self.counts[cls] = k + 1
        obj = SceneObject(iid, cls, f"{cls}_{k}", parts, rot, origin, parent)
        self.objects.append(obj)
        self.supports[iid] = built.supports
        self.blockers.append((lo, hi, iid))
        for elo, ehi in extra_block or []:
            self.blockers.append((elo, ehi, iid))
        return obj

    def wall_frame(self, wall: _Wall, s: float) -> tuple[np.ndarray, np.ndarray]:
        return rot_z(wall.yaw), wall.corner + wall.along * s

    def against_wall(self, cls: str, built: ob.Built, *, tries: int = 60) -> SceneObject | None:
        w, d = built.params["width"], built.params["depth"]
        for _ in range(tries):
            wall = self.walls[int(self.rng.integers(4))]
            if wall.length < w + 0.1:
                continue
            s = float(self.rng.uniform(w / 2 + 0.02, wall.length - w / 2 - 0.02))
            rot, o = self.wall_frame(wall, s)
            obj = self.try_add(cls, built, rot, o + wall.normal * (d / 2 + float(self.rng.uniform(0.01, 0.04))),
                               on_floor=True)
            if obj is not None:
                return obj
        return None

    def on_floor(self, cls: str, built: ob.Built, *, tries: int = 60, corners: bool = False,
                 margin: float = 0.05, axis_aligned: bool = False) -> SceneObject | None:
        w, d = built.params["width"], built.params["depth"]
        r = 0.5 * math.hypot(w, d) + 0.02
        for t in range(tries):
            if corners and t < tries // 2:
                cx = r if self.rng.random() < 0.5 else self.lx - r
                cy = r if self.rng.random() < 0.5 else self.ly - r
            else:
                cx = float(self.rng.uniform(r, self.lx - r))
                cy = float(self.rng.uniform(r, self.ly - r))
            yaw = float(self.rng.choice([0.0, math.pi / 2]) if axis_aligned else self.rng.uniform(0, 2 * math.pi))
            obj = self.try_add(cls, built, rot_z(yaw), np.array([cx, cy, 0.0]), margin=margin, on_floor=True)
            if obj is not None:
                return obj
        return None

    def on_support(self, cls: str, built: ob.Built, parent: SceneObject, sup: ob.Support, *,
                   tries: int = 30, yaw: float | None = None, back: bool = False) -> SceneObject | None:
        w, d = built.params["width"], built.params["depth"]
        if built.params.get("height", 0.0) > sup.shelf_height - 0.01:
            return None
        for _ in range(tries):
            rel = float(self.rng.uniform(-0.6, 0.6)) if yaw is None else yaw
            ext = np.abs(rot_z(rel)[:2, :2]) @ np.array([w / 2, d / 2])
            if sup.x1 - sup.x0 < 2 * ext[0] or sup.y1 - sup.y0 < 2 * ext[1]:
                return None
            x = float(self.rng.uniform(sup.x0 + ext[0], sup.x1 - ext[0]))
            if back:
                y = float(self.rng.uniform(sup.y0 + ext[1], min(sup.y1 - ext[1], sup.y0 + ext[1] + 0.12)))
            else:
                y = float(self.rng.uniform(sup.y0 + ext[1], sup.y1 - ext[1]))
            origin = parent.rot @ np.array([x, y, sup.z]) + parent.origin
            obj = self.try_add(cls, built, parent.rot @ rot_z(rel), origin, parent=parent.instance_id,
                               margin=0.01, in_room=False)
            if obj is not None:
                return obj
        return None

    # ------------------------------------------------------------------- rooms
    def opening(self, cls: str, *, avoid_wall: str | None = None, tries: int = 40) -> SceneObject | None:
        built = ob.build(cls, self.rng)
        w = built.params["width"]
        for _ in range(tries):
            wall = self.walls[int(self.rng.integers(4))]
            if wall.name == avoid_wall or wall.length < w + 0.8:
                continue
            s = float(self.rng.uniform(w / 2 + 0.35, wall.length - w / 2 - 0.35))
            rot, o = self.wall_frame(wall, s)
            if cls == "door":
                z0, z1 = 0.0, built.params["height"]
                keep = rot @ np.array([[-w / 2 - 0.15, 0, 0], [w / 2 + 0.15, 1.0, z1]]).T
                extra = [(np.minimum(*keep.T) + o, np.maximum(*keep.T) + o)]
            else:
                z0 = built.params["sill"]
                z1 = z0 + built.params["height"]
                keep = rot @ np.array([[-w / 2 - 0.05, 0, z0], [w / 2 + 0.05, 0.3, z1]]).T
                extra = [(np.minimum(*keep.T) + o, np.maximum(*keep.T) + o)]
            obj = self.try_add(cls, built, rot, o, in_room=False, extra_block=extra, margin=0.1)
            if obj is not None:
                wall.holes.append((z0, z1, s - w / 2, s + w / 2))
                self.opening_walls[obj.instance_id] = wall.name
                return obj
        return None

    def stuff_objects(self) -> list[SceneObject]:
        lx, ly, h = self.lx, self.ly, self.h
        # no floor under rugs (rugs are axis-aligned, so their boxes are their footprints)
        under = tuple((lo[0] / lx, hi[0] / lx, lo[1] / ly, hi[1] / ly) for lo, hi in self.rugs)
        out = [SceneObject(self.floor_id, "floor", "floor",
                           [ob.Part(Rect(RectPatch([0, 0, 0], [lx, 0, 0], [0, ly, 0], under)), "floor")],
                           np.eye(3), np.zeros(3), stuff=True)]
        for wall, iid in zip(self.walls, self.wall_ids):
            holes = tuple((z0 / h, z1 / h, s0 / wall.length, s1 / wall.length) for z0, z1, s0, s1 in wall.holes)
            patch = RectPatch(wall.corner, np.array([0, 0, h]), wall.along * wall.length, holes)
            out.append(SceneObject(iid, "wall", f"wall_{wall.name}", [ob.Part(Rect(patch), "wall")],
                                   rot_z(wall.yaw), wall.corner.copy(), stuff=True))
        if self.ceiling_id:
            out.append(SceneObject(self.ceiling_id, "ceiling", "ceiling",
                                   [ob.Part(Rect(RectPatch([0, 0, h], [0, ly, 0], [lx, 0, 0])), "ceiling")],
                                   np.eye(3), np.zeros(3), stuff=True))
        return out


def _furnish(lay: _Layout) -> None:
    """The room recipe (see the module docstring)."""
    rng, cfg = lay.rng, lay.cfg
    door = lay.opening("door")
    door_wall = None if door is None else lay.opening_walls[door.instance_id]
    for k in range(int(rng.integers(1, cfg.max_windows + 1))):
        lay.opening("window", avoid_wall=door_wall if k == 0 else None)

    p = cfg.furniture_probability
    # against the walls, big things first
    if rng.random() < p:
        b = lay.against_wall("bed", ob.bed(rng))
        if b is not None:
            for _ in range(int(rng.integers(1, 3))):
                lay.on_support("pillow", ob.pillow(rng, upright=False), b, _sup(b, lay, 0), yaw=0.0)
    if rng.random() < p:
        s = lay.against_wall("sofa", ob.sofa(rng))
        if s is not None:
            for _ in range(int(rng.integers(1, 4))):
                lay.on_support("pillow", ob.pillow(rng, upright=True), s, _sup(s, lay, 0), yaw=0.0, back=True)
    table = _table_group(lay)
    monitor = None
    if rng.random() < p:
        desk = lay.against_wall("table", ob.table(rng, desk=True))
        if desk is not None:
            monitor = lay.on_support("monitor", ob.monitor(rng), desk, _sup(desk, lay, 0), yaw=0.0, back=True)
            if rng.random() < 0.6:
                lay.on_support("lamp", ob.lamp(rng), desk, _sup(desk, lay, 0))
            c = ob.chair(rng)
            off = _sup(desk, lay, 0).y1 + c.params["depth"] / 2 + float(rng.uniform(0.05, 0.2))
            lay.try_add("chair", c, desk.rot @ rot_z(math.pi), desk.rot @ np.array([0.0, off, 0]) + desk.origin,
                        on_floor=True)
    for kind, n in (("shelf", 1 + int(rng.random() < 0.3)), ("cabinet", 1 + int(rng.random() < 0.3))):
        for _ in range(n):
            if rng.random() >= p:
                continue
            o = lay.against_wall(kind, ob.build(kind, rng))
            if o is None:
                continue
            sups = lay.supports[o.instance_id]
            if kind == "shelf":
                for sup in sups[:-1]:
                    if rng.random() < 0.8:
                        _fill_books(lay, o, sup)
                if rng.random() < 0.5:
                    lay.on_support("plant", ob.plant(rng, small=True), o, sups[-1])
            else:
                pick = rng.random()
                if pick < 0.45:
                    lay.on_support("lamp", ob.lamp(rng), o, sups[0])
                elif pick < 0.8:
                    lay.on_support("plant", ob.plant(rng, small=True), o, sups[0])
    if monitor is None and table is not None:
        lay.on_support("monitor", ob.monitor(rng), table, _sup(table, lay, 0), yaw=float(rng.choice([0, math.pi])))
    if rng.random() < 0.6 or "lamp" not in lay.counts:
        lay.on_floor("lamp", ob.lamp(rng, floor=True), corners=True)
    for _ in range(1 + int(rng.random() < 0.5)):
        lay.on_floor("plant", ob.plant(rng), corners=True)
    for _ in range(int(rng.integers(1, cfg.max_pictures + 1))):
        _picture(lay)


def _sup(obj: SceneObject, lay: _Layout, k: int) -> ob.Support:
    return lay.supports[obj.instance_id][k]


def _fill_books(lay: _Layout, shelf: SceneObject, sup: ob.Support) -> None:
    rng = lay.rng
    x = sup.x0 + float(rng.uniform(0.0, 0.15))
    end = sup.x1 - float(rng.uniform(0.0, 0.25))
    while True:
        b = ob.book(rng, sup.shelf_height - 0.02)
        t, d = b.params["width"], b.params["depth"]
        if x + t > end or d > sup.y1 - sup.y0:
            break
        y = sup.y0 + d / 2 + float(rng.uniform(0.0, 0.03))
        origin = shelf.rot @ np.array([x + t / 2, y, sup.z]) + shelf.origin
        lay.try_add("book", b, shelf.rot, origin, parent=shelf.instance_id, margin=0.0, in_room=False)
        x += t + (float(rng.uniform(0.0, 0.004)) if rng.random() < 0.85 else float(rng.uniform(0.05, 0.2)))


def _table_group(lay: _Layout) -> SceneObject | None:
    """A table with chairs on a rug (the rug may be left out when it does not fit)."""
    rng = lay.rng
    found = False
    for attempt in range(120):
        if attempt % 40 == 0:  # a fresh (maybe smaller) table now and then
            t = ob.table(rng)
            w, d = t.params["width"], t.params["depth"]
        yaw = float(rng.choice([0.0, math.pi / 2]))
        rot = rot_z(yaw)
        zone = np.abs(rot[:2, :2]) @ np.array([w / 2 + 0.55, d / 2 + 0.55])
        if 2 * zone[0] > lay.lx or 2 * zone[1] > lay.ly:
            continue
        c = np.array([rng.uniform(zone[0], lay.lx - zone[0]), rng.uniform(zone[1], lay.ly - zone[1]), 0.0])
        lo, hi = np.r_[c[:2] - zone, 0.0], np.r_[c[:2] + zone, 0.8]
        if lay.free(lo, hi):
            found = True
            break
    if not found:
        r = lay.on_floor("rug", ob.rug(rng, float(rng.uniform(1.2, 2.0)), float(rng.uniform(0.8, 1.4))),
                         axis_aligned=True)
        if r is not None:
            lay.rugs.append(r.aabb())
        return None
    rw, rd = w + float(rng.uniform(0.8, 1.5)), d + float(rng.uniform(0.8, 1.5))
    for _ in range(8):
        r = ob.rug(rng, rw, rd)
        if lay.try_add("rug", r, rot, c, margin=0.02) is not None:
            lo, hi = lay.objects[-1].aabb()
            lay.rugs.append((lo, hi))
            break
        rw, rd = max(w, rw * 0.85), max(d, rd * 0.85)
    tbl = lay.try_add("table", t, rot, c, on_floor=True)
    if tbl is None:
        return None
    sup = _sup(tbl, lay, 0)
    if rng.random() < 0.4:
        lay.on_support("lamp", ob.lamp(rng), tbl, sup)
    if rng.random() < 0.5:
        lay.on_support("plant", ob.plant(rng, small=True), tbl, sup)
    seats = []
    n_side = 2 if w > 1.4 else 1
    for side in (-1, 1):
        for k in range(n_side):
            x = (k - (n_side - 1) / 2) * w / n_side
            seats.append((x, side, 0.0 if side < 0 else math.pi, "y"))
    if rng.random() < 0.5:
        seats.append((0.0, 1, math.pi / 2, "x"))
        seats.append((0.0, -1, -math.pi / 2, "x"))
    for x, side, cyaw, axis in seats:
        if rng.random() < 0.15:
            continue
        ch = ob.chair(rng)
        gap = ch.params["depth"] / 2 + float(rng.uniform(0.03, 0.15))
        local = np.array([x, side * (d / 2 + gap), 0.0]) if axis == "y" else np.array([side * (w / 2 + gap), 0.0, 0.0])
        lay.try_add("chair", ch, rot @ rot_z(cyaw), rot @ local + c, on_floor=True, margin=0.02)
    return tbl


def _picture(lay: _Layout) -> None:
    rng = lay.rng
    pic = ob.picture(rng)
    w = pic.params["width"]
    for _ in range(30):
        wall = lay.walls[int(rng.integers(4))]
        if wall.length < w + 0.4:
            continue
        s = float(rng.uniform(w / 2 + 0.2, wall.length - w / 2 - 0.2))
        rot, o = lay.wall_frame(wall, s)
        if lay.try_add("picture", pic, rot, o, margin=0.05, in_room=False) is not None:
            return


# ---------------------------------------------------------------------- appearance
def _instance_colors(rng: np.random.Generator, materials: set[str]) -> dict[str, np.ndarray]:
    out = {}
    for m in sorted(materials):
        mat = MATERIALS[m]
        base = np.asarray(mat.palette[int(rng.integers(len(mat.palette)))])
        scale = 1 + rng.uniform(-mat.jitter, mat.jitter)
        out[m] = np.clip(base * scale + rng.uniform(-mat.jitter / 2, mat.jitter / 2, 3), 0.02, 0.98)
    return out


def _texture(rng: np.random.Generator, material: str, base: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Per-sample colours ``[M, 3]`` for object-local positions ``local [M, 3]``."""
    mat = MATERIALS[material]
    m = local.shape[0]
    if mat.pattern == "stripes":
        other = np.asarray(mat.palette[int(rng.integers(len(mat.palette)))]) * rng.uniform(0.8, 1.1)
        freq = rng.uniform(2.5, 6.0)
        band = np.sin(2 * math.pi * freq * local[:, 0] + rng.uniform(0, 2 * math.pi)) > 0.3
        rgb = np.where(band[:, None], other[None], base[None])
    elif mat.pattern == "blotches":
        k = 5
        cols = np.asarray(mat.palette)[rng.integers(len(mat.palette), size=k)] * rng.uniform(0.6, 1.1, (k, 1))
        centers = rng.uniform(-0.4, 0.4, (k, 2))
        sig = rng.uniform(0.08, 0.25, k)
        uv = local[:, [0, 2]] - np.median(local[:, [0, 2]], axis=0)
        wgt = np.exp(-((uv[:, None, :] - centers[None]) ** 2).sum(-1) / (2 * sig**2)) + 1e-3
        rgb = (wgt @ cols) / wgt.sum(1, keepdims=True)
    else:
        rgb = np.broadcast_to(base, (m, 3))
    if mat.noise > 0:
        dirs = rng.normal(size=(3, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        om = dirs * (2 * math.pi * mat.noise_freq * rng.uniform(0.6, 1.4, (3, 1)))
        n = np.sin(local @ om.T + rng.uniform(0, 2 * math.pi, 3)).mean(1)
        rgb = rgb * (1 + mat.noise * n)[:, None]
    rgb = rgb + rng.normal(0.0, mat.white, (m, 3))
    return np.clip(rgb, 0.01, 0.99)


def solve_spacing(patches: list[tuple[object, bool]], target: int, stuff_density: float) -> float:
    """Spacing ``h`` (metres) whose total sample count over ``patches`` is closest to ``target``.

    ``patches``: ``(patch, is_stuff)``; stuff patches use ``h / sqrt(stuff_density)``.
    """
    f = 1.0 / math.sqrt(stuff_density)

    def total(h: float) -> int:
        return sum(p.count(h * f if s else h) for p, s in patches)

    lo, hi = math.log(1e-4), math.log(2.0)
    best = (math.inf, 1.0)
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        n = total(math.exp(mid))
        best = min(best, (abs(n - target), math.exp(mid)))
        if n > target:
            lo = mid
        else:
            hi = mid
    return best[1]


def _gaussians(objs: list[SceneObject], cfg: SceneConfig, h: float) -> GaussianArrays:
    f = 1.0 / math.sqrt(cfg.stuff_density)
    means, scales, quats, cols, opac, lab, inst = [], [], [], [], [], [], []
    for obj in objs:
        rng = np.random.default_rng([cfg.seed, 7, obj.instance_id])
        colors = _instance_colors(rng, {p.material for p in obj.parts})
        for part in obj.parts:
            for patch in part.prim.patches():
                smp = patch.sample(h * f if obj.stuff else h, rng)
                if len(smp) == 0:
                    continue
                sf = surfels_from_samples(smp, rng, tangent_factor=cfg.tangent_factor)
                local = (sf.means - obj.origin) @ obj.rot
                mat = MATERIALS[part.material]
                op = rng.uniform(*mat.opacity, len(smp))
                if part.material != "glass" and cfg.semi_transparent_fraction > 0:
                    weak = rng.random(len(smp)) < cfg.semi_transparent_fraction
                    op = np.where(weak, rng.uniform(0.2, 0.6, len(smp)), op)
                means.append(sf.means)
                scales.append(sf.scales)
                quats.append(sf.quats)
                cols.append(_texture(rng, part.material, colors[part.material], local))
                opac.append(op)
                lab.append(np.full(len(smp), class_id(obj.class_name), np.int64))
                inst.append(np.full(len(smp), obj.instance_id, np.int64))
    rgb = torch.from_numpy(np.concatenate(cols)).float()
    n = rgb.shape[0]
    sh = torch.zeros(n, (cfg.sh_degree + 1) ** 2, 3)
    sh[:, 0] = rgb_to_sh_dc(rgb)
    op = torch.from_numpy(np.concatenate(opac)).float()
    return GaussianArrays(
        means=torch.from_numpy(np.concatenate(means)).float(),
        sh=sh,
        opacities=torch.logit(op),
        log_scales=torch.from_numpy(np.log(np.concatenate(scales))).float(),
        quats=torch.from_numpy(np.concatenate(quats)).float(),
        ids=torch.arange(n, dtype=torch.int64),
        extras={"label": torch.from_numpy(np.concatenate(lab)), "instance": torch.from_numpy(np.concatenate(inst))},
    )


def generate_scene(config: SceneConfig | None = None) -> SyntheticScene:
    """Generate one room (see the module docstring). Deterministic in ``config``."""
    cfg = config or SceneConfig()
    cfg.validate()
    if cfg.stuff_density_range:
        from dataclasses import replace
        lo, hi = (float(v) for v in cfg.stuff_density_range)
        cfg = replace(cfg, stuff_density=float(np.random.default_rng([int(cfg.seed), 5]).uniform(lo, hi)),
                      stuff_density_range=())
    lay = _Layout(cfg, np.random.default_rng([int(cfg.seed), 1]))
    _furnish(lay)
    objs = sorted(lay.stuff_objects() + lay.objects, key=lambda o: o.instance_id)
    patches = [(pa, o.stuff) for o in objs for part in o.parts for pa in part.prim.patches()]
    h = solve_spacing(patches, int(cfg.target_gaussians), cfg.stuff_density)
    gs = _gaussians(objs, cfg, h)
    labels = synthetic_label_set()
    table = {}
    for o in objs:
        lo, hi = o.aabb()
        table[o.instance_id] = InstanceInfo(o.instance_id, class_id(o.class_name), o.class_name, o.name,
                                            tuple(float(v) for v in lo), tuple(float(v) for v in hi),
                                            o.parent, o.stuff)
    return SyntheticScene(gs, labels, table, np.zeros(3), np.array([lay.lx, lay.ly, lay.h]), int(cfg.seed),
                          cfg, objs, h)
