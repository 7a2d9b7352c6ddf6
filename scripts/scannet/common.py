"""Shared helpers of the ScanNet rebuild scripts: reading the public source files (from a git
mirror or plain files), mesh/point-cloud -> 3D Gaussians, connected components, a simple posed
trajectory inside a room. Nothing here is ScanNet data; the scripts write their output under a
git-ignored folder (default /work/data/scannet), never into the repository.
"""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import torch

NYU40 = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
         "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
         "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
         "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
         "otherprop"]
"""NYU40 class names, ids 1..40 (0 = unannotated), as used by ScanNet's ``*.labels.ply``."""

SCANNET20 = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
             "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub",
             "otherfurniture"]
"""The 20 ScanNet benchmark classes in benchmark order (here numbered 1..20, 0 = unannotated)."""


def read_source(source: str, path: str) -> bytes:
    """Bytes of ``path`` from ``source``: a bare git directory (``git --git-dir=SOURCE show
    HEAD:PATH``, e.g. a mirror made by the fetch tool) or a folder holding the file."""
    src = Path(source)
    if (src / "HEAD").is_file() and (src / "objects").is_dir():
        return subprocess.run(["git", f"--git-dir={src}", "show", f"HEAD:{path}"], check=True,
                              capture_output=True).stdout
    for cand in (src / path, src / Path(path).name):
        if cand.is_file():
            return cand.read_bytes()
    raise FileNotFoundError(f"{path} not found in {source} (a git dir or a folder with the file)")


_PLY_NP = {"float": "f4", "uchar": "u1", "ushort": "u2", "int": "i4", "uint": "u4", "short": "i2",
           "char": "i1", "double": "f8"}


def read_mesh_ply(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(vertex structured array, faces [F, 3] int64) of a binary little-endian triangle mesh PLY
    whose vertex element comes first and whose face lists are ``uchar int``."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError("expected a binary_little_endian PLY")
    elements: list[list] = []
    for ln in lines:
        p = ln.split()
        if p[0] == "element":
            elements.append([p[1], int(p[2]), []])
        elif p[0] == "property":
            elements[-1][2].append(p[1:])
    (vn, vc, vprops), (fn, fc, fprops) = elements[0], elements[1]
    if vn != "vertex" or fn != "face" or fprops[0][:3] != ["list", "uchar", "int"]:
        raise ValueError(f"unexpected PLY layout: {elements}")
    vdt = np.dtype([(q[1], "<" + _PLY_NP[q[0]]) for q in vprops])
    verts = np.frombuffer(data, vdt, vc, end)
    fdt = np.dtype([("n", "u1"), ("v", "<i4", (3,))])
    faces = np.frombuffer(data, fdt, fc, end + vc * vdt.itemsize)
    if not np.all(faces["n"] == 3):
        raise ValueError("only triangle meshes are supported")
    return verts, faces["v"].astype(np.int64)


def knn_spacing(xyz: np.ndarray, k: int = 4, chunk: int = 4096) -> np.ndarray:
    """[N] mean distance to the ``k`` nearest other points (torch, chunked, voxel-bucketed)."""
    pts = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))
    n = len(pts)
    out = torch.empty(n)
    # bucket by a coarse grid so each chunk only compares with its neighbourhood
    cell = 0.2
    key = torch.floor(pts / cell).long()
    order = torch.argsort(key[:, 0] * 1_000_003 ** 2 + key[:, 1] * 1_000_003 + key[:, 2])
    for s in range(0, n, chunk):
        idx = order[s:s + chunk]
        q = pts[idx]
        lo, hi = q.min(0).values - cell, q.max(0).values + cell
        m = ((pts >= lo) & (pts <= hi)).all(1)
        cand = pts[m]
        d = torch.cdist(q, cand)
        kk = min(k + 1, cand.shape[0])
        out[idx] = d.topk(kk, largest=False).values[:, 1:].mean(1)
    return out.numpy()


