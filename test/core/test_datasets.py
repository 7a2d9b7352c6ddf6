"""Scene-folder readers (chorus_ros.core.datasets): both layouts, class mapping, view selection,
ground truth kept away from the model, and one clear error naming the file for malformed folders."""
import json
import shutil

import cv2
import numpy as np
import pytest

from chorus_ros.core.datasets import (LAYOUT_EXPORT, LAYOUT_REPLICA, LabelsMap, SceneFrame, load_labels_map,
                                      open_scene, parse_views, scene_from_synthetic, write_scene_folder)
from chorus_ros.core.errors import DatasetError, InvalidInputError
from chorus_ros.core.labels import UNLABELED

OFFSET = 10  # folder class id = synthetic class id + OFFSET, so mapping by id would fail


def _tiny_synthetic(n_views=3, w=24, h=18):
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

    scene = generate_scene(SceneConfig(seed=3, target_gaussians=3000))
    traj = make_trajectory(scene, TrajectoryConfig(loop_views=n_views - 1, random_views=1, width=w, height=h))
    return scene, traj


def replica_from_synthetic(scene, traj, root):
    """Write a Replica-layout folder of a generated scene: ids shifted by OFFSET, 'shelf' renamed
    'bookshelf', instance 'none' = 0 (the synthetic 65535)."""
    from chorus_ros.core.render import RenderSettings

    mem = scene_from_synthetic(scene, traj, RenderSettings(backend="reference"), min_alpha=0.3)
    names = {i + OFFSET: ("bookshelf" if n == "shelf" else n) for i, n in enumerate(scene.labels.names)}
    frames = []
    for k in range(len(mem)):
        f = mem.frame(k)
        sem = np.where(f.semantic == UNLABELED, UNLABELED, f.semantic.astype(np.int64) + OFFSET)
        ins = np.where(f.instance == UNLABELED, 0, f.instance)
        frames.append(SceneFrame(f.index, f.c2w, f.rgb, f.depth, sem.astype(np.uint16), ins.astype(np.uint16),
                                 f.camera))
    g = scene.gaussians
    g = type(g)(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids,
                {"label": g.extras["label"] + OFFSET, "instance": g.extras["instance"], "confidence": g.opacities})
    write_scene_folder(root, gaussians=g, classes=names, intrinsics=mem.camera, frames=frames,
                       unlabeled_id=UNLABELED, instance_none_id=0)
    return mem


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from chorus_ros.core.synthetic.dataset import export_dataset

    base = tmp_path_factory.mktemp("scenes")
    scene, traj = _tiny_synthetic()
    mem = replica_from_synthetic(scene, traj, base / "replica")
    export_dataset(scene, traj, base / "export")
    return {"replica": base / "replica", "export": base / "export", "scene": scene, "mem": mem}


def test_replica_layout_round_trip(folders):
    sc = open_scene(folders["replica"])
    scene, mem = folders["scene"], folders["mem"]
    assert sc.layout == LAYOUT_REPLICA and len(sc) == 3 and sc.frame_indices == [0, 1, 2]
    assert sc.gaussians.extras == {} and sc.ignored_properties == ["confidence", "instance", "label"]
    np.testing.assert_array_equal(sc.gt_gaussian_labels, scene.gaussians.extras["label"].numpy() + OFFSET)
    np.testing.assert_array_equal(sc.gt_gaussian_instances, scene.gaussians.extras["instance"].numpy())
    assert sc.unlabeled_id == UNLABELED and sc.instance_none_id == 0 and sc.classes[OFFSET] == "floor"
    np.testing.assert_allclose(sc.camera.K, mem.camera.K)
    for k in range(3):
        f, m = sc.frame(k), mem.frame(k)
        np.testing.assert_allclose(f.c2w, m.c2w, atol=1e-12)
        np.testing.assert_allclose(f.camera.viewmat.numpy(), m.camera.viewmat.numpy(), atol=1e-5)
        np.testing.assert_array_equal(f.rgb, m.rgb)
        assert f.semantic.dtype == np.uint16 and f.depth.dtype == np.float32
        np.testing.assert_array_equal(f.semantic == UNLABELED, m.semantic == UNLABELED)
        np.testing.assert_allclose(f.depth, np.round(m.depth * 1000) / 1000, atol=1e-6)
        np.testing.assert_array_equal(f.instance, np.where(m.instance == UNLABELED, 0, m.instance))


