"""chorus_node over real DDS: images equal the core pipeline's output for the same pose, a map
grown by deltas gives the same final images as the full map, latched label table and object map."""
import time

import numpy as np
import pytest
import torch

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros

W, H = 64, 48


@pytest.fixture(scope="module")
def node(harness, pipeline_factory):
    from chorus_ros.ros.chorus_node import ChorusNode
    n = harness.add(ChorusNode("chorus_node", pipeline=pipeline_factory(), context=harness.context,
                               cli_args=["--ros-args", "-p", "publish_depth:=true", "-p", "publish_rgb:=true",
                                         "-p", "cameras:=[camera_0,camera_1]"]))
    yield n
    harness.remove(n)


@pytest.fixture(scope="module")
def views(small_scene):
    from chorus_ros.core.geometry import Camera
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    tr = make_trajectory(small_scene, TrajectoryConfig(loop_views=3, random_views=0, width=W, height=H, seed=5))
    return [Camera(c.viewmat, c.K, W, H, f"cam{i}_optical") for i, c in enumerate(tr.cameras)]


def _send_map(harness, topic, updates):
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    pub = harness.publisher(GaussianMapUpdate, topic, qos.latched(16))
    for msg in updates:
        pub.publish(msg)
    return pub


class Outputs:
    """Every image output of one camera namespace, keyed by (output name, stamp ns)."""

    def __init__(self, harness, prefix):
        from sensor_msgs.msg import Image

        from chorus_ros.ros.chorus_node import OUTPUTS
        self.got = {name: harness.collect(Image, f"{prefix}/{topic}") for name, (topic, _) in OUTPUTS.items()}

    def images(self, stamp_ns, names):
        from chorus_ros.ros import conversions as cv
        out = {}
        for name in names:
            msgs = [m for m in self.got[name] if cv.stamp_to_ns(m.header.stamp) == stamp_ns]
            if not msgs:
                return None
            out[name] = msgs[-1]
        return out


def _request(harness, prefix, cam, stamp_ns):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo

    from chorus_ros.ros import conversions as cv
    pose, info = cv.camera_to_msgs(cam, stamp_ns, "map")
    harness.publisher(PoseStamped, f"{prefix}/pose").publish(pose)
    harness.publisher(CameraInfo, f"{prefix}/camera_info").publish(info)
    return pose, info


ALL = ["semantic", "semantic_color", "overlay", "instance", "confidence", "depth", "rgb"]


@pytest.fixture(scope="module")
def full_map(harness, node, small_scene, wait_until):
    """The node holds the whole scene (map 'm', sequence 0), encoded. Every test that needs the
    map asks for it, so none depends on another having run first."""
    from chorus_ros.ros.map_updates import map_update_to_msg
    full = map_update_to_msg(small_scene.gaussians, map_id="m", sequence=0, full=True, stamp=10,
                             include_extras=True)
    _send_map(harness, "map_updates", [full])
    wait_until(lambda: node.encoded_version > 0 and node.wait_idle(0.1), 60, "the map to be encoded")
    return full


def test_images_equal_the_pipeline_output_for_the_same_pose(harness, node, full_map, views, small_scene,
                                                            pipeline_factory, wait_until):
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros.chorus_node import OUTPUTS
    from chorus_ros.ros.map_updates import map_update_from_msg
    full = full_map
    outs = {c: Outputs(harness, c) for c in ("camera_0", "camera_1")}
    ref = pipeline_factory()
    ref.apply_update(map_update_from_msg(full).gaussians, None, full=True)
    ref.encode()
    for i, cam in enumerate(views[:2]):
        stamp = 1_000_000_000 * (i + 1) + 7
        camera = f"camera_{i}"
        pose, info = _request(harness, camera, cam, stamp)
        wait_until(lambda: outs[camera].images(stamp, ALL) is not None, 60, f"all images of view {i}")
        got = outs[camera].images(stamp, ALL)
        expect = cv.view_images(ref.render_view(cv.camera_from_msgs(pose, info)), ref.labels,
                                ref.config.overlay_alpha)
        for name in ALL:
            msg = got[name]
            assert cv.stamp_to_ns(msg.header.stamp) == stamp and msg.header.frame_id == cam.frame_id
            assert msg.encoding == OUTPUTS[name][1] and (msg.width, msg.height) == (W, H)
            arr = cv.image_to_numpy(msg)
            assert arr.dtype == expect[name].dtype
            np.testing.assert_array_equal(arr, expect[name], err_msg=name)
        sem = cv.image_to_numpy(got["semantic"])
        assert (sem != 65535).mean() > 0.5 and len(np.unique(sem)) > 2   # not a degenerate view
    assert node.views_published >= 2 and not node.errors.recent


