"""Input encodings of the Chorus encoder and the voxel grid they live on.

Everything here is a *local* function of the Gaussians: a Gaussian's encoding depends only on
itself (variant 'gaussian') or on the Gaussians in its 3x3x3 voxel neighbourhood (variant
'pointcloud', for the normal estimate). No absolute coordinate and no global statistic enters,
so the encodings are translation invariant (by whole voxels) and a Gaussian gets the same
encoding whatever subset of the map is encoded -- which incremental encoding relies on.

Voxels are ``floor(mean / voxel_size)`` in the *absolute* world grid, so a Gaussian maps to the
same voxel in every pass.

Encodings (per Gaussian, float32):

'gaussian' (24 channels)
    ``rgb`` (3)        base colour from the SH DC term, clamped to [0, 1]
    ``opacity`` (1)    sigmoid of the logit
    ``log_scale`` (3)  per-axis log standard deviations *sorted descending* (the (scale,
                       rotation) pair is ambiguous up to a permutation of the axes; sorting
                       removes it), relative to ``log(voxel_size)``, clamped to [-6, 4], / 2
    ``ratios`` (2)     shape ratios s2/s1 and s3/s2 in (0, 1] (rotation invariant)
    ``normal`` (6)     ``c_n * sym(n n^T)``: n is the world-frame axis of the smallest scale
                       (the surface normal of a flat Gaussian), taken through its outer
                       product so the sign ambiguity disappears continuously; ``c_n = 1 -
                       s3/s2`` fades it out where the smallest axis is not distinct
    ``major`` (6)      ``c_m * sym(m m^T)`` for the axis of the largest scale, ``c_m = 1 - s2/s1``
    ``offset`` (3)     position relative to the voxel centre, in voxels, in [-0.5, 0.5)

'pointcloud' (13 channels): centres, colours and estimated normals only
    ``offset`` (3), ``rgb`` (3), ``normal`` (6) ``c * sym(n n^T)`` from a PCA of the centres in
    the 3x3x3 voxel neighbourhood (smallest eigenvector; ``c = 1 - l0/l1`` planarity), and
    ``c`` (1).

``sym(v v^T)`` = ``[x^2, y^2, z^2, sqrt2 xy, sqrt2 xz, sqrt2 yz]`` (an isometry of symmetric
matrices, so the encoding keeps the Frobenius geometry of the outer product).

Feature versions. The encodings above are **version 1** (the checkpoints trained before issue 8).
They read absolute Gaussian sizes and world-frame normals, so an encoder trained on one map
source learns its sampling (e.g. floor Gaussians 1.7x larger than object Gaussians) and the
room's yaw. **Version 2** (the default of new configs, ``EncoderConfig.feature_version``)
keeps only inputs that do not depend on how the map was sampled or which way it faces:

'gaussian' v2 (16 channels; neighbourhood 1 voxel)
    appearance: ``rgb`` (3), ``opacity`` (1)
    geometry:   ``rel_log_scale`` (3) sorted log scales minus the opacity-weighted mean of the
                largest log scale over the Gaussians of the 3x3x3 voxel neighbourhood (so a
                Gaussian is "large" only relative to its neighbours: global density and per-
                surface sampling cancel), clamped to [-4, 4], / 2; ``ratios`` (2);
                ``normal_v`` (2) ``c_n * [n_z^2, 1 - n_z^2]`` (gravity-aligned: only the vertical
                component of the normal enters, so a turn about the vertical axis leaves it
                unchanged); ``major_v`` (2) the same for the major axis; ``offset`` (3)

'pointcloud' v2 (9 channels; neighbourhood 1 voxel)
    appearance: ``rgb`` (3)
    geometry:   ``offset`` (3), ``normal_v`` (2) ``c * [n_z^2, 1 - n_z^2]`` of the PCA normal,
                ``c`` (1)

Each :class:`FeatureVariant` describes its channel groups (``groups``: half-open channel
ranges of 'appearance' and 'geometry') so that models can route them to separate branches.
Both v2 encodings stay local (3x3x3 voxels), which incremental encoding relies on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from chorus_ros.core.errors import InvalidInputError, RegistryError
from chorus_ros.core.gaussians import GaussianArrays

__all__ = [
    "Voxelization", "voxelize", "encode_keys", "lookup_keys", "quats_wxyz_to_rotmats", "sym_outer",
    "gaussian_features", "pointcloud_features", "FeatureVariant", "FEATURE_VARIANTS",
    "get_feature_variant", "COORD_LIMIT", "MAX_BATCH", "FEATURE_VERSIONS", "LATEST_FEATURE_VERSION",
    "gaussian_features_v2", "pointcloud_features_v2", "neighbourhood_sums",
]

_AXIS_BITS = 19
_BIAS = 1 << (_AXIS_BITS - 1)
COORD_LIMIT = _BIAS - 4
"""Largest |voxel index| supported by the key encoding (about 13 km at 5 cm voxels)."""
_BATCH_SHIFT = 3 * _AXIS_BITS
MAX_BATCH = 1 << (63 - _BATCH_SHIFT)
"""Largest number of scenes in one batched forward."""
_SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------ voxel grid
def encode_keys(coords: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
    """``[V, 3]`` int64 voxel coords (+ ``[V]`` batch ids) -> ``[V]`` int64 keys, ordered
    lexicographically by (batch, x, y, z). Coordinates must satisfy ``|c| <= COORD_LIMIT + 2``."""
    c = coords.to(torch.int64) + _BIAS
    k = (c[:, 0] << (2 * _AXIS_BITS)) | (c[:, 1] << _AXIS_BITS) | c[:, 2]
    if batch is not None:
        k = k | (batch.to(torch.int64) << _BATCH_SHIFT)
    return k


def _decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = (1 << _AXIS_BITS) - 1
    coords = torch.stack([(keys >> (2 * _AXIS_BITS)) & mask, (keys >> _AXIS_BITS) & mask, keys & mask], 1) - _BIAS
    return coords, keys >> _BATCH_SHIFT


def lookup_keys(sorted_keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Row of each ``query`` key in ``sorted_keys`` (ascending, unique), or -1 where absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(query, -1)
    pos = torch.searchsorted(sorted_keys, query).clamp_max(sorted_keys.numel() - 1)
    return torch.where(sorted_keys[pos] == query, pos, torch.full_like(pos, -1))


@dataclass
class Voxelization:
    """Gaussians binned into the absolute voxel grid."""

    coords: torch.Tensor
    """[V, 3] int64 absolute voxel indices ``floor(mean / voxel_size)``."""
    batch: torch.Tensor
    """[V] int64 scene index of each voxel (0 for a single scene)."""
    keys: torch.Tensor
    """[V] int64 sorted unique keys (:func:`encode_keys`) for lookups."""
    inverse: torch.Tensor
    """[N] int64 voxel row of each Gaussian."""
    counts: torch.Tensor
    """[V] int64 Gaussians per voxel."""
    voxel_size: float
    """Voxel edge, metres."""

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def lookup(self, coords: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Voxel row of each ``[Q, 3]`` coordinate (and batch id), -1 where no voxel exists."""
        return lookup_keys(self.keys, encode_keys(coords, batch))


