"""Malformed inputs over DDS: each one gets a clear logged error (rosout) or a service error
field; the node keeps running and its map is unchanged; valid requests still work afterwards."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros

W, H = 48, 36


@pytest.fixture(scope="module")
def node(harness, pipeline_factory, tmp_path_factory):
    from chorus_ros.ros.chorus_node import ChorusNode
    root = tmp_path_factory.mktemp("saves")
    n = harness.add(ChorusNode("chorus_node", pipeline=pipeline_factory(), context=harness.context,
                               cli_args=["--ros-args", "-p", "error_throttle_s:=0.0", "-p", f"save_root:={root}"]))
    yield n
    harness.remove(n)


@pytest.fixture(scope="module")
def map_pub(harness, node, small_scene, wait_until):
    """The node holds the FULL scene map (map_id 'm', sequence 0), encoded."""
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    from chorus_ros.ros.map_updates import map_update_to_msg
    pub = harness.publisher(GaussianMapUpdate, "map_updates", qos.latched(16))
    pub.publish(map_update_to_msg(small_scene.gaussians, map_id="m", sequence=0, full=True,
                                  include_extras=True))
    wait_until(lambda: node.encoded_version > 0 and node.wait_idle(0.1), 60, "the map")
    return pub


@pytest.fixture(scope="module")
def camera(small_scene):
    from chorus_ros.core.geometry import Camera
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    c = make_trajectory(small_scene, TrajectoryConfig(loop_views=1, random_views=0, width=W, height=H)).cameras[0]
    return Camera(c.viewmat, c.K, W, H, "cam_optical")


def _snapshot(node):
    m = node.pipeline.map
    return m.version, len(m), m.arrays().means.clone(), m.arrays().ids.clone()


def _assert_unchanged(node, before):
    v, n, means, ids = _snapshot(node)
    assert (v, n) == before[:2]
    assert torch.equal(ids, before[3]) and torch.equal(means, before[2])


def _expect_error(node, rosout, wait_until, text, before_count):
    wait_until(lambda: node.errors.count > before_count, 20, f"an error containing {text!r}")
    assert text in node.errors.last_error, node.errors.last_error
    # ... and it reached /rosout at level ERROR with the node's name
    wait_until(lambda: any(text in m.msg and m.level == 40 and m.name.endswith("chorus_node") for m in rosout),
               20, f"a rosout ERROR containing {text!r}")


def _delta(small_scene, seq, idx=(0, 1, 2)):
    from chorus_ros.ros.map_updates import map_update_to_msg
    g = small_scene.gaussians.index(torch.tensor(idx))
    g.means = g.means + 0.01
    return map_update_to_msg(g, map_id="m", sequence=seq, full=False, include_extras=True)


def _mutate_missing_field(msg):
    msg.gaussians.fields = [f for f in msg.gaussians.fields if f.name not in ("opacity", "scale_1")]


def _mutate_point_step(msg):
    msg.gaussians.point_step += 4


def _mutate_point_step_small(msg):
    msg.gaussians.point_step -= 8
    msg.gaussians.row_step = msg.gaussians.point_step * msg.gaussians.width


def _set_float(msg, point, field, value):
    f = next(f for f in msg.gaussians.fields if f.name == field)
    data = bytearray(msg.gaussians.data)
    off = point * msg.gaussians.point_step + f.offset
    data[off:off + 4] = np.float32(value).tobytes()
    import array
    msg.gaussians.data = array.array("B", bytes(data))


def _as_plain_cloud(msg, keep_id=True, rgb_type=None):
    """Turn the update's cloud into a plain coloured point cloud: keep x y z (and id), the
    FLOAT32 f_dc_0 becomes PCL's packed 'rgb' (optionally declared as ``rgb_type``)."""
    fields = []
    for f in msg.gaussians.fields:
        if f.name in ("x", "y", "z") or (keep_id and f.name == "id"):
            fields.append(f)
        elif f.name == "f_dc_0":
            f.name = "rgb"
            if rgb_type is not None:
                f.datatype = rgb_type
            fields.append(f)
    msg.gaussians.fields = fields


MALFORMED_UPDATES = [
    ("plain cloud DELTA without ids", lambda m: _as_plain_cloud(m, keep_id=False),
     "DELTA update carries a plain point cloud without an 'id' field"),
    ("plain cloud packed rgb as UINT8", lambda m: _as_plain_cloud(m, rgb_type=2),
     "packed colour field 'rgb' must be FLOAT32 or UINT32"),
    ("missing fields", _mutate_missing_field, "missing"),
    ("wrong point_step", _mutate_point_step, "row_step"),
    ("point_step too small", _mutate_point_step_small, "point_step"),
    ("NaN value", lambda m: _set_float(m, 1, "y", math.nan), "non-finite"),
    ("Inf value", lambda m: _set_float(m, 2, "scale_0", math.inf), "non-finite"),
    ("wrong frame", lambda m: setattr(m.header, "frame_id", "odom"), "expected the map frame 'map'"),
    ("unknown update type", lambda m: setattr(m, "update_type", 5), "unknown update_type 5"),
]


