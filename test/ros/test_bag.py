"""The demo bag: written with rosbags into tmp_path, read back and checked message by message."""
import pytest

from chorus_ros.core.synthetic import SceneConfig, generate_scene
from chorus_ros.ros.bag import DemoBagConfig, chorus_typestore, make_demo_bag, read_bag

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")


@pytest.fixture(scope="module")
def scene():
    return generate_scene(SceneConfig(seed=3, target_gaussians=2000))


def test_demo_bag_grows_the_map_and_removes_clutter(scene, tmp_path):
    from rclpy.serialization import deserialize_message

    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros.map_updates import map_update_from_msg
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo

    cfg = DemoBagConfig(steps=4, views_per_step=2, final_views=3, clutter=30, width=40, height=30)
    info = make_demo_bag(tmp_path / "bag", scene, cfg)
    assert info.views == 4 * 2 + 3 and info.map_updates == 4
    msgs = list(read_bag(info.path))
    assert [m.t_ns for m in msgs] == sorted(m.t_ns for m in msgs)
    ids: set[int] = set()
    sizes = []
    poses, infos = [], []
    for m in msgs:
        if m.topic == "/map_updates":
            assert m.qos is not None and m.qos.durability.name == "TRANSIENT_LOCAL"
            u = map_update_from_msg(deserialize_message(m.raw, GaussianMapUpdate))
            assert u.sequence == len(sizes) and u.full == (u.sequence == 0)
            ids -= set(u.removed_ids.tolist())
            if u.gaussians is not None:
                assert not ids & set(u.gaussians.ids.tolist())   # every upsert adds new ids here
                ids |= set(u.gaussians.ids.tolist())
            sizes.append(len(ids))
        elif m.topic == "/camera_0/pose":
            poses.append(deserialize_message(m.raw, PoseStamped))
        else:
            assert m.topic == "/camera_0/camera_info"
            infos.append(deserialize_message(m.raw, CameraInfo))
    assert sizes[0] == round(0.4 * len(scene)) and sizes == sorted(sizes[:3]) + sizes[3:]
    assert sizes[1] > sizes[0] + 30 - 1                                  # clutter added ...
    assert sorted(ids) == info.final_ids.tolist() == sorted(scene.gaussians.ids.tolist())  # ... removed
    assert [p.header.stamp for p in poses] == [i.header.stamp for i in infos]
    assert infos[0].width == 40 and infos[0].header.frame_id == "camera_0_optical_frame"
    assert poses[0].header.frame_id == "map"


def test_rosbags_reads_the_same_messages(scene, tmp_path):
    """rclpy's CDR in the bag is what rosbags (any rosbag2 reader) decodes."""
    from rosbags.highlevel import AnyReader
    info = make_demo_bag(tmp_path / "bag", scene, DemoBagConfig(steps=2, clutter=0, width=20, height=16))
    with AnyReader([info.path], default_typestore=chorus_typestore()) as r:
        first = {}
        for c, t, raw in r.messages():
            first.setdefault(c.topic, r.deserialize(raw, c.msgtype))
    upd = first["/map_updates"]
    assert upd.map_id == "demo" and upd.update_type == 0 and upd.gaussians.width > 0
    names = [f.name for f in upd.gaussians.fields]
    assert names[:3] == ["x", "y", "z"] and names[-1] == "id"
    assert first["/camera_0/camera_info"].width == 20
    with pytest.raises(Exception, match="exists"):
        make_demo_bag(info.path, scene)
