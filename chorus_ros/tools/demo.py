"""``chorus-demo``: the foundation demo.

Generates the built-in default synthetic room (seed :data:`DEMO_SEED`, about
:data:`DEMO_GAUSSIANS` Gaussians so CPU rendering is quick), renders a few views and writes, per
view, the RGB image, the colourised depth, the colourised ground-truth classes and instances and
a 2x2 panel of all four to ``--out`` (default ``demo_out/``). It prints what it wrote.

    python -m chorus_ros.tools.demo [--out demo_out] [--views 4] [--width 320 --height 240]

The demo is a list of *stages* (:data:`STAGES`) that share a :class:`DemoContext`; later stages
(encoding, decoding, queries) append to the list. The ``live nodes`` stage runs the ROS nodes on
the scene with ``--checkpoint`` (:mod:`chorus_ros.tools.live_demo`: bag replay, semantic /
instance / overlay PNGs under ``live/``, ``contact_sheet.png``, language queries).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

DEMO_SEED = 7
"""Seed of the built-in default scene (a room with all 15 thing classes)."""
DEMO_GAUSSIANS = 40_000
"""Size of the built-in default scene."""


def demo_scene_config():
    """The built-in default scene's :class:`~chorus_ros.core.synthetic.SceneConfig`."""
    from chorus_ros.core.synthetic import SceneConfig
    return SceneConfig(seed=DEMO_SEED, target_gaussians=DEMO_GAUSSIANS)


@dataclass
class DemoContext:
    """State shared by the demo stages."""

    out: Path
    args: argparse.Namespace
    scene: object = None
    trajectory: object = None
    written: list[Path] = field(default_factory=list)


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    """``[H, W]`` metres -> ``[H, W, 3]`` uint8 RGB (turbo colour map, near = blue; 0 = black)."""
    import cv2
    valid = depth > 0
    top = float(max_depth or (depth[valid].max() if valid.any() else 1.0))
    scaled = np.clip(depth / max(top, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    rgb = cv2.applyColorMap(scaled, cv2.COLORMAP_TURBO)[:, :, ::-1].copy()
    rgb[~valid] = 0
    return rgb


def _save(ctx: DemoContext, name: str, rgb: np.ndarray) -> None:
    import cv2
    path = ctx.out / name
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {path}")
    ctx.written.append(path)


def stage_scene(ctx: DemoContext) -> str:
    """Generate the default scene and its views."""
    from chorus_ros.core.synthetic import generate_scene
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    ctx.scene = generate_scene(demo_scene_config())
    n_loop = max(1, ctx.args.views // 2)
    ctx.trajectory = make_trajectory(ctx.scene, TrajectoryConfig(
        loop_views=n_loop, random_views=ctx.args.views - n_loop, width=ctx.args.width, height=ctx.args.height))
    sc = ctx.scene
    things = sorted({i.class_name for i in sc.instances.values() if not i.stuff})
    return (f"scene seed {sc.seed}: {len(sc)} Gaussians, room {np.round(sc.room_max, 2).tolist()} m, "
            f"{len(sc.instances)} instances, classes: {', '.join(things)}")


def stage_ground_truth(ctx: DemoContext) -> str:
    """Render RGB, depth and ground-truth classes/instances of every view."""
    from chorus_ros.core.labels import colorize_instances
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth
    sc = ctx.scene
    for i, cam in enumerate(ctx.trajectory.cameras):
        gt = render_ground_truth(sc.gaussians, cam)
        rgb = np.clip(np.round(gt.rgb.numpy() * 255), 0, 255).astype(np.uint8)
        depth = colorize_depth(gt.depth.numpy() * (gt.alpha.numpy() >= 0.3),
                               max_depth=float(np.linalg.norm(sc.room_max)))
        sem = sc.labels.colorize(gt.semantic)
        ins = colorize_instances(gt.instance)
        for name, img in (("rgb", rgb), ("depth", depth), ("semantic", sem), ("instance", ins)):
            _save(ctx, f"view{i}_{name}.png", img)
        _save(ctx, f"view{i}_panel.png", np.concatenate([np.concatenate([rgb, depth], 1),
                                                          np.concatenate([sem, ins], 1)], 0))
    return f"rendered {len(ctx.trajectory)} views at {ctx.args.width}x{ctx.args.height}"


def stage_live(ctx: DemoContext) -> str:
    """The ROS nodes live on the scene: bag replay, images, contact sheet, queries
    (:mod:`chorus_ros.tools.live_demo`)."""
    if ctx.args.no_live:
        return "skipped (--no-live)"
    from chorus_ros.tools.live_demo import run_live_demo
    res = run_live_demo(ctx.out, ctx.scene, ctx.args.checkpoint, log=lambda line: print("  " + line, flush=True))
    ctx.written.extend(res.written)
    hits = sum(1 for c in res.checks.values() if c.passed)
    return (f"{len(res.written)} images incl. contact_sheet.png; {len(res.queries)} queries, "
            f"{hits} whose top object is mostly made of the queried class (ground truth)")


STAGES: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("scene", stage_scene),
    ("ground truth", stage_ground_truth),
    ("live nodes", stage_live),
]
"""The demo's stages, run in order; each returns a one-line summary."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chorus-demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (created)")
    p.add_argument("--views", type=int, default=4, help="number of views (half loop, half random)")
    p.add_argument("--width", type=int, default=320, help="image width, pixels")
    p.add_argument("--height", type=int, default=240, help="image height, pixels")
    p.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[2] / "checkpoints" / "demo"),
                   help="checkpoint of the live stage (default: checkpoints/demo)")
    p.add_argument("--no-live", action="store_true", help="skip the live ROS stage")
    args = p.parse_args(argv)
    if args.views < 1:
        p.error("--views must be >= 1")
    ctx = DemoContext(Path(args.out), args)
    ctx.out.mkdir(parents=True, exist_ok=True)
    for name, fn in STAGES:
        t0 = time.perf_counter()
        print(f"[{name}] {fn(ctx)} ({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"wrote {len(ctx.written)} files to {ctx.out}/:")
    for path in ctx.written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
