"""The live stages of ``chorus-demo``: the ROS nodes on the built-in default scene.

1. **bag**: record a bag of the default room being mapped (a FULL map update, then DELTAs that
   grow it, camera poses + CameraInfo after each step and around the finished room).
2. **nodes**: start chorus_node + query_node in this process (the launch file's node set,
   :class:`~chorus_ros.ros.bringup.Bringup`) with the demo checkpoint.
3. **replay**: publish the bag's raw messages into the live nodes, in lock-step (each view is
   sent once the map updates before it are applied and encoded) and collect the images.
4. **images**: semantic, instance and overlay PNGs per view and a contact sheet
   (``contact_sheet.png``: one row per view, rendered RGB | semantic | instances | overlay).
5. **queries**: call ``query_node/query`` with a few class names and print the ranked objects.
   A query passes only where the answer is: the top object must be mostly (> 50 %) made of
   Gaussians whose ground-truth class (known for the synthetic scene) is the queried one
   (:func:`check_query`); a right class name on an object in the wrong place is a miss.

DDS traffic stays on loopback in a private ROS domain (:func:`chorus_ros.tools.isolate_ros_env`).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEMO_CHECKPOINT = REPO / "checkpoints" / "demo"
"""The demo checkpoint (``chorus-train --config config/train/demo.yaml``)."""
COLUMNS = ("rgb", "semantic_color", "instance", "overlay")
QUERY_CLASSES = ("bed", "sofa", "table", "chair", "lamp", "shelf", "plant", "monitor")


@dataclass
class LiveDemoConfig:
    """Sizes of the live demo (modest: it must finish in minutes on 2 CPU cores)."""

    steps: int = 4
    """Map updates in the bag (one FULL, then DELTAs)."""
    views_per_step: int = 1
    """Views recorded after each map update."""
    final_views: int = 3
    """Views of the finished map."""
    width: int = 320
    """Image width, pixels."""
    height: int = 240
    """Image height, pixels."""
    queries: int = 4
    """Class-name queries sent to query_node."""
    top_k: int = 3
    """Objects printed per query."""
    timeout_s: float = 300.0
    """Give up waiting for the nodes after this long."""


@dataclass
class QueryCheck:
    """Where the top answer of a class-name query is, judged by the scene's ground truth."""

    text: str
    """The query (a class name of the scene)."""
    instance_id: int | None
    """The top object (None: no answer)."""
    share: float
    """Share of the top object's Gaussians whose ground-truth class is ``text`` (0 without answer)."""
    majority: str
    """The most common ground-truth class among the top object's Gaussians ('' without answer)."""
    passed: bool
    """``share > 0.5``: the top object is mostly made of the queried class."""

    def describe(self) -> str:
        if self.instance_id is None:
            return "no object"
        what = f"{100 * self.share:.0f}% {self.text}"
        return what if self.majority == self.text else f"{what}, mostly {self.majority}"


def check_query(text: str, instance_id: int | None, map_ids, map_instances, gt_ids, gt_labels,
                class_names: list[str]) -> QueryCheck:
    """Judge a query's top object by the classes of its Gaussians (not by its label).

    Args:
        text: the queried class name.
        instance_id: the top object's instance id (None: the query returned nothing).
        map_ids, map_instances: ``[N]`` Gaussian ids of the node's map and their instance ids
            (``inst.id``; 0 = none).
        gt_ids, gt_labels: ``[M]`` Gaussian ids of the scene and their ground-truth class ids.
        class_names: names of the ground-truth class ids.
    """
    if instance_id is None:
        return QueryCheck(text, None, 0.0, "", False)
    map_ids = np.asarray(map_ids, dtype=np.int64)
    member = map_ids[np.asarray(map_instances, dtype=np.int64) == int(instance_id)]
    gt_ids = np.asarray(gt_ids, dtype=np.int64)
    order = np.argsort(gt_ids, kind="stable")
    pos = np.clip(np.searchsorted(gt_ids[order], member), 0, max(len(gt_ids) - 1, 0))
    rows = order[pos]
    known = gt_ids[rows] == member if len(gt_ids) else np.zeros(len(member), bool)
    labels = np.asarray(gt_labels, dtype=np.int64)[rows[known]]
    if labels.size == 0:
        return QueryCheck(text, int(instance_id), 0.0, "", False)
    counts = np.bincount(labels, minlength=len(class_names))
    target = class_names.index(text) if text in class_names else -1
    share = float(counts[target]) / labels.size if target >= 0 else 0.0
    return QueryCheck(text, int(instance_id), share, class_names[int(counts.argmax())], share > 0.5)


