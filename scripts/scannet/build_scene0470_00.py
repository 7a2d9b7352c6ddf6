#!/usr/bin/env python3
"""Rebuild ScanNet scene0470_00 as a scene folder (Replica layout) from its public sample mesh.

Source: repository skanti/Scan2CAD, ``Assets/scannet-sample/scene0470_00/`` (the decimated
reconstruction ``scene0470_00_vh_clean_2.ply`` with real vertex colours, and
``scene0470_00_vh_clean_2.labels.ply`` with the NYU40 label of every vertex, 0 = unannotated).

What is built (ScanNet's terms forbid redistribution: the output goes to a git-ignored folder,
default /work/data/scannet/scene0470_00, and is never committed):

* ``gaussians.ply``: one flat Gaussian per mesh vertex: centre = vertex, colour = vertex colour,
  disk in the tangent plane (area-weighted vertex normal) with std = half the mean incident edge
  length, 0.15 of that along the normal, opacity 0.95; ground-truth ``label`` (NYU40 id) and
  ``instance`` as extra properties (the reader strips them before the model sees the map).
* ``instance``: ScanNet's instance annotation is not in the sample, so instances are the
  connected components of the mesh restricted to edges between equally labelled vertices (an
  approximation: touching objects of one class merge, e.g. a row of chairs in contact).
* Posed views rendered *by us* from the labelled Gaussians with the package's renderer (the
  sample has no camera poses): a loop at 1.4 m above the floor looking across the room, plus
  views at randomly chosen object vertices (fixed seed); rgb, depth (mm), semantic_class (NYU40
  id, 0 = unlabeled) and semantic_instance (0 = none); pixels with accumulated alpha < 0.3 are
  unlabeled, as in ``export_dataset``.
* ``classes.json`` with the 40 NYU40 names (ids 1..40, unlabeled_id 0, instance_none_id 0).

Usage (the fetch tool gives a git dir, e.g. /work/.mirror/skanti+Scan2CAD/repo; a folder holding
the two PLY files works too)::

    .venv/bin/python scripts/scannet/build_scene0470_00.py --source /work/.mirror/skanti+Scan2CAD/repo
    chorus-eval --dataset /work/data/scannet/scene0470_00 --checkpoint checkpoints/demo \\
        --labels-map scripts/scannet/nyu40_to_demo.yaml --json /work/data/scannet/scene0470_00.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (NYU40, build_trajectory, knn_spacing, label_components, make_gaussians,  # noqa: E402
                    mean_edge_length, read_mesh_ply, read_source, vertex_normals)

PREFIX = "Assets/scannet-sample/scene0470_00/"


def voxel_keep(xyz: np.ndarray, voxel: float) -> np.ndarray:
    """Indices of one vertex per occupied voxel: the one nearest the mean of the voxel's vertices."""
    key = np.floor(xyz / voxel).astype(np.int64)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    cnt = np.bincount(inv)
    mean = np.stack([np.bincount(inv, xyz[:, j]) for j in range(3)], 1) / cnt[:, None]
    d = np.linalg.norm(xyz - mean[inv], axis=1)
    order = np.lexsort((d, inv))
    first = np.ones(len(order), bool)
    first[1:] = inv[order][1:] != inv[order][:-1]
    return np.sort(order[first])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="git dir of skanti/Scan2CAD, or a folder with the two PLYs")
    ap.add_argument("--out", default="/work/data/scannet/scene0470_00")
    ap.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    ap.add_argument("--hfov", type=float, default=58.0, help="horizontal field of view, degrees (ScanNet colour ~58)")
    ap.add_argument("--loop-views", type=int, default=16)
    ap.add_argument("--object-views", type=int, default=8)
    ap.add_argument("--voxel", type=float, default=0.0,
                    help="sensitivity check only: keep one vertex per voxel of this size (m), the one nearest the "
                         "voxel's mean, std = half its mean distance to the 4 nearest kept vertices (default 0: "
                         "every vertex)")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from tqdm import tqdm

    from chorus_ros.core.datasets import Intrinsics, SceneFrame, write_scene_folder
    from chorus_ros.core.geometry import Camera
    from chorus_ros.core.labels import UNLABELED
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth

    v_col, faces = read_mesh_ply(read_source(a.source, PREFIX + "scene0470_00_vh_clean_2.ply"))
    v_lab, faces2 = read_mesh_ply(read_source(a.source, PREFIX + "scene0470_00_vh_clean_2.labels.ply"))
    xyz = np.stack([v_col["x"], v_col["y"], v_col["z"]], 1).astype(np.float64)
    xyz2 = np.stack([v_lab["x"], v_lab["y"], v_lab["z"]], 1).astype(np.float64)
    if xyz.shape != xyz2.shape or not np.allclose(xyz, xyz2, atol=1e-5) or not np.array_equal(faces, faces2):
        raise SystemExit("the coloured and the labelled mesh differ")
    label = v_lab["label"].astype(np.int64)
    label[(label < 0) | (label > 40)] = 0
    rgb = np.stack([v_col["red"], v_col["green"], v_col["blue"]], 1)
    inst = label_components(faces, label, ignore=0)
    normals = vertex_normals(xyz, faces)
    poses = build_trajectory(xyz, label, n_loop=a.loop_views, n_obj=a.object_views)  # from the full mesh
    if a.voxel > 0:
        keep = voxel_keep(xyz, a.voxel)
        g = make_gaussians(xyz[keep], rgb[keep], 0.5 * knn_spacing(xyz[keep], k=4), normals=normals[keep],
                           label=label[keep], instance=inst[keep])
    else:
        g = make_gaussians(xyz, rgb, 0.5 * mean_edge_length(xyz, faces), normals=normals, label=label, instance=inst)
    print(f"{len(g)} Gaussians, {len(faces)} faces, {int(inst.max())} label components, "
          f"{(label == 0).mean():.1%} vertices unannotated", file=sys.stderr)

    w, h = a.size
    K = Camera.intrinsics_from_fov(w, h, a.hfov)
    intr = Intrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), w, h)
    frames = []
    for i, c2w in enumerate(tqdm(poses, desc="render views", unit="view")):
        cam = intr.camera(c2w)
        gt = render_ground_truth(g, cam, RenderSettings(), min_alpha=0.3)
        sem = gt.semantic.numpy()
        ins = gt.instance.numpy()
        frames.append(SceneFrame(i, c2w, np.clip(np.round(gt.rgb.numpy() * 255), 0, 255).astype(np.uint8),
                                 np.where(gt.alpha.numpy() >= 0.3, gt.depth.numpy(), 0).astype(np.float32),
                                 np.where(sem == UNLABELED, 0, sem).astype(np.uint16),
                                 np.where(ins == UNLABELED, 0, ins).astype(np.uint16), cam))
    root = write_scene_folder(a.out, gaussians=g, classes={i + 1: n for i, n in enumerate(NYU40)}, intrinsics=intr,
                              frames=frames, unlabeled_id=0, instance_none_id=0, overwrite=a.overwrite)
    lab_px = np.mean([(f.semantic != 0).mean() for f in frames])
    print(f"wrote {root}: {len(frames)} views at {w}x{h}, {lab_px:.1%} of pixels labelled", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
