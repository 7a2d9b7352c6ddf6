"""``chorus-ros``: run the nodes in one process, make the demo bag, replay a bag.

    chorus-ros up [--config FILE] [--checkpoint DIR] [--device cpu|cuda] [--namespace NS]
                  [--use-sim-time] [--log-level info]
    chorus-ros make-bag OUT [--steps 5] [--gaussians 20000] [--seed 0] [--width 160 --height 120]
    chorus-ros make-bag --dataset DIR [--out BAG] [--storage mcap|sqlite3] [--pieces 4] [--views SLICE]
                        [--map FILE.ply] [--view-period 0.1]
    chorus-ros replay BAG [--rate 1.0] [--namespace NS]
    chorus-ros up --map FILE.ply [...]      the map loaded and encoded at start-up
    chorus-ros query --map FILE.ply "chair" [--checkpoint DIR] [--top-k 5] [--json] [--device cpu]
    chorus-ros params [--update docs/ros.md]

``up`` starts the same node set with the same parameters as ``launch/chorus.launch.py``
(:mod:`chorus_ros.ros.bringup`), for machines without ``ros2 launch``.
"""
from __future__ import annotations

import argparse
import sys

from chorus_ros.ros.bringup import LAUNCH_ARGUMENTS


def load_map_file(path: str, log=print, checkpoint: str | None = None):
    """A 3DGS PLY, or a plain coloured point cloud PLY (x y z + colour: 3DGS parameters filled in,
    :mod:`chorus_ros.core.plain_cloud`), as the model may see it: every extra vertex property
    (ground-truth ``label`` / ``instance``, anything else) is dropped and named through ``log``;
    non-finite values are sanitised (reported). A plain cloud is said so through ``log``, with a
    warning when ``checkpoint``'s encoder reads Gaussian parameters (variant 'gaussian').
    Raises DatasetError / InvalidInputError naming the file."""
    from pathlib import Path

    from chorus_ros.core.datasets import strip_gaussians
    from chorus_ros.core.errors import DatasetError
    from chorus_ros.core.plain_cloud import LAYOUT_POINTCLOUD, variant_warning
    from chorus_ros.core.ply import read_ply
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"map file not found: {p}")
    res = read_ply(p)
    if res.layout == LAYOUT_POINTCLOUD:
        log(f"{p}: {res.layout_note}")
        if checkpoint:
            from chorus_ros.core.encoder.checkpoint import load_checkpoint_config
            from chorus_ros.core.errors import CheckpointError
            try:
                warning = variant_warning(load_checkpoint_config(checkpoint)[0].variant, what=str(p))
            except CheckpointError:
                warning = None      # loading the checkpoint itself reports what is wrong with it
            if warning:
                log(f"WARNING: {warning}")
    if res.gaussians.extras:
        log(f"{p}: ignored PLY properties {', '.join(sorted(res.gaussians.extras))} "
            f"(extras and ground truth never reach the model)")
    if not res.report.clean:
        log(f"{p}: {res.report.summary()}")
    return strip_gaussians(res.gaussians)


def _default_checkpoint(a: argparse.Namespace, prog: str) -> None:
    from chorus_ros.tools.live_demo import DEMO_CHECKPOINT
    if not a.checkpoint and (DEMO_CHECKPOINT / "config.yaml").is_file():
        a.checkpoint = str(DEMO_CHECKPOINT)
        print(f"{prog}: no --checkpoint given, using the demo checkpoint {a.checkpoint}", flush=True)


def _up(a: argparse.Namespace) -> int:
    from chorus_ros.core.errors import InvalidInputError
    from chorus_ros.ros.bringup import Bringup
    _default_checkpoint(a, "chorus-ros up")
    g = None
    if a.map:
        try:
            g = load_map_file(a.map, log=lambda m: print(f"chorus-ros up: {m}", flush=True),
                              checkpoint=a.checkpoint)
        except InvalidInputError as e:
            print(f"chorus-ros up: {e}", file=sys.stderr)
            return 2
    b = Bringup(a.config or None, checkpoint=a.checkpoint, device=a.device, namespace=a.namespace,
                use_sim_time=a.use_sim_time, log_level=a.log_level)
    print(f"chorus-ros up: running {', '.join(b.nodes)} (Ctrl-C to stop)", flush=True)
    try:
        if g is None:
            b.spin()
        else:
            _up_with_map(b, g, a.map)
    except KeyboardInterrupt:
        pass
    finally:
        b.shutdown()
    return 0


def _up_with_map(b, g, path: str) -> None:
    """Spin ``b`` in its thread, publish the map file into chorus_node
    (:func:`chorus_ros.ros.map_file.publish_map`, the topic a live map publisher uses), report when
    the node has applied and encoded it (its ``objects`` topic says so), and run until Ctrl-C."""
    import signal
    import threading
    stop = threading.Event()
    # rclpy's SIGINT handler stops an executor spun by the main thread; ours spins in a thread
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _serve_map(b, g, path, stop)
    finally:
        for s, h in old.items():   # None: a handler installed outside Python (rclpy's)
            signal.signal(s, h if h is not None else
                          (signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL))


