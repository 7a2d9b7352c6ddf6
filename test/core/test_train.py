"""Training: config/overrides, losses, gradient calibration (exact values and the backward it
produces), augmentation, LR schedule, DDP (2 gloo processes), and the CI smoke test of the real
config shrunk to 2 steps, followed by loading the checkpoint it wrote."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.geometry import quat_wxyz_to_rotmat
from chorus_ros.core.lift import LiftedScene, LiftedTargets
from chorus_ros.core.train import Trainer, calibrate_gradients, head_loss, load_train_config
from chorus_ros.core.train.augment import augment_scene
from chorus_ros.core.train.config import AugmentConfig, CalibrationConfig, LossConfig, TrainConfig
from chorus_ros.core.train.trainer import lr_factor

DEMO = "config/train/demo.yaml"


# ----------------------------------------------------------------------------- config
def test_config_overrides_and_errors():
    cfg = load_train_config(DEMO, ["optim.steps=7", "data.train_seeds=[3, 4]", "calibration.enabled=false",
                                   "teachers.2.options.dim=8", "loss.l2_weight=2"])
    assert cfg.optim.steps == 7 and cfg.data.train_seeds == [3, 4] and not cfg.calibration.enabled
    assert cfg.teachers[2]["options"]["dim"] == 8 and cfg.loss.l2_weight == 2.0
    assert [t["kind"] for t in cfg.teachers] == ["language", "generalist", "object"]
    with pytest.raises(InvalidInputError, match=r"unknown config keys \['optim.stepz'\]"):
        load_train_config(DEMO, ["optim.stepz=3"])
    with pytest.raises(InvalidInputError, match="optim.steps: expected an integer"):
        load_train_config(DEMO, ["optim.steps=many"])
    with pytest.raises(InvalidInputError, match="not key=value"):
        load_train_config(DEMO, ["optim.steps"])
    with pytest.raises(InvalidInputError, match="not found"):
        load_train_config("config/train/nope.yaml")


def test_demo_config_holds_out_eval_seeds():
    cfg = load_train_config(DEMO)
    assert cfg.data.train_seeds and max(cfg.data.train_seeds) < 1000   # 1000+ are evaluation seeds


def test_lr_schedule():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


# ------------------------------------------------------------------------------ losses
def test_head_loss_exact_values():
    cfg = LossConfig(cosine_weight=1.0, l2_weight=0.5, weight_power=1.0)
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    p = torch.tensor([[1.0, 0.0], [2.0, 0.0], [9.0, 9.0]])
    w = torch.tensor([1.0, 3.0, 100.0])
    valid = torch.tensor([True, True, False])
    hl = head_loss(p, t, w, valid, cfg)
    # row 0: cos 1, mse 0; row 1: cos 0, mse (4 + 4) / 2 = 4; weights 1/4, 3/4; row 2 ignored
    assert float(hl.loss) == pytest.approx(0.75 * (1.0 + 0.5 * 4.0))
    assert hl.cosine == pytest.approx(0.25) and hl.l2 == pytest.approx(3.0)
    uni = head_loss(p, t, w, valid, LossConfig(weight_power=0.0, l2_weight=0.0))
    assert float(uni.loss) == pytest.approx(0.5)
    none = head_loss(p, t, w, torch.zeros(3, dtype=torch.bool), cfg)
    assert float(none.loss) == 0.0


def test_rarity_balance_equalises_group_loss_mass():
    from chorus_ros.core.train.losses import cosine_kmeans, rarity_balance
    gen = torch.Generator().manual_seed(0)
    dirs = torch.eye(4)[:3]
    labels = torch.cat([torch.zeros(90), torch.ones(10), torch.full((5,), 2)]).long()
    x = dirs[labels] + 0.05 * torch.randn(105, 4, generator=gen)
    assign = cosine_kmeans(x, 3, seed=1)
    for c in range(3):                                  # the three directions are recovered exactly
        assert len(assign[labels == c].unique()) == 1
    assert len(assign.unique()) == 3
    valid = labels != 2                                 # the third group is not valid
    cfg = LossConfig(weight_power=0.0, balance_clusters=2, balance_power=1.0)
    b = rarity_balance(x, torch.ones(105), valid, cfg)
    torch.testing.assert_close(b[:90], torch.full((90,), 1 / 0.9 / 2))
    torch.testing.assert_close(b[90:100], torch.full((10,), 1 / 0.1 / 2))
    assert torch.equal(b[100:], torch.zeros(5))
    assert float(b[:90].sum()) == pytest.approx(float(b[90:100].sum()))  # equal loss mass per group
    off = rarity_balance(x, torch.ones(105), valid, LossConfig(balance_clusters=0))
    assert torch.equal(off, valid.float())


def _two_books(gap=0.004):
    """Two touching boxes of points on a 1 cm grid (instances 1 and 2, ``gap`` apart along x), plus
    a far box (instance 3) 1 m away and a box with no instance (0) beside the first."""
    g = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(5), torch.arange(5), indexing="ij"), -1)
    box = g.reshape(-1, 3).float() * 0.01
    parts = [box, box + torch.tensor([0.03 + gap + 0.01, 0, 0]), box + torch.tensor([1.0, 0, 0]),
             box + torch.tensor([0, 0.06, 0])]
    inst = torch.cat([torch.full((len(box),), i) for i in (1, 2, 3, 0)])
    return torch.cat(parts), inst


def test_instance_boundary_loss_values_locality_and_ids():
    from chorus_ros.core.train.losses import InstanceBoundaryOptions, instance_boundary_loss
    means, inst = _two_books()
    opts = InstanceBoundaryOptions(balls=8, ball_size=200, k=8, radius=0.03)
    e = torch.eye(4)
    gen = torch.Generator().manual_seed(0)
    # one feature per instance, orthogonal across instances: nothing to pull or push
    ok = e[inst.clamp_min(0) % 4]
    r = instance_boundary_loss(ok, means, inst, opts, gen)
    assert float(r.loss) == 0.0 and r.neg_pairs > 0 and r.pos_cos == pytest.approx(1.0) and r.neg_cos == pytest.approx(0.0)
    # the two touching books share a feature: pushed by (1 - neg_margin)^2 on the mean over boundary pairs
    same12 = ok.clone()
    same12[inst == 2] = e[1]
    r = instance_boundary_loss(same12, means, inst, opts, gen)
    assert r.neg_cos == pytest.approx(1.0) and float(r.loss) == pytest.approx((1 - opts.neg_margin) ** 2)
    # the far book (1 m away) may share book 1's feature: only touching Gaussians are compared
    far = ok.clone()
    far[inst == 3] = e[1]
    assert float(instance_boundary_loss(far, means, inst, opts, gen).loss) == 0.0
    # Gaussians without an instance (id 0) take no part, even with book 1's feature beside it
    none = ok.clone()
    none[inst == 0] = e[1]
    assert float(instance_boundary_loss(none, means, inst, opts, gen).loss) == 0.0
    r = instance_boundary_loss(ok, means, torch.zeros_like(inst), opts, gen)
    assert float(r.loss) == 0.0 and r.neg_pairs == 0 and math.isnan(r.pos_cos)
    # scattered features within an instance are pulled together
    noisy = F.normalize(ok + 0.8 * torch.randn(ok.shape, generator=gen), dim=1)
    r = instance_boundary_loss(noisy, means, inst, opts, gen)
    assert float(r.loss) > 0 and r.pos_cos < opts.pos_margin
    for bad in ({"radius": 0.0}, {"neg_margin": 0.95}, {"balls": 0}):
        with pytest.raises(InvalidInputError, match="instance_boundary"):
            InstanceBoundaryOptions(**bad).validate()


def test_instance_boundary_loss_separates_touching_instances_by_descent():
    """Gradient descent on the loss alone takes two touching books from one shared feature to
    features the instance decoder keeps apart: every touching pair across the boundary ends under
    its 0.7 cosine threshold, every touching pair within a book above it."""
    from chorus_ros.core.train.losses import InstanceBoundaryOptions, instance_boundary_loss
    means, inst = _two_books()
    keep = (inst == 1) | (inst == 2)
    means, inst = means[keep], inst[keep]
    gen = torch.Generator().manual_seed(1)
    f = torch.nn.Parameter(torch.ones(len(means), 8) + 0.01 * torch.randn(len(means), 8, generator=gen))
    # 1 cm grid, boundary 1.4 cm: the 18 nearest within 1.5 cm are every face and edge neighbour
    opts = InstanceBoundaryOptions(balls=4, ball_size=200, k=18, radius=0.015)
    opt = torch.optim.Adam([f], lr=0.05)
    first = instance_boundary_loss(f, means, inst, opts, gen)
    for _ in range(150):
        r = instance_boundary_loss(f, means, inst, opts, gen)
        opt.zero_grad()
        r.loss.backward()
        opt.step()
    assert first.neg_cos > 0.99 and float(r.loss.detach()) < 0.01 * float(first.loss.detach())
    # every touching pair: across the boundary under the decoder's threshold, within a book above it
    fn = F.normalize(f.detach(), dim=1)
    d = torch.cdist(means, means)
    near = (d < opts.radius) & (d > 0)
    cos = fn @ fn.T
    same = inst[:, None] == inst[None, :]
    assert float(cos[near & ~same].max()) < 0.7 and float(cos[near & same].min()) > 0.7


# ---------------------------------------------------------------------- calibration
def test_calibration_projects_conflicts_and_equalises_exactly():
    g = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[-1.0, 1.0]])}
    G, st = calibrate_gradients(g, CalibrationConfig(True, True, True))
    # PCGrad: a' = a - (a.b/|b|^2) b = (0.5, 0.5); b' = b - (b.a/|a|^2) a = (0, 1)
    # equalise to the mean raw norm m = (1 + sqrt 2) / 2
    m = (1 + math.sqrt(2)) / 2
    expect = torch.tensor([[m / math.sqrt(2), m / math.sqrt(2) + m]])
    torch.testing.assert_close(G, expect)
    assert st.conflicts == 2 and st.min_cosine == pytest.approx(-1 / math.sqrt(2))
    # projection only
    G, _ = calibrate_gradients(g, CalibrationConfig(True, True, False))
    torch.testing.assert_close(G, torch.tensor([[0.5, 1.5]]))
    # equalisation only
    G, _ = calibrate_gradients(g, CalibrationConfig(True, False, True))
    torch.testing.assert_close(G, torch.tensor([[m - m / math.sqrt(2), m / math.sqrt(2)]]))
    # off: the plain sum
    G, st = calibrate_gradients(g, CalibrationConfig(False))
    torch.testing.assert_close(G, torch.tensor([[0.0, 1.0]]))
    assert st.conflicts == 0


def test_calibration_leaves_agreeing_gradients_directions():
    g = {"a": torch.tensor([[2.0, 0.0]]), "b": torch.tensor([[0.0, 4.0]]), "c": torch.tensor([[1.0, 1.0]])}
    G, st = calibrate_gradients(g, CalibrationConfig(True, True, True), torch.Generator().manual_seed(0))
    assert st.conflicts == 0
    m = (2 + 4 + math.sqrt(2)) / 3
    torch.testing.assert_close(G, torch.tensor([[m + m / math.sqrt(2), m + m / math.sqrt(2)]]))


# ------------------------------------------------------------- trainer with a fake model
class _Out:
    def __init__(self, embedding, heads):
        self.embedding, self.heads = embedding, heads


class FakeEncoder(nn.Module):
    """Per-Gaussian MLP backbone + linear heads (same interface as ChorusEncoder)."""

    def __init__(self, dims: dict[str, int], d: int = 8):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(7, 16), nn.GELU(), nn.Linear(16, d))
        self.heads = nn.ModuleDict({k: nn.Linear(d, v) for k, v in dims.items()})

    def forward(self, g):
        x = torch.cat([g.means, g.base_rgb, g.opacity[:, None]], 1)
        e = self.backbone(x)
        return _Out(e, {k: h(e) for k, h in self.heads.items()})


def _toy_scene(n=300, seed=0, dims=(("language", 4), ("object", 3))):
    gen = torch.Generator().manual_seed(seed)
    g = GaussianArrays(torch.rand(n, 3, generator=gen) * 4, rgb_to_sh_dc(torch.rand(n, 3, generator=gen))[:, None],
                       torch.randn(n, generator=gen), torch.full((n, 3), -3.0),
                       F.normalize(torch.randn(n, 4, generator=gen), dim=1), torch.arange(n))
    feats = {k: torch.randn(n, d, generator=gen) for k, d in dims}
    w = torch.rand(n, generator=gen) * 10
    return LiftedScene(f"toy{seed}", g, LiftedTargets(feats, w, w > 1.0, 3))


def _toy_cfg(tmp_path, **kw):
    cfg = TrainConfig()
    cfg.augment.enabled = False
    cfg.log.dir = str(tmp_path / "run")
    cfg.log.progress = False
    cfg.checkpoint.dir = str(tmp_path / "ckpt")
    cfg.checkpoint.resume = False
    cfg.optim.steps = 2
    cfg.optim.grad_clip = 0.0
    for k, v in kw.items():
        sec, key = k.split("__")
        setattr(getattr(cfg, sec), key, v)
    return cfg


@pytest.mark.parametrize("enabled", [True, False])
def test_train_step_backward_is_the_calibrated_gradient(tmp_path, enabled):
    torch.manual_seed(0)
    scene = _toy_scene()
    model = FakeEncoder({"language": 4, "object": 3})
    cfg = _toy_cfg(tmp_path, calibration__enabled=enabled)
    tr = Trainer(cfg, scenes=[scene], model=model)
    ref = FakeEncoder({"language": 4, "object": 3})
    ref.load_state_dict(model.state_dict())
    tr.optimizer.step = lambda: None                    # keep the gradients, skip the update
    tr.train_step()
    # reference: per-head gradients at the embedding, calibrated by hand, J^T G for the backbone
    out = ref(scene.gaussians)
    tg = scene.targets
    losses = {k: head_loss(out.heads[k], tg.features[k], tg.weight, tg.valid, cfg.loss).loss for k in ("language", "object")}
    grads = {k: torch.autograd.grad(l, out.embedding, retain_graph=True)[0] for k, l in losses.items()}
    G, _ = calibrate_gradients(grads, cfg.calibration)
    bb = torch.autograd.grad(out.embedding, list(ref.backbone.parameters()), G, retain_graph=True)
    for p, r in zip(model.backbone.parameters(), bb):
        torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-6)
    for k in ("language", "object"):                    # each head: its own loss only
        hg = torch.autograd.grad(losses[k], list(ref.heads[k].parameters()), retain_graph=True)
        for p, r in zip(model.heads[k].parameters(), hg):
            torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-6)
    if not enabled:  # calibration off == the plain sum of the losses
        plain = torch.autograd.grad(sum(losses.values()), list(ref.backbone.parameters()))
        for p, r in zip(model.backbone.parameters(), plain):
            torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-6)


def test_training_reduces_the_loss(tmp_path):
    torch.manual_seed(0)
    scene = _toy_scene(n=200, dims=(("language", 4),))
    # learnable targets: a fixed linear map of the inputs
    g = scene.gaussians
    x = torch.cat([g.means, g.base_rgb, g.opacity[:, None]], 1)
    scene.targets.features["language"] = x @ torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    cfg = _toy_cfg(tmp_path, optim__steps=150, optim__lr=1e-2, optim__warmup_steps=0)
    tr = Trainer(cfg, scenes=[scene], model=FakeEncoder({"language": 4}))
    first = tr.train_step()["loss"]
    for _ in range(149):
        last = tr.train_step()
    assert last["loss"] < 0.3 * first and last["cos_language"] > 0.9


def test_heads_subset_and_missing_heads(tmp_path):
    scene = _toy_scene()
    tr = Trainer(TrainConfig(**{**_toy_cfg(tmp_path).__dict__, "heads": ["object"]}), scenes=[scene],
                 model=FakeEncoder({"object": 3}))
    m = tr.train_step()
    assert "loss_object" in m and "loss_language" not in m
    with pytest.raises(InvalidInputError, match=r"heads \['generalist'\] have no lifted targets"):
        Trainer(TrainConfig(**{**_toy_cfg(tmp_path).__dict__, "heads": ["generalist"]}), scenes=[scene],
                model=FakeEncoder({"object": 3}))


# ------------------------------------------------------------------------ augmentation
def test_augmentation_is_rigid_scaled_and_keeps_targets_attached():
    scene = _toy_scene(n=400)
    cfg = AugmentConfig(drop_max=0.3, crop_prob=1.0, crop_min_fraction=0.6, min_gaussians=50)
    g2, t2 = augment_scene(scene.gaussians, scene.targets, cfg, torch.Generator().manual_seed(3))
    assert 50 <= len(g2) < 400
    idx = g2.ids                                   # the surviving Gaussians' original rows
    torch.testing.assert_close(t2.features["language"], scene.targets.features["language"][idx])
    torch.testing.assert_close(t2.weight, scene.targets.weight[idx])
    # pairwise distances scale by one factor; the vertical axis stays vertical
    a, b = scene.gaussians.means[idx], g2.means
    d0, d1 = torch.pdist(a[:50]), torch.pdist(b[:50])
    s = float((d1 / d0).mean())
    assert 0.9 - 1e-4 <= s <= 1.1 + 1e-4
    torch.testing.assert_close(d1 / d0, torch.full_like(d0, s), rtol=1e-4, atol=1e-4)
    dz0, dz1 = a[:, 2] - a[0, 2], b[:, 2] - b[0, 2]
    torch.testing.assert_close(dz1, dz0 * s, rtol=1e-4, atol=1e-4)
    # sizes scale by the same factor and orientations turn with the scene
    torch.testing.assert_close(g2.log_scales - scene.gaussians.log_scales[idx],
                               torch.full_like(g2.log_scales, math.log(s)), rtol=1e-4, atol=1e-4)
    R0 = torch.from_numpy(quat_wxyz_to_rotmat(scene.gaussians.quats[idx].double().numpy()))
    R1 = torch.from_numpy(quat_wxyz_to_rotmat(g2.quats.double().numpy()))
    rel = R1 @ R0.transpose(1, 2)                 # the same rotation about z for every Gaussian
    torch.testing.assert_close(rel, rel[:1].expand_as(rel), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rel[0, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-6)
    assert bool(((g2.base_rgb >= 0) & (g2.base_rgb <= 1)).all())
    # deterministic in the generator; disabled = identity
    g3, _ = augment_scene(scene.gaussians, scene.targets, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(g3.means, g2.means)
    g4, t4 = augment_scene(scene.gaussians, scene.targets, AugmentConfig(enabled=False), torch.Generator())
    assert g4 is scene.gaussians and t4 is scene.targets



def test_augmentation_min_opacity_removes_what_the_pipeline_sets_aside():
    """After the shifts (here: half the Gaussians redrawn to low opacities), every Gaussian
    below min_opacity is gone and the targets still follow their Gaussians."""
    scene = _toy_scene(n=400)
    base = dict(drop_max=0.0, crop_prob=0.0, rotate=False, translate=0.0, scale=0.0, min_gaussians=20,
                color_brightness=0.0, color_contrast=0.0, color_saturation=0.0, shift={"low_opacity_fraction": 1.0})
    g0, _ = augment_scene(scene.gaussians, scene.targets, AugmentConfig(**base), torch.Generator().manual_seed(5))
    g1, t1 = augment_scene(scene.gaussians, scene.targets, AugmentConfig(**base, min_opacity=0.1),
                           torch.Generator().manual_seed(5))
    faint = int((g0.opacity < 0.1).sum())
    assert faint > 10 and len(g1) == len(g0) - faint and bool((g1.opacity >= 0.1).all())
    torch.testing.assert_close(t1.features["language"], scene.targets.features["language"][g1.ids])
    # never below min_gaussians: then nothing is removed
    g2, _ = augment_scene(scene.gaussians, scene.targets, AugmentConfig(**{**base, "min_gaussians": 399},
                                                                         min_opacity=0.1),
                          torch.Generator().manual_seed(5))
    assert len(g2) == len(g0)


def test_split_gaussians_draws_children_from_their_parent():
    """3DGS's split: children sit at points drawn from the parent (their spread is the parent's
    covariance R diag(s^2) R^T, checked against that matrix built explicitly), with axes / 1.6;
    the unsplit Gaussians stay as they were; the source index says where each came from."""
    from chorus_ros.core.train.augment import SPLIT_SHRINK, split_gaussians
    q = F.normalize(torch.tensor([[0.9, 0.2, -0.3, 0.25]]), dim=1)
    log_s = torch.log(torch.tensor([[0.20, 0.05, 0.01]]))
    n = 20000
    g = GaussianArrays(torch.tensor([[1.0, 2.0, 0.5]]).repeat(n, 1), rgb_to_sh_dc(torch.rand(n, 3))[:, None],
                       torch.zeros(n), log_s.repeat(n, 1), q.repeat(n, 1), torch.arange(n))
    out, src = split_gaussians(g, n, torch.Generator().manual_seed(0))
    assert len(out) == 2 * n and sorted(src.tolist()) == sorted(list(range(n)) * 2)
    d = (out.means - g.means[src]).double()
    R = torch.from_numpy(quat_wxyz_to_rotmat(q[0].double().numpy()))
    cov = R @ torch.diag(log_s[0].double().exp() ** 2) @ R.T
    torch.testing.assert_close(d.T @ d / len(d), cov, rtol=0, atol=0.03 * float(cov.max()))
    torch.testing.assert_close(out.log_scales, g.log_scales[src] - math.log(SPLIT_SHRINK))
    assert torch.equal(out.quats, g.quats[src]) and torch.equal(out.opacities, g.opacities[src])
    # a partial split: the unsplit ones first and untouched, then two children per split one
    scene = _toy_scene(n=300)
    out, src = split_gaussians(scene.gaussians, 100, torch.Generator().manual_seed(1))
    assert len(out) == 400 and torch.equal(out.means[:200], scene.gaussians.means[src[:200]])
    assert torch.equal(src[200:300], src[300:]) and len(set(src[200:300].tolist())) == 100
    assert set(src[:200].tolist()).isdisjoint(src[200:300].tolist())
    assert torch.equal(out.ids, torch.arange(400))


def test_augmentation_densify_grows_the_map_and_targets_follow():
    scene = _toy_scene(n=400)
    base = dict(drop_max=0.0, crop_prob=0.0, rotate=False, translate=0.0, scale=0.0, min_gaussians=20,
                color_brightness=0.0, color_contrast=0.0, color_saturation=0.0)
    sizes = []
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        g, t = augment_scene(scene.gaussians, scene.targets, AugmentConfig(**base, densify_max=3.0), gen)
        assert 400 <= len(g) <= 1200 and len(t.weight) == len(g)
        sizes.append(len(g))
        # every Gaussian's targets are those of the original it descends from: the nearest
        # original centre is its ancestor for the unsplit ones, and the targets match by value
        lang = t.features["language"]
        rows = (lang[:, None, :] == scene.targets.features["language"][None]).all(-1)
        assert bool((rows.sum(1) == 1).all())
        anc = rows.float().argmax(1)
        torch.testing.assert_close(t.weight, scene.targets.weight[anc])
        k = (scene.gaussians.log_scales[anc] - g.log_scales) / math.log(1.6)   # splits each went through
        torch.testing.assert_close(k, k.round().clamp_min(0), rtol=0, atol=1e-4)
    assert max(sizes) > 800          # two rounds of splits happen when the factor is above 2
    g0, _ = augment_scene(scene.gaussians, scene.targets, AugmentConfig(**base), torch.Generator().manual_seed(0))
    assert len(g0) == 400            # off by default


def test_augmentation_densify_prob_leaves_some_steps_at_the_rooms_own_density():
    scene = _toy_scene(n=400)
    base = dict(drop_max=0.0, crop_prob=0.0, rotate=False, translate=0.0, scale=0.0, min_gaussians=20,
                color_brightness=0.0, color_contrast=0.0, color_saturation=0.0, densify_max=3.0)
    grown = [len(augment_scene(scene.gaussians, scene.targets, AugmentConfig(**base, densify_prob=0.5),
                               torch.Generator().manual_seed(s))[0]) > 400 for s in range(40)]
    assert 8 <= sum(grown) <= 32     # about half the steps densify (binomial(40, 0.5): 8..32 is > 99.99 %)
    never = [len(augment_scene(scene.gaussians, scene.targets, AugmentConfig(**base, densify_prob=0.0),
                               torch.Generator().manual_seed(s))[0]) for s in range(5)]
    assert never == [400] * 5
    # probability 1 draws nothing extra: the same stream as a config without the option
    a = augment_scene(scene.gaussians, scene.targets, AugmentConfig(**base, densify_prob=1.0), torch.Generator().manual_seed(3))[0]
    b = augment_scene(scene.gaussians, scene.targets, AugmentConfig(**base), torch.Generator().manual_seed(3))[0]
    assert torch.equal(a.means, b.means)


# ------------------------------------------------------------------------------- DDP
_DDP_SCRIPT = r'''
import sys, torch
sys.path.insert(0, {testdir!r})
sys.path.insert(0, {root!r})
import importlib.util
spec = importlib.util.spec_from_file_location("tt", {testfile!r})
tt = importlib.util.module_from_spec(spec); spec.loader.exec_module(tt)
from chorus_ros.core.train import Trainer
import torch.distributed as dist
import pathlib
tmp = pathlib.Path({tmp!r})
cfg = tt._toy_cfg(tmp)
cfg.calibration.enabled = {calib}
torch.manual_seed(0)
model = tt.FakeEncoder({{"language": 4, "object": 3}})
tr = Trainer(cfg, scenes=[tt._toy_scene(seed=10 + int(__import__("os").environ["RANK"]))], model=model)
assert tr.dist.world_size == 2 and dist.get_backend() == "gloo"
tr.optimizer.step = lambda: None
tr.train_step()
torch.save({{n: p.grad.clone() for n, p in model.named_parameters()}}, tmp / f"grads{{tr.dist.rank}}.pt")
from chorus_ros.core.train.trainer import shutdown_distributed
shutdown_distributed()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_average_the_calibrated_gradients(tmp_path):
    import subprocess
    import sys
    root = os.path.abspath(".")
    script = tmp_path / "ddp_step.py"
    script.write_text(_DDP_SCRIPT.format(testdir=os.path.dirname(__file__), root=root, testfile=__file__,
                                         tmp=str(tmp_path), calib=True))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(_free_port()), str(script)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    g0, g1 = torch.load(tmp_path / "grads0.pt"), torch.load(tmp_path / "grads1.pt")
    # reference: each rank's scene alone in one process, gradients averaged
    refs = []
    for rank in range(2):
        torch.manual_seed(0)
        model = FakeEncoder({"language": 4, "object": 3})
        tr = Trainer(_toy_cfg(tmp_path / f"ref{rank}"), scenes=[_toy_scene(seed=10 + rank)], model=model)
        tr.optimizer.step = lambda: None
        tr.train_step()
        refs.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n])                           # all-reduced: same on both ranks
        torch.testing.assert_close(g0[n], (refs[0][n] + refs[1][n]) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(refs[0]["backbone.0.weight"], refs[1]["backbone.0.weight"])


# ------------------------------------------------------------------ CI smoke test
def _smoke_overrides(tmp_path, steps=2):
    return ["data.train_seeds=[0]", "data.density_range=[]", "data.scene={target_gaussians: 3000}",
            "data.views={loop_views: 2, random_views: 1, width: 48, height: 36}", f"optim.steps={steps}",
            "optim.warmup_steps=1", "log.progress=false", "log.every=1", f"log.dir={tmp_path / 'run'}",
            f"checkpoint.dir={tmp_path / 'ckpt'}", f"data.cache_dir={tmp_path / 'cache'}", "threads=2"]


def test_smoke_real_config_two_steps_then_load_checkpoint_and_resume(tmp_path):
    """The real demo config, shrunk to 2 steps on a tiny scene; load what it wrote; resume."""
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.pipeline import PerceptionPipeline
    from chorus_ros.core.synthetic import SceneConfig, generate_scene

    cfg = load_train_config(DEMO, _smoke_overrides(tmp_path))
    tr = Trainer(cfg)
    res = tr.fit()
    assert res.step == 2 and math.isfinite(res.metrics["loss"])
    ck = load_checkpoint(str(tmp_path / "ckpt"))
    assert ck.meta["training"]["step"] == 2
    assert [t["kind"] for t in ck.meta["teachers"]] == ["language", "generalist", "object"]
    assert ck.meta["label_set"]["classes"][0]["name"] == "floor"
    for k, v in tr.model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v)
    g = generate_scene(SceneConfig(seed=0, target_gaussians=3000)).gaussians
    with torch.no_grad():
        out = ck.model.eval()(g)
    assert {k: tuple(v.shape) for k, v in out.heads.items()} == {
        "language": (len(g), 64), "generalist": (len(g), 32), "object": (len(g), 16)}
    assert all(bool(torch.isfinite(v).all()) for v in out.heads.values())
    # the pipeline (chorus-eval, the nodes) loads it with the text encoder saved beside it
    pipe = PerceptionPipeline.from_checkpoint(str(tmp_path / "ckpt"))
    assert pipe.labels.names[:3] == ["floor", "wall", "ceiling"]
    torch.testing.assert_close(pipe.text_encoder.encode(["chair"]), tr.text_encoder.encode(["chair"]))
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and [r.split(",")[0] for r in log[1:]] == ["1", "2"]
    # resume: a longer schedule continues from step 2 (lifted targets come from the cache); rows an
    # interrupted run logged after its last saved state are dropped
    with open(tmp_path / "run" / "train_log.csv", "a") as f:
        f.write("7" + ",0" * (len(log[0].split(",")) - 1) + "\n")
    cfg3 = load_train_config(DEMO, _smoke_overrides(tmp_path, steps=3))
    tr3 = Trainer(cfg3)
    assert tr3.step == 2
    for k, v in tr.model.state_dict().items():
        assert torch.equal(tr3.model.state_dict()[k], v)
    assert tr3.fit().step == 3
    assert load_checkpoint(str(tmp_path / "ckpt")).meta["training"]["step"] == 3
    assert [r.split(",")[0] for r in (tmp_path / "run" / "train_log.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


def test_shipped_demo_checkpoint_was_trained_by_the_committed_configs():
    """checkpoints/demo is the average (chorus-average, uniform weights) of two runs of
    config/train/demo_boundary.yaml (stage 6) with seeds 2 and 3, each started from stage 5; each
    records the training config of every run before it: config/train/robust.yaml (stage 1),
    config/train/demo.yaml (stage 2, init_from stage 1), config/train/demo_photometric.yaml twice
    (stage 3, init_from stage 2; stage 4, init_from stage 3) and config/train/demo_dense.yaml
    (stage 5, init_from stage 4), up to output folders and logging, so `make train-demo`
    reproduces the recipe."""
    import yaml
    from pathlib import Path
    meta_path = Path(__file__).resolve().parents[2] / "checkpoints" / "demo" / "config.yaml"
    if not meta_path.exists():
        pytest.skip("checkpoints/demo not present")
    training = yaml.safe_load(meta_path.read_text())["meta"]["training"]
    free = {"log", "checkpoint", "init_from"}

    def differences(a, b, path=""):
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) if k not in free or path
                    for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
        return [] if a == b else [(path, a, b)]

    from chorus_ros.core.train.config import TrainConfig, config_from_dict

    def recorded(d):  # fields added since the run take their defaults (what the run used)
        return config_from_dict(TrainConfig, d).to_dict()
    stages = [load_train_config(p).to_dict() for p in
              ("config/train/robust.yaml", DEMO, "config/train/demo_photometric.yaml",
               "config/train/demo_photometric.yaml", "config/train/demo_dense.yaml",
               "config/train/demo_boundary.yaml")]
    assert training["average"]["weights"] == [0.5, 0.5]
    seeds = []
    for ingredient in training["ingredients"]:
        record = ingredient
        seeds.append(record["config"]["seed"])
        for i, want in reversed(list(enumerate(stages))):
            got = recorded(record["config"])
            if i == 5:   # the two stage-6 runs differ by their seed only
                got["seed"] = want["seed"]
            assert differences(want, got) == [], f"stage {i + 1}"
            assert record["step"] == want["optim"]["steps"], f"stage {i + 1}"
            assert bool(record["config"]["init_from"]) == (i > 0) and not want["init_from"], f"stage {i + 1}"
            record = record.get("init_from_training")
        assert record is None                                   # stage 1 started from scratch
    assert seeds == [2, 3]
    assert stages[5]["stage_options"]["align"]["instance_boundary_weight"] > 0


def test_shipped_pointcloud_checkpoint_was_trained_by_its_committed_config():
    """checkpoints/pointcloud is one run of config/train/pointcloud.yaml (up to output folders and logging)."""
    import yaml
    from pathlib import Path
    meta_path = Path(__file__).resolve().parents[2] / "checkpoints" / "pointcloud" / "config.yaml"
    if not meta_path.exists():
        pytest.skip("checkpoints/pointcloud not present")
    training = yaml.safe_load(meta_path.read_text())["meta"]["training"]
    from chorus_ros.core.train.config import TrainConfig, config_from_dict
    want = load_train_config("config/train/pointcloud.yaml").to_dict()
    got = config_from_dict(TrainConfig, training["config"]).to_dict()   # later fields: their defaults
    diffs = [k for k in sorted(set(want) | set(got)) if k not in {"log", "checkpoint"} and want.get(k) != got.get(k)]
    assert diffs == []
    assert training["step"] == want["optim"]["steps"] and not got["init_from"]
    assert want["encoder"]["variant"] == "pointcloud"


def test_training_folders_lift_from_their_own_images_and_train_beside_synthetic_rooms(tmp_path):
    """data.folders: a scene folder (here a generated room exported with its views) is lifted from
    its own label images exactly as the room is lifted from ground truth rendered on the fly; a
    labels map that drops a class leaves that class's Gaussians without targets; the trainer draws
    folders (with data.folders_weight, that share of the steps) and records them in the checkpoint."""
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.lift import LiftConfig, lift_folder_scene, lift_scene
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.dataset import export_dataset
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.core.teachers import FrameContext, build_teacher

    room = generate_scene(SceneConfig(seed=3, target_gaussians=3000))
    traj = make_trajectory(room, TrajectoryConfig(loop_views=2, random_views=1, width=48, height=36))
    rs = RenderSettings(backend="reference")
    export_dataset(room, traj, tmp_path / "room", settings=rs)
    # class-only generalist oracle: its features depend on the label images alone
    teachers = [build_teacher({"kind": "generalist", "type": "oracle_generalist",
                               "options": {"dim": 8, "patch_size": 2, "rgb_weight": 0.0, "seed": 1}})]
    lc = LiftConfig(cache_dir=None, backend="reference")
    got = lift_folder_scene(tmp_path / "room", teachers, room.labels, config=lc)

    def frame(v):
        gt = render_ground_truth(room.gaussians, traj.cameras[v], rs)
        return gt.rgb.clamp(0, 1), FrameContext(labels=gt.semantic, instances=gt.instance, label_set=room.labels,
                                                seed=v)
    ref = lift_scene(room.gaussians, traj.cameras, teachers, frame_fn=frame, config=lc)
    assert torch.equal(got.targets.valid, ref.valid) and int(ref.valid.sum()) > 500
    torch.testing.assert_close(got.targets.features["generalist"], ref.features["generalist"], atol=1e-4, rtol=1e-4)
    assert torch.equal(got.gaussians.extras["label"], room.gaussians.extras["label"].long())

    chair = room.labels.names.index("chair")
    is_chair = room.gaussians.extras["label"].long() == chair
    assert int((is_chair & ref.valid).sum()) > 0
    (tmp_path / "map.yaml").write_text("chair: null\n")
    dropped = lift_folder_scene(tmp_path / "room", teachers, room.labels, labels_map=tmp_path / "map.yaml", config=lc)
    assert not bool(dropped.targets.valid[is_chair].any())
    assert torch.equal(dropped.targets.valid[~is_chair], ref.valid[~is_chair])

    cfg = load_train_config(DEMO, _smoke_overrides(tmp_path, steps=1) + [
        f"data.folders=[{tmp_path / 'room'}]", "data.folders_weight=0.25"])
    tr = Trainer(cfg)
    assert len(tr.scenes) == 2 and tr.scenes[1].scene_id.startswith("folder:")
    drawn = [tr._draw_scene() is tr.scenes[1] for _ in range(2000)]
    assert abs(sum(drawn) / 2000 - 0.25) < 0.04
    assert tr.fit().step == 1
    assert load_checkpoint(str(tmp_path / "ckpt")).meta["training"]["train_folders"] == ["room"]
    with pytest.raises(InvalidInputError, match="folders_weight"):
        Trainer(load_train_config(DEMO, _smoke_overrides(tmp_path / "c", steps=1) + ["data.folders_weight=0.5"]))
    with pytest.raises(InvalidInputError, match="not a folder"):
        Trainer(load_train_config(DEMO, _smoke_overrides(tmp_path / "b", steps=1) + [
            f"data.folders=[{tmp_path / 'missing'}]"]))
