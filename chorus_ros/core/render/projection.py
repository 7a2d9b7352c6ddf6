"""Projection of 3D Gaussians to screen-space 2D Gaussians with gsplat 1.5.3's conventions.

For one pinhole camera (world-to-camera ``viewmat``, intrinsics ``K``):

* camera-frame mean ``t = R @ mu + p``; culled unless ``near <= t_z <= far``;
* 3D covariance ``Sigma = R_q diag(s)^2 R_q^T`` with ``R_q`` from the *normalised* wxyz quaternion;
* EWA: ``Sigma_2d = J R Sigma R^T J^T`` with the perspective Jacobian
  ``J = [[fx/z, 0, -fx*x'/z^2], [0, fy/z, -fy*y'/z^2]]`` where ``x' = z * clamp(x/z, -(cx/fx +
  0.3*tan_fovx), (W-cx)/fx + 0.3*tan_fovx)`` (i.e. +-1.3 tan(fov/2) for a centred principal
  point, ``tan_fovx = 0.5 W / fx``), likewise for y;
* ``eps2d`` is added to the diagonal of ``Sigma_2d``; culled when its determinant is <= 0;
* the mean projects to ``(fx x/z + cx, fy y/z + cy)`` (pixel centres are at integer + 0.5);
* culled when opacity < 1/255; per-axis radius ``ceil(e * sqrt(Sigma_2d[a, a]))`` with the
  opacity-aware extent ``e = min(3.33, sqrt(2 ln(255 * opacity)))``; culled when both radii are
  <= ``radius_clip`` or the box lies outside the image.

The box is conservative: any pixel where a Gaussian's alpha reaches 1/255 lies inside it, so
the rendered image does not depend on how Gaussians are binned into tiles.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ALPHA_MIN", "ALPHA_MAX", "T_MIN", "EXTENT_MAX", "Projected", "quat_scale_to_covar",
           "project_gaussians"]

ALPHA_MIN = 1.0 / 255.0
"""Alphas below this are skipped (gsplat ``ALPHA_THRESHOLD``)."""
ALPHA_MAX = 0.999
"""Alphas are clamped to at most this."""
T_MIN = 1e-4
"""A pixel stops at the first Gaussian that would bring its transmittance to <= this (excluded)."""
EXTENT_MAX = 3.33
"""Largest box half-size in standard deviations (gsplat's opacity-aware bound caps at 3.33)."""


@dataclass
class Projected:
    """The Gaussians that survive culling, projected to the image (M of the N inputs).

    All float tensors carry gradients back to the 3D parameters.
    """

    index: torch.Tensor
    """[M] int64 index into the N input Gaussians."""
    means2d: torch.Tensor
    """[M, 2] projected centres, pixels (x right, y down)."""
    conics: torch.Tensor
    """[M, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]], 1/pixels^2."""
    depths: torch.Tensor
    """[M] camera-frame z of the centres, metres."""
    opacity: torch.Tensor
    """[M] opacity in (0, 1)."""
    radii: torch.Tensor
    """[M, 2] int32 box half-sizes in x and y, pixels (all > 0)."""


def _rotmats(quats: torch.Tensor) -> torch.Tensor:
    """``[N, 3, 3]`` rotations from wxyz quaternions (normalised here; zero gives the identity)."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))


def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``[N, 3, 3]`` covariances from wxyz quaternions ``[N, 4]`` (normalised here) and std devs ``[N, 3]``.

    A zero quaternion gives the identity rotation (gsplat would produce NaN).
    """
    m = _rotmats(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacity: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    *,
    near: float,
    far: float,
    eps2d: float,
    radius_clip: float = 0.0,
) -> Projected:
    """Project and cull Gaussians for one pinhole view (see the module docstring).

    Args:
        means: [N, 3] world, metres.
        quats: [N, 4] wxyz, any norm.
        scales: [N, 3] standard deviations, metres (already exponentiated).
        opacity: [N] in (0, 1) (already passed through the sigmoid).
        viewmat: [4, 4] world-to-camera.
        K: [3, 3] intrinsics, pixels.
        width, height: image size, pixels.
        near, far: camera-z culling planes, metres.
        eps2d: added to the 2D covariance diagonal, pixels^2.
        radius_clip: cull Gaussians whose radii are both <= this, pixels.
    """
    dtype = means.dtype
    viewmat = viewmat.to(dtype)
    K = K.to(dtype)
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    with torch.no_grad():
        z_all = means @ rot[2] + trans[2]
        keep = ((z_all >= near) & (z_all <= far) & (opacity >= ALPHA_MIN)).nonzero().squeeze(1)
    mu = means[keep]
    t = mu @ rot.T + trans  # [M, 3] camera frame
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_xp = (width - cx) / fx + 0.3 * tan_fovx
    lim_xn = cx / fx + 0.3 * tan_fovx
    lim_yp = (height - cy) / fy + 0.3 * tan_fovy
    lim_yn = cy / fy + 0.3 * tan_fovy
    x, y, z = t.unbind(-1)
    rz = 1.0 / z
    tx = z * torch.minimum(torch.maximum(x * rz, -lim_xn), lim_xp)
    ty = z * torch.minimum(torch.maximum(y * rz, -lim_yn), lim_yp)
    # Sigma_2d = T T^T with T = J R_view R_q diag(s)  ([M, 2, 3]); rows of J R_view first
    j0 = (fx * rz)[:, None] * rot[0] - (fx * tx * rz * rz)[:, None] * rot[2]  # [M, 3]
    j1 = (fy * rz)[:, None] * rot[1] - (fy * ty * rz * rz)[:, None] * rot[2]
    m = _rotmats(quats[keep]) * scales[keep][:, None, :]  # [M, 3, 3] = R_q diag(s)
    t0 = (j0[:, :, None] * m).sum(dim=1)  # [M, 3]
    t1 = (j1[:, :, None] * m).sum(dim=1)
    a = (t0 * t0).sum(dim=1) + eps2d
    b = (t0 * t1).sum(dim=1)
    c = (t1 * t1).sum(dim=1) + eps2d
    det = a * c - b * b
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    op = opacity[keep]
    with torch.no_grad():
        ext = torch.sqrt(2.0 * torch.log(op / ALPHA_MIN)).clamp_max(EXTENT_MAX)
        rx = torch.ceil(ext * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(ext * torch.sqrt(c.clamp_min(0)))
        mx, my = means2d[:, 0], means2d[:, 1]
        ok = (det > 0) & ~((rx <= radius_clip) & (ry <= radius_clip))
        ok &= ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
        sel = ok.nonzero().squeeze(1)
    det = det[sel]
    conics = torch.stack([c[sel] / det, -b[sel] / det, a[sel] / det], dim=-1)
    radii = torch.stack([rx[sel], ry[sel]], dim=-1).to(torch.int32)
    return Projected(index=keep[sel], means2d=means2d[sel], conics=conics, depths=z[sel],
                     opacity=op[sel], radii=radii)

