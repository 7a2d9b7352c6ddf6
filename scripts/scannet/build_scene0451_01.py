#!/usr/bin/env python3
"""Rebuild ScanNet scene0451_01 as a 3D-only scene folder (no views) from a public point cloud.

Source: repository francisengelmann/PyViz3D, ``examples/data/scene0451_01.npy``: float32
``[N, 8]`` = x y z, r g b (0..255), semantic, instance per point.

The semantic column is not documented there. Its values (0..20) match the 20 ScanNet benchmark
classes numbered 1..20 in benchmark order with 0 = unannotated: 2 lies flat at z = 0 (floor),
8 spans 0..2.07 m in 11 instances (doors), 9 sits at 1.0..2.06 m (window) and 14 right above it
(curtain), 20 is low furniture (otherfurniture). We read it that way (classes.json names); the
mapping to the demo checkpoint is scripts/scannet/scannet20_to_demo.yaml.

Output (never committed; ScanNet's terms forbid redistribution): ``classes.json`` (ids 1..20,
unlabeled_id 0, instance_none_id 0) and ``gaussians.ply``: one isotropic Gaussian per point
(std = half the mean distance to its 4 nearest neighbours, opacity 0.95, colour of the point),
ground-truth ``label`` / ``instance`` as extra properties (instance 0 for unannotated points).
With no ``rgb/`` folder the scene is scored in 3D only (per-Gaussian mIoU, objects, query top-1).

Usage::

    .venv/bin/python scripts/scannet/build_scene0451_01.py --source /work/.mirror/francisengelmann+PyViz3D/repo
    chorus-eval --dataset /work/data/scannet/scene0451_01 --checkpoint checkpoints/demo \\
        --labels-map scripts/scannet/scannet20_to_demo.yaml
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SCANNET20, knn_spacing, make_gaussians, read_source  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="git dir of francisengelmann/PyViz3D, or a folder with the .npy")
    ap.add_argument("--out", default="/work/data/scannet/scene0451_01")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from chorus_ros.core.datasets import write_scene_folder

    arr = np.load(io.BytesIO(read_source(a.source, "examples/data/scene0451_01.npy")))
    if arr.ndim != 2 or arr.shape[1] != 8:
        raise SystemExit(f"expected an [N, 8] array, got {arr.shape}")
    xyz = arr[:, :3].astype(np.float64)
    rgb = np.clip(np.round(arr[:, 3:6]), 0, 255).astype(np.uint8)
    label = arr[:, 6].astype(np.int64)
    label[(label < 0) | (label > 20)] = 0
    inst = np.where(label == 0, 0, arr[:, 7].astype(np.int64))
    g = make_gaussians(xyz, rgb, 0.5 * knn_spacing(xyz, k=4), label=label, instance=inst)
    root = write_scene_folder(a.out, gaussians=g, classes={i + 1: n for i, n in enumerate(SCANNET20)},
                              unlabeled_id=0, instance_none_id=0, overwrite=a.overwrite)
    print(f"wrote {root}: {len(g)} Gaussians, {len(np.unique(inst[inst > 0]))} instances, "
          f"{(label == 0).mean():.1%} points unannotated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
