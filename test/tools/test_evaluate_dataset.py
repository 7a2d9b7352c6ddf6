"""chorus-eval --dataset end to end on two tiny scene folders (one per layout) with a tiny
random-init checkpoint: report, JSON keys, plots, views, labels map; malformed input exits 2
with one line naming the file (no traceback)."""
import json
import shutil

import cv2
import numpy as np
import pytest

from chorus_ros.core.labels import UNLABELED


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    enc = pytest.importorskip("chorus_ros.core.encoder")
    pytest.importorskip("chorus_ros.core.encoder.incremental")
    from chorus_ros.core.datasets import SceneFrame, scene_from_synthetic, write_scene_folder
    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic import SceneConfig, generate_scene, synthetic_label_set
    from chorus_ros.core.synthetic.dataset import export_dataset
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder

    base = tmp_path_factory.mktemp("eval")
    spec = TextEncoderSpec(tiny=True, prompt_template="{}")
    torch.manual_seed(0)
    cfg = enc.EncoderConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=8,
                            head_hidden=16, embed_dim=16, heads=[enc.HeadSpec("language", 64), enc.HeadSpec("object", 8)])
    te = spec.to_dict()
    te["weights"] = "text_encoder.safetensors"
    save_checkpoint(str(base / "ckpt"), enc.ChorusEncoder(cfg), {"label_set": synthetic_label_set().to_dict(),
                                                                "text_encoder": te})
    build_text_encoder(spec).save_weights(base / "ckpt" / "text_encoder.safetensors")

    scene = generate_scene(SceneConfig(seed=1000, target_gaussians=1500))
    traj = make_trajectory(scene, TrajectoryConfig(loop_views=2, random_views=1, width=32, height=24))
    settings = RenderSettings(backend="reference")
    export_dataset(scene, traj, base / "export", settings=settings)
    mem = scene_from_synthetic(scene, traj, settings, min_alpha=0.3)
    frames = []
    for k in range(len(mem)):  # Replica layout: ids shifted by 5, 'shelf' called 'bookshelf', no instance = 0
        f = mem.frame(k)
        sem = np.where(f.semantic == UNLABELED, UNLABELED, f.semantic.astype(np.int64) + 5).astype(np.uint16)
        frames.append(SceneFrame(f.index, f.c2w, f.rgb, f.depth, sem,
                                 np.where(f.instance == UNLABELED, 0, f.instance).astype(np.uint16), f.camera))
    g = scene.gaussians
    g = type(g)(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids,
                {"label": g.extras["label"] + 5, "instance": g.extras["instance"]})
    names = {i + 5: ("bookshelf" if n == "shelf" else n) for i, n in enumerate(scene.labels.names)}
    write_scene_folder(base / "replica", gaussians=g, classes=names, intrinsics=mem.camera, frames=frames)
    (base / "map.yaml").write_text("bookshelf: shelf\n")
    return base


