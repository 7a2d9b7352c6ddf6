"""Training stages: registry, options, and a custom stage driven by the one trainer."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from chorus_ros.core.errors import InvalidInputError, RegistryError
from chorus_ros.core.train import Trainer
from chorus_ros.core.train.stages import STAGES, Stage, StageLoss, build_stage, get_stage, list_stages, register_stage

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_tt", pathlib.Path(__file__).with_name("test_train.py"))
_tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tt)
FakeEncoder, _toy_cfg, _toy_scene = _tt.FakeEncoder, _tt._toy_cfg, _tt._toy_scene


def test_registry_lists_builtins_and_unknown_names_list_known():
    assert {"align", "contrastive"} <= set(list_stages())
    with pytest.raises(RegistryError, match="known: .*align"):
        get_stage("nope")
    with pytest.raises(InvalidInputError, match="stage_options.align"):
        build_stage("align", {"align": {"no_such_option": 1}})
    with pytest.raises(InvalidInputError, match="unknown stages"):
        build_stage("align", {"alignn": {}})
    assert build_stage("align", {"align": {"contrastive_weight": 0.5}}).options.contrastive_weight == 0.5


@dataclass
class _ToyOptions:
    scale: float = 2.0
    """Multiplier of the toy loss."""


def test_custom_stage_runs_in_the_trainer_without_a_branch(tmp_path):
    @register_stage("toy_square")
    class ToyStage(Stage):
        options_cls = _ToyOptions

        def setup(self, trainer):
            self.modules["probe"] = torch.nn.Linear(8, 1)

        def scene_loss(self, trainer, scene):
            out = trainer.ddp_model(scene.gaussians)
            z = self.modules["probe"](out.embedding)
            return StageLoss(extra=self.options.scale * z.pow(2).mean(), metrics={"z": float(z.abs().mean())})

    try:
        cfg = _toy_cfg(tmp_path)
        cfg.stage = "toy_square"
        cfg.stage_options = {"toy_square": {"scale": 3.0}}
        tr = Trainer(cfg, scenes=[_toy_scene()], model=FakeEncoder({"language": 4}))
        assert tr.stage.options.scale == 3.0
        first = tr.train_step()["loss"]
        for _ in range(30):
            last = tr.train_step()["loss"]
        assert last < first  # the stage's own module is optimised too
        assert tr.stage.modules["probe"].weight.grad is not None
    finally:
        STAGES.pop("toy_square", None)


def test_align_with_a_contrastive_term_adds_it_and_changes_the_backbone_gradient(tmp_path):
    import numpy as np

    from chorus_ros.core.geometry import Camera, look_at_pose
    scene = _toy_scene(n=400)
    K = Camera.intrinsics_from_fov(48, 36, 70.0)
    scene.cameras = [Camera.from_c2w(look_at_pose(np.array([x, -3.0, 2.0]), np.array([2.0, 2.0, 2.0])), K, 48, 36)
                     for x in (1.0, 2.0, 3.0)]
    grads = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = _toy_cfg(tmp_path / str(w))
        cfg.stage_options = {"align": {"contrastive_weight": w, "contrastive": {"pairs": 64, "min_visible": 4}}}
        tr = Trainer(cfg, scenes=[scene], model=FakeEncoder({"language": 4, "object": 3}))
        tr.optimizer.step = lambda: None
        m = tr.train_step()
        assert ("contrast_pairs" in m) == (w > 0)
        grads[w] = [p.grad.clone() for p in tr.model.backbone.parameters()]
        heads = {k: [p.grad.clone() for p in tr.model.heads[k].parameters()] for k in ("language", "object")}
        if w == 0.0:
            heads0 = heads
    assert any(not torch.allclose(a, b) for a, b in zip(grads[0.0], grads[1.0]))
    for k in heads0:  # the heads only see their own losses either way
        for a, b in zip(heads0[k], heads[k]):
            torch.testing.assert_close(a, b)


def test_align_with_an_instance_boundary_term_changes_only_the_object_task(tmp_path):
    """stage_options.align.instance_boundary_weight adds the term to the object head's task: the
    object head's gradient and the backbone's change, the language head's does not; scenes without
    per-Gaussian instances train on distillation alone; a head that is not trained is refused."""
    scene = _toy_scene(n=400)
    scene.gaussians.extras["instance"] = (scene.gaussians.means[:, 0] // 0.5).long() + 1   # slabs 0.5 m wide
    grads, heads, metrics = {}, {}, {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = _toy_cfg(tmp_path / str(w))
        cfg.stage_options = {"align": {"instance_boundary_weight": w, "instance_boundary": {"radius": 0.5}}}
        tr = Trainer(cfg, scenes=[scene], model=FakeEncoder({"language": 4, "object": 3}))
        tr.optimizer.step = lambda: None
        metrics[w] = tr.train_step()
        grads[w] = [p.grad.clone() for p in tr.model.backbone.parameters()]
        heads[w] = {k: [p.grad.clone() for p in tr.model.heads[k].parameters()] for k in ("language", "object")}
    assert "boundary_neg_pairs" not in metrics[0.0] and metrics[1.0]["boundary_neg_pairs"] > 0
    assert metrics[1.0]["loss_object"] > metrics[0.0]["loss_object"]
    assert any(not torch.allclose(a, b) for a, b in zip(grads[0.0], grads[1.0]))
    assert any(not torch.allclose(a, b) for a, b in zip(heads[0.0]["object"], heads[1.0]["object"]))
    for a, b in zip(heads[0.0]["language"], heads[1.0]["language"]):
        torch.testing.assert_close(a, b)
    # a scene without instances: the term is skipped (nan metrics), the step still trains
    bare = _toy_scene(n=400)
    cfg = _toy_cfg(tmp_path / "bare")
    cfg.stage_options = {"align": {"instance_boundary_weight": 1.0}}
    m = Trainer(cfg, scenes=[bare], model=FakeEncoder({"language": 4, "object": 3})).train_step()
    assert m["boundary_neg_pairs"] == 0 and math.isnan(m["boundary_neg_cos"]) and math.isfinite(m["loss"])
    cfg.stage_options = {"align": {"instance_boundary_weight": 1.0, "instance_boundary_head": "generalist"}}
    with pytest.raises(InvalidInputError, match="instance_boundary_head 'generalist' is not a trained head"):
        Trainer(cfg, scenes=[bare], model=FakeEncoder({"language": 4, "object": 3}))
    cfg.stage_options = {"align": {"instance_boundary_weight": 1.0, "instance_boundary": {"radius": -1}}}
    with pytest.raises(InvalidInputError, match="instance_boundary.radius"):
        Trainer(cfg, scenes=[bare], model=FakeEncoder({"language": 4, "object": 3}))


def test_init_from_copies_the_backbone_and_keeps_mismatched_heads_fresh(tmp_path):
    from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.errors import CheckpointError
    tiny = dict(voxel_size=0.2, channels=(8, 8), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=8,
                head_hidden=8, embed_dim=8, feature_version=2)
    torch.manual_seed(1)
    src = ChorusEncoder(EncoderConfig(heads=[HeadSpec("language", 4), HeadSpec("object", 5)], **tiny))
    save_checkpoint(tmp_path / "pre", src, {})
    cfg = _toy_cfg(tmp_path)
    cfg.encoder = dict(tiny)
    cfg.init_from = str(tmp_path / "pre")
    torch.manual_seed(2)
    tr = Trainer(cfg, scenes=[_toy_scene()])          # heads language 4 (matches), object 3 (does not)
    own, theirs = tr.model.state_dict(), src.state_dict()
    for k, v in own.items():
        if k.startswith("heads.object"):
            assert v.shape != theirs[k].shape
        else:
            assert torch.equal(v, theirs[k]), k
    cfg2 = _toy_cfg(tmp_path / "b")
    cfg2.encoder = dict(tiny, embed_dim=16)
    cfg2.init_from = str(tmp_path / "pre")
    with pytest.raises(CheckpointError, match="backbone tensors"):
        Trainer(cfg2, scenes=[_toy_scene()])
    # same shapes, other inputs: feature version 1 channels mean something else
    cfg3 = _toy_cfg(tmp_path / "c")
    cfg3.encoder = dict(tiny, feature_version=1)
    cfg3.init_from = str(tmp_path / "pre")
    with pytest.raises(CheckpointError, match="feature_version: checkpoint 2, config 1"):
        Trainer(cfg3, scenes=[_toy_scene()])


def test_a_staged_run_records_the_training_of_the_checkpoint_it_started_from(tmp_path):
    """Provenance: stage 2 (init_from stage 1's output) stores stage 1's training record as
    ``init_from_training``, and stage 3 stores stage 2's with stage 1's inside it."""
    import yaml
    tiny = dict(voxel_size=0.2, channels=(8, 8), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=8,
                head_hidden=8, embed_dim=8, feature_version=2)
    prev = ""
    for i in (1, 2, 3):
        cfg = _toy_cfg(tmp_path / f"s{i}", optim__steps=i)
        cfg.encoder = dict(tiny)
        cfg.init_from = prev
        tr = Trainer(cfg, scenes=[_toy_scene()])
        while tr.step < cfg.optim.steps:
            tr.train_step()
        tr.save()
        prev = cfg.checkpoint.dir
    meta = yaml.safe_load((pathlib.Path(prev) / "config.yaml").read_text())["meta"]["training"]
    assert meta["step"] == 3 and meta["init_from_training"]["step"] == 2
    assert meta["init_from_training"]["init_from_training"]["step"] == 1
    assert "init_from_training" not in meta["init_from_training"]["init_from_training"]


def test_committed_configs_match_the_committed_checkpoints_they_start_from():
    """A config/train/*.yaml whose init_from names a committed checkpoint has that checkpoint's
    encoder inputs (variant, feature version, voxel size) and widths, so it can actually start."""
    from pathlib import Path
    from chorus_ros.core.encoder import EncoderConfig
    from chorus_ros.core.encoder.checkpoint import load_checkpoint_config
    from chorus_ros.core.train.config import load_train_config
    root = Path(__file__).resolve().parents[2]
    checked = 0
    for path in sorted((root / "config" / "train").glob("*.yaml")):
        cfg = load_train_config(str(path))
        ckpt = root / cfg.init_from if cfg.init_from else None
        if ckpt is None or not (ckpt / "config.yaml").is_file():
            continue
        enc, _ = load_checkpoint_config(str(ckpt))
        mine = EncoderConfig.from_dict(dict(cfg.encoder))       # keys the yaml omits take their defaults
        for k in ("variant", "feature_version", "voxel_size", "channels", "embed_dim"):
            want, got = getattr(enc, k), getattr(mine, k)
            assert (list(got) if isinstance(got, (list, tuple)) else got) == \
                (list(want) if isinstance(want, (list, tuple)) else want), (path.name, k, got, want)
        checked += 1
    assert checked >= 2        # demo_gocl.yaml and demo_gocl_robust.yaml


def test_rotation_consistency_loss_values():
    from chorus_ros.core.train.losses import rotation_consistency_loss
    gen = torch.Generator().manual_seed(0)
    a = {"language": torch.randn(50, 4, generator=gen), "object": torch.randn(50, 3, generator=gen)}
    assert float(rotation_consistency_loss(a, {k: v.clone() for k, v in a.items()})) == 0.0
    b = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in a.items()}
    ref = []
    for k in ("language", "object"):   # slow reference, per head then mean
        x, y = a[k].double(), b[k].double()
        num = sum(float(((x[i] - y[i]) ** 2).sum()) for i in range(50)) / 50
        den = 0.5 * (sum(float((x[i] ** 2).sum()) for i in range(50)) + sum(float((y[i] ** 2).sum()) for i in range(50))) / 50
        ref.append(num / den)
    got = rotation_consistency_loss(a, b)
    assert abs(float(got) - sum(ref) / 2) < 1e-5
    # one head scaled up does not outweigh the other; scaling both leaves the value
    scaled = rotation_consistency_loss({k: 7 * v for k, v in a.items()}, {k: 7 * v for k, v in b.items()})
    assert abs(float(scaled) - float(got)) < 1e-5
    with pytest.raises(InvalidInputError, match="same non-empty heads"):
        rotation_consistency_loss(a, {"language": a["language"]})
    with pytest.raises(InvalidInputError, match="head 'object'"):
        rotation_consistency_loss(a, {"language": a["language"], "object": a["object"][:10]})


def test_align_rotation_consistency_trains_the_encoder_towards_rotation_agreement(tmp_path):
    """stage_options.align.rotation_consistency_weight: the metric is logged, the backbone's
    gradient changes; trained on the term alone, a real (tiny) sparse encoder's outputs on the map
    and on a turned, sub-voxel-shifted copy of it come closer than they were."""
    from chorus_ros.core.geometry import rotate_about_axis, transform_gaussians
    from chorus_ros.core.train.losses import rotation_consistency_loss
    scene = _toy_scene(n=400)
    grads, metrics = {}, {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = _toy_cfg(tmp_path / f"fake{w}")
        cfg.stage_options = {"align": {"rotation_consistency_weight": w}}
        tr = Trainer(cfg, scenes=[scene], model=FakeEncoder({"language": 4, "object": 3}))
        tr.optimizer.step = lambda: None
        metrics[w] = tr.train_step()
        grads[w] = [p.grad.clone() for p in tr.model.backbone.parameters()]
    assert "rotation_consistency" not in metrics[0.0] and metrics[1.0]["rotation_consistency"] > 0
    assert any(not torch.allclose(a, b) for a, b in zip(grads[0.0], grads[1.0]))

    tiny = dict(voxel_size=0.2, channels=(8, 8), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=8,
                head_hidden=8, embed_dim=8, feature_version=2)
    torch.manual_seed(3)
    cfg = _toy_cfg(tmp_path / "real")
    cfg.encoder = dict(tiny)
    cfg.loss.head_weights = {"language": 0.0, "object": 0.0}        # the consistency term alone
    cfg.stage_options = {"align": {"rotation_consistency_weight": 1.0}}
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 0
    tr = Trainer(cfg, scenes=[scene])
    R, q = rotate_about_axis(0.7, 2, torch.float64)
    turned = transform_gaussians(scene.gaussians, R, q, torch.tensor([0.07, 0.13, 0.0], dtype=torch.float64),
                                 torch.float64)

    def disagreement():
        tr.model.eval()
        with torch.no_grad():
            a, b = tr.model(scene.gaussians), tr.model(turned)
            return float(rotation_consistency_loss({k: a.heads[k] for k in tr.heads}, {k: b.heads[k] for k in tr.heads}))
    before = disagreement()
    for _ in range(40):
        tr.train_step()
    after = disagreement()
    assert before > 0.05 and after < 0.5 * before, (before, after)
