"""Instances: group Gaussians into objects by their identity features, and keep their ids.

Grouping (:func:`group_components`), per call:

1. Gaussians with a class label are binned into *nodes* = (voxel of ``voxel_size``, class (all
   thing classes count as one with ``class_agnostic_things``),
   feature bucket: signs of a few fixed random projections of the object feature, so that two
   touching objects of one class sharing a voxel stay apart). A node's feature is the
   normalised mean of its Gaussians' object-head features.
2. Nodes of the same class in the same or 26-neighbouring voxels are joined by an edge when the
   cosine of their features exceeds ``feature_threshold``; for *stuff* classes (wall, floor,
   ceiling) every same-class neighbour is joined (one instance per connected surface). With
   ``stuff_feature_threshold > -1`` the nodes of a surface whose identity feature differs from the
   surface's prototype are split off, and a connected piece of them joins the touching thing whose
   identity it shares (:func:`split_stuff_from_things`), so a picture whose Gaussians were half
   labelled wall is one object; a surface is never merged into a thing.
3. Connected components of that graph (vectorised hook-and-compress union-find in torch).
4. *Minimum support*: components with fewer than ``min_gaussians`` Gaussians, or covering less
   than ``min_support_area`` square metres (:func:`support_area`: Gaussians x the area each stands
   for at the map's sample spacing, weighted by semantic confidence; a measure that does not grow
   with the map's density), are fragments. In rounds, a fragment touching a resolved object joins
   the most similar one of its class; failing that (``merge_across_classes``), the object it
   touches most, of any class (its label is then outvoted by the majority); a fragment touching
   only fragments joins whatever they joined; one touching nothing gets no instance. Only
   fragments move: a supported surface is never absorbed into a thing, and a floor fragment that
   touches the floor joins the floor however much it touches a chair; a floor-labelled speck
   touching only a chair is taken for a class flip on the chair and joins it (intended).

The map's *sample spacing* (median distance to the 8th nearest Gaussian, measured once) is also a
lower bound of the automatic voxel: real and mesh-sampled maps carry Gaussians smaller than their
spacing, and a voxel smaller than the spacing cuts one surface into many pieces (docs/instances.md).

The object features are the encoder's object (identity) head, trained from the scene-agnostic
GOCL codebook (:mod:`chorus_ros.core.objects`); when the decoder is given the codebook's
prototypes (:meth:`InstanceDecoder.set_code_prototypes`), each object record carries the id of
its nearest prototype (``code_id``), the same kind of object in every scene.

Id association (:class:`IdTracker`): every object has an entry with a *persistent id* (>= 1;
0 means "no instance"), a prototype (unit mean object feature), its class, centroid, box,
Gaussian count and mean language embedding. This is bookkeeping of one map's ids, not a learned
codebook. Each regrouping
matches the new components to entries, first by Gaussian-id overlap (Gaussians keep their ids
and their previous instance id across map updates), then by prototype similarity + spatial
overlap (objects whose Gaussians were all replaced, or that come back after removal). Matching
is greedy (largest overlap / similarity first), one-to-one. Unmatched components get new ids,
entries left without Gaussians are retired; ids are never given to a different object.

Incremental (:meth:`InstanceDecoder.regroup` with ``region``): only Gaussians of the region,
grown to whole instances and to instances touching it (one voxel of dilation) and to the
Gaussians without an instance within that voxel, are regrouped; every other Gaussian keeps its
id and every other entry its record.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.knn import knn_distances
from chorus_ros.core.labels import UNLABELED

__all__ = ["InstanceConfig", "GroupingResult", "ComponentStats", "ObjectRecord", "TrackedObject",
           "IdTracker", "InstanceDecoder", "RegroupResult", "group_components",
           "component_stats", "median_knn_distance", "split_stuff_from_things", "support_area", "NO_INSTANCE",
           "ObjectCodebook", "CodebookEntry"]

NO_INSTANCE = 0
"""Instance id meaning "no instance" (persistent ids start at 1; maps zero-fill new Gaussians)."""

# Half of the 26-neighbourhood (lexicographically positive offsets): each undirected edge once.
_HALF_OFFSETS = torch.tensor([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
                              if (dx, dy, dz) > (0, 0, 0)], dtype=torch.long)
_ALL_OFFSETS = torch.tensor([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)],
                            dtype=torch.long)


@dataclass
class InstanceConfig:
    """Instance grouping and id association settings (ROS parameters ``decode.instances.*``)."""

    voxel_size: float = 0.0
    """Edge of the grouping voxels, metres (nodes of the adjacency graph); <= 0: automatic,
    ``auto_voxel_factor`` x the median of the Gaussians' largest std, or the map's ``spacing`` when
    larger (fixed at the first regrouping)."""
    auto_voxel_factor: float = 1.5
    """Automatic voxel size as a multiple of the median largest Gaussian std; the automatic size is at
    least the map's ``spacing`` too, so a surface sampled at that spacing stays connected in the
    voxel graph (real and mesh-sampled maps have Gaussians smaller than their sample spacing)."""
    auto_voxel_range: tuple[float, float] = (0.01, 0.5)
    """Clamp of the automatic voxel size, metres."""
    voxel_quantum: float = 0.0
    """When > 0, the automatic voxel size snaps to this x the nearest power of two. The automatic
    size is measured on the Gaussians of the first regrouping; snapping makes a map grown by deltas
    group exactly like the same map received whole (same density, same bin). The pipeline sets it
    from the checkpoint's encoder voxel."""
    feature_threshold: float = 0.7
    """Neighbouring thing nodes join when the cosine of their object features exceeds this."""
    feature_buckets: int = 3
    """Within a voxel, Gaussians of one class are split into 2^bits nodes by the signs of fixed
    random projections of their object feature, so touching same-class objects sharing a voxel
    stay apart (same-voxel nodes are joined by the same similarity test as neighbours)."""
    spacing: float = 0.0
    """The map's sample spacing, metres: the median distance of a Gaussian to its ``spacing_knn``-th
    nearest neighbour. Sets the area a Gaussian stands for in the minimum support and a lower
    bound of the automatic voxel. 0: measured by the decoder on the Gaussians of the first
    regrouping (then fixed, like the automatic voxel); < 0: not used (the voxel comes from the
    Gaussians' sizes alone and support is measured by occupied voxels, the rule before 2026-12-06)."""
    spacing_knn: int = 8
    """k of the spacing's k-nearest-neighbour distance (8: a surface's 8-NN graph is connected
    for random samples)."""
    confidence_weighted_support: bool = True
    """With a known ``spacing``, each Gaussian counts towards the minimum support in proportion to
    its semantic confidence (an uncertain class flip is weaker evidence for an object of its own)."""
    absorb_by_contact: bool = True
    """Fragments (below the minimum support) join, in rounds, the most similar touching object of
    their class, else the object they touch most (node contacts, any class, with
    ``merge_across_classes``); a fragment touching only fragments joins whatever they joined.
    False: the older one-step rule (most similar same-class neighbour, else most similar of any
    class)."""
    min_gaussians: int = 8
    """Components with fewer Gaussians merge into a similar neighbour or get no instance."""
    min_support_area: float = 0.02
    """Components covering less than this many square metres are fragments too; 0 disables. The
    area is density-independent: Gaussians x the area each stands for (from ``spacing``, weighted
    by confidence; :func:`support_area`), or occupied voxels x voxel area without a spacing.
    0.02 m^2 (a 14 cm square) is below the surface of the smallest objects of the label set (a
    book's cover alone is ~0.03 m^2); chosen from that, then checked on all sources
    (docs/instances.md)."""
    merge_across_classes: bool = True
    """A fragment with no supported neighbour of its class merges into a supported neighbour of any
    class (the one it touches most with ``absorb_by_contact``, else the most similar; its Gaussians
    take that object's id; labels are kept)."""
    class_agnostic_things: bool = False
    """Group Gaussians of all thing classes together, by identity feature and adjacency alone (the
    object's class is its members' majority); stuff classes stay grouped per class. Keeps objects
    whole when per-Gaussian labels are noisy (maps unlike the training data)."""
    stuff_classes: tuple[str, ...] = ("wall", "floor", "ceiling")
    """Class names grouped by connectivity (one instance per connected surface)."""
    stuff_feature_threshold: float = -1.0
    """Splits stuff surfaces from the things that touch them (-1: off). Stuff is grouped by
    connectivity; then the surface's nodes whose object feature has a cosine below this to the
    surface's prototype (its mean identity) are split off, connected split nodes form pieces, and a
    piece joins the touching thing it resembles most when that cosine exceeds ``feature_threshold``
    and the piece's cosine to its surface (e.g. the wall-labelled half of a picture joins the
    picture); a piece that resembles no touching thing stays in its surface. A surface is never
    merged into a thing, and no new stuff object is made. 0.7 (the thing join test) is the
    measured value; off by default because it moved PQ by only -0.35 to +0.53 across the measured
    sources (docs/instances.md)."""
    min_overlap_fraction: float = 0.3
    """Id matching by overlap needs overlap >= this share of the smaller of (component's Gaussians
    that had an id, entry's previous count)."""
    prototype_threshold: float = 0.8
    """Matching a component to a vanished entry needs prototype cosine above this ..."""
    spatial_margin: float = 0.1
    """... and the two boxes, each grown by this many metres, to intersect."""

    def validate(self) -> None:
        if not 0 <= self.feature_buckets <= 8:
            raise InvalidInputError(f"feature_buckets must be in [0, 8], got {self.feature_buckets}")
        if not self.auto_voxel_factor > 0 or not 0 < self.auto_voxel_range[0] <= self.auto_voxel_range[1]:
            raise InvalidInputError(f"auto_voxel_factor must be > 0 and auto_voxel_range 0 < lo <= hi, got "
                                    f"{self.auto_voxel_factor}, {self.auto_voxel_range}")
        if not -1 <= self.feature_threshold <= 1:
            raise InvalidInputError(f"feature_threshold must be in [-1, 1], got {self.feature_threshold}")
        if not -1 <= self.stuff_feature_threshold <= 1:
            raise InvalidInputError(f"stuff_feature_threshold must be in [-1, 1], got {self.stuff_feature_threshold}")
        if not self.min_support_area >= 0:
            raise InvalidInputError(f"min_support_area must be >= 0, got {self.min_support_area}")
        if self.spacing_knn < 1:
            raise InvalidInputError(f"spacing_knn must be >= 1, got {self.spacing_knn}")
        if not math.isfinite(self.spacing):
            raise InvalidInputError(f"spacing must be finite, got {self.spacing}")
        if self.min_gaussians < 1:
            raise InvalidInputError(f"min_gaussians must be >= 1, got {self.min_gaussians}")
        if not 0 <= self.min_overlap_fraction <= 1:
            raise InvalidInputError(f"min_overlap_fraction must be in [0, 1], got {self.min_overlap_fraction}")


