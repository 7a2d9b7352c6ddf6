"""Pure message conversions (no rclpy.init): images, cameras, label tables, object maps."""
import array
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.geometry import Camera, look_at_pose
from chorus_ros.core.labels import LabelSet
from chorus_ros.ros import conversions as cv


@pytest.mark.parametrize("enc", sorted(cv.IMAGE_ENCODINGS))
def test_image_roundtrip_every_encoding(enc):
    dtype, ch = cv.IMAGE_ENCODINGS[enc]
    rng = np.random.default_rng(0)
    shape = (5, 7) if ch == 1 else (5, 7, ch)
    if dtype.kind == "f":
        a = rng.normal(size=shape).astype(dtype)
        a.flat[3] = np.nan
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    msg = cv.numpy_to_image(a, enc, cv.header(123, "cam"))
    assert (msg.height, msg.width, msg.step) == (5, 7, 7 * ch * dtype.itemsize)
    assert msg.header.frame_id == "cam" and cv.stamp_to_ns(msg.header.stamp) == 123
    b = cv.image_to_numpy(msg)
    assert b.dtype == dtype and b.shape == shape
    np.testing.assert_array_equal(a, b)


def test_image_padded_rows_and_big_endian_input():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    msg = Image(height=3, width=4, encoding="16UC1", is_bigendian=1, step=10)
    rows = [a[i].astype(">u2").tobytes() + b"\xff\xff" for i in range(3)]
    msg.data = array.array("B", b"".join(rows))
    np.testing.assert_array_equal(cv.image_to_numpy(msg), a)


def test_image_errors_name_the_problem():
    with pytest.raises(InvalidInputError, match="unsupported image encoding 'yuv'"):
        cv.image_to_numpy(Image(encoding="yuv"))
    with pytest.raises(InvalidInputError, match="needs dtype uint16"):
        cv.numpy_to_image(np.zeros((2, 2), np.int32), "16UC1")
    with pytest.raises(InvalidInputError, match=r"needs shape \[H, W, 3\]"):
        cv.numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8")
    bad = Image(height=2, width=2, encoding="rgb8", step=6)
    bad.data = array.array("B", bytes(5))
    with pytest.raises(InvalidInputError, match="expected height\\*step = 12"):
        cv.image_to_numpy(bad)


def _camera():
    c2w = look_at_pose([2.0, -1.0, 1.5], [0.0, 0.5, 0.8])
    return Camera.from_c2w(c2w, Camera.intrinsics_from_fov(64, 48, 70.0), 64, 48, "cam0_optical")


def test_camera_roundtrip_through_pose_and_camera_info():
    cam = _camera()
    pose, info = cv.camera_to_msgs(cam, 5_000_000_123, "map")
    assert pose.header.frame_id == "map" and info.header.frame_id == "cam0_optical"
    assert cv.stamp_to_ns(pose.header.stamp) == 5_000_000_123
    back = cv.camera_from_msgs(pose, info, map_frame="map")
    assert (back.width, back.height, back.frame_id) == (64, 48, "cam0_optical")
    torch.testing.assert_close(back.viewmat, cam.viewmat, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.K, cam.K)


def test_camera_errors():
    pose, info = cv.camera_to_msgs(_camera(), 0, "map")
    zero = CameraInfo(width=0, height=48, k=list(info.k))
    with pytest.raises(InvalidInputError, match="zero image size 0x48"):
        cv.camera_from_msgs(pose, zero)
    with pytest.raises(InvalidInputError, match="exceeds the limit"):
        cv.camera_from_msgs(pose, CameraInfo(width=5000, height=5000, k=list(info.k)), max_pixels=10**6)
    with pytest.raises(InvalidInputError, match="focal"):
        cv.camera_from_msgs(pose, CameraInfo(width=4, height=4, k=[0.0] * 9))
    tilted = PoseStamped(header=pose.header)
    tilted.pose.position = pose.pose.position
    tilted.pose.orientation.x, tilted.pose.orientation.w = 0.5, 1.0     # norm 1.118
    with pytest.raises(InvalidInputError, match="not unit length"):
        cv.camera_from_msgs(tilted, info)
    cam = cv.camera_from_msgs(tilted, info, strict_quaternion=False)   # opt-in normalisation
    assert torch.isfinite(cam.viewmat).all()
    odom = PoseStamped(header=cv.header(0, "odom"), pose=pose.pose)
    with pytest.raises(InvalidInputError, match="frame 'odom', expected the map frame 'map'"):
        cv.camera_from_msgs(odom, info)
    nan = PoseStamped(header=pose.header)
    nan.pose.position.x = float("nan")
    nan.pose.orientation.w = 1.0
    with pytest.raises(InvalidInputError, match="finite"):
        cv.camera_from_msgs(nan, info)


