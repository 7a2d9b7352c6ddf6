"""Export a synthetic room as a Replica/semantic-nerf style dataset folder.

    python -m chorus_ros.tools.make_dataset OUT [--seed 0] [--gaussians 200000]
        [--loop-views 24] [--random-views 8] [--width 320 --height 240] [--fov 75]
        [--no-ceiling] [--overwrite]

The folder layout is described in the ``README.md`` written into it (see
:mod:`chorus_ros.core.synthetic.dataset`).
"""
from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.dataset import export_dataset
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

    p = argparse.ArgumentParser(prog="make_dataset", description=__doc__.split("\n")[0])
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--seed", type=int, default=0, help="scene seed")
    p.add_argument("--gaussians", type=int, default=200_000, help="approximate number of Gaussians")
    p.add_argument("--loop-views", type=int, default=24, help="views on the head-height loop")
    p.add_argument("--random-views", type=int, default=8, help="random views aimed at objects")
    p.add_argument("--width", type=int, default=320, help="image width, pixels")
    p.add_argument("--height", type=int, default=240, help="image height, pixels")
    p.add_argument("--fov", type=float, default=75.0, help="horizontal field of view, degrees")
    p.add_argument("--no-ceiling", action="store_true", help="leave the ceiling out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    scene = generate_scene(SceneConfig(seed=a.seed, target_gaussians=a.gaussians, ceiling=not a.no_ceiling))
    traj = make_trajectory(scene, TrajectoryConfig(loop_views=a.loop_views, random_views=a.random_views,
                                                   width=a.width, height=a.height, fov_x_deg=a.fov))
    print(f"scene seed {a.seed}: {len(scene)} Gaussians, {len(scene.instances)} instances, "
          f"{len(traj)} views ({time.perf_counter() - t0:.1f} s)", flush=True)
    s = export_dataset(scene, traj, a.out, overwrite=a.overwrite,
                       progress=lambda i, n: print(f"\rrendered {i}/{n}", end="", flush=True))
    print(f"\nwrote {s.root}: {s.frames} frames {s.width}x{s.height}, {s.gaussians} Gaussians, "
          f"{100 * s.labelled_fraction:.1f} % of pixels labelled ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
