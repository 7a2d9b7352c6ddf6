"""``chorus-eval --bag BAG --checkpoint CKPT``: a scene bag played into the running nodes, scored.

1. **bag**: :func:`~chorus_ros.ros.bag.read_scene_bag` reads the ground truth (class and instance
   images per view stamp), the view cameras and the final map of a bag written by
   ``chorus-ros make-bag --dataset DIR``.
2. **nodes**: chorus_node + query_node start in this process from ``config/chorus.yaml`` and the
   checkpoint (:class:`~chorus_ros.ros.bringup.Bringup`, as ``chorus-ros up``), listening on the
   bag's camera; the shared alpha threshold is set as their ``semantic.min_alpha``.
3. **replay**: only the nodes' inputs (map updates, camera images, poses, CameraInfo) are published
   as raw CDR
   (:func:`~chorus_ros.ros.bag.replay_bag`): lock-step by default (``rate`` 0: each message once
   the node has finished everything before it, so no view is dropped), or paced by the recorded
   stamps times ``rate`` (views the keep-newest queue drops are counted). The class and instance
   images the node publishes are collected per stamp.
4. **scoring**: the views that came back are scored by the offline code itself,
   :func:`chorus_ros.core.metrics.scenes.evaluate_scenes`, through :class:`NodeOutputs`, a
   stand-in for the pipeline that answers ``render_view`` with the images the node published for
   that camera, ``objects`` with the node's last object map and ``query`` by calling
   ``query_node/query``. The alpha that voids ground truth where the map has no surface is a
   property of the map, not of the model: it is rendered here from the bag's map with the node's
   render settings (the node does not publish it).
5. **ROS measurements** (in the same report and JSON, key ``ros``): latency from publishing a
   view's pose + CameraInfo to receiving its class image (percentiles), dropped views, encoder
   lag per map update (publishing it -> the node's object map for that sequence), the node's own
   encode times, and the peak resident memory of this process (nodes included).

DDS stays on loopback in a private ROS domain (:func:`chorus_ros.tools.isolate_ros_env`).
"""
from __future__ import annotations

import copy
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

__all__ = ["BagEvalConfig", "RosMeasurements", "BagEvalResult", "NodeOutputs", "evaluate_bag",
           "bag_results_json", "bag_markdown", "add_arguments", "run_cli"]


@dataclass
class BagEvalConfig:
    """How :func:`evaluate_bag` plays and scores a scene bag (``chorus-eval --bag`` flags)."""

    checkpoint: str = ""
    """Checkpoint folder of the nodes."""
    rate: float = 0.0
    """0: lock-step replay (no view dropped); > 0: the recorded timing sped up by this factor."""
    min_alpha: float | None = None
    """Shared alpha threshold (node's ``semantic.min_alpha`` and ground-truth void); None = the
    node's configured value."""
    device: str = ""
    """Torch device of the nodes ('' = the params file's)."""
    config: str = ""
    """ROS 2 params file of the nodes ('' = the package's config/chorus.yaml)."""
    labels_map: Any = None
    """Ground-truth name -> model name (:func:`~chorus_ros.core.datasets.load_labels_map`)."""
    timeout_s: float = 600.0
    """Give up waiting for the nodes after this long (seconds, per wait)."""
    settle_s: float = 2.0
    """With ``rate`` > 0: the replay ends once the node is idle and no image came for this long."""
    query: bool = True
    """Run query top-1 through query_node."""
    progress: bool = True
    """Progress bars / lines on stderr."""


@dataclass
class RosMeasurements:
    """What the replay measured (seconds unless stated)."""

    replay: str
    """'lock-step' or 'rate <x>'."""
    views_sent: int
    views_received: int
    latency_s: list[float]
    """Per received view: pose + CameraInfo published -> class image received."""
    encoder_lag_s: list[float]
    """Per map update: published -> the node's object map for its sequence (or a later one)."""
    node_encode_s: float
    """Sum of the node's encodes (network + scoring + grouping) observed during the replay."""
    node_encode_lag_s: float
    """Largest ``encode_lag_s`` the node reported in ``~/status``."""
    render_ms: list[float]
    """Per view: the node's ``render_view`` time (rendering + decoding), milliseconds."""
    peak_rss_mb: float
    """Peak resident memory of this process (nodes, replay and scoring), MiB."""
    wall_s: float
    """Replay wall time."""
    node_errors: list[str] = field(default_factory=list)

    @property
    def dropped_views(self) -> int:
        return self.views_sent - self.views_received

    def summary(self) -> dict:
        """JSON-able numbers: latency percentiles (ms), drops, encoder lag, memory."""
        def pct(v, scale=1.0):
            if not v:
                return None
            a = np.asarray(v, dtype=np.float64) * scale
            return {"p50": round(float(np.percentile(a, 50)), 2), "p90": round(float(np.percentile(a, 90)), 2),
                    "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2),
                    "mean": round(float(a.mean()), 2), "n": int(a.size)}
        return {"replay": self.replay, "views_sent": self.views_sent, "views_received": self.views_received,
                "dropped_views": self.dropped_views, "latency_ms": pct(self.latency_s, 1000.0),
                "encoder_lag_s": pct(self.encoder_lag_s), "node_encode_s": round(self.node_encode_s, 3),
                "node_encode_lag_s_max": round(self.node_encode_lag_s, 3),
                "node_render_ms": pct(self.render_ms), "peak_rss_mb": round(self.peak_rss_mb, 1),
                "replay_wall_s": round(self.wall_s, 2), "node_errors": list(self.node_errors[:10])}


