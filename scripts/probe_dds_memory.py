"""Probe: RSS a bare rclpy subscriber keeps after one large GaussianMapUpdate (no chorus node, no
encoder), with the map topic's QoS (reliable, transient-local, depth 16).

A publisher in a child process sends a FULL of N Gaussians, then 16 small DELTAs, which push the
FULL out of both sides' histories. This process only subscribes and converts nothing (the
callback keeps the message's width, then drops it). It reports its RSS before, after the FULL,
after the 16 DELTAs, and after ``trim_heap()``: what the ROS path alone keeps of a large message.
Compare with ``scripts/probe_memory.py N`` (the encoder stack without ROS) and the soak's residue
(docs/reliability.md, "Memory").

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=77 python scripts/probe_dds_memory.py 2000000
"""
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _publisher(conn, n: int) -> None:
    import rclpy
    from probe_memory import scene   # the encoder-stack probe's flat layer (imports torch: publisher only)

    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    from chorus_ros.ros.map_updates import map_update_to_msg
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("dds_probe_pub", context=ctx)
    pub = node.create_publisher(GaussianMapUpdate, "dds_probe_map", qos.latched(16))
    while pub.get_subscription_count() == 0:
        time.sleep(0.05)
    conn.send("matched")
    while True:
        cmd = conn.recv()
        if cmd == "full":
            pub.publish(map_update_to_msg(scene(n, 0), map_id="p", sequence=1, full=True))
        elif cmd == "deltas":
            for i in range(16):
                pub.publish(map_update_to_msg(scene(200, i + 1), map_id="p", sequence=2 + i, full=False))
        elif cmd == "stop":
            break
    node.destroy_node()
    ctx.try_shutdown()


def main(n: int) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from chorus_ros.core.memory import rss_bytes, trim_heap
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos

    def mib() -> str:
        return f"{rss_bytes() / 2**20:.0f} MiB"

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("dds_probe_sub", context=ctx)
    got: list[int] = []
    node.create_subscription(GaussianMapUpdate, "dds_probe_map", lambda m: got.append(int(m.gaussians.width)),
                             qos.map_updates_sub(16))
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    mpc = mp.get_context("spawn")
    conn, child = mpc.Pipe()
    proc = mpc.Process(target=_publisher, args=(child, n), daemon=True)
    proc.start()
    assert conn.recv() == "matched"
    time.sleep(1.0)
    trim_heap()
    print(f"subscriber, before: {mib()}", flush=True)
    conn.send("full")
    while not got:
        time.sleep(0.05)
    time.sleep(1.0)
    print(f"after a FULL of {got[0]} Gaussians: {mib()}", flush=True)
    conn.send("deltas")
    while len(got) < 17:
        time.sleep(0.05)
    time.sleep(1.0)
    print(f"after 16 DELTAs: {mib()}", flush=True)
    trim_heap()
    print(f"after trim_heap(): {mib()}", flush=True)
    conn.send("stop")
    proc.join(timeout=30)
    ex.shutdown(timeout_sec=5.0)
    node.destroy_node()
    ctx.try_shutdown()
    th.join(timeout=5.0)


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 2_000_000)
