"""Surface primitives and their Gaussian samplers.

Objects are composed of primitives (:class:`Box`, :class:`Cylinder` -- also cones/frustums --
and :class:`Ellipsoid`). Each primitive is a list of parametric surface *patches*; a patch
places samples quasi-uniformly (a jittered grid, concentric rings, or a Fibonacci lattice) at
a target spacing ``h`` metres, so a surface of area ``A`` gets about ``A / h**2`` samples.

Every sample carries a right-handed orthonormal tangent frame ``[t_u, t_v, n]`` (columns;
``n`` is the surface normal) and the extent of its grid cell along ``t_u`` and ``t_v``.
:func:`surfels_from_samples` turns them into flat 3D Gaussians: standard deviations
``tangent_factor * cell`` in the surface plane and a thin one along the normal, rotated by the
frame. In 3DGS the covariance is ``R diag(s)^2 R^T`` with ``R`` from the **wxyz** quaternion,
so scale ``i`` acts along column ``i`` of the frame.

All geometry is float64 numpy in the world frame (z up, metres).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from chorus_ros.core.errors import InvalidInputError

__all__ = [
    "SurfaceSamples", "Patch", "RectPatch", "ConePatch", "DiskPatch", "EllipsoidPatch",
    "Primitive", "Rect", "Box", "Cylinder", "Ellipsoid", "rot_z", "rotmats_to_quats_wxyz",
    "surfels_from_samples", "SurfelParams",
]

_JITTER = 0.35
"""Grid jitter as a fraction of the cell: breaks visible regularity but keeps coverage even."""


def rot_z(yaw: float) -> np.ndarray:
    """3x3 rotation about +z by ``yaw`` radians."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotmats_to_quats_wxyz(r: np.ndarray) -> np.ndarray:
    """Vectorised rotation matrices ``[M, 3, 3]`` -> unit wxyz quaternions ``[M, 4]`` with w >= 0.

    Same result as :func:`chorus_ros.core.geometry.rotmat_to_quat_wxyz` applied per matrix
    (Shepperd's method, branch on the largest of trace and diagonal).
    """
    r = np.asarray(r, dtype=np.float64)
    m = r.shape[0]
    q = np.empty((m, 4))
    tr = r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    d = np.stack([tr, r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]], 1)
    case = np.argmax(d, axis=1)
    # case 0: trace largest
    i = case == 0
    s = np.sqrt(np.maximum(tr[i] + 1.0, 1e-300)) * 2
    q[i] = np.stack([0.25 * s, (r[i, 2, 1] - r[i, 1, 2]) / s, (r[i, 0, 2] - r[i, 2, 0]) / s,
                     (r[i, 1, 0] - r[i, 0, 1]) / s], 1)
    i = case == 1
    s = np.sqrt(np.maximum(1.0 + r[i, 0, 0] - r[i, 1, 1] - r[i, 2, 2], 1e-300)) * 2
    q[i] = np.stack([(r[i, 2, 1] - r[i, 1, 2]) / s, 0.25 * s, (r[i, 0, 1] + r[i, 1, 0]) / s,
                     (r[i, 0, 2] + r[i, 2, 0]) / s], 1)
    i = case == 2
    s = np.sqrt(np.maximum(1.0 + r[i, 1, 1] - r[i, 0, 0] - r[i, 2, 2], 1e-300)) * 2
    q[i] = np.stack([(r[i, 0, 2] - r[i, 2, 0]) / s, (r[i, 0, 1] + r[i, 1, 0]) / s, 0.25 * s,
                     (r[i, 1, 2] + r[i, 2, 1]) / s], 1)
    i = case == 3
    s = np.sqrt(np.maximum(1.0 + r[i, 2, 2] - r[i, 0, 0] - r[i, 1, 1], 1e-300)) * 2
    q[i] = np.stack([(r[i, 1, 0] - r[i, 0, 1]) / s, (r[i, 0, 2] + r[i, 2, 0]) / s,
                     (r[i, 1, 2] + r[i, 2, 1]) / s, 0.25 * s], 1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    return q


@dataclass
class SurfaceSamples:
    """Samples on a surface."""

    points: np.ndarray
    """[M, 3] world, metres."""
    frames: np.ndarray
    """[M, 3, 3] columns t_u, t_v, n (right-handed, orthonormal)."""
    cell: np.ndarray
    """[M, 2] grid-cell extent along t_u and t_v, metres."""

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @staticmethod
    def concat(parts: list["SurfaceSamples"]) -> "SurfaceSamples":
        if not parts:
            return SurfaceSamples(np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 2)))
        return SurfaceSamples(np.concatenate([p.points for p in parts]),
                              np.concatenate([p.frames for p in parts]),
                              np.concatenate([p.cell for p in parts]))


