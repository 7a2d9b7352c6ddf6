"""chorus-train stage 'fusion' (the feed-forward VDVI decoder on a frozen encoder), with and
without ``prior``: the committed configs on a tiny room, the 3D class probabilities it renders
against the pipeline's own, the saved decoder in the pipeline, and a label-set mismatch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.render import RenderSettings
from chorus_ros.core.train.config import load_train_config
from chorus_ros.core.train.trainer import Trainer


def _tiny_checkpoint(path, labels=None):
    from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.labels import LabelSet
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    torch.manual_seed(0)
    model = ChorusEncoder(EncoderConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=16,
                                        head_hidden=32, embed_dim=16, voxel_size=0.1,
                                        heads=[HeadSpec("language", 64), HeadSpec("object", 8)])).eval()
    spec = TextEncoderSpec(tiny=True, prompt_template="{}")
    te = dict(spec.to_dict(), weights="text_encoder.safetensors")
    labels = labels or LabelSet.from_yaml("config/labels/synthetic.yaml")
    save_checkpoint(path, model, {"label_set": labels.to_dict(), "text_encoder": te})
    build_text_encoder(spec).save_weights(path / "text_encoder.safetensors")
    return path


def _overrides(tmp_path, ckpt, steps=40):
    return [f"stage_options.fusion.encoder={ckpt}", "data.train_seeds=[0]", "data.density_range=[]",
            "data.scene={target_gaussians: 1500}", "data.views={loop_views: 3, random_views: 1, width: 40, height: 30}",
            f"optim.steps={steps}", "optim.warmup_steps=2", "log.progress=false", "log.every=1",
            f"log.dir={tmp_path / 'run'}", f"checkpoint.dir={tmp_path / 'out'}", "threads=1",
            "stage_options.fusion.views_per_step=2"]


@pytest.mark.parametrize("config", ["config/train/fusion.yaml", "config/train/fusion_prior.yaml",
                                    "config/train/fusion_prior_robust.yaml"])
def test_fusion_stage_trains_and_the_pipeline_uses_the_decoder(tmp_path, config):
    from chorus_ros.core.decode.fusion import FUSION_DIR, PerViewConfig, load_fusion
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

    ckpt = _tiny_checkpoint(tmp_path / "enc")
    cfg = load_train_config(config, _overrides(tmp_path, ckpt))
    tr = Trainer(cfg)
    prior = cfg.stage_options["fusion"]["prior"] if "prior" in cfg.stage_options["fusion"] else False
    assert all((s.probs is not None) == prior for s in tr.scenes)
    assert len(tr.scenes) == int(cfg.stage_options["fusion"].get("variants", 1))   # one room, its variants
    res = tr.fit()
    rows = [r.split(",") for r in (tmp_path / "run" / "train_log.csv").read_text().splitlines()[1:]]
    losses = [float(r[1]) for r in rows]
    print(f"{config}: loss {np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}")
    assert res.step == 40 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    fd = load_fusion(tmp_path / "out" / FUSION_DIR)
    assert fd.config.prior == prior
    pcfg = PipelineConfig(min_opacity=0.0, per_view=PerViewConfig(fusion="rendered", snap_radius=0))
    pcfg.render.backend = "reference"
    pipe = PerceptionPipeline.from_checkpoint(tmp_path / "out", pcfg)
    if prior:
        assert fd.config.prior_names == tuple(pipe.labels.names)
    room = generate_scene(SceneConfig(seed=7, target_gaussians=1500))
    pipe.apply_update(room.gaussians, full=True)
    pipe.encode()
    cam = make_trajectory(room, TrajectoryConfig(loop_views=1, random_views=0, width=40, height=30)).cameras[0]
    view = pipe.render_view(cam)
    assert view.fused == "rendered" and view.labels.shape == (30, 40)


def test_fusion_stage_prior_probabilities_are_the_pipelines_and_the_label_sets_must_match(tmp_path):
    """The 3D class probabilities the stage trains on are, view for view, those the pipeline hands
    a prior decoder (the splatted per-Gaussian probabilities divided by alpha); a checkpoint
    whose label set is not the training label set is refused."""
    from chorus_ros.core.labels import LabelSet
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.render import render

    ckpt = _tiny_checkpoint(tmp_path / "enc")
    tr = Trainer(load_train_config("config/train/fusion_prior.yaml", _overrides(tmp_path, ckpt, steps=1)))
    (scene,) = tr.scenes
    from chorus_ros.core.train.stages.contrastive import load_map_scenes
    (m,) = load_map_scenes([0], scene={"target_gaussians": 1500},
                           views={"loop_views": 3, "random_views": 1, "width": 40, "height": 30})
    pcfg = PipelineConfig(min_opacity=0.0)
    pcfg.render.backend = "reference"
    pipe = PerceptionPipeline.from_checkpoint(ckpt, pcfg)
    pipe.apply_update(m.gaussians, full=True)
    pipe.encode()
    from chorus_ros.core.pipeline import ATTR_PROBS
    probs = pipe._attr(ATTR_PROBS).float()
    g = pipe.map.arrays()
    for i, cam in enumerate(m.cameras):
        out = render(g, cam, RenderSettings(backend="reference"), features=probs)
        ref = (out.features / out.alpha.clamp_min(1e-6)[..., None]).permute(2, 0, 1)
        ok = out.alpha >= 0.5
        torch.testing.assert_close(scene.probs[i][:, ok], ref[:, ok], atol=1e-4, rtol=1e-4)

    other = _tiny_checkpoint(tmp_path / "enc2", LabelSet(["floor", "wall", "chair"], np.zeros((3, 3), np.uint8)))
    with pytest.raises(InvalidInputError, match="is not the training label set"):
        Trainer(load_train_config("config/train/fusion_prior.yaml", _overrides(tmp_path / "b", other, steps=1)))


def test_fusion_variants_are_the_room_then_shifted_draws_whose_labels_and_cameras_follow():
    """Variant 0 is the room itself (less its faint Gaussians); a further variant is a random
    shift of it: other colours, the ground truth carried by each Gaussian's source, and cameras
    that see an original Gaussian where the original camera saw it (the tilt is followed)."""
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.core.train.stages.fusion import fusion_variants

    room = generate_scene(SceneConfig(seed=3, target_gaussians=1500))
    g = room.gaussians
    g.opacities[:10] = -8.0                                  # ten faint Gaussians
    cams = make_trajectory(room, TrajectoryConfig(loop_views=2, random_views=0, width=40, height=30)).cameras
    shift = {"tilt_deg": 6.0, "white_balance": 0.3, "palette_deg": 30.0, "floater_fraction": 0.1}
    out = fusion_variants(g, cams, 3, shift, seed=5, min_opacity=0.1)
    again = fusion_variants(g, cams, 3, shift, seed=5, min_opacity=0.1)
    assert len(out) == 3
    g0, c0 = out[0]
    assert len(g0) == len(g) - 10 and torch.equal(g0.means, g.means[10:])
    assert all(a is b for a, b in zip(c0, cams))
    for (ga, ca), (gb, _) in zip(out[1:], again[1:]):
        assert torch.equal(ga.means, gb.means) and torch.equal(ga.sh, gb.sh)        # deterministic in seed
        assert not torch.allclose(ga.sh[: len(g0)], g0.sh, atol=1e-3)               # colours moved
        assert bool((ga.opacity >= 0.1).all())
        assert set(ga.extras["label"].unique().tolist()) <= set(g.extras["label"].unique().tolist())
    # cameras follow the rigid transform: the shifted world seen by the new camera is the old world
    # seen by the old one (position noise is off, so the originals project to the same pixels)
    from chorus_ros.core.train.augment import random_shift
    gs, src, T = random_shift(g, shift, torch.Generator().manual_seed(5 + 1))
    assert not np.allclose(T, np.eye(4))
    def in_camera(cam, pts):                                 # [N, 3] points in the camera frame
        return (cam.viewmat.double() @ torch.cat([pts.double(), torch.ones(len(pts), 1, dtype=torch.float64)], 1).T).T[:, :3]
    assert torch.allclose(in_camera(cams[0], g.means), in_camera(out[1][1][0], gs.means[: len(g)]), atol=1e-4)
    with pytest.raises(InvalidInputError, match="variants"):
        from chorus_ros.core.train.stages.fusion import FusionOptions, FusionStage  # noqa: F401
        tr_cfg = load_train_config("config/train/fusion_prior.yaml", ["stage_options.fusion.variants=2"])
        FusionStage(FusionOptions(**tr_cfg.stage_options["fusion"])).load_scenes(type("T", (), {"cfg": tr_cfg})())


def test_shipped_demo_fusion_decoder_was_trained_by_its_committed_config():
    """checkpoints/demo/fusion is one run of config/train/demo_fusion.yaml (up to output folders and
    logging) on the shipped encoder; it reads the demo label set's 3D probabilities and the
    pipeline serves it with per_view.fusion 'rendered' (off by default)."""
    import json
    from pathlib import Path

    from chorus_ros.core.decode.fusion import FUSION_DIR, PerViewConfig
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.core.train.config import TrainConfig, config_from_dict

    ckpt = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"
    if not (ckpt / FUSION_DIR / "fusion.json").exists():
        pytest.skip("checkpoints/demo has no fusion decoder")
    meta = json.loads((ckpt / FUSION_DIR / "fusion.json").read_text())["meta"]
    want = load_train_config("config/train/demo_fusion.yaml").to_dict()
    got = config_from_dict(TrainConfig, meta["training"]).to_dict()      # later fields: their defaults
    assert [k for k in sorted(set(want) | set(got)) if k not in {"log", "checkpoint"} and want.get(k) != got.get(k)] == []
    assert meta["step"] == want["optim"]["steps"] and meta["encoder"] == "checkpoints/demo"
    assert want["stage_options"]["fusion"]["prior"] and want["stage_options"]["fusion"]["variants"] > 1
    assert max(want["data"]["train_seeds"]) < 1000                    # never the held-out or suite seeds
    pipe = PerceptionPipeline.from_checkpoint(ckpt, PipelineConfig())
    assert pipe.config.per_view.fusion == "off" and pipe.fusion is not None
    assert pipe.fusion.config.prior_names == tuple(pipe.labels.names)
    room = generate_scene(SceneConfig(seed=1001, target_gaussians=4000))
    cam = make_trajectory(room, TrajectoryConfig(loop_views=1, random_views=0, width=64, height=48)).cameras[0]
    pipe.apply_update(room.gaussians, full=True)
    pipe.encode()
    off = pipe.render_view(cam)
    pipe.config.per_view = PerViewConfig(fusion="rendered")
    on = pipe.render_view(cam)
    assert off.fused == "off" and on.fused == "rendered" and on.labels.shape == (48, 64)
    assert np.array_equal(on.instances, off.instances)                  # snap_radius 0: the 3D instance image
    assert (on.labels == off.labels).mean() > 0.5                       # a correction of the 3D labels