@pytest.mark.parametrize("case, mutate, text", MALFORMED_UPDATES, ids=[c[0] for c in MALFORMED_UPDATES])
def test_malformed_map_updates_are_rejected_and_map_unchanged(harness, node, map_pub, rosout, small_scene,
                                                              wait_until, case, mutate, text):
    before = _snapshot(node)
    msg = _delta(small_scene, 1)
    mutate(msg)
    count = node.errors.count
    map_pub.publish(msg)
    _expect_error(node, rosout, wait_until, text, count)
    assert node.wait_idle(10)
    _assert_unchanged(node, before)
    assert node._tracker.last_sequence == 0


def test_removing_unknown_ids_is_rejected_atomically(harness, node, map_pub, rosout, small_scene, wait_until):
    from chorus_ros.ros.map_updates import map_update_to_msg
    before = _snapshot(node)
    msg = map_update_to_msg(small_scene.gaussians.index(torch.tensor([5])), map_id="m", sequence=1,
                            full=False, include_extras=True, removed_ids=torch.tensor([3, 4_000_000_000]))
    count = node.errors.count
    map_pub.publish(msg)
    _expect_error(node, rosout, wait_until, "cannot remove unknown Gaussian ids [4000000000]", count)
    assert node.wait_idle(10)
    _assert_unchanged(node, before)          # Gaussian 3 was not removed, 5 not touched


def test_out_of_order_and_gapped_sequences(harness, node, map_pub, rosout, small_scene, wait_until):
    from chorus_ros.ros.map_updates import map_update_to_msg
    before = _snapshot(node)
    count = node.errors.count
    map_pub.publish(_delta(small_scene, 0))                     # duplicate of the FULL's sequence
    _expect_error(node, rosout, wait_until, "out-of-order or duplicate DELTA update seq 0", count)
    _assert_unchanged(node, before)
    count = node.errors.count
    map_pub.publish(_delta(small_scene, 3))                     # 1 and 2 were lost
    _expect_error(node, rosout, wait_until, "sequence gap", count)
    count = node.errors.count
    map_pub.publish(_delta(small_scene, 1))                     # now even 1 waits for a FULL
    _expect_error(node, rosout, wait_until, "waiting for the next FULL update", count)
    assert node.wait_idle(10)
    _assert_unchanged(node, before)
    # a FULL update recovers; then the next delta applies
    map_pub.publish(map_update_to_msg(small_scene.gaussians, map_id="m", sequence=10, full=True,
                                      include_extras=True))
    wait_until(lambda: node._tracker.last_sequence == 10 and node.wait_idle(0.1), 30, "the FULL update")
    map_pub.publish(_delta(small_scene, 11))
    wait_until(lambda: node._tracker.last_sequence == 11 and node.wait_idle(0.1), 30, "the delta")
    assert len(node.pipeline.map) == before[1]
    slots = node.pipeline.map.slots_of(torch.tensor([0, 1, 2]))
    expect = small_scene.gaussians.means[:3] + 0.01
    assert torch.equal(node.pipeline.map.arrays().means[slots], expect)


def _view(harness, camera, stamp, mutate_pose=None, mutate_info=None):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo

    from chorus_ros.ros import conversions as cv
    pose, info = cv.camera_to_msgs(camera, stamp, "map")
    if mutate_pose:
        mutate_pose(pose)
    if mutate_info:
        mutate_info(info)
    harness.publisher(PoseStamped, "camera_0/pose").publish(pose)
    harness.publisher(CameraInfo, "camera_0/camera_info").publish(info)


def _scale_quat(p):
    p.pose.orientation.x *= 1.5
    p.pose.orientation.w *= 1.5


BAD_VIEWS = [
    ("zero-size CameraInfo", None, lambda i: setattr(i, "width", 0), "CameraInfo has zero image size 0x36"),
    ("zero-height CameraInfo", None, lambda i: setattr(i, "height", 0), "zero image size 48x0"),
    ("non-unit quaternion", _scale_quat, None, "not unit length"),
    ("zero quaternion", lambda p: setattr(p.pose, "orientation", type(p.pose.orientation)(x=0.0, y=0.0, z=0.0, w=0.0)),
     None, "zero or not finite"),
    ("NaN position", lambda p: setattr(p.pose.position, "x", math.nan), None, "finite"),
    ("pose in another frame", lambda p: setattr(p.header, "frame_id", "odom"), None, "expected the map frame"),
    ("huge image", None, lambda i: (setattr(i, "width", 100_000), setattr(i, "height", 100_000)), "exceeds the limit"),
]


