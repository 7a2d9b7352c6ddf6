"""Pure-torch tile rasteriser (the CPU backend of :func:`chorus_ros.core.render.render`).

It reproduces gsplat 1.5.3's "classic" 3DGS rasterisation (see :mod:`.projection` for the
projection conventions):

* per pixel (centre at integer + 0.5) Gaussians are composited front to back in camera-z order
  (ties by index);
* ``alpha = min(0.999, opacity * exp(-sigma))`` with ``sigma = 0.5 d^T Sigma_2d^-1 d``, skipped
  when ``alpha < 1/255`` (gsplat also skips ``sigma < 0``, which for its positive-definite
  conics only rounding can produce; not reproduced);
* a pixel stops at the first Gaussian whose ``next_T = T * (1 - alpha)`` is ``<= 1e-4``; that
  Gaussian is *not* added (gsplat's exclusive check);
* ``rgb = sum w_i c_i + T_final * background``, ``alpha = 1 - T_final``,
  ``depth = sum w_i z_i / max(alpha, 1e-10)`` (gsplat 'ED'), ``features = sum w_i f_i``,
  with ``w_i = alpha_i T_i``; ``c_i = max(SH(d_i) + 0.5, 0)``, ``d_i`` = camera centre -> mean;
* ``weights`` (per Gaussian) ``= sum over pixels of w_i``; ``top_index`` per pixel is the
  Gaussian with the largest ``w_i`` (the front-most on ties), -1 where none contributes.

Design (vectorised, bounded memory):

1. project and cull (:func:`.projection.project_gaussians`);
2. bin into ``TILE_SIZE`` tiles with gsplat's box rule, drop tile-Gaussian pairs whose ellipse
   cannot reach alpha >= 1/255 at any pixel centre of the tile (exact rectangle minimum of the
   quadratic form), order by (tile, depth);
3. per pair, write ``log(opacity) - sigma`` as a quadratic form in the pixel offset from the
   tile centre (6 coefficients), so that one GEMM ``[pairs, 6] @ [6, pixels]`` gives all the
   exponents of a round (tile-centred offsets keep float32 cancellation below ~3e-6 in alpha);
4. advance all tiles with unfinished pixels together through their depth-ordered lists, K
   Gaussians at a time (K doubles per round, and grows at once when few tiles are left), in
   ``[tiles, K, pixels]`` tensors split into groups of at most ``MAX_ELEMENTS``: exp/clamp/1/255
   cut, transmittance by ``cumprod`` carried between rounds, the 1e-4 cut, compositing by
   ``bmm``. A tile leaves once its list is exhausted or all its pixels have stopped.

The image does not depend on the tile size or K (the culling is conservative), which the tests
check against a per-pixel loop. Without gradients the rounds work in place. With gradients,
autograd differentiates everything up to each round's exponents, and the round itself
(alphas, transmittance, cut-offs, compositing) has a hand-written backward
(:class:`_Composite`) that keeps one ``[tiles, K, pixels]`` tensor per round (about 2.5x less
memory than autograd through the ops, which :data:`FUSED_BACKWARD` = False selects and the
tests compare against). Gradients reach means, quats, log-scales, opacity logits, SH and
features.
"""
from __future__ import annotations

import math

import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera
from chorus_ros.core.render.api import RenderOutput, RenderSettings
from chorus_ros.core.render.projection import (ALPHA_MAX, ALPHA_MIN, T_MIN, Projected,
                                               project_gaussians)
from chorus_ros.core.render.sh import sh_to_rgb

__all__ = ["render", "rasterize", "MAX_ELEMENTS", "TILE_SIZE"]

MAX_ELEMENTS = 1_000_000
"""Upper bound on the elements of one ``[tiles, pixels, K]`` working tensor (memory/cache bound)."""
TILE_SIZE = 8
"""Tile edge used by this backend. The image does not depend on it (the boxes are conservative);
8 evaluates about half as many pixel-Gaussian pairs as gsplat's 16 on real scenes."""
_K_FIRST = 8
"""Gaussians per tile in the first round; doubled each round up to ``_K_MAX``."""
_K_MAX = 64
FUSED_BACKWARD = True
"""With gradients: use the hand-written backward of one round (:class:`_Composite`, saves one
``[tiles, K, pixels]`` tensor per round) instead of autograd through the torch ops (kept as the
tests' second reference)."""