def test_label_table_and_object_map_are_latched(harness, node, full_map, small_scene, wait_until):
    """A late joiner (subscribing after publication) still gets both."""
    from chorus_ros.msg import LabelInfo, ObjectMap
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros import qos
    labels = harness.collect(LabelInfo, "semantic/label_info", qos.latched())
    objects = harness.collect(ObjectMap, "objects", qos.latched())
    wait_until(lambda: labels and objects, 10, "latched label info and object map")
    got = cv.msg_to_labelset(labels[-1], small_scene.labels.name)
    assert got.names == small_scene.labels.names
    np.testing.assert_array_equal(got.colors, small_scene.labels.colors)
    om = objects[-1]
    recs = node.pipeline.objects()
    assert om.map_id == "m" and om.map_sequence == 0 and om.header.frame_id == "map"
    assert [o.instance_id for o in om.objects] == [r.instance_id for r in recs] and len(recs) > 3
    assert [o.code_id for o in om.objects] == [r.code_id for r in recs]
    np.testing.assert_allclose([o.confidence for o in om.objects], [r.confidence for r in recs], rtol=1e-6)
    assert 0 < min(o.confidence for o in om.objects) < max(o.confidence for o in om.objects) <= 1
    assert om.embedding_dim == node.pipeline.text_encoder.dim
    assert {o.label for o in om.objects} <= set(small_scene.labels.names)


def test_map_grown_by_deltas_gives_the_same_final_images(harness, node, full_map, views, small_scene, pipeline_factory,
                                                         wait_until):
    """A second node fed FULL(part) + DELTAs (with a transient clutter Gaussian removed again)
    renders the same final images as the node that got the full map at once."""
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros.chorus_node import ChorusNode
    from chorus_ros.ros.map_updates import map_update_to_msg
    g = small_scene.gaussians
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(g)))
    parts = [g.index(order[a:b]) for a, b in ((0, 1000), (1000, 1800), (1800, len(g)))]
    clutter = g.index(torch.arange(5))
    clutter = GaussianArrays(clutter.means + 0.3, clutter.sh, clutter.opacities, clutter.log_scales,
                             clutter.quats, clutter.ids + 10_000_000,
                             {k: v.clone() for k, v in clutter.extras.items()})
    msgs = [map_update_to_msg(parts[0], map_id="grow", sequence=5, full=True, include_extras=True),
            map_update_to_msg(GaussianArrays.concat([parts[1], clutter]), map_id="grow", sequence=6,
                              full=False, include_extras=True),
            map_update_to_msg(parts[2], map_id="grow", sequence=7, full=False, include_extras=True,
                              removed_ids=clutter.ids)]
    grown = harness.add(ChorusNode("chorus_node", namespace="grow", pipeline=pipeline_factory(),
                                   context=harness.context,
                                   cli_args=["--ros-args", "-p", "publish_depth:=true", "-p", "publish_rgb:=true"]))
    try:
        out_full, out_grown = Outputs(harness, "camera_0"), Outputs(harness, "grow/camera_0")
        pub = _send_map(harness, "grow/map_updates", [])
        for m in msgs:            # one at a time: each delta is encoded incrementally
            pub.publish(m)
            wait_until(lambda: grown._tracker.last_sequence == m.sequence and grown.wait_idle(0.1), 60,
                       f"update {m.sequence}")
        assert len(grown.pipeline.map) == len(g) and not grown.errors.recent
        cam = views[2]
        stamp = 50_000_000_000
        _request(harness, "camera_0", cam, stamp)
        _request(harness, "grow/camera_0", cam, stamp)
        wait_until(lambda: out_full.images(stamp, ALL) and out_grown.images(stamp, ALL), 60, "both views")
        a = {k: cv.image_to_numpy(v) for k, v in out_full.images(stamp, ALL).items()}
        b = {k: cv.image_to_numpy(v) for k, v in out_grown.images(stamp, ALL).items()}
        for name in ("semantic", "semantic_color", "overlay", "rgb", "depth", "confidence"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        # instance ids: the same partition of the image into objects
        pairs = {(int(x), int(y)) for x, y in zip(a["instance"].ravel(), b["instance"].ravel())}
        assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})
        assert ((a["instance"] == 0) == (b["instance"] == 0)).all()
    finally:
        harness.remove(grown)



