"""CUDA backend of :func:`chorus_ros.core.render.render` on ``gsplat.rasterization`` (gsplat 1.5.3).

One rasterisation pass renders everything the view needs: per-Gaussian colours (SH evaluated
with gsplat's own kernel, ``max(SH(d) + 0.5, 0)`` with ``d`` = camera centre -> mean, exactly
what ``rasterization(..., sh_degree=...)`` does internally), the optional ``[N, C]`` features
and, when weights are asked for, a channel of ones; ``render_mode='RGB+ED'`` appends gsplat's
expected depth. gsplat renders 32 channels per kernel pass (``channel_chunk``), so
``3 + C (+1)`` channels cost ``ceil((4 + C (+1)) / 32)`` passes.

* **weights**: the gradient of the summed ones-channel image with respect to the per-Gaussian
  ones is exactly each Gaussian's total blending weight ``sum_pixels alpha_i T_i`` (gsplat's
  backward adds ``alpha_i T_i * dL/dpixel`` to the colour gradient). One extra backward pass;
  the weights are returned detached (no gradient flows through them on this backend).
* **top_index**: computed with the pure-torch reference rasteriser (:mod:`.reference`) on the
  same device and without gradients, since gsplat has no per-pixel arg-max; it follows the same
  conventions, so the labels agree with gsplat's image up to float rounding at the 1/255 and
  1e-4 cut-offs.

gsplat works in float32; inputs of another dtype are cast and outputs cast back.
gsplat is imported lazily so this module imports on machines without CUDA.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from chorus_ros.core.errors import BackendUnavailableError, InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera
from chorus_ros.core.render.api import RenderOutput, RenderSettings

__all__ = ["render"]


def _gsplat():
    try:
        import gsplat
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise BackendUnavailableError(f"render backend 'gsplat' could not import gsplat: {exc}") from exc
    return gsplat


def render(gaussians: GaussianArrays, camera: Camera, settings: RenderSettings, *,
           features: torch.Tensor | None = None, return_weights: bool = False,
           return_top_index: bool = False) -> RenderOutput:
    """Render one view with gsplat on CUDA. See :func:`chorus_ros.core.render.api.render`."""
    if gaussians.device.type != "cuda":
        raise BackendUnavailableError(
            f"render backend 'gsplat' needs CUDA tensors, got device {gaussians.device}")
    return _render(_gsplat(), gaussians, camera, settings, features=features,
                   return_weights=return_weights, return_top_index=return_top_index)


def _render(gsplat, gaussians: GaussianArrays, camera: Camera, settings: RenderSettings, *,
            features: torch.Tensor | None, return_weights: bool, return_top_index: bool) -> RenderOutput:
    """The backend with the gsplat module passed in (tests drive the plumbing with a stand-in)."""
    dev = gaussians.device
    dtype = gaussians.means.dtype
    degree = gaussians.sh_degree if settings.sh_degree is None else int(settings.sh_degree)
    if not 0 <= degree <= gaussians.sh_degree:
        raise InvalidInputError(
            f"settings.sh_degree={settings.sh_degree} exceeds the Gaussians' SH degree {gaussians.sh_degree}")
    bg = torch.as_tensor(settings.background, dtype=torch.float32, device=dev).reshape(-1)
    if bg.shape != (3,):
        raise InvalidInputError(f"background must be 3 numbers, got {settings.background!r}")
    n = len(gaussians)
    width, height = camera.width, camera.height
    if n == 0:  # gsplat does not take empty inputs
        from chorus_ros.core.render import reference
        return reference.render(gaussians, camera, settings, features=features,
                                return_weights=return_weights, return_top_index=return_top_index)
    means = gaussians.means.float()
    viewmat = camera.viewmat.to(dev).float()
    K = camera.K.to(dev).float()
    campos = torch.linalg.inv(viewmat)[:3, 3]

    colors = gsplat.spherical_harmonics(degree, means - campos,
                                        gaussians.sh[:, :(degree + 1) ** 2].float().contiguous())
    parts = [torch.clamp_min(colors + 0.5, 0.0)]
    c = 0
    if features is not None:
        c = features.shape[1]
        parts.append(features.to(device=dev, dtype=torch.float32))
    ones = None
    outer_grad = torch.is_grad_enabled()
    # grad mode on for the weights pass even under an outer no_grad (the ones must stay in the graph)
    with torch.enable_grad() if return_weights else nullcontext():
        if return_weights:
            ones = torch.ones(n, 1, device=dev, dtype=torch.float32, requires_grad=True)
            parts.append(ones)
        payload = torch.cat(parts, dim=1)
        backgrounds = torch.cat([bg, bg.new_zeros(payload.shape[1] - 3)])[None]
        img, alphas, meta = gsplat.rasterization(
            means, gaussians.quats.float(), torch.exp(gaussians.log_scales.float()),
            torch.sigmoid(gaussians.opacities.float()), payload, viewmat[None], K[None], width, height,
            near_plane=settings.near, far_plane=settings.far, radius_clip=settings.radius_clip,
            eps2d=settings.eps2d, sh_degree=None, packed=False, tile_size=settings.tile_size,
            backgrounds=backgrounds, render_mode="RGB+ED", rasterize_mode="classic")
        weights = None
        if return_weights:
            keep = outer_grad and (any(
                t.requires_grad for t in (gaussians.means, gaussians.quats, gaussians.log_scales,
                                          gaussians.opacities, gaussians.sh))
                or (features is not None and features.requires_grad))
            (grad,) = torch.autograd.grad(img[0, ..., 3 + c].sum(), ones, retain_graph=keep)
            weights = grad[:, 0].detach().to(dtype)
    img, alpha = img[0], alphas[0, ..., 0]
    if not outer_grad:  # the weights pass built a graph the caller did not ask for
        img, alpha = img.detach(), alpha.detach()

    top_index = None
    if return_top_index:
        top_index = _top_index(gaussians, camera, settings)

    radii = meta["radii"][0]
    radii = radii.max(dim=-1).values if radii.ndim == 2 else radii
    return RenderOutput(
        rgb=img[..., :3].to(dtype), depth=img[..., -1].to(dtype), alpha=alpha.to(dtype),
        features=img[..., 3:3 + c].to(dtype) if features is not None else None,
        weights=weights, top_index=top_index, radii=radii.to(torch.int32), backend="gsplat")


@torch.no_grad()
def _top_index(gaussians: GaussianArrays, camera: Camera, settings: RenderSettings) -> torch.Tensor:
    """[H, W] arg-max-weight Gaussian per pixel, from the reference rasteriser on this device."""
    from chorus_ros.core.render import reference
    from chorus_ros.core.render.projection import project_gaussians
    g = gaussians
    proj = project_gaussians(
        g.means.float(), g.quats.float(), torch.exp(g.log_scales.float()),
        torch.sigmoid(g.opacities.float()), camera.viewmat.to(g.device), camera.K.to(g.device),
        camera.width, camera.height, near=settings.near, far=settings.far, eps2d=settings.eps2d,
        radius_clip=settings.radius_clip)
    payload = torch.zeros(len(proj.index), 1, device=g.device)
    *_, top = reference.rasterize(proj, payload, camera.width, camera.height, return_top_index=True)
    pad_index = torch.cat([proj.index, proj.index.new_full((1,), -1)])
    return pad_index[torch.where(top >= 0, top, len(proj.index))]