def _serve_map(b, g, path: str, stop) -> None:
    import threading
    import time
    from pathlib import Path

    import rclpy

    from chorus_ros.msg import ObjectMap
    from chorus_ros.ros import qos
    from chorus_ros.ros.map_file import publish_map
    chorus = b.nodes["chorus_node"]
    map_id = f"file:{Path(path).name}"
    loader = rclpy.create_node("map_file", namespace=chorus.get_namespace(), context=b.context)
    b.nodes["map_file"] = loader            # destroyed with the others at shutdown
    done = threading.Event()
    n_pieces = [0]
    loader.create_subscription(ObjectMap, "objects", lambda m: done.set() if m.map_id == map_id and n_pieces[0]
                               and m.map_sequence == n_pieces[0] - 1 else None, qos.latched())
    b.executor.add_node(loader)
    b.start()
    t0 = time.perf_counter()
    errors0 = chorus.errors.count
    pub, n_pieces[0] = publish_map(loader, g, map_id=map_id, frame_id=chorus.config.map_frame)  # noqa: F841
    print(f"chorus-ros up: {path}: {len(g)} Gaussians sent in {n_pieces[0]} piece(s); encoding ...", flush=True)
    while not (done.is_set() or stop.is_set() or chorus.errors.count > errors0):
        time.sleep(0.05)
    if done.is_set():
        faint = len(chorus.pipeline.faint)
        print(f"chorus-ros up: map {path} loaded and encoded: {len(chorus.pipeline.map)} Gaussians"
              + (f" (+{faint} below min_opacity {chorus.pipeline.config.min_opacity:g}, set aside)" if faint else "")
              + f", {len(chorus.pipeline.objects())} objects ({time.perf_counter() - t0:.1f} s)", flush=True)
    elif not stop.is_set():
        print(f"chorus-ros up: chorus_node did not take the map {path}: {chorus.errors.last_error}", flush=True)
    while not stop.is_set() and b.context.ok():
        stop.wait(0.2)


def _query(a: argparse.Namespace) -> int:
    """``query --map FILE.ply TEXT...``: load, encode, answer, print (no ROS needed)."""
    import json
    import time

    from chorus_ros.core.errors import ChorusError
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if a.json else (lambda m: print(m, flush=True))
    if not a.checkpoint:
        from chorus_ros.tools.live_demo import DEMO_CHECKPOINT
        a.checkpoint = str(DEMO_CHECKPOINT)
        log(f"chorus-ros query: no --checkpoint given, using the demo checkpoint {a.checkpoint}")
    if a.top_k < 1:
        print(f"chorus-ros query: --top-k must be >= 1, got {a.top_k}", file=sys.stderr)
        return 2
    try:
        g = load_map_file(a.map, log=lambda m: log(f"chorus-ros query: {m}"), checkpoint=a.checkpoint)
        pipe = PerceptionPipeline.from_checkpoint(a.checkpoint, PipelineConfig(device=a.device))
        pipe.apply_update(g, None, full=True)
        t0 = time.perf_counter()
        pipe.encode()
        enc = time.perf_counter() - t0
        results = [{"query": t, "objects": [_hit_dict(h) for h in pipe.query(t, top_k=a.top_k)]} for t in a.text]
    except (ChorusError, ValueError, OSError) as e:
        print(f"chorus-ros query: {e}", file=sys.stderr)
        return 2
    out = {"map": a.map, "checkpoint": a.checkpoint, "gaussians": len(g), "faint_set_aside": len(pipe.faint),
           "objects": len(pipe.objects()),
           "encode_s": round(enc, 3), "results": results}
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    faint = f" ({out['faint_set_aside']} below min_opacity set aside)" if out["faint_set_aside"] else ""
    log(f"{a.map}: {len(g)} Gaussians{faint}, {out['objects']} objects (encoded in {enc:.1f} s)")
    for r in results:
        print(f"{r['query']!r}: {len(r['objects'])} object(s)")
        for i, o in enumerate(r["objects"], 1):
            c, lo, hi = o["centroid"], o["bbox_min"], o["bbox_max"]
            print(f"  {i}. #{o['instance_id']} {o['class'] or '(unlabeled)'}  score {o['score']:+.3f}  "
                  f"centroid ({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f})  box ({lo[0]:.2f}, {lo[1]:.2f}, {lo[2]:.2f})"
                  f"-({hi[0]:.2f}, {hi[1]:.2f}, {hi[2]:.2f})  support {o['support']} Gaussians  "
                  f"confidence {o['confidence']:.2f}" + (f"  code {o['code_id']}" if o["code_id"] >= 0 else ""))
    return 0


