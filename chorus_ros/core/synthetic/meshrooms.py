"""A second, structurally different room source: triangle-mesh furniture, area-uniform samples.

:mod:`.room` builds rooms from analytic primitives, samples every surface on a jittered grid
(stuff more sparsely than things) and gives each sample a flat Gaussian sized to its grid cell,
with per-material palettes and textures. This module shares none of that: furniture is built from
*triangle meshes* of other shapes (round pedestal tables, slanted-back chairs with round legs,
low sofas with cushions, platform beds, pole lamps with cone shades, icosphere plants,
tall wardrobes, wall-mounted screens), placed by its own layout, and sampled **uniformly at
random by area** over all triangles of the room at one spacing, each sample a flat Gaussian of
the **same size** on every surface (floor, walls and objects alike). Colours are per-instance HSV
draws (no material palettes, no textures) plus mild per-Gaussian noise; opacity 0.6-1.

Only the class names are shared with :mod:`.classes` (the label set is the same), so a model
trained on :mod:`.room` meets other geometry, sampling and appearance here.

Frames: world z up, metres; the room spans ``[0, Lx] x [0, Ly] x [0, H]``.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.synthetic.classes import class_id, synthetic_label_set
from chorus_ros.core.synthetic.primitives import rotmats_to_quats_wxyz

__all__ = ["MeshRoomConfig", "generate_mesh_room", "Mesh"]


@dataclass
class MeshRoomConfig:
    """Configuration of the mesh-sampled room source."""

    seed: int = 0
    """Random seed (layout, sampling, colours)."""
    target_gaussians: int = 60_000
    """Gaussians per room (exact)."""
    room_x: tuple[float, float] = (4.0, 6.5)
    """Range of the room's extent along x, metres."""
    room_y: tuple[float, float] = (3.8, 5.5)
    """Range of the room's extent along y, metres."""
    room_height: tuple[float, float] = (2.4, 2.9)
    """Range of the room's height, metres."""
    size_factor: float = 0.7
    """In-plane Gaussian std as a fraction of the mean sample spacing (the same on every surface)."""

    def validate(self) -> None:
        if self.target_gaussians < 1000:
            raise InvalidInputError(f"target_gaussians must be >= 1000, got {self.target_gaussians}")
        if min(self.room_x[0], self.room_y[0]) < 3.5 or self.room_height[0] < 2.2:
            raise InvalidInputError("mesh rooms must be at least 3.5 x 3.5 x 2.2 m")
        if not 0.1 <= self.size_factor <= 2:
            raise InvalidInputError(f"size_factor must be in [0.1, 2], got {self.size_factor}")


@dataclass
class Mesh:
    """A triangle mesh (world frame, metres)."""

    v: np.ndarray
    """[V, 3] vertices."""
    f: np.ndarray
    """[F, 3] int triangle vertex indices (counter-clockwise seen from outside)."""

    def moved(self, yaw: float, t) -> "Mesh":
        c, s = math.cos(yaw), math.sin(yaw)
        r = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        return Mesh(self.v @ r.T + np.asarray(t, dtype=np.float64), self.f)

    @staticmethod
    def join(parts: list["Mesh"]) -> "Mesh":
        vs, fs, off = [], [], 0
        for p in parts:
            vs.append(p.v)
            fs.append(p.f + off)
            off += len(p.v)
        return Mesh(np.concatenate(vs), np.concatenate(fs))

    def areas(self) -> np.ndarray:
        a, b, c = self.v[self.f[:, 0]], self.v[self.f[:, 1]], self.v[self.f[:, 2]]
        return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


# ----------------------------------------------------------------------------- mesh builders
def box(lo, hi, skip_bottom: bool = False) -> Mesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v = np.array([[x, y, z] for z in (lo[2], hi[2]) for y in (lo[1], hi[1]) for x in (lo[0], hi[0])])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    if skip_bottom:
        quads = quads[1:]
    f = [(a, b, c) for a, b, c, d in quads] + [(a, c, d) for a, b, c, d in quads]
    return Mesh(v, np.array(f))


