"""chorus-adapt end to end on a tiny Replica-layout scene folder whose label space differs from
the checkpoint's (ids shifted, 'shelf' called 'bookshelf', mapped back through --labels-map):
summary JSON, a checkpoint every loader reads, provenance; bad input exits 2 naming it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from chorus_ros.core.labels import UNLABELED

pytest.importorskip("spconv")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from chorus_ros.core.datasets import SceneFrame, scene_from_synthetic, write_scene_folder
    from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic import SceneConfig, generate_scene, synthetic_label_set
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder

    base = tmp_path_factory.mktemp("adapt_cli")
    spec = TextEncoderSpec(tiny=True, prompt_template="{}")
    te = spec.to_dict()
    te["weights"] = "text_encoder.safetensors"
    torch.manual_seed(0)
    cfg = EncoderConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=8,
                        head_hidden=16, embed_dim=16, heads=[HeadSpec("language", 64), HeadSpec("object", 8)])
    save_checkpoint(base / "ckpt", ChorusEncoder(cfg), {"label_set": synthetic_label_set().to_dict(),
                                                        "text_encoder": te})
    build_text_encoder(spec).save_weights(base / "ckpt" / "text_encoder.safetensors")
    scene = generate_scene(SceneConfig(seed=11, target_gaussians=1200))
    traj = make_trajectory(scene, TrajectoryConfig(loop_views=3, random_views=1, width=32, height=24))
    mem = scene_from_synthetic(scene, traj, RenderSettings(backend="reference"), min_alpha=0.3)
    frames = []
    for k in range(len(mem)):
        f = mem.frame(k)
        sem = np.where(f.semantic == UNLABELED, 0, f.semantic.astype(np.int64) + 5).astype(np.uint16)
        frames.append(SceneFrame(f.index, f.c2w, f.rgb, f.depth, sem,
                                 np.where(f.instance == UNLABELED, 0, f.instance).astype(np.uint16), f.camera))
    g = scene.gaussians
    g = type(g)(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids,
                {"label": g.extras["label"] + 5, "instance": g.extras["instance"]})
    names = {i + 5: ("bookshelf" if n == "shelf" else n) for i, n in enumerate(scene.labels.names)}
    write_scene_folder(base / "room", gaussians=g, classes=names, intrinsics=mem.camera, frames=frames,
                       unlabeled_id=0, instance_none_id=0)
    (base / "map.yaml").write_text("bookshelf: shelf\n")
    return base


def test_adapt_cli_writes_a_loadable_checkpoint_with_provenance(setup, tmp_path, capsys):
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.pipeline import PerceptionPipeline
    from chorus_ros.tools.adapt import main

    out, js = tmp_path / "site", tmp_path / "summary.json"
    rc = main(["--checkpoint", str(setup / "ckpt"), "--dataset", str(setup / "room"), "--out", str(out),
               "--labels-map", str(setup / "map.yaml"), "--views", "0::2", "--eval-views", "1::2",
               "--steps", "5", "--pixels-per-view", "200", "--views-per-step", "1", "--no-progress", "--replay-seeds",
               "--fusion-steps", "3", "--json", str(js)])
    text = capsys.readouterr().out
    assert rc == 0, text
    summary = json.loads(js.read_text())
    for key in ("miou_before", "miou_after", "miou_lift_baseline", "never_labelled_fraction", "steps",
                "seconds_train", "peak_rss_mib", "loss_first", "loss_last", "miou_after_fused"):
        assert key in summary, key
    assert summary["fusion_steps"] == 3 and 0 <= summary["miou_after_fused"] <= 100
    assert summary["steps"] == 5 and summary["train_views"] == 2 and summary["eval_views"] == 2
    ck = load_checkpoint(out)
    names = [c["name"] for c in ck.meta["label_set"]["classes"]]
    assert "shelf" in names and "bookshelf" not in names       # renamed by the labels map
    prov = ck.meta["adaptation"]
    assert prov["views"] == [0, 2] and prov["train"] == "heads" and prov["labels_map"] == {"bookshelf": "shelf"}
    assert (out / "text_encoder.safetensors").is_file() and (out / "labels.yaml").is_file()
    assert prov["fusion"]["steps"] == 3 and (out / "fusion" / "fusion.json").is_file()
    pipe = PerceptionPipeline.from_checkpoint(out)
    assert pipe.labels.names == names and pipe.fusion is not None and pipe.fusion.config.prior


def test_adapt_cli_errors_exit_2_naming_the_problem(setup, tmp_path, capsys):
    from chorus_ros.tools.adapt import main
    common = ["--checkpoint", str(setup / "ckpt"), "--out", str(tmp_path / "x"), "--steps", "1", "--no-progress"]
    assert main(common + ["--dataset", str(setup / "room"), "--views", "0:2", "--eval-views", "1:3"]) == 2
    assert "overlap the training views at positions [1]" in capsys.readouterr().err
    assert main(common + ["--dataset", str(tmp_path / "missing")]) == 2
    assert "scene folder not found" in capsys.readouterr().err
    assert main(common + ["--dataset", str(setup / "room"), "--views", "7:9"]) == 2
    assert "--views" in capsys.readouterr().err


def test_adapt_cli_validation_views_and_epochs(setup, tmp_path, capsys):
    """--val-views carves validation views out of --views (never trained on, recorded in the
    provenance with the kept step); --epochs sets the steps from the training view count."""
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.tools.adapt import main

    out, js = tmp_path / "site", tmp_path / "summary.json"
    rc = main(["--checkpoint", str(setup / "ckpt"), "--dataset", str(setup / "room"), "--out", str(out),
               "--labels-map", str(setup / "map.yaml"), "--views", "0:3", "--val-views", "1", "--val-every", "2",
               "--epochs", "3", "--views-per-step", "1", "--pixels-per-view", "200", "--lr-schedule", "cosine",
               "--no-progress", "--replay-seeds", "--json", str(js)])
    assert rc == 0, capsys.readouterr()
    summary = json.loads(js.read_text())
    assert summary["train_views"] == 2 and summary["val_views"] == 1 and summary["steps"] == 6
    prov = load_checkpoint(out).meta["adaptation"]
    assert prov["views"] == [0, 2] and prov["validation"]["views"] == [1]
    # validation runs every --val-every steps (and at the last), so the kept step is one of those
    assert prov["validation"]["best_step"] in (2, 4, 6) and prov["config"]["lr_schedule"] == "cosine"
    assert prov["validation"]["best_miou"] == pytest.approx(summary["val_miou"] / 100, abs=1e-3)
