"""Shared rig of the live benchmarks (bench_soak.py, bench_load.py).

chorus_node + query_node run in this process like ``chorus-ros up`` (one executor). The robot
and the clients run in a **separate process** (a probe node on its own context and executor),
as they do on a robot: map updates (a FULL, then spatially local DELTAs that move 1 % of the
map back and forth, so its size stays constant), camera requests, and QoS-queued QueryObjects
calls from any number of clients. The benchmark's thread only sends one-way commands to that
process through a pipe; in an earlier version the probe ran in the nodes' process, and its
executor's Python work competed with the nodes' worker for the GIL, which is not what a
deployment sees (docs/reliability.md, "The load benchmark's stall").

Not a benchmark itself (no ``main``).
"""
from __future__ import annotations

import multiprocessing as mp
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


# ---------------------------------------------------------------------------------- probe process
def _probe_main(conn, cams, n_clients: int) -> None:
    """The robot and the clients, in their own process: executes the rig's commands."""
    import sys
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import MultiThreadedExecutor
    from sensor_msgs.msg import CameraInfo, Image

    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros import qos
    from chorus_ros.ros.map_updates import map_update_to_msg
    from chorus_ros.srv import QueryObjects

    torch.set_num_threads(1)
    lock = threading.Lock()
    views_got: dict[int, float] = {}
    query_lat: list[float] = []
    fails = [0]
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    probe = rclpy.create_node("bench_live_probe", context=ctx)
    ex = MultiThreadedExecutor(num_threads=2, context=ctx)
    ex.add_node(probe)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()

    def on_image(msg) -> None:
        with lock:
            views_got.setdefault(cv.stamp_to_ns(msg.header.stamp), time.monotonic())

    map_pub = probe.create_publisher(GaussianMapUpdate, "map_updates", qos.latched(16))
    pose_pub = probe.create_publisher(PoseStamped, "camera_0/pose", qos.images(50))
    info_pub = probe.create_publisher(CameraInfo, "camera_0/camera_info", qos.images(50))
    probe.create_subscription(Image, "camera_0/semantic/image_raw", on_image, qos.images(50))
    clients = [probe.create_client(QueryObjects, "query_node/query") for _ in range(n_clients)]
    end = time.monotonic() + 60
    while time.monotonic() < end and not (map_pub.get_subscription_count() and pose_pub.get_subscription_count()
                                          and all(c.service_is_ready() for c in clients)):
        time.sleep(0.05)
    conn.send(("ready", bool(time.monotonic() < end)))
    g = None
    rng = np.random.default_rng(0)
    sign = 1.0
    try:
        while True:
            cmd, *args = conn.recv()
            if cmd == "stop":
                break
            if cmd == "full":
                g, seq = args
                rng, sign = np.random.default_rng(0), 1.0
                map_pub.publish(map_update_to_msg(g, map_id="bench", sequence=seq, full=True))
            elif cmd == "delta":      # move the frac nearest a random Gaussian by 1 cm, back and forth
                frac, seq = args
                c = g.means[int(rng.integers(len(g)))]
                k = max(1, int(len(g) * frac))
                idx = torch.topk((g.means - c).norm(dim=1), k, largest=False).indices
                part = g.index(idx)
                part = GaussianArrays(part.means + 0.01 * sign, part.sh, part.opacities, part.log_scales,
                                      part.quats, part.ids)
                sign = -sign
                map_pub.publish(map_update_to_msg(part, map_id="bench", sequence=seq, full=False))
            elif cmd == "view":
                stamp_ns, i = args
                pose, info = cv.camera_to_msgs(cams[i % len(cams)], stamp_ns, "map")
                pose_pub.publish(pose)
                info_pub.publish(info)
            elif cmd == "query":
                i, text = args
                t0 = time.monotonic()
                fut = clients[i].call_async(QueryObjects.Request(text=text, top_k=3, min_score=-1.0))

                def done(f, t0=t0):
                    r = f.result()
                    with lock:
                        if r is None or not r.success:
                            fails[0] += 1
                        else:
                            query_lat.append(time.monotonic() - t0)
                fut.add_done_callback(done)
            elif cmd == "stats":
                with lock:
                    conn.send((dict(views_got), list(query_lat), fails[0]))
    finally:
        ex.shutdown(timeout_sec=5.0)
        probe.destroy_node()
        ctx.try_shutdown()
        th.join(timeout=5.0)   # no thread left inside rclpy at exit (it can abort the process)
        conn.close()


