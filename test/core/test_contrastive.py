"""Stage 'contrastive': visibility, view pairs, InfoNCE on known positives, the map loss."""
from __future__ import annotations

import numpy as np
import torch

from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.geometry import Camera, look_at_pose
from chorus_ros.core.train.stages.contrastive import (ContrastiveOptions, augment_copy, contrastive_map_loss,
                                                      info_nce, pick_view_pair, view_overlaps, visible_gaussians)


def _gaussians(means, opacity_logit=4.0):
    n = len(means)
    return GaussianArrays(torch.as_tensor(means, dtype=torch.float32), rgb_to_sh_dc(torch.full((n, 3), 0.5))[:, None],
                          torch.full((n,), opacity_logit), torch.full((n, 3), -3.0),
                          torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.arange(n))


def _camera_at_origin_looking_x():
    c2w = look_at_pose(np.zeros(3), np.array([1.0, 0, 0]))
    K = Camera.intrinsics_from_fov(64, 48, 60.0)
    return Camera.from_c2w(c2w, K, 64, 48)


def test_visibility_frustum_and_occlusion():
    cam = _camera_at_origin_looking_x()
    # 0: in front; 1: straight behind 0 (occluded); 2: behind the camera; 3: far off to the side
    g = _gaussians([[2.0, 0, 0], [4.0, 0, 0], [-2.0, 0, 0], [2.0, 5.0, 0]])
    vis = visible_gaussians(g, cam)
    assert vis.tolist() == [True, False, False, False]
    # a transparent occluder does not hide what is behind it
    g2 = _gaussians([[2.0, 0, 0], [4.0, 0, 0]], opacity_logit=-4.0)
    assert visible_gaussians(g2, cam).tolist() == [True, True]


def test_view_pair_respects_the_overlap_range():
    vis = torch.zeros(3, 100, dtype=torch.bool)
    vis[0, :100] = True
    vis[1, :50] = True          # IoU(0,1) = 0.5
    vis[2, 95:] = True          # IoU(0,2) = 0.05, IoU(1,2) = 0
    ov = view_overlaps(vis)
    assert abs(float(ov[0, 1]) - 0.5) < 1e-6 and abs(float(ov[0, 2]) - 0.05) < 1e-6
    o = ContrastiveOptions(min_visible=1)
    for s in range(5):
        assert pick_view_pair(ov, vis.sum(1), o, torch.Generator().manual_seed(s)) == (0, 1)


def test_info_nce_toy_known_positives_loss_falls_and_positives_get_closer():
    torch.manual_seed(0)
    p, d = 64, 8
    x = torch.randn(p, d)
    v1 = x + 0.3 * torch.randn(p, d)       # two noisy "views" of the same 64 points: row i <-> row i
    v2 = x + 0.3 * torch.randn(p, d)
    net = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    first, _ = info_nce(net(v1), net(v2), 0.1)
    for _ in range(100):
        loss, m = info_nce(net(v1), net(v2), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * float(first.detach())
    assert m["pos_cos"] > m["neg_cos"] + 0.5 and m["acc"] > 0.9
    # exact value on a hand case: orthonormal matched rows, tau = 1
    z = torch.eye(3)
    ref = -torch.log(torch.tensor(np.e / (np.e + 2)))
    assert torch.allclose(info_nce(z, z, 1.0)[0], ref.float())


def test_augment_copy_keeps_correspondence_and_rigidity():
    gen = torch.Generator().manual_seed(0)
    g = _gaussians(torch.rand(200, 3) * 3)
    idx = torch.arange(0, 200, 2)
    o = ContrastiveOptions(drop_max=0.5, scale_jitter=0.0, opacity_jitter=0.0, color_jitter=0.0)
    c, kept = augment_copy(g, idx, o, gen)
    assert len(c) == len(kept) and set(kept.tolist()) <= set(idx.tolist()) and len(kept) < len(idx) + 1
    # rigid: pairwise distances between kept Gaussians are preserved
    a = g.means[kept]
    d0 = (a[:, None] - a[None]).norm(dim=-1)
    d1 = (c.means[:, None] - c.means[None]).norm(dim=-1)
    assert torch.allclose(d0, d1, atol=1e-4)


class _PointNet(torch.nn.Module):
    """Per-Gaussian features of the local geometry only (so both copies are comparable)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))

    def forward(self, g):
        x = torch.cat([g.base_rgb, g.opacity[:, None]], 1)
        return type("O", (), {"embedding": self.net(x)})()


def test_contrastive_map_loss_trains_on_a_toy_map_with_two_views():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    n = 400
    means = torch.stack([torch.full((n,), 3.0), torch.rand(n) * 3 - 1.5, torch.rand(n) * 2 - 1], 1)
    g = _gaussians(means)
    g.sh[:, 0] = rgb_to_sh_dc(torch.rand(n, 3))  # distinct colours make Gaussians identifiable
    K = Camera.intrinsics_from_fov(64, 48, 60.0)
    cams = [Camera.from_c2w(look_at_pose(np.array([0, y, 0.0]), np.array([3.0, y, 0])), K, 64, 48) for y in (-0.5, 0.5)]
    o = ContrastiveOptions(pairs=128, min_visible=8, rotate=False, translate=0.0, scale_jitter=0.0,
                           opacity_jitter=0.2, color_jitter=0.02, drop_max=0.1)
    model = _PointNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = contrastive_map_loss(model, g, cams, o, gen)
    assert first is not None and first.metrics["pairs"] >= 16 and 0 < first.metrics["overlap"] < 1
    for _ in range(60):
        cl = contrastive_map_loss(model, g, cams, o, gen)
        opt.zero_grad()
        cl.loss.backward()
        opt.step()
    assert float(cl.loss) < float(first.loss) - 0.5
    assert cl.metrics["pos_cos"] > cl.metrics["neg_cos"]
