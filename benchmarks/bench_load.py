"""Load: chorus_node + query_node under many clients (issue 12's probe): 20 QueryObjects clients
(one call per second each), DELTAs moving 1 % of the map at 10 Hz and 160x120 view requests at
30 Hz, for ``--seconds`` (default 60). Reports every view request's fate (published, or counted
as dropped by reason in ~/status -- the target: none unaccounted) and the query latency
percentiles (target: p99 < 200 ms on the CPU).

Run: ``python benchmarks/bench_load.py [--quick] [--seconds S] [--gaussians N] [--encode-interval S]
[--rclpy-executor]`` (quick: 20 s; N: the room's size, default 20K; ``--encode-interval``: chorus_node's
``min_encode_interval_s``, default 0).
``--rclpy-executor`` runs the nodes in rclpy's own MultiThreadedExecutor instead of
chorus_ros.ros.executor.NodeExecutor, to see the busy loop NodeExecutor removes
(docs/reliability.md, "The load benchmark's stall").
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):  # the package, and the shared live rig (_live.py)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def main(quick: bool = False, seconds: float | None = None, clients: int = 20,
         switch_interval: float | None = None, rclpy_executor: bool = False, gaussians: int = 20_000,
         encode_interval: float = 0.0) -> str:
    """``switch_interval``: Python's GIL switch interval for this run (``sys.setswitchinterval``;
    None keeps the process's). ``rclpy_executor``: the nodes spin in rclpy's MultiThreadedExecutor
    (the executor they used before chorus_ros.ros.executor.NodeExecutor). ``gaussians``: size of
    the synthetic room (each DELTA moves 1 % of it). ``encode_interval``: chorus_node's
    ``min_encode_interval_s``."""
    if switch_interval is not None:
        old = sys.getswitchinterval()
        sys.setswitchinterval(switch_interval)
        try:
            return main(quick, seconds, clients, rclpy_executor=rclpy_executor, gaussians=gaussians,
                        encode_interval=encode_interval)
        finally:
            sys.setswitchinterval(old)
    if rclpy_executor:       # Bringup builds its executor from this module-level name
        import chorus_ros.ros.bringup as bringup
        from rclpy.executors import MultiThreadedExecutor
        saved, bringup.NodeExecutor = bringup.NodeExecutor, MultiThreadedExecutor
        try:
            return main(quick, seconds, clients, gaussians=gaussians, encode_interval=encode_interval)
        finally:
            bringup.NodeExecutor = saved
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    import _live as live
    seconds = seconds if seconds is not None else (20.0 if quick else 60.0)
    scene = generate_scene(SceneConfig(seed=3, target_gaussians=int(gaussians)))
    g0 = scene.gaussians
    g = GaussianArrays(g0.means, g0.sh, g0.opacities, g0.log_scales, g0.quats, g0.ids)
    texts = ["chair", "table", "a lamp", "the sofa", "bed", "window", "a plant"]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, what = live.checkpoint(Path(tmp), scene.labels)
        params = {"chorus_node": {"min_encode_interval_s": float(encode_interval)}}
        with live.LiveRig(ckpt, scene, n_query_clients=clients, parameters=params) as rig:
            rig.send_full(g)
            rig.wait_encoded()
            rig.wait_query_ready()
            node = rig.node
            r0, p0, d0 = node.views_received, node.views_published, node.drops.snapshot()
            t0 = time.monotonic()
            next_delta = next_view = t0
            next_q = [t0 + i / clients for i in range(clients)]
            stamp = 1_000_000_000
            deltas = resyncs = 0
            resync_seq = 0      # the last FULL resync sent; no other until the node has applied it
            lags: list[float] = []
            lag_version, encodes0 = node.encoded_version, node.encodes
            while time.monotonic() - t0 < seconds:
                now = time.monotonic()
                if node.encoded_version != lag_version:       # one lag sample per encode seen
                    lag_version = node.encoded_version
                    lags.append(node.encode_lag_s)
                if now >= next_delta:
                    tr = node._tracker
                    if tr.waiting_for_full and (tr.last_sequence or 0) >= resync_seq:
                        rig.send_full(rig.g)             # a lost DELTA: one FULL resync, as a mapper would
                        resync_seq, resyncs = rig.seq, resyncs + 1
                    else:
                        rig.send_delta(0.01)
                        deltas += 1
                    next_delta += 0.1
                if now >= next_view:
                    stamp += 33_333_333
                    rig.request_view(stamp)
                    next_view += 1 / 30
                for i in range(clients):
                    if now >= next_q[i]:
                        rig.query(i, texts[(i + int(now)) % len(texts)])
                        next_q[i] += 1.0
                time.sleep(max(0.0, min([next_delta, next_view] + next_q) - time.monotonic()))
            sent_q = sum(int((q - t0) // 1.0) for q in next_q)
            time.sleep(0.5)                             # the last DELTAs in flight reach the node
            node.wait_idle(120.0)                       # ... and it has applied (or refused) them
            if node._tracker.waiting_for_full and (node._tracker.last_sequence or 0) >= resync_seq:
                rig.send_full(rig.g)                     # the last DELTAs were lost: end on a FULL
                resyncs += 1
            rig.wait_encoded(300)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                _, lat, fail = rig.stats()
                if len(lat) + fail >= sent_q and node.wait_idle(0.0):
                    break
                time.sleep(0.05)
            time.sleep(0.5)
            d1 = node.drops.snapshot()
            drops = {k: d1.get(k, 0) - d0.get(k, 0) for k in d1 if d1.get(k, 0) != d0.get(k, 0)}
            encodes = node.encodes - encodes0
            executor = type(rig.bringup.executor).__name__
            received = node.views_received - r0
            published = node.views_published - p0
            view_drops = sum(v for k, v in drops.items() if k.startswith("view_") and k != "view_stamp_rewind")
            views_got, lat, query_fail = rig.stats()
            got = len([s for s in rig.views_sent if s in views_got])
            lines = ["## Load: 20 query clients, 10 Hz deltas, 30 Hz views (`benchmarks/bench_load.py`)", "",
                     f"{what}; CPU; {len(g)} Gaussians; {seconds:g} s; chorus_node + query_node in one process "
                     f"(`chorus-ros up` layout, {executor}, 4 threads), the mapper, camera and clients in another; "
                     f"GIL switch interval "
                     f"{sys.getswitchinterval() * 1000:g} ms.", "",
                     "| view requests sent | paired by the node | published | counted as dropped | unaccounted | "
                     "received by the client |", "|---|---|---|---|---|---|",
                     f"| {len(rig.views_sent)} | {received} | {published} | {view_drops} | "
                     f"{received - published - view_drops} | {got} |", "",
                     "Drops by reason: " + (", ".join(f"{k} {v}" for k, v in drops.items()) or "none") + ". "
                     f"Unpaired poses/CameraInfos (best-effort transport) are in the *_unpaired counts.", "",
                     f"Map updates: {deltas} DELTAs sent; {resyncs} FULL resync(s) sent after the node reported a "
                     "lost update (a sequence gap: the node keeps its map and waits for a FULL). "
                     f"`min_encode_interval_s` {float(encode_interval):g}: {encodes} encodes, encode lag (an "
                     f"update received -> encoded) mean {1000 * (sum(lags) / len(lags) if lags else float('nan')):.0f} "
                     f"ms, max {1000 * max(lags, default=float('nan')):.0f} ms.", "",
                     "| queries sent | answered | failed | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |",
                     "|---|---|---|---|---|---|---|",
                     f"| {sent_q} | {len(lat)} | {query_fail} | {1000 * live.percentile(lat, 50):.0f} | "
                     f"{1000 * live.percentile(lat, 90):.0f} | {1000 * live.percentile(lat, 99):.0f} | "
                     f"{1000 * max(lat, default=float('nan')):.0f} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    a = sys.argv[1:]
    secs = float(a[a.index("--seconds") + 1]) if "--seconds" in a else None
    sw = float(a[a.index("--switch-interval") + 1]) if "--switch-interval" in a else None
    n = int(float(a[a.index("--gaussians") + 1])) if "--gaussians" in a else 20_000
    ei = float(a[a.index("--encode-interval") + 1]) if "--encode-interval" in a else 0.0
    print(main(quick="--quick" in a, seconds=secs, switch_interval=sw, rclpy_executor="--rclpy-executor" in a,
               gaussians=n, encode_interval=ei))
