"""chorus_node fed a map that arrives as a plain coloured point cloud (PCL xyz + packed rgb):
it is applied with the point-cloud defaults, a 'gaussian' checkpoint logs one warning naming
checkpoints/pointcloud, and malformed plain clouds are rejected with a clear error while the node
keeps running and its map stays as it was."""
import types

import numpy as np
import pytest
import torch

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def node(harness, pipeline_factory):
    from chorus_ros.ros.chorus_node import ChorusNode
    pipe = pipeline_factory()
    # the oracle pipeline has no model: pose as a checkpoint of the 'gaussian' input variant
    pipe.model = types.SimpleNamespace(config=types.SimpleNamespace(variant="gaussian"))
    n = harness.add(ChorusNode("chorus_node", pipeline=pipe, context=harness.context,
                               cli_args=["--ros-args", "-p", "error_throttle_s:=0.0",
                                         "-p", "point_cloud.opacity:=0.8"]))
    yield n
    harness.remove(n)


def _update(cloud, seq, full=True):
    from chorus_ros.ros.map_updates import map_update_to_msg
    msg = map_update_to_msg(None, map_id="slam", sequence=seq, full=full)
    cloud.header = msg.gaussians.header
    msg.gaussians = cloud
    return msg


def test_plain_cloud_map_is_applied_warned_about_and_bad_ones_rejected(harness, node, rosout, small_scene,
                                                                       plain_cloud, wait_until):
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    g = small_scene.gaussians
    c8 = np.round(g.base_rgb.numpy() * 255).astype(np.uint8)
    cloud, xyz, _ = plain_cloud(xyz=g.means.numpy(), c8=c8, labels=g.extras["label"].numpy(),
                                instances=g.extras["instance"].numpy())
    pub = harness.publisher(GaussianMapUpdate, "map_updates", qos.latched(16))
    pub.publish(_update(cloud, 0))
    wait_until(lambda: node.encoded_version > 0 and node.wait_idle(0.1), 60, "the plain cloud map")
    m = node.pipeline.map.arrays()
    assert len(m) == len(g) and torch.equal(m.ids.sort().values, torch.arange(len(g)))
    order = torch.argsort(m.ids)
    assert torch.equal(m.means[order], xyz)
    assert torch.allclose(m.opacities.sigmoid(), torch.full((len(g),), 0.8))    # point_cloud.opacity
    assert node.errors.count == 0, node.errors.last_error
    wait_until(lambda: any(m.level == 30 and "checkpoints/pointcloud" in m.msg and "plain point cloud" in m.msg
                           for m in rosout), 20, "the plain-cloud warning")
    warned = sum("checkpoints/pointcloud" in m.msg for m in rosout)

    # malformed plain clouds: clear errors, node alive, map unchanged
    before = (node.pipeline.map.version, node.pipeline.map.arrays().means.clone())
    bad_type, _, _ = plain_cloud(n=10)
    next(f for f in bad_type.fields if f.name == "rgb").datatype = 2      # UINT8
    cases = [(_update(bad_type, 1), "packed colour field 'rgb' must be FLOAT32 or UINT32"),
             (_update(plain_cloud(n=10)[0], 1, full=False), "DELTA update carries a plain point cloud without an 'id'"),
             (_update(plain_cloud(n=10, extra_nan=True)[0], 1), "non-finite values")]
    for msg, text in cases:
        count = node.errors.count
        pub.publish(msg)
        wait_until(lambda: node.errors.count > count, 20, f"an error containing {text!r}")
        assert text in node.errors.last_error, node.errors.last_error
        assert node.wait_idle(10)
        assert node.pipeline.map.version == before[0]
        assert torch.equal(node.pipeline.map.arrays().means, before[1])
    # a second FULL of the same map and checkpoint: applied, not warned about again
    pub.publish(_update(plain_cloud(n=30, labels=np.zeros(30, np.uint32), instances=np.arange(30))[0], 1))
    wait_until(lambda: len(node.pipeline.map) == 30 and node.wait_idle(0.1), 30, "the second plain cloud")
    assert sum("checkpoints/pointcloud" in m.msg for m in rosout) == warned