def render(gaussians: GaussianArrays, camera: Camera, settings: RenderSettings, *,
           features: torch.Tensor | None = None, return_weights: bool = False,
           return_top_index: bool = False) -> RenderOutput:
    """Render one view on the CPU (or any device) with torch ops. See :func:`..api.render`."""
    n = len(gaussians)
    dtype = gaussians.means.dtype
    if not dtype.is_floating_point:
        raise InvalidInputError(f"Gaussian means must be floating point, got {dtype}")
    degree = gaussians.sh_degree if settings.sh_degree is None else int(settings.sh_degree)
    if not 0 <= degree <= gaussians.sh_degree:
        raise InvalidInputError(
            f"settings.sh_degree={settings.sh_degree} exceeds the Gaussians' SH degree {gaussians.sh_degree}")
    bg = torch.as_tensor(settings.background, dtype=dtype, device=gaussians.device).reshape(-1)
    if bg.shape != (3,):
        raise InvalidInputError(f"background must be 3 numbers, got {settings.background!r}")
    if not 0 < settings.near < settings.far:
        raise InvalidInputError(f"need 0 < near < far, got near={settings.near}, far={settings.far}")
    if features is not None and features.device != gaussians.device:
        raise InvalidInputError(f"features are on {features.device}, Gaussians on {gaussians.device}")

    proj = project_gaussians(
        gaussians.means, gaussians.quats, torch.exp(gaussians.log_scales),
        torch.sigmoid(gaussians.opacities), camera.viewmat, camera.K, camera.width, camera.height,
        near=settings.near, far=settings.far, eps2d=settings.eps2d, radius_clip=settings.radius_clip)

    campos = torch.linalg.inv(camera.viewmat.to(torch.float64))[:3, 3].to(dtype)
    dirs = gaussians.means[proj.index] - campos
    colors = sh_to_rgb(degree, dirs, gaussians.sh[proj.index])
    payload = [colors, proj.depths[:, None]]
    if features is not None:
        payload.append(features[proj.index].to(dtype))
    payload = torch.cat(payload, dim=1)

    acc, t_final, w_proj, top = rasterize(proj, payload, camera.width, camera.height,
                                          tile_size=TILE_SIZE, return_weights=return_weights,
                                          return_top_index=return_top_index)
    alpha = 1.0 - t_final
    rgb = acc[..., :3] + t_final[..., None] * bg
    depth = acc[..., 3] / alpha.clamp_min(1e-10)
    feats = acc[..., 4:] if features is not None else None

    radii = torch.zeros(n, dtype=torch.int32, device=gaussians.device)
    radii[proj.index] = proj.radii.max(dim=1).values
    weights = None
    if return_weights:
        weights = torch.zeros(n, dtype=dtype, device=gaussians.device).index_add(0, proj.index, w_proj)
    top_index = None
    if return_top_index:
        pad_index = torch.cat([proj.index, proj.index.new_full((1,), -1)])
        top_index = pad_index[torch.where(top >= 0, top, len(proj.index))]
    return RenderOutput(rgb=rgb, depth=depth, alpha=alpha, features=feats, weights=weights,
                        top_index=top_index, radii=radii, backend="reference")


def _min_sigma_on_rect(dxl, dxh, dyl, dyh, a, b, c):
    """Minimum of ``0.5 (a dx^2 + 2 b dx dy + c dy^2)`` over ``dx in [dxl, dxh], dy in [dyl, dyh]``.

    The form is positive definite: the minimum is 0 when the rectangle holds the origin, else it
    lies on an edge that faces the origin (at most one in x, one in y), where it is the clamped
    1D minimum along that edge.
    """
    inf = torch.full_like(dxl, math.inf)

    def edge(e, lo, hi, p, q):  # min over t in [lo, hi] of 0.5 (p e^2 + 2 b e t + q t^2)
        t = torch.minimum(torch.maximum(-b * e / q, lo), hi)
        return 0.5 * (p * e * e + 2.0 * b * e * t + q * t * t)
    ex = torch.where(dxl > 0, dxl, dxh)  # the x-edge nearer the origin (used if it faces it)
    ey = torch.where(dyl > 0, dyl, dyh)
    mx = torch.where((dxl > 0) | (dxh < 0), edge(ex, dyl, dyh, a, c), inf)
    my = torch.where((dyl > 0) | (dyh < 0), edge(ey, dxl, dxh, c, a), inf)
    m = torch.minimum(mx, my)
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


