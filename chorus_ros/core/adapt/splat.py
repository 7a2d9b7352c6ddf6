"""Per-pixel blending weights of a fixed map, so training renders become one sparse product.

Adaptation trains the encoder, not the map: the Gaussians (means, scales, rotations,
opacities) stay fixed, so every Gaussian's blending weight ``w_i(p) = alpha_i(p) T_i(p)`` at a
pixel ``p`` is a constant, and a rendered feature image is *linear* in the per-Gaussian
features::

    F(p) = sum_i w_i(p) f_i                       (what render(features=f) composites)

:func:`blend_weights` computes the non-zero ``w_i(p)`` of a chosen set of pixels once, with the
reference renderer's rules (:mod:`chorus_ros.core.render.reference`: the same projection,
``alpha = min(0.999, o exp(-sigma))`` skipped below 1/255, front-to-back order by camera z
with ties by index, the pixel stops before the Gaussian that would bring the transmittance to
<= 1e-4). :class:`PixelBlend` then composites any per-Gaussian features at those pixels with an
``index_add`` whose backward is the exact transpose, at a cost proportional to the non-zeros
instead of a whole render per step. The tests compare it with :func:`render` in forward and
backward; :class:`~chorus_ros.core.adapt.AdaptConfig` ``splat='render'`` uses the renderer
itself (the gsplat backend on CUDA).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera
from chorus_ros.core.render import RenderSettings
from chorus_ros.core.render.projection import ALPHA_MAX, ALPHA_MIN, T_MIN, project_gaussians

__all__ = ["PixelBlend", "blend_weights"]

_CELL = 16
"""Edge in pixels of the grid used to pair pixels with the Gaussians whose box covers them."""
_MAX_PAIRS = 4_000_000
"""Upper bound on candidate (pixel, Gaussian) pairs evaluated at once (memory bound)."""


@dataclass
class PixelBlend:
    """Non-zero blending weights of ``P`` pixels of one view.

    Pairs are sorted by pixel, front to back within a pixel.
    """

    pixels: torch.Tensor
    """[P] int64 linear pixel index ``y * width + x`` of each selected pixel."""
    pair_pixel: torch.Tensor
    """[E] int64 row in ``pixels`` of each pair."""
    pair_gaussian: torch.Tensor
    """[E] int64 Gaussian index (into the N Gaussians given to :func:`blend_weights`)."""
    pair_weight: torch.Tensor
    """[E] blending weight ``alpha_i(p) T_i(p)`` (the Gaussians' dtype; computed in float64)."""
    alpha: torch.Tensor
    """[P] accumulated opacity ``sum_i w_i(p)`` (= 1 - final transmittance)."""
    depth: torch.Tensor
    """[P] expected camera-z depth (``sum w z / alpha``; 0 where alpha = 0), metres."""
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.pixels.numel())

    @property
    def nnz(self) -> int:
        return int(self.pair_weight.numel())

    def composite(self, features: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[P, C]`` = ``sum_i w_i(p) features[i]``, differentiable in ``features``.

        Args:
            features: ``[N, C]`` per-Gaussian features, or ``[U, C]`` rows for a subset of
                Gaussians when ``rows`` (``[E]`` row of each pair's Gaussian in ``features``)
                is given (see :meth:`gaussians_used`).
        """
        idx = self.pair_gaussian if rows is None else rows
        w = self.pair_weight.to(features.dtype)[:, None]
        out = features.new_zeros(len(self), features.shape[1])
        return out.index_add(0, self.pair_pixel, w * features.index_select(0, idx))

    def gaussians_used(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(unique [U] Gaussian indices, [E] row of each pair in them)``."""
        uniq, inv = torch.unique(self.pair_gaussian, return_inverse=True)
        return uniq, inv

    def select(self, rows: torch.Tensor) -> "PixelBlend":
        """The blend of a subset of its pixels (``rows`` into ``pixels``, any order)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        starts = torch.searchsorted(self.pair_pixel, torch.arange(len(self) + 1))
        cnt = (starts[1:] - starts[:-1])[rows]
        first = starts[:-1][rows]
        new_pix = torch.repeat_interleave(torch.arange(len(rows)), cnt)
        off = torch.arange(int(cnt.sum())) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        src = torch.repeat_interleave(first, cnt) + off
        return PixelBlend(self.pixels[rows], new_pix, self.pair_gaussian[src], self.pair_weight[src],
                          self.alpha[rows], self.depth[rows], self.width, self.height)


@torch.no_grad()
def blend_weights(gaussians: GaussianArrays, camera: Camera, pixels: torch.Tensor,
                  settings: RenderSettings | None = None) -> PixelBlend:
    """The blending weights of ``pixels`` in ``camera``'s view (see the module docstring).

    Args:
        gaussians: N Gaussians (world frame), any float dtype; computed in float64 on the CPU.
        camera: the view.
        pixels: ``[P]`` int64 linear indices ``y * width + x`` (pixel centres at ``+ 0.5``).
        settings: renderer settings (near, far, eps2d, radius_clip are used).

    Returns:
        :class:`PixelBlend` whose :meth:`~PixelBlend.composite` equals ``render(gaussians,
        camera, settings, features=f).features`` at those pixels.
    """
    settings = settings or RenderSettings()
    w_img, h_img = camera.width, camera.height
    pixels = torch.as_tensor(pixels, dtype=torch.long).reshape(-1).cpu()
    if pixels.numel() and (int(pixels.min()) < 0 or int(pixels.max()) >= w_img * h_img):
        raise InvalidInputError(f"pixel indices must be in [0, {w_img * h_img}), got "
                                f"[{int(pixels.min())}, {int(pixels.max())}]")
    g = gaussians.cpu()
    dt = torch.float64
    proj = project_gaussians(g.means.to(dt), g.quats.to(dt), torch.exp(g.log_scales.to(dt)),
                             torch.sigmoid(g.opacities.to(dt)), camera.viewmat.to(dt), camera.K.to(dt),
                             w_img, h_img, near=settings.near, far=settings.far, eps2d=settings.eps2d,
                             radius_clip=settings.radius_clip)
    p = int(pixels.numel())
    odt = g.means.dtype
    empty = PixelBlend(pixels, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                       torch.zeros(0, dtype=odt), torch.zeros(p, dtype=odt), torch.zeros(p, dtype=odt), w_img, h_img)
    m = len(proj.index)
    if m == 0 or p == 0:
        return empty
    # front-to-back rank of every projected Gaussian (camera z, ties by input index)
    order = torch.argsort(proj.index, stable=True)
    order = order[torch.argsort(proj.depths[order], stable=True)]
    rank = torch.empty(m, dtype=torch.long)
    rank[order] = torch.arange(m)
    # Gaussian -> grid cells its box touches
    cx, cy = math.ceil(w_img / _CELL), math.ceil(h_img / _CELL)
    mx, my = proj.means2d[:, 0], proj.means2d[:, 1]
    rx, ry = proj.radii[:, 0].to(dt), proj.radii[:, 1].to(dt)
    x0 = torch.floor((mx - rx) / _CELL).clamp(0, cx - 1).long()
    x1 = torch.floor((mx + rx) / _CELL).clamp(0, cx - 1).long()
    y0 = torch.floor((my - ry) / _CELL).clamp(0, cy - 1).long()
    y1 = torch.floor((my + ry) / _CELL).clamp(0, cy - 1).long()
    span = x1 - x0 + 1
    per = span * (y1 - y0 + 1)
    gid = torch.repeat_interleave(torch.arange(m), per)
    local = torch.arange(len(gid)) - torch.repeat_interleave(torch.cumsum(per, 0) - per, per)
    cell = (y0[gid] + local // span[gid]) * cx + x0[gid] + local % span[gid]
    cell_sorted, perm = torch.sort(cell, stable=True)
    cell_g = gid[perm]
    counts = torch.bincount(cell_sorted, minlength=cx * cy)
    starts = torch.cumsum(counts, 0) - counts

    px = (pixels % w_img).to(dt) + 0.5
    py = (pixels // w_img).to(dt) + 0.5
    pcell = (pixels // w_img // _CELL) * cx + (pixels % w_img) // _CELL
    pcount = counts[pcell]
    conics, op, depths = proj.conics, proj.opacity, proj.depths
    pp, pg, pw = [], [], []
    alpha_out = torch.zeros(p, dtype=dt)
    depth_out = torch.zeros(p, dtype=dt)
    lo = 0
    while lo < p:  # chunks of pixels with a bounded number of candidate pairs
        csum = torch.cumsum(pcount[lo:], 0)
        hi = lo + max(1, int(torch.searchsorted(csum, torch.tensor(_MAX_PAIRS), right=True)))
        hi = min(hi, p)
        cnt = pcount[lo:hi]
        row = torch.repeat_interleave(torch.arange(lo, hi), cnt)
        off = torch.arange(int(cnt.sum())) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        gg = cell_g[starts[pcell[row]] + off]
        dx = mx[gg] - px[row]
        dy = my[gg] - py[row]
        sigma = 0.5 * (conics[gg, 0] * dx * dx + conics[gg, 2] * dy * dy) + conics[gg, 1] * dx * dy
        a = torch.clamp_max(op[gg] * torch.exp(-sigma), ALPHA_MAX)
        keep = (a >= ALPHA_MIN).nonzero().squeeze(1)
        row, gg, a = row[keep], gg[keep], a[keep]
        # sort by (pixel, front-to-back rank)
        key = row * m + rank[gg]
        srt = torch.argsort(key)
        row, gg, a = row[srt], gg[srt], a[srt]
        # inclusive transmittance per pixel: exp of the segmented cumulative sum of log(1 - a)
        la = torch.log1p(-a)
        cs = torch.cumsum(la, 0)
        seg_first = torch.ones_like(row, dtype=torch.bool)
        seg_first[1:] = row[1:] != row[:-1]
        first = torch.cummax(torch.where(seg_first, torch.arange(len(row)), torch.zeros_like(row)), 0).values
        before = cs[first] - la[first]  # sum of log(1 - a) before the pixel's first Gaussian (0)
        incl = torch.exp(cs - before)
        excl = torch.exp(cs - la - before)
        # transmittance only falls: the pixel stops at its first Gaussian with incl <= 1e-4
        w = torch.where(incl > T_MIN, a * excl, torch.zeros_like(a))
        nz = (w > 0).nonzero().squeeze(1)
        pp.append(row[nz])
        pg.append(gg[nz])
        pw.append(w[nz])
        alpha_out.index_add_(0, row[nz], w[nz])
        depth_out.index_add_(0, row[nz], w[nz] * depths[gg[nz]])
        lo = hi
    pair_pixel = torch.cat(pp)
    pair_g = proj.index[torch.cat(pg)]
    depth_out = torch.where(alpha_out > 0, depth_out / alpha_out.clamp_min(1e-10), torch.zeros_like(depth_out))
    out_dt = g.means.dtype
    return PixelBlend(pixels, pair_pixel, pair_g, torch.cat(pw).to(out_dt), alpha_out.to(out_dt),
                      depth_out.to(out_dt), w_img, h_img)
