"""Plain coloured point clouds (x y z + colour, optionally normals) as Gaussians.

A map that arrives as a coloured point cloud (a SLAM system's cloud map, a mesh's vertices, a
LiDAR + camera colouring) has no 3DGS parameters. The point-cloud encoder variant
(``checkpoints/pointcloud``: centres, colours and normals it estimates itself) needs none, and the
renderer, the map and every other component work on :class:`GaussianArrays`, so a plain cloud is
turned into Gaussians with these documented defaults (:class:`PointCloudInputConfig`):

==========  ===================================================================================
field       value
==========  ===================================================================================
means       the points (float32, metres, the cloud's frame)
sh          degree 0; ``sh[:, 0] = rgb_to_sh_dc(rgb)`` (:func:`chorus_ros.core.gaussians.rgb_to_sh_dc`,
            the package's one colour <-> SH convention), rgb in [0, 1]
log_scales  isotropic: ``log(clamp(spacing_factor * d_k, min_scale, max_scale))`` with ``d_k`` the
            mean distance of the point to its ``knn_neighbours`` nearest other points
            (:func:`knn_mean_distance`, exact), or ``log(fixed_scale)`` (``scale_mode='fixed'``)
quats       identity ``[1, 0, 0, 0]`` (wxyz); with ``flat_normals`` and ``nx ny nz`` in the cloud,
            a flat disc whose thin axis is the normal
opacities   ``logit(opacity)`` (default opacity 0.9, the generator's range)
ids         the cloud's ``id`` field when it has one, else ``arange(N)``
extras      every other scalar field (``label``, ``instance``, ``alpha``, ...)
==========  ===================================================================================

Colour fields (first set found wins): ``red green blue``, ``r g b`` or ``diffuse_red
diffuse_green diffuse_blue``. Integer fields are scaled by their type's maximum (uchar / 255,
ushort / 65535); float fields must already be in [0, 1] (a float colour above 1, e.g. 0-255 values
in a float field, is refused with the field named rather than guessed). PointCloud2 packed
``rgb``/``rgba`` fields are unpacked by the ROS conversion (:mod:`chorus_ros.ros.pointcloud`) and
reach :func:`points_to_gaussians` as the same [0, 1] colours.

Layout detection (:func:`detect_layout`): every required 3DGS field present -> ``'3dgs'`` (the
reference layout, read exactly as before); else ``x y z`` and a colour set -> ``'pointcloud'``;
anything else is refused with the missing fields of both layouts named. A file with some but not
all 3DGS parameter fields (``f_dc_*``, ``scale_*``, ``rot_*``, ``opacity``) is refused as a broken
3DGS map rather than read as a point cloud.

The 'gaussian' encoder variant reads Gaussian scales, opacities and orientations: on a plain cloud
it sees only these defaults, so loading one with such a checkpoint is allowed but warned about
(:func:`variant_warning`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.knn import knn_distances, pairwise_distances

__all__ = [
    "LAYOUT_3DGS", "LAYOUT_POINTCLOUD", "LAYOUTS", "COLOUR_FIELD_SETS", "NORMAL_FIELDS",
    "PointCloudInputConfig", "knn_mean_distance", "points_to_gaussians", "colour_fields",
    "colours_to_unit", "detect_layout", "variant_warning", "POINTCLOUD_CHECKPOINT",
]

LAYOUT_3DGS = "3dgs"
"""The reference 3DGS layout (every Gaussian parameter stored)."""
LAYOUT_POINTCLOUD = "pointcloud"
"""A plain coloured point cloud (parameters filled in by :func:`points_to_gaussians`)."""
LAYOUTS = (LAYOUT_3DGS, LAYOUT_POINTCLOUD)

COLOUR_FIELD_SETS = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))
"""Accepted colour field names, in order of preference."""
NORMAL_FIELDS = ("nx", "ny", "nz")
POINTCLOUD_CHECKPOINT = "checkpoints/pointcloud"
"""The shipped checkpoint of the point-cloud encoder variant (recommended for plain clouds)."""

_GS_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3")
_GS_ONLY = frozenset(_GS_REQUIRED[3:])
_SCALE_MODES = ("knn", "fixed")


@dataclass
class PointCloudInputConfig:
    """How a plain coloured point cloud becomes Gaussians (module docstring)."""

    scale_mode: str = "knn"
    """'knn': isotropic scale = ``spacing_factor`` x the mean distance to the ``knn_neighbours`` nearest other points (local spacing, as 3DGS initialises from SfM points); 'fixed': every Gaussian gets ``fixed_scale``."""
    knn_neighbours: int = 3
    """Neighbours averaged for the local spacing (scale_mode 'knn')."""
    spacing_factor: float = 1.0
    """Gaussian standard deviation as a multiple of the local spacing (scale_mode 'knn')."""
    fixed_scale: float = 0.01
    """Standard deviation of every Gaussian with scale_mode 'fixed' (and of a cloud of one point), metres."""
    min_scale: float = 1e-4
    """Smallest scale from the spacing, metres (duplicated points have spacing 0)."""
    max_scale: float = 0.5
    """Largest scale from the spacing, metres (isolated points)."""
    opacity: float = 0.9
    """Opacity of every Gaussian, in (0, 1); stored as its logit like every opacity in the package."""
    flat_normals: bool = False
    """When the cloud has nx ny nz: make each Gaussian a flat disc whose thin axis is the normal (scale ``flat_ratio`` x the in-plane scale). Off: normals are ignored (isotropic Gaussians, identity rotations); the point-cloud encoder estimates its own normals either way."""
    flat_ratio: float = 0.1
    """Thin-axis scale / in-plane scale of the discs made with ``flat_normals``."""

    def validate(self) -> None:
        """Raise InvalidInputError naming the first bad field."""
        if self.scale_mode not in _SCALE_MODES:
            raise InvalidInputError(f"PointCloudInputConfig.scale_mode {self.scale_mode!r} unknown; known: {_SCALE_MODES}")
        if not (isinstance(self.knn_neighbours, int) and self.knn_neighbours >= 1):
            raise InvalidInputError(f"PointCloudInputConfig.knn_neighbours must be an integer >= 1, got {self.knn_neighbours!r}")
        for name in ("spacing_factor", "fixed_scale", "min_scale", "max_scale", "flat_ratio"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InvalidInputError(f"PointCloudInputConfig.{name} must be a finite number > 0, got {v!r}")
        if self.min_scale > self.max_scale:
            raise InvalidInputError(f"PointCloudInputConfig.min_scale {self.min_scale} > max_scale {self.max_scale}")
        if not (0.0 < float(self.opacity) < 1.0):
            raise InvalidInputError(f"PointCloudInputConfig.opacity must be in (0, 1), got {self.opacity!r}")

    def describe(self) -> str:
        """One line naming the defaults used (for logs)."""
        s = (f"isotropic kNN scales ({self.spacing_factor:g} x mean distance to {self.knn_neighbours} nearest, "
             f"clamped to [{self.min_scale:g}, {self.max_scale:g}] m)" if self.scale_mode == "knn"
             else f"fixed scale {self.fixed_scale:g} m")
        return s + f", opacity {self.opacity:g}" + (", discs from normals" if self.flat_normals else "")


# ------------------------------------------------------------------------------ local spacing
def knn_mean_distance(points: torch.Tensor, k: int = 3, *, block_points: int = 4096) -> torch.Tensor:
    """Mean distance of every point to its ``k`` nearest *other* points (exact).

    Args:
        points: ``[N, 3]`` positions, metres, N >= 2 (any float dtype; computed in float64).
        k: neighbours averaged; ``min(k, N - 1)`` are used.
        block_points: one block of distances holds about ``block_points x 4096`` float64 values
            (queries of a cube x its candidates), which bounds the memory.

    Returns:
        ``[N]`` float32 mean distances (0 where a point has k duplicates).

    Method: a radius ``r`` = twice the 90th percentile of the k-th neighbour distance of a sample
    of points; points are binned in cubes of edge ``B >= 4 r``; a cube's points are compared with
    every point inside the cube grown by ``r`` (found in the 27 neighbouring cubes). A result whose
    k-th distance is <= ``r`` is exact (every point outside the grown cube is farther than ``r``);
    the others (isolated points) are recomputed by brute force against all points. Duplicated
    points count as neighbours at distance 0.
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise InvalidInputError(f"points must be [N, 3], got {tuple(points.shape)}")
    n = points.shape[0]
    if n < 2:
        raise InvalidInputError(f"the local spacing needs at least 2 points, got {n}")
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    p = points.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(p).all()):
        raise InvalidInputError("points hold non-finite coordinates; drop them before the spacing")
    ke = min(int(k), n - 1)
    kk = ke + 1                                   # the point itself is its own nearest (distance 0)
    sample = p[torch.linspace(0, n - 1, min(n, 256)).round().long()]
    r = 2.0 * float(torch.quantile(knn_distances(sample, p, kk)[:, ke], 0.9))
    lo = p.min(0).values
    ext = float((p.max(0).values - lo).max())
    if not r > 0:
        r = max(ext * 1e-6, 1e-12)
    bsize = max(4.0 * r, ext / 2.0 ** 20)          # <= 2^20 cubes per axis: integer keys never overflow
    c = torch.floor((p - lo) / bsize).long() + 1   # >= 1: neighbours -1 stay >= 0
    dims = c.max(0).values + 2
    key = (c[:, 0] * dims[1] + c[:, 1]) * dims[2] + c[:, 2]
    order = torch.argsort(key, stable=True)
    skey = key[order]
    ukeys, counts = torch.unique_consecutive(skey, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    offs = torch.tensor([(dx * dims[1] + dy) * dims[2] + dz for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                         for dz in (-1, 0, 1)], dtype=torch.long)
    ps = p[order]
    out = torch.empty(n, dtype=torch.float64)
    fallback: list[torch.Tensor] = []
    for u in range(len(ukeys)):
        s0, m = int(starts[u]), int(counts[u])
        nb = ukeys[u] + offs
        pos = torch.searchsorted(ukeys, nb).clamp_max(len(ukeys) - 1)
        hit = pos[ukeys[pos] == nb]
        cand = torch.cat([torch.arange(int(starts[h]), int(starts[h] + counts[h])) for h in hit.tolist()])
        q = ps[s0:s0 + m]
        cell_lo = (c[order[s0]] - 1).double() * bsize + lo
        cp = ps[cand]
        grow = r + 1e-6 * bsize          # a little more than r: a query on a cube face stays covered
        inside = ((cp >= cell_lo - grow) & (cp <= cell_lo + bsize + grow)).all(1)
        cp = cp[inside]
        if cp.shape[0] < kk:
            fallback.append(order[s0:s0 + m])
            continue
        step = max(1, block_points * 4096 // max(cp.shape[0], 1))
        for a in range(0, m, step):
            d = pairwise_distances(q[a:a + step], cp).topk(kk, dim=1, largest=False, sorted=True).values
            out[order[s0 + a:s0 + a + d.shape[0]]] = d[:, 1:].mean(1)
            far = d[:, ke] > r
            if bool(far.any()):
                fallback.append(order[s0 + a:s0 + a + d.shape[0]][far])
    if fallback:
        idx = torch.cat(fallback)
        for a in range(0, len(idx), 1024):
            out[idx[a:a + 1024]] = knn_distances(p[idx[a:a + 1024]], p, kk)[:, 1:].mean(1)
    return out.float()


# ------------------------------------------------------------------------------ conversion
def _disc_quats(normals: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` wxyz quaternions rotating +z onto the unit ``normals`` ``[N, 3]`` (the shortest
    arc; a normal along -z gets a half turn about x)."""
    nz = normals[:, 2]
    q = torch.stack([1.0 + nz, -normals[:, 1], normals[:, 0], torch.zeros_like(nz)], 1)
    flip = q.norm(dim=1) < 1e-6
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=q.dtype)
    return q / q.norm(dim=1, keepdim=True)


def points_to_gaussians(means: torch.Tensor, rgb: torch.Tensor, config: PointCloudInputConfig | None = None, *,
                        normals: torch.Tensor | None = None, ids: torch.Tensor | None = None,
                        extras: dict[str, torch.Tensor] | None = None) -> GaussianArrays:
    """Gaussians for a plain coloured point cloud (module docstring table).

    Args:
        means: ``[N, 3]`` points, metres, map frame.
        rgb: ``[N, 3]`` colours in [0, 1] (values outside are refused).
        config: the defaults (:class:`PointCloudInputConfig`).
        normals: optional ``[N, 3]`` normals (used only with ``config.flat_normals``; zero or
            non-finite normals leave that point isotropic).
        ids: optional ``[N]`` int64 Gaussian ids (default ``arange(N)``).
        extras: optional per-point attributes, kept as :attr:`GaussianArrays.extras`.

    Returns:
        :class:`GaussianArrays` with float32 parameters, SH degree 0, on the CPU.

    Raises:
        InvalidInputError: bad shapes, colours outside [0, 1], a bad config.
    """
    cfg = config or PointCloudInputConfig()
    cfg.validate()
    means = torch.as_tensor(means).detach().to("cpu", torch.float32)
    rgb = torch.as_tensor(rgb).detach().to("cpu", torch.float32)
    if means.ndim != 2 or means.shape[1] != 3:
        raise InvalidInputError(f"point cloud positions must be [N, 3], got {tuple(means.shape)}")
    n = means.shape[0]
    if tuple(rgb.shape) != (n, 3):
        raise InvalidInputError(f"point cloud colours must be [{n}, 3], got {tuple(rgb.shape)}")
    fin = torch.isfinite(rgb)
    bad = fin & ((rgb < 0.0) | (rgb > 1.0))
    if bool(bad.any()):
        j = int(bad.any(0).nonzero()[0])
        raise InvalidInputError(f"point cloud colour channel {'rgb'[j]} has {int(bad[:, j].sum())} values outside "
                                f"[0, 1] (e.g. {float(rgb[bad[:, j], j][0])!r}); float colours must be 0-1")
    finite_pts = torch.isfinite(means).all(1)
    if cfg.scale_mode == "fixed" or int(finite_pts.sum()) < 2:
        scale = torch.full((n,), float(cfg.fixed_scale))
    else:   # non-finite points get a placeholder: the reader's sanitiser drops those rows
        scale = torch.full((n,), float(cfg.fixed_scale))
        d = knn_mean_distance(means[finite_pts], cfg.knn_neighbours)
        scale[finite_pts] = (cfg.spacing_factor * d).clamp(cfg.min_scale, cfg.max_scale)
    log_scales = torch.log(scale)[:, None].repeat(1, 3)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    if normals is not None:
        normals = torch.as_tensor(normals).detach().to("cpu", torch.float32)
        if tuple(normals.shape) != (n, 3):
            raise InvalidInputError(f"point cloud normals must be [{n}, 3], got {tuple(normals.shape)}")
        if cfg.flat_normals:
            norm = normals.norm(dim=1)
            ok = torch.isfinite(norm) & (norm > 1e-6)
            quats[ok] = _disc_quats(normals[ok] / norm[ok, None])
            log_scales[ok, 2] += math.log(cfg.flat_ratio)
    p = float(cfg.opacity)
    opac = torch.full((n,), math.log(p / (1.0 - p)), dtype=torch.float32)
    sh = rgb_to_sh_dc(rgb)[:, None, :]
    if ids is None:
        ids = torch.arange(n, dtype=torch.int64)
    return GaussianArrays(means, sh.contiguous(), opac, log_scales.contiguous(), quats, ids, dict(extras or {}))


# ------------------------------------------------------------------------- field detection
def colour_fields(names) -> tuple[str, str, str] | None:
    """The colour field set present in ``names`` (first of :data:`COLOUR_FIELD_SETS`), or None."""
    have = set(names)
    for s in COLOUR_FIELD_SETS:
        if all(nm in have for nm in s):
            return s
    return None


def colours_to_unit(columns: list[np.ndarray], names: tuple[str, str, str], *, source: str = "cloud") -> np.ndarray:
    """``[N, 3]`` float32 colours in [0, 1] from three ``[N]`` columns: integers divided by their
    type's maximum (uchar 255, ushort 65535, ...); floats taken as they are and refused (naming the
    field) when a finite value lies outside [0, 1] -- a float field holding 0-255 is not guessed."""
    out = np.empty((len(columns[0]), 3), dtype=np.float32)
    for j, (col, nm) in enumerate(zip(columns, names)):
        col = np.asarray(col)
        if col.dtype.kind in "iu":
            info = np.iinfo(col.dtype)
            if col.dtype.kind == "i" and col.size and col.min() < 0:
                raise InvalidInputError(f"{source}: colour field {nm!r} ({col.dtype}) holds negative values")
            out[:, j] = col.astype(np.float64) / float(info.max)
        elif col.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                bad = np.isfinite(col) & ((col < 0) | (col > 1))
            if bad.any():
                raise InvalidInputError(f"{source}: float colour field {nm!r} holds {int(bad.sum())} values outside "
                                        f"[0, 1] (max {float(np.nanmax(col))!r}); float colours must be 0-1 "
                                        "(store 0-255 colours as uchar)")
            out[:, j] = col
        else:
            raise InvalidInputError(f"{source}: colour field {nm!r} has type {col.dtype}, expected an integer or float")
    return out


def detect_layout(names, *, source: str = "cloud", noun: str = "fields", packed_colours: tuple[str, ...] = ()) -> str:
    """:data:`LAYOUT_3DGS` or :data:`LAYOUT_POINTCLOUD` for a set of field names (module docstring).

    ``packed_colours``: single fields that also count as a colour (PointCloud2's packed ``rgb``).

    Raises:
        InvalidInputError: neither layout, naming what each one misses; or a partial 3DGS layout.
    """
    names = list(names)
    have = set(names)
    missing_gs = [nm for nm in _GS_REQUIRED if nm not in have]
    if not missing_gs:
        return LAYOUT_3DGS
    # higher-order SH coefficients only exist in 3DGS maps, too (the PointCloud2 reader agrees)
    partial = sorted((have & _GS_ONLY) | {nm for nm in have if nm.startswith("f_rest_")})
    if partial:
        raise InvalidInputError(f"{source}: missing required 3DGS {noun} {missing_gs} (has {names}); the "
                                f"{noun} {partial} say it is a 3DGS map, so it is not read as a plain point cloud")
    missing_xyz = [nm for nm in ("x", "y", "z") if nm not in have]
    has_colour = colour_fields(have) is not None or any(nm in have for nm in packed_colours)
    if has_colour and not missing_xyz:
        return LAYOUT_POINTCLOUD
    pc_missing = missing_xyz + ([] if has_colour else
                                [("a colour: " if packed_colours else "a colour set: ") + " | ".join(tuple(packed_colours)
                                                           + tuple("/".join(s) for s in COLOUR_FIELD_SETS))])
    raise InvalidInputError(f"{source}: neither a 3DGS map (missing required 3DGS {noun} {missing_gs}) nor a "
                            f"plain coloured point cloud (missing {pc_missing}); has {names}")


def variant_warning(variant: str, *, what: str = "the map") -> str | None:
    """A warning for a plain point cloud encoded by an encoder of input ``variant``, or None.

    The 'gaussian' variant reads scales, opacities and orientations that a plain cloud does not
    have (it sees :class:`PointCloudInputConfig` defaults), so its predictions there are not what it
    was trained for; the 'pointcloud' variant reads only centres and colours."""
    if variant != "gaussian":
        return None
    return (f"{what} arrived as a plain point cloud (no Gaussian scales, opacities or rotations: they are "
            f"defaults), but the checkpoint's encoder variant is 'gaussian', which reads them, so its results "
            f"may differ from those on a 3DGS map; the point-cloud checkpoint ({POINTCLOUD_CHECKPOINT}, "
            f"variant 'pointcloud') reads only centres and colours (which one is better depends on the "
            f"site: docs/generalisation.md, 'Plain point-cloud input')")
