"""The pure-torch reference rasteriser against independent derivations.

* an analytic single-Gaussian image (EWA projection written out here in numpy float64);
* a slow per-pixel loop (python over depth-sorted Gaussians, float64 torch) in forward and,
  through autograd, in backward; it also checks the early-termination and 1/255 rules;
* gradcheck of the fast path; near/far culling; background; features; weights; top index;
* SH basis orthonormality and sign convention; projection/SH against gsplat's own pure-torch
  implementation (runs on CPU).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.geometry import Camera, look_at_pose
from chorus_ros.core.render import RenderSettings, render
from chorus_ros.core.render import reference
from chorus_ros.core.render.sh import eval_sh, sh_basis

REF = RenderSettings(backend="reference")


# ----------------------------------------------------------------------------- helpers
def _camera(width: int, height: int, fov: float = 60.0, c2w=None) -> Camera:
    k = Camera.intrinsics_from_fov(width, height, fov)
    return Camera.from_c2w(np.eye(4) if c2w is None else c2w, k, width, height)


def _scene(n: int, seed: int, degree: int = 1, dtype=torch.float64, spread=0.6, depth=(2.0, 4.0),
           scale=(-2.6, -1.6), opacity=(-1.0, 3.0)) -> GaussianArrays:
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(n, 3, dtype=dtype)
    means[:, 2].uniform_(*depth, generator=gen)
    means[:, :2] = (torch.rand(n, 2, generator=gen, dtype=dtype) * 2 - 1) * spread * means[:, 2:3]
    k = (degree + 1) ** 2
    sh = torch.randn(n, k, 3, generator=gen, dtype=dtype) * 0.3
    sh[:, 0] = rgb_to_sh_dc(torch.rand(n, 3, generator=gen, dtype=dtype))
    return GaussianArrays(
        means=means, sh=sh,
        opacities=torch.empty(n, dtype=dtype).uniform_(*opacity, generator=gen),
        log_scales=torch.empty(n, 3, dtype=dtype).uniform_(*scale, generator=gen),
        quats=torch.randn(n, 4, generator=gen, dtype=dtype))


def _rotmat_np(q):
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _ewa_np(mean, quat, scale, viewmat, K, width, height, eps2d):
    """Camera-frame mean, projected centre and 2D covariance (+eps2d), numpy float64."""
    viewmat, K = np.asarray(viewmat, np.float64), np.asarray(K, np.float64)
    r, p = viewmat[:3, :3], viewmat[:3, 3]
    t = r @ np.asarray(mean, np.float64) + p
    rq = _rotmat_np(quat)
    cov3 = rq @ np.diag(np.asarray(scale, np.float64) ** 2) @ rq.T
    cov_c = r @ cov3 @ r.T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # gsplat: the Jacobian uses x/z clamped to the image's tangent range plus 30 % of tan(fov/2)
    lim_x = (-(cx / fx + 0.3 * 0.5 * width / fx), (width - cx) / fx + 0.3 * 0.5 * width / fx)
    lim_y = (-(cy / fy + 0.3 * 0.5 * height / fy), (height - cy) / fy + 0.3 * 0.5 * height / fy)
    x, y, z = t
    tx = z * np.clip(x / z, *lim_x)
    ty = z * np.clip(y / z, *lim_y)
    jac = np.array([[fx / z, 0, -fx * tx / z ** 2], [0, fy / z, -fy * ty / z ** 2]])
    cov2 = jac @ cov_c @ jac.T + eps2d * np.eye(2)
    mean2d = np.array([fx * x / z + cx, fy * y / z + cy])
    return t, mean2d, cov2


def _project_torch(g: GaussianArrays, cam: Camera, settings: RenderSettings):
    """Per-Gaussian EWA projection in float64 torch (differentiable), loop over Gaussians."""
    view, K = cam.viewmat.double(), cam.K.double()
    r, p = view[:3, :3], view[:3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    w, h = cam.width, cam.height
    campos = torch.linalg.inv(view)[:3, 3]
    degree = g.sh_degree if settings.sh_degree is None else settings.sh_degree
    out = []
    for i in range(len(g)):
        t = r @ g.means[i] + p
        if not settings.near <= float(t[2].detach()) <= settings.far:
            continue
        q = g.quats[i] / g.quats[i].norm()
        qw, qx, qy, qz = q
        rq = torch.stack([
            torch.stack([1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)]),
            torch.stack([2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)]),
            torch.stack([2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)])])
        cov3 = rq @ torch.diag(torch.exp(2 * g.log_scales[i])) @ rq.T
        cov_c = r @ cov3 @ r.T
        x, y, z = t
        tx = z * torch.clamp(x / z, -(cx / fx + 0.15 * w / fx), (w - cx) / fx + 0.15 * w / fx)
        ty = z * torch.clamp(y / z, -(cy / fy + 0.15 * h / fy), (h - cy) / fy + 0.15 * h / fy)
        zero = torch.zeros((), dtype=torch.float64)
        jac = torch.stack([torch.stack([fx / z, zero, -fx * tx / z ** 2]),
                           torch.stack([zero, fy / z, -fy * ty / z ** 2])])
        cov2 = jac @ cov_c @ jac.T + settings.eps2d * torch.eye(2, dtype=torch.float64)
        if float(torch.linalg.det(cov2.detach())) <= 0:
            continue
        conic = torch.linalg.inv(cov2)
        mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy])
        colour = torch.clamp_min(eval_sh(degree, (g.means[i] - campos)[None], g.sh[i:i + 1]) + 0.5, 0)[0]
        out.append((i, float(z.detach()), z, mean2d, conic, torch.sigmoid(g.opacities[i]), colour))
    return out


def _slow_render(g: GaussianArrays, cam: Camera, settings: RenderSettings, features=None):
    """Per-pixel python loop over the depth-sorted Gaussians: gsplat's rules, spelled out."""
    proj = sorted(_project_torch(g, cam, settings), key=lambda e: (e[1], e[0]))
    h, w = cam.height, cam.width
    bg = torch.tensor(settings.background, dtype=torch.float64)
    rgb, depth, alpha, feats, top = [], [], [], [], []
    weights = [torch.zeros((), dtype=torch.float64) for _ in range(len(g))]
    terminated = 0
    for py in range(h):
        for px in range(w):
            pix = torch.tensor([px + 0.5, py + 0.5], dtype=torch.float64)
            T = torch.ones((), dtype=torch.float64)
            c_acc = torch.zeros(3, dtype=torch.float64)
            d_acc = torch.zeros((), dtype=torch.float64)
            f_acc = torch.zeros(features.shape[1] if features is not None else 0, dtype=torch.float64)
            best, best_i = 0.0, -1
            for i, _, z, mean2d, conic, op, colour in proj:
                dlt = mean2d - pix
                sigma = 0.5 * dlt @ conic @ dlt
                a = torch.clamp_max(op * torch.exp(-sigma), 0.999)
                if float(sigma.detach()) < 0 or float(a.detach()) < 1.0 / 255.0:
                    continue
                next_t = T * (1 - a)
                if float(next_t.detach()) <= 1e-4:
                    terminated += 1
                    break
                wgt = a * T
                c_acc = c_acc + wgt * colour
                d_acc = d_acc + wgt * z
                if features is not None:
                    f_acc = f_acc + wgt * features[i]
                weights[i] = weights[i] + wgt
                if float(wgt.detach()) > best:
                    best, best_i = float(wgt.detach()), i
                T = next_t
            rgb.append(c_acc + T * bg)
            alpha.append(1 - T)
            depth.append(d_acc / torch.clamp_min(1 - T, 1e-10))
            feats.append(f_acc)
            top.append(best_i)
    res = dict(rgb=torch.stack(rgb).reshape(h, w, 3), depth=torch.stack(depth).reshape(h, w),
               alpha=torch.stack(alpha).reshape(h, w), weights=torch.stack(weights),
               top_index=torch.tensor(top).reshape(h, w))
    if features is not None:
        res["features"] = torch.stack(feats).reshape(h, w, -1)
    return res, terminated