def test_without_faint_subsets_map_and_per_gaussian_truth_together(folders):
    """SceneFolder.without_faint leaves out the Gaussians below the threshold (as the pipeline's
    min_opacity does) and the rows of the per-Gaussian ground truth with them."""
    import dataclasses

    import torch
    sc = open_scene(folders["replica"])
    ops = sc.gaussians.opacities.clone()
    faint = torch.arange(len(ops)) % 4 == 0
    ops[faint] = -6.0
    g = sc.gaussians
    sc = dataclasses.replace(sc, gaussians=type(g)(g.means, g.sh, ops, g.log_scales, g.quats, g.ids))
    out = sc.without_faint(0.1)
    keep = (~faint).numpy()
    assert len(out.gaussians) == int(keep.sum()) and bool((out.gaussians.opacity >= 0.1).all())
    assert torch.equal(out.gaussians.ids, g.ids[~faint])
    np.testing.assert_array_equal(out.gt_gaussian_labels, sc.gt_gaussian_labels[keep])
    np.testing.assert_array_equal(out.gt_gaussian_instances, sc.gt_gaussian_instances[keep])
    assert len(out) == len(sc) and sc.without_faint(0.0) is sc and out.without_faint(0.1) is out


def test_class_mapping_by_name_and_labels_map(folders, tmp_path):
    labels = folders["scene"].labels
    sc = open_scene(folders["replica"])
    lut = sc.class_map_to(labels)
    shelf = labels.index_of("shelf")
    assert lut[OFFSET + labels.index_of("chair")] == labels.index_of("chair")
    assert lut[OFFSET + shelf] == UNLABELED  # 'bookshelf' is no model class: ignored
    assert lut[UNLABELED] == UNLABELED and lut[0] == UNLABELED  # unknown id
    p = tmp_path / "map.yaml"
    p.write_text("bookshelf: shelf\nchair: null\n")
    lm = load_labels_map(p)
    assert isinstance(lm, LabelsMap) and lm == {"bookshelf": "shelf", "chair": None} and lm.source == str(p)
    sc = open_scene(folders["replica"], labels_map=lm)
    lut = sc.class_map_to(labels)
    assert lut[OFFSET + shelf] == shelf and lut[OFFSET + labels.index_of("chair")] == UNLABELED
    f, m = sc.frame(1), folders["mem"].frame(1)
    mapped = lut[f.semantic]
    keep = (m.semantic != UNLABELED) & (m.semantic != labels.index_of("chair"))
    np.testing.assert_array_equal(mapped[keep], m.semantic[keep])


def test_export_layout_matches_load_dataset(folders):
    from chorus_ros.core.synthetic.dataset import load_dataset

    sc = open_scene(folders["export"])
    ds = load_dataset(folders["export"])
    assert sc.layout == LAYOUT_EXPORT and len(sc) == len(ds) == 3
    assert sc.instance_none_id == UNLABELED and sc.class_names() == ds.labels.names
    assert "floor" in sc.stuff_names and sc.gaussians.extras == {} and "label" in sc.ignored_properties
    lut = sc.class_map_to(ds.labels)
    np.testing.assert_array_equal(lut[: len(ds.labels)], np.arange(len(ds.labels)))
    for k in range(3):
        f, d = sc.frame(k), ds[k]
        np.testing.assert_array_equal(f.semantic, d.semantic)
        np.testing.assert_array_equal(f.instance, d.instance)
        np.testing.assert_allclose(f.depth, d.depth)
        np.testing.assert_allclose(f.camera.viewmat.numpy(), d.camera.viewmat.numpy(), atol=1e-6)


def test_views_select_frames(folders):
    assert parse_views("30:60") == slice(30, 60) and parse_views("::4") == slice(None, None, 4)
    assert parse_views("2") == slice(2, 3) and parse_views(None) is None and parse_views(":") is None
    for bad in ("a:b", "1:2:3:4", "::0"):
        with pytest.raises(InvalidInputError):
            parse_views(bad)
    sc = open_scene(folders["replica"], views=parse_views("1:"))
    assert sc.frame_indices == [1, 2] and sc.frame(0).index == 1
    assert open_scene(folders["replica"], views=parse_views("::2")).frame_indices == [0, 2]
    with pytest.raises(DatasetError, match="selects none"):
        open_scene(folders["replica"], views=parse_views("5:"))
    with pytest.raises(IndexError):
        sc.frame(2)


def test_folder_without_frames_is_3d_only(folders, tmp_path):
    root = tmp_path / "pts"
    root.mkdir()
    shutil.copy(folders["replica"] / "classes.json", root)
    shutil.copy(folders["replica"] / "gaussians.ply", root)
    sc = open_scene(root)
    assert len(sc) == 0 and sc.camera is None and sc.gt_gaussian_labels is not None


