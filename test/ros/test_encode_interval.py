"""chorus_node's ``min_encode_interval_s``: map updates that arrive within the interval after an
encode wait in the node's queue and are applied and encoded together, views are served from the
last encoding meanwhile, and no update is lost."""
import time

import pytest
import torch

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros

NS = "/interval"


@pytest.fixture(scope="module")
def node(harness, pipeline_factory):
    from chorus_ros.ros.chorus_node import ChorusNode
    n = harness.add(ChorusNode("chorus_node", pipeline=pipeline_factory(), context=harness.context,
                               namespace=NS))
    yield n
    harness.remove(n)


@pytest.fixture(scope="module")
def map_pub(harness, node, small_scene, wait_until):
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    from chorus_ros.ros.map_updates import map_update_to_msg
    pub = harness.publisher(GaussianMapUpdate, f"{NS}/map_updates", qos.latched(16))
    pub.publish(map_update_to_msg(small_scene.gaussians, map_id="m", sequence=0, full=True, stamp=10,
                                  include_extras=True))
    wait_until(lambda: node.encoded_version > 0 and node.wait_idle(0.1), 60, "the map to be encoded")
    return pub


def _counting(node):
    """Record the start time of every pipeline encode of ``node``."""
    starts = []
    original = node.pipeline.encode

    def encode(*a, **k):
        starts.append(time.monotonic())
        return original(*a, **k)
    node.pipeline.encode = encode
    return starts, original


def _deltas(pub, scene, first_seq, n, spacing_s):
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.ros.map_updates import map_update_to_msg
    g = scene.gaussians
    sent = []
    for i in range(n):
        part = g.index(torch.arange(i * 50, i * 50 + 50))
        part = GaussianArrays(part.means + 0.01, part.sh, part.opacities, part.log_scales, part.quats, part.ids,
                              part.extras)
        pub.publish(map_update_to_msg(part, map_id="m", sequence=first_seq + i, full=False, stamp=20 + i,
                                      include_extras=True))
        sent.append(time.monotonic())
        time.sleep(spacing_s)
    return sent


def _request_view(harness, scene, stamp_ns):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo

    from chorus_ros.core.geometry import Camera
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.ros import conversions as cv
    c = make_trajectory(scene, TrajectoryConfig(loop_views=1, random_views=0, width=64, height=48)).cameras[0]
    pose, info = cv.camera_to_msgs(Camera(c.viewmat, c.K, 64, 48, "cam_optical"), stamp_ns, "map")
    harness.publisher(PoseStamped, f"{NS}/camera_0/pose").publish(pose)
    harness.publisher(CameraInfo, f"{NS}/camera_0/camera_info").publish(info)


def test_updates_within_the_interval_are_encoded_together_and_views_keep_coming(
        harness, node, map_pub, small_scene, wait_until):
    from rclpy.parameter import Parameter
    node.set_parameters([Parameter("min_encode_interval_s", value=1.5)])
    starts, original = _counting(node)
    try:
        # the FULL's encode ended moments ago: three DELTAs 0.2 s apart all fall in the interval
        wait_until(lambda: node.wait_idle(0.0), 30, "the node to be idle")
        node._encode_end = time.monotonic()
        sent = _deltas(map_pub, small_scene, 1, 3, 0.2)
        published = node.views_published
        _request_view(harness, small_scene, 5_000_000_000)
        wait_until(lambda: node.views_published > published, 10, "the view to be published")
        assert not starts, "the view waited for the deltas' encode"         # served from the last encoding
        assert node._tracker.last_sequence == 0                             # the deltas still wait
        wait_until(lambda: node._tracker.last_sequence == 3 and node.wait_idle(0.0), 30, "the deltas to be applied")
        assert len(starts) == 1, f"{len(starts)} encodes for three deltas inside one interval"
        assert starts[0] >= sent[0] + 1.0                                   # not before the interval ended
        assert node.drops.snapshot().get("update_rejected", 0) == 0
    finally:
        node.pipeline.encode = original
        node.set_parameters([Parameter("min_encode_interval_s", value=0.0)])


def test_without_an_interval_each_spaced_update_is_encoded_on_arrival(harness, node, map_pub, small_scene,
                                                                      wait_until):
    """The control: the same three DELTAs 0.4 s apart get an encode each (default behaviour)."""
    assert node.config.min_encode_interval_s == 0.0
    wait_until(lambda: node.wait_idle(0.0), 30, "the node to be idle")
    seq0 = int(node._tracker.last_sequence)
    starts, original = _counting(node)
    try:
        _deltas(map_pub, small_scene, seq0 + 1, 3, 0.4)
        wait_until(lambda: node._tracker.last_sequence == seq0 + 3 and node.wait_idle(0.0), 30,
                   "the deltas to be applied")
        assert len(starts) == 3, f"{len(starts)} encodes for three deltas 0.4 s apart"
    finally:
        node.pipeline.encode = original