@dataclass
class LiveResult:
    written: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    queries: dict[str, list[tuple[int, str, float, tuple[float, float, float]]]] = field(default_factory=dict)
    """query -> [(instance id, label, score, centroid xyz)] best first."""
    checks: dict[str, QueryCheck] = field(default_factory=dict)
    """query -> where its top object is (:func:`check_query`)."""


def _until(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise TimeoutError(f"live demo: timed out after {timeout:.0f} s waiting for {what}")


def _save_png(path: Path, rgb: np.ndarray) -> Path:
    import cv2
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {path}")
    return path


def contact_sheet(rows: list[dict[str, np.ndarray]], titles: list[str], columns=COLUMNS) -> np.ndarray:
    """Grid of ``[H, W, 3]`` uint8 images: one row per view, one column per output, with a
    header line per column and a title per row."""
    import cv2
    h, w = rows[0][columns[0]].shape[:2]
    pad, head, side = 2, 16, 58
    sheet = np.full((head + len(rows) * (h + pad), side + len(columns) * (w + pad), 3), 255, np.uint8)
    for j, name in enumerate(columns):
        cv2.putText(sheet, name, (side + j * (w + pad) + 2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for i, (row, title) in enumerate(zip(rows, titles)):
        y = head + i * (h + pad)
        for k, line in enumerate(title.split("\n")):
            cv2.putText(sheet, line, (2, y + 14 + 12 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1,
                        cv2.LINE_AA)
        for j, name in enumerate(columns):
            sheet[y:y + h, side + j * (w + pad):side + j * (w + pad) + w] = row[name]
    return sheet


def _check_top(pipeline, scene, text: str, instance_id: int | None) -> QueryCheck:
    """:func:`check_query` against the node's current map and the synthetic scene's ground truth."""
    from chorus_ros.core.pipeline import ATTR_INSTANCE
    with pipeline.lock:
        ids = pipeline.map.arrays().ids.cpu().numpy()
        inst = (pipeline.map.attribute(ATTR_INSTANCE).cpu().numpy()
                if ATTR_INSTANCE in pipeline.map.attribute_names() else np.zeros(len(ids), np.int64))
    g = scene.gaussians
    return check_query(text, instance_id, ids, inst, g.ids.cpu().numpy(), g.extras["label"].cpu().numpy(),
                       list(scene.labels.names))


def run_live_demo(out: Path, scene, checkpoint: Path | str = DEMO_CHECKPOINT,
                  config: LiveDemoConfig | None = None, log=print) -> LiveResult:
    """Run the live stages (module docstring) on ``scene``; write images under ``out``."""
    from chorus_ros.tools import isolate_ros_env
    isolate_ros_env()
    import rclpy
    from sensor_msgs.msg import Image

    from chorus_ros.core.labels import colorize_instances
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros import qos
    from chorus_ros.ros.bag import MAP_TOPIC, DemoBagConfig, make_demo_bag, replay_bag
    from chorus_ros.ros.bringup import Bringup
    from chorus_ros.srv import QueryObjects

    cfg = config or LiveDemoConfig()
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.yaml").is_file():
        raise FileNotFoundError(f"demo checkpoint {checkpoint} not found: build it with "
                                f"`chorus-train --config config/train/demo.yaml`")
    res = LiveResult()
    out = Path(out)
    live = out / "live"
    live.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="chorus_demo_"))
    try:
        t0 = time.perf_counter()
        bag = make_demo_bag(tmp / "bag", scene, DemoBagConfig(
            steps=cfg.steps, views_per_step=cfg.views_per_step, final_views=cfg.final_views,
            width=cfg.width, height=cfg.height))
        log(f"[bag] {bag.map_updates} map updates growing to {bag.total_gaussians} Gaussians, "
            f"{bag.views} views ({time.perf_counter() - t0:.1f} s)")

        t0 = time.perf_counter()
        with Bringup(checkpoint=str(checkpoint), log_level="warn",
                     parameters={"chorus_node": {"publish_rgb": True}}) as b:
            chorus = b.nodes["chorus_node"]
            probe = rclpy.create_node("demo_probe", context=b.context)
            b.executor.add_node(probe)
            from chorus_ros.ros.chorus_node import OUTPUTS
            got: dict[str, dict[int, Image]] = {k: {} for k in ("semantic",) + COLUMNS}
            for name in got:
                probe.create_subscription(
                    Image, f"camera_0/{OUTPUTS[name][0]}",
                    lambda m, n=name: got[n].__setitem__(cv.stamp_to_ns(m.header.stamp), m), qos.images(50))
            log(f"[nodes] chorus_node + query_node up, checkpoint {checkpoint} "
                f"({time.perf_counter() - t0:.1f} s)")

            t0 = time.perf_counter()
            sent_maps, sent_views = [0], [0]
            step_of: dict[int, int] = {}

            def lockstep(m) -> None:
                # map updates and views go out once the node has received and finished everything
                # before them, so each view shows the map as of its stamp
                if m.topic == MAP_TOPIC or m.topic.endswith("/pose"):
                    _until(lambda: chorus.updates_received >= sent_maps[0]
                           and chorus.views_received >= sent_views[0] and chorus.wait_idle(0.05),
                           cfg.timeout_s, "the node to finish the previous messages")
                if m.topic == MAP_TOPIC:
                    sent_maps[0] += 1
                elif m.topic.endswith("/pose"):
                    step_of[m.t_ns] = sent_maps[0]
                    sent_views[0] += 1
            replay_bag(bag.path, probe, rate=0.0, before_publish=lockstep)
            stamps = bag.view_stamps_ns
            try:
                _until(lambda: all(s in got[k] for s in stamps for k in got), cfg.timeout_s, "the view images")
            except TimeoutError:
                log(f"[replay] node errors: {list(chorus.errors.recent)[-5:]}")
                raise
            errors = list(chorus.errors.recent)
            log(f"[replay] {len(stamps)} views rendered while the map grew; map {len(chorus.pipeline.map)} "
                f"Gaussians, {len(chorus.pipeline.objects())} objects, encode lag {chorus.encode_lag_s:.1f} s, "
                f"errors: {len(errors)} ({time.perf_counter() - t0:.1f} s)")
            for e in errors[:5]:
                log(f"    {e}")

            t0 = time.perf_counter()
            rows, titles = [], []
            for i, s in enumerate(stamps):
                imgs = {k: cv.image_to_numpy(got[k][s]) for k in got}
                ids = imgs["instance"]
                imgs["instance"] = colorize_instances(np.where(ids == 0, 65535, ids))   # 0 (none): black
                labels = imgs.pop("semantic")
                for name in ("semantic_color", "instance", "overlay"):
                    res.written.append(_save_png(live / f"view{i:02d}_{name.replace('_color', '')}.png",
                                                 imgs[name]))
                rows.append(imgs)
                step = step_of.get(s, cfg.steps)
                cover = (labels != 65535).mean()
                titles.append(f"view {i}\nmap step {step}\n{100 * cover:.0f}% lab.")
            res.written.append(_save_png(out / "contact_sheet.png", contact_sheet(rows, titles)))
            log(f"[images] {len(res.written)} PNGs in {live}/ and {out / 'contact_sheet.png'} "
                f"({time.perf_counter() - t0:.1f} s)")

            t0 = time.perf_counter()
            present = {r.label for r in chorus.pipeline.objects()}
            gt_present = {i.class_name for i in scene.instances.values() if not i.stuff}
            names = [c for c in QUERY_CLASSES if c in gt_present][: cfg.queries]
            client = probe.create_client(QueryObjects, "query_node/query")
            if not client.wait_for_service(timeout_sec=30):
                raise TimeoutError("live demo: query_node/query is not available")
            for text in names:
                fut = client.call_async(QueryObjects.Request(text=text, top_k=cfg.top_k, min_score=-1.0))
                _until(fut.done, 60, f"the answer to {text!r}")
                r = fut.result()
                if not r.success:
                    log(f"[query] {text!r}: error: {r.message}")
                    continue
                res.queries[text] = [(o.instance_id, o.label, s, (o.centroid.x, o.centroid.y, o.centroid.z))
                                     for o, s in zip(r.objects, r.scores)]
                ranked = ", ".join(f"#{o.instance_id} {o.label} {s:+.2f} at "
                                   f"({o.centroid.x:.1f}, {o.centroid.y:.1f}, {o.centroid.z:.1f})"
                                   for o, s in zip(r.objects, r.scores))
                chk = _check_top(chorus.pipeline, scene, text, r.objects[0].instance_id if r.objects else None)
                res.checks[text] = chk
                mark = f"ok: top object {chk.describe()}" if chk.passed else f"MISS: top object {chk.describe()}"
                log(f"[query] {text!r} (map seq {r.map_sequence}) [{mark}]: {ranked or 'no objects'}")
            passed = sum(c.passed for c in res.checks.values())
            log(f"[queries] {passed} of {len(names)} queries answered in the right place (top object mostly "
                f"of the queried class); object labels in the map: {', '.join(sorted(present))} "
                f"({time.perf_counter() - t0:.1f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res
