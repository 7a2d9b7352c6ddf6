"""Instance images before/after for docs/instances.md: rgb | ground-truth instances | one column per
run (checkpoint + decoding rules, as in scripts/instances_eval.py), one row per scene view.

    python scripts/instance_pictures.py --out docs/img/instances_mesh.png --shift mesh \
        --runs old=checkpoints/demo:old agnostic=checkpoints/demo:new,instances.class_agnostic_things=true
"""
import argparse
import sys

import numpy as np
import torch


def colourise(ids: np.ndarray) -> np.ndarray:
    """``[H, W]`` int ids -> ``[H, W, 3]`` uint8, a fixed hashed colour per id, 0/negative black."""
    ids = ids.astype(np.int64)
    h = (ids * 2654435761) & 0xFFFFFF
    rgb = np.stack([(h >> 16) & 255, (h >> 8) & 255, h & 255], -1).astype(np.uint8) // 2 + 96
    rgb[ids <= 0] = 0
    return rgb


def main(argv=None) -> int:
    import cv2

    sys.path.insert(0, "scripts")
    from instances_eval import pipeline_config
    from chorus_ros.core.metrics.shift_suite import ShiftSuiteConfig, suite_scene
    from chorus_ros.core.pipeline import PerceptionPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--shift", default="none")
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--views", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = ShiftSuiteConfig(width=160, height=120, loop_views=4, random_views=1)
    scene = suite_scene(a.shift, a.seed, cfg)
    cols = {}
    frames = [scene.frame(k) for k in a.views]
    for run in a.runs:
        name, rest = run.split("=", 1)
        ckpt, rules = rest.rsplit(":", 1)
        pipe = PerceptionPipeline.from_checkpoint(ckpt, pipeline_config(rules, "cpu"))
        pipe.apply_update(scene.gaussians, None, full=True)
        pipe.encode()
        cols[name] = [colourise(pipe.render_view(f.camera).instances) for f in frames]
        print(name, len(pipe.objects()), "objects", file=sys.stderr)
    rows = []
    for i, f in enumerate(frames):
        rgb = (np.clip(np.asarray(f.rgb, dtype=np.float32) / (255.0 if np.asarray(f.rgb).dtype == np.uint8 else 1.0),
                       0, 1) * 255).astype(np.uint8)
        gi = np.asarray(f.instance).astype(np.int64) if f.instance is not None else np.zeros(rgb.shape[:2], np.int64)
        gt = colourise(np.where(gi == int(scene.instance_none_id), 0, gi + 1))
        tiles = [rgb, gt] + [cols[n][i] for n in cols]
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    img = np.concatenate(rows, 0)
    head = np.full((16, img.shape[1], 3), 255, np.uint8)
    titles = ["rgb", "gt instances"] + list(cols)
    w = img.shape[1] // len(titles)
    for j, t in enumerate(titles):
        cv2.putText(head, t, (j * w + 4, 12), 0, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(a.out, np.ascontiguousarray(np.concatenate([head, img], 0)[:, :, ::-1]))
    print(a.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