def _hit_dict(hit) -> dict:
    r = hit.record
    return {"instance_id": int(r.instance_id), "score": round(float(hit.score), 4), "class": r.label,
            "class_confidence": round(float(r.score), 4),
            "centroid": [round(float(v), 4) for v in r.centroid],
            "bbox_min": [round(float(v), 4) for v in r.bbox_min],
            "bbox_max": [round(float(v), 4) for v in r.bbox_max], "support": int(r.gaussian_count),
            "code_id": int(r.code_id), "confidence": round(float(r.confidence), 4)}


def _make_bag(a: argparse.Namespace) -> int:
    if a.dataset:
        return _make_scene_bag(a)
    if a.out_pos is None:
        print("chorus-ros make-bag: give OUT (the demo bag of a synthetic room) or --dataset DIR", file=sys.stderr)
        return 2
    a.out = a.out_pos
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.ros.bag import DemoBagConfig, make_demo_bag
    scene = generate_scene(SceneConfig(seed=a.seed, target_gaussians=a.gaussians))
    info = make_demo_bag(a.out, scene, DemoBagConfig(steps=a.steps, width=a.width, height=a.height,
                                                     cameras=a.cameras, seed=a.seed))
    print(f"wrote {info.path}: {info.map_updates} map updates, {info.views} views, "
          f"{info.total_gaussians} Gaussians in the final map")
    return 0


def _make_scene_bag(a: argparse.Namespace) -> int:
    """``make-bag --dataset DIR``: a scene folder as a bag (:func:`chorus_ros.ros.bag.make_scene_bag`)."""
    from pathlib import Path

    from chorus_ros.core.datasets import open_scene, parse_views
    from chorus_ros.core.errors import InvalidInputError
    from chorus_ros.ros.bag import SceneBagConfig, make_scene_bag
    out = a.out or a.out_pos or f"{Path(a.dataset).resolve().name}_bag"
    try:
        scene = open_scene(a.dataset, map_path=a.map, views=parse_views(a.views))
        if scene.ignored_properties:
            print(f"{scene.map_path}: ignored PLY properties (not recorded): "
                  f"{', '.join(scene.ignored_properties)}", flush=True)
        info = make_scene_bag(out, scene, SceneBagConfig(pieces=a.pieces, storage=a.storage, camera=a.cameras[0],
                                                         view_period_s=a.view_period))
    except InvalidInputError as e:
        print(f"chorus-ros make-bag: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info.path} ({a.storage}): {info.map_updates} map pieces ({info.total_gaussians} Gaussians), "
          f"{info.views} views; topics: {', '.join(info.topics)}")
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
    spin = threading.Thread(target=ex.spin, name="chorus_replay_spin", daemon=True)
    spin.start()
    try:
        n = replay_bag(a.bag, node, rate=a.rate, namespace=a.namespace, wait_for_subscribers=a.wait)
        print(f"replayed {n} messages from {a.bag}")
    except KeyboardInterrupt:
        pass
    finally:
        # Let the spin thread leave the executor before the interpreter exits: one full test run
        # saw a complete replay abort at exit ("terminate called without an active exception",
        # exit -6) while this thread was never joined; a thread inside rclpy at exit is the
        # likely cause (not reproduced on demand).
        ex.shutdown(timeout_sec=5.0)
        node.destroy_node()
        rclpy.shutdown()
        spin.join(timeout=5.0)
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
    up.add_argument("--map", metavar="FILE.ply", help="3DGS map loaded and encoded at start-up "
                    "(extra PLY properties such as label/instance are ignored)")
    up.set_defaults(fn=_up)
    qu = sub.add_parser("query", help="one-shot object query on a map file (no nodes needed)")
    qu.add_argument("text", nargs="+", help="query text(s), e.g. 'chair'")
    qu.add_argument("--map", required=True, metavar="FILE.ply", help="3DGS map (extra properties ignored)")
    qu.add_argument("--checkpoint", default="", help="checkpoint folder (default: the demo checkpoint)")
    qu.add_argument("--top-k", type=int, default=5, help="objects per query")
    qu.add_argument("--device", default="cpu", help="torch device")
    qu.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    qu.set_defaults(fn=_query)
    mb = sub.add_parser("make-bag", help="record the demo bag of a synthetic room, or a bag of a scene folder")
    mb.add_argument("out_pos", nargs="?", metavar="OUT", help="bag directory to create")
    mb.add_argument("--dataset", metavar="DIR", help="scene folder to record (Replica or export layout)")
    mb.add_argument("--out", metavar="BAG", help="bag directory to create (--dataset; default <DIR name>_bag)")
    mb.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap", help="rosbag2 storage (--dataset)")
    mb.add_argument("--pieces", type=int, default=4, help="spatial map pieces: 1 FULL + DELTAs (--dataset)")
    mb.add_argument("--views", metavar="SLICE", help="frames as a Python slice, e.g. '::4' (--dataset)")
    mb.add_argument("--map", metavar="FILE.ply", help="the folder's 3DGS map (--dataset; default its own)")
    mb.add_argument("--view-period", type=float, default=0.1, metavar="S",
                    help="seconds between recorded views (--dataset)")
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
