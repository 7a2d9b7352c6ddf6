"""Faint Gaussians over DDS: a map update's Gaussians below the pipeline's min_opacity are set
aside (not encoded), and later deltas that remove them or make them opaque are accepted."""
import pytest
import torch

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros


def test_faint_gaussians_can_be_removed_and_revived_by_deltas(harness, pipeline_factory, small_scene, wait_until):
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    from chorus_ros.ros.chorus_node import ChorusNode
    from chorus_ros.ros.map_updates import map_update_to_msg
    node = harness.add(ChorusNode("chorus_node", pipeline=pipeline_factory(), context=harness.context,
                                  cli_args=["--ros-args", "-p", "error_throttle_s:=0.0"]))
    try:
        g = small_scene.gaussians
        faint_idx = torch.arange(0, len(g), 10)
        ops = g.opacities.clone()
        ops[faint_idx] = -5.0                          # opacity 0.0067: a dead photometric Gaussian
        g = GaussianArrays(g.means, g.sh, ops, g.log_scales, g.quats, g.ids, g.extras)
        pub = harness.publisher(GaussianMapUpdate, "map_updates", qos.latched(16))
        pub.publish(map_update_to_msg(g, map_id="m", sequence=0, full=True, include_extras=True))
        wait_until(lambda: node.encoded_version > 0 and node.wait_idle(0.1), 60, "the map")
        p = node.pipeline
        assert len(p.faint) == len(faint_idx) and len(p.map) == len(g) - len(faint_idx)
        errors = node.errors.count
        gone = g.ids[faint_idx[:3]]
        pub.publish(map_update_to_msg(g.index(torch.zeros(0, dtype=torch.long)), map_id="m", sequence=1,
                                      full=False, include_extras=True, removed_ids=gone))
        wait_until(lambda: node._tracker.last_sequence == 1, 20, "the removal of faint ids")
        assert node.errors.count == errors, node.errors.last_error
        assert not p.contains(gone).any() and len(p.faint) == len(faint_idx) - 3
        revived = g.index(faint_idx[3:5])
        revived.opacities[:] = 3.0
        pub.publish(map_update_to_msg(revived, map_id="m", sequence=2, full=False, include_extras=True))
        wait_until(lambda: node._tracker.last_sequence == 2 and node.wait_idle(0.1), 20, "the revival")
        assert node.errors.count == errors, node.errors.last_error
        assert p.map.contains(revived.ids).all() and not p.faint.contains(revived.ids).any()
    finally:
        harness.remove(node)