def cylinder(c, r0: float, r1: float, h: float, seg: int = 16, caps: bool = True) -> Mesh:
    """Frustum along +z from ``c`` (base centre), radii ``r0`` (bottom) and ``r1`` (top)."""
    c = np.asarray(c, float)
    a = np.linspace(0, 2 * math.pi, seg, endpoint=False)
    ring0 = np.stack([r0 * np.cos(a), r0 * np.sin(a), np.zeros(seg)], 1) + c
    ring1 = np.stack([r1 * np.cos(a), r1 * np.sin(a), np.full(seg, h)], 1) + c
    v = [ring0, ring1]
    f = []
    for i in range(seg):
        j = (i + 1) % seg
        f += [(i, j, seg + j), (i, seg + j, seg + i)]
    if caps:
        v.append(np.array([c, c + [0, 0, h]]))
        b, t = 2 * seg, 2 * seg + 1
        for i in range(seg):
            j = (i + 1) % seg
            f += [(b, j, i), (t, seg + i, seg + j)]
    return Mesh(np.concatenate(v), np.array(f))


def ellipsoid(c, radii, subdiv: int = 2) -> Mesh:
    """Icosphere scaled to ``radii``."""
    t = (1 + 5 ** 0.5) / 2
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6],
         [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
         [8, 6, 7], [9, 8, 1]]
    v = [np.array(p, float) / np.linalg.norm(p) for p in v]
    for _ in range(subdiv):
        cache, nf = {}, []
        for a, b, cc in f:
            mids = []
            for i, j in ((a, b), (b, cc), (cc, a)):
                k = (min(i, j), max(i, j))
                if k not in cache:
                    m = v[i] + v[j]
                    v.append(m / np.linalg.norm(m))
                    cache[k] = len(v) - 1
                mids.append(cache[k])
            ab, bc, ca = mids
            nf += [[a, ab, ca], [b, bc, ab], [cc, ca, bc], [ab, bc, ca]]
        f = nf
    return Mesh(np.array(v) * np.asarray(radii, float) + np.asarray(c, float), np.array(f))


# ----------------------------------------------------------------------------- furniture
def _chair(rng) -> Mesh:
    w, d, sh = rng.uniform(0.4, 0.5), rng.uniform(0.4, 0.5), rng.uniform(0.42, 0.48)
    r = 0.018
    legs = [cylinder([x, y, 0], r, r * 0.8, sh - 0.04, 8, caps=False) for x in (-w / 2 + 0.04, w / 2 - 0.04)
            for y in (-d / 2 + 0.04, d / 2 - 0.04)]
    seat = box([-w / 2, -d / 2, sh - 0.04], [w / 2, d / 2, sh])
    back = box([-w / 2, d / 2 - 0.03, sh], [w / 2, d / 2, sh + rng.uniform(0.35, 0.5)])
    back.v[:, 1] += (back.v[:, 2] - sh) * 0.15  # slanted back
    return Mesh.join(legs + [seat, back])


def _table(rng) -> Mesh:
    h = rng.uniform(0.7, 0.78)
    if rng.random() < 0.5:  # round pedestal table
        r = rng.uniform(0.45, 0.7)
        return Mesh.join([cylinder([0, 0, h - 0.04], r, r, 0.04, 32), cylinder([0, 0, 0.03], 0.05, 0.05, h - 0.07, 12),
                          cylinder([0, 0, 0], 0.3, 0.25, 0.03, 16)])
    w, d = rng.uniform(1.0, 1.6), rng.uniform(0.7, 0.9)
    legs = [box([x - 0.03, y - 0.03, 0], [x + 0.03, y + 0.03, h - 0.04]) for x in (-w / 2 + 0.06, w / 2 - 0.06)
            for y in (-d / 2 + 0.06, d / 2 - 0.06)]
    return Mesh.join(legs + [box([-w / 2, -d / 2, h - 0.04], [w / 2, d / 2, h])])


