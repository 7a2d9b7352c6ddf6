"""chorus_node under bad input and load accounting (issue 12, findings 2 and 5), over real DDS:

* one Gaussian 100 km away and a cloud whose byte order flag is wrong are refused (counted),
  the map is unchanged and views keep coming;
* an encode failure is said in ~/status (encode_error with the offending ids, state
  'encode_failed') while views keep being served from the last good encoding;
* every view request is published or counted by reason; stamp rewinds reset the rate limiter
  (counted); the pixel budget; run-time parameters validated; RenderRelevance refuses NaN, Inf
  and zero embeddings; unpaired pose / CameraInfo counted and explained; service queue depth."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros

W, H = 48, 36


@pytest.fixture(scope="module")
def node(harness, pipeline_factory, small_scene, wait_until):
    from chorus_ros.ros.chorus_node import ChorusNode
    from chorus_ros.ros.map_updates import map_update_to_msg
    n = harness.add(ChorusNode("chorus_node", namespace="inputs", pipeline=pipeline_factory(),
                               context=harness.context, cli_args=["--ros-args", "-p", "status_rate_hz:=20.0"]))
    full = map_update_to_msg(small_scene.gaussians, map_id="m", sequence=0, full=True, stamp=10,
                             include_extras=True)
    n.test_pub = _send(harness, [full])
    wait_until(lambda: n.encoded_version > 0 and n.wait_idle(0.1), 60, "the map to be encoded")
    yield n
    harness.remove(n)


@pytest.fixture(scope="module")
def view(small_scene):
    from chorus_ros.core.geometry import Camera
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    tr = make_trajectory(small_scene, TrajectoryConfig(loop_views=1, random_views=0, width=W, height=H, seed=5))
    c = tr.cameras[0]
    return Camera(c.viewmat, c.K, W, H, "cam_optical")


@pytest.fixture(scope="module")
def status(harness, node):
    from chorus_ros.msg import Status
    return harness.collect(Status, "/inputs/chorus_node/status")


def _send(harness, msgs, pub=None):
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    pub = pub or harness.publisher(GaussianMapUpdate, "/inputs/map_updates", qos.latched(16))
    for m in msgs:
        pub.publish(m)
    return pub


def _request(harness, cam, stamp_ns, info_stamp_ns=None, size=None):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo

    from chorus_ros.ros import conversions as cv
    pose, info = cv.camera_to_msgs(cam, stamp_ns, "map")
    if info_stamp_ns is not None:
        info.header.stamp = cv.camera_to_msgs(cam, info_stamp_ns, "map")[1].header.stamp
    if size is not None:
        info.width, info.height = size
    harness.publisher(PoseStamped, "/inputs/camera_0/pose").publish(pose)
    harness.publisher(CameraInfo, "/inputs/camera_0/camera_info").publish(info)


def _published(harness, cache={}):
    from sensor_msgs.msg import Image
    if "got" not in cache:
        cache["got"] = harness.collect(Image, "/inputs/camera_0/semantic/image_raw")
    return cache["got"]


def _stamps(msgs):
    from chorus_ros.ros import conversions as cv
    return {cv.stamp_to_ns(m.header.stamp) for m in msgs}


def _counts(st):
    return dict(zip(st.drop_reasons, st.drop_counts))


def _accounted(node):
    """Every paired view request is published, counted as dropped, or still queued."""
    d = node.drops.snapshot()
    dropped = sum(v for k, v in d.items() if k.startswith("view_") and k != "view_stamp_rewind")
    return node.views_received == node.views_published + dropped


def _delta(g, seq, stamp):
    from chorus_ros.ros.map_updates import map_update_to_msg
    return map_update_to_msg(g, map_id="m", sequence=seq, full=False, stamp=stamp, include_extras=True)


def _one(small_scene, gid, xyz):
    g = small_scene.gaussians.index(torch.tensor([0]))
    g.ids = torch.tensor([gid], dtype=torch.int64)
    g.means = torch.tensor([xyz], dtype=torch.float32)
    return g


def test_one_gaussian_100_km_away_is_refused_and_views_keep_coming(harness, node, view, small_scene, status,
                                                                   wait_until):
    got = _published(harness)
    n0, v0 = len(node.pipeline.map), node.pipeline.map.version
    rej0 = node.drops.get("update_rejected")
    seq = (node._tracker.last_sequence or 0) + 1
    _send(harness, [_delta(_one(small_scene, 900_001, [100_000.0, 0.0, 0.5]), seq, 20)], node.test_pub)
    wait_until(lambda: node.drops.get("update_rejected") == rej0 + 1, 20, "the refusal")
    assert "max_abs_coordinate" in node.errors.last_error and "900001" in node.errors.last_error
    assert len(node.pipeline.map) == n0 and node.pipeline.map.version == v0
    _request(harness, view, 3_000_000_000)
    wait_until(lambda: 3_000_000_000 in _stamps(got), 30, "a view after the refused update")
    wait_until(lambda: status and _counts(status[-1]).get("update_rejected") == rej0 + 1, 10, "the status")
    assert status[-1].encode_error == "" and status[-1].state == "running"
    # the publisher's next delta (same seq: the refused one did not advance the sequence) applies
    _send(harness, [_delta(_one(small_scene, 900_002, [0.5, 0.5, 0.5]), seq, 21)], node.test_pub)
    wait_until(lambda: len(node.pipeline.map) == n0 + 1 and node.wait_idle(0.1), 20, "the good delta")


def test_cloud_with_the_wrong_byte_order_flag_is_refused(harness, node, small_scene, wait_until):
    rej0 = node.drops.get("update_rejected")
    n0 = len(node.pipeline.map)
    msg = _delta(small_scene.gaussians.index(torch.arange(5)), (node._tracker.last_sequence or 0) + 1, 22)
    msg.gaussians.is_bigendian = True          # little-endian bytes flagged big-endian
    _send(harness, [msg], node.test_pub)
    wait_until(lambda: node.drops.get("update_rejected") == rej0 + 1, 20, "the refusal")
    assert "byte order" in node.errors.last_error and len(node.pipeline.map) == n0


def test_encode_failure_is_reported_and_views_come_from_the_last_good_encoding(harness, node, view, small_scene,
                                                                              status, wait_until):
    from chorus_ros.core.errors import EncodeError
    got = _published(harness)
    inc = node.pipeline._incremental
    calls = []

    def failing():
        calls.append(1)
        raise EncodeError("injected encoder failure", [424242])
    inc.update, inc.encode_full = failing, failing
    try:
        good = node.encoded_version
        seq = (node._tracker.last_sequence or 0) + 1
        _send(harness, [_delta(_one(small_scene, 424242, [0.6, 0.6, 0.6]), seq, 30)], node.test_pub)
        wait_until(lambda: status and status[-1].encode_error, 20, "the encode error in ~/status")
        st = status[-1]
        assert "424242" in st.encode_error and "injected encoder failure" in st.encode_error
        assert st.state == "encode_failed" and st.encoded_version == good
        for k in range(3):                      # views keep coming, from the last good encoding
            _request(harness, view, 4_000_000_000 + k)
            wait_until(lambda: 4_000_000_000 + k in _stamps(got), 30, f"view {k} while encoding fails")
        assert len(calls) == 1                  # not retried every 0.25 s on the same map
    finally:
        del inc.update, inc.encode_full         # instance attributes: the class methods return
    _send(harness, [_delta(_one(small_scene, 424243, [0.7, 0.6, 0.6]), seq + 1, 31)], node.test_pub)
    wait_until(lambda: node.encoded_version > good and node.wait_idle(0.1), 30, "recovery on the next change")
    wait_until(lambda: status[-1].encode_error == "" and status[-1].state == "running", 10, "a clean status")


def test_stamp_rewind_resets_the_rate_limiter_and_is_counted(harness, node, view, status, wait_until):
    from rclpy.parameter import Parameter
    got = _published(harness)
    assert node.set_parameters([Parameter("max_rate_hz", value=2.0)])[0].successful
    try:
        rw0, lim0 = node.drops.get("view_stamp_rewind"), node.drops.get("view_rate_limited")
        _request(harness, view, 500_000_000_000)
        wait_until(lambda: 500_000_000_000 in _stamps(got), 30, "the first view")
        _request(harness, view, 500_100_000_000 - 100_000_000_000)      # 100 s back in time: a rewind
        wait_until(lambda: 400_100_000_000 in _stamps(got), 30, "the view after the rewind")
        _request(harness, view, 400_200_000_000)                         # 0.1 s later: rate limited
        _request(harness, view, 400_700_000_000)                         # 0.6 s later: accepted
        wait_until(lambda: 400_700_000_000 in _stamps(got), 30, "the views after the rewind")
        assert 400_200_000_000 not in _stamps(got)
        assert node.drops.get("view_stamp_rewind") == rw0 + 1
        assert node.drops.get("view_rate_limited") == lim0 + 1
        wait_until(lambda: _counts(status[-1]).get("view_stamp_rewind") == rw0 + 1, 10, "the status")
    finally:
        node.set_parameters([Parameter("max_rate_hz", value=0.0)])


def test_views_over_the_pixel_budget_are_refused_and_counted(harness, node, view, wait_until):
    from chorus_ros.ros.chorus_node import ChorusNodeConfig
    assert ChorusNodeConfig().max_image_pixels <= 1920 * 1200
    n0 = node.drops.get("view_over_pixel_budget")
    _request(harness, view, 6_000_000_000, size=(4096, 4096))
    wait_until(lambda: node.drops.get("view_over_pixel_budget") == n0 + 1, 20, "the refusal")
    assert "pixel budget" in node.errors.last_error


@pytest.mark.parametrize("name,value", [("render.near", -1.0), ("render.far", 0.0), ("render.near", math.nan),
                                        ("render.far", math.nan), ("render.eps2d", math.inf),
                                        ("overlay_alpha", 2.0), ("semantic.min_alpha", math.nan)])
def test_invalid_run_time_parameters_are_refused(node, name, value):
    from rclpy.parameter import Parameter
    before = node.get_parameter(name).value
    res = node.set_parameters([Parameter(name, value=value)])[0]
    assert not res.successful and res.reason
    assert node.get_parameter(name).value == before


def test_valid_run_time_parameter_is_applied(node):
    from rclpy.parameter import Parameter
    assert node.set_parameters([Parameter("render.far", value=500.0)])[0].successful
    try:
        assert node.pipeline.config.render.far == 500.0
    finally:
        node.set_parameters([Parameter("render.far", value=1e10)])


@pytest.mark.parametrize("bad", ["nan", "inf", "zero"])
def test_render_relevance_refuses_non_finite_and_zero_embeddings(harness, node, view, bad):
    from chorus_ros.ros import conversions as cv
    from chorus_ros.srv import RenderRelevance
    dim = node.pipeline.text_encoder.dim
    emb = np.ones(dim, np.float32)
    emb[3] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[bad]
    if bad == "zero":
        emb[:] = 0.0
    pose, info = cv.camera_to_msgs(view, 7_000_000_000, "map")
    n0 = node.drops.get("service_rejected")
    res = harness.call(RenderRelevance, "/inputs/chorus_node/render_relevance",
                       RenderRelevance.Request(embedding=emb.tolist(), pose=pose, camera_info=info))
    assert not res.success and ("non-finite" in res.message or "zero" in res.message)
    assert node.drops.get("service_rejected") == n0 + 1


def test_pose_and_camera_info_that_never_pair_are_counted_and_explained(harness, node, view, status, wait_until):
    got = _published(harness)
    p0, c0 = node.drops.get("pose_unpaired"), node.drops.get("camera_info_unpaired")
    _request(harness, view, 8_000_000_000, info_stamp_ns=8_000_000_001)     # 1 ns apart, tolerance 0
    _request(harness, view, 8_100_000_000)                                  # a good pair flushes them
    wait_until(lambda: 8_100_000_000 in _stamps(got), 30, "the good pair")
    assert node.drops.get("pose_unpaired") == p0 + 1 and node.drops.get("camera_info_unpaired") == c0 + 1
    assert any("nearest counterpart 1 ns away, tolerance 0 ns" in e for e in node.errors.recent)
    wait_until(lambda: _counts(status[-1]).get("pose_unpaired") == p0 + 1, 10, "the status")


def test_every_view_request_is_published_or_counted(harness, node, view, wait_until):
    for k in range(12):                         # faster than the worker: some fall off the queue
        _request(harness, view, 9_000_000_000 + k * 1000)
    wait_until(lambda: node.wait_idle(0.1) and _accounted(node), 60, "all requests accounted for")
    assert node.views_received > 0


def test_service_queue_depth_is_a_parameter(harness, pipeline_factory, monkeypatch):
    """The parameter reaches the QoS of every service (rclpy keeps no QoS on a Service object,
    so the profiles passed to create_service are recorded)."""
    from chorus_ros.ros.chorus_node import ChorusNode, ChorusNodeConfig
    assert ChorusNodeConfig().service_queue_depth >= 50          # rclpy's default of 10 loses requests
    seen = {}
    orig = ChorusNode.create_service

    def spy(self, srv_type, name, cb, **kw):
        seen[name] = kw["qos_profile"].depth
        return orig(self, srv_type, name, cb, **kw)
    monkeypatch.setattr(ChorusNode, "create_service", spy)
    n = ChorusNode("chorus_node", namespace="depth", pipeline=pipeline_factory(), context=harness.context,
                   cli_args=["--ros-args", "-p", "service_queue_depth:=37"])
    try:
        assert {k: v for k, v in seen.items() if k.startswith("~/")} == {
            "~/save_map": 37, "~/load_map": 37, "~/set_labels": 37, "~/render_relevance": 37}
    finally:
        n.destroy_node()