@dataclass
class BagEvalResult:
    """Scores (the offline result type) plus the ROS measurements."""

    dataset: Any
    """:class:`~chorus_ros.core.metrics.scenes.DatasetEvalResult` of the views that came back."""
    ros: RosMeasurements
    bag: Any
    """The :class:`~chorus_ros.ros.bag.SceneBag`."""


def _viewkey(camera) -> tuple:
    vm = np.asarray(camera.viewmat, dtype=np.float64).round(6).ravel()
    return (int(camera.width), int(camera.height), *vm.tolist())


class NodeOutputs:
    """A stand-in for :class:`~chorus_ros.core.pipeline.PerceptionPipeline` that answers from what
    the nodes published, so :func:`~chorus_ros.core.metrics.scenes.evaluate_scenes` scores them
    with the offline code.

    Args:
        labels: the node's label set (class ids of its images).
        config: a copy of the node's PipelineConfig (render settings, ``semantic.min_alpha``).
        gaussians: the map the node holds (from the bag), for the alpha of the ground-truth void.
        views: ``{_viewkey(camera): (labels [H, W] uint16, instances [H, W] int32, rgb or None)}``.
        objects: the node's last object map (ObjectRecord messages).
        query: ``f(text) -> instance id or None`` (query_node's top answer).
        has_language: whether the node's objects carry language embeddings.
    """

    def __init__(self, labels, config, gaussians, views: dict, objects: list, query: Callable[[str], int | None],
                 has_language: bool) -> None:
        from chorus_ros.core.datasets import strip_gaussians
        self.labels = labels
        self.config = config
        self._g = strip_gaussians(gaussians).to(config.device)   # the node's renderer and device
        self._views = views
        self._objects = objects
        self._query = query
        self._has_language = has_language
        self.map = SimpleNamespace(attribute_names=lambda: [])   # no per-Gaussian outputs leave the node

    def apply_update(self, upserts, removed_ids=None, full: bool = False) -> int:
        """The map reached the node through the bag; nothing to do here."""
        return 0

    def encode(self, full: bool = False) -> None:
        """The node encoded while the bag played (timed there)."""
        return None

    def _heads(self) -> list[str]:
        return ["language"] if self._has_language else []

    def render_view(self, camera):
        """The node's published images for ``camera`` (+ locally rendered alpha and colours)."""
        import torch

        from chorus_ros.core.render import render
        key = _viewkey(camera)
        if key not in self._views:
            raise KeyError("no node output for this view")
        lab, inst, rgb = self._views[key]
        with torch.no_grad():
            alpha = render(self._g, camera, self.config.render).alpha.reshape(lab.shape).cpu().numpy()
        color = self.labels.colorize(lab)
        return SimpleNamespace(labels=lab, instances=inst, alpha=alpha, color=color,
                               rgb=rgb if rgb is not None else np.zeros(lab.shape + (3,), np.uint8))

    def objects(self) -> list:
        return list(self._objects)

    def query(self, text: str, top_k: int = 1, min_score: float = -1.0) -> list:
        iid = self._query(text)
        return [] if iid is None else [SimpleNamespace(record=SimpleNamespace(instance_id=int(iid)), score=0.0)]