def _sofa(rng) -> Mesh:
    w, d = rng.uniform(1.6, 2.2), rng.uniform(0.8, 0.95)
    base = box([-w / 2, -d / 2, 0.08], [w / 2, d / 2, 0.38])
    feet = [cylinder([x, y, 0], 0.03, 0.02, 0.08, 8)
            for x in (-w / 2 + 0.08, w / 2 - 0.08) for y in (-d / 2 + 0.08, d / 2 - 0.08)]
    back = box([-w / 2, d / 2 - 0.2, 0.38], [w / 2, d / 2, 0.8])
    cushions = [ellipsoid([x, 0.0, 0.44], [w / 4.5, d / 3, 0.07], 1) for x in (-w / 4, w / 4)]
    return Mesh.join([base, back] + feet + cushions)


def _bed(rng) -> Mesh:
    w, l = rng.uniform(1.4, 1.8), rng.uniform(1.95, 2.1)
    plat = box([-w / 2, -l / 2, 0.0], [w / 2, l / 2, 0.25])
    matt = box([-w / 2 + 0.03, -l / 2 + 0.03, 0.25], [w / 2 - 0.03, l / 2 - 0.03, 0.45])
    head = box([-w / 2, l / 2, 0], [w / 2, l / 2 + 0.06, rng.uniform(0.9, 1.2)])
    return Mesh.join([plat, matt, head])


def _wardrobe(rng) -> Mesh:
    w, d, h = rng.uniform(0.8, 1.4), rng.uniform(0.45, 0.6), rng.uniform(1.7, 2.1)
    body = box([-w / 2, -d / 2, 0], [w / 2, d / 2, h])
    knobs = [ellipsoid([x, -d / 2 - 0.015, h * 0.5], [0.015] * 3, 1) for x in (-0.04, 0.04)]
    return Mesh.join([body] + knobs)


def _shelf(rng) -> Mesh:
    w, d, h = rng.uniform(0.8, 1.2), rng.uniform(0.3, 0.38), rng.uniform(1.2, 1.9)
    t = 0.025
    parts = [box([-w / 2, -d / 2, 0], [-w / 2 + t, d / 2, h]), box([w / 2 - t, -d / 2, 0], [w / 2, d / 2, h]),
             box([-w / 2, d / 2 - 0.01, 0], [w / 2, d / 2, h])]
    k = int(rng.integers(3, 6))
    parts += [box([-w / 2, -d / 2, z], [w / 2, d / 2, z + t]) for z in np.linspace(0, h - t, k)]
    return Mesh.join(parts)


def _books(rng, w: float, d: float, z: float) -> list[Mesh]:
    out, x = [], -w / 2 + 0.05
    while x < w / 2 - 0.08:
        t, hh = rng.uniform(0.02, 0.05), rng.uniform(0.15, 0.26)
        out.append(box([x, -d / 2 + 0.02, z], [x + t, d / 2 - 0.04, z + hh]))
        x += t + rng.uniform(0.0, 0.03)
    return out


def _lamp(rng) -> Mesh:
    h = rng.uniform(1.3, 1.7)
    return Mesh.join([cylinder([0, 0, 0], 0.15, 0.15, 0.02, 16),
                      cylinder([0, 0, 0.02], 0.012, 0.012, h - 0.3, 8, caps=False),
                      cylinder([0, 0, h - 0.3], 0.22, 0.12, 0.28, 20, caps=False)])


def _plant(rng) -> Mesh:
    pot_r, pot_h = rng.uniform(0.12, 0.2), rng.uniform(0.2, 0.35)
    parts = [cylinder([0, 0, 0], pot_r * 0.8, pot_r, pot_h, 16)]
    for _ in range(int(rng.integers(2, 5))):
        c = [rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), pot_h + rng.uniform(0.15, 0.5)]
        parts.append(ellipsoid(c, rng.uniform(0.12, 0.25, 3), 2))
    return Mesh.join(parts)


def _screen(rng) -> Mesh:
    w = rng.uniform(0.9, 1.3)
    return box([-w / 2, -0.03, 0], [w / 2, 0, w * 0.56])


