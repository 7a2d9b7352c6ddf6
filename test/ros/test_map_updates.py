"""GaussianMapUpdate envelope <-> MapUpdate (pure, no rclpy.init)."""
import array

import pytest
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.ros.map_updates import map_update_from_msg, map_update_to_msg

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")


def _gaussians(n=6, first_id=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GaussianArrays(torch.randn(n, 3, generator=g), torch.randn(n, 1, 3, generator=g),
                          torch.randn(n, generator=g), torch.randn(n, 3, generator=g) - 3,
                          torch.randn(n, 4, generator=g), torch.arange(first_id, first_id + n))


def test_roundtrip_full_and_delta():
    g = _gaussians()
    msg = map_update_to_msg(g, map_id="m", sequence=3, full=True, stamp=42, frame_id="map")
    u = map_update_from_msg(msg, "map")
    assert (u.map_id, u.sequence, u.full, u.kind) == ("m", 3, True, "FULL")
    for a, b in [(u.gaussians.means, g.means), (u.gaussians.sh, g.sh), (u.gaussians.quats, g.quats),
                 (u.gaussians.opacities, g.opacities), (u.gaussians.log_scales, g.log_scales)]:
        assert torch.equal(a, b)
    assert torch.equal(u.gaussians.ids, g.ids) and u.removed_ids.numel() == 0
    d = map_update_from_msg(map_update_to_msg(None, map_id="m", sequence=4, full=False,
                                              removed_ids=torch.tensor([10, 12])), "map")
    assert d.gaussians is None and d.removed_ids.tolist() == [10, 12] and d.kind == "DELTA"


def test_envelope_errors():
    g = _gaussians()
    msg = map_update_to_msg(g, map_id="m", sequence=0, full=True, frame_id="odom")
    with pytest.raises(InvalidInputError, match="frame 'odom', expected the map frame 'map'"):
        map_update_from_msg(msg, "map")
    msg = map_update_to_msg(g, map_id="m", sequence=0, full=True)
    msg.removed_ids = array.array("I", [1, 2])
    with pytest.raises(InvalidInputError, match="FULL update carries 2 removed_ids"):
        map_update_from_msg(msg)
    msg = map_update_to_msg(g, map_id="m", sequence=0, full=True)
    msg.update_type = 9
    with pytest.raises(InvalidInputError, match="unknown update_type 9"):
        map_update_from_msg(msg)
    msg = map_update_to_msg(g, map_id="m", sequence=0, full=True)
    msg.gaussians.fields = [f for f in msg.gaussians.fields if f.name != "opacity"]
    with pytest.raises(InvalidInputError, match="opacity"):
        map_update_from_msg(msg)
    msg = map_update_to_msg(g, map_id="m", sequence=0, full=True)
    msg.gaussians.point_step -= 4
    with pytest.raises(InvalidInputError, match="point_step"):
        map_update_from_msg(msg)
    bad = _gaussians()
    bad.means[2, 1] = float("nan")
    with pytest.raises(InvalidInputError, match="non-finite"):
        map_update_from_msg(map_update_to_msg(bad, map_id="m", sequence=0, full=True))


def _plain_update(make, full: bool, with_ids: bool):
    """A GaussianMapUpdate whose cloud is a plain PCL-style xyz + packed rgb cloud."""
    cloud, xyz, c8 = make(n=12, ids=with_ids)
    msg = map_update_to_msg(None, map_id="slam", sequence=0 if full else 1, full=full)
    cloud.header = msg.gaussians.header
    msg.gaussians = cloud
    return msg, xyz, c8


def test_plain_point_cloud_full_update_gets_ids_and_defaults(plain_cloud):
    from chorus_ros.core.plain_cloud import PointCloudInputConfig
    msg, xyz, c8 = _plain_update(plain_cloud, full=True, with_ids=False)
    u = map_update_from_msg(msg, "map")
    assert u.layout == "pointcloud" and u.full and "packed rgb" in u.note
    assert u.gaussians.ids.tolist() == list(range(12)) and torch.equal(u.gaussians.means, xyz)
    assert torch.allclose(u.gaussians.opacity, torch.full((12,), 0.9))
    fixed = map_update_from_msg(msg, "map", PointCloudInputConfig(scale_mode="fixed", fixed_scale=0.03))
    assert torch.allclose(fixed.gaussians.scales, torch.full((12, 3), 0.03))


def test_plain_point_cloud_delta_needs_ids(plain_cloud):
    msg, _, _ = _plain_update(plain_cloud, full=False, with_ids=False)
    with pytest.raises(InvalidInputError, match="DELTA update carries a plain point cloud without an 'id' field"):
        map_update_from_msg(msg, "map")
    msg, _, _ = _plain_update(plain_cloud, full=False, with_ids=True)
    u = map_update_from_msg(msg, "map")
    assert u.kind == "DELTA" and u.gaussians.ids.tolist() == list(range(100, 112))


def test_deferred_plain_cloud_resolves_to_the_same_update(plain_cloud):
    msg, _, _ = _plain_update(plain_cloud, full=True, with_ids=False)
    now = map_update_from_msg(msg, "map")
    later = map_update_from_msg(msg, "map", defer_plain=True)
    assert later.gaussians is None and later.pending is not None and later.layout == "pointcloud"
    later.resolve()
    assert later.pending is None and later.note == now.note
    for f in ("means", "sh", "opacities", "log_scales", "quats", "ids"):
        assert torch.equal(getattr(later.gaussians, f), getattr(now.gaussians, f)), f
    bad, _, _ = _plain_update(plain_cloud, full=True, with_ids=False)
    next(f for f in bad.gaussians.fields if f.name == "rgb").datatype = 2      # UINT8: refused on resolve
    deferred = map_update_from_msg(bad, "map", defer_plain=True)
    with pytest.raises(InvalidInputError, match="packed colour field 'rgb'"):
        deferred.resolve()
    with pytest.raises(InvalidInputError, match="DELTA update carries a plain point cloud"):   # names only
        map_update_from_msg(_plain_update(plain_cloud, full=False, with_ids=False)[0], "map", defer_plain=True)