@pytest.mark.parametrize("case, mp, mi, text", BAD_VIEWS, ids=[c[0] for c in BAD_VIEWS])
def test_malformed_view_requests_are_rejected(harness, node, map_pub, rosout, camera, wait_until, case, mp, mi, text):
    from sensor_msgs.msg import Image
    got = harness.collect(Image, "camera_0/semantic/image_raw")
    before = _snapshot(node)
    count, published = node.errors.count, node.views_published
    stamp = 7_000_000_000 + BAD_VIEWS.index(next(b for b in BAD_VIEWS if b[0] == case))
    _view(harness, camera, stamp, mp, mi)
    _expect_error(node, rosout, wait_until, text, count)
    assert node.wait_idle(10) and node.views_published == published and not got
    _assert_unchanged(node, before)


def test_node_still_serves_valid_requests_after_all_errors(harness, node, map_pub, camera, wait_until):
    from sensor_msgs.msg import Image

    from chorus_ros.ros import conversions as cv
    got = harness.collect(Image, "camera_0/semantic/image_raw")
    _view(harness, camera, 9_000_000_000)
    wait_until(lambda: got, 60, "a semantic image")
    assert cv.stamp_to_ns(got[0].header.stamp) == 9_000_000_000
    img = cv.image_to_numpy(got[0])
    pose, info = cv.camera_to_msgs(camera, 0, "map")
    np.testing.assert_array_equal(img, node.pipeline.render_view(cv.camera_from_msgs(pose, info)).labels)
    assert node._worker.is_alive()


def test_service_errors_are_reported_in_the_response(harness, node, map_pub, camera, tmp_path, wait_until):
    from chorus_ros.ros import conversions as cv
    from chorus_ros.srv import LoadMap, RenderRelevance, SaveMap, SetLabels
    before = _snapshot(node)
    res = harness.call(LoadMap, "chorus_node/load_map", LoadMap.Request(path="nope"))
    assert not res.success and "does not exist" in res.message
    res = harness.call(SetLabels, "chorus_node/set_labels", SetLabels.Request(names=[]))
    assert not res.success and "needs 1..1000 names" in res.message
    res = harness.call(SetLabels, "chorus_node/set_labels", SetLabels.Request(names=["a", "b"],
                                                                               colors=[cv.ColorRGBA(r=1.0)]))
    assert not res.success and "1 colours for 2 names" in res.message
    res = harness.call(SetLabels, "chorus_node/set_labels", SetLabels.Request(names=["x" * 500]))
    assert not res.success and "longer than 200" in res.message
    pose, info = cv.camera_to_msgs(camera, 5, "map")
    res = harness.call(RenderRelevance, "chorus_node/render_relevance",
                       RenderRelevance.Request(embedding=[1.0, 2.0], pose=pose, camera_info=info))
    assert not res.success and "embedding has 2 values" in res.message
    info.width = 0
    res = harness.call(RenderRelevance, "chorus_node/render_relevance",
                       RenderRelevance.Request(embedding=[1.0] * node.pipeline.text_encoder.dim, pose=pose,
                                               camera_info=info))
    assert not res.success and "zero image size" in res.message
    _assert_unchanged(node, before)
    assert node.pipeline.labels.names[0] == "floor"
    # and the valid calls work: save, load back, relevance image
    res = harness.call(SaveMap, "chorus_node/save_map", SaveMap.Request(path="saved"))
    assert res.success, res.message
    res = harness.call(LoadMap, "chorus_node/load_map", LoadMap.Request(path="saved"))
    assert res.success, res.message
    assert len(node.pipeline.map) == before[1]
    emb = node.pipeline.text_encoder.encode(["chair"])[0].numpy()
    pose, info = cv.camera_to_msgs(camera, 5, "map")
    res = harness.call(RenderRelevance, "chorus_node/render_relevance",
                       RenderRelevance.Request(embedding=emb.tolist(), pose=pose, camera_info=info))
    assert res.success and res.image.encoding == "32FC1" and res.image.header.frame_id == "cam_optical"
    rel = cv.image_to_numpy(res.image)
    np.testing.assert_array_equal(rel, node.pipeline.relevance_view(emb, cv.camera_from_msgs(pose, info)))