def _copy(folders, tmp_path, kind="replica"):
    dst = tmp_path / kind
    shutil.copytree(folders[kind], dst)
    return dst


def _write(path, img):
    assert cv2.imwrite(str(path), img)


@pytest.mark.parametrize("case,file", [
    ("missing_classes", "classes.json"),
    ("missing_depth", "depth_1.png"),
    ("wrong_size", "semantic_class_2.png"),
    ("rgb_16bit", "rgb_0.png"),
    ("short_traj", "traj_w_c.txt"),
    ("traj_not_numbers", "traj_w_c.txt"),
    ("traj_not_rigid", "traj_w_c.txt"),
    ("bad_intrinsics", "intrinsics.txt"),
    ("intrinsics_count", "intrinsics.txt"),
    ("missing_ply", "gaussians.ply"),
    ("broken_ply", "gaussians.ply"),
    ("classes_dup", "classes.json"),
    ("ply_unknown_label", "gaussians.ply"),
    ("not_png", "rgb_1.png"),
])
def test_malformed_replica_folder_names_the_file(folders, tmp_path, case, file):
    root = _copy(folders, tmp_path)
    if case == "missing_classes":
        (root / "classes.json").unlink()
    elif case == "missing_depth":
        (root / "depth" / "depth_1.png").unlink()
    elif case == "wrong_size":
        _write(root / "semantic_class" / "semantic_class_2.png", np.zeros((5, 7), np.uint16))
    elif case == "rgb_16bit":
        _write(root / "rgb" / "rgb_0.png", np.zeros((18, 24, 3), np.uint16))
    elif case == "short_traj":
        lines = (root / "traj_w_c.txt").read_text().splitlines()
        (root / "traj_w_c.txt").write_text("\n".join(lines[:2]) + "\n")
    elif case == "traj_not_numbers":
        (root / "traj_w_c.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 x\n" * 3)
    elif case == "traj_not_rigid":
        (root / "traj_w_c.txt").write_text("2 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\n" * 3)
    elif case == "bad_intrinsics":
        (root / "intrinsics.txt").write_text("-10 10 12 9 24 18\n")
    elif case == "intrinsics_count":
        (root / "intrinsics.txt").write_text("10 10 12 9\n")
    elif case == "missing_ply":
        (root / "gaussians.ply").unlink()
    elif case == "broken_ply":
        (root / "gaussians.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n")
    elif case == "classes_dup":
        d = json.loads((root / "classes.json").read_text())
        d["classes"].append({"id": 99, "name": d["classes"][0]["name"]})
        (root / "classes.json").write_text(json.dumps(d))
    elif case == "ply_unknown_label":
        d = json.loads((root / "classes.json").read_text())
        d["classes"] = d["classes"][:3]
        (root / "classes.json").write_text(json.dumps(d))
    elif case == "not_png":
        (root / "rgb" / "rgb_1.png").write_bytes(b"hello")
    with pytest.raises(DatasetError) as e:
        open_scene(root)
    assert file in str(e.value), str(e.value)
    assert isinstance(e.value, InvalidInputError)


def test_malformed_export_folder_and_labels_maps(folders, tmp_path):
    root = _copy(folders, tmp_path, "export")
    (root / "camera.yaml").write_text("fx: 1\n")
    with pytest.raises(DatasetError, match="camera.yaml"):
        open_scene(root)
    (root / "labels.yaml").unlink()
    with pytest.raises(DatasetError, match="labels.yaml"):
        open_scene(root)
    with pytest.raises(DatasetError, match="not a scene folder"):
        open_scene(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        open_scene(tmp_path / "nope")
    bad = tmp_path / "bad_map.yaml"
    bad.write_text("bookcase: shelf\n")  # no such ground-truth class
    with pytest.raises(DatasetError, match="bad_map.yaml.*bookcase"):
        open_scene(folders["replica"], labels_map=load_labels_map(bad))
    bad.write_text("bookshelf: bookcase\n")  # no such model class
    sc = open_scene(folders["replica"], labels_map=load_labels_map(bad))
    with pytest.raises(DatasetError, match="bad_map.yaml.*bookcase"):
        sc.class_map_to(folders["scene"].labels)
    bad.write_text("- a\n- b\n")
    with pytest.raises(DatasetError, match="bad_map.yaml"):
        load_labels_map(bad)
    with pytest.raises(DatasetError, match="nothere.yaml"):
        load_labels_map(tmp_path / "nothere.yaml")