def _maxdiff(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


# ------------------------------------------------------------------------- analytic
@pytest.mark.parametrize("case", ["centre", "jacobian_clamp"])
def test_single_gaussian_matches_analytic_ewa(case):
    w, h = 40, 30
    cam = _camera(w, h, fov=60.0)
    if case == "centre":
        mean = np.array([0.05, -0.03, 2.0])
        quat = np.array([0.9, 0.2, -0.3, 0.25])
        scale = np.array([0.12, 0.05, 0.2])
        opacity, color = 0.8, np.array([0.2, 0.6, 0.9])
    else:  # centre outside the image, beyond 1.3 tan(fov/2): the clamped Jacobian matters
        mean = np.array([1.9, 0.1, 2.0])
        quat = np.array([0.7, 0.1, 0.6, 0.2])
        scale = np.array([0.5, 0.3, 0.4])
        opacity, color = 0.95, np.array([0.9, 0.3, 0.1])
    bg = np.array([0.1, 0.2, 0.3])
    settings = RenderSettings(backend="reference", background=tuple(bg))
    g = GaussianArrays(
        means=torch.tensor(mean[None]), sh=rgb_to_sh_dc(torch.tensor(color[None, None])),
        opacities=torch.logit(torch.tensor([opacity], dtype=torch.float64)),
        log_scales=torch.tensor(np.log(scale)[None]), quats=torch.tensor(quat[None]))
    out = render(g, cam, settings)

    t, mean2d, cov2 = _ewa_np(mean, quat, scale, cam.viewmat.double().numpy(), cam.K.double().numpy(),
                              w, h, settings.eps2d)
    if case == "jacobian_clamp":
        assert mean2d[0] > w and t[0] / t[2] > 1.3 * 0.5 * w / float(cam.K[0, 0])
    conic = np.linalg.inv(cov2)
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d = np.stack([mean2d[0] - xs, mean2d[1] - ys], -1)
    sigma = 0.5 * np.einsum("hwi,ij,hwj->hw", d, conic, d)
    a = np.minimum(0.999, opacity * np.exp(-sigma))
    a = np.where(a < 1 / 255, 0.0, a)
    exp_rgb = a[..., None] * color + (1 - a[..., None]) * bg
    exp_depth = np.where(a > 0, t[2], 0.0)
    assert (a > 0).sum() > 20, "the Gaussian should cover a good part of the image"
    errs = {"rgb": _maxdiff(out.rgb, torch.tensor(exp_rgb)),
            "alpha": _maxdiff(out.alpha, torch.tensor(a)),
            "depth": _maxdiff(out.depth, torch.tensor(exp_depth))}
    assert max(errs.values()) < 1e-5, errs
    # radius: ceil(min(3.33, sqrt(2 ln(255 opacity))) * sqrt(cov2[a, a])), reported as the max axis
    ext = min(3.33, math.sqrt(2 * math.log(255 * opacity)))
    assert int(out.radii[0]) == int(max(math.ceil(ext * math.sqrt(cov2[0, 0])),
                                        math.ceil(ext * math.sqrt(cov2[1, 1]))))

    # float32 inputs: same image within 1e-5 away from the 1/255 cut
    g32 = GaussianArrays(g.means.float(), g.sh.float(), g.opacities.float(), g.log_scales.float(),
                         g.quats.float())
    out32 = render(g32, cam, settings)
    away = torch.tensor(np.abs(opacity * np.exp(-sigma) - 1 / 255) > 1e-4)
    assert _maxdiff(out32.rgb[away], torch.tensor(exp_rgb)[away]) < 1e-5
    assert _maxdiff(out32.alpha[away], torch.tensor(a)[away]) < 1e-5


# ----------------------------------------------------------------- slow loop reference
@pytest.fixture(scope="module")
def dense_case():
    """A small, heavily overlapping scene: many pixels terminate, tiles need several rounds."""
    g = _scene(36, seed=3, degree=2, spread=0.25, depth=(1.5, 3.0), scale=(-2.3, -1.5),
               opacity=(1.0, 5.0))
    cam = _camera(21, 17, fov=50.0)
    feats = torch.randn(len(g), 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    settings = RenderSettings(backend="reference", background=(0.3, 0.1, 0.2))
    return g, cam, feats, settings


def _params(g: GaussianArrays, feats):
    leaves = [t.detach().clone().requires_grad_(True)
              for t in (g.means, g.quats, g.log_scales, g.opacities, g.sh, feats)]
    return leaves, GaussianArrays(means=leaves[0], quats=leaves[1], log_scales=leaves[2],
                                  opacities=leaves[3], sh=leaves[4])


def test_tiled_matches_slow_loop_forward_and_backward(dense_case, monkeypatch):
    g, cam, feats, settings = dense_case
    # force several rounds per tile and several tile groups per round
    monkeypatch.setattr(reference, "MAX_ELEMENTS", 64 * 16 * 3)
    leaves_f, gf = _params(g, feats)
    fast = render(gf, cam, settings, features=leaves_f[5], return_weights=True, return_top_index=True)
    leaves_s, gs = _params(g, feats)
    slow, terminated = _slow_render(gs, cam, settings, features=leaves_s[5])
    assert terminated > 20, "scene should exercise the transmittance cut-off"

    errs = {k: _maxdiff(getattr(fast, k), slow[k]) for k in ("rgb", "depth", "alpha", "features", "weights")}
    assert max(errs.values()) < 1e-9, errs
    assert torch.equal(fast.top_index, slow["top_index"])

    gen = torch.Generator().manual_seed(5)
    probes = {k: torch.randn(slow[k].shape, generator=gen, dtype=torch.float64)
              for k in ("rgb", "depth", "alpha", "features", "weights")}
    loss_f = sum((getattr(fast, k) * p).sum() for k, p in probes.items())
    loss_s = sum((slow[k] * p).sum() for k, p in probes.items())
    grads_f = torch.autograd.grad(loss_f, leaves_f)
    grads_s = torch.autograd.grad(loss_s, leaves_s)
    names = ("means", "quats", "log_scales", "opacities", "sh", "features")
    gerrs = {n: _maxdiff(a, b) / (1.0 + float(b.abs().max())) for n, a, b in zip(names, grads_f, grads_s)}
    assert max(gerrs.values()) < 1e-8, gerrs
    assert all(float(b.abs().max()) > 0 for b in grads_s)


def test_no_grad_path_equals_grad_path(dense_case):
    g, cam, feats, settings = dense_case
    leaves, gg = _params(g, feats)
    with_grad = render(gg, cam, settings, features=leaves[5], return_weights=True, return_top_index=True)
    with torch.no_grad():
        no_grad = render(g, cam, settings, features=feats, return_weights=True, return_top_index=True)
    for k in ("rgb", "depth", "alpha", "features", "weights"):
        assert _maxdiff(getattr(with_grad, k), getattr(no_grad, k)) < 1e-12, k
    assert torch.equal(with_grad.top_index, no_grad.top_index)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_backward_equals_autograd(monkeypatch, dtype):
    g = _scene(300, seed=15, degree=2, spread=0.35, depth=(1.5, 4.0), scale=(-3.0, -1.6),
               opacity=(0.0, 5.0), dtype=dtype)
    feats = torch.randn(len(g), 3, generator=torch.Generator().manual_seed(16), dtype=dtype)
    cam = _camera(40, 30)
    monkeypatch.setattr(reference, "MAX_ELEMENTS", 64 * 8 * 40)
    gen = torch.Generator().manual_seed(17)
    probes = [torch.randn(s, generator=gen, dtype=dtype) for s in ((30, 40, 3), (30, 40), (30, 40), (30, 40, 3))]
    grads = {}
    for fused in (True, False):
        monkeypatch.setattr(reference, "FUSED_BACKWARD", fused)
        leaves, gg = _params(g, feats)
        out = render(gg, cam, REF, features=leaves[5], return_weights=True)
        loss = ((out.rgb * probes[0]).sum() + (out.depth * probes[1]).sum() + (out.alpha * probes[2]).sum()
                + (out.features * probes[3]).sum() + out.weights.sum())
        grads[fused] = torch.autograd.grad(loss, leaves)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for name, a, b in zip(("means", "quats", "log_scales", "opacities", "sh", "features"),
                          grads[True], grads[False]):
        err = _maxdiff(a, b) / (1e-3 + float(b.abs().max()))
        assert err < tol, (name, err)


def test_gradcheck_tiny_scene():
    g = _scene(4, seed=11, degree=1, spread=0.2, depth=(1.5, 2.5), scale=(-2.0, -1.5),
               opacity=(0.0, 2.0))
    cam = _camera(9, 7, fov=40.0)
    feats = torch.randn(4, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    settings = RenderSettings(backend="reference", background=(0.2, 0.4, 0.6))

    def fn(means, quats, log_scales, opacities, sh, features):
        out = render(GaussianArrays(means=means, sh=sh, opacities=opacities, log_scales=log_scales,
                                    quats=quats), cam, settings, features=features, return_weights=True)
        return out.rgb, out.depth, out.alpha, out.features, out.weights

    inputs = tuple(t.detach().clone().requires_grad_(True)
                   for t in (g.means, g.quats, g.log_scales, g.opacities, g.sh, feats))
    assert float((fn(*inputs)[2] > 0).double().mean()) > 0.5, "most pixels should be covered"
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


# --------------------------------------------------------------------- behaviours
def test_near_far_culling_and_radii():
    cam = _camera(32, 24)
    g = _scene(3, seed=1, degree=0, spread=0.0, depth=(1.0, 1.0), scale=(-2.0, -2.0),
               opacity=(3.0, 3.0))
    with torch.no_grad():
        g.means[:, 2] = torch.tensor([0.5, 2.0, 6.0], dtype=torch.float64)
    settings = RenderSettings(backend="reference", near=1.0, far=5.0)
    out = render(g, cam, settings)
    assert out.radii.tolist()[0] == 0 and out.radii.tolist()[2] == 0 and out.radii.tolist()[1] > 0
    only_mid = render(g.index(torch.tensor([1])), cam, settings)
    assert _maxdiff(out.rgb, only_mid.rgb) == 0 and _maxdiff(out.alpha, only_mid.alpha) == 0
    # the depth image reads the middle Gaussian's camera z
    assert abs(float(out.depth[12, 16]) - 2.0) < 1e-12
    # widening the range brings the near one back (it is in front and covers the centre)
    wide = render(g, cam, RenderSettings(backend="reference", near=0.1, far=10.0))
    assert (wide.radii > 0).all() and float(wide.depth[12, 16]) < 2.0


def test_background_and_empty_view():
    cam = _camera(16, 12)
    g = _scene(10, seed=2, degree=1)
    bg = (0.25, 0.5, 0.75)
    a = render(g, cam, RenderSettings(backend="reference", background=bg))
    b = render(g, cam, RenderSettings(backend="reference"))
    expect = b.rgb + (1 - b.alpha)[..., None] * torch.tensor(bg, dtype=torch.float64)
    assert _maxdiff(a.rgb, expect) < 1e-12
    behind = GaussianArrays(g.means * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64), g.sh,
                            g.opacities, g.log_scales, g.quats)
    empty = render(behind, cam, RenderSettings(backend="reference", background=bg), return_weights=True,
                   return_top_index=True)
    assert torch.equal(empty.rgb, torch.tensor(bg, dtype=torch.float64).expand(12, 16, 3))
    assert float(empty.alpha.abs().max()) == 0 and float(empty.depth.abs().max()) == 0
    assert float(empty.weights.abs().max()) == 0 and int(empty.top_index.max()) == -1


def test_features_equal_rgb_for_base_colour():
    cam = _camera(24, 20)
    g = _scene(30, seed=6, degree=0)
    out = render(g, cam, RenderSettings(backend="reference", background=(0.0, 0.0, 0.0)),
                 features=g.base_rgb)
    assert float(out.alpha.max()) > 0.5
    assert _maxdiff(out.features, out.rgb) < 1e-12


def test_weights_sum_to_alpha_and_match_loop():
    g = _scene(25, seed=8, degree=1, spread=0.3)
    cam = _camera(18, 14)
    out = render(g, cam, REF, return_weights=True, return_top_index=True)
    assert abs(float(out.weights.sum()) - float(out.alpha.sum())) < 1e-9 * float(out.alpha.sum())
    slow, _ = _slow_render(g, cam, REF)
    assert _maxdiff(out.weights, slow["weights"]) < 1e-10
    assert torch.equal(out.top_index, slow["top_index"])
    assert (out.top_index >= 0).sum() > 0 and (out.top_index == -1).sum() > 0


def test_float32_scene_matches_float64():
    g = _scene(300, seed=9, degree=3, spread=0.5)
    cam = _camera(64, 48)
    hi = render(g, cam, REF, return_weights=True)
    g32 = GaussianArrays(g.means.float(), g.sh.float(), g.opacities.float(), g.log_scales.float(),
                         g.quats.float())
    lo = render(g32, cam, REF, return_weights=True)
    assert lo.rgb.dtype == torch.float32
    # float32 rounding can move a pixel across the 1/255 or 1e-4 cut; such pixels are rare
    diff = (lo.rgb.double() - hi.rgb).abs().amax(-1)
    assert float((diff > 1e-4).double().mean()) < 0.01, float(diff.max())
    assert float(diff.median()) < 1e-6


def test_image_independent_of_tile_size_and_round_sizes(monkeypatch):
    g = _scene(200, seed=14, degree=1, spread=0.4, depth=(1.0, 6.0), scale=(-3.0, -1.0))
    cam = _camera(37, 29)
    base = render(g, cam, REF, return_weights=True, return_top_index=True)
    for tile, first, budget in ((4, 2, 10_000), (16, 64, 1_000_000), (5, 1, 300)):
        monkeypatch.setattr(reference, "TILE_SIZE", tile)
        monkeypatch.setattr(reference, "_K_FIRST", first)
        monkeypatch.setattr(reference, "MAX_ELEMENTS", budget)
        other = render(g, cam, REF, return_weights=True, return_top_index=True)
        for k in ("rgb", "depth", "alpha", "weights"):
            assert _maxdiff(getattr(base, k), getattr(other, k)) < 1e-12, (tile, k)
        assert torch.equal(base.top_index, other.top_index)


def test_rectangle_minimum_of_quadratic_form():
    """The tile culling's exact minimum: never above the true minimum (conservative), and tight."""
    gen = torch.Generator().manual_seed(18)
    n = 400
    lo = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 6
    hi = lo + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 8
    m = torch.randn(n, 2, 2, generator=gen, dtype=torch.float64)
    form = m @ m.transpose(1, 2) + 0.1 * torch.eye(2, dtype=torch.float64)
    a, b, c = form[:, 0, 0], form[:, 0, 1], form[:, 1, 1]
    got = reference._min_sigma_on_rect(lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1], a, b, c)
    u = torch.linspace(0, 1, 301, dtype=torch.float64)
    xs = lo[:, 0:1, None] + (hi - lo)[:, 0:1, None] * u[None, :, None]  # [n, 301, 1]
    ys = lo[:, 1:2, None] + (hi - lo)[:, 1:2, None] * u[None, None, :]  # [n, 1, 301]
    grid = 0.5 * (a[:, None, None] * xs ** 2 + 2 * b[:, None, None] * xs * ys + c[:, None, None] * ys ** 2)
    brute = grid.flatten(1).min(dim=1).values
    assert bool((got <= brute + 1e-12).all())
    assert float((brute - got).max()) < 0.05 * float(brute.max())  # grid resolution only
    inside = (lo <= 0).all(1) & (hi >= 0).all(1)
    assert bool((got[inside] == 0).all()) and int(inside.sum()) > 0


def test_invalid_inputs():
    g = _scene(3, seed=1, degree=1)
    cam = _camera(8, 8)
    with pytest.raises(InvalidInputError, match="near"):
        render(g, cam, RenderSettings(backend="reference", near=0.0))
    with pytest.raises(InvalidInputError, match="sh_degree"):
        render(g, cam, RenderSettings(backend="reference", sh_degree=2))
    with pytest.raises(InvalidInputError, match="features"):
        render(g, cam, REF, features=torch.zeros(2, 4, dtype=torch.float64))


def test_sh_degree_setting_truncates():
    g = _scene(20, seed=13, degree=3)
    cam = _camera(16, 12)
    a = render(g, cam, RenderSettings(backend="reference", sh_degree=1))
    b = render(g.with_sh_degree(1), cam, REF)
    assert _maxdiff(a.rgb, b.rgb) == 0


# ------------------------------------------------------------------------------ SH
def test_sh_basis_orthonormal_and_signs():
    # exact quadrature for polynomials of degree <= 6 on the sphere: Gauss-Legendre in cos(theta)
    nodes, wts = np.polynomial.legendre.leggauss(8)
    phi = np.arange(16) * 2 * np.pi / 16
    ct, ph = np.meshgrid(nodes, phi, indexing="ij")
    st = np.sqrt(1 - ct ** 2)
    dirs = torch.tensor(np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3))
    quad_w = torch.tensor(np.repeat(wts, 16) * 2 * np.pi / 16)
    basis = sh_basis(3, dirs * 3.0)  # directions need not be unit length
    gram = basis.T @ (basis * quad_w[:, None])
    assert _maxdiff(gram, torch.eye(16, dtype=torch.float64)) < 1e-12
    # 3DGS sign convention: Y1 = (-c1 y, c1 z, -c1 x), Y4 = +c xy, Y9 = -c y(3x^2 - y^2)
    c1 = math.sqrt(3 / (4 * math.pi))
    b = sh_basis(3, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(b[:, 1:4], torch.tensor([[-c1, 0, 0], [0, c1, 0], [0, 0, -c1]], dtype=torch.float64))
    d = torch.tensor([[0.6, 0.0, 0.8]], dtype=torch.float64)
    assert float(sh_basis(2, d)[0, 7]) == pytest.approx(-0.5 * math.sqrt(15 / math.pi) * 0.6 * 0.8)


def test_projection_and_sh_match_gsplat_torch_impl():
    timpl = pytest.importorskip("gsplat.cuda._torch_impl")
    from chorus_ros.core.render.projection import project_gaussians, quat_scale_to_covar
    g = _scene(200, seed=21, degree=3, spread=0.9)
    c2w = look_at_pose(np.array([0.3, -0.2, -0.5]), np.array([0.0, 0.0, 3.0]), up=(0, -1, 0))
    cam = _camera(80, 60, fov=70, c2w=c2w)
    covars = quat_scale_to_covar(g.quats, g.scales)
    ref_covars, _ = timpl._quat_scale_to_covar_preci(g.quats, g.scales, True, False, triu=False)
    assert _maxdiff(covars, ref_covars) < 1e-12
    radii, means2d, depths, conics, _ = timpl._fully_fused_projection(
        g.means, ref_covars, cam.viewmat.double()[None], cam.K.double()[None], 80, 60, eps2d=0.3)
    proj = project_gaussians(g.means, g.quats, g.scales, g.opacity, cam.viewmat, cam.K, 80, 60,
                             near=0.01, far=1e10, eps2d=0.3)
    idx = proj.index
    assert len(idx) > 100 and bool((radii[0, idx] > 0).all())
    assert _maxdiff(proj.means2d, means2d[0, idx]) < 1e-9
    assert _maxdiff(proj.depths, depths[0, idx]) < 1e-12
    assert _maxdiff(proj.conics, conics[0, idx]) < 1e-9
    campos = torch.tensor(cam.position)
    for degree in range(4):
        ours = eval_sh(degree, g.means - campos, g.sh)
        theirs = timpl._spherical_harmonics(degree, g.means - campos, g.sh[:, :(degree + 1) ** 2])
        assert _maxdiff(ours, theirs) < 1e-9, degree