def _until(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise TimeoutError(f"chorus-eval --bag: timed out after {timeout:.0f} s waiting for {what}")


def evaluate_bag(path: str | Path, config: BagEvalConfig, log: Callable[[str], None] = print) -> BagEvalResult:
    """Play a scene bag into chorus_node + query_node and score their outputs (module docstring).

    Raises:
        DatasetError: missing or malformed bag, a bag without ground truth (naming the bag).
        TimeoutError: the nodes did not answer within ``timeout_s``.
    """
    from chorus_ros.tools import isolate_ros_env
    isolate_ros_env()
    import rclpy
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image

    from chorus_ros.core.datasets import Intrinsics, SceneFolder, SceneFrame
    from chorus_ros.core.errors import DatasetError
    from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes
    from chorus_ros.msg import ObjectMap, Status
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros import qos
    from chorus_ros.ros.bag import MAP_TOPIC, read_scene_bag, replay_bag
    from chorus_ros.ros.bringup import Bringup
    from chorus_ros.ros.chorus_node import OUTPUTS
    from chorus_ros.srv import QueryObjects

    cfg = config
    t0 = time.perf_counter()
    bag = read_scene_bag(path, with_inputs=True)
    cam_ns = bag.camera
    stamps = list(bag.view_stamps_ns)
    if not stamps:
        raise DatasetError(f"{path}: no views (no poses on /{cam_ns}/pose)")
    log(f"[bag] {path}: scene {bag.info.get('scene')}, {len(bag.gaussians)} Gaussians in "
        f"{bag.info.get('pieces', '?')} pieces, {len(stamps)} views ({time.perf_counter() - t0:.1f} s)")
    if not cfg.checkpoint or not (Path(cfg.checkpoint) / "config.yaml").is_file():
        raise DatasetError(f"checkpoint folder {cfg.checkpoint!r} has no config.yaml")

    params: dict[str, Any] = {"cameras": [cam_ns]}
    if cfg.min_alpha is not None:
        params["semantic.min_alpha"] = float(cfg.min_alpha)
    t0 = time.perf_counter()
    with Bringup(cfg.config or None, checkpoint=str(cfg.checkpoint), device=cfg.device, log_level="warn",
                 parameters={"chorus_node": params}) as b:
        chorus = b.nodes["chorus_node"]
        probe = rclpy.create_node("bag_eval_probe", context=b.context)
        b.executor.add_node(probe)
        lock = threading.Lock()
        got: dict[str, dict[int, Any]] = {"semantic": {}, "instance": {}, "rgb": {}}
        arrived: dict[int, float] = {}
        objects: list = []
        objects_seen: dict[int, float] = {}
        status_lag = [0.0]

        def on_image(name: str, m) -> None:
            s = cv.stamp_to_ns(m.header.stamp)
            with lock:
                got[name][s] = m
                if name == "semantic":
                    arrived.setdefault(s, time.monotonic())

        def on_objects(m) -> None:
            now = time.monotonic()
            with lock:
                objects[:] = [m]
                objects_seen.setdefault(int(m.map_sequence), now)

        for name in got:
            probe.create_subscription(Image, f"{cam_ns}/{OUTPUTS[name][0]}",
                                      lambda m, n=name: on_image(n, m), qos.images(max(50, len(stamps))))
        probe.create_subscription(ObjectMap, "objects", on_objects, qos.latched())
        probe.create_subscription(Status, "chorus_node/status",
                                  lambda m: status_lag.__setitem__(0, max(status_lag[0], m.encode_lag_s)),
                                  qos.status())
        log(f"[nodes] chorus_node + query_node up, checkpoint {cfg.checkpoint} ({time.perf_counter() - t0:.1f} s)")

        sent_at: dict[int, float] = {}
        map_sent: dict[int, float] = {}
        counts = {"maps": 0, "views": 0}
        encodes: list = []

        def note_encode() -> None:
            last = chorus.last_encode
            if last is not None and (not encodes or encodes[-1] is not last):
                encodes.append(last)

        def before(m) -> None:
            note_encode()
            if cfg.rate <= 0 and (m.topic == MAP_TOPIC or m.topic.endswith("/pose")):
                _until(lambda: chorus.updates_received >= counts["maps"] and chorus.views_received >= counts["views"]
                       and chorus.wait_idle(0.05), cfg.timeout_s, "the node to finish the previous messages")
                note_encode()
            now = time.monotonic()
            if m.topic == MAP_TOPIC:
                map_sent[counts["maps"]] = now
                counts["maps"] += 1
            elif m.topic.endswith("/pose"):
                counts["views"] += 1
            elif m.topic.endswith("/camera_info"):  # the pair is complete once its CameraInfo is out
                sent_at[cv.stamp_to_ns(deserialize_message(m.raw, CameraInfo).header.stamp)] = now

        t0 = time.perf_counter()
        replay_bag(bag.path, probe, rate=cfg.rate, topics=bag.input_topics, before_publish=before)
        if cfg.rate <= 0:
            _until(lambda: all(s in got["semantic"] and s in got["instance"] for s in stamps), cfg.timeout_s,
                   "the view images")
        else:
            last_n, last_t = -1, time.monotonic()
            end = time.monotonic() + cfg.timeout_s
            while time.monotonic() < end:
                n = len(got["semantic"])
                if n != last_n:
                    last_n, last_t = n, time.monotonic()
                if n >= len(stamps) or (chorus.wait_idle(0.05) and time.monotonic() - last_t > cfg.settle_s):
                    break
                time.sleep(0.05)
        n_maps = counts["maps"]
        _until(lambda: any(int(m.map_sequence) >= n_maps - 1 for m in objects), cfg.timeout_s,
               "the object map of the last map update")
        note_encode()
        wall = time.perf_counter() - t0
        received = [s for s in stamps if s in got["semantic"] and s in got["instance"]]
        lat = [arrived[s] - sent_at[s] for s in received if s in sent_at]
        seqs = sorted(objects_seen)
        lags = []
        for q, t_pub in sorted(map_sent.items()):
            later = [objects_seen[s] for s in seqs if s >= q]
            if later:
                lags.append(min(later) - t_pub)
        timings = {t.stamp_ns: t for t in list(chorus.view_timings)}
        render_ms = [1000.0 * timings[s].render for s in received if s in timings]
        errors = list(chorus.errors.recent)
        log(f"[replay] {'lock-step' if cfg.rate <= 0 else f'rate {cfg.rate:g}'}: {len(received)} of {len(stamps)} "
            f"views came back, node errors: {len(errors)} ({wall:.1f} s)")

        # ------------------------------------------------------------------ scoring
        labels = chorus.pipeline.labels
        node_cfg = copy.deepcopy(chorus.pipeline.config)
        views: dict[tuple, tuple] = {}
        frames = []
        for k, s in enumerate(stamps):
            if s not in received:
                continue
            cam = bag.cameras[s]
            lab = cv.image_to_numpy(got["semantic"][s])
            ins = cv.image_to_numpy(got["instance"][s]).astype(np.int32)
            rgb = cv.image_to_numpy(got["rgb"][s]) if s in got["rgb"] else None
            views[_viewkey(cam)] = (lab, ins, rgb)
            idx = bag.info.get("frame_indices", list(range(len(stamps))))[k]
            frames.append(SceneFrame(int(idx), cam.c2w, bag.rgb.get(s), None, bag.semantic[s],
                                     bag.instance.get(s), cam))
        if not frames:
            raise TimeoutError(f"chorus-eval --bag: no view came back from the node; errors: {errors[-3:]}")
        c0 = frames[0].camera
        K = c0.K.double().numpy()
        intr = Intrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), c0.width, c0.height)
        scene = SceneFolder.in_memory(str(bag.info.get("scene", Path(path).name)), bag.gaussians, bag.classes,
                                      frames, intrinsics=intr, unlabeled_id=int(bag.info["unlabeled_id"]),
                                      instance_none_id=int(bag.info["instance_none_id"]),
                                      labels_map=cfg.labels_map, stuff_names=bag.info.get("stuff", ()))
        scene.ignored_properties = list(bag.info.get("ignored_properties", []))
        client = probe.create_client(QueryObjects, "query_node/query")

        def ask(text: str) -> int | None:
            if not client.wait_for_service(timeout_sec=30):
                raise TimeoutError("chorus-eval --bag: query_node/query is not available")
            fut = client.call_async(QueryObjects.Request(text=text, top_k=1, min_score=-1.0))
            _until(fut.done, cfg.timeout_s, f"the answer to {text!r}")
            r = fut.result()
            return int(r.objects[0].instance_id) if r.success and r.objects else None

        omap = objects[0]
        stand_in = NodeOutputs(labels, node_cfg, bag.gaussians, views, list(omap.objects), ask,
                               has_language=int(omap.embedding_dim) > 0)
        res = evaluate_scenes(lambda: stand_in, [scene], SceneEvalConfig(min_alpha=cfg.min_alpha, query=cfg.query),
                              progress=cfg.progress)
    enc = float(sum(e.seconds_encode + e.seconds_semantic + e.seconds_instances for e in encodes))
    rms = float(np.mean(render_ms)) if render_ms else float("nan")
    for s in res.scenes + [res.total]:
        s.encode_s, s.render_ms_per_view = enc, rms
    ros = RosMeasurements("lock-step" if cfg.rate <= 0 else f"rate {cfg.rate:g}", len(stamps), len(received),
                          lat, lags, enc, float(status_lag[0]), render_ms,
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, wall, errors)
    return BagEvalResult(res, ros, bag)