@dataclass
class GroupingResult:
    """Output of :func:`group_components`."""

    component: torch.Tensor
    """[N] int64 component index in ``0..num_components-1``, -1 for no component."""
    num_components: int


@dataclass
class ComponentStats:
    """Per-component statistics (C components)."""

    count: torch.Tensor
    """[C] int64 number of Gaussians."""
    label: torch.Tensor
    """[C] int64 class id: the most common one among the component's Gaussians (ties: smallest)."""
    prototype: torch.Tensor
    """[C, d_o] unit mean object feature."""
    centroid: torch.Tensor
    """[C, 3] mean of the Gaussian centres, world frame, metres."""
    bbox_min: torch.Tensor
    """[C, 3] axis-aligned box corner (min of the centres), world frame."""
    bbox_max: torch.Tensor
    """[C, 3] axis-aligned box corner (max of the centres), world frame."""
    embedding: torch.Tensor | None
    """[C, d_l] unit mean language feature, when language features were given."""
    score: torch.Tensor
    """[C] mean semantic confidence of the Gaussians (1 when none was given)."""
    min_gid: torch.Tensor
    """[C] int64 smallest Gaussian id (a deterministic order for new ids)."""


@dataclass
class ObjectRecord:
    """A publishable per-object record (one per active tracked object)."""

    instance_id: int
    """Persistent id (>= 1), stable across views and map growth."""
    label_id: int
    """Class id in the active label set."""
    label: str
    """Class name."""
    score: float
    """Mean semantic confidence of the object's Gaussians, in [0, 1]."""
    centroid: np.ndarray
    """[3] float64 mean of the Gaussian centres, map frame, metres."""
    bbox_min: np.ndarray
    """[3] float64 axis-aligned box min corner, map frame, metres."""
    bbox_max: np.ndarray
    """[3] float64 axis-aligned box max corner, map frame, metres."""
    gaussian_count: int
    """Number of Gaussians in the object (its support)."""
    embedding: np.ndarray
    """[d] float32 unit mean language embedding (zeros when unknown)."""
    code_id: int = -1
    """Nearest prototype of the scene-agnostic GOCL codebook (-1: no codebook given)."""
    confidence: float = 1.0
    """How sure the object is, in [0, 1]: ``score`` x the support weight of its Gaussian count
    relative to the map's median object (:func:`chorus_ros.core.objects.support_confidence`)."""


