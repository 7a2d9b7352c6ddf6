#!/usr/bin/env python3
"""Rebuild ScanNet training rooms (real geometry) as scene folders from a public point-cloud dump.

Source: repository picwoon/votenet (a fork of facebookresearch/votenet), folder
``scannet/scannet_train_detection_data/``: per scene ``<scene>_vert.npy`` (float32 ``[50000, 6]``:
x y z in ScanNet's axis-aligned frame, z up, r g b 0..255; 50,000 mesh vertices drawn at random
by votenet's preprocessing), ``<scene>_sem_label.npy`` (NYU40 id per point, 0 = unannotated) and
``<scene>_ins_label.npy`` (ScanNet instance id per point, 0 = none). It holds scene0000_00..02
(reserved for independent evaluation: refused here) and twenty others, ``scene0001_00`` ..
``scene0010_01`` (ten rooms, several scanned more than once). None of them is a room we report
as held out (scene0470_00, scene0451_01).

What is built per scene (ScanNet's terms forbid redistribution: the output goes to a git-ignored
folder, default /work/data/scannet/train/<scene>, and is never committed):

* ``gaussians.ply``: one isotropic Gaussian per point, std = half the mean distance to its 4
  nearest neighbours, opacity 0.95, the point's colour; ground-truth ``label`` (NYU40) and
  ``instance`` as extra properties.
* Posed views rendered by us from the labelled Gaussians (the dump has no camera images): a loop
  across the room at 1.4 m plus views at random object points (``common.build_trajectory``);
  rgb, depth, semantic_class (NYU40, 0 = unlabeled), semantic_instance (0 = none).
* ``classes.json``: the 40 NYU40 names.

They train the encoder on real geometry (``data.folders`` of a training config, with
``data.folders_labels_map: scripts/scannet/nyu40_to_demo.yaml``; config/train/demo_real.yaml).

Usage (the fetch tool gives the git dir)::

    .venv/bin/python scripts/scannet/build_votenet_rooms.py --source /work/.mirror/picwoon+votenet/repo/.git
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NYU40, build_trajectory, knn_spacing, make_gaussians, read_source  # noqa: E402

PREFIX = "scannet/scannet_train_detection_data/"
SCENES = ["scene0001_00", "scene0001_01", "scene0002_00", "scene0002_01", "scene0003_00", "scene0003_01",
          "scene0003_02", "scene0004_00", "scene0005_00", "scene0005_01", "scene0006_00", "scene0006_01",
          "scene0006_02", "scene0007_00", "scene0008_00", "scene0009_00", "scene0009_01", "scene0009_02",
          "scene0010_00", "scene0010_01"]
"""The dump's scenes we may train on (every one but the reserved scene0000_*)."""
HELD_OUT = ("scene0000_", "scene0470_00", "scene0451_01")


def build_room(source: str, name: str, out: Path, *, size: tuple[int, int], hfov: float, loop_views: int,
               object_views: int, overwrite: bool) -> str:
    """Write one scene folder; returns a one-line summary."""
    from chorus_ros.core.datasets import Intrinsics, SceneFrame, write_scene_folder
    from chorus_ros.core.geometry import Camera
    from chorus_ros.core.labels import UNLABELED
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth

    if name.startswith(HELD_OUT):
        raise SystemExit(f"{name} is reserved for evaluation; never build it for training")
    vert = np.load(io.BytesIO(read_source(source, f"{PREFIX}{name}_vert.npy")))
    sem = np.load(io.BytesIO(read_source(source, f"{PREFIX}{name}_sem_label.npy"))).astype(np.int64)
    ins = np.load(io.BytesIO(read_source(source, f"{PREFIX}{name}_ins_label.npy"))).astype(np.int64)
    if vert.ndim != 2 or vert.shape[1] != 6 or len(sem) != len(vert) or len(ins) != len(vert):
        raise SystemExit(f"{name}: unexpected arrays {vert.shape}, {sem.shape}, {ins.shape}")
    xyz = vert[:, :3].astype(np.float64)
    rgb = np.clip(np.round(vert[:, 3:6]), 0, 255).astype(np.uint8)
    sem[(sem < 0) | (sem > 40)] = 0
    ins = np.where(sem == 0, 0, ins)
    g = make_gaussians(xyz, rgb, 0.5 * knn_spacing(xyz, k=4), label=sem, instance=ins)
    poses = build_trajectory(xyz, sem, n_loop=loop_views, n_obj=object_views)
    w, h = size
    K = Camera.intrinsics_from_fov(w, h, hfov)
    intr = Intrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), w, h)
    frames = []
    for i, c2w in enumerate(poses):
        cam = intr.camera(c2w)
        gt = render_ground_truth(g, cam, RenderSettings(), min_alpha=0.3)
        s, n = gt.semantic.numpy(), gt.instance.numpy()
        frames.append(SceneFrame(i, c2w, np.clip(np.round(gt.rgb.numpy() * 255), 0, 255).astype(np.uint8),
                                 np.where(gt.alpha.numpy() >= 0.3, gt.depth.numpy(), 0).astype(np.float32),
                                 np.where(s == UNLABELED, 0, s).astype(np.uint16),
                                 np.where(n == UNLABELED, 0, n).astype(np.uint16), cam))
    root = write_scene_folder(out, gaussians=g, classes={i + 1: c for i, c in enumerate(NYU40)}, intrinsics=intr,
                              frames=frames, unlabeled_id=0, instance_none_id=0, overwrite=overwrite)
    lab_px = np.mean([(f.semantic != 0).mean() for f in frames])
    return (f"{root}: {len(g)} Gaussians, {len(np.unique(ins[ins > 0]))} instances, "
            f"{(sem == 0).mean():.1%} unannotated, {len(frames)} views, {lab_px:.1%} of pixels labelled")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="git dir of picwoon/votenet, or a folder with the .npy files")
    ap.add_argument("--out", default="/work/data/scannet/train", help="parent folder of the scene folders")
    ap.add_argument("--scenes", nargs="*", default=SCENES)
    ap.add_argument("--size", type=int, nargs=2, default=[192, 144], metavar=("W", "H"))
    ap.add_argument("--hfov", type=float, default=58.0)
    ap.add_argument("--loop-views", type=int, default=12)
    ap.add_argument("--object-views", type=int, default=6)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in a.scenes:
        print(build_room(a.source, name, Path(a.out) / name, size=tuple(a.size), hfov=a.hfov,
                         loop_views=a.loop_views, object_views=a.object_views, overwrite=a.overwrite),
              file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
