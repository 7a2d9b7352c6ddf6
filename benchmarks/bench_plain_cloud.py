"""Plain coloured point clouds as maps: the cost of filling in the 3DGS parameters.

* The exact local spacing (:func:`chorus_ros.core.plain_cloud.knn_mean_distance`, blocked kNN)
  on generator rooms of increasing size, against the brute-force all-pairs search (chunked
  ``cdist`` over every point, as ``photometric._knn_mean_distance`` does) where that is feasible;
  both give the same values (checked here too, and in test/core/test_plain_cloud.py).
* Reading a plain xyz + uchar rgb PLY end to end (``read_ply``: parse, colours, spacing).

Run: ``python benchmarks/bench_plain_cloud.py [--quick]``. torch runs single-threaded (restored
afterwards), medians of repeated runs in this one process.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chorus_ros.core.plain_cloud import knn_mean_distance  # noqa: E402
from chorus_ros.core.ply import read_ply, write_point_cloud_ply  # noqa: E402
from chorus_ros.core.synthetic import SceneConfig, generate_scene  # noqa: E402


def _brute(p: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """All-pairs reference: every query chunk against every point."""
    p = p.double()
    out = torch.empty(len(p), dtype=torch.float64)
    for i in range(0, len(p), chunk):
        d = torch.cdist(p[i:i + chunk], p, compute_mode="donot_use_mm_for_euclid_dist")
        out[i:i + chunk] = d.topk(k + 1, largest=False).values[:, 1:].mean(1)
    return out.float()


def _median(fn, reps: int) -> float:
    t = []
    for _ in range(reps):
        s = time.perf_counter()
        fn()
        t.append(time.perf_counter() - s)
    return statistics.median(t)


def main(quick: bool = False) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sizes = [10_000, 40_000] if quick else [10_000, 40_000, 200_000, 1_000_000]
        rows = ["| room points | blocked kNN s | brute force s | same values |", "|---|---|---|---|"]
        for n in sizes:
            p = generate_scene(SceneConfig(seed=1000, target_gaussians=n)).gaussians.means
            fast = _median(lambda: knn_mean_distance(p), 1 if n > 100_000 else 3)
            if n <= 40_000:
                ref = _brute(p)
                slow = _median(lambda: _brute(p), 1)
                same = "yes" if torch.allclose(knn_mean_distance(p), ref, rtol=1e-6, atol=0) else "NO"
                rows.append(f"| {len(p)} | {fast:.2f} | {slow:.2f} | {same} |")
            else:
                rows.append(f"| {len(p)} | {fast:.2f} | (not run: N^2) | |")
        g = generate_scene(SceneConfig(seed=1000, target_gaussians=40_000)).gaussians
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "cloud.ply"
            write_point_cloud_ply(path, g.means, g.base_rgb)
            read_s = _median(lambda: read_ply(path), 3)
        return ("## Plain point-cloud input\n\nThe exact local spacing that sizes a plain cloud's Gaussians "
                "(`chorus_ros.core.plain_cloud.knn_mean_distance`, k = 3) on generator rooms (seed 1000), one "
                "thread, against the all-pairs search:\n\n" + "\n".join(rows)
                + f"\n\n`read_ply` of a plain xyz + uchar rgb PLY of {len(g)} points (parse, colours, spacing): "
                f"{read_s:.2f} s.\n")
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(main("--quick" in sys.argv))