@pytest.fixture(scope="module")
def query(harness, tiny_text_encoder):
    from chorus_ros.ros.query_node import QueryNode
    q = harness.add(QueryNode("query_node", text_encoder=tiny_text_encoder, context=harness.context,
                              cli_args=["--ros-args", "-p", "relevance_enabled:=true",
                                        "-p", "relevance_max_rate_hz:=0.0"]))
    yield q
    harness.remove(q)


def test_class_name_queries_find_the_objects_of_the_map(harness, node, full_map, query, small_scene, wait_until):
    """chorus_node's object map -> query_node: each queried class name's best object is of that
    class and sits where the scene has an instance of it."""
    from chorus_ros.srv import QueryObjects
    wait_until(lambda: query.table is not None and query.table.msg.map_id == "m", 20, "the object map")
    present = {r.label for r in node.pipeline.objects()}
    names = [c for c in ("bed", "sofa", "table", "chair", "lamp", "plant", "shelf") if c in present]
    assert len(names) >= 3
    for name in names:
        res = harness.call(QueryObjects, "query_node/query", QueryObjects.Request(text=name, top_k=3))
        assert res.success, res.message
        top = res.objects[0]
        assert top.label == name, (name, [(o.label, s) for o, s in zip(res.objects, res.scores)])
        c = np.array([top.centroid.x, top.centroid.y, top.centroid.z])
        boxes = [(np.array(i.aabb_min), np.array(i.aabb_max)) for i in small_scene.instances.values()
                 if i.class_name == name]
        assert any(((lo - 0.3) <= c).all() and (c <= (hi + 0.3)).all() for lo, hi in boxes), name
        assert res.map_sequence == 0


def test_relevance_image_of_the_last_query_for_each_view(harness, node, full_map, query, views, wait_until):
    """query_node asks chorus_node's ~/render_relevance (asynchronously) for each view of its
    relevance camera after a query, and publishes the 32FC1 image with the view's stamp."""
    from sensor_msgs.msg import Image

    from chorus_ros.ros import conversions as cv
    from chorus_ros.srv import QueryObjects
    got = harness.collect(Image, "query_node/relevance/image_raw")
    assert harness.call(QueryObjects, "query_node/query", QueryObjects.Request(text="table")).success
    stamp = 77_000_000_001
    pose, info = _request(harness, "camera_0", views[0], stamp)
    wait_until(lambda: got, 60, "a relevance image")
    img = got[-1]
    assert img.encoding == "32FC1" and cv.stamp_to_ns(img.header.stamp) == stamp
    assert img.header.frame_id == views[0].frame_id and (img.width, img.height) == (W, H)
    rel = cv.image_to_numpy(img)
    emb = query.embed(["table"])[0]
    np.testing.assert_array_equal(rel, node.pipeline.relevance_view(emb, cv.camera_from_msgs(pose, info)))
    assert np.isfinite(rel).mean() > 0.5 and np.nanmax(rel) <= 1.0 + 1e-6
    from rclpy.parameter import Parameter
    query.set_parameters([Parameter("relevance_enabled", value=False)])
    wait_until(lambda: not query._in_flight, 30, "the last relevance call")


def test_keep_newest_queue_drops_the_oldest_views_while_busy(harness, node, full_map, views, wait_until):
    """While the worker is busy (pipeline lock held, as during a long encode) five views arrive:
    the queue (queue_size 2) keeps the two newest, the dropped ones are counted in ~/status."""
    import threading

    from chorus_ros.msg import Status
    status = harness.collect(Status, "chorus_node/status")
    out = Outputs(harness, "camera_0")
    dropped0, received0 = node._views.dropped, node.views_received
    release, held = threading.Event(), threading.Event()

    def busy():
        with node._lock:
            held.set()
            release.wait(30)
    t = threading.Thread(target=busy)
    t.start()
    held.wait(5)
    stamps = [90_000_000_000 + i for i in range(5)]
    try:
        for s in stamps:
            _request(harness, "camera_0", views[1], s)
        wait_until(lambda: node.views_received == received0 + 5, 20, "all five requests")
    finally:
        release.set()
        t.join()
    wait_until(lambda: out.images(stamps[-1], ["semantic"]) is not None and node.wait_idle(0.1), 60, "the views")
    done = [s for s in stamps if out.images(s, ["semantic"]) is not None]
    # the worker may already hold the first view (waiting for the lock); of the rest, the two
    # newest are kept and the others dropped
    assert done[-2:] == stamps[-2:] and len(done) in (2, 3)
    assert node._views.dropped - dropped0 == 5 - len(done)
    wait_until(lambda: status and status[-1].dropped_requests >= node._views.dropped, 10, "the status")


