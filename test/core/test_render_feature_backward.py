"""Feature gradients of the renderer at the sizes adaptation uses (chorus_ros.core.adapt).

Adaptation back-propagates through the renderer's feature channels only (the map is fixed):
thousands of Gaussians, tens of channels (class scores + head features), float32.

* CPU: the reference backend's feature gradient against central finite differences (the
  render is linear in the features, so differences are exact up to rounding) and against the
  transpose of the independently computed blending weights (chorus_ros.core.adapt.splat);
* GPU (``gpu`` marker, skipped without CUDA): gsplat's feature gradient against the reference
  for the adaptation loss (alpha-normalised class probabilities, cross-entropy) over 40
  channels (two gsplat passes of 32).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.geometry import Camera
from chorus_ros.core.render import RenderSettings, render


def _scene(n: int, seed: int, dtype=torch.float32) -> GaussianArrays:
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(n, 3)
    means[:, 2].uniform_(1.5, 5.0, generator=gen)
    means[:, :2] = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.6 * means[:, 2:3]
    sh = rgb_to_sh_dc(torch.rand(n, 1, 3, generator=gen))
    g = GaussianArrays(means=means, sh=sh, opacities=torch.randn(n, generator=gen) * 2,
                       log_scales=torch.empty(n, 3).uniform_(-4.0, -2.2, generator=gen),
                       quats=torch.randn(n, 4, generator=gen))
    return GaussianArrays(*(t.to(dtype) for t in (g.means, g.sh, g.opacities, g.log_scales, g.quats)))


def _camera(w: int, h: int) -> Camera:
    return Camera.from_c2w(np.eye(4), Camera.intrinsics_from_fov(w, h, 60.0), w, h)


def _adapt_loss(feats_img: torch.Tensor, alpha: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The label term of adaptation on every pixel with alpha >= 0.5: cross-entropy of the
    alpha-normalised composited class probabilities (first k channels), plus an L2 on the rest."""
    ok = alpha.detach() >= 0.5
    p = feats_img[ok] / alpha[ok][:, None]
    ce = -torch.log(p[:, :k].gather(1, labels[ok][:, None]).clamp_min(1e-6)).mean()
    return ce + p[:, k:].pow(2).mean()


def test_reference_feature_gradient_against_finite_differences_and_blend_weights():
    from chorus_ros.core.adapt import blend_weights
    g = _scene(5000, seed=1)
    w, h, c = 64, 48, 24
    cam = _camera(w, h)
    settings = RenderSettings(backend="reference")
    gen = torch.Generator().manual_seed(2)
    feats = torch.rand(len(g), c, generator=gen)
    probe = torch.randn(h, w, c, generator=gen)
    f = feats.clone().requires_grad_(True)
    out = render(g, cam, settings, features=f)
    assert float(out.alpha.detach().mean()) > 0.5
    (grad,) = torch.autograd.grad((out.features * probe).sum(), f)
    # finite differences on entries of Gaussians that are seen (and some that are not)
    seen = grad.abs().sum(1).nonzero().squeeze(1)
    assert len(seen) > 1000
    rows = torch.cat([seen[torch.randperm(len(seen), generator=gen)[:12]],
                      torch.tensor([int(i) for i in range(len(g)) if i not in set(seen.tolist())][:3])])
    cols = torch.randint(0, c, (len(rows),), generator=gen)
    g64 = GaussianArrays(*(t.double() for t in (g.means, g.sh, g.opacities, g.log_scales, g.quats)))
    eps = 0.5
    for i, j in zip(rows.tolist(), cols.tolist()):
        fp, fm = feats.double().clone(), feats.double().clone()
        fp[i, j] += eps
        fm[i, j] -= eps
        with torch.no_grad():
            d = ((render(g64, cam, settings, features=fp).features
                  - render(g64, cam, settings, features=fm).features) * probe.double()).sum() / (2 * eps)
        assert float(grad[i, j]) == pytest.approx(float(d), rel=1e-3, abs=1e-4), (i, j)
    # the transpose of the blending weights, computed without the rasteriser
    pb = blend_weights(g, cam, torch.arange(w * h), settings)
    ff = feats.clone().requires_grad_(True)
    (grad_b,) = torch.autograd.grad((pb.composite(ff) * probe.reshape(-1, c)).sum(), ff)
    rel = float((grad_b - grad).norm() / grad.norm())
    assert rel < 1e-5, rel


@pytest.mark.gpu
def test_gsplat_feature_gradient_matches_reference_at_adaptation_sizes():
    g = _scene(20000, seed=3)
    w, h, k, extra = 128, 96, 24, 16
    cam = _camera(w, h)
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(len(g), k, generator=gen) * 2
    extra_f = torch.randn(len(g), extra, generator=gen) * 0.3
    grads, losses = {}, {}
    for backend, dev in (("reference", "cpu"), ("gsplat", "cuda")):
        lg = logits.clone().to(dev).requires_grad_(True)
        ex = extra_f.clone().to(dev).requires_grad_(True)
        feats = torch.cat([torch.softmax(lg, 1), ex], 1)  # 40 channels: two gsplat passes
        out = render(g.to(dev), cam, RenderSettings(backend=backend), features=feats)
        ref_alpha = out.alpha
        if backend == "reference":
            with torch.no_grad():  # labels: the argmax of the reference's own render
                labels = (out.features[..., :k] / out.alpha.clamp_min(1e-6)[..., None]).argmax(-1)
                labels = (labels + 1) % k   # a wrong label: a non-trivial loss
        loss = _adapt_loss(out.features, ref_alpha, labels.to(dev), k)
        grads[backend] = [t.cpu() for t in torch.autograd.grad(loss, [lg, ex])]
        losses[backend] = float(loss)
    rel = [float((a - b).norm() / b.norm()) for a, b in zip(grads["gsplat"], grads["reference"])]
    print(f"loss reference {losses['reference']:.6f} gsplat {losses['gsplat']:.6f}; "
          f"relative gradient difference (class logits, extra features): {rel}")
    assert abs(losses["gsplat"] - losses["reference"]) < 1e-3 * abs(losses["reference"])
    assert max(rel) < 1e-2, rel
