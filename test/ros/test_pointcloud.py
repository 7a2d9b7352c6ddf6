"""PointCloud2 <-> GaussianArrays (pure, no rclpy.init): layout, exact round trips, foreign
layouts (field order, padding, FLOAT64, big-endian) and every malformed case."""
import array
import math

import numpy as np
import pytest
import torch
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.ros.pointcloud import (FieldSpec, decode_pointcloud2, gaussians_to_pointcloud2, make_point_fields,
                                       point_step_of, pointcloud2_fields_for, pointcloud2_to_gaussians)

F32, U32 = PointField.FLOAT32, PointField.UINT32


def rand_g(n: int, degree: int, seed: int = 0) -> GaussianArrays:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return GaussianArrays(torch.randn(n, 3, generator=g), torch.randn(n, k, 3, generator=g),
                          torch.randn(n, generator=g), torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g),
                          torch.randperm(1000, generator=g)[:n].to(torch.int64) + 2**31)


def same(a: GaussianArrays, b: GaussianArrays) -> None:
    for f in ("means", "sh", "opacities", "log_scales", "quats", "ids"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_fields_for_degree_0_exact():
    specs = pointcloud2_fields_for(0)
    assert [s.name for s in specs] == ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
                                       "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "id"]
    assert [s.offset for s in specs] == list(range(0, 60, 4))
    assert [s.datatype for s in specs] == [F32] * 14 + [U32] and all(s.count == 1 for s in specs)
    assert point_step_of(specs) == 60
    d3 = pointcloud2_fields_for(3)
    assert len(d3) == 60 and point_step_of(d3) == 240 and d3[6] == FieldSpec("f_rest_0", 24, F32)
    pf = make_point_fields(specs)
    assert isinstance(pf[0], PointField) and (pf[-1].name, pf[-1].offset, pf[-1].datatype) == ("id", 56, U32)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_exact(degree):
    g = rand_g(23, degree, seed=degree)
    hdr = Header(frame_id="map")
    hdr.stamp.sec, hdr.stamp.nanosec = 12, 345
    msg = gaussians_to_pointcloud2(g, hdr)
    k = (degree + 1) ** 2
    assert msg.header.frame_id == "map" and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    assert (msg.height, msg.width, msg.point_step) == (1, 23, 4 * (15 + 3 * (k - 1)))
    assert msg.row_step == 23 * msg.point_step and len(msg.data) == msg.row_step
    assert msg.is_dense and not msg.is_bigendian
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == \
        [(s.name, s.offset, s.datatype) for s in pointcloud2_fields_for(degree)]
    # raw bytes: f_rest channel-major, id uint32 at the end
    raw = np.frombuffer(msg.data, dtype=np.float32).reshape(23, -1)
    assert raw[4, 0] == g.means[4, 0]
    assert raw[4, 6] == (g.opacities[4] if degree == 0 else g.sh[4, 1, 0])  # f_rest_0 = R of coefficient 1
    if degree:
        assert raw[4, 6 + k - 1] == g.sh[4, 1, 1]                              # channel-major: G starts at K-1
    assert raw[4, -1:].view(np.uint32)[0] == g.ids[4]
    same(g, pointcloud2_to_gaussians(msg))


def test_round_trip_with_extras():
    g = rand_g(5, 1)
    g.extras["label"] = torch.tensor([0, 1, 2, 3, 65535], dtype=torch.int32)
    g.extras["score"] = torch.rand(5, 2, dtype=torch.float64)
    msg = gaussians_to_pointcloud2(g, Header(), include_extras=True, extra_types={"label": "ushort"})
    names = [f.name for f in msg.fields]
    assert names[-4:] == ["label", "score_0", "score_1", "id"]
    assert [f.datatype for f in msg.fields][-4:] == [PointField.UINT16, PointField.FLOAT64, PointField.FLOAT64, U32]
    assert msg.point_step == 4 * 23 + 2 + 16 + 4  # 23 params (degree 1), ushort, 2 doubles, id
    out = pointcloud2_to_gaussians(msg)
    same(g, out)
    assert out.extras["label"].tolist() == [0, 1, 2, 3, 65535]
    assert torch.equal(out.extras["score_1"], g.extras["score"][:, 1])
    assert [f.name for f in gaussians_to_pointcloud2(g, Header()).fields][-1] == "id"  # extras off by default


def _foreign(big_endian: bool) -> PointCloud2:
    """Hand-built cloud: shuffled field order, FLOAT64 x, padding, an extra field, 2 rows."""
    layout = [("id", 0, "u4"), ("rot_0", 4, "f4"), ("rot_1", 8, "f4"), ("rot_2", 12, "f4"), ("rot_3", 16, "f4"),
              ("x", 24, "f8"), ("y", 32, "f4"), ("z", 36, "f4"), ("opacity", 40, "f4"), ("scale_0", 44, "f4"),
              ("scale_1", 48, "f4"), ("scale_2", 52, "f4"), ("f_dc_0", 56, "f4"), ("f_dc_1", 60, "f4"),
              ("f_dc_2", 64, "f4"), ("intensity", 68, "u1")]
    step = 72
    o = ">" if big_endian else "<"
    dt = np.dtype({"names": [n for n, _, _ in layout], "formats": [o + c for _, _, c in layout],
                   "offsets": [off for _, off, _ in layout], "itemsize": step})
    rows = np.zeros(4, dtype=dt)
    for j, (n, _, _) in enumerate(layout):
        rows[n] = np.arange(4) * 100 + j
    code = {"u4": U32, "f4": F32, "f8": PointField.FLOAT64, "u1": PointField.UINT8}
    msg = PointCloud2(height=2, width=2, is_bigendian=big_endian, point_step=step, row_step=2 * step,
                      is_dense=True)
    msg.fields = [PointField(name=n, offset=off, datatype=code[c], count=1) for n, off, c in layout]
    msg.data = array.array("B", rows.tobytes())
    return msg


@pytest.mark.parametrize("big", [False, True])
def test_foreign_layout_read_by_name(big):
    g = pointcloud2_to_gaussians(_foreign(big))
    assert g.ids.tolist() == [0, 100, 200, 300]
    assert g.quats[1].tolist() == [101, 102, 103, 104]
    assert g.means[2].tolist() == [205, 206, 207] and g.means.dtype == torch.float32
    assert g.opacities.tolist() == [8, 108, 208, 308]
    assert g.log_scales[3].tolist() == [309, 310, 311]
    assert g.sh.shape == (4, 1, 3) and g.sh[0, 0].tolist() == [12, 13, 14]
    assert g.extras["intensity"].tolist() == [15, 115, 215, 315 % 256]


def _msg(degree=0, n=3):
    return gaussians_to_pointcloud2(rand_g(n, degree), Header())


def _drop_field(msg, name):
    msg.fields = [f for f in msg.fields if f.name != name]
    return msg


def _set_field(msg, field_name, **kw):
    for f in msg.fields:
        if f.name == field_name:
            for k, v in kw.items():
                setattr(f, k, v)
    return msg


def _with_inf(msg):
    a = np.frombuffer(msg.data, dtype=np.float32).reshape(msg.width, -1).copy()
    a[0, 6] = math.inf      # opacity
    a[2, 6] = math.nan
    a[2, 0] = -math.inf     # x
    msg.data = array.array("B", a.tobytes())
    return msg


def _dup_ids(msg):
    a = np.frombuffer(msg.data, dtype=np.uint32).reshape(msg.width, -1).copy()
    a[1, -1] = a[0, -1]
    msg.data = array.array("B", a.tobytes())
    return msg


MALFORMED = [
    ("missing fields", lambda: _drop_field(_drop_field(_msg(), "opacity"), "rot_1"),
     r"missing required 3DGS fields \['opacity', 'rot_1'\]"),
    ("no id", lambda: _drop_field(_msg(), "id"), "has no 'id' field"),
    ("duplicated ids", lambda: _dup_ids(_msg()), r"1 duplicated ids, e.g. \["),
    ("point_step small", lambda: setattr_ret(_msg(), point_step=56, row_step=3 * 56),
     "point_step 56 is smaller than the fields need: field 'id' ends at byte 60"),
    ("data length", lambda: setattr_ret(_msg(), width=4, row_step=240),
     r"data has 180 bytes, expected width \* height \* point_step = 4 \* 1 \* 60 = 240"),
    ("row_step", lambda: setattr_ret(_msg(), row_step=200), r"row_step 200 != width \* point_step"),
    ("datatype", lambda: _set_field(_msg(), "opacity", datatype=9), "field 'opacity' has unsupported datatype 9"),
    ("count", lambda: _set_field(_msg(), "x", count=3), "field 'x' has count 3"),
    ("id float", lambda: _set_field(_msg(), "id", datatype=F32), "field 'id' must be an integer datatype"),
    ("param int", lambda: _set_field(_msg(), "opacity", datatype=PointField.INT32),
     "field 'opacity' must be FLOAT32 or FLOAT64"),
    ("dup field", lambda: _set_field(_msg(), "rot_3", name="rot_2"), r"duplicated fields \['rot_2'\]"),
    ("overlap", lambda: _set_field(_msg(), "y", offset=2), "overlap"),
    ("f_rest", lambda: _drop_field(_msg(degree=1), "f_rest_4"), "8 f_rest_"),
    ("non-finite", lambda: _with_inf(_msg()), r"non-finite values \(count per field: \{'x': 1, 'opacity': 2\}\)"),
]


def setattr_ret(msg, **kw):
    for k, v in kw.items():
        setattr(msg, k, v)
    return msg


@pytest.mark.parametrize("name,build,pattern", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_raises_invalid_input(name, build, pattern):
    with pytest.raises(InvalidInputError, match=pattern):
        pointcloud2_to_gaussians(build())


def test_nonfinite_drop_option_and_is_dense():
    msg = _with_inf(_msg())
    res = decode_pointcloud2(msg, drop_nonfinite=True)
    assert res.nonfinite == {"x": 1, "opacity": 2} and res.dropped == 2 and len(res.gaussians) == 1
    g = rand_g(4, 0)
    g.opacities[1] = math.inf
    msg = gaussians_to_pointcloud2(g, Header())
    assert not msg.is_dense
    out = pointcloud2_to_gaussians(msg, drop_nonfinite=True)
    assert out.ids.tolist() == g.ids[[0, 2, 3]].tolist()


def test_writer_rejects_missing_ids_and_empty_cloud_round_trips():
    g = rand_g(2, 0)
    g.ids = None
    with pytest.raises(InvalidInputError, match="ids is required"):
        gaussians_to_pointcloud2(g, Header())
    e = gaussians_to_pointcloud2(rand_g(0, 2), Header())
    assert (e.width, len(e.data), e.point_step) == (0, 0, 4 * 39)
    out = pointcloud2_to_gaussians(e)
    assert len(out) == 0 and out.sh.shape == (0, 9, 3)


def _flip_flag(msg):
    msg.is_bigendian = not msg.is_bigendian
    return msg


@pytest.mark.parametrize("seed", range(5))
def test_little_endian_bytes_flagged_big_endian_are_refused(seed):
    """Issue 12, finding 2: a cloud flagged big-endian whose bytes are little-endian decodes to
    garbage that used to be accepted; now it is refused and the error names the byte order."""
    g = rand_g(20, 0, seed=seed)
    g.quats[:, 0] = 1.0                         # realistic: unit-ish rotations, metres, log-scales
    g.means *= 3.0
    msg = _flip_flag(gaussians_to_pointcloud2(g, Header()))
    with pytest.raises(InvalidInputError, match="implausible values.*other byte order than is_bigendian=True"):
        pointcloud2_to_gaussians(msg)


def test_big_endian_bytes_flagged_little_endian_are_refused():
    msg = _foreign(True)
    msg.is_bigendian = False
    with pytest.raises(InvalidInputError, match="is_bigendian=False"):
        pointcloud2_to_gaussians(msg)


def test_correctly_flagged_clouds_of_both_orders_decode_exactly():
    for big in (False, True):
        assert pointcloud2_to_gaussians(_foreign(big)).ids.tolist() == [0, 100, 200, 300]
    g = rand_g(50, 1)
    same(pointcloud2_to_gaussians(gaussians_to_pointcloud2(g, Header())), g)


def test_subnormal_and_huge_values_are_refused_whatever_the_byte_order():
    from chorus_ros.ros.pointcloud import implausible_values
    g = rand_g(4, 0)
    g.means[1, 2] = 1e-40                       # a subnormal float32 coordinate
    g.log_scales[2, 0] = 1e20
    msg = gaussians_to_pointcloud2(g, Header())
    with pytest.raises(InvalidInputError, match=r"'z': 1.*'scale_0': 1"):
        pointcloud2_to_gaussians(msg)
    table = np.zeros(3, dtype=[("x", "<f4"), ("f_dc_0", "<f4")])
    table["f_dc_0"] = 1e-40                     # SH coefficients are not checked
    assert implausible_values(table) == {}
    table["x"][0] = -1e16
    assert implausible_values(table) == {"x": 1}


# ------------------------------------------------------------------ plain coloured point clouds
# (the cloud builder is the `plain_cloud` fixture of test/ros/conftest.py)


@pytest.mark.parametrize("big", [False, True])
def test_plain_cloud_with_packed_rgb_goes_through_the_core_conversion(big, plain_cloud):
    from chorus_ros.core.plain_cloud import points_to_gaussians
    msg, xyz, c8 = plain_cloud(big=big)
    res = decode_pointcloud2(msg)
    assert res.layout == "pointcloud" and not res.ids_from_message and "packed rgb" in res.note
    ref = points_to_gaussians(xyz, c8.float() / 255)
    same(res.gaussians, ref)                              # the same core function, field for field
    assert torch.equal(torch.round(res.gaussians.base_rgb * 255).to(torch.uint8), c8)
    assert not res.gaussians.extras                        # the packed field is colour, not an extra


@pytest.mark.parametrize("fields", [(("r", "g", "b"), "u1"), (("red", "green", "blue"), "u1"),
                                    (("r", "g", "b"), "f4")], ids=["r g b uint8", "red green blue uint8",
                                                                   "r g b float"])
def test_plain_cloud_with_separate_colour_fields(fields, plain_cloud):
    msg, xyz, c8 = plain_cloud(colour_fields=fields, ids=True)
    res = decode_pointcloud2(msg)
    assert res.layout == "pointcloud" and res.ids_from_message
    assert res.gaussians.ids.tolist() == list(range(100, 140))
    assert torch.allclose(res.gaussians.base_rgb, c8.float() / 255, atol=1e-6)
    assert torch.equal(res.gaussians.means, xyz)


def test_packed_rgba_uint32_is_read_too(plain_cloud):
    msg, _, c8 = plain_cloud(packed="rgba")
    next(f for f in msg.fields if f.name == "rgba").datatype = U32
    g = pointcloud2_to_gaussians(msg)
    assert torch.equal(torch.round(g.base_rgb * 255).to(torch.uint8), c8)


def _retype(msg, name, datatype):
    next(f for f in msg.fields if f.name == name).datatype = datatype
    return msg


PLAIN_MALFORMED = [
    ("no colour", lambda mk: setattr_ret(mk()[0], fields=[f for f in mk()[0].fields if f.name != "rgb"]),
     r"neither a 3DGS map \(missing required 3DGS fields \['f_dc_0'.*nor a plain coloured point cloud "
     r"\(missing \['a colour: rgb \| rgba \| red/green/blue"),
    ("packed rgb uint8", lambda mk: _retype(mk()[0], "rgb", PointField.UINT8),
     "packed colour field 'rgb' must be FLOAT32 or UINT32"),
    ("x integer", lambda mk: _retype(mk()[0], "x", PointField.INT32), "field 'x' must be FLOAT32 or FLOAT64"),
    ("non-finite position", lambda mk: mk(extra_nan=True)[0], r"non-finite values \(count per field: \{'y': 1\}\)"),
]


@pytest.mark.parametrize("name,build,pattern", PLAIN_MALFORMED, ids=[c[0] for c in PLAIN_MALFORMED])
def test_malformed_plain_clouds_raise_invalid_input(name, build, pattern, plain_cloud):
    with pytest.raises(InvalidInputError, match=pattern):
        pointcloud2_to_gaussians(build(plain_cloud))


def test_plain_cloud_float_colours_outside_unit_range_and_drop_option(plain_cloud):
    msg, _, _ = plain_cloud(colour_fields=(("r", "g", "b"), "f4"))
    a = np.frombuffer(msg.data, dtype=np.uint8).copy()
    a[12:16] = np.frombuffer(np.float32(200.0).tobytes(), np.uint8)   # point 0, field r
    msg.data = array.array("B", a.tobytes())
    with pytest.raises(InvalidInputError, match=r"float colour field 'r' holds 1 values outside \[0, 1\]"):
        pointcloud2_to_gaussians(msg)
    res = decode_pointcloud2(plain_cloud(extra_nan=True)[0], drop_nonfinite=True)
    assert res.dropped == 1 and len(res.gaussians) == 39 and 3 not in res.gaussians.ids.tolist()