class LiveRig:
    """Context manager: ``with LiveRig(ckpt, scene, n_query_clients=20) as rig: ...``.

    ``rig.node`` is the in-process chorus_node (its counters are read directly); every action
    (``send_full``, ``send_delta``, ``request_view``, ``query``) is a one-way command to the probe
    process, and :meth:`stats` asks it for its records.
    """

    def __init__(self, ckpt: Path, scene, *, n_query_clients: int = 1, view_size=(160, 120),
                 parameters: dict | None = None, num_threads: int = 4) -> None:
        self.ckpt, self.scene = ckpt, scene
        self.n_clients = n_query_clients
        self.view_size = view_size
        self.parameters = parameters or {}
        self.num_threads = num_threads
        self.views_sent: list[int] = []
        self.seq = 0
        self.g = None
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ set-up
    def __enter__(self) -> "LiveRig":
        from chorus_ros.core.geometry import Camera
        from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
        from chorus_ros.ros.bringup import Bringup

        w, h = self.view_size
        tr = make_trajectory(self.scene, TrajectoryConfig(loop_views=8, random_views=0, width=w, height=h))
        cams = [Camera(c.viewmat, c.K, w, h, "bench_optical") for c in tr.cameras]
        self.bringup = Bringup(checkpoint=str(self.ckpt), nodes=["chorus_node", "query_node"], log_level="error",
                               parameters=self.parameters, num_threads=self.num_threads)
        self.bringup.__enter__()
        self.node = self.bringup.nodes["chorus_node"]
        try:
            # spawn: a fork would copy this process's rclpy and torch threads' state
            mpc = mp.get_context("spawn")
            self._conn, child = mpc.Pipe()
            proc = mpc.Process(target=_probe_main, args=(child, cams, self.n_clients), daemon=True,
                               name="bench_live_probe")
            proc.start()
            self._proc = proc
            child.close()
            if not self._conn.poll(120):
                raise TimeoutError("the probe process did not start in 120 s")
            _, matched = self._conn.recv()
            if not matched:
                raise TimeoutError("the probe did not discover chorus_node and query_node in 60 s")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            proc = getattr(self, "_proc", None)
            if proc is not None:
                try:
                    self._conn.send(("stop",))
                except (BrokenPipeError, OSError):
                    pass
                proc.join(timeout=15.0)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5.0)
        finally:
            self.bringup.__exit__(*exc)

    # ------------------------------------------------------------------ actions
    def send_full(self, g) -> None:
        self.g = g
        self.seq += 1                   # a new sequence: wait_encoded waits for this very update
        self._conn.send(("full", g, self.seq))

    def wait_encoded(self, timeout: float = 900.0) -> None:
        n = self.node
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if n._tracker.last_sequence == self.seq and n.encoded_version == n.pipeline.map.version and \
                    n.wait_idle(0.0):
                return
            time.sleep(0.01)
        raise TimeoutError("the node did not encode the map in time")

    def wait_query_ready(self, timeout: float = 60.0) -> None:
        """Wait until query_node holds an object map (queries before that fail by design:
        "no object map received yet")."""
        q = self.bringup.nodes["query_node"]
        end = time.monotonic() + timeout
        while q.table is None:
            if time.monotonic() > end:
                raise TimeoutError("query_node received no object map in time")
            time.sleep(0.01)

    def send_delta(self, frac: float = 0.01) -> None:
        """Move the ``frac`` nearest a random Gaussian by 1 cm (back and forth: size constant)."""
        self.seq += 1
        self._conn.send(("delta", frac, self.seq))

    def request_view(self, stamp_ns: int) -> None:
        self._conn.send(("view", stamp_ns, len(self.views_sent)))
        self.views_sent.append(stamp_ns)

    def query(self, client_index: int, text: str) -> None:
        """Call QueryObjects asynchronously; the latency is recorded when the answer arrives."""
        self._conn.send(("query", client_index, text))

    # ------------------------------------------------------------------ records (from the probe)
    def stats(self) -> tuple[dict[int, float], list[float], int]:
        """``(views_got {stamp_ns: arrival}, query latencies s, failed queries)`` so far."""
        with self._stats_lock:            # one request and its answer at a time on the pipe
            self._conn.send(("stats",))
            return self._conn.recv()


def rss_mib() -> float:
    """This process's (the nodes') resident memory."""
    from chorus_ros.core.memory import rss_bytes
    return rss_bytes() / 2**20


def percentile(xs, q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")
