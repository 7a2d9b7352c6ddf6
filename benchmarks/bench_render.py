"""Renderer speed per view against scene size and resolution, for each available backend.

Scenes are synthetic indoor rooms (:func:`chorus_ros.core.synthetic.generate_scene`) of about
10K, 100K and 1M Gaussians, seen from views of the generator's own camera loop. The reference
(pure torch, CPU) is timed without gradients (the demo / lifting / node path) at the process's
torch thread count and single-threaded, plus forward+backward with 16 feature channels; gsplat
is timed when CUDA is available. Medians over views x repetitions measured in this one run.

    python benchmarks/bench_render.py [--quick]
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from chorus_ros.core.render import RenderSettings, available_backends, render
from chorus_ros.core.synthetic import SceneConfig, generate_scene
from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

CPU_BUDGET_S = 60.0
"""A CPU configuration whose estimated time (from the next smaller size) exceeds this is skipped."""


def _time(fn, reps: int, sync=None) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(reps):
        if sync:
            sync()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if sync:
            sync()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def _cameras(scene, width: int, height: int, views: int):
    cfg = TrajectoryConfig(loop_views=views, random_views=0, width=width, height=height)
    return make_trajectory(scene, cfg).cameras


def _bench_reference(scene, cams, threads: int, reps: int, grad: bool):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    settings = RenderSettings(backend="reference")
    g = scene.gaussians
    wall, cpu = [], []
    try:
        for cam in cams:
            if grad:
                feats = torch.randn(len(g), 16)

                def fn():
                    leaves = [t.clone().requires_grad_(True) for t in (g.means, g.sh, g.opacities, feats)]
                    gg = type(g)(means=leaves[0], sh=leaves[1], opacities=leaves[2],
                                 log_scales=g.log_scales, quats=g.quats)
                    out = render(gg, cam, settings, features=leaves[3])
                    (out.rgb.sum() + out.features.sum() + out.depth.sum()).backward()
            else:
                def fn():
                    with torch.no_grad():
                        render(g, cam, settings)
            fn()  # warm-up (allocator, first-touch)
            w, c = _time(fn, reps)
            wall += w
            cpu += c
    finally:
        torch.set_num_threads(old)
    return wall, cpu


def _bench_gsplat(scene, cams, reps: int):
    g = scene.gaussians.to("cuda")
    settings = RenderSettings(backend="gsplat")
    wall = []
    for cam in cams:
        def fn():
            with torch.no_grad():
                render(g, cam, settings)
        fn()
        w, _ = _time(fn, reps, sync=torch.cuda.synchronize)
        wall += w
    return wall


def main(quick: bool = False) -> str:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    resolutions = [(320, 240)] if quick else [(320, 240), (640, 480)]
    default_threads = torch.get_num_threads()
    med = statistics.median
    rows = ["| Gaussians | resolution | backend | mode | threads | wall ms median | wall ms min | "
            "CPU ms median | runs |", "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    t0 = time.perf_counter()
    last_wall: dict[tuple, float] = {}
    for n in sizes:
        scene = generate_scene(SceneConfig(target_gaussians=n, seed=7))
        real_n = len(scene.gaussians)
        for (w, h) in resolutions:
            big = n >= 1_000_000
            views = 1 if big else (2 if quick else 4)
            reps = 1 if big else 3
            cams = _cameras(scene, w, h, views)
            configs = [("no-grad", default_threads, False), ("no-grad", 1, False)]
            if not big and (w, h) == (320, 240):
                configs.append(("fwd+bwd, 16 feat", default_threads, True))
            for mode, threads, grad in configs:
                key = (mode, threads, (w, h))
                prev = last_wall.get(key)
                if prev is not None and prev * 12 > CPU_BUDGET_S:  # ~10x Gaussians from the last size
                    notes.append(f"reference {mode} at {real_n:,} Gaussians, {w}x{h}, {threads} thread(s) "
                                 f"skipped: estimated > {CPU_BUDGET_S:.0f} s from the previous size.")
                    continue
                wall, cpu = _bench_reference(scene, cams, threads, reps, grad)
                last_wall[key] = med(wall)
                rows.append(f"| {real_n:,} | {w}x{h} | reference (CPU) | {mode} | {threads} | "
                            f"{med(wall) * 1e3:.0f} | {min(wall) * 1e3:.0f} | {med(cpu) * 1e3:.0f} | {len(wall)} |")
            if "gsplat" in available_backends():
                wall = _bench_gsplat(scene, cams if not big else _cameras(scene, w, h, 4), 10)
                rows.append(f"| {real_n:,} | {w}x{h} | gsplat (CUDA) | no-grad | - | {med(wall) * 1e3:.2f} | "
                            f"{min(wall) * 1e3:.2f} | - | {len(wall)} |")
    if "gsplat" not in available_backends():
        notes.append("gsplat: no CUDA device here, not timed.")
    total = time.perf_counter() - t0
    out = ["## Renderer (`benchmarks/bench_render.py`)", "",
           f"{'Quick run. ' if quick else ''}Synthetic indoor rooms (seed 7), views from the generator's "
           f"camera loop; per-view render of RGB + depth + alpha. Medians over views x repetitions in this "
           f"run; the default torch thread count here is {default_threads}. CPU ms is process CPU time "
           f"(all threads); on a shared machine wall time also counts waiting for a core. "
           f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')} (with the default spinning "
           f"policy, 2 OpenMP threads on a loaded 2-core machine can be several times slower than 1). "
           f"{total:.0f} s total.",
           "", *rows, ""]
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv[1:]))