@dataclass
class TrackedObject:
    """The id tracker's record of one object."""

    instance_id: int
    label_id: int
    prototype: torch.Tensor
    """[d_o] unit mean object feature."""
    centroid: torch.Tensor
    bbox_min: torch.Tensor
    bbox_max: torch.Tensor
    count: int
    embedding: torch.Tensor | None
    score: float
    active: bool = True
    """False once retired (no Gaussians left); a retired entry may be revived by prototype match."""


# ----------------------------------------------------------------------------- grouping helpers
def _voxel_grid(means: torch.Tensor, voxel_size: float):
    """Voxel coords shifted into ``[1, D-2]`` per axis (room for one voxel of offset) + dims."""
    vox = torch.floor(means.double() / voxel_size).long()
    vox = vox - vox.min(0).values + 1
    dims = vox.max(0).values + 2
    total = float(dims[0]) * float(dims[1]) * float(dims[2])
    return vox, dims, total


def _encode(vox: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    return (vox[..., 0] * dims[1] + vox[..., 1]) * dims[2] + vox[..., 2]


def median_knn_distance(means: torch.Tensor, k: int = 8, max_queries: int = 1024, chunk: int = 256) -> float:
    """Median distance (metres) of a Gaussian to its ``k``-th nearest other Gaussian: the map's
    sample spacing, measured on up to ``max_queries`` Gaussians (a fixed-seed sample, exact when
    N <= ``max_queries``) against all of ``means`` ([N, 3], world frame), ``chunk`` queries at a
    time (:func:`chorus_ros.core.knn.knn_distances`: exact differences, bounded memory)."""
    m = means.detach().float().cpu()
    n = m.shape[0]
    if n <= k:
        raise InvalidInputError(f"median_knn_distance needs more than k={k} points, got {n}")
    q = (torch.arange(n) if n <= max_queries
         else torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_queries])
    out = [knn_distances(m[q[i:i + chunk]], m, k + 1)[:, k] for i in range(0, q.numel(), chunk)]  # 0: itself
    return float(torch.cat(out).median())


def feature_bucket(f: torch.Tensor, bits: int) -> torch.Tensor:
    """``[N]`` int64 bucket of unit features ``f`` ([N, d]): signs of ``bits`` fixed random
    projections (seeded, so the same feature always lands in the same bucket)."""
    if bits <= 0:
        return torch.zeros(f.shape[0], dtype=torch.long)
    r = torch.randn(f.shape[1], bits, generator=torch.Generator().manual_seed(12345))
    return ((f @ r) > 0).long() @ (1 << torch.arange(bits))


