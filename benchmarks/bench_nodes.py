"""chorus_node latency over DDS: pose -> published images, and map update -> encoded.

Everything runs in this process like ``chorus-ros up`` (one executor, the node's worker thread),
with a probe node on its own executor publishing requests and timing the answers:

* **pose -> images**: PoseStamped + CameraInfo published -> every image output of that stamp
  received (semantic, colour, overlay, instances, confidence). Beside it the core's own
  ``render_view`` time for the same camera, so the difference is the ROS cost (queueing,
  conversion, serialisation, DDS on loopback).
* **map update -> encoded**: a GaussianMapUpdate published -> the node's encoder has caught
  up with it (features, class scores and instance regrouping of the affected Gaussians).
  A FULL snapshot, then DELTAs moving / adding 1% of the Gaussians in one place (the 1% nearest
  a random Gaussian, as a robot re-observing a spot would send).

The demo checkpoint is used when present, else a small random-initialised one (said in the
output: the encoder's cost depends on its size, not on its weights). Runs on the CPU, and on
CUDA too when it is available.
"""
from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _until(cond, timeout: float, what: str) -> float:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if cond():
            return time.perf_counter()
        time.sleep(0.0005)
    raise TimeoutError(f"bench_nodes: timed out waiting for {what}")


def _checkpoint(tmp: Path, labels) -> tuple[Path, str]:
    demo = REPO / "checkpoints" / "demo"
    if (demo / "config.yaml").is_file():
        return demo, "demo checkpoint (checkpoints/demo)"
    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.encoder.config import EncoderConfig
    from chorus_ros.core.encoder.model import ChorusEncoder
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    torch.manual_seed(0)
    spec = TextEncoderSpec(tiny=True, seed=0)
    text = build_text_encoder(spec)
    out = tmp / "ckpt"
    out.mkdir()
    text.save_weights(out / "text_encoder.safetensors")
    meta = spec.to_dict()
    meta["weights"] = "text_encoder.safetensors"
    save_checkpoint(out, ChorusEncoder(EncoderConfig()), {"labels": labels.to_dict(), "text_encoder": meta})
    return out, "random-initialised checkpoint with the default EncoderConfig (no demo checkpoint found)"