def _jittered(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` copies of a jittered 1D grid of ``n`` cells in [0, 1] -> ``[count, n]``."""
    base = (np.arange(n) + 0.5)[None, :]
    return (base + _JITTER * (rng.random((count, n)) - 0.5)) / n


# --------------------------------------------------------------------------- patches
class Patch(ABC):
    """A parametric surface piece that places samples at a target spacing."""

    @abstractmethod
    def area(self) -> float:
        """Surface area, m^2."""

    @abstractmethod
    def count(self, h: float) -> int:
        """Number of samples :meth:`sample` places at spacing ``h`` (may be approximate)."""

    @abstractmethod
    def sample(self, h: float, rng: np.random.Generator) -> SurfaceSamples:
        """Quasi-uniform samples at spacing ``h`` metres."""


@dataclass
class RectPatch(Patch):
    """Parallelogram ``origin + u * eu + v * ev`` for u, v in [0, 1]; ``eu`` must be orthogonal to ``ev``.

    The normal is ``eu x ev``. ``holes`` are openings ``(u0, u1, v0, v1)`` in fractions of the
    edges; samples inside them are dropped (door and window openings in walls).
    """

    origin: np.ndarray
    eu: np.ndarray
    ev: np.ndarray
    holes: tuple[tuple[float, float, float, float], ...] = ()

    def __post_init__(self) -> None:
        self.origin, self.eu, self.ev = (np.asarray(a, dtype=np.float64) for a in
                                         (self.origin, self.eu, self.ev))
        lu, lv = np.linalg.norm(self.eu), np.linalg.norm(self.ev)
        if lu <= 0 or lv <= 0 or abs(self.eu @ self.ev) > 1e-9 * lu * lv:
            raise InvalidInputError(f"RectPatch edges must be non-zero and orthogonal: {self.eu}, {self.ev}")

    def _grid(self, h: float) -> tuple[int, int]:
        return (max(1, round(np.linalg.norm(self.eu) / h)), max(1, round(np.linalg.norm(self.ev) / h)))

    def area(self) -> float:
        hole = sum((u1 - u0) * (v1 - v0) for u0, u1, v0, v1 in self.holes)
        return float(np.linalg.norm(self.eu) * np.linalg.norm(self.ev) * (1 - hole))

    def count(self, h: float) -> int:
        nu, nv = self._grid(h)
        hole = sum((u1 - u0) * (v1 - v0) for u0, u1, v0, v1 in self.holes)
        return max(0, round(nu * nv * (1 - hole)))

    def sample(self, h: float, rng: np.random.Generator) -> SurfaceSamples:
        nu, nv = self._grid(h)
        u = _jittered(nu, nv, rng).T  # [nu, nv]
        v = _jittered(nv, nu, rng)  # [nu, nv]
        u, v = u.reshape(-1), v.reshape(-1)
        keep = np.ones(u.shape, bool)
        for u0, u1, v0, v1 in self.holes:
            keep &= ~((u > u0) & (u < u1) & (v > v0) & (v < v1))
        u, v = u[keep], v[keep]
        pts = self.origin + u[:, None] * self.eu + v[:, None] * self.ev
        lu, lv = np.linalg.norm(self.eu), np.linalg.norm(self.ev)
        tu, tv = self.eu / lu, self.ev / lv
        frame = np.stack([tu, tv, np.cross(tu, tv)], axis=1)
        m = len(u)
        return SurfaceSamples(pts, np.broadcast_to(frame, (m, 3, 3)).copy(),
                              np.tile([lu / nu, lv / nv], (m, 1)))

    def distance(self, p: np.ndarray) -> np.ndarray:
        """Unsigned distance of points ``[M, 3]`` to the (hole-free) parallelogram."""
        lu, lv = np.linalg.norm(self.eu), np.linalg.norm(self.ev)
        d = np.asarray(p) - self.origin
        u = np.clip(d @ self.eu / lu**2, 0, 1)
        v = np.clip(d @ self.ev / lv**2, 0, 1)
        q = self.origin + u[:, None] * self.eu + v[:, None] * self.ev
        return np.linalg.norm(np.asarray(p) - q, axis=1)


@dataclass
class ConePatch(Patch):
    """Side of a cylinder/cone frustum: base centre ``base``, axis ``rot[:, 2]``, radius ``r0``
    at the base and ``r1`` at ``height`` along the axis. Normals point outward."""

    base: np.ndarray
    rot: np.ndarray
    r0: float
    r1: float
    height: float

    def _slant(self) -> float:
        return math.hypot(self.height, self.r1 - self.r0)

    def _grid(self, h: float) -> tuple[int, int]:
        return (max(3, round(2 * math.pi * max(self.r0, self.r1) / h)), max(1, round(self._slant() / h)))

    def area(self) -> float:
        return math.pi * (self.r0 + self.r1) * self._slant()

    def count(self, h: float) -> int:
        nu, nv = self._grid(h)
        return nu * nv

    def sample(self, h: float, rng: np.random.Generator) -> SurfaceSamples:
        nu, nv = self._grid(h)
        th = (_jittered(nu, nv, rng).T.reshape(-1) + rng.random()) * 2 * math.pi
        v = _jittered(nv, nu, rng).reshape(-1)
        rad = self.r0 + (self.r1 - self.r0) * v
        c, s = np.cos(th), np.sin(th)
        local = np.stack([rad * c, rad * s, v * self.height], 1)
        t_th = np.stack([-s, c, np.zeros_like(s)], 1)
        t_v = np.stack([(self.r1 - self.r0) * c, (self.r1 - self.r0) * s,
                        np.full_like(s, self.height)], 1) / self._slant()
        frames_local = np.stack([t_th, t_v, np.cross(t_th, t_v)], axis=2)
        pts = local @ self.rot.T + self.base
        frames = self.rot[None] @ frames_local
        cell = np.stack([2 * math.pi * np.maximum(rad, 1e-4) / nu, np.full_like(rad, self._slant() / nv)], 1)
        return SurfaceSamples(pts, frames, cell)


@dataclass
class DiskPatch(Patch):
    """Flat disk of ``radius`` at ``center`` with normal ``rot[:, 2]`` (concentric rings of
    roughly square cells)."""

    center: np.ndarray
    rot: np.ndarray
    radius: float

    def _rings(self, h: float) -> list[int]:
        nr = max(1, round(self.radius / h))
        return [max(3, round(2 * math.pi * (k + 0.5) * self.radius / nr / h)) for k in range(nr)]

    def area(self) -> float:
        return math.pi * self.radius**2

    def count(self, h: float) -> int:
        return sum(self._rings(h))

    def sample(self, h: float, rng: np.random.Generator) -> SurfaceSamples:
        rings = self._rings(h)
        nr = len(rings)
        dr = self.radius / nr
        rho, th, cth = [], [], []
        for k, nt in enumerate(rings):
            a0, a1 = (k * dr) ** 2, ((k + 1) * dr) ** 2
            f = 0.5 + _JITTER * (rng.random(nt) - 0.5)
            rho.append(np.sqrt(a0 + f * (a1 - a0)))  # area-uniform inside the ring
            th.append((_jittered(nt, 1, rng)[0] + rng.random()) * 2 * math.pi)
            cth.append(np.full(nt, nt))
        rho, th, cth = np.concatenate(rho), np.concatenate(th), np.concatenate(cth)
        c, s = np.cos(th), np.sin(th)
        local = np.stack([rho * c, rho * s, np.zeros_like(rho)], 1)
        t_r = np.stack([c, s, np.zeros_like(c)], 1)
        t_th = np.stack([-s, c, np.zeros_like(c)], 1)
        frames_local = np.stack([t_r, t_th, np.cross(t_r, t_th)], axis=2)
        cell = np.stack([np.full_like(rho, dr), np.maximum(2 * math.pi * rho / cth, 0.5 * dr)], 1)
        return SurfaceSamples(local @ self.rot.T + self.center, self.rot[None] @ frames_local, cell)


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    p = 1.6075  # Knud Thomsen's approximation, relative error < 1.1 %
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


@dataclass
class EllipsoidPatch(Patch):
    """Ellipsoid surface: centre, rotation ``rot`` and semi-axes ``radii`` along its columns
    (a Fibonacci lattice: even, isotropic spacing for any count)."""

    center: np.ndarray
    rot: np.ndarray
    radii: np.ndarray

    def area(self) -> float:
        return _ellipsoid_area(*[float(r) for r in self.radii])

    def count(self, h: float) -> int:
        return max(8, round(self.area() / h**2))

    def sample(self, h: float, rng: np.random.Generator) -> SurfaceSamples:
        n = self.count(h)
        i = np.arange(n) + 0.5
        z = 1 - 2 * i / n
        z = np.clip(z + (rng.random(n) - 0.5) * _JITTER * 2 / n, -1 + 1e-9, 1 - 1e-9)
        phi = i * math.pi * (3 - math.sqrt(5)) + rng.random() * 2 * math.pi
        rxy = np.sqrt(1 - z * z)
        sph = np.stack([rxy * np.cos(phi), rxy * np.sin(phi), z], 1)
        radii = np.asarray(self.radii, dtype=np.float64)
        local = sph * radii
        nrm = sph / radii
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        t1 = np.stack([-np.sin(phi), np.cos(phi), np.zeros(n)], 1) * radii
        t1 -= (t1 * nrm).sum(1, keepdims=True) * nrm
        t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
        t2 = np.cross(nrm, t1)
        frames_local = np.stack([t1, t2, nrm], axis=2)
        cell = np.full((n, 2), math.sqrt(self.area() / n))
        return SurfaceSamples(local @ self.rot.T + self.center, self.rot[None] @ frames_local, cell)


# ------------------------------------------------------------------------ primitives
class Primitive(ABC):
    """A solid whose visible surface is a list of patches."""

    @abstractmethod
    def patches(self) -> list[Patch]:
        """The surface pieces that get Gaussians."""

    @abstractmethod
    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounding box ``(min [3], max [3])``."""

    @abstractmethod
    def transformed(self, rot: np.ndarray, trans: np.ndarray) -> "Primitive":
        """Copy moved by ``x -> rot @ x + trans``."""

    @abstractmethod
    def surface_distance(self, p: np.ndarray) -> np.ndarray:
        """``[M]`` distance of points ``[M, 3]`` to the closed surface (exact, ellipsoid: first order)."""


@dataclass
class Rect(Primitive):
    """A single flat rectangle (floor, wall, ceiling), optionally with openings; see :class:`RectPatch`."""

    patch: RectPatch

    def patches(self) -> list[Patch]:
        return [self.patch]

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        corners = p.origin + np.array([[0, 0], [1, 0], [0, 1], [1, 1]]) @ np.stack([p.eu, p.ev])
        return corners.min(0), corners.max(0)

    def transformed(self, rot: np.ndarray, trans: np.ndarray) -> "Rect":
        p = self.patch
        return Rect(RectPatch(rot @ p.origin + trans, rot @ p.eu, rot @ p.ev, p.holes))

    def surface_distance(self, p: np.ndarray) -> np.ndarray:
        return self.patch.distance(p)


_BOX_FACES = {
    # face: (corner sign (x, y, z), eu axis, ev axis) with eu x ev = outward normal
    "+x": ((1, -1, -1), 1, 2), "-x": ((-1, -1, -1), 2, 1),
    "+y": ((-1, 1, -1), 2, 0), "-y": ((-1, -1, -1), 0, 2),
    "+z": ((-1, -1, 1), 0, 1), "-z": ((-1, -1, -1), 1, 0),
}


@dataclass
class Box(Primitive):
    """Oriented box: ``center``, half extents ``half`` along the columns of ``rot``.

    ``skip`` names faces (``'+x' '-x' '+y' '-y' '+z' '-z'`` in the box frame) that get no
    samples because they are hidden (against a wall, on the floor).
    """

    center: np.ndarray
    half: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    skip: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64)
        self.half = np.asarray(self.half, dtype=np.float64)
        self.rot = np.asarray(self.rot, dtype=np.float64)
        if np.any(self.half <= 0):
            raise InvalidInputError(f"Box half extents must be positive, got {self.half}")
        unknown = set(self.skip) - set(_BOX_FACES)
        if unknown:
            raise InvalidInputError(f"unknown box faces {sorted(unknown)}; known: {sorted(_BOX_FACES)}")

    def patches(self) -> list[Patch]:
        out = []
        for name, (sign, a, b) in _BOX_FACES.items():
            if name in self.skip:
                continue
            corner = self.center + self.rot @ (np.asarray(sign) * self.half)
            out.append(RectPatch(corner, self.rot[:, a] * 2 * self.half[a], self.rot[:, b] * 2 * self.half[b]))
        return out

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        ext = np.abs(self.rot) @ self.half
        return self.center - ext, self.center + ext

    def transformed(self, rot: np.ndarray, trans: np.ndarray) -> "Box":
        return Box(rot @ self.center + trans, self.half.copy(), rot @ self.rot, self.skip)

    def surface_distance(self, p: np.ndarray) -> np.ndarray:
        q = np.abs((np.asarray(p) - self.center) @ self.rot) - self.half
        outside = np.linalg.norm(np.maximum(q, 0), axis=1)
        inside = np.minimum(q.max(1), 0)
        return np.abs(outside + inside)


@dataclass
class Cylinder(Primitive):
    """Cylinder or cone frustum along ``rot[:, 2]`` from ``base`` up ``height`` metres, radius
    ``r0`` at the base and ``r1`` at the top (``r1 = r0`` for a cylinder). ``caps`` picks which
    ends are closed ('bottom', 'top'); an open frustum is a lamp shade."""

    base: np.ndarray
    r0: float
    height: float
    r1: float | None = None
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    caps: tuple[str, ...] = ("bottom", "top")

    def __post_init__(self) -> None:
        self.base = np.asarray(self.base, dtype=np.float64)
        self.rot = np.asarray(self.rot, dtype=np.float64)
        if self.r1 is None:
            self.r1 = self.r0
        if self.r0 <= 0 or self.r1 <= 0 or self.height <= 0:
            raise InvalidInputError(f"Cylinder radii and height must be positive, got r0={self.r0}, "
                                    f"r1={self.r1}, height={self.height}")
        unknown = set(self.caps) - {"bottom", "top"}
        if unknown:
            raise InvalidInputError(f"unknown cylinder caps {sorted(unknown)}; known: bottom, top")

    def patches(self) -> list[Patch]:
        out: list[Patch] = [ConePatch(self.base, self.rot, self.r0, self.r1, self.height)]
        if "bottom" in self.caps:  # normal down: flip the frame about x
            out.append(DiskPatch(self.base, self.rot @ np.diag([1.0, -1.0, -1.0]), self.r0))
        if "top" in self.caps:
            out.append(DiskPatch(self.base + self.rot[:, 2] * self.height, self.rot, self.r1))
        return out

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        # circle of radius r in the plane orthogonal to the axis extends sqrt(1 - a_i^2) r along i
        a = self.rot[:, 2]
        ext = np.sqrt(np.clip(1 - a * a, 0, None))
        top = self.base + a * self.height
        lo = np.minimum(self.base - ext * self.r0, top - ext * self.r1)
        hi = np.maximum(self.base + ext * self.r0, top + ext * self.r1)
        return lo, hi

    def transformed(self, rot: np.ndarray, trans: np.ndarray) -> "Cylinder":
        return Cylinder(rot @ self.base + trans, self.r0, self.height, self.r1, rot @ self.rot, self.caps)

    def surface_distance(self, p: np.ndarray) -> np.ndarray:
        loc = (np.asarray(p) - self.base) @ self.rot
        rho, z = np.hypot(loc[:, 0], loc[:, 1]), loc[:, 2]
        # side: distance in the (rho, z) half-plane to the segment (r0, 0)-(r1, height)
        a = np.array([self.r0, 0.0])
        d = np.array([self.r1 - self.r0, self.height])
        pts = np.stack([rho, z], 1)
        t = np.clip((pts - a) @ d / (d @ d), 0, 1)
        dist = np.linalg.norm(pts - (a + t[:, None] * d), axis=1)
        if "bottom" in self.caps:
            dist = np.minimum(dist, np.hypot(np.maximum(rho - self.r0, 0), z))
        if "top" in self.caps:
            dist = np.minimum(dist, np.hypot(np.maximum(rho - self.r1, 0), z - self.height))
        return dist


@dataclass
class Ellipsoid(Primitive):
    """Ellipsoid (sphere when the radii are equal) with semi-axes ``radii`` along ``rot``'s columns."""

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64)
        self.radii = np.broadcast_to(np.asarray(self.radii, dtype=np.float64), (3,)).copy()
        self.rot = np.asarray(self.rot, dtype=np.float64)
        if np.any(self.radii <= 0):
            raise InvalidInputError(f"Ellipsoid radii must be positive, got {self.radii}")

    def patches(self) -> list[Patch]:
        return [EllipsoidPatch(self.center, self.rot, self.radii)]

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        ext = np.sqrt(((self.rot * self.radii[None, :]) ** 2).sum(1))
        return self.center - ext, self.center + ext

    def transformed(self, rot: np.ndarray, trans: np.ndarray) -> "Ellipsoid":
        return Ellipsoid(rot @ self.center + trans, self.radii.copy(), rot @ self.rot)

    def surface_distance(self, p: np.ndarray) -> np.ndarray:
        loc = ((np.asarray(p) - self.center) @ self.rot) / self.radii
        return np.abs(np.linalg.norm(loc, axis=1) - 1) * self.radii.min()


# --------------------------------------------------------------------------- surfels
@dataclass
class SurfelParams:
    """Flat Gaussians for surface samples (world frame)."""

    means: np.ndarray
    """[M, 3] metres."""
    scales: np.ndarray
    """[M, 3] standard deviations along the frame columns (t_u, t_v, n), metres."""
    quats: np.ndarray
    """[M, 4] wxyz unit quaternions of the frames."""


def surfels_from_samples(samples: SurfaceSamples, rng: np.random.Generator, *,
                         tangent_factor: float = 0.55, thickness_factor: float = 0.08,
                         thickness_range: tuple[float, float] = (0.0005, 0.003),
                         scale_jitter: float = 0.15) -> SurfelParams:
    """Flat Gaussians centred on the samples and oriented along the surface.

    In-plane std = ``tangent_factor * cell`` times ``exp(N(0, scale_jitter))``; normal std =
    ``thickness_factor`` times the smaller in-plane std, clipped to ``thickness_range``.
    """
    m = len(samples)
    jit = np.exp(rng.normal(0.0, scale_jitter, (m, 2)))
    tang = tangent_factor * samples.cell * jit
    thick = np.clip(thickness_factor * tang.min(1), *thickness_range)
    scales = np.concatenate([tang, thick[:, None]], 1)
    quats = rotmats_to_quats_wxyz(samples.frames) if m else np.zeros((0, 4))
    return SurfelParams(samples.points.copy(), scales, quats)