def test_label_info_roundtrip():
    pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
    ls = LabelSet(["floor", "chair", "lamp"], np.array([[10, 20, 30], [255, 0, 0], [0, 0, 255]]))
    msg = cv.labelset_to_msg(ls, 7, threshold=0.2)
    assert [e.id for e in msg.labels] == [0, 1, 2] and msg.labels[1].name == "chair"
    assert msg.labels[1].color.r == 1.0 and abs(msg.threshold - 0.2) < 1e-7
    msg.labels = list(reversed(msg.labels))                     # order does not matter
    back = cv.msg_to_labelset(msg, name=ls.name)
    assert back == ls
    msg.labels[0].id = 9
    with pytest.raises(InvalidInputError, match="ids must be 0..2"):
        cv.msg_to_labelset(msg)


def test_object_map_roundtrip_to_table():
    pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
    recs = [SimpleNamespace(instance_id=i + 1, label_id=i, label=f"c{i}", score=0.5 + i / 10,
                            centroid=torch.tensor([i, 0.0, 1.0]), bbox_min=np.zeros(3),
                            bbox_max=np.ones(3) * (i + 1), gaussian_count=10 * (i + 1),
                            embedding=torch.tensor([3.0, 4.0]) * (i + 1)) for i in range(3)]
    msg = cv.objects_to_msg(recs, cv.header(11, "map"), map_id="m", map_sequence=4, map_version=9)
    assert msg.embedding_dim == 2 and len(msg.objects) == 3 and msg.map_sequence == 4
    o = msg.objects[2]
    assert (o.instance_id, o.label_id, o.label, o.gaussian_count) == (3, 2, "c2", 30)
    assert (o.centroid.x, o.bbox_max.z) == (2.0, 3.0) and abs(o.score - 0.7) < 1e-6
    table = cv.objectmap_to_table(msg)
    np.testing.assert_allclose(table.embeddings, [[0.6, 0.8]] * 3, atol=1e-6)
    assert table.has_embedding.all() and table.dim == 2
    slim = cv.objects_to_msg(recs, cv.header(11, "map"), include_embeddings=False)
    assert slim.embedding_dim == 0 and len(slim.objects[0].embedding) == 0
    # records without code id / confidence: no code, confidence = the class score (clipped)
    assert [(x.code_id, round(x.confidence, 6)) for x in msg.objects] == [(-1, 0.5), (-1, 0.6), (-1, 0.7)]


def test_object_record_carries_code_id_and_confidence():
    pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
    from chorus_ros.core.decode.instances import ObjectRecord
    from chorus_ros.msg import ObjectRecord as ObjectRecordMsg
    recs = [ObjectRecord(7, 1, "chair", 0.8, np.zeros(3), -np.ones(3), np.ones(3), 120,
                         np.array([1.0, 0.0], np.float32), code_id=5, confidence=0.25),
            ObjectRecord(8, 2, "lamp", 1.3, np.zeros(3), np.zeros(3), np.ones(3), 3,
                         np.array([0.0, 1.0], np.float32))]          # dataclass defaults: no code, 1.0
    a, b = cv.records_to_msgs(recs)
    assert (a.code_id, a.confidence, a.gaussian_count) == (5, 0.25, 120)
    assert (b.code_id, b.confidence) == (ObjectRecordMsg.CODE_NONE, 1.0) and ObjectRecordMsg().code_id == -1
    for bad in ({"code_id": -2}, {"confidence": 1.5}, {"confidence": float("nan")}):
        r = SimpleNamespace(**{**vars(recs[0]), **bad})
        with pytest.raises(InvalidInputError, match="object 7: code_id must be >= -1 and confidence in"):
            cv.records_to_msgs([r])
