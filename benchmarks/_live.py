"""Shared rig of the live benchmarks (bench_soak.py, bench_load.py): chorus_node + query_node
run in this process like ``chorus-ros up`` (one executor), and a probe node on its own context
and executor plays the robot and the clients: map updates (a FULL, then spatially local DELTAs
that move 1 % of the map back and forth, so its size stays constant), camera requests, and
QueryObjects calls from any number of clients. Not a benchmark itself (no ``main``)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def checkpoint(tmp: Path, labels) -> tuple[Path, str]:
    """The demo checkpoint when present, else a random-initialised default-size one."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("chorus_bench_nodes", REPO / "benchmarks" / "bench_nodes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._checkpoint(tmp, labels)


class LiveRig:
    """Context manager: ``with LiveRig(ckpt, scene, n_query_clients=20) as rig: ...``."""

    def __init__(self, ckpt: Path, scene, *, n_query_clients: int = 1, view_size=(160, 120),
                 parameters: dict | None = None, num_threads: int = 4) -> None:
        self.ckpt, self.scene = ckpt, scene
        self.n_clients = n_query_clients
        self.view_size = view_size
        self.parameters = parameters or {}
        self.num_threads = num_threads
        self.views_sent: list[int] = []
        self.views_got: dict[int, float] = {}
        self.query_lat: list[float] = []
        self.query_fail = 0
        self.seq = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ set-up
    def __enter__(self) -> "LiveRig":
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import MultiThreadedExecutor
        from sensor_msgs.msg import CameraInfo, Image

        from chorus_ros.core.geometry import Camera
        from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
        from chorus_ros.msg import GaussianMapUpdate
        from chorus_ros.ros import conversions as cv
        from chorus_ros.ros import qos
        from chorus_ros.ros.bringup import Bringup
        from chorus_ros.srv import QueryObjects

        self.bringup = Bringup(checkpoint=str(self.ckpt), nodes=["chorus_node", "query_node"], log_level="error",
                               parameters=self.parameters, num_threads=self.num_threads)
        self.bringup.__enter__()
        self.node = self.bringup.nodes["chorus_node"]
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.probe = rclpy.create_node("bench_live_probe", context=self.ctx)
        self.ex = MultiThreadedExecutor(num_threads=2, context=self.ctx)
        self.ex.add_node(self.probe)
        self.th = threading.Thread(target=self.ex.spin, daemon=True)
        self.th.start()
        self.map_pub = self.probe.create_publisher(GaussianMapUpdate, "map_updates", qos.latched(16))
        self.pose_pub = self.probe.create_publisher(PoseStamped, "camera_0/pose", qos.images(50))
        self.info_pub = self.probe.create_publisher(CameraInfo, "camera_0/camera_info", qos.images(50))
        self.probe.create_subscription(Image, "camera_0/semantic/image_raw", self._on_image, qos.images(50))
        self.clients = [self.probe.create_client(QueryObjects, "query_node/query") for _ in range(self.n_clients)]
        self._cv, self._Camera, self._QO = cv, Camera, QueryObjects
        w, h = self.view_size
        tr = make_trajectory(self.scene, TrajectoryConfig(loop_views=8, random_views=0, width=w, height=h))
        self.cams = [Camera(c.viewmat, c.K, w, h, "bench_optical") for c in tr.cameras]
        end = time.monotonic() + 60
        while time.monotonic() < end and not (self.map_pub.get_subscription_count() and
                                              self.pose_pub.get_subscription_count() and
                                              all(c.service_is_ready() for c in self.clients)):
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ex.shutdown(timeout_sec=5.0)
            self.probe.destroy_node()
            self.ctx.try_shutdown()
            self.th.join(timeout=5.0)   # no thread left inside rclpy at exit (it can abort the process)
        finally:
            self.bringup.__exit__(*exc)

    def _on_image(self, msg) -> None:
        with self._lock:
            self.views_got.setdefault(self._cv.stamp_to_ns(msg.header.stamp), time.monotonic())

    # ------------------------------------------------------------------ actions
    def send_full(self, g) -> None:
        from chorus_ros.ros.map_updates import map_update_to_msg
        self.g = g
        self.rng = np.random.default_rng(0)
        self.sign = 1.0
        self.seq += 1                   # a new sequence: wait_encoded waits for this very update
        self.map_pub.publish(map_update_to_msg(g, map_id="bench", sequence=self.seq, full=True))

    def wait_encoded(self, timeout: float = 900.0) -> None:
        n = self.node
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if n._tracker.last_sequence == self.seq and n.encoded_version == n.pipeline.map.version and \
                    n.wait_idle(0.0):
                return
            time.sleep(0.01)
        raise TimeoutError("the node did not encode the map in time")

    def send_delta(self, frac: float = 0.01) -> None:
        """Move the ``frac`` nearest a random Gaussian by 1 cm (back and forth: size constant)."""
        from chorus_ros.core.gaussians import GaussianArrays
        from chorus_ros.ros.map_updates import map_update_to_msg
        g = self.g
        c = g.means[int(self.rng.integers(len(g)))]
        k = max(1, int(len(g) * frac))
        idx = torch.topk((g.means - c).norm(dim=1), k, largest=False).indices
        part = g.index(idx)
        part = GaussianArrays(part.means + 0.01 * self.sign, part.sh, part.opacities, part.log_scales,
                              part.quats, part.ids)
        self.sign = -self.sign
        self.seq += 1
        self.map_pub.publish(map_update_to_msg(part, map_id="bench", sequence=self.seq, full=False))

    def request_view(self, stamp_ns: int) -> None:
        cam = self.cams[len(self.views_sent) % len(self.cams)]
        pose, info = self._cv.camera_to_msgs(cam, stamp_ns, "map")
        self.views_sent.append(stamp_ns)
        self.pose_pub.publish(pose)
        self.info_pub.publish(info)

    def query(self, client_index: int, text: str) -> None:
        """Call QueryObjects asynchronously; the latency is recorded when the answer arrives."""
        t0 = time.monotonic()
        fut = self.clients[client_index].call_async(self._QO.Request(text=text, top_k=3, min_score=-1.0))

        def done(f, t0=t0):
            r = f.result()
            with self._lock:
                if r is None or not r.success:
                    self.query_fail += 1
                else:
                    self.query_lat.append(time.monotonic() - t0)
        fut.add_done_callback(done)


def rss_mib() -> float:
    from chorus_ros.core.memory import rss_bytes
    return rss_bytes() / 2**20


def percentile(xs, q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")