def _rug(rng) -> Mesh:
    lo = [-rng.uniform(0.8, 1.3), -rng.uniform(0.6, 1.0), 0]
    return box(lo, [rng.uniform(0.8, 1.3), rng.uniform(0.6, 1.0), 0.012], skip_bottom=True)


def _pillow(rng) -> Mesh:
    return ellipsoid([0, 0, 0.08], [rng.uniform(0.2, 0.3), rng.uniform(0.15, 0.22), 0.08], 1)


# ----------------------------------------------------------------------------- layout
@dataclass
class _Item:
    cls: str
    mesh: Mesh
    parent: int = 0
    stuff: bool = False
    colour: np.ndarray = field(default_factory=lambda: np.zeros(3))


def _free(lo, hi, boxes, margin=0.05) -> bool:
    for blo, bhi in boxes:
        if np.all(lo[:2] - margin < bhi[:2]) and np.all(blo[:2] < hi[:2] + margin):
            return False
    return True


def _colour(rng, cls: str) -> np.ndarray:
    base_hue = {"floor": 0.08, "wall": 0.12, "ceiling": 0.1}.get(cls)
    if base_hue is not None:
        h, s, v = base_hue + rng.uniform(-0.05, 0.05), rng.uniform(0.02, 0.25), rng.uniform(0.55, 0.9)
    else:
        h, s, v = rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.2, 0.95)
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _layout(cfg: MeshRoomConfig, rng) -> tuple[list[_Item], np.ndarray]:
    lx, ly, hz = rng.uniform(*cfg.room_x), rng.uniform(*cfg.room_y), rng.uniform(*cfg.room_height)
    items = [_Item("floor", Mesh(np.array([[0, 0, 0], [lx, 0, 0], [lx, ly, 0], [0, ly, 0]], float),
                                 np.array([[0, 1, 2], [0, 2, 3]])), stuff=True)]
    # walls as single quads facing inward (doors, windows and screens are mounted on them)
    walls = [np.array([[0, 0, 0], [lx, 0, 0], [lx, 0, hz], [0, 0, hz]]),
             np.array([[lx, 0, 0], [lx, ly, 0], [lx, ly, hz], [lx, 0, hz]]),
             np.array([[lx, ly, 0], [0, ly, 0], [0, ly, hz], [lx, ly, hz]]),
             np.array([[0, ly, 0], [0, 0, 0], [0, 0, hz], [0, ly, hz]])]
    for q in walls:
        items.append(_Item("wall", Mesh(q.astype(float), np.array([[0, 1, 2], [0, 2, 3]])), stuff=True))
    items.append(_Item("ceiling", Mesh(np.array([[0, 0, hz], [0, ly, hz], [lx, ly, hz], [lx, 0, hz]], float),
                                       np.array([[0, 1, 2], [0, 2, 3]])), stuff=True))
    boxes: list = []
    wall_frames = [(0.0, np.array([0, 0.0]), lx), (math.pi / 2, np.array([lx, 0.0]), ly),
                   (math.pi, np.array([lx, ly]), lx), (-math.pi / 2, np.array([0.0, ly]), ly)]

    def place(cls, mesh, *, wall: bool = False, tries: int = 40, gap: float = 0.015, z: float = 0.0):
        for _ in range(tries):
            if wall:
                yaw, o, length = wall_frames[int(rng.integers(4))]
                s = rng.uniform(0.6, length - 0.6)
                d = np.array([math.cos(yaw), math.sin(yaw)])
                n = np.array([-d[1], d[0]])
                p = o + d * s
                # local +y (backs, headboards) towards the wall; then out of the wall by its depth
                m = mesh.moved(yaw + math.pi, [0, 0, 0])
                back = -float((m.v[:, :2] @ n).min())
                p = p + n * (back + gap)
                m = mesh.moved(yaw + math.pi, [p[0], p[1], z])
            else:
                yaw = rng.uniform(0, 2 * math.pi)
                p = np.array([rng.uniform(0.5, lx - 0.5), rng.uniform(0.5, ly - 0.5)])
                m = mesh.moved(yaw, [p[0], p[1], z])
            lo, hi = m.v.min(0), m.v.max(0)
            if lo[0] < 0.01 or lo[1] < 0.01 or hi[0] > lx - 0.01 or hi[1] > ly - 0.01 or hi[2] > hz - 0.05:
                continue
            if _free(lo, hi, boxes):
                boxes.append((lo, hi))
                items.append(_Item(cls, m))
                return len(items)  # instance id (1-based order)
        return 0

    if rng.random() < 0.7:
        b = place("bed", _bed(rng), wall=True)
        if b:
            bb = items[b - 1].mesh.v
            for _ in range(int(rng.integers(1, 3))):
                c = bb.mean(0)
                items.append(_Item("pillow", _pillow(rng).moved(rng.uniform(0, math.pi), [c[0], c[1], 0.45]), parent=b))
    if rng.random() < 0.7:
        place("sofa", _sofa(rng), wall=True)
    t = place("table", _table(rng))
    if t:
        tl, th = items[t - 1].mesh.v.min(0), items[t - 1].mesh.v.max(0)
        for _ in range(int(rng.integers(2, 5))):
            ang = rng.uniform(0, 2 * math.pi)
            r = max(th[0] - tl[0], th[1] - tl[1]) / 2 + 0.35
            c = (tl + th) / 2 + r * np.array([math.cos(ang), math.sin(ang), 0])
            m = _chair(rng).moved(ang + math.pi / 2, [c[0], c[1], 0])
            lo, hi = m.v.min(0), m.v.max(0)
            if lo[0] > 0.01 and lo[1] > 0.01 and hi[0] < lx - 0.01 and hi[1] < ly - 0.01 and _free(lo, hi, boxes, 0.0):
                boxes.append((lo, hi))
                items.append(_Item("chair", m))
        if rng.random() < 0.5:
            c = (tl + th) / 2
            items.append(_Item("plant", _plant(rng).moved(0, [c[0] + 0.1, c[1], th[2]]), parent=t))
    for _ in range(int(rng.integers(1, 3))):
        place("cabinet", _wardrobe(rng), wall=True)
    s = place("shelf", _shelf(rng), wall=True)
    if s:
        v = items[s - 1].mesh
        lo, hi = v.v.min(0), v.v.max(0)
        # books on the lowest board, in the shelf's own frame: rebuild with its yaw
        yaw_vec = v.v[1] - v.v[0]
        yaw = math.atan2(yaw_vec[1], yaw_vec[0])
        c = (lo + hi) / 2
        w = float(np.linalg.norm(v.v[1] - v.v[0])) if np.linalg.norm(v.v[1] - v.v[0]) > 0.1 else 0.8
        for bk in _books(rng, min(w, 0.9), 0.3, 0.03):
            items.append(_Item("book", bk.moved(yaw, [c[0], c[1], lo[2]]), parent=s))
    for _ in range(int(rng.integers(1, 3))):
        place("plant", _plant(rng))
    place("lamp", _lamp(rng))
    place("door", box([-0.45, -0.04, 0], [0.45, 0.0, 2.05]), wall=True)
    for _ in range(int(rng.integers(1, 3))):
        place("window", box([-0.6, -0.03, 0], [0.6, 0.0, 1.1]), wall=True, z=rng.uniform(0.8, 1.0))
    for _ in range(int(rng.integers(1, 3))):
        w = rng.uniform(0.4, 0.9)
        place("picture", box([-w / 2, -0.025, 0], [w / 2, 0.0, w * rng.uniform(0.6, 1.2)]), wall=True,
              z=rng.uniform(1.2, 1.6))
    place("monitor", _screen(rng), wall=True, z=rng.uniform(0.9, 1.2))
    rug_m = _rug(rng)
    place("rug", rug_m)
    for it in items:
        it.colour = _colour(rng, it.cls)
    return items, np.array([lx, ly, hz])


