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


@pytest.mark.parametrize("config", ["config/train/fusion.yaml", "config/train/fusion_prior.yaml"])
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