def connected_components(num_nodes: int, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``[num_nodes]`` root (smallest node index) of each node's component.

    Hook-and-compress union-find: every round hooks the larger of two roots joined by an edge
    onto the smaller, then compresses paths fully; parents only decrease, so it terminates.
    """
    parent = torch.arange(num_nodes, dtype=torch.long)
    if src.numel() == 0:
        return parent
    while True:
        ps, pd = parent[src], parent[dst]
        lo, hi = torch.minimum(ps, pd), torch.maximum(ps, pd)
        diff = lo != hi
        if not bool(diff.any()):
            return parent
        parent.scatter_reduce_(0, hi[diff], lo[diff], reduce="amin")
        while True:
            pp = parent[parent]
            if torch.equal(pp, parent):
                break
            parent = pp


def _neighbour_pairs(node_cell: torch.Tensor, dims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(src, dst)`` node pairs of any class in the same voxel or in 26-neighbouring voxels, each
    unordered pair once (``node_cell`` [M] sorted voxel codes)."""
    off = torch.cat([torch.zeros(1, dtype=torch.long), _encode(_HALF_OFFSETS, dims)])  # [14], self first
    m = node_cell.numel()
    tgt = (node_cell[:, None] + off[None, :]).reshape(-1)
    lo = torch.searchsorted(node_cell, tgt, right=False)
    hi = torch.searchsorted(node_cell, tgt, right=True)
    cnt = hi - lo
    src = torch.arange(m).repeat_interleave(off.numel()).repeat_interleave(cnt)
    start = torch.cumsum(cnt, 0) - cnt
    dst = lo.repeat_interleave(cnt) + (torch.arange(int(cnt.sum())) - start.repeat_interleave(cnt))
    is_self = (torch.arange(m * off.numel()) % off.numel() == 0).repeat_interleave(cnt)
    keep = ~is_self | (dst > src)
    return src[keep], dst[keep]


def support_area(node_comp: torch.Tensor, ncomp: int, node_cell: torch.Tensor, node_of: torch.Tensor,
                 config: "InstanceConfig", confidence: torch.Tensor | None = None) -> torch.Tensor:
    """``[C]`` float64 surface area (m^2) each component covers, independent of the map's density.

    With ``config.spacing > 0``: every Gaussian stands for ``pi * spacing^2 / spacing_knn`` square
    metres (a surface sampled with density rho has ``k`` samples within the median k-NN distance
    ``s``: ``rho * pi * s^2 = k``), weighted by its semantic confidence when
    ``confidence_weighted_support`` (an uncertain label is weaker evidence for an object of its own).
    Otherwise: occupied grouping voxels x the voxel's face area.

    Args:
        node_comp: ``[M]`` component of each node. node_cell: ``[M]`` voxel code of each node.
        node_of: ``[N']`` node of each grouped Gaussian. confidence: ``[N']`` or None.
    """
    if config.spacing > 0:
        w = torch.ones(node_of.numel(), dtype=torch.float64)
        if confidence is not None and config.confidence_weighted_support:
            w = confidence.double().clamp(0.0, 1.0)
        per_g = math.pi * config.spacing ** 2 / config.spacing_knn
        return torch.zeros(ncomp, dtype=torch.float64).index_add_(0, node_comp[node_of], w) * per_g
    cells = torch.unique(torch.stack([node_comp, node_cell], 1), dim=0)[:, 0]
    return torch.bincount(cells, minlength=ncomp).double() * config.voxel_size ** 2


def _absorb_fragments(target: torch.Tensor, tiny: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor,
                      sim: torch.Tensor, comp_lab: torch.Tensor, across: bool, max_rounds: int = 256) -> None:
    """Point every fragment's ``target`` (in place) at the object it joins.

    ``ca``/``cb`` [P] components of touching node pairs, ``sim`` [P] their features' cosine. In
    rounds, every fragment still without a target that touches a resolved component (a supported
    one, or a fragment resolved in an earlier round) joins: the most similar resolved neighbour of
    its own class if there is one, else (``across``) the resolved object it touches most (node
    contacts; ties: higher similarity, then the smaller index). Fragments touching nothing
    resolved keep ``-1`` (no instance).
    """
    ncomp = target.numel()
    diff = ca != cb
    a0 = torch.cat([ca[diff], cb[diff]])
    b0 = torch.cat([cb[diff], ca[diff]])
    s0 = torch.cat([sim[diff], sim[diff]]).double()
    keep = tiny[a0]
    a0, b0, s0 = a0[keep], b0[keep], s0[keep]
    for _ in range(max_rounds):
        cand = (target[a0] < 0) & (target[b0] >= 0)
        if not bool(cand.any()):
            return
        a, t, s = a0[cand], target[b0[cand]], s0[cand]
        same = comp_lab[a] == comp_lab[t]
        if not across:
            a, t, s, same = a[same], t[same], s[same], same[same]
            if a.numel() == 0:
                return
        key, inv = torch.unique(a * ncomp + t, return_inverse=True)           # sorted by (a, t)
        contacts = torch.bincount(inv, minlength=key.numel()).double()
        maxsim = torch.full((key.numel(),), -2.0, dtype=torch.float64).scatter_reduce(0, inv, s, reduce="amax")
        ka, kt = key // ncomp, key % ncomp
        ksame = comp_lab[ka] == comp_lab[kt]
        # per fragment: same class first (by similarity), else most contacts (then similarity); stable
        # sorts from the least to the most significant key keep the smaller t on full ties
        order = torch.arange(key.numel())
        for k, desc in ((torch.where(ksame, contacts, maxsim), True), (torch.where(ksame, maxsim, contacts), True),
                        (ksame.double(), True), (ka.double(), False)):
            order = order[torch.argsort(k[order], descending=desc, stable=True)]
        ka_o = ka[order]
        first = torch.ones_like(ka_o, dtype=torch.bool)
        first[1:] = ka_o[1:] != ka_o[:-1]
        target[ka_o[first]] = kt[order][first]


def split_stuff_from_things(node_comp: torch.Tensor, node_stuff: torch.Tensor, node_feat: torch.Tensor,
                            node_count: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, threshold: float,
                            join_threshold: float) -> torch.Tensor:
    """``[M]`` new component of each node after moving pieces of stuff surfaces into the things
    they belong to (``InstanceConfig.stuff_feature_threshold``).

    Args:
        node_comp: ``[M]`` component of each node (components are one class each).
        node_stuff: ``[M]`` bool, the node's class is stuff.
        node_feat: ``[M, d]`` unit node features. node_count: ``[M]`` Gaussians per node.
        src, dst: ``[P]`` touching node pairs (each unordered pair once or more; any classes).
        threshold: a stuff node is split off when its cosine to its component's prototype (the
            count-weighted mean of its nodes' features, normalised) is below this.
        join_threshold: a piece (connected split nodes of one component) joins the touching thing
            component with the highest prototype cosine when that cosine exceeds this and the
            piece's cosine to its own component (ties: the smaller component index); else it stays.

    Things never move and a surface keeps every node that no thing takes, so one pass suffices and
    the returned components are a subset of the input's indices (a surface cannot lose all nodes:
    its prototype is their mean, and a piece must resemble a thing more than its surface).
    """
    m = node_comp.numel()
    ncomp = int(node_comp.max()) + 1 if m else 0
    w = node_feat * node_count[:, None].to(node_feat.dtype)
    proto = torch.nn.functional.normalize(torch.zeros(ncomp, node_feat.shape[1]).index_add_(0, node_comp, w), dim=-1)
    out_node = node_stuff & ((node_feat * proto[node_comp]).sum(-1) < threshold)
    if not bool(out_node.any()):
        return node_comp
    inner = out_node[src] & out_node[dst] & (node_comp[src] == node_comp[dst])
    piece = connected_components(m, src[inner], dst[inner])                  # root node of each piece
    pproto = torch.nn.functional.normalize(torch.zeros(m, node_feat.shape[1]).index_add_(
        0, piece[out_node], w[out_node]), dim=-1)
    a = torch.cat([src, dst])
    b = torch.cat([dst, src])
    cand = out_node[a] & ~node_stuff[b]
    if not bool(cand.any()):
        return node_comp
    p, t = torch.unique(torch.stack([piece[a[cand]], node_comp[b[cand]]], 1), dim=0).unbind(1)
    s_t = (pproto[p] * proto[t]).sum(-1)
    s_own = (pproto[p] * proto[node_comp[p]]).sum(-1)
    ok = (s_t > join_threshold) & (s_t > s_own)
    if not bool(ok.any()):
        return node_comp
    p, t, s_t = p[ok], t[ok], s_t[ok]                                       # sorted by (p, t): ties keep small t
    order = torch.argsort(s_t, descending=True, stable=True)
    p, t = p[order], t[order]
    first = torch.full((m,), p.numel(), dtype=torch.long).scatter_reduce(0, p, torch.arange(p.numel()), reduce="amin")
    goes = torch.full((m,), -1, dtype=torch.long)
    has = first < p.numel()
    goes[has] = t[first[has]]
    dest = torch.where(out_node, goes[piece], torch.full_like(node_comp, -1))
    return torch.where(dest >= 0, dest, node_comp)


def _merge_across_classes(target, rest, tiny, node_comp, node_cell, cell_lab, node_feat, nl, dims) -> None:
    """Point each ``rest`` fragment's ``target`` (in place) at the most similar supported component
    of any class with a node in the same or a 26-neighbouring voxel."""
    qn = torch.nonzero(rest[node_comp]).squeeze(1)                      # nodes of the fragments
    off = _encode(_ALL_OFFSETS, dims)
    tcell = (node_cell[qn][:, None] + off[None]).reshape(-1)
    lo = torch.searchsorted(cell_lab, tcell * nl, right=False)
    hi = torch.searchsorted(cell_lab, tcell * nl + (nl - 1), right=True)
    cnt = hi - lo
    if int(cnt.sum()) == 0:
        return
    src = qn.repeat_interleave(off.numel()).repeat_interleave(cnt)
    start = torch.cumsum(cnt, 0) - cnt
    dst = lo.repeat_interleave(cnt) + (torch.arange(int(cnt.sum())) - start.repeat_interleave(cnt))
    cs, cd = node_comp[src], node_comp[dst]
    ok = ~tiny[cd]
    if not bool(ok.any()):
        return
    cs, cd, src, dst = cs[ok], cd[ok], src[ok], dst[ok]
    s = (node_feat[src] * node_feat[dst]).sum(-1)
    order = torch.argsort(s, descending=True, stable=True)
    cs, cd = cs[order], cd[order]
    first = torch.full((target.numel(),), cs.numel(), dtype=torch.long)
    first.scatter_reduce_(0, cs, torch.arange(cs.numel()), reduce="amin")
    has = first < cs.numel()
    target[has] = cd[first[has]]


def group_components(means: torch.Tensor, obj_feats: torch.Tensor, labels: torch.Tensor,
                     config: InstanceConfig, stuff_label_ids=(), valid: torch.Tensor | None = None,
                     confidence: torch.Tensor | None = None) -> GroupingResult:
    """Connected components of the same-class voxel graph (see the module docstring).

    Args:
        means: ``[N, 3]`` Gaussian centres, world frame, metres.
        obj_feats: ``[N, d_o]`` object-head features (any norm).
        labels: ``[N]`` class ids; ``65535`` (or negative) = unlabeled, never grouped.
        config: grouping thresholds.
        stuff_label_ids: class ids grouped by connectivity alone.
        valid: optional ``[N]`` bool; False Gaussians are not grouped.
        confidence: optional ``[N]`` semantic confidence in [0, 1] (weights the minimum support
            when ``config.spacing > 0`` and ``confidence_weighted_support``).
    """
    n = means.shape[0]
    if not config.voxel_size > 0:
        raise InvalidInputError(f"group_components needs a resolved voxel_size > 0, got {config.voxel_size} "
                                "(InstanceDecoder resolves the automatic size)")
    if means.shape != (n, 3) or obj_feats.ndim != 2 or obj_feats.shape[0] != n or labels.shape != (n,):
        raise InvalidInputError(f"group_components needs means [N,3], obj_feats [N,d], labels [N]; got "
                                f"{tuple(means.shape)}, {tuple(obj_feats.shape)}, {tuple(labels.shape)}")
    labels = labels.long().cpu()
    ok = (labels >= 0) & (labels != UNLABELED)
    if valid is not None:
        ok &= valid.cpu().bool()
    comp = torch.full((n,), -1, dtype=torch.long)
    sel = torch.nonzero(ok).squeeze(1)
    if sel.numel() == 0:
        return GroupingResult(comp, 0)
    m = means[sel].cpu()
    f = torch.nn.functional.normalize(obj_feats[sel].cpu().float(), dim=-1)
    lab = labels[sel]
    stuff_ids = torch.as_tensor(list(stuff_label_ids), dtype=torch.long)
    if config.class_agnostic_things:
        # every thing class in one group: objects come from identity features and adjacency alone
        # (a component's class is its members' majority), so label noise does not shatter objects
        thing_group = int(max(int(lab.max()), int(stuff_ids.max()) if stuff_ids.numel() else 0)) + 1
        lab = torch.where(torch.isin(lab, stuff_ids), lab, torch.full_like(lab, thing_group))
    vox, dims, total = _voxel_grid(m, config.voxel_size)
    ulab, lab_rank = torch.unique(lab, return_inverse=True)
    nl = int(ulab.numel())
    nb_ = 1 << config.feature_buckets
    bucket = feature_bucket(f, config.feature_buckets)
    if total * nl * nb_ > 2.0 ** 62:
        raise InvalidInputError(f"instance voxel grid too large ({total:.3g} voxels x {nl} classes); "
                                f"increase voxel_size ({config.voxel_size})")
    stuff_rank = torch.zeros(nl, dtype=torch.bool)
    if stuff_ids.numel():
        stuff_rank = torch.isin(ulab, stuff_ids)
    bucket = torch.where(stuff_rank[lab_rank], torch.zeros_like(bucket), bucket)  # stuff: one node per voxel
    gkey = (_encode(vox, dims) * nl + lab_rank) * nb_ + bucket
    keys, node_of = torch.unique(gkey, return_inverse=True)          # sorted node keys
    num_nodes = int(keys.numel())
    cell_lab = keys // nb_                                             # sorted as well
    node_lab_rank = cell_lab % nl
    node_feat = torch.zeros(num_nodes, f.shape[1]).index_add_(0, node_of, f)
    node_feat = torch.nn.functional.normalize(node_feat, dim=-1)
    node_count = torch.bincount(node_of, minlength=num_nodes)
    # candidate pairs: nodes of any class in the same voxel or a 26-neighbouring one (each pair once)
    node_cell = cell_lab // nl
    src, dst = _neighbour_pairs(node_cell, dims)
    same_class = node_lab_rank[src] == node_lab_rank[dst]
    sim_all = (node_feat[src] * node_feat[dst]).sum(-1)
    is_stuff = stuff_rank[node_lab_rank[src]]
    thr = config.stuff_feature_threshold
    keep = same_class & (is_stuff | (sim_all > config.feature_threshold))     # stuff: connectivity alone
    root = connected_components(num_nodes, src[keep], dst[keep])
    _, node_comp = torch.unique(root, return_inverse=True)
    ncomp = int(node_comp.max()) + 1
    # every component is one class here (edges join same-class nodes only)
    comp_lab = torch.zeros(ncomp, dtype=torch.long).index_put_((node_comp,), node_lab_rank)
    if thr > -1 and bool(stuff_rank.any()):
        node_comp = split_stuff_from_things(node_comp, stuff_rank[node_lab_rank], node_feat, node_count, src, dst,
                                            thr, config.feature_threshold)
        used, node_comp = torch.unique(node_comp, return_inverse=True)
        ncomp, comp_lab = int(used.numel()), comp_lab[used]
    size = torch.zeros(ncomp, dtype=torch.long).index_add_(0, node_comp, node_count)
    tiny = size < config.min_gaussians
    if config.min_support_area > 0:
        tiny |= support_area(node_comp, ncomp, node_cell, node_of, config,
                            None if confidence is None else confidence[sel].cpu()) < config.min_support_area
    target = torch.arange(ncomp)
    if bool(tiny.any()):
        target[tiny] = -1
        if config.absorb_by_contact:
            _absorb_fragments(target, tiny, node_comp[src], node_comp[dst], sim_all, comp_lab,
                              config.merge_across_classes)
        else:
            sim = sim_all[same_class]
            cs, cd = node_comp[src[same_class]], node_comp[dst[same_class]]
            a = torch.cat([cs, cd])
            b = torch.cat([cd, cs])
            s = torch.cat([sim, sim])
            cand = tiny[a] & ~tiny[b]
            if bool(cand.any()):
                a, b, s = a[cand], b[cand], s[cand]
                order = torch.argsort(s, descending=True, stable=True)
                a, b = a[order], b[order]
                # first (most similar) large neighbour per tiny component
                first = torch.full((ncomp,), a.numel(), dtype=torch.long)
                first.scatter_reduce_(0, a, torch.arange(a.numel()), reduce="amin")
                has = first < a.numel()
                target[has] = b[first[has]]
            rest = tiny & (target < 0)
            if config.merge_across_classes and bool(rest.any()) and bool((~tiny).any()):
                _merge_across_classes(target, rest, tiny, node_comp, node_cell, cell_lab, node_feat, nl, dims)
    node_target = target[node_comp]
    kept = node_target >= 0
    _, dense = torch.unique(node_target[kept], return_inverse=True)
    node_final = torch.full((num_nodes,), -1, dtype=torch.long)
    node_final[kept] = dense
    comp[sel] = node_final[node_of]
    return GroupingResult(comp, int(dense.max()) + 1 if dense.numel() else 0)


def _majority(c: torch.Tensor, lab: torch.Tensor, num: int) -> torch.Tensor:
    """``[num]`` most common ``lab`` per group ``c`` (ties: smallest label; empty: UNLABELED)."""
    out = torch.full((num,), UNLABELED, dtype=torch.long)
    if c.numel() == 0:
        return out
    pairs, cnt = torch.unique(torch.stack([c, lab], 1), dim=0, return_counts=True)  # sorted by (c, lab)
    order = torch.argsort(cnt, descending=True, stable=True)                         # ties keep small lab
    pc, pl = pairs[order, 0], pairs[order, 1]
    first = torch.full((num,), pc.numel(), dtype=torch.long).scatter_reduce(
        0, pc, torch.arange(pc.numel()), reduce="amin")
    has = first < pc.numel()
    out[has] = pl[first[has]]
    return out


def component_stats(comp: torch.Tensor, num: int, means: torch.Tensor, obj_feats: torch.Tensor,
                    labels: torch.Tensor, lang_feats: torch.Tensor | None = None,
                    confidence: torch.Tensor | None = None, gaussian_ids: torch.Tensor | None = None
                    ) -> ComponentStats:
    """Statistics of ``num`` components given per-Gaussian ``comp`` ([N], -1 ignored)."""
    sel = comp >= 0
    c = comp[sel]
    m = means[sel].double().cpu()
    cnt = torch.bincount(c, minlength=num)
    den = cnt.clamp_min(1).double()[:, None]
    centroid = torch.zeros(num, 3, dtype=torch.float64).index_add_(0, c, m) / den
    bmin = torch.full((num, 3), float("inf"), dtype=torch.float64).scatter_reduce(
        0, c[:, None].expand(-1, 3), m, reduce="amin")
    bmax = torch.full((num, 3), float("-inf"), dtype=torch.float64).scatter_reduce(
        0, c[:, None].expand(-1, 3), m, reduce="amax")
    f = torch.nn.functional.normalize(obj_feats[sel].float().cpu(), dim=-1)
    proto = torch.nn.functional.normalize(torch.zeros(num, f.shape[1]).index_add_(0, c, f), dim=-1)
    lab = _majority(c, labels[sel].long().cpu(), num)
    emb = None
    if lang_feats is not None:
        lf = torch.nn.functional.normalize(lang_feats[sel].float().cpu(), dim=-1)
        emb = torch.nn.functional.normalize(torch.zeros(num, lf.shape[1]).index_add_(0, c, lf), dim=-1)
    if confidence is not None:
        score = (torch.zeros(num, dtype=torch.float64).index_add_(0, c, confidence[sel].double().cpu())
                 / den[:, 0]).float()
    else:
        score = torch.ones(num)
    gid = (gaussian_ids[sel].long().cpu() if gaussian_ids is not None
           else torch.nonzero(sel).squeeze(1))
    min_gid = torch.full((num,), torch.iinfo(torch.long).max, dtype=torch.long).scatter_reduce(
        0, c, gid, reduce="amin")
    return ComponentStats(cnt, lab, proto, centroid.float(), bmin.float(), bmax.float(), emb, score, min_gid)


# ----------------------------------------------------------------------------- id association
class IdTracker:
    """Persistent id association of one map's objects (see the module docstring): one
    :class:`TrackedObject` per id; ids start at 1 and are never reused."""

    def __init__(self, config: InstanceConfig | None = None) -> None:
        self.config = config or InstanceConfig()
        self.entries: dict[int, TrackedObject] = {}
        self.next_id = 1

    def active_ids(self) -> list[int]:
        return sorted(i for i, e in self.entries.items() if e.active)

    def assign(self, comp: torch.Tensor, prev_ids: torch.Tensor, stats: ComponentStats,
               region_entries: set[int]) -> torch.Tensor:
        """Persistent id for each of the C components of a regrouped region.

        Args:
            comp: ``[M]`` component index per regrouped Gaussian (-1 none).
            prev_ids: ``[M]`` previous persistent id of the same Gaussians (0 none).
            stats: statistics of the C components.
            region_entries: ids of the entries whose Gaussians were all inside the region; those
                not matched here are retired.

        Returns:
            ``[C]`` int64 persistent ids; the matched/new entries are updated from ``stats``.
        """
        cfg = self.config
        num = int(stats.count.numel())
        out = torch.zeros(num, dtype=torch.long)
        used_c = torch.zeros(num, dtype=torch.bool)
        used_e: set[int] = set()
        # 1) Gaussian-id overlap
        has = (comp >= 0) & (prev_ids > 0)
        if bool(has.any()):
            c, p = comp[has], prev_ids[has].long()
            labelled = torch.bincount(c, minlength=num)
            pairs, cnt = torch.unique(torch.stack([c, p], 1), dim=0, return_counts=True)
            order = torch.argsort(cnt, descending=True, stable=True)
            for (ci, pi), k in zip(pairs[order].tolist(), cnt[order].tolist()):
                if used_c[ci] or pi in used_e:
                    continue
                e = self.entries.get(pi)
                if e is None:
                    continue
                denom = max(1, min(int(labelled[ci]), e.count))
                if k / denom < cfg.min_overlap_fraction:
                    continue
                out[ci] = pi
                used_c[ci] = True
                used_e.add(pi)
        # 2) prototype + spatial overlap against vanished (retired or unmatched in-region) entries
        free = [i for i, e in self.entries.items()
                if i not in used_e and (not e.active or i in region_entries)]
        rest = torch.nonzero(~used_c).squeeze(1)
        if free and rest.numel():
            fe = [self.entries[i] for i in free]
            proto = torch.stack([e.prototype for e in fe])
            flab = torch.tensor([e.label_id for e in fe])
            fmin = torch.stack([e.bbox_min for e in fe]) - cfg.spatial_margin
            fmax = torch.stack([e.bbox_max for e in fe]) + cfg.spatial_margin
            sim = stats.prototype[rest] @ proto.T                                   # [R, F]
            inter = ((stats.bbox_min[rest][:, None] <= fmax[None]) &
                     (stats.bbox_max[rest][:, None] >= fmin[None])).all(-1)
            ok = (sim > cfg.prototype_threshold) & inter & (stats.label[rest][:, None] == flab[None])
            r_idx, f_idx = torch.nonzero(ok, as_tuple=True)
            order = torch.argsort(sim[r_idx, f_idx], descending=True, stable=True)
            for ri, fi in zip(r_idx[order].tolist(), f_idx[order].tolist()):
                ci, ei = int(rest[ri]), free[fi]
                if used_c[ci] or ei in used_e:
                    continue
                out[ci] = ei
                used_c[ci] = True
                used_e.add(ei)
        # 3) new ids, in a deterministic order (smallest Gaussian id first)
        rest = torch.nonzero(~used_c).squeeze(1)
        for ci in rest[torch.argsort(stats.min_gid[rest], stable=True)].tolist():
            out[ci] = self.next_id
            self.next_id += 1
        # update entries; retire the vanished
        for ci in range(num):
            self._set_entry(int(out[ci]), stats, ci)
        assigned = set(out.tolist())
        for i in region_entries:
            if i not in assigned and i in self.entries:
                self.entries[i].active = False
                self.entries[i].count = 0
        return out

    def _set_entry(self, iid: int, s: ComponentStats, ci: int) -> None:
        self.entries[iid] = TrackedObject(
            iid, int(s.label[ci]), s.prototype[ci].clone(), s.centroid[ci].clone(), s.bbox_min[ci].clone(),
            s.bbox_max[ci].clone(), int(s.count[ci]),
            None if s.embedding is None else s.embedding[ci].clone(), float(s.score[ci]), True)

    def refresh(self, ids: torch.Tensor, stats: ComponentStats) -> None:
        """Overwrite the records of existing ``ids`` ([C]) from ``stats`` (membership unchanged)."""
        for ci, iid in enumerate(ids.tolist()):
            if stats.count[ci] > 0:
                self._set_entry(int(iid), stats, ci)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, json-able metadata) for saving with the map."""
        ids = sorted(self.entries)
        es = [self.entries[i] for i in ids]
        t: dict[str, torch.Tensor] = {}
        if es:
            t = {"ids": torch.tensor(ids, dtype=torch.long),
                 "label": torch.tensor([e.label_id for e in es], dtype=torch.long),
                 "prototype": torch.stack([e.prototype for e in es]).float().contiguous(),
                 "centroid": torch.stack([e.centroid for e in es]).float().contiguous(),
                 "bbox_min": torch.stack([e.bbox_min for e in es]).float().contiguous(),
                 "bbox_max": torch.stack([e.bbox_max for e in es]).float().contiguous(),
                 "count": torch.tensor([e.count for e in es], dtype=torch.long),
                 "score": torch.tensor([e.score for e in es], dtype=torch.float32),
                 "active": torch.tensor([e.active for e in es], dtype=torch.bool)}
            if all(e.embedding is not None for e in es):
                t["embedding"] = torch.stack([e.embedding for e in es]).float().contiguous()
        return t, {"next_id": self.next_id}

    def load_state_dict(self, t: dict[str, torch.Tensor], meta: dict) -> None:
        self.entries = {}
        self.next_id = int(meta.get("next_id", 1))
        if not t:
            return
        for k, iid in enumerate(t["ids"].tolist()):
            self.entries[iid] = TrackedObject(
                iid, int(t["label"][k]), t["prototype"][k].clone(), t["centroid"][k].clone(),
                t["bbox_min"][k].clone(), t["bbox_max"][k].clone(), int(t["count"][k]),
                t["embedding"][k].clone() if "embedding" in t else None, float(t["score"][k]),
                bool(t["active"][k]))
        self.next_id = max(self.next_id, max(self.entries, default=0) + 1)


@dataclass
class RegroupResult:
    """Outcome of :meth:`InstanceDecoder.regroup`."""

    instance_ids: torch.Tensor
    """[N] int64 persistent id per Gaussian (0: none)."""
    region: torch.Tensor
    """[N] bool Gaussians that were regrouped."""
    changed: list[int] = field(default_factory=list)
    """Ids whose entry was created or updated."""
    retired: list[int] = field(default_factory=list)
    """Ids retired by this call."""


class InstanceDecoder:
    """Groups Gaussians into objects and keeps their persistent ids (owns an :class:`IdTracker`)."""

    def __init__(self, config: InstanceConfig | None = None) -> None:
        self.config = config or InstanceConfig()
        self.config.validate()
        self.tracker = IdTracker(self.config)
        self.code_prototypes: torch.Tensor | None = None
        """``[K, d_o]`` unit prototypes of the scene-agnostic GOCL codebook, or None."""
        self.voxel_size: float | None = self.config.voxel_size if self.config.voxel_size > 0 else None
        """Grouping voxel edge in use (resolved at the first regrouping when automatic)."""
        self.spacing: float | None = self.config.spacing if self.config.spacing > 0 else None
        """The map's sample spacing in use (measured at the first regrouping when automatic)."""

    @property
    def codebook(self) -> IdTracker:
        """Former name of :attr:`tracker` (kept for callers written before the rename)."""
        return self.tracker

    @codebook.setter
    def codebook(self, value: IdTracker) -> None:
        self.tracker = value

    def set_code_prototypes(self, prototypes: torch.Tensor | None) -> None:
        """Give the ``[K, d_o]`` prototypes of a GOCL codebook (in the object-feature space), so
        records carry ``code_id``; None forgets them."""
        if prototypes is not None:
            if prototypes.ndim != 2 or prototypes.shape[0] < 1:
                raise InvalidInputError(f"code prototypes must be [K, d], got {tuple(prototypes.shape)}")
            prototypes = torch.nn.functional.normalize(prototypes.detach().float().cpu(), dim=-1)
        self.code_prototypes = prototypes

    def resolve_spacing(self, means: torch.Tensor | None) -> float | None:
        """The sample spacing in use; the automatic one is measured once from ``means`` ([N, 3])
        (:func:`median_knn_distance`). None while there is nothing to measure."""
        if self.config.spacing > 0:
            self.spacing = float(self.config.spacing)
        elif self.config.spacing < 0:
            self.spacing = None
        elif self.spacing is None and means is not None and means.shape[0] > self.config.spacing_knn:
            measured = median_knn_distance(means, self.config.spacing_knn)
            # a map of mostly duplicated points has no measurable spacing yet: nothing is frozen
            # (a frozen 0 would also make the saved map unloadable)
            self.spacing = measured if measured > 0 else None
        return self.spacing

    def resolve_voxel_size(self, scales: torch.Tensor | None) -> float:
        """The voxel size in use; the automatic one is computed once from ``scales`` ([N, 3] stds)
        and the spacing (resolved first, :meth:`resolve_spacing`)."""
        if self.config.voxel_size > 0:
            self.voxel_size = float(self.config.voxel_size)
        elif self.voxel_size is None:
            if scales is None or scales.numel() == 0:
                return 0.05  # nothing to measure yet; not frozen
            med = float(scales.detach().float().max(dim=-1).values.median())
            lo, hi = self.config.auto_voxel_range
            vs = max(self.config.auto_voxel_factor * med, self.spacing or 0.0)
            q = self.config.voxel_quantum
            if q > 0 and vs > 0:
                vs = q * 2.0 ** round(math.log2(vs / q))
            vs = float(min(max(vs, lo), hi))
            if self.config.spacing == 0 and self.spacing is None:
                return vs  # the spacing is not measurable yet (<= spacing_knn Gaussians): not frozen
            self.voxel_size = vs
        return self.voxel_size

    def _cfg(self) -> InstanceConfig:
        return replace(self.config, voxel_size=self.voxel_size or 0.05, spacing=self.spacing or 0.0)

    def expand_region(self, means: torch.Tensor, prev_ids: torch.Tensor, seed: torch.Tensor,
                      touched_ids=()) -> torch.Tensor:
        """Grow ``seed`` ([N] bool) to whole instances: those with a seed Gaussian, those with a
        Gaussian within one voxel of a seed Gaussian, and ``touched_ids``; plus the Gaussians without
        an instance within one voxel of a seed Gaussian."""
        n = means.shape[0]
        region = seed.clone().cpu().bool()
        if n == 0 or not bool(region.any()):
            ids = torch.as_tensor(list(touched_ids), dtype=torch.long)
            if ids.numel():
                region |= torch.isin(prev_ids.cpu(), ids)
            return region
        vox, dims, _ = _voxel_grid(means.cpu(), self._cfg().voxel_size)
        key = _encode(vox, dims)
        seed_keys = torch.unique(key[region])
        near = torch.unique((seed_keys[:, None] + _encode(_ALL_OFFSETS, dims)[None]).reshape(-1))
        near_g = torch.isin(key, near)
        # Gaussians left without an instance next to the change (fragments of an earlier, sparser
        # map) are regrouped too, so a map grown by deltas groups like the same map received whole
        region |= near_g & (prev_ids.cpu() <= 0)
        ids = torch.unique(prev_ids.cpu()[near_g | region])
        ids = torch.cat([ids, torch.as_tensor(list(touched_ids), dtype=torch.long)])
        ids = ids[ids > 0]
        if ids.numel():
            region |= torch.isin(prev_ids.cpu(), ids)
        return region

    def regroup(self, means: torch.Tensor, obj_feats: torch.Tensor, labels: torch.Tensor,
                prev_ids: torch.Tensor, *, region: torch.Tensor | None = None, touched_ids=(),
                stuff_label_ids=(), lang_feats: torch.Tensor | None = None,
                confidence: torch.Tensor | None = None, gaussian_ids: torch.Tensor | None = None,
                valid: torch.Tensor | None = None, scales: torch.Tensor | None = None) -> RegroupResult:
        """Regroup all Gaussians (``region=None``) or the grown ``region`` and update the id tracker.

        Args:
            means: ``[N, 3]`` centres (world). obj_feats: ``[N, d_o]``. labels: ``[N]`` class ids.
            prev_ids: ``[N]`` the Gaussians' current persistent ids (0 none / new Gaussians).
            region: ``[N]`` bool seed of changed Gaussians; grown by :meth:`expand_region`.
            touched_ids: ids of instances that lost Gaussians (e.g. removed from the map).
            stuff_label_ids: class ids grouped by connectivity alone.
            lang_feats / confidence: for the records' embedding and score.
            gaussian_ids: ``[N]`` stable Gaussian ids (deterministic order of new ids).
            valid: optional ``[N]`` bool mask of Gaussians that may be grouped.
            scales: ``[N, 3]`` Gaussian stds (metres), for the automatic voxel size.
        """
        n = means.shape[0]
        self.resolve_spacing(means)
        self.resolve_voxel_size(scales)
        prev_ids = prev_ids.long().cpu()
        if prev_ids.shape != (n,):
            raise InvalidInputError(f"prev_ids must be [{n}], got {tuple(prev_ids.shape)}")
        if region is None:
            region = torch.ones(n, dtype=torch.bool)
            touched = set(self.tracker.active_ids())
        else:
            region = self.expand_region(means, prev_ids, region.cpu().bool(), touched_ids)
            touched = set(int(i) for i in torch.unique(prev_ids[region]).tolist() if i > 0)
            touched |= {int(i) for i in touched_ids}
        idx = torch.nonzero(region).squeeze(1)

        def sub(t):
            return None if t is None else t[idx.to(t.device)].cpu()
        g = group_components(sub(means), sub(obj_feats), sub(labels), self._cfg(), stuff_label_ids,
                             sub(valid), sub(confidence))
        stats = component_stats(g.component, g.num_components, sub(means), sub(obj_feats), sub(labels),
                                sub(lang_feats), sub(confidence), sub(gaussian_ids))
        before = {i for i, e in self.tracker.entries.items() if e.active}
        ids_c = self.tracker.assign(g.component, prev_ids[idx], stats, touched)
        out = prev_ids.clone()
        sub_ids = torch.zeros(idx.numel(), dtype=torch.long)
        has = g.component >= 0
        sub_ids[has] = ids_c[g.component[has]]
        out[idx] = sub_ids
        retired = sorted(before - {i for i, e in self.tracker.entries.items() if e.active})
        return RegroupResult(out, region, sorted(ids_c.tolist()), retired)

    def records(self, label_names: list[str]) -> list[ObjectRecord]:
        """Records of the active objects, sorted by id (with ``code_id`` and ``confidence``)."""
        from chorus_ros.core.objects.support import support_confidence
        ids = self.tracker.active_ids()
        es = [self.tracker.entries[i] for i in ids]
        w = support_confidence([e.count for e in es]) if es else np.zeros(0, np.float32)
        codes = [-1] * len(es)
        cp = self.code_prototypes
        if cp is not None and es:
            feats = torch.stack([e.prototype for e in es]).float()
            if feats.shape[1] != cp.shape[1]:
                raise InvalidInputError(f"code prototypes are {cp.shape[1]}-d but the objects' features are "
                                        f"{feats.shape[1]}-d (set_code_prototypes of another object head?)")
            codes = (feats @ cp.T).argmax(1).tolist()
        out = []
        for k, (iid, e) in enumerate(zip(ids, es)):
            name = label_names[e.label_id] if 0 <= e.label_id < len(label_names) else "unknown"
            emb = (e.embedding.numpy().astype(np.float32) if e.embedding is not None
                   else np.zeros(0, np.float32))
            conf = float(np.clip(e.score, 0.0, 1.0) * w[k])
            out.append(ObjectRecord(iid, e.label_id, name, float(e.score), e.centroid.double().numpy(),
                                    e.bbox_min.double().numpy(), e.bbox_max.double().numpy(), e.count, emb,
                                    int(codes[k]), conf))
        return out


ObjectCodebook = IdTracker
"""Former name of :class:`IdTracker` (it never was a learned codebook; kept so saved-state code and
older callers still import)."""
CodebookEntry = TrackedObject
"""Former name of :class:`TrackedObject`."""