def test_max_rate_drops_views_by_stamp(harness, node, full_map, views, wait_until):
    from rclpy.parameter import Parameter
    out = Outputs(harness, "camera_0")
    assert node.set_parameters([Parameter("max_rate_hz", value=2.0)])[0].successful
    try:
        limited0 = node.rate_limited
        stamps = [95_000_000_000 + i * 100_000_000 for i in range(5)]    # 10 Hz for 0.4 s
        for s in stamps:
            _request(harness, "camera_0", views[0], s)
        wait_until(lambda: node.rate_limited - limited0 == 4 and node.wait_idle(0.1), 30, "rate limiting")
        wait_until(lambda: out.images(stamps[0], ["semantic"]) is not None, 30, "the first view")
        assert all(out.images(s, ["semantic"]) is None for s in stamps[1:])
    finally:
        node.set_parameters([Parameter("max_rate_hz", value=0.0)])


def test_pose_and_camera_info_pair_within_the_tolerance_only(harness, node, full_map, views, wait_until):
    from geometry_msgs.msg import PoseStamped
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo

    from chorus_ros.ros import conversions as cv
    out = Outputs(harness, "camera_0")

    def send(stamp_pose, stamp_info):
        pose, _ = cv.camera_to_msgs(views[0], stamp_pose, "map")
        _, info = cv.camera_to_msgs(views[0], stamp_info, "map")
        harness.publisher(PoseStamped, "camera_0/pose").publish(pose)
        harness.publisher(CameraInfo, "camera_0/camera_info").publish(info)
    received = node.views_received
    send(97_000_000_000, 97_005_000_000)                  # 5 ms apart, exact pairing: no view
    time.sleep(0.5)
    assert node.views_received == received
    assert node.set_parameters([Parameter("pair_tolerance_s", value=0.01)])[0].successful
    try:
        send(98_000_000_000, 98_005_000_000)              # within 10 ms: paired, pose stamp kept
        wait_until(lambda: out.images(98_000_000_000, ["semantic"]) is not None, 30, "the paired view")
    finally:
        node.set_parameters([Parameter("pair_tolerance_s", value=0.0)])


def test_set_labels_changes_the_label_table_and_images_without_re_encoding(harness, node, full_map, views, wait_until):
    """(Last in this module: it changes the node's label set.)"""
    from chorus_ros.msg import LabelInfo, ObjectMap
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros import qos
    from chorus_ros.srv import SetLabels
    from std_msgs.msg import ColorRGBA
    infos = harness.collect(LabelInfo, "semantic/label_info", qos.latched())
    objects = harness.collect(ObjectMap, "objects", qos.latched())
    wait_until(lambda: infos and objects, 10, "the current label table and object map")
    n_info, n_obj = len(infos), len(objects)
    encode, version = node.last_encode, node.encoded_version
    names = ["floor", "wall", "table", "chair"]
    colors = [ColorRGBA(r=1.0, g=0.0, b=0.0, a=1.0), ColorRGBA(r=0.0, g=1.0, b=0.0, a=1.0),
              ColorRGBA(r=0.0, g=0.0, b=1.0, a=1.0), ColorRGBA(r=1.0, g=1.0, b=0.0, a=1.0)]
    res = harness.call(SetLabels, "chorus_node/set_labels", SetLabels.Request(names=names, colors=colors))
    assert res.success, res.message
    assert [e.name for e in res.label_info.labels] == names
    wait_until(lambda: len(infos) > n_info and len(objects) > n_obj, 20, "the new label table and object map")
    assert [e.name for e in infos[-1].labels] == names
    assert {o.label for o in objects[-1].objects} <= set(names) | {"unknown", ""}
    assert node.last_encode is encode and node.encoded_version == version      # nothing re-encoded
    out = Outputs(harness, "camera_0")
    stamp = 99_000_000_000
    _request(harness, "camera_0", views[2], stamp)
    wait_until(lambda: out.images(stamp, ["semantic", "semantic_color"]) is not None, 60, "a view")
    got = out.images(stamp, ["semantic", "semantic_color"])
    sem = cv.image_to_numpy(got["semantic"])
    assert set(np.unique(sem).tolist()) <= {0, 1, 2, 3, 65535} and len(np.unique(sem)) > 2
    col = cv.image_to_numpy(got["semantic_color"])
    np.testing.assert_array_equal(col[sem == 2], np.tile([0, 0, 255], ((sem == 2).sum(), 1)))