def voxelize(means: torch.Tensor, voxel_size: float, batch: torch.Tensor | None = None) -> Voxelization:
    """Bin ``means: [N, 3] world, metres`` (optionally per scene ``batch: [N]``) into voxels."""
    if means.ndim != 2 or means.shape[1] != 3:
        raise InvalidInputError(f"means has shape {tuple(means.shape)}, expected (N, 3)")
    coords = torch.floor(means / voxel_size).to(torch.int64)
    if coords.numel() and int(coords.abs().max()) > COORD_LIMIT:
        raise InvalidInputError(
            f"a Gaussian lies {float(means.abs().max()):.1f} m from the origin, beyond the voxel grid's "
            f"range ({COORD_LIMIT * voxel_size:.0f} m at voxel_size {voxel_size})")
    if batch is not None and batch.numel() and int(batch.max()) >= MAX_BATCH:
        raise InvalidInputError(f"at most {MAX_BATCH} scenes per batch, got {int(batch.max()) + 1}")
    keys, inverse, counts = torch.unique(encode_keys(coords, batch), sorted=True, return_inverse=True,
                                         return_counts=True)
    vcoords, vbatch = _decode_keys(keys)
    return Voxelization(vcoords, vbatch, keys, inverse, counts, float(voxel_size))


# ----------------------------------------------------------------------------- geometry helpers
def quats_wxyz_to_rotmats(q: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` wxyz quaternions (normalised here) -> ``[N, 3, 3]`` rotation matrices (torch
    twin of :func:`chorus_ros.core.geometry.quat_wxyz_to_rotmat`)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    r = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1)
    return r.reshape(q.shape[:-1] + (3, 3))


def sym_outer(v: torch.Tensor) -> torch.Tensor:
    """``[N, 3]`` -> ``[N, 6]`` unique entries of ``v v^T`` (off-diagonals times sqrt 2):
    invariant to the sign of ``v`` and continuous."""
    x, y, z = v.unbind(-1)
    return torch.stack([x * x, y * y, z * z, _SQRT2 * x * y, _SQRT2 * x * z, _SQRT2 * y * z], -1)


def _voxel_offsets(means: torch.Tensor, vox: Voxelization) -> torch.Tensor:
    """[N, 3] position relative to the own voxel centre, in voxels, in [-0.5, 0.5)."""
    u = means / vox.voxel_size
    return u - torch.floor(u) - 0.5


# ----------------------------------------------------------------------------- the encodings
def _sorted_axes(g: GaussianArrays) -> tuple[torch.Tensor, ...]:
    """Per-axis log scales sorted descending ``[N, 3]``, the world axes of the largest and smallest
    scale (``major``, ``normal``: ``[N, 3]``) and the shape ratios s2/s1, s3/s2 (``[N]`` each)."""
    log_s = g.log_scales.float()
    order = torch.argsort(log_s, dim=1, descending=True)
    ls = torch.gather(log_s, 1, order)
    rot = quats_wxyz_to_rotmats(g.unit_quats.float())
    # scale i acts along column i of R: pick the columns of the largest / smallest scales
    major = torch.gather(rot, 2, order[:, None, 0:1].expand(-1, 3, 1)).squeeze(-1)
    normal = torch.gather(rot, 2, order[:, None, 2:3].expand(-1, 3, 1)).squeeze(-1)
    return ls, major, normal, torch.exp(ls[:, 1] - ls[:, 0]), torch.exp(ls[:, 2] - ls[:, 1])


def gaussian_features(g: GaussianArrays, vox: Voxelization) -> torch.Tensor:
    """``[N, 24]`` encoding of full Gaussians (see the module docstring)."""
    ls, major, normal, r21, r32 = _sorted_axes(g)
    feats = [
        g.base_rgb.float(),
        g.opacity.float()[:, None],
        ((ls - math.log(vox.voxel_size)).clamp(-6.0, 4.0) / 2.0),
        torch.stack([r21, r32], 1),
        (1.0 - r32)[:, None] * sym_outer(normal),
        (1.0 - r21)[:, None] * sym_outer(major),
        _voxel_offsets(g.means.float(), vox),
    ]
    return torch.cat(feats, 1)


def estimate_voxel_normals(means: torch.Tensor, vox: Voxelization) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of the centres in each voxel's 3x3x3 neighbourhood (vectorised over voxels).

    Returns ``normals: [V, 3]`` (smallest eigenvector, sign arbitrary) and ``planarity: [V]``
    ``1 - l0 / l1`` in [0, 1] (0 where the neighbourhood has no distinct smallest axis).
    Sums are kept relative to each voxel's centre, in voxels, so float32 stays exact far from
    the origin and the result does not depend on which other voxels are encoded.
    """
    v = len(vox)
    rel = means.float() / vox.voxel_size - (vox.coords[vox.inverse].float() + 0.5)
    s0 = vox.counts.float()
    s1 = rel.new_zeros(v, 3).index_add_(0, vox.inverse, rel)
    s2 = rel.new_zeros(v, 3, 3).index_add_(0, vox.inverse, rel[:, :, None] * rel[:, None, :])
    n = rel.new_zeros(v)
    t1 = rel.new_zeros(v, 3)
    t2 = rel.new_zeros(v, 3, 3)
    rng = (-1, 0, 1)
    for dx in rng:
        for dy in rng:
            for dz in rng:
                d = torch.tensor([dx, dy, dz], dtype=torch.int64, device=means.device)
                j = vox.lookup(vox.coords + d, vox.batch)
                ok = j >= 0
                jj, ii = j[ok], ok.nonzero().squeeze(1)
                df = d.float()
                c0, c1, c2 = s0[jj], s1[jj], s2[jj]
                # neighbour points relative to *this* voxel's centre are rel_j + d
                n.index_add_(0, ii, c0)
                t1.index_add_(0, ii, c1 + c0[:, None] * df)
                t2.index_add_(0, ii, c2 + c1[:, :, None] * df[None, None, :] + df[None, :, None] * c1[:, None, :]
                              + c0[:, None, None] * (df[:, None] * df[None, :]))
    mean = t1 / n[:, None]
    cov = t2 / n[:, None, None] - mean[:, :, None] * mean[:, None, :]
    cov = 0.5 * (cov + cov.transpose(1, 2))
    evals, evecs = torch.linalg.eigh(cov.double())
    evals = evals.clamp_min(0.0)
    planarity = torch.where(evals[:, 1] > 1e-9, 1.0 - evals[:, 0] / evals[:, 1].clamp_min(1e-9),
                            torch.zeros_like(evals[:, 0]))
    return evecs[:, :, 0].float(), planarity.clamp(0.0, 1.0).float()


def pointcloud_features(g: GaussianArrays, vox: Voxelization) -> torch.Tensor:
    """``[N, 13]`` encoding from centres and colours only (see the module docstring)."""
    normals, planarity = estimate_voxel_normals(g.means, vox)
    n, c = normals[vox.inverse], planarity[vox.inverse]
    return torch.cat([_voxel_offsets(g.means.float(), vox), g.base_rgb.float(),
                      c[:, None] * sym_outer(n), c[:, None]], 1)


def neighbourhood_sums(values: torch.Tensor, vox: Voxelization) -> torch.Tensor:
    """Sum of per-Gaussian ``values: [N, C]`` over each voxel's 3x3x3 neighbourhood -> ``[V, C]``.

    Depends only on the Gaussians in those 27 voxels (not on which other voxels are encoded)."""
    v = len(vox)
    per_voxel = values.new_zeros(v, values.shape[1]).index_add_(0, vox.inverse, values)
    out = torch.zeros_like(per_voxel)
    rng = (-1, 0, 1)
    for dx in rng:
        for dy in rng:
            for dz in rng:
                d = torch.tensor([dx, dy, dz], dtype=torch.int64, device=values.device)
                j = vox.lookup(vox.coords + d, vox.batch)
                ok = j >= 0
                out.index_add_(0, ok.nonzero().squeeze(1), per_voxel[j[ok]])
    return out


def _vertical(c: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` gravity-aligned axis encoding ``c * [a_z^2, 1 - a_z^2]`` (sign- and yaw-free)."""
    z2 = axis[:, 2] ** 2
    return c[:, None] * torch.stack([z2, 1.0 - z2], 1)


def gaussian_features_v2(g: GaussianArrays, vox: Voxelization) -> torch.Tensor:
    """``[N, 16]`` sampling- and yaw-independent encoding of full Gaussians (module docstring, v2)."""
    ls, major, normal, r21, r32 = _sorted_axes(g)
    op = g.opacity.float()
    # opacity-weighted (plus a floor so all-transparent neighbourhoods stay defined) mean of the
    # largest log scale around each voxel
    w = op + 1e-3
    sums = neighbourhood_sums(torch.stack([w, w * ls[:, 0]], 1), vox)
    ref = (sums[:, 1] / sums[:, 0])[vox.inverse]
    feats = [
        g.base_rgb.float(),
        op[:, None],
        ((ls - ref[:, None]).clamp(-4.0, 4.0) / 2.0),
        torch.stack([r21, r32], 1),
        _vertical(1.0 - r32, normal),
        _vertical(1.0 - r21, major),
        _voxel_offsets(g.means.float(), vox),
    ]
    return torch.cat(feats, 1)


def pointcloud_features_v2(g: GaussianArrays, vox: Voxelization) -> torch.Tensor:
    """``[N, 9]`` encoding from centres and colours only, gravity-aligned (module docstring, v2)."""
    normals, planarity = estimate_voxel_normals(g.means, vox)
    n, c = normals[vox.inverse], planarity[vox.inverse]
    return torch.cat([g.base_rgb.float(), _voxel_offsets(g.means.float(), vox), _vertical(c, n), c[:, None]], 1)


@dataclass(frozen=True)
class FeatureVariant:
    """An input encoding: its function, width, and how far (voxels) it looks beyond its own voxel."""

    name: str
    fn: Callable[[GaussianArrays, Voxelization], torch.Tensor]
    dim: int
    neighbourhood_voxels: int
    """Chebyshev radius, in voxels, of the voxels whose Gaussians enter one Gaussian's encoding
    (0: the Gaussian alone). Added to the receptive field."""
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Channel groups: name ('appearance', 'geometry') -> channel indices (ascending). Together
    they cover every channel exactly once. In version 2 every group is one contiguous range
    (see :meth:`group_range`)."""
    version: int = 1
    """Feature version (``EncoderConfig.feature_version``)."""

    def group_range(self, name: str) -> tuple[int, int]:
        """Half-open ``(start, end)`` channel range of group ``name``; raises when the group is
        not contiguous (only the v1 'pointcloud' geometry group is not)."""
        idx = self.groups[name]
        if list(idx) != list(range(idx[0], idx[-1] + 1)):
            raise InvalidInputError(f"feature group {name!r} of {self.name} v{self.version} is not contiguous: {idx}")
        return idx[0], idx[-1] + 1


def _g(**ranges: tuple) -> dict[str, tuple[int, ...]]:
    """Groups from lists of half-open ranges."""
    return {k: tuple(i for a, b in (v if isinstance(v[0], tuple) else (v,)) for i in range(a, b))
            for k, v in ranges.items()}


FEATURE_VERSIONS: dict[int, dict[str, FeatureVariant]] = {
    1: {
        "gaussian": FeatureVariant("gaussian", gaussian_features, 24, 0,
                                   _g(appearance=(0, 4), geometry=(4, 24)), 1),
        "pointcloud": FeatureVariant("pointcloud", pointcloud_features, 13, 1,
                                     _g(appearance=(3, 6), geometry=((0, 3), (6, 13))), 1),
    },
    2: {
        "gaussian": FeatureVariant("gaussian", gaussian_features_v2, 16, 1,
                                   _g(appearance=(0, 4), geometry=(4, 16)), 2),
        "pointcloud": FeatureVariant("pointcloud", pointcloud_features_v2, 9, 1,
                                     _g(appearance=(0, 3), geometry=(3, 9)), 2),
    },
}
"""Encodings by feature version and variant name."""
LATEST_FEATURE_VERSION = max(FEATURE_VERSIONS)
"""Version new encoder configs use."""

FEATURE_VARIANTS: dict[str, FeatureVariant] = FEATURE_VERSIONS[1]
"""Version-1 encodings (kept for the checkpoints trained before feature versions existed)."""


def get_feature_variant(name: str, version: int = 1) -> FeatureVariant:
    """Registry lookup; an unknown name or version lists the known ones."""
    if version not in FEATURE_VERSIONS:
        raise RegistryError(f"unknown encoder feature version {version!r}; known: {sorted(FEATURE_VERSIONS)} "
                            "(a checkpoint from a newer chorus_ros?)")
    try:
        return FEATURE_VERSIONS[version][name]
    except KeyError:
        raise RegistryError(f"unknown encoder input variant {name!r}; known: {sorted(FEATURE_VERSIONS[version])}") from None
