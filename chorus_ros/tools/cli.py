"""``chorus-ros``: run the nodes in one process, make the demo bag, replay a bag.

    chorus-ros up [--config FILE] [--checkpoint DIR] [--device cpu|cuda] [--namespace NS]
                  [--use-sim-time] [--log-level info]
    chorus-ros make-bag OUT [--steps 5] [--gaussians 20000] [--seed 0] [--width 160 --height 120]
    chorus-ros replay BAG [--rate 1.0] [--namespace NS]
    chorus-ros params [--update docs/ros.md]

``up`` starts the same node set with the same parameters as ``launch/chorus.launch.py``
(:mod:`chorus_ros.ros.bringup`), for machines without ``ros2 launch``.
"""
from __future__ import annotations

import argparse
import sys

from chorus_ros.ros.bringup import LAUNCH_ARGUMENTS


def _up(a: argparse.Namespace) -> int:
    from chorus_ros.ros.bringup import Bringup
    from chorus_ros.tools.live_demo import DEMO_CHECKPOINT
    if not a.checkpoint and (DEMO_CHECKPOINT / "config.yaml").is_file():
        a.checkpoint = str(DEMO_CHECKPOINT)
        print(f"chorus-ros up: no --checkpoint given, using the demo checkpoint {a.checkpoint}", flush=True)
    b = Bringup(a.config or None, checkpoint=a.checkpoint, device=a.device, namespace=a.namespace,
                use_sim_time=a.use_sim_time, log_level=a.log_level)
    print(f"chorus-ros up: running {', '.join(b.nodes)} (Ctrl-C to stop)", flush=True)
    try:
        b.spin()
    except KeyboardInterrupt:
        pass
    finally:
        b.shutdown()
    return 0


def _make_bag(a: argparse.Namespace) -> int:
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.ros.bag import DemoBagConfig, make_demo_bag
    scene = generate_scene(SceneConfig(seed=a.seed, target_gaussians=a.gaussians))
    info = make_demo_bag(a.out, scene, DemoBagConfig(steps=a.steps, width=a.width, height=a.height,
                                                     cameras=a.cameras, seed=a.seed))
    print(f"wrote {info.path}: {info.map_updates} map updates, {info.views} views, "
          f"{info.total_gaussians} Gaussians in the final map")
    return 0


def _replay(a: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from chorus_ros.ros.bag import replay_bag
    rclpy.init()
    node = rclpy.create_node("chorus_replay")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    import threading
    threading.Thread(target=ex.spin, daemon=True).start()
    try:
        n = replay_bag(a.bag, node, rate=a.rate, namespace=a.namespace, wait_for_subscribers=a.wait)
        print(f"replayed {n} messages from {a.bag}")
    except KeyboardInterrupt:
        pass
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    return 0


def parameters_markdown() -> str:
    """Markdown tables of both nodes' parameters, generated from the config dataclasses."""
    import importlib

    from chorus_ros.ros.bringup import NODE_SET
    from chorus_ros.ros.params import markdown_table
    parts = []
    for spec in NODE_SET:
        mod = importlib.import_module(spec.module)
        parts.append(f"### {spec.name}\n\n{markdown_table(mod.parameter_specs())}\n")
    return "\n".join(parts)


BEGIN, END = "<!-- parameters:begin (chorus-ros params --update) -->", "<!-- parameters:end -->"


def _params(a: argparse.Namespace) -> int:
    text = parameters_markdown()
    if not a.update:
        print(text)
        return 0
    from pathlib import Path
    doc = Path(a.update)
    old = doc.read_text()
    if BEGIN not in old or END not in old:
        print(f"{doc} has no {BEGIN} ... {END} section", file=sys.stderr)
        return 1
    head, rest = old.split(BEGIN, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}{END}{rest.split(END, 1)[1]}")
    print(f"updated the parameter tables in {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chorus-ros", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="run chorus_node and query_node in one process")
    for name, (default, text) in LAUNCH_ARGUMENTS.items():
        if name == "use_sim_time":
            up.add_argument("--use-sim-time", action="store_true", help=text)
        else:
            up.add_argument(f"--{name.replace('_', '-')}", dest=name, default=default, help=text)
    up.set_defaults(fn=_up)
    mb = sub.add_parser("make-bag", help="record the demo bag of a synthetic room")
    mb.add_argument("out", help="bag directory to create")
    mb.add_argument("--steps", type=int, default=5, help="map updates (1 FULL + DELTAs)")
    mb.add_argument("--gaussians", type=int, default=20_000, help="approximate scene size")
    mb.add_argument("--seed", type=int, default=0, help="scene seed")
    mb.add_argument("--width", type=int, default=160)
    mb.add_argument("--height", type=int, default=120)
    mb.add_argument("--cameras", nargs="+", default=["camera_0"], help="camera namespaces")
    mb.set_defaults(fn=_make_bag)
    rp = sub.add_parser("replay", help="publish a bag's raw messages on the live graph")
    rp.add_argument("bag")
    rp.add_argument("--rate", type=float, default=1.0, help="speed factor (0 = as fast as possible)")
    rp.add_argument("--namespace", default="", help="prefix for the recorded topic names")
    rp.add_argument("--wait", type=float, default=5.0, help="seconds to wait for subscribers first")
    rp.set_defaults(fn=_replay)
    pa = sub.add_parser("params", help="print the nodes' parameters (from the config dataclasses)")
    pa.add_argument("--update", metavar="DOC", help="rewrite the parameter section of this markdown file")
    pa.set_defaults(fn=_params)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