def bag_results_json(result: BagEvalResult) -> dict:
    """:func:`~chorus_ros.core.metrics.scenes.results_json` of the scored views plus ``ros``
    (:meth:`RosMeasurements.summary`)."""
    from chorus_ros.core.metrics.scenes import results_json
    out = results_json(result.dataset)
    out["ros"] = result.ros.summary()
    return out


def bag_markdown(result: BagEvalResult, *, title: str = "Evaluation through the nodes (bag replay)",
                 command: str = "", checkpoint: str = "", plots: dict | None = None,
                 report_path: str | None = None) -> str:
    """The offline report (:func:`~chorus_ros.core.metrics.report.dataset_markdown`) of the scored
    views, with a table of the ROS measurements."""
    from chorus_ros.core.metrics.report import dataset_markdown
    r = result.ros.summary()

    def p(d, k):
        return "n/a" if not d else f"{d[k]:.1f}"
    lat, lag = r["latency_ms"], r["encoder_lag_s"]
    setup = (f"Bag `{result.bag.path}` played into chorus_node + query_node ({r['replay']}), checkpoint "
             f"`{checkpoint}`; the images the node published are scored with the offline metric code; "
             "encode s and render ms/view are the node's own.")
    ros = ("\n## Through the nodes\n\n| replay | views sent | received | dropped | latency p50 ms | p90 | p99 | max "
           "| encoder lag p50 s | max | node encode s | peak RSS MiB |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
           f"| {r['replay']} | {r['views_sent']} | {r['views_received']} | {r['dropped_views']} | {p(lat, 'p50')} | "
           f"{p(lat, 'p90')} | {p(lat, 'p99')} | {p(lat, 'max')} | {p(lag, 'p50')} | {p(lag, 'max')} | "
           f"{r['node_encode_s']:.2f} | {r['peak_rss_mb']:.0f} |\n\n"
           "Latency: a view's pose + CameraInfo published -> its class image received (same process). Encoder lag: "
           "a map update published -> the node's object map for that sequence. Dropped: views whose images never "
           "came back (the node's keep-newest queue). Peak RSS: this process, nodes included.\n")
    md = dataset_markdown(result.dataset, title=title, command=command, setup=setup, plots=plots,
                          report_path=report_path)
    head, sep, rest = md.partition("\n## ")
    return head + ros + (sep + rest if sep else "")