def test_dataset_report_json_and_plots(setup, tmp_path, capsys):
    from chorus_ros.core.metrics.scenes import JSON_KEYS
    from chorus_ros.tools.evaluate import main

    out, js, plots = tmp_path / "r" / "report.md", tmp_path / "r.json", tmp_path / "r" / "plots"
    rc = main(["--dataset", str(setup / "replica"), str(setup / "export"), "--checkpoint", str(setup / "ckpt"),
               "--labels-map", str(setup / "map.yaml"), "--views", "1:", "--out", str(out), "--json", str(js),
               "--plots", str(plots), "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "replica: 2 views" in err and "not given to the model: instance, label" in err
    d = json.loads(js.read_text())
    assert list(d)[: len(JSON_KEYS)] == list(JSON_KEYS)
    assert set(d["scenes"]) == {"replica", "export"}
    for s in d["scenes"].values():
        assert set(JSON_KEYS) - {"scenes"} <= set(s) and s["n_views"] == 2
    assert d["n_views"] == 4 and d["scenes"]["replica"]["mapping"]["bookshelf"] == "shelf"
    assert all(v is None or 0 <= v <= 100 for v in d["per_class_iou"].values())
    md = out.read_text()
    assert "| replica |" in md and "| export |" in md and "| **all** |" in md
    assert "bookshelf -> shelf" in md and "](plots/confusion.png)" in md
    for name in ("confusion", "per_class_iou", "contact_sheet"):
        img = cv2.imread(str(plots / f"{name}.png"))
        assert img is not None and img.shape[0] > 50 and img.shape[1] > 50


def test_section_replacement_keeps_the_rest(setup, tmp_path):
    from chorus_ros.tools.evaluate import main

    doc = tmp_path / "doc.md"
    doc.write_text("# Hand-written\n\nintro\n")
    args = ["--dataset", str(setup / "export"), "--checkpoint", str(setup / "ckpt"), "--views", "0",
            "--out", str(doc), "--section", "mine", "--no-progress"]
    assert main(args) == 0 and main(args) == 0
    text = doc.read_text()
    assert text.startswith("# Hand-written\n\nintro\n") and text.count("<!-- chorus-eval:mine begin -->") == 1
    assert "| export |" in text


@pytest.mark.parametrize("case,needle", [
    ("short_traj", "traj_w_c.txt"),
    ("wrong_size", "depth_0.png"),
    ("bad_map_name", "map.yaml"),
    ("unknown_gt_name", "map.yaml"),
    ("missing_ply", "gaussians.ply"),
])
def test_malformed_input_exits_2_naming_the_file(setup, tmp_path, capsys, case, needle):
    from chorus_ros.tools.evaluate import main

    root = tmp_path / "replica"
    shutil.copytree(setup / "replica", root)
    lm = tmp_path / "map.yaml"
    lm.write_text("bookshelf: shelf\n")
    if case == "short_traj":
        (root / "traj_w_c.txt").write_text((root / "traj_w_c.txt").read_text().splitlines()[0] + "\n")
    elif case == "wrong_size":
        assert cv2.imwrite(str(root / "depth" / "depth_0.png"), np.zeros((3, 4), np.uint16))
    elif case == "bad_map_name":
        lm.write_text("bookshelf: bookcase\n")
    elif case == "unknown_gt_name":
        lm.write_text("bookcase: shelf\n")
    elif case == "missing_ply":
        (root / "gaussians.ply").unlink()
    rc = main(["--dataset", str(root), "--checkpoint", str(setup / "ckpt"), "--labels-map", str(lm), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("chorus-eval: error:")


def test_argument_errors(setup):
    from chorus_ros.tools.evaluate import main

    with pytest.raises(SystemExit):
        main(["--dataset", str(setup / "replica"), str(setup / "export"), "--checkpoint", str(setup / "ckpt"),
              "--map", str(setup / "replica" / "gaussians.ply")])
    with pytest.raises(SystemExit):
        main(["--dataset", str(setup / "replica")])
    assert main(["--dataset", str(setup / "replica"), "--checkpoint", str(setup / "ckpt"), "--views", "x:y",
                 "--no-progress"]) == 2


def test_3d_only_folder(setup, tmp_path):
    """A folder with a labelled PLY and no views is scored per Gaussian; image metrics are null."""
    from chorus_ros.tools.evaluate import main

    root = tmp_path / "pts"
    root.mkdir()
    for f in ("classes.json", "gaussians.ply"):
        shutil.copy(setup / "replica" / f, root)
    js = tmp_path / "r.json"
    assert main(["--dataset", str(root), "--checkpoint", str(setup / "ckpt"), "--labels-map", str(setup / "map.yaml"),
                 "--json", str(js), "--plots", str(tmp_path / "p"), "--no-progress"]) == 0
    d = json.loads(js.read_text())
    assert d["mIoU"] is None and d["n_views"] == 0 and d["render_ms_per_view"] is None
    assert d["mIoU_3d"] is not None and 0 <= d["mIoU_3d"] <= 100 and d["n_gt_instances"] > 0
    assert cv2.imread(str(tmp_path / "p" / "confusion.png")) is not None


def test_plain_point_cloud_map(setup, tmp_path, capsys):
    """--map with a plain xyz + uchar rgb PLY: scored like any map (3D metrics from its label
    property), named as a plain point cloud, and the 'gaussian' checkpoint is warned about."""
    from chorus_ros.core.ply import read_ply, write_point_cloud_ply
    from chorus_ros.tools.evaluate import main

    g = read_ply(setup / "replica" / "gaussians.ply").gaussians
    cloud = tmp_path / "cloud.ply"
    write_point_cloud_ply(cloud, g.means, g.base_rgb, extras={"label": g.extras["label"]})
    js = tmp_path / "r.json"
    assert main(["--dataset", str(setup / "replica"), "--map", str(cloud), "--checkpoint", str(setup / "ckpt"),
                 "--labels-map", str(setup / "map.yaml"), "--json", str(js), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"the map {cloud} is a plain point cloud" in err
    assert "warning:" in err and "checkpoints/pointcloud" in err
    d = json.loads(js.read_text())
    assert d["n_views"] == 3 and d["mIoU"] is not None and d["mIoU_3d"] is not None


def test_rotation_ensemble_flag(setup, tmp_path, capsys, monkeypatch):
    """--rotations K encodes through a K-member rotation ensemble (and without it, never); an
    invalid K exits 2 with one line naming the option."""
    from chorus_ros.core.encoder import ensemble
    from chorus_ros.tools.evaluate import main

    members = []
    orig = ensemble.RotationEnsemble.forward
    monkeypatch.setattr(ensemble.RotationEnsemble, "forward", lambda self, g: members.append(self.rotations) or orig(self, g))
    base = ["--dataset", str(setup / "export"), "--checkpoint", str(setup / "ckpt"), "--no-progress"]
    js = tmp_path / "four.json"
    assert main(base) == 0 and members == []
    assert main(base + ["--json", str(js), "--rotations", "4"]) == 0
    assert members and set(members) == {4} and json.loads(js.read_text())["n_views"] == 3
    capsys.readouterr()
    assert main(base + ["--rotations", "0"]) == 2
    err = capsys.readouterr().err
    assert "rotations" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("chorus-eval: error:")


def test_fusion_flag(setup, tmp_path, capsys, monkeypatch):
    """--fusion rendered labels every view through the checkpoint's fusion decoder (and without it,
    never); a checkpoint without fusion/ exits 2 with one line saying so."""
    import shutil

    import torch

    from chorus_ros.core.decode.fusion import FUSION_DIR, FusionConfig, FusionDecoder, save_fusion
    from chorus_ros.core.pipeline import PerceptionPipeline
    from chorus_ros.tools.evaluate import main

    ckpt = tmp_path / "ckpt"
    shutil.copytree(setup / "ckpt", ckpt)
    torch.manual_seed(0)
    save_fusion(ckpt / FUSION_DIR, FusionDecoder(FusionConfig(language_dim=64, embed_dim=64, feat_channels=4,
                                                             channels=(8, 12), decoder_channels=8)).eval())
    used = []
    orig = PerceptionPipeline._fuse_view
    monkeypatch.setattr(PerceptionPipeline, "_fuse_view", lambda self, *a: used.append(1) or orig(self, *a))
    base = ["--dataset", str(setup / "export"), "--no-progress"]
    assert main(base + ["--checkpoint", str(ckpt)]) == 0 and used == []
    js = tmp_path / "fused.json"
    assert main(base + ["--checkpoint", str(ckpt), "--json", str(js), "--fusion", "rendered"]) == 0
    assert len(used) >= 3 and json.loads(js.read_text())["n_views"] == 3
    # --snap-radius 0 keeps the 3D instance image: the border snapping never runs
    import chorus_ros.core.decode.fusion as fusion_mod
    snapped = []
    orig_snap = fusion_mod.snap_instances
    monkeypatch.setattr(fusion_mod, "snap_instances", lambda *a: snapped.append(a[3]) or orig_snap(*a))
    assert main(base + ["--checkpoint", str(ckpt), "--fusion", "rendered", "--snap-radius", "0"]) == 0
    assert snapped == []
    assert main(base + ["--checkpoint", str(ckpt), "--fusion", "rendered", "--snap-radius", "3"]) == 0
    assert snapped and set(snapped) == {3}
    capsys.readouterr()
    assert main(base + ["--checkpoint", str(ckpt), "--fusion", "rendered", "--snap-radius", "-1"]) == 2
    err = capsys.readouterr().err
    assert "snap_radius" in err and "Traceback" not in err
    assert main(base + ["--checkpoint", str(setup / "ckpt"), "--fusion", "rendered"]) == 2
    err = capsys.readouterr().err
    assert "has no fusion/ decoder" in err and "Traceback" not in err
