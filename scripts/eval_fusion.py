#!/usr/bin/env python3
"""Fusion on/off on held-out and shifted synthetic scenes (docs/fusion.md).

    python scripts/eval_fusion.py --ckpt .cache/h7/ckpt/fusion --out .cache/h7/eval/fusion.json \
        --pictures docs/img/fusion

For each scene: the pipeline (checkpoint encoder + fusion/ decoder) encodes the map once and
renders a moving camera (consecutive views of the synthetic loop trajectory) with
``per_view.fusion`` = 'off' and = 'rendered' (and 'camera' with a photometrically distorted copy
of the rendered image standing in for a real camera). Scores per mode:

* mIoU (percent, pooled confusion over the scene set; pixels with ground truth and alpha >= 0.5);
* boundary F-score (percent): predicted vs ground-truth class boundaries (4-neighbour label
  changes), a boundary pixel matches when the other map has one within 2 px;
* flicker (percent): pixels of view t re-projected into view t+1 with the rendered depth that
  land on the same surface (depth agrees within 5 cm and the ground-truth class is the same) but
  get a different predicted label (both labelled);
* cost: mean wall time of ``render_view`` per mode at the requested sizes (CPU, shared machine).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)


def boundaries(lab: np.ndarray) -> np.ndarray:
    b = np.zeros(lab.shape, bool)
    b[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    b[1:, :] |= lab[1:, :] != lab[:-1, :]
    return b


def dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(m, dy, 0), dx, 1)
    return out


def boundary_counts(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, tol: int = 2) -> tuple[int, int, int, int]:
    bp, bg = boundaries(np.where(valid, pred, 65535)) & valid, boundaries(np.where(valid, gt, 65535)) & valid
    return int((bp & dilate(bg, tol)).sum()), int(bp.sum()), int((bg & dilate(bp, tol)).sum()), int(bg.sum())


def reproject(depth_a, cam_a, cam_b):
    """Pixel (v, u) of view b hit by every pixel of view a (or -1), and its depth in b."""
    h, w = depth_a.shape
    K = cam_a.K.numpy().astype(np.float64)
    v, u = np.mgrid[0:h, 0:w]
    z = depth_a.astype(np.float64)
    x = (u + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (v + 0.5 - K[1, 2]) / K[1, 1] * z
    pc = np.stack([x, y, z, np.ones_like(z)], -1).reshape(-1, 4)
    world = pc @ np.linalg.inv(cam_a.viewmat.numpy().astype(np.float64)).T
    pb = world @ cam_b.viewmat.numpy().astype(np.float64).T
    Kb = cam_b.K.numpy().astype(np.float64)
    zb = pb[:, 2]
    ub = np.floor(Kb[0, 0] * pb[:, 0] / np.maximum(zb, 1e-6) + Kb[0, 2]).astype(int)
    vb = np.floor(Kb[1, 1] * pb[:, 1] / np.maximum(zb, 1e-6) + Kb[1, 2]).astype(int)
    ok = (z.reshape(-1) > 0) & (zb > 0.05) & (ub >= 0) & (ub < cam_b.width) & (vb >= 0) & (vb < cam_b.height)
    return ub.reshape(h, w), vb.reshape(h, w), zb.reshape(h, w), ok.reshape(h, w)


def distort(rgb: np.ndarray, seed: int) -> np.ndarray:
    """A stand-in for a real camera image: gain, gamma, blur-free noise (uint8)."""
    g = np.random.default_rng(seed)
    x = rgb.astype(np.float32) / 255
    x = np.clip(x * g.uniform(0.85, 1.15, 3) ** 1, 0, 1) ** g.uniform(0.8, 1.2)
    x = x + g.normal(0, 0.02, x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def strip(images: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.pad(i, ((2, 2), (2, 2), (0, 0)), constant_values=255) for i in images], 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[1000, 1001])
    ap.add_argument("--shifts", nargs="*", default=["colour", "rotated", "noise"])
    ap.add_argument("--density", type=int, default=25000)
    ap.add_argument("--views", type=int, default=6, help="consecutive loop views per scene")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--pictures", default="")
    ap.add_argument("--cost-sizes", default="320x240,640x480")
    ap.add_argument("--cost-repeats", type=int, default=2)
    a = ap.parse_args(argv)
    from chorus_ros.core.decode.fusion import PerViewConfig
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth
    from chorus_ros.core.synthetic.shifts import generate_shifted_scene
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

    cfg = PipelineConfig(render=RenderSettings(backend="reference"))
    pipe = PerceptionPipeline.from_checkpoint(a.ckpt, cfg)
    k = len(pipe.labels)
    views = {"loop_views": a.views, "random_views": 0, "width": a.width, "height": a.height}
    sets: dict[str, list] = {"held_out": []}
    for s in a.seeds:
        sc = generate_scene(SceneConfig(seed=s, target_gaussians=a.density))
        sets["held_out"].append((sc.gaussians, make_trajectory(sc, TrajectoryConfig(**views)).cameras))
    for name in a.shifts:
        sh = generate_shifted_scene(name, a.seeds[0], scene={"target_gaussians": a.density}, views=views, cache_dir=None)
        sets[f"shift:{name}"] = [(sh.gaussians, sh.cameras)]
    modes = ["off", "rendered", "camera"]
    res: dict = {}
    pics = Path(a.pictures) if a.pictures else None
    if pics:
        pics.mkdir(parents=True, exist_ok=True)
    for set_name, scenes in sets.items():
        cms = {m: np.zeros((k, k + 1), np.int64) for m in modes}  # gt x pred (column k: unlabeled)
        bnd = {m: np.zeros(4) for m in modes}
        flick = {m: [0, 0] for m in modes}
        for si, (g, cams) in enumerate(scenes):
            pipe.apply_update(g, None, full=True)
            pipe.encode()
            prev = None
            for vi, cam in enumerate(cams):
                gt = render_ground_truth(g, cam, cfg.render)
                gsem = gt.semantic.numpy()
                outs = {}
                for m in modes:
                    pipe.config.per_view = PerViewConfig(fusion=m)
                    img = distort(outs["off"].rgb, 1000 * si + vi) if m == "camera" else None
                    outs[m] = pipe.render_view(cam, image=img)
                valid = (gsem != 65535) & (outs["off"].alpha >= 0.5)
                for m in modes:
                    p = np.where(outs[m].labels == 65535, k, outs[m].labels).astype(np.int64)
                    cms[m] += np.bincount(gsem[valid].astype(np.int64) * (k + 1) + p[valid],
                                          minlength=k * (k + 1)).reshape(k, k + 1)
                    bnd[m] += boundary_counts(outs[m].labels, gsem, valid)
                if prev is not None:
                    pcam, pdepth, pgt, pouts = prev
                    ub, vb, zb, ok = reproject(pdepth, pcam, cam)
                    ubc, vbc = ub.clip(0, cam.width - 1), vb.clip(0, cam.height - 1)
                    same = ok & (np.abs(outs["off"].depth[vbc, ubc] - zb) < 0.05) & (gsem[vbc, ubc] == pgt) & (pgt != 65535)
                    for m in modes:
                        a_, b_ = pouts[m].labels, outs[m].labels[vbc, ubc]
                        both = same & (a_ != 65535) & (b_ != 65535)
                        flick[m][0] += int((both & (a_ != b_)).sum())
                        flick[m][1] += int(both.sum())
                prev = (cam, outs["off"].depth, gsem, outs)
                if pics is not None and si == 0 and vi == 0:
                    from PIL import Image as PILImage
                    col = lambda lab: pipe.labels.colorize(lab)  # noqa: E731
                    row = strip([outs["off"].rgb, col(outs["off"].labels), col(outs["rendered"].labels), col(gsem.astype(np.uint16))])
                    PILImage.fromarray(row).resize((row.shape[1] * 2, row.shape[0] * 2), PILImage.NEAREST).save(
                        pics / f"{set_name.replace(':', '_')}.png")
        res[set_name] = {}
        for m in modes:
            cm = cms[m]
            tp = np.diag(cm[:, :k]).astype(float)
            union = cm.sum(1) + cm[:, :k].sum(0) - tp
            present = cm.sum(1) > 0
            miou = float(100 * (tp[present] / np.maximum(union[present], 1)).mean())
            tp_p, np_, tp_r, nr = bnd[m]
            prec, rec = tp_p / max(np_, 1), tp_r / max(nr, 1)
            res[set_name][m] = {"miou": miou,
                                "boundary_f": 100 * 2 * prec * rec / max(prec + rec, 1e-9),
                                "flicker": 100 * flick[m][0] / max(flick[m][1], 1)}
        print(set_name, json.dumps(res[set_name]), flush=True)
    # cost per view
    g, cams = sets["held_out"][0]
    pipe.apply_update(g, None, full=True)
    pipe.encode()
    cost = {}
    for size in a.cost_sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        cam = cams[0].scaled(w / cams[0].width)
        for m in ("off", "rendered"):
            pipe.config.per_view = PerViewConfig(fusion=m)
            pipe.render_view(cam)
            t = []
            for _ in range(a.cost_repeats):
                t0 = time.perf_counter()
                pipe.render_view(cam)
                t.append(time.perf_counter() - t0)
            cost[f"{size}:{m}"] = float(np.median(t))
        # the decoder alone (no render)
        fd = pipe.fusion
        x = torch.rand(1, 3, cam.height, cam.width)
        with torch.no_grad():
            fd(x, torch.rand(1, fd.config.feat_channels, cam.height, cam.width), torch.rand(1, 1, cam.height, cam.width),
               torch.rand(1, 1, cam.height, cam.width))
            t0 = time.perf_counter()
            for _ in range(a.cost_repeats):
                fd(x, torch.rand(1, fd.config.feat_channels, cam.height, cam.width), torch.rand(1, 1, cam.height, cam.width),
                   torch.rand(1, 1, cam.height, cam.width))
            cost[f"{size}:decoder_only"] = (time.perf_counter() - t0) / a.cost_repeats
    res["cost_s"] = cost
    print("cost", json.dumps(cost), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