def _frames(normals: np.ndarray, rng) -> np.ndarray:
    """[M, 3, 3] right-handed frames whose third column is the normal (random in-plane turn)."""
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    ref = np.where(np.abs(n[:, 2:3]) < 0.9, np.array([[0, 0, 1.0]]), np.array([[1.0, 0, 0]]))
    u = np.cross(ref, n)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(n, u)
    a = rng.uniform(0, 2 * math.pi, len(n))[:, None]
    u, v = np.cos(a) * u + np.sin(a) * v, -np.sin(a) * u + np.cos(a) * v
    return np.stack([u, v, n], axis=2)


def generate_mesh_room(config: MeshRoomConfig | None = None):
    """Build one mesh-sampled room -> :class:`~chorus_ros.core.synthetic.room.SyntheticScene`
    (``objects`` is empty; instance ids follow placement order, 1 = floor, 2-5 walls, 6 ceiling)."""
    from chorus_ros.core.synthetic.room import InstanceInfo, SyntheticScene
    cfg = config or MeshRoomConfig()
    cfg.validate()
    rng = np.random.default_rng([int(cfg.seed), 31337])
    items, size = _layout(cfg, rng)
    areas = [it.mesh.areas() for it in items]
    total = float(sum(a.sum() for a in areas))
    n = int(cfg.target_gaussians)
    spacing = math.sqrt(total / n)
    # area-uniform: every triangle of the room competes for the n samples
    all_a = np.concatenate(areas)
    owner = np.concatenate([np.full(len(a), i) for i, a in enumerate(areas)])
    tri = rng.choice(len(all_a), size=n, p=all_a / all_a.sum())
    mesh_of = [it.mesh for it in items]
    tri_local = tri - np.concatenate([[0], np.cumsum([len(a) for a in areas])])[owner[tri]]
    r1, r2 = rng.random(n), rng.random(n)
    s1 = np.sqrt(r1)
    bary = np.stack([1 - s1, s1 * (1 - r2), s1 * r2], 1)
    pts, nrm = np.empty((n, 3)), np.empty((n, 3))
    for i, m in enumerate(mesh_of):
        sel = owner[tri] == i
        if not sel.any():
            continue
        f = m.f[tri_local[sel]]
        a, b, c = m.v[f[:, 0]], m.v[f[:, 1]], m.v[f[:, 2]]
        w = bary[sel]
        pts[sel] = w[:, :1] * a + w[:, 1:2] * b + w[:, 2:3] * c
        nrm[sel] = np.cross(b - a, c - a)
    frames = _frames(nrm, rng)
    sd = cfg.size_factor * spacing
    scales = np.stack([np.full(n, sd), np.full(n, sd), np.full(n, max(0.001, 0.08 * sd))], 1)
    cols = np.stack([items[o].colour for o in owner[tri]]) * rng.uniform(0.9, 1.1, (n, 1)) + rng.normal(0, 0.02, (n, 3))
    cols = np.clip(cols, 0.01, 0.99)
    inst = owner[tri] + 1
    lab = np.array([class_id(items[o].cls) for o in owner[tri]], dtype=np.int64)
    op = rng.uniform(0.6, 1.0, n)
    rgb = torch.from_numpy(cols).float()
    g = GaussianArrays(torch.from_numpy(pts).float(), rgb_to_sh_dc(rgb)[:, None, :],
                       torch.logit(torch.from_numpy(op).float()), torch.from_numpy(np.log(scales)).float(),
                       torch.from_numpy(rotmats_to_quats_wxyz(frames)).float(),
                       torch.arange(n, dtype=torch.int64),
                       {"label": torch.from_numpy(lab), "instance": torch.from_numpy(inst.astype(np.int64))})
    table = {}
    counts: dict[str, int] = {}
    for i, it in enumerate(items):
        k = counts.get(it.cls, 0)
        counts[it.cls] = k + 1
        lo, hi = it.mesh.v.min(0), it.mesh.v.max(0)
        table[i + 1] = InstanceInfo(i + 1, class_id(it.cls), it.cls, f"{it.cls}_{k}", tuple(map(float, lo)),
                                    tuple(map(float, hi)), it.parent, it.stuff)
    return SyntheticScene(g, synthetic_label_set(), table, np.zeros(3), size, int(cfg.seed), cfg, [], spacing)
