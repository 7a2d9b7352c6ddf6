"""Modality branches and the second gradient-calibration level (equal per-branch gradient norms)."""
from __future__ import annotations

import importlib.util
import pathlib

import torch

from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
from chorus_ros.core.encoder.model import equalise_branch_gradients
from chorus_ros.core.train import Trainer

_spec = importlib.util.spec_from_file_location("_tt", pathlib.Path(__file__).with_name("test_train.py"))
_tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tt)

TINY = dict(voxel_size=0.1, channels=(8, 8), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=8,
            head_hidden=16, embed_dim=8, heads=[HeadSpec("language", 4), HeadSpec("object", 3)])


def test_equalise_exact_values():
    g = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.zeros(2), "d": None}
    out = equalise_branch_gradients(g)
    assert torch.allclose(out["a"], torch.tensor([3.0, 4.0]) * 3 / 5)  # mean norm (5 + 1) / 2 = 3
    assert torch.allclose(out["b"], torch.tensor([0.0, 3.0]))
    assert torch.equal(out["c"], torch.zeros(2)) and out["d"] is None


def _scene(n=400, seed=0):
    return _tt._toy_scene(n=n, seed=seed)


def test_level_two_gives_equal_branch_norms_and_matches_a_manual_reference():
    torch.manual_seed(0)
    m = ChorusEncoder(EncoderConfig(branches=True, **TINY))
    with torch.no_grad():  # make the appearance branch's gradient much larger than geometry's
        m.branch_join.weight[:, :8].mul_(20.0)  # columns of the appearance branch (first group)
    g = _scene().gaussians
    outs = {}
    hooks = [m.branches[k].register_forward_hook(lambda mod, i, o, k=k: outs.__setitem__(k, o)) for k in m.branch_groups]
    G = torch.randn(len(g), 8, generator=torch.Generator().manual_seed(1))

    # reference: gradients at the branch outputs (no calibration), equalised by hand, pushed into each branch
    emb = m(g).embedding
    raw = dict(zip(outs, torch.autograd.grad((emb * G).sum(), list(outs.values()), retain_graph=True)))
    norms = {k: float(v.norm()) for k, v in raw.items()}
    assert max(norms.values()) > 3 * min(norms.values())  # unequal to start with
    eq = equalise_branch_gradients(raw)
    ref = {k: torch.autograd.grad(outs[k], list(m.branches[k].parameters()), eq[k], retain_graph=True) for k in outs}

    m.zero_grad()
    emb = m(g).embedding
    with m.branch_calibration.active():
        (emb * G).sum().backward()
    scaled = m.branch_calibration.last_scaled
    assert abs(scaled["appearance"] - scaled["geometry"]) < 1e-4 * scaled["geometry"]
    assert abs(scaled["geometry"] - sum(norms.values()) / 2) < 1e-3 * scaled["geometry"]
    for k in outs:
        assert abs(m.branch_calibration.last_norms[k] - norms[k]) < 1e-4 * norms[k]
        for p, r in zip(m.branches[k].parameters(), ref[k]):
            torch.testing.assert_close(p.grad, r, rtol=1e-4, atol=1e-6)
    # outside the context the gradient passes unchanged
    m.zero_grad()
    emb = m(g).embedding
    (emb * G).sum().backward(retain_graph=True)
    plain = torch.autograd.grad(outs["appearance"], list(m.branches["appearance"].parameters()), raw["appearance"])
    torch.testing.assert_close(m.branches["appearance"][0].weight.grad, plain[0], rtol=1e-4, atol=1e-6)
    for h in hooks:
        h.remove()


def test_trainer_logs_branch_norms_only_with_level_two(tmp_path):
    torch.manual_seed(0)
    for on in (True, False):
        cfg = _tt._toy_cfg(tmp_path / str(on))
        cfg.calibration.branches = on
        tr = Trainer(cfg, scenes=[_scene()], model=ChorusEncoder(EncoderConfig(branches=True, **TINY)))
        m = tr.train_step()
        has = {"branch_gnorm_appearance", "branch_gnorm_geometry"} <= set(m)
        assert has == on
        if on:
            s = tr.model.branch_calibration.last_scaled
            assert abs(s["appearance"] - s["geometry"]) < 1e-4 * max(s.values())
