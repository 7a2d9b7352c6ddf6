"""Soak: resident memory of chorus_node + query_node over a long replay, and the memory left
after one very large FULL update.

* **Soak**: a ~20K-Gaussian synthetic room, then for ``--minutes`` (default 30): a DELTA
  moving 1 % of the map at 2 Hz, a 160x120 view request at 5 Hz and one QueryObjects call per
  second. RSS of the nodes' process (both nodes and their DDS; the mapper and client probe runs in
  its own process, benchmarks/_live.py) is sampled every 10 s; the section
  reports RSS per minute and the growth after warm-up (the first 20 %, at least 2 minutes) -- the
  target is < 5 % -- with every view request published or counted.
* **Residue** (``--big N``, default 2M; 400K with --quick): the same node gets a FULL update of
  N Gaussians, then the 20K room again; RSS before, at the peak and after.

Run: ``python benchmarks/bench_soak.py [--quick] [--minutes M] [--big N]`` (quick: 2 minutes,
400K). Everything on the CPU; the demo checkpoint when present.
"""
from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):  # the package, and the shared live rig (_live.py)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def _scaled(g, n: int, seed: int):
    """``n`` Gaussians tiling copies of room ``g`` side by side (new ids)."""
    from chorus_ros.core.gaussians import GaussianArrays
    reps = -(-n // len(g))
    side = int(reps ** 0.5) + 1
    ext = (g.means.max(0).values - g.means.min(0).values)[:2] + 0.5
    parts = []
    for r in range(reps):
        off = torch.tensor([float(r % side) * ext[0], float(r // side) * ext[1], 0.0])
        parts.append(GaussianArrays(g.means + off, g.sh, g.opacities, g.log_scales, g.quats,
                                    torch.arange(r * len(g), (r + 1) * len(g)) + 10_000_000))
    big = GaussianArrays.concat(parts)
    return big.index(torch.arange(n))


def main(quick: bool = False, minutes: float | None = None, big: int | None = None) -> str:
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    import _live as live
    minutes = minutes if minutes is not None else (2.0 if quick else 30.0)
    big = big if big is not None else (400_000 if quick else 2_000_000)
    scene = generate_scene(SceneConfig(seed=3, target_gaussians=20_000))
    g0 = scene.gaussians
    g = GaussianArrays(g0.means, g0.sh, g0.opacities, g0.log_scales, g0.quats, g0.ids)
    lines = ["## Soak and memory (`benchmarks/bench_soak.py`)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, what = live.checkpoint(Path(tmp), scene.labels)
        with live.LiveRig(ckpt, scene, n_query_clients=1) as rig:
            rig.send_full(g)
            rig.wait_encoded()
            rig.wait_query_ready()
            t_start = time.monotonic()
            node = rig.node

            def encoder_state() -> tuple[float, int]:
                """(the encoder's activation caches in MiB, full encodes so far); read while the
                worker runs, so a table swapped mid-read gives nan for that sample."""
                inc = getattr(node.pipeline, "_incremental", None)
                try:
                    mib = inc.cache_bytes() / 2**20 if inc is not None else 0.0
                except RuntimeError:
                    mib = float("nan")
                return mib, node.full_encodes - fulls0
            fulls0 = node.full_encodes
            samples = [(0.0, live.rss_mib())]
            enc_samples = [encoder_state()]
            next_delta = next_view = next_query = next_sample = t_start
            stamp = 1_000_000_000
            texts = ["chair", "table", "a lamp", "the sofa", "bed"]
            while True:
                now = time.monotonic()
                if now - t_start >= minutes * 60:
                    break
                if now >= next_delta:
                    rig.send_delta(0.01)
                    next_delta += 0.5
                if now >= next_view:
                    stamp += 200_000_000
                    rig.request_view(stamp)
                    next_view += 0.2
                if now >= next_query:
                    rig.query(0, texts[int(now) % len(texts)])
                    next_query += 1.0
                if now >= next_sample:
                    samples.append((now - t_start, live.rss_mib()))
                    enc_samples.append(encoder_state())
                    next_sample += 10.0
                time.sleep(max(0.0, min(next_delta, next_view, next_query, next_sample) - time.monotonic()))
            rig.wait_encoded(120)
            time.sleep(1.0)
            samples.append((time.monotonic() - t_start, live.rss_mib()))
            enc_samples.append(encoder_state())
            _, query_lat, query_fail = rig.stats()
            drops = node.drops.snapshot()
            view_drops = sum(v for k, v in drops.items() if k.startswith("view_") and k != "view_stamp_rewind")
            # ---- residue after one very large FULL (RSS sampled every 0.2 s for the peak). The
            # map topic is latched with depth 16 on both sides: 16 small DELTAs after the return
            # to 20K push the big message out of the node's DDS history, which
            # would otherwise keep it (that memory is the transport's, not the node's).
            before = live.rss_mib()
            peak_box, stop = [before], threading.Event()

            def sampler():
                while not stop.is_set():
                    peak_box[0] = max(peak_box[0], live.rss_mib())
                    time.sleep(0.2)
            th = threading.Thread(target=sampler, daemon=True)
            th.start()
            rig.send_full(_scaled(g, big, 5))
            rig.wait_encoded(3600)
            rig.send_full(g)
            rig.wait_encoded(600)
            stop.set()
            th.join()
            peak = peak_box[0]
            for _ in range(16):
                rig.send_delta(0.01)
                time.sleep(0.05)
            rig.wait_encoded(600)
            time.sleep(1.0)
            after = live.rss_mib()
    warm = max(120.0, 0.2 * minutes * 60)
    at_warm = min(samples, key=lambda s: abs(s[0] - warm))
    end = samples[-1]
    growth = 100.0 * (end[1] - at_warm[1]) / at_warm[1]
    # single samples swing with the encode in flight: also compare window means (the first and
    # the last 20 % of the run after warm-up)
    span = max(60.0, 0.2 * (end[0] - warm))
    first = [v for t, v in samples if warm <= t <= warm + span] or [at_warm[1]]
    last = [v for t, v in samples if t >= end[0] - span] or [end[1]]
    growth_mean = 100.0 * (sum(last) / len(last) - sum(first) / len(first)) / (sum(first) / len(first))
    lines.append(f"{what}; CPU; {len(g)} Gaussians; {minutes:g} minutes of 2 Hz DELTAs (1 % of the map moved), "
                 f"5 Hz 160x120 view requests, 1 query/s. RSS of the nodes' process (both nodes and their DDS; the probe runs in its own process).")
    lines += ["", "| minute | RSS (MiB) | encoder activation caches (MiB) | full encodes so far |", "|---|---|---|---|"]
    step = max(1, int(round(minutes / 15)))
    for m in range(0, int(minutes) + 1, step):
        i = min(range(len(samples)), key=lambda j: abs(samples[j][0] - 60 * m))
        lines.append(f"| {m} | {samples[i][1]:.0f} | {enc_samples[i][0]:.0f} | {enc_samples[i][1]} |")
    lines += ["", f"**RSS growth after warm-up: {growth_mean:+.1f} %** between the mean of the first and the last "
              f"{span / 60:.1f} minutes after warm-up ({warm / 60:.1f} min); single samples {at_warm[0] / 60:.1f} -> "
              f"{end[0] / 60:.1f} min: {growth:+.1f} % (target < 5 %; start {samples[0][1]:.0f} MiB, peak "
              f"{max(s[1] for s in samples):.0f} MiB).",
              f"View requests: {len(rig.views_sent)} sent, {node.views_received} paired, {node.views_published} "
              f"published, {view_drops} counted as dropped ({', '.join(f'{k} {v}' for k, v in drops.items() if v)}"
              f"); every paired request published or counted: "
              f"**{node.views_received == node.views_published + view_drops}**. "
              f"Queries: {len(query_lat)} answered, {query_fail} failed, p50 "
              f"{1000 * live.percentile(query_lat, 50):.0f} ms, "
              f"p99 {1000 * live.percentile(query_lat, 99):.0f} ms.",
              "", f"**Residue of one large FULL**: {len(g)} Gaussians {before:.0f} MiB -> FULL of {big} Gaussians "
              f"{peak:.0f} MiB (peak) -> back to {len(g)} (and 16 DELTAs): **{after:.0f} MiB** "
              f"({after - before:+.0f} MiB).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    a = sys.argv[1:]
    mins = float(a[a.index("--minutes") + 1]) if "--minutes" in a else None
    n_big = int(a[a.index("--big") + 1]) if "--big" in a else None
    print(main(quick="--quick" in a, minutes=mins, big=n_big))