# ------------------------------------------------------------------------------ command line
def add_arguments(ap) -> None:
    """``chorus-eval`` options of the bag path (the shared ones, --checkpoint, --labels-map,
    --min-alpha, --device, --out, --json, --plots, ..., come from chorus-eval itself)."""
    ap.add_argument("--bag", metavar="BAG", help="scene bag (chorus-ros make-bag --dataset) played into the nodes")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="with --bag: 0 = lock-step (no view dropped); > 0 = recorded timing x this factor")
    ap.add_argument("--ros-config", default="", metavar="FILE", help="with --bag: the nodes' ROS 2 params file")


def run_cli(a, command: str) -> int:
    """``chorus-eval --bag``: evaluate, then write the report, JSON and plots like ``--dataset``."""
    import json
    import sys

    from chorus_ros.core.datasets import load_labels_map
    lm = load_labels_map(a.labels_map) if a.labels_map else None
    try:
        res = evaluate_bag(a.bag, BagEvalConfig(checkpoint=a.checkpoint, rate=a.rate, min_alpha=a.min_alpha,
                                                device=a.device, config=a.ros_config, labels_map=lm,
                                                progress=not a.no_progress),
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    except TimeoutError as e:
        print(f"chorus-eval: error: {e}", file=sys.stderr)
        return 1
    plots = None
    if a.plots:
        from chorus_ros.core.metrics.plots import write_plots
        plots = write_plots(res.dataset, a.plots)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(bag_results_json(res), indent=1) + "\n", encoding="utf-8")
    md = bag_markdown(res, title=a.title or "Evaluation through the nodes (bag replay)", command=command,
                      checkpoint=a.checkpoint, plots=plots, report_path=None if a.out == "-" else a.out)
    print(md)
    if a.out != "-":
        from chorus_ros.core.metrics.report import replace_section
        if a.section:
            replace_section(a.out, a.section, md)
        else:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(md, encoding="utf-8")
    return 0