def vertex_normals(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[N, 3] unit area-weighted vertex normals of a triangle mesh."""
    a, b, c = xyz[faces[:, 0]], xyz[faces[:, 1]], xyz[faces[:, 2]]
    fnorm = np.cross(b - a, c - a)
    vn = np.zeros_like(xyz, dtype=np.float64)
    for j in range(3):
        np.add.at(vn, faces[:, j], fnorm)
    n = np.linalg.norm(vn, axis=1, keepdims=True)
    vn = np.where(n > 1e-12, vn / np.maximum(n, 1e-12), np.array([0.0, 0.0, 1.0]))
    return vn


def mean_edge_length(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[N] mean length of the mesh edges at each vertex (isolated vertices: median of all)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    ln = np.linalg.norm(xyz[e[:, 0]] - xyz[e[:, 1]], axis=1)
    s = np.zeros(len(xyz))
    c = np.zeros(len(xyz))
    for j in range(2):
        np.add.at(s, e[:, j], ln)
        np.add.at(c, e[:, j], 1)
    return np.where(c > 0, s / np.maximum(c, 1), np.median(ln))


def frames_from_normals(n: np.ndarray) -> np.ndarray:
    """[N, 4] wxyz quaternions of rotations whose local z axis is the unit normal ``n``."""
    n = n / np.linalg.norm(n, axis=1, keepdims=True)
    helper = np.where(np.abs(n[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    t1 = np.cross(helper, n)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(n, t1)
    r = np.stack([t1, t2, n], axis=2)  # columns
    # rotation matrix -> quaternion (vectorised Shepperd)
    m00, m11, m22 = r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]
    q = np.zeros((len(n), 4))
    tr = m00 + m11 + m22
    c0 = tr > 0
    s = np.sqrt(np.maximum(tr + 1.0, 1e-12)) * 2
    q[c0] = np.stack([0.25 * s, (r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s,
                      (r[:, 1, 0] - r[:, 0, 1]) / s], 1)[c0]
    c1 = ~c0 & (m00 > m11) & (m00 > m22)
    s = np.sqrt(np.maximum(1.0 + m00 - m11 - m22, 1e-12)) * 2
    q[c1] = np.stack([(r[:, 2, 1] - r[:, 1, 2]) / s, 0.25 * s, (r[:, 0, 1] + r[:, 1, 0]) / s,
                      (r[:, 0, 2] + r[:, 2, 0]) / s], 1)[c1]
    c2 = ~c0 & ~c1 & (m11 > m22)
    s = np.sqrt(np.maximum(1.0 + m11 - m00 - m22, 1e-12)) * 2
    q[c2] = np.stack([(r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 0, 1] + r[:, 1, 0]) / s, 0.25 * s,
                      (r[:, 1, 2] + r[:, 2, 1]) / s], 1)[c2]
    c3 = ~c0 & ~c1 & ~c2
    s = np.sqrt(np.maximum(1.0 + m22 - m00 - m11, 1e-12)) * 2
    q[c3] = np.stack([(r[:, 1, 0] - r[:, 0, 1]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s,
                      (r[:, 1, 2] + r[:, 2, 1]) / s, 0.25 * s], 1)[c3]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def make_gaussians(xyz, rgb_u8, sigma_t, *, normals=None, flat: float = 0.15, opacity: float = 0.95,
                   label=None, instance=None):
    """GaussianArrays: one Gaussian per point; tangent std ``sigma_t`` [N] metres; with
    ``normals`` a disk ``flat`` times as thin along the normal, else isotropic; extras label /
    instance (ground truth, stripped by the reader before the model sees the map)."""
    from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc

    n = len(xyz)
    rgb = torch.from_numpy(np.asarray(rgb_u8, dtype=np.float32) / 255.0)
    st = np.maximum(np.asarray(sigma_t, dtype=np.float64), 1e-3)
    if normals is not None:
        scales = np.stack([st, st, np.maximum(st * flat, 5e-4)], 1)
        quats = frames_from_normals(np.asarray(normals, dtype=np.float64))
    else:
        scales = np.stack([st, st, st], 1)
        quats = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))
    extras = {}
    if label is not None:
        extras["label"] = torch.from_numpy(np.asarray(label, dtype=np.int64))
    if instance is not None:
        extras["instance"] = torch.from_numpy(np.asarray(instance, dtype=np.int64))
    logit = float(np.log(opacity / (1 - opacity)))
    return GaussianArrays(torch.from_numpy(np.asarray(xyz, dtype=np.float32)), rgb_to_sh_dc(rgb)[:, None, :],
                          torch.full((n,), logit), torch.from_numpy(np.log(scales).astype(np.float32)),
                          torch.from_numpy(quats.astype(np.float32)), torch.arange(n, dtype=torch.int64), extras)


def label_components(faces: np.ndarray, label: np.ndarray, ignore: int = 0) -> np.ndarray:
    """[N] instance ids (1..M; 0 for ``ignore``-labelled vertices): connected components of the
    mesh graph restricted to edges whose two vertices share a label."""
    n = len(label)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = e[(label[e[:, 0]] == label[e[:, 1]]) & (label[e[:, 0]] != ignore)]
    comp = np.arange(n)
    while True:  # min-label propagation with pointer jumping
        a, b = comp[e[:, 0]], comp[e[:, 1]]
        m = np.minimum(a, b)
        new = comp.copy()
        np.minimum.at(new, e[:, 0], m)
        np.minimum.at(new, e[:, 1], m)
        new = new[new]
        if np.array_equal(new, comp):
            break
        comp = new
    out = np.zeros(n, np.int64)
    keep = label != ignore
    _, inv = np.unique(comp[keep], return_inverse=True)
    out[keep] = inv + 1
    return out


STUFF_NYU = {0, 1, 2, 22}
"""NYU40 ids that are not objects: unannotated, wall, floor, ceiling."""


def build_trajectory(xyz: np.ndarray, label: np.ndarray, *, n_loop: int, n_obj: int, seed: int = 0):
    """[V, 4, 4] camera-to-world poses (optical frame) inside the room (z up)."""
    from chorus_ros.core.geometry import look_at_pose

    fl = xyz[label == 2]
    z0 = float(np.percentile(fl[:, 2] if len(fl) else xyz[:, 2], 5))
    lo, hi = np.percentile(xyz[:, :2], 3, axis=0), np.percentile(xyz[:, :2], 97, axis=0)
    c, half = (lo + hi) / 2, (hi - lo) / 2
    pts = torch.from_numpy(xyz.astype(np.float32))

    def free(p, clearance=0.3):
        return float(torch.cdist(torch.tensor(p, dtype=torch.float32)[None], pts).min()) >= clearance

    def settle(eye):
        for _ in range(8):
            if free(eye):
                return eye
            eye = eye + 0.3 * (np.array([c[0], c[1], z0 + 1.4]) - eye)
        return eye

    poses = []
    for t in np.linspace(0, 2 * math.pi, n_loop, endpoint=False):
        eye = settle(np.array([c[0] + 0.5 * half[0] * math.cos(t), c[1] + 0.5 * half[1] * math.sin(t), z0 + 1.4]))
        yaw = t + math.pi + 0.6 * math.sin(3 * t)
        pitch = math.radians(-20.0)
        d = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
        poses.append(look_at_pose(eye, eye + d))
    rng = np.random.default_rng(seed)
    things = np.nonzero(~np.isin(label, list(STUFF_NYU)))[0]
    for i in rng.choice(things, size=min(n_obj, len(things)), replace=False):
        tgt = xyz[i].astype(np.float64)
        to_c = np.array([c[0], c[1]]) - tgt[:2]
        to_c /= max(np.linalg.norm(to_c), 1e-6)
        eye = np.array([tgt[0] + 1.6 * to_c[0], tgt[1] + 1.6 * to_c[1], min(max(tgt[2] + 0.8, z0 + 0.6), z0 + 2.0)])
        eye[:2] = np.clip(eye[:2], lo + 0.2, hi - 0.2)
        poses.append(look_at_pose(settle(eye), tgt))
    return np.stack(poses)