def _run_device(device: str, scene, checkpoint: Path, sizes, repeats: int, updates: int) -> tuple[list, list]:
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CameraInfo, Image

    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.core.geometry import Camera
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros import qos
    from chorus_ros.ros.bringup import Bringup
    from chorus_ros.ros.chorus_node import OUTPUTS
    from chorus_ros.ros.map_updates import map_update_to_msg

    g = scene.gaussians
    g = GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids)
    n = len(g)
    map_rows, view_rows = [], []
    with Bringup(checkpoint=str(checkpoint), device=device, nodes=["chorus_node"], log_level="error") as b:
        node = b.nodes["chorus_node"]
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        probe = rclpy.create_node("bench_probe", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(probe)
        th = threading.Thread(target=ex.spin, daemon=True)
        th.start()
        try:
            pub = probe.create_publisher(GaussianMapUpdate, "map_updates", qos.latched(16))
            pose_pub = probe.create_publisher(PoseStamped, "camera_0/pose", qos.images(5))
            info_pub = probe.create_publisher(CameraInfo, "camera_0/camera_info", qos.images(5))
            names = ["semantic", "semantic_color", "overlay", "instance", "confidence"]
            arrivals: dict[tuple[str, int], float] = {}
            for name in names:
                probe.create_subscription(
                    Image, f"camera_0/{OUTPUTS[name][0]}",
                    lambda m, k=name: arrivals.setdefault((k, cv.stamp_to_ns(m.header.stamp)), time.perf_counter()),
                    qos.images(10))
            _until(lambda: pub.get_subscription_count() > 0 and pose_pub.get_subscription_count() > 0
                   and info_pub.get_subscription_count() > 0, 30, "discovery")
            time.sleep(0.5)

            def send(msg, seq: int) -> tuple[float, float]:
                t0 = time.perf_counter()
                pub.publish(msg)
                t1 = _until(lambda: node._tracker.last_sequence == seq and node.encoded_version
                            == node.pipeline.map.version and node.wait_idle(0.0), 900, f"update {seq}")
                return t1 - t0, node.encode_lag_s

            seq = 0
            full = [send(map_update_to_msg(g, map_id="bench", sequence=seq, full=True), seq)]
            map_rows.append((device, n, "FULL snapshot", full))
            rng = np.random.default_rng(0)
            k = max(1, n // 100)
            moved, added = [], []
            next_id = int(g.ids.max()) + 1
            def region(k: int) -> torch.Tensor:
                """The k Gaussians nearest a random one: a robot re-observing one place."""
                c = g.means[int(rng.integers(n))]
                return torch.topk((g.means - c).norm(dim=1), k, largest=False).indices

            for _ in range(updates):
                part = g.index(region(k))
                part = GaussianArrays(part.means + 0.01, part.sh, part.opacities, part.log_scales, part.quats, part.ids)
                seq += 1
                moved.append(send(map_update_to_msg(part, map_id="bench", sequence=seq, full=False), seq))
                src = g.index(region(k))
                new = GaussianArrays(src.means + 0.02, src.sh, src.opacities, src.log_scales, src.quats,
                                     torch.arange(next_id, next_id + k))
                next_id += k
                seq += 1
                added.append(send(map_update_to_msg(new, map_id="bench", sequence=seq, full=False), seq))
            map_rows.append((device, n, f"DELTA moving 1% ({k}) in one place", moved))
            map_rows.append((device, n, f"DELTA adding 1% ({k}) in one place", added))

            stamp = 10_000
            for w, h in sizes:
                tr = make_trajectory(scene, TrajectoryConfig(loop_views=repeats, random_views=0, width=w, height=h))
                total, timing = [], []
                for c in tr.cameras:
                    cam = Camera(c.viewmat, c.K, w, h, "bench_optical")
                    stamp += 1
                    pose, info = cv.camera_to_msgs(cam, stamp, "map")
                    t0 = time.perf_counter()
                    pose_pub.publish(pose)
                    info_pub.publish(info)
                    _until(lambda: all((k_, stamp) in arrivals for k_ in names), 600, "the images")
                    total.append(max(arrivals[(k_, stamp)] for k_ in names) - t0)
                    assert node.wait_idle(60)
                    timing.append(next(t for t in node.view_timings if t.stamp_ns == stamp))
                view_rows.append((device, n, f"{w}x{h}", total, timing))
        finally:
            ex.shutdown(timeout_sec=5.0)
            probe.destroy_node()
            ctx.try_shutdown()
            th.join(timeout=5.0)   # no thread left inside rclpy at exit (it can abort the process)
    return map_rows, view_rows


def main(quick: bool = False) -> str:
    from chorus_ros.tools import isolate_ros_env
    isolate_ros_env()
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.tools.demo import DEMO_GAUSSIANS, DEMO_SEED

    scene = generate_scene(SceneConfig(seed=DEMO_SEED, target_gaussians=10_000 if quick else DEMO_GAUSSIANS))
    sizes = [(160, 120)] if quick else [(160, 120), (320, 240)]
    repeats, updates = (3, 2) if quick else (5, 3)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, ckpt_note = _checkpoint(Path(tmp), scene.labels)
        map_rows, view_rows = [], []
        for dev in devices:
            m, v = _run_device(dev, scene, ckpt, sizes, repeats, updates)
            map_rows += m
            view_rows += v
    med = statistics.median
    lines = ["## Node latency (bench_nodes)", "",
             f"chorus_node in-process (as `chorus-ros up`), a probe node on its own executor over DDS "
             f"(loopback); scene: the default synthetic room, {len(scene)} Gaussians; {ckpt_note}. "
             f"Devices: {', '.join(devices)}" + ("" if "cuda" in devices else " (no GPU on this machine)") + ".",
             "", "### Map update -> encoded", "",
             "Published -> the node's features, class scores and instances caught up (median of the runs; "
             "'node lag' is the node's own received -> encoded time).", "",
             "| device | Gaussians | update | runs | publish -> encoded (s) | node lag (s) |",
             "|---|---|---|---|---|---|"]
    for dev, n, what, runs in map_rows:
        lines.append(f"| {dev} | {n} | {what} | {len(runs)} | {med(r[0] for r in runs):.2f} | "
                     f"{med(r[1] for r in runs):.2f} |")
    lines += ["", "### Pose -> images", "",
              "PoseStamped + CameraInfo published by the probe -> all five image outputs of that stamp "
              "received by it (semantic, colour, overlay, instances, confidence). Inside the node "
              "(`ChorusNode.view_timings`): *queued* = paired request -> taken by the worker, *core* = "
              "`PerceptionPipeline.render_view` (render + decode), *publish* = Image conversion + "
              "publish; *transport* = the rest (subscription callbacks, pairing, DDS delivery both ways). "
              "Medians in ms.", "",
              "| device | Gaussians | image | views | pose -> images | queued | core render_view | publish | "
              "transport | ROS share |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for dev, n, size, total, timing in view_rows:
        t = med(total) * 1e3
        q, c, p = (med(getattr(x, k) for x in timing) * 1e3 for k in ("queued", "render", "publish"))
        lines.append(f"| {dev} | {n} | {size} | {len(total)} | {t:.0f} | {q:.1f} | {c:.0f} | {p:.1f} | "
                     f"{t - q - c - p:.1f} | {(t - c) / t:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(quick=True))