@torch.no_grad()
def _bin_tiles(proj: Projected, tile_size: int, width: int, height: int, tiles_x: int, tiles_y: int):
    """Tile-Gaussian intersections ordered by (tile, depth).

    Tiles come from gsplat's box rule (``floor((mean - r) / tile) .. ceil((mean + r) / tile)``);
    pairs whose ellipse cannot reach alpha >= 1/255 at any pixel centre of the tile are then
    dropped (exact minimum of the quadratic form over the tile's pixel-centre rectangle, with a
    1e-3 margin), which changes no pixel. Returns ``(gauss, starts, counts)``: ``gauss`` [I]
    projected indices grouped by tile, front to back within a tile (ties by index);
    ``starts``/``counts`` [tiles] each tile's slice.
    """
    dev = proj.means2d.device
    i32 = torch.int32
    order = torch.sort(proj.depths.detach(), stable=True).indices.to(i32)  # front to back

    def take(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # 1D gather (fast path)
        return v.index_select(0, idx)

    mx, my = take(proj.means2d.detach()[:, 0], order), take(proj.means2d.detach()[:, 1], order)
    rx, ry = (take(proj.radii[:, j], order).to(mx.dtype) for j in (0, 1))
    x0 = torch.floor((mx - rx) / tile_size).clamp(0, tiles_x).to(i32)
    x1 = torch.ceil((mx + rx) / tile_size).clamp(0, tiles_x).to(i32)
    y0 = torch.floor((my - ry) / tile_size).clamp(0, tiles_y).to(i32)
    y1 = torch.ceil((my + ry) / tile_size).clamp(0, tiles_y).to(i32)
    span_x = x1 - x0
    per = span_x * (y1 - y0)
    rank = torch.repeat_interleave(torch.arange(len(per), device=dev, dtype=i32), per)
    first = torch.cumsum(per, 0, dtype=i32) - per
    local = torch.arange(len(rank), device=dev, dtype=i32) - take(first, rank)
    sx = take(span_x, rank)
    tile_x = take(x0, rank) + local % sx
    tile_y = take(y0, rank) + local // sx
    # cull pairs by the ellipse-rectangle test
    mxr, myr = take(mx, rank), take(my, rank)
    con = proj.conics.detach()
    ca, cb, cc = (take(take(con[:, j], order), rank) for j in range(3))
    px_lo = (tile_x * tile_size).to(mx.dtype) + 0.5
    px_hi = torch.clamp_max(px_lo + (tile_size - 1), width - 0.5)
    py_lo = (tile_y * tile_size).to(mx.dtype) + 0.5
    py_hi = torch.clamp_max(py_lo + (tile_size - 1), height - 0.5)
    smin = _min_sigma_on_rect(mxr - px_hi, mxr - px_lo, myr - py_hi, myr - py_lo, ca, cb, cc)
    reach = take(torch.log(take(proj.opacity.detach(), order) / ALPHA_MIN), rank)
    keep = (smin <= reach + 1e-3).nonzero().squeeze(1)
    tile = take(tile_y * tiles_x + tile_x, keep)
    rank = take(rank, keep)
    tile_sorted, perm = torch.sort(tile, stable=True)
    gauss = take(order, take(rank, perm.to(i32))).long()
    counts = torch.bincount(tile_sorted, minlength=tiles_x * tiles_y)
    starts = torch.cumsum(counts, 0) - counts
    return gauss, tile_sorted, starts, counts


def rasterize(proj: Projected, payload: torch.Tensor, width: int, height: int, *,
              tile_size: int = TILE_SIZE, return_weights: bool = False,
              return_top_index: bool = False):
    """Composite ``payload`` ``[M, D]`` of the projected Gaussians front to back.

    Returns:
        ``acc`` [H, W, D] (sum of w_i * payload_i), ``t_final`` [H, W] transmittance left,
        ``weights`` [M] total blending weight per projected Gaussian (or None) and ``top``
        [H, W] int64 projected index of the largest-weight Gaussian per pixel, -1 where none
        (or None). Ties in weight go to the front-most Gaussian.
    """
    dev, dtype = payload.device, payload.dtype
    m, d = payload.shape
    tx = math.ceil(width / tile_size)
    ty = math.ceil(height / tile_size)
    n_tiles = tx * ty
    npix = tile_size * tile_size
    half = 0.5 * tile_size
    lp = torch.arange(npix, device=dev)
    # pixel centres relative to the tile centre (small numbers keep the expanded form accurate)
    lx = (lp % tile_size).to(dtype) + 0.5 - half
    ly = (lp // tile_size).to(dtype) + 0.5 - half
    feat_t = torch.stack([lx * lx, lx * ly, ly * ly, lx, ly, torch.ones_like(lx)])  # [6, P]
    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (payload, proj.means2d, proj.conics, proj.opacity))
    step = (_round_fused if FUSED_BACKWARD else _round_autograd) if grad else _round_nograd
    thresh = _below(ALPHA_MIN, dtype)

    out_tiles, out_acc, out_t, out_bid = [], [], [], []
    w_ids, w_vals = [], []
    if m > 0:
        gauss, isect_tile, starts, counts = _bin_tiles(proj, tile_size, width, height, tx, ty)
        n_isect = len(gauss)
        # per intersection: log(alpha) before clamping = log(opacity) - sigma, as a quadratic
        # form in the pixel offset from the tile centre: coef . (x^2, xy, y^2, x, y, 1)
        g32 = gauss.to(torch.int32)
        a_ = 0.5 * proj.conics[:, 0].index_select(0, g32)
        b_ = proj.conics[:, 1].index_select(0, g32)
        c_ = 0.5 * proj.conics[:, 2].index_select(0, g32)
        gx = proj.means2d[:, 0].index_select(0, g32) - ((isect_tile % tx) * tile_size).to(dtype) - half
        gy = proj.means2d[:, 1].index_select(0, g32) - ((isect_tile // tx) * tile_size).to(dtype) - half
        lop = torch.log(proj.opacity).index_select(0, g32)
        coef_tab = torch.stack([-a_, -b_, -c_, 2 * a_ * gx + b_ * gy, 2 * c_ * gy + b_ * gx,
                                lop - (a_ * gx + b_ * gy) * gx - c_ * gy * gy], dim=1)
        sentinel = torch.zeros(1, 6, dtype=dtype, device=dev)
        sentinel[0, 5] = -math.inf  # alpha 0 for padding slots
        coef_tab = torch.cat([coef_tab, sentinel])  # [I + 1, 6]
        gauss_pad = torch.cat([gauss, gauss.new_full((1,), m)])
        pay_tab = torch.cat([payload, payload.new_zeros(1, d)])  # [M + 1, D]

        act = (counts > 0).nonzero().squeeze(1)
        t_cur = torch.ones(len(act), npix, dtype=dtype, device=dev)
        done = ((((act % tx) * tile_size).to(dtype) + half)[:, None] + lx[None] > width) | \
               ((((act // tx) * tile_size).to(dtype) + half)[:, None] + ly[None] > height)
        acc = torch.zeros(len(act), npix, d, dtype=dtype, device=dev)
        best_w = torch.zeros(len(act), npix, dtype=dtype, device=dev)
        best_id = torch.full((len(act), npix), -1, dtype=torch.long, device=dev)
        cnt, beg = counts[act], starts[act]
        offset, k_sched = 0, _K_FIRST
        while len(act) > 0:
            # K grows with the rounds, and at once when few tiles are left (long, unsaturated lists)
            k = max(k_sched, MAX_ELEMENTS // (len(act) * npix))
            k = max(1, min(k, int(cnt.max()) - offset))
            kk = offset + torch.arange(k, device=dev)
            pos = torch.where(kk[None, :] < cnt[:, None], beg[:, None] + kk[None, :], n_isect)  # [A, K]
            gid = gauss_pad[pos]
            group = max(1, MAX_ELEMENTS // (npix * k))
            res = []
            for i in range(0, len(act), group):
                sl = slice(i, i + group)
                p_flat, g_flat = pos[sl].reshape(-1), gid[sl].reshape(-1)
                na = len(p_flat) // k
                logit = (coef_tab.index_select(0, p_flat) @ feat_t).view(na, k, npix)
                pay = pay_tab.index_select(0, g_flat).view(na, k, d)
                res.append(step(logit, pay, thresh, t_cur[sl], done[sl], acc[sl],
                                return_weights, return_top_index))
            if len(res) == 1:
                t_cur, done, acc = res[0][:3]
            else:
                t_cur = torch.cat([r[0] for r in res])
                done = torch.cat([r[1] for r in res])
                acc = torch.cat([r[2] for r in res])
            if return_weights:
                w_ids.append(gid.reshape(-1))
                w_vals.append(torch.cat([r[3] for r in res]).reshape(-1))  # padding: id m, weight 0
            if return_top_index:
                wmax = torch.cat([r[4] for r in res])
                kmax = torch.cat([r[5] for r in res])
                better = wmax > best_w
                best_w = torch.where(better, wmax, best_w)
                best_id = torch.where(better, gid.gather(1, kmax), best_id)
            offset += k
            k_sched = min(2 * k_sched, _K_MAX)
            finished = (cnt <= offset) | done.all(dim=1)
            if bool(finished.any()):
                fin = finished.nonzero().squeeze(1)
                out_tiles.append(act[fin])
                out_acc.append(acc[fin])
                out_t.append(t_cur[fin])
                out_bid.append(best_id[fin])
                keep = (~finished).nonzero().squeeze(1)
                act, cnt, beg = act[keep], cnt[keep], beg[keep]
                t_cur, done, acc = t_cur[keep], done[keep], acc[keep]
                best_w, best_id = best_w[keep], best_id[keep]

    acc_img = torch.zeros(n_tiles, npix, d, dtype=dtype, device=dev)
    t_img = torch.ones(n_tiles, npix, dtype=dtype, device=dev)
    top_img = torch.full((n_tiles, npix), -1, dtype=torch.long, device=dev)
    if out_tiles:
        tiles = torch.cat(out_tiles)
        acc_img = acc_img.index_copy(0, tiles, torch.cat(out_acc))
        t_img = t_img.index_copy(0, tiles, torch.cat(out_t))
        if return_top_index:
            top_img = top_img.index_copy(0, tiles, torch.cat(out_bid))

    def to_image(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(ty, tx, tile_size, tile_size, *x.shape[2:]).transpose(1, 2)
        return x.reshape(ty * tile_size, tx * tile_size, *x.shape[4:])[:height, :width]

    weights = None
    if return_weights:
        weights = torch.zeros(m + 1, dtype=dtype, device=dev)
        if w_ids:
            weights = weights.index_add(0, torch.cat(w_ids), torch.cat(w_vals))
        weights = weights[:m]
    top = to_image(top_img) if return_top_index else None
    return to_image(acc_img), to_image(t_img), weights, top


def _below(x: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``dtype(x)``: ``v > _below(x)`` is ``v >= x`` in ``dtype``."""
    t = torch.tensor(x, dtype=dtype)
    return float(torch.nextafter(t, torch.zeros_like(t)))


# One round for a group of A tiles and K Gaussians per tile, layout [A, K, P]. logit [A, K, P]
# log(opacity) - sigma; pay [A, K, D]; thresh: alphas <= this are dropped (i.e. alpha < 1/255);
# t [A, P] transmittance; done [A, P]; acc [A, P, D]. Returns (t, done, acc, weight per slot
# summed over pixels [A, K] or None, per-pixel max weight and its slot [A, P] or None). Both
# variants compute the same numbers; the no-grad one works in place.

def _round_autograd(logit, pay, thresh, t, done, acc, want_w, want_top):
    alpha = torch.nn.functional.threshold(torch.clamp_max(torch.exp(logit), ALPHA_MAX), thresh, 0.0)
    zero = torch.zeros((), dtype=alpha.dtype, device=alpha.device)
    t_in = torch.where(done, zero, t)[:, None, :]
    incl = torch.cumprod(1.0 - alpha, dim=1) * t_in
    excl = torch.cat([t_in, incl[:, :-1]], dim=1)
    w = torch.where(incl > T_MIN, alpha * excl, zero)
    acc = torch.baddbmm(acc, w.transpose(1, 2), pay)
    t = t - w.sum(dim=1)
    done = done | (incl[:, -1] <= T_MIN)
    wmax, kmax = w.detach().max(dim=1) if want_top else (None, None)
    return t, done, acc, (w.sum(dim=2) if want_w else None), wmax, kmax


@torch.no_grad()
def _round_nograd(logit, pay, thresh, t, done, acc, want_w, want_top):
    alpha = torch.nn.functional.threshold_(logit.exp_().clamp_max_(ALPHA_MAX), thresh, 0.0)
    t_in = t.masked_fill(done, 0.0)
    incl = torch.rsub(alpha, 1.0).cumprod_(dim=1).mul_(t_in[:, None, :])
    alpha[:, 1:].mul_(incl[:, :-1])
    alpha[:, 0].mul_(t_in)  # alpha * exclusive transmittance
    w = alpha.masked_fill_(incl <= T_MIN, 0.0)
    acc = torch.baddbmm(acc, w.transpose(1, 2), pay)
    t = t - w.sum(dim=1)
    done = done | (incl[:, -1] <= T_MIN)
    wmax, kmax = w.max(dim=1) if want_top else (None, None)
    return t, done, acc, (w.sum(dim=2) if want_w else None), wmax, kmax


class _Composite(torch.autograd.Function):
    """One round's alphas and compositing with a hand-written backward.

    Forward (same numbers as :func:`_round_nograd`): ``alpha = cut(min(0.999, exp(logit)))``,
    ``w_k = alpha_k * t_in * prod_{j<k} (1 - alpha_j)`` where the running transmittance stays
    above 1e-4, else 0. Outputs ``sum_k w_k pay_k`` [A, P, D], ``sum_k w_k`` [A, P],
    ``sum_p w_k`` [A, K] and, without gradient, the last inclusive transmittance [A, P] and the
    per-pixel max weight and its slot.

    Backward, with ``G_k = dL/dw_k`` and the stop mask held fixed:
    ``dL/dalpha_k = G_k excl_k - sum_{j>k} G_j w_j / (1 - alpha_k)``,
    ``dL/dt_in = sum_k G_k w_k / t_in``, ``dL/dpay_k = sum_p w_k dL/dacc``,
    ``dL/dlogit = alpha dL/dalpha`` where alpha is neither cut nor clamped.
    """

    @staticmethod
    def forward(ctx, logit, pay, t_in, thresh):
        with torch.no_grad():
            alpha = torch.nn.functional.threshold_(logit.exp().clamp_max_(ALPHA_MAX), thresh, 0.0)
            cp = torch.rsub(alpha, 1.0).cumprod_(dim=1)  # prod_{j<=k} (1 - alpha_j)
            incl = cp * t_in[:, None, :]
            w = alpha.clone()
            w[:, 1:].mul_(incl[:, :-1])
            w[:, 0].mul_(t_in)
            w.masked_fill_(incl <= T_MIN, 0.0)
            acc = torch.bmm(w.transpose(1, 2), pay)
            wmax, kmax = w.max(dim=1)
            out = (acc, w.sum(dim=1), w.sum(dim=2), incl[:, -1].clone(), wmax, kmax)
        ctx.save_for_backward(alpha, pay, t_in)
        ctx.mark_non_differentiable(out[3], out[4], out[5])
        return out

    @staticmethod
    def backward(ctx, g_acc, g_wp, g_wk, _g_last, _g_wmax, _g_kmax):
        alpha, pay, t_in = ctx.saved_tensors
        one_m = torch.rsub(alpha, 1.0)
        cp = torch.cumprod(one_m, dim=1)
        excl = torch.empty_like(cp)  # prod_{j<k} (1 - alpha_j), 0 where the pixel has stopped
        excl[:, 0] = 1.0
        excl[:, 1:] = cp[:, :-1]
        excl.masked_fill_(cp <= (T_MIN / t_in)[:, None, :], 0.0)  # t_in = 0 (done): all stopped
        del cp
        ea = excl * alpha  # w / t_in
        t3 = t_in[:, None, :]
        if g_acc is not None:
            grad = torch.bmm(pay, g_acc.transpose(1, 2))  # G = dL/dw, [A, K, P]
        else:
            grad = torch.zeros_like(alpha)
        if g_wp is not None:
            grad.add_(g_wp[:, None, :])
        if g_wk is not None:
            grad.add_(g_wk[:, :, None])
        gw = grad * ea
        g_t = gw.sum(dim=1)
        gw.mul_(t3)  # G_k w_k
        # sum_{j>k} G_j w_j as total minus inclusive prefix
        suffix = torch.cumsum(gw, dim=1).neg_().add_(gw.sum(dim=1, keepdim=True))
        g_alpha = grad.mul_(excl).mul_(t3).sub_(suffix.div_(one_m))
        g_logit = g_alpha.mul_(alpha).masked_fill_(alpha >= ALPHA_MAX, 0.0)
        g_pay = torch.bmm(ea, g_acc * t_in[:, :, None]) if g_acc is not None else None
        return g_logit, g_pay, g_t, None


def _round_fused(logit, pay, thresh, t, done, acc, want_w, want_top):
    t_in = torch.where(done, torch.zeros((), dtype=t.dtype, device=t.device), t)
    acc_d, w_p, w_k, last, wmax, kmax = _Composite.apply(logit, pay, t_in, thresh)
    return (t - w_p, done | (last <= T_MIN), acc + acc_d, (w_k if want_w else None),
            (wmax if want_top else None), (kmax if want_top else None))
