"""The generated interfaces: every msg/srv file is built, field names and types match the
documented contract, constants hold, and messages round-trip through rclpy's serialization and
interoperate with rosbags (the bag tools' CDR and RIHS01 type hashes)."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

pytestmark = pytest.mark.ros

REPO = pathlib.Path(__file__).resolve().parents[1]
MSG_FILES = sorted((REPO / "msg").glob("*.msg"))
SRV_FILES = sorted((REPO / "srv").glob("*.srv"))

# The contract other components code against (field -> rosidl type string).
MESSAGES = {
    "GaussianMapUpdate": {
        "header": "std_msgs/Header", "map_id": "string", "sequence": "uint64",
        "update_type": "uint8", "gaussians": "sensor_msgs/PointCloud2",
        "removed_ids": "sequence<uint32>"},
    "LabelEntry": {"id": "uint16", "name": "string", "color": "std_msgs/ColorRGBA"},
    "LabelInfo": {"header": "std_msgs/Header", "labels": "sequence<chorus_ros/LabelEntry>",
                  "threshold": "float"},
    "ObjectRecord": {
        "instance_id": "uint32", "label_id": "uint16", "label": "string", "score": "float",
        "centroid": "geometry_msgs/Point", "bbox_min": "geometry_msgs/Point",
        "bbox_max": "geometry_msgs/Point", "gaussian_count": "uint32", "code_id": "int32",
        "confidence": "float", "embedding": "sequence<float>"},
    "ObjectMap": {
        "header": "std_msgs/Header", "map_id": "string", "map_sequence": "uint64",
        "map_version": "uint64", "embedding_dim": "uint32",
        "objects": "sequence<chorus_ros/ObjectRecord>"},
    "Status": {
        "header": "std_msgs/Header", "state": "string", "map_size": "uint64",
        "map_version": "uint64", "map_sequence": "uint64", "encoded_version": "uint64",
        "encode_lag_s": "float", "output_rate_hz": "float", "dropped_requests": "uint64",
        "last_error": "string", "drop_reasons": "sequence<string>", "drop_counts": "sequence<uint64>",
        "encode_error": "string", "checkpoint": "string"},
}
RESULT = {"success": "boolean", "message": "string"}
SERVICES = {
    "QueryObjects": (
        {"text": "string", "top_k": "uint32", "min_score": "float", "target_frame": "string"},
        {**RESULT, "objects": "sequence<chorus_ros/ObjectRecord>", "scores": "sequence<float>",
         "map_sequence": "uint64", "frame_id": "string"}),
    "SetLabels": (
        {"names": "sequence<string>", "colors": "sequence<std_msgs/ColorRGBA>"},
        {**RESULT, "label_info": "chorus_ros/LabelInfo"}),
    "EmbedText": (
        {"texts": "sequence<string>"},
        {**RESULT, "dim": "uint32", "embeddings": "sequence<float>"}),
    "SaveMap": ({"path": "string"}, RESULT),
    "LoadMap": ({"path": "string"}, RESULT),
    "RenderRelevance": (
        {"embedding": "sequence<float>", "pose": "geometry_msgs/PoseStamped",
         "camera_info": "sensor_msgs/CameraInfo"},
        {**RESULT, "image": "sensor_msgs/Image", "map_sequence": "uint64"}),
}


def test_contract_lists_every_interface_file():
    assert sorted(MESSAGES) == [f.stem for f in MSG_FILES]
    assert sorted(SERVICES) == [f.stem for f in SRV_FILES]


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_message_fields(name):
    import chorus_ros.msg

    cls = getattr(chorus_ros.msg, name)
    assert cls.get_fields_and_field_types() == MESSAGES[name]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_fields(name):
    import chorus_ros.srv

    srv = getattr(chorus_ros.srv, name)
    request, response = SERVICES[name]
    assert srv.Request.get_fields_and_field_types() == request
    assert srv.Response.get_fields_and_field_types() == response


def test_constants():
    from chorus_ros.msg import GaussianMapUpdate, LabelInfo

    assert (GaussianMapUpdate.UPDATE_FULL, GaussianMapUpdate.UPDATE_DELTA) == (0, 1)
    assert LabelInfo.UNLABELED == 65535 == np.iinfo(np.uint16).max


# 3DGS PLY field names (degree-0 SH here), all float32, plus the uint32 id.
GAUSSIAN_FIELDS = (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _gaussian_update(n: int = 3):
    """A DELTA update with n Gaussians, built by hand (no conversion code involved)."""
    from sensor_msgs.msg import PointCloud2, PointField

    from chorus_ros.msg import GaussianMapUpdate

    dtype = np.dtype([(f, "<f4") for f in GAUSSIAN_FIELDS] + [("id", "<u4")])
    points = np.zeros(n, dtype)
    for k, f in enumerate(GAUSSIAN_FIELDS):
        points[f] = np.arange(n, dtype=np.float32) + 0.25 * k
    points["id"] = [7, 4_000_000_000, 12][:n]
    fields = [PointField(name=f, offset=dtype.fields[f][1],
                         datatype=PointField.UINT32 if f == "id" else PointField.FLOAT32, count=1)
              for f in dtype.names]
    cloud = PointCloud2(height=1, width=n, fields=fields, is_bigendian=False,
                        point_step=dtype.itemsize, row_step=dtype.itemsize * n,
                        data=points.tobytes(), is_dense=True)
    msg = GaussianMapUpdate(map_id="lab", sequence=2**40 + 3,
                            update_type=GaussianMapUpdate.UPDATE_DELTA, gaussians=cloud,
                            removed_ids=[1, 2**32 - 1])
    msg.header.frame_id = "map"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 123
    return msg, points


def test_gaussian_map_update_roundtrip_rclpy_serialization():
    from rclpy.serialization import deserialize_message, serialize_message

    from chorus_ros.msg import GaussianMapUpdate

    msg, points = _gaussian_update()
    raw = serialize_message(msg)
    back = deserialize_message(raw, GaussianMapUpdate)
    assert back == msg
    assert (back.header.frame_id, back.header.stamp.nanosec) == ("map", 123)
    assert (back.map_id, back.sequence, back.update_type) == ("lab", 2**40 + 3, 1)
    assert list(back.removed_ids) == [1, 2**32 - 1]
    decoded = np.frombuffer(bytes(back.gaussians.data), points.dtype)
    np.testing.assert_array_equal(decoded, points)
    assert decoded["id"][1] == 4_000_000_000
    # serialized size: the cloud's payload plus a bounded amount of framing
    assert len(points.tobytes()) < len(raw) < len(points.tobytes()) + 600


def _rosbags_typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for f in MSG_FILES:
        types.update(get_types_from_msg(f.read_text(), f"chorus_ros/msg/{f.stem}"))
    store.register(types)
    return store


def test_rosbags_reads_rclpy_cdr():
    """Bag tools use rosbags with the .msg files: its decoding of rclpy's bytes must agree."""
    from rclpy.serialization import serialize_message

    msg, points = _gaussian_update()
    store = _rosbags_typestore()
    back = store.deserialize_cdr(serialize_message(msg), "chorus_ros/msg/GaussianMapUpdate")
    assert (back.map_id, back.sequence, back.update_type) == ("lab", 2**40 + 3, 1)
    assert back.header.frame_id == "map"
    np.testing.assert_array_equal(back.removed_ids, [1, 2**32 - 1])
    assert [f.name for f in back.gaussians.fields] == list(points.dtype.names)
    assert bytes(back.gaussians.data) == points.tobytes()


@pytest.mark.parametrize("name", [f.stem for f in MSG_FILES])
def test_rosbags_type_hash_matches_rosidl(name):
    """RIHS01 hashes written into bags by rosbags equal the ones rosidl generated."""
    import chorus_ros.msg

    # <prefix>/lib/pythonX.Y/site-packages/chorus_ros/msg/__init__.py -> <prefix>/share/chorus_ros
    # (the dev venv sets no AMENT_PREFIX_PATH, so the ament index is not used here)
    share = pathlib.Path(chorus_ros.msg.__file__).resolve().parents[5] / "share" / "chorus_ros"
    hashes = json.loads((share / "msg" / f"{name}.json").read_text())["type_hashes"]
    expected = {h["type_name"]: h["hash_string"] for h in hashes}[f"chorus_ros/msg/{name}"]
    assert _rosbags_typestore().hash_rihs01(f"chorus_ros/msg/{name}") == expected
