"""Measured agreement of two render backends (gsplat against the pure-torch reference).

Shared by the GPU tests (``test/core/test_render_gsplat.py``) and the prepared GPU check
(``scripts/gpu_check.py``), so both report the same statistics with the same definitions:

* :func:`random_gaussians` -- a random scene in front of an identity camera (+z forward);
* :func:`output_differences` -- per output (rgb, alpha, depth where both alphas > 0.5,
  features relative to their scale, blending weights relative to max(1, |w|)): the largest
  absolute difference and its 99.9th percentile, plus the share of equal radii and top indices;
* :func:`gradient_differences` -- relative L2 difference of the gradients of one probe loss
  (rgb, alpha and features dotted with fixed random images) with respect to every input.

The two backends cannot agree bit for bit (gsplat uses fast-math ``exp``): see the tests'
docstring for the tolerances and why.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.geometry import Camera
from chorus_ros.core.render.api import RenderOutput, RenderSettings, render

__all__ = ["random_gaussians", "output_differences", "compare_backends", "gradient_differences",
           "PARITY_LIMITS", "parity_passes"]

PARITY_LIMITS = {"max": 1e-2, "p999": 1e-4, "equal_share": 0.99, "grad_rel": 1e-2}
"""Tolerances of the GPU tests: every output's max < 1e-2 and 99.9th percentile < 1e-4; radii and
top indices equal on > 99 % of Gaussians / pixels; gradients within 1 % (relative L2)."""


def parity_passes(d: dict) -> bool:
    """Whether one :func:`compare_backends` result ``d`` is within :data:`PARITY_LIMITS` (the rule
    the GPU tests assert and ``scripts/gpu_check.py`` reports)."""
    lim = PARITY_LIMITS
    return bool(all(v["max"] < lim["max"] and v["p999"] < lim["p999"] for v in d["outputs"].values())
                and d["radii_equal"] > lim["equal_share"] and d["top_index_equal"] > lim["equal_share"])


def random_gaussians(n: int, seed: int, degree: int = 3) -> GaussianArrays:
    """``n`` random Gaussians at z in [1.5, 6] m inside a ~70 % frustum of a camera at the origin
    looking down +z; SH of ``degree`` (DC from a random colour, higher bands ~N(0, 0.2)); opacity
    logits ~N(0, 4); scales exp(U(-4, -2)) m; random (unnormalised) quaternions. CPU, float32."""
    if n < 1 or degree not in (0, 1, 2, 3):
        raise ValueError(f"random_gaussians needs n >= 1 and degree 0..3, got n={n}, degree={degree}")
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(n, 3)
    means[:, 2].uniform_(1.5, 6.0, generator=gen)
    means[:, :2] = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.7 * means[:, 2:3]
    sh = torch.randn(n, (degree + 1) ** 2, 3, generator=gen) * 0.2
    sh[:, 0] = rgb_to_sh_dc(torch.rand(n, 3, generator=gen))
    return GaussianArrays(means=means, sh=sh, opacities=torch.randn(n, generator=gen) * 2,
                          log_scales=torch.empty(n, 3).uniform_(-4.0, -2.0, generator=gen),
                          quats=torch.randn(n, 4, generator=gen))


def _max_p999(v: torch.Tensor) -> tuple[float, float]:
    v = v.flatten().double()
    if v.numel() == 0:
        return 0.0, 0.0
    return float(v.max()), float(torch.quantile(v, 0.999))


def output_differences(test: RenderOutput, ref: RenderOutput, feature_scale: float = 1.0) -> dict:
    """Differences of ``test`` against ``ref`` (same view; tensors on any device, moved to CPU).

    Returns ``{"outputs": {name: {"max": float, "p999": float}}, "radii_equal": share,
    "top_index_equal": share, "ref_alpha_mean": float}``; outputs present in both only
    (features are divided by ``feature_scale``, e.g. the largest |feature| rendered).
    """
    t, r = test.cpu(), ref.cpu()
    diffs = {"rgb": (t.rgb - r.rgb).abs().amax(-1), "alpha": (t.alpha - r.alpha).abs()}
    both = (r.alpha > 0.5) & (t.alpha > 0.5)
    diffs["depth(alpha>0.5)"] = ((t.depth - r.depth).abs() / r.depth.clamp_min(1e-6))[both]
    if t.features is not None and r.features is not None:
        diffs["features"] = (t.features - r.features).abs().amax(-1) / max(float(feature_scale), 1e-12)
    if t.weights is not None and r.weights is not None:
        diffs["weights(rel)"] = (t.weights - r.weights).abs() / r.weights.abs().clamp_min(1.0)
    out = {"outputs": {k: dict(zip(("max", "p999"), _max_p999(v.detach()))) for k, v in diffs.items()},
           "ref_alpha_mean": float(r.alpha.mean())}
    if t.radii is not None and r.radii is not None:
        out["radii_equal"] = float((t.radii == r.radii).double().mean())
    if t.top_index is not None and r.top_index is not None:
        out["top_index_equal"] = float((t.top_index == r.top_index).double().mean())
    return out


def compare_backends(g: GaussianArrays, cam: Camera, settings: RenderSettings, feats: torch.Tensor,
                     backend: str = "gsplat", device: str = "cuda") -> tuple[dict, RenderOutput, RenderOutput]:
    """Render one view with the reference (CPU) and with ``backend`` on ``device`` (colour,
    depth, alpha, ``feats [N, C]``, weights, top index); ``(output_differences, ref, test)``."""
    kw = dict(return_weights=True, return_top_index=True)
    ref = render(g, cam, replace(settings, backend="reference"), features=feats, **kw)
    test = render(g.to(device), cam, replace(settings, backend=backend), features=feats.to(device), **kw).cpu()
    return output_differences(test, ref, float(feats.abs().max())), ref, test


def gradient_differences(g: GaussianArrays, cam: Camera, feats: torch.Tensor, seed: int = 6,
                         backend: str = "gsplat", device: str = "cuda",
                         settings: RenderSettings | None = None) -> dict[str, float]:
    """Relative L2 difference ``|grad_test - grad_ref| / |grad_ref|`` per input (means, quats,
    log_scales, opacities, sh, features) of ``sum(rgb*P0) + sum(alpha*P1) + sum(features*P2)``
    with fixed random probe images ``P*`` (seeded), reference on the CPU against ``backend`` on
    ``device``."""
    settings = settings or RenderSettings()
    h, w = cam.height, cam.width
    probes = [torch.randn(s, generator=torch.Generator().manual_seed(seed + i))
              for i, s in enumerate([(h, w, 3), (h, w), (h, w, feats.shape[1])])]
    grads = {}
    for name, dev in (("reference", "cpu"), (backend, device)):
        leaves = [t.detach().clone().to(dev).requires_grad_(True)
                  for t in (g.means, g.quats, g.log_scales, g.opacities, g.sh, feats)]
        out = render(GaussianArrays(means=leaves[0], quats=leaves[1], log_scales=leaves[2],
                                    opacities=leaves[3], sh=leaves[4]), cam,
                     replace(settings, backend=name), features=leaves[5], return_weights=True)
        loss = ((out.rgb * probes[0].to(dev)).sum() + (out.alpha * probes[1].to(dev)).sum()
                + (out.features * probes[2].to(dev)).sum())
        grads[name] = [t.cpu() for t in torch.autograd.grad(loss, leaves)]
    names = ("means", "quats", "log_scales", "opacities", "sh", "features")
    return {n: float((a - b).norm() / b.norm().clamp_min(1e-12))
            for n, a, b in zip(names, grads[backend], grads["reference"])}
