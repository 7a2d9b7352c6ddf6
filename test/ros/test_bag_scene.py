"""Scene bags (``chorus-ros make-bag --dataset``): a tiny scene folder recorded into tmp_path in both
storages, read back message by message and compared with the folder; malformed inputs."""
import numpy as np
import pytest

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")


@pytest.fixture(scope="module")
def scene(tiny_scene_folder):
    from chorus_ros.core.datasets import open_scene
    return open_scene(tiny_scene_folder)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_scene_bag_round_trip(scene, tmp_path, storage):
    from geometry_msgs.msg import PoseStamped
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image

    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros.bag import (GT_LABELS_TOPIC, MAP_TOPIC, SceneBagConfig, make_scene_bag, read_bag,
                                    read_scene_bag, scene_bag_topics)
    from chorus_ros.ros.conversions import camera_from_msgs
    from chorus_ros.ros.map_updates import map_update_from_msg

    info = make_scene_bag(tmp_path / "bag", scene, SceneBagConfig(pieces=3, storage=storage))
    suffix = {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    assert any(p.suffix == suffix for p in info.path.iterdir())
    assert info.topics == sorted(scene_bag_topics("camera_0"))
    assert info.ignored_properties == ["instance", "label"]
    msgs = list(read_bag(info.path))
    assert [m.t_ns for m in msgs] == sorted(m.t_ns for m in msgs)
    ids: set[int] = set()
    seqs, poses, infos, images = [], [], [], []
    for m in msgs:
        if m.topic == MAP_TOPIC:
            assert m.qos is not None and m.qos.durability.name == "TRANSIENT_LOCAL"
            raw = deserialize_message(m.raw, GaussianMapUpdate)
            assert {f.name for f in raw.gaussians.fields}.isdisjoint({"label", "instance"})  # no ground truth
            u = map_update_from_msg(raw)
            assert u.full == (u.sequence == 0) and u.map_id == "room"
            new = set(u.gaussians.ids.tolist())
            assert new and not ids & new          # disjoint spatial pieces
            ids |= new
            seqs.append(u.sequence)
        elif m.topic == "/camera_0/pose":
            poses.append(deserialize_message(m.raw, PoseStamped))
        elif m.topic == "/camera_0/camera_info":
            infos.append(deserialize_message(m.raw, CameraInfo))
        elif m.topic == "/camera_0/image_raw":    # the camera image goes out just before its pose
            images.append((m.t_ns, deserialize_message(m.raw, Image)))
    assert seqs == [0, 1, 2] and ids == set(scene.gaussians.ids.tolist())
    assert max(m.t_ns for m in msgs if m.topic == MAP_TOPIC) < min(m.t_ns for m in msgs if m.topic.endswith("/pose"))
    assert len(poses) == len(infos) == len(scene) == 4
    bag = read_scene_bag(info.path)
    assert bag.view_stamps_ns == info.view_stamps_ns == [p.header.stamp.sec * 10**9 + p.header.stamp.nanosec
                                                         for p in poses]
    assert bag.classes == scene.classes and bag.info["unlabeled_id"] == 65535 and bag.camera == "camera_0"
    assert bag.input_topics == [MAP_TOPIC, "/camera_0/image_raw", "/camera_0/pose", "/camera_0/camera_info"]
    assert GT_LABELS_TOPIC in info.topics
    full = read_scene_bag(info.path, with_inputs=True)
    assert sorted(full.gaussians.ids.tolist()) == sorted(scene.gaussians.ids.tolist())
    for k, (p, ci) in enumerate(zip(poses, infos)):
        f = scene.frame(k)
        t_img, img = images[k]
        assert img.header.stamp == p.header.stamp and img.encoding == "rgb8" and t_img < bag.view_stamps_ns[k]
        np.testing.assert_array_equal(full.rgb[bag.view_stamps_ns[k]], f.rgb)
        np.testing.assert_allclose(full.cameras[bag.view_stamps_ns[k]].c2w, f.c2w, atol=1e-5)
        cam = camera_from_msgs(p, ci)
        np.testing.assert_allclose(cam.c2w, f.c2w, atol=1e-5)
        np.testing.assert_allclose(cam.K.numpy(), f.camera.K.numpy(), atol=1e-6)
        s = bag.view_stamps_ns[k]
        np.testing.assert_array_equal(bag.semantic[s], f.semantic)
        np.testing.assert_array_equal(bag.instance[s], f.instance)


def test_make_bag_cli_on_a_folder(tiny_scene_folder, tmp_path, capsys):
    from chorus_ros.ros.bag import read_scene_bag
    from chorus_ros.tools.cli import main
    out = tmp_path / "b"
    assert main(["make-bag", "--dataset", str(tiny_scene_folder), "--out", str(out), "--storage", "sqlite3",
                 "--pieces", "2", "--views", "::2"]) == 0
    text = capsys.readouterr().out
    assert "ignored PLY properties (not recorded): instance, label" in text and "2 map pieces" in text
    assert len(read_scene_bag(out).view_stamps_ns) == 2
    assert main(["make-bag", "--dataset", str(tiny_scene_folder), "--out", str(out)]) == 2   # exists
    assert f"bag path {out} already exists" in capsys.readouterr().err


def test_malformed_inputs_get_one_clear_error(small_scene, tmp_path, capsys):
    from chorus_ros.core.errors import DatasetError
    from chorus_ros.ros.bag import DemoBagConfig, make_demo_bag, read_scene_bag
    from chorus_ros.tools.cli import main

    missing = tmp_path / "no_such_folder"
    assert main(["make-bag", "--dataset", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"scene folder not found: {missing}" in err and "Traceback" not in err
    with pytest.raises(DatasetError, match=f"bag not found: {tmp_path / 'nope'}"):
        read_scene_bag(tmp_path / "nope")
    demo = make_demo_bag(tmp_path / "demo", small_scene,
                         DemoBagConfig(steps=1, final_views=1, clutter=0, width=8, height=6))
    with pytest.raises(DatasetError, match=f"{demo.path}: no ground-truth topics"):
        read_scene_bag(demo.path)
    (tmp_path / "junk").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'junk'}: not a readable rosbag2 bag"):
        read_scene_bag(tmp_path / "junk")


def test_docs_list_every_scene_bag_topic():
    """docs/ros.md documents each topic a scene bag carries, with its type."""
    from pathlib import Path

    from chorus_ros.ros.bag import scene_bag_topics
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ros.md").read_text()
    for topic, (msgtype, _) in scene_bag_topics("camera_0").items():
        pkg, _, name = msgtype.split("/")
        assert f"| `{topic}` | {pkg}/{name}" in doc, f"docs/ros.md lacks the scene bag topic {topic}"


def test_make_bag_from_the_export_layout(small_scene, tmp_path, capsys):
    """The chorus_ros export layout (export_dataset) records too; its 'no instance' id is 65535."""
    from chorus_ros.core.synthetic.dataset import export_dataset
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.ros.bag import read_scene_bag
    from chorus_ros.tools.cli import main
    traj = make_trajectory(small_scene, TrajectoryConfig(loop_views=2, random_views=0, width=16, height=12))
    export_dataset(small_scene, traj, tmp_path / "exported")
    assert main(["make-bag", "--dataset", str(tmp_path / "exported"), "--out", str(tmp_path / "b"),
                 "--pieces", "1"]) == 0
    bag = read_scene_bag(tmp_path / "b", with_inputs=True)
    assert bag.info["instance_none_id"] == 65535 and bag.info["pieces"] == 1 and len(bag.view_stamps_ns) == 2
    assert bag.classes[0] == small_scene.labels.names[0] and "floor" in bag.info["stuff"]
    assert sorted(bag.gaussians.ids.tolist()) == sorted(small_scene.gaussians.ids.tolist())
    ref = dict(zip(small_scene.gaussians.ids.tolist(), small_scene.gaussians.extras["label"].tolist()))
    assert [ref[i] for i in bag.gaussians.ids.tolist()] == bag.gaussians.extras["label"].tolist()
    (tmp_path / "exported" / "scene.ply").unlink()                     # malformed: the PLY is gone
    assert main(["make-bag", "--dataset", str(tmp_path / "exported"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert f"missing 3DGS map {tmp_path / 'exported' / 'scene.ply'}" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
