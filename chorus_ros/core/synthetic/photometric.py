"""Gaussians fitted photometrically to rendered views, as a real 3DGS map is made.

The procedural generator places one flat, opaque (0.9-0.99) Gaussian per surface sample. A map
from photometric 3DGS optimisation looks different: it starts from a sparse, noisy point cloud
with isotropic Gaussians of low opacity, and the optimiser stretches, fades and moves them until
the renders match the images. Many Gaussians end up nearly transparent or tiny, others long and
thin, some float in free space. :func:`fit_scene` reproduces that process on a synthetic room
with the package's differentiable renderer (:mod:`chorus_ros.core.render.reference`, on the CPU):

1. target images: the room rendered from ``views`` cameras on its trajectory;
2. initialisation (as 3DGS from SfM points): a random ``init_fraction`` of the room's Gaussian
   centres, moved by ``init_noise``, isotropic with the mean distance to their 3 nearest
   neighbours, opacity ``init_opacity``, the colour of their source plus noise; plus
   ``floater_fraction`` points placed on camera rays in front of a surface (floaters);
3. Adam on positions, log-scales, rotations, opacity logits and colours for ``steps`` steps, one
   random view per step, L1 photometric loss, with the adaptive density control of 3DGS
   (Kerbl et al. 2023, section 5.2) when ``densify`` is on: every ``densify_every`` steps between
   ``densify_from`` and ``densify_until``, Gaussians whose average screen-space position gradient
   exceeds ``grad_threshold`` are cloned (small ones) or split in two (largest axis above
   ``percent_dense`` of the scene extent, children drawn from the parent's distribution with
   scales / 1.6); Gaussians whose opacity fell under ``prune_opacity`` or whose largest axis
   exceeds ``prune_size`` of the extent are removed; opacities are reset to at most
   ``reset_opacity`` every ``opacity_reset_every`` steps. The position learning rate decays
   exponentially from ``lr_means`` to ``lr_means_final`` (both times the scene extent), as in 3DGS.
   The screen-space gradient of a Gaussian is taken from its world-space position gradient
   (``|dL/dx| * depth / fx``, exact for motion parallel to the image plane), in 3DGS's NDC units.

Labels: every fitted Gaussian keeps the class and instance of the source Gaussian it descends from
(``label_from="init"``; clones and split children inherit; floaters: the surface behind them), or
takes those of the source Gaussian nearest to its final centre (``label_from="nearest"``, the way
labels of a real scan's mesh are transferred to a 3DGS map of it).
Results are cached (safetensors) under ``cache_dir`` keyed by the scene and the fit settings.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.plain_cloud import knn_mean_distance

__all__ = ["PhotometricFitConfig", "FitResult", "fit_gaussians", "fit_scene", "gaussian_statistics", "scene_extent",
           "screen_gradient", "GS3D_RECIPE"]


GS3D_RECIPE: dict = {
    "lr_means": 1.6e-4, "lr_means_final": 1.6e-6, "extent_relative_lr": True, "lr_scales": 0.005,
    "lr_quats": 0.001, "lr_opacity": 0.05, "lr_colour": 0.0025, "densify": True, "densify_from": 100,
    "densify_until": 1000, "densify_every": 100, "grad_threshold": 0.0002, "percent_dense": 0.01,
    "prune_opacity": 0.005, "prune_size": 0.1, "opacity_reset_every": 600, "reset_opacity": 0.01,
    "label_from": "nearest",
}
"""3DGS's optimiser settings (Kerbl et al. 2023: learning rates, adaptive density control, opacity
reset) for :class:`PhotometricFitConfig`, with the density-control schedule compressed to a fit of
a few thousand steps (densify until step 1000, reset at 600) instead of 30 000; labels transferred
from the nearest source Gaussian. The shift suite's ``photometric`` shift uses it."""


@dataclass
class PhotometricFitConfig:
    """Settings of the photometric fit."""

    steps: int = 300
    """Optimisation steps (one view each)."""
    views: int = 16
    """Target views (12 on the trajectory's loop, the rest random)."""
    width: int = 96
    """Target image width, pixels."""
    height: int = 72
    """Target image height, pixels."""
    init_fraction: float = 0.7
    """Fraction of the source Gaussians' centres used as initial points."""
    init_noise: float = 0.01
    """Std of the noise on the initial points, metres."""
    init_opacity: float = 0.1
    """Initial opacity (3DGS uses 0.1)."""
    floater_fraction: float = 0.05
    """Extra initial points on camera rays 20-80 % of the way to a surface, as a fraction of the initial points."""
    lr_means: float = 0.002
    """Adam learning rate of positions, metres."""
    lr_scales: float = 0.02
    """Adam learning rate of log-scales."""
    lr_quats: float = 0.002
    """Adam learning rate of quaternions."""
    lr_opacity: float = 0.05
    """Adam learning rate of opacity logits."""
    lr_colour: float = 0.01
    """Adam learning rate of colours (SH DC)."""
    lr_means_final: float | None = None
    """Final position learning rate (exponential decay over the steps); None: constant ``lr_means``."""
    extent_relative_lr: bool = False
    """Multiply ``lr_means``/``lr_means_final`` by the scene extent (3DGS's convention)."""
    densify: bool = False
    """Adaptive density control (clone, split, prune, opacity reset) as in 3DGS."""
    densify_from: int = 100
    """First step of density control."""
    densify_until: int = 1500
    """Last step of density control (clones/splits; pruning stops too)."""
    densify_every: int = 100
    """Steps between density-control rounds."""
    grad_threshold: float = 0.0002
    """Average screen-space position gradient (NDC units, as 3DGS) above which a Gaussian is densified."""
    percent_dense: float = 0.01
    """Largest axis, as a fraction of the scene extent, above which a densified Gaussian is split, not cloned."""
    prune_opacity: float = 0.005
    """Gaussians whose opacity falls under this are removed at each density-control round."""
    prune_size: float = 0.1
    """Gaussians whose largest axis exceeds this fraction of the scene extent are removed (after the first reset)."""
    opacity_reset_every: int = 1000
    """Steps between opacity resets (0: never); resets happen only while densifying."""
    reset_opacity: float = 0.01
    """Opacities are clamped to at most this at a reset."""
    max_gaussians: int = 0
    """Upper bound on the number of Gaussians (0: 4x the initial count)."""
    label_from: str = "init"
    """'init': labels of the source Gaussian a fitted one descends from; 'nearest': of the source Gaussian nearest its final centre."""
    seed: int = 0
    """Random seed of the initialisation and the view order."""

    def validate(self) -> None:
        if self.steps < 0 or self.views < 1 or self.width < 8 or self.height < 8:
            raise InvalidInputError(f"photometric fit needs steps >= 0, views >= 1, images >= 8 px; got {self}")
        if not 0 < self.init_fraction <= 1 or not 0 < self.init_opacity < 1 or self.floater_fraction < 0:
            raise InvalidInputError("photometric fit: init_fraction in (0, 1], init_opacity in (0, 1), "
                                    "floater_fraction >= 0")
        if not 0 < self.reset_opacity < 1 or self.opacity_reset_every < 0 or self.prune_opacity < 0:
            raise InvalidInputError("photometric fit: reset_opacity in (0, 1), opacity_reset_every >= 0, "
                                    f"prune_opacity >= 0; got {self.reset_opacity}, {self.opacity_reset_every}, "
                                    f"{self.prune_opacity}")
        if self.lr_means_final is not None and self.lr_means_final <= 0:
            raise InvalidInputError(f"photometric fit: lr_means_final must be > 0 or None, got {self.lr_means_final}")
        if self.label_from not in ("init", "nearest"):
            raise InvalidInputError(f"photometric fit: label_from must be 'init' or 'nearest', got {self.label_from!r}")
        if self.densify and (self.densify_every < 1 or self.grad_threshold <= 0 or self.percent_dense <= 0):
            raise InvalidInputError("photometric fit: densify_every >= 1, grad_threshold > 0, percent_dense > 0")


@dataclass
class FitResult:
    """Fitted Gaussians and their provenance."""

    gaussians: GaussianArrays
    """Fitted Gaussians (world frame), extras copied from their source Gaussians."""
    source: torch.Tensor
    """[M] int64 index of the source Gaussian each fitted one was initialised from."""
    losses: list[float]
    """L1 loss per step."""


def scene_extent(cameras: list) -> float:
    """3DGS's scene extent: 1.1 x the largest distance of a camera centre from their mean, metres."""
    centres = torch.stack([torch.linalg.inv(c.viewmat.double())[:3, 3] for c in cameras])
    return float(1.1 * (centres - centres.mean(0)).norm(dim=1).max().clamp_min(1e-3))


def screen_gradient(grad_means: torch.Tensor, means: torch.Tensor, camera) -> torch.Tensor:
    """``[N]`` densification statistic of each Gaussian: ``|dL/dx| * depth / fx * width / 2``,
    from the world-space loss gradient ``grad_means`` ``[N, 3]``.

    A screen displacement ``du`` (pixels) moves the centre by ``du * depth / fx`` parallel to the
    image plane, and NDC spans the width in 2 units, so for a gradient parallel to the image plane
    this is the norm of the gradient w.r.t. the projected centre in NDC units of the *width* (both
    axes scaled by ``width / 2``; 3DGS scales y by ``height / 2``). The norm includes the component
    along the viewing ray, so off the optical axis it reads somewhat higher than 3DGS's statistic
    (about 1 % at 16 degrees, 11 % at 28 degrees): the 3DGS threshold densifies a little more
    readily here. The statistic is only compared with ``grad_threshold``.
    """
    vm = camera.viewmat.to(means.dtype)
    depth = (means.detach() @ vm[:3, :3].T + vm[:3, 3])[:, 2].abs()
    fx = float(camera.K[0, 0])
    return grad_means.norm(dim=1) * depth / fx * (camera.width / 2.0)


def _nearest_index(query: torch.Tensor, ref: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``[M]`` index of the nearest ``ref`` point ``[N, 3]`` to each ``query`` point ``[M, 3]``."""
    out = torch.empty(query.shape[0], dtype=torch.int64)
    for i in range(0, query.shape[0], chunk):
        out[i:i + chunk] = torch.cdist(query[i:i + chunk], ref).argmin(1)
    return out


def _replace_param(opt: torch.optim.Adam, params: dict, name: str, value: torch.Tensor, keep: torch.Tensor,
                   n_new: int) -> None:
    """Swap ``params[name]`` for ``value`` (rows: the kept old rows, then ``n_new`` new rows); the
    Adam moments of kept rows carry over, new rows start from zero (as 3DGS)."""
    old = params[name]
    new = value.detach().clone().requires_grad_(True)
    for group in opt.param_groups:
        if group["params"][0] is old:
            group["params"] = [new]
            st = opt.state.pop(old, None)
            if st:
                pad = (n_new,) + tuple(old.shape[1:])
                opt.state[new] = {
                    "step": st["step"],
                    "exp_avg": torch.cat([st["exp_avg"][keep], st["exp_avg"].new_zeros(pad)]),
                    "exp_avg_sq": torch.cat([st["exp_avg_sq"][keep], st["exp_avg_sq"].new_zeros(pad)]),
                }
    params[name] = new


def _density_control(params: dict, opt: torch.optim.Adam, idx: torch.Tensor, grad: torch.Tensor,
                     cfg: PhotometricFitConfig, extent: float, cap: int, gen: torch.Generator, *,
                     prune_big: bool) -> torch.Tensor:
    """One round of 3DGS's adaptive density control on ``params`` (in place); returns the new
    ``[M']`` source index of every Gaussian."""
    from chorus_ros.core.encoder.features import quats_wxyz_to_rotmats
    with torch.no_grad():
        log_s = params["log_scales"].detach()
        smax = log_s.exp().max(1).values
        opacity = torch.sigmoid(params["opacities"].detach())
        prune = opacity < cfg.prune_opacity
        if prune_big:
            prune |= smax > cfg.prune_size * extent
        sel = (grad >= cfg.grad_threshold) & ~prune
        big = smax > cfg.percent_dense * extent
        # respect the cap: a split adds one Gaussian net, a clone one; keep the strongest gradients
        room = max(0, cap - int((~prune).sum()))
        if int(sel.sum()) > room:
            order = torch.argsort(torch.where(sel, grad, torch.full_like(grad, -1.0)), descending=True)
            sel = torch.zeros_like(sel)
            sel[order[:room]] = True
        split = sel & big
        clone = sel & ~big
        keep = ~(prune | split)
        c_idx = torch.nonzero(clone).squeeze(1)
        s_idx = torch.nonzero(split).squeeze(1).repeat(2)
        # split children: centres drawn from the parent Gaussian, scales / 1.6
        rot = quats_wxyz_to_rotmats(params["quats"].detach()[s_idx])
        local = torch.randn(len(s_idx), 3, generator=gen) * log_s[s_idx].exp()
        child_means = params["means"].detach()[s_idx] + (rot @ local[:, :, None])[:, :, 0]
        new_rows = {
            "means": torch.cat([params["means"].detach()[c_idx], child_means]),
            "log_scales": torch.cat([log_s[c_idx], log_s[s_idx] - math.log(1.6)]),
            "quats": params["quats"].detach()[torch.cat([c_idx, s_idx])],
            "opacities": params["opacities"].detach()[torch.cat([c_idx, s_idx])],
            "dc": params["dc"].detach()[torch.cat([c_idx, s_idx])],
        }
        n_new = len(c_idx) + len(s_idx)
        for name, rows in new_rows.items():
            value = torch.cat([params[name].detach()[keep], rows])
            _replace_param(opt, params, name, value, keep, n_new)
        return torch.cat([idx[keep], idx[c_idx], idx[s_idx]])


def _reset_opacity(params: dict, opt: torch.optim.Adam, ceiling: float) -> None:
    """Clamp every opacity to at most ``ceiling`` and restart its Adam moments (3DGS's reset)."""
    with torch.no_grad():
        cap = math.log(ceiling / (1 - ceiling))
        value = params["opacities"].detach().clamp(max=cap)
        # every row restarts its moments: no old row is kept, all n rows count as new
        n = len(value)
        _replace_param(opt, params, "opacities", value, torch.zeros(n, dtype=torch.bool), n)


def fit_gaussians(source: GaussianArrays, cameras: list, cfg: PhotometricFitConfig,
                  targets: list[torch.Tensor] | None = None) -> FitResult:
    """Fit Gaussians photometrically to renders of ``source`` (see the module docstring).

    Args:
        source: N source Gaussians (world frame); extras (labels, instances) are carried over.
        cameras: target views.
        cfg: fit settings.
        targets: optional ``[H, W, 3]`` target images (default: renders of ``source``).
    """
    from chorus_ros.core.render.reference import render
    from chorus_ros.core.render.api import RenderSettings
    cfg.validate()
    settings = RenderSettings(backend="reference")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    if targets is None:
        with torch.no_grad():
            targets = [render(source, c, settings).rgb for c in cameras]
    n = len(source)
    m = max(1, int(round(cfg.init_fraction * n)))
    idx = torch.randperm(n, generator=gen)[:m]
    means = source.means[idx].float() + torch.randn(m, 3, generator=gen) * cfg.init_noise
    # floaters: points on the ray from a camera centre to a surface point
    nf = int(round(cfg.floater_fraction * m))
    if nf > 0:
        fidx = idx[torch.randint(m, (nf,), generator=gen)]
        cams = torch.stack([torch.linalg.inv(c.viewmat.double())[:3, 3].float() for c in cameras])
        centre = cams[torch.randint(len(cameras), (nf,), generator=gen)]
        t = 0.2 + 0.6 * torch.rand(nf, 1, generator=gen)
        fmeans = centre + t * (source.means[fidx].float() - centre)
        idx = torch.cat([idx, fidx])
        means = torch.cat([means, fmeans])
    m = len(idx)
    log_s = torch.log(knn_mean_distance(means).clamp(1e-4, 0.5))[:, None].repeat(1, 3)
    rgb = (source.base_rgb[idx].float() + 0.05 * torch.randn(m, 3, generator=gen)).clamp(0.0, 1.0)
    params = {
        "means": means.clone().requires_grad_(True),
        "log_scales": log_s.requires_grad_(True),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(m, 1).requires_grad_(True),
        "opacities": torch.full((m,), math.log(cfg.init_opacity / (1 - cfg.init_opacity))).requires_grad_(True),
        "dc": rgb_to_sh_dc(rgb).requires_grad_(True),
    }
    extent = scene_extent(cameras)
    unit = extent if cfg.extent_relative_lr else 1.0
    lr0 = cfg.lr_means * unit
    lr1 = (cfg.lr_means if cfg.lr_means_final is None else cfg.lr_means_final) * unit
    opt = torch.optim.Adam([
        {"params": [params["means"]], "lr": lr0, "name": "means"},
        {"params": [params["log_scales"]], "lr": cfg.lr_scales, "name": "log_scales"},
        {"params": [params["quats"]], "lr": cfg.lr_quats, "name": "quats"},
        {"params": [params["opacities"]], "lr": cfg.lr_opacity, "name": "opacities"},
        {"params": [params["dc"]], "lr": cfg.lr_colour, "name": "dc"},
    ], eps=1e-15)
    cap = cfg.max_gaussians or 4 * m
    grad_acc = torch.zeros(m)
    seen = torch.zeros(m)
    losses = []
    for step in range(cfg.steps):
        if cfg.steps > 1 and lr1 != lr0:
            opt.param_groups[0]["lr"] = lr0 * (lr1 / lr0) ** (step / (cfg.steps - 1))
        v = int(torch.randint(len(cameras), (1,), generator=gen))
        g = GaussianArrays(params["means"], params["dc"][:, None, :], params["opacities"], params["log_scales"],
                           params["quats"])
        out = render(g, cameras[v], settings)
        loss = (out.rgb - targets[v]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        densifying = cfg.densify and step < cfg.densify_until
        if densifying:
            with torch.no_grad():
                vis = out.radii > 0
                grad_acc[vis] += screen_gradient(params["means"].grad, params["means"], cameras[v])[vis]
                seen[vis] += 1
        opt.step()
        with torch.no_grad():
            params["log_scales"].clamp_(math.log(1e-4), math.log(3.0))
        losses.append(float(loss.detach()))
        done = step + 1
        if densifying and done >= cfg.densify_from and done % cfg.densify_every == 0:
            idx = _density_control(params, opt, idx, grad_acc / seen.clamp_min(1), cfg, extent, cap, gen,
                                   prune_big=cfg.opacity_reset_every > 0 and done > cfg.opacity_reset_every)
            grad_acc = torch.zeros(len(idx))
            seen = torch.zeros(len(idx))
        if densifying and cfg.opacity_reset_every > 0 and done % cfg.opacity_reset_every == 0:
            _reset_opacity(params, opt, cfg.reset_opacity)
    m = len(idx)
    if cfg.label_from == "nearest":
        with torch.no_grad():
            label_src = _nearest_index(params["means"].detach(), source.means.float())
    else:
        label_src = idx
    extras = {k: v[label_src].clone() for k, v in source.extras.items()}
    with torch.no_grad():
        q = params["quats"] / params["quats"].norm(dim=1, keepdim=True).clamp_min(1e-12)
        fitted = GaussianArrays(params["means"].detach().clone(), params["dc"].detach()[:, None, :].clone(),
                                params["opacities"].detach().clone(), params["log_scales"].detach().clone(),
                                q.clone(), torch.arange(m, dtype=torch.int64), extras)
    return FitResult(fitted, idx, losses)


def _cache_path(cache_dir: str, scene, cfg: PhotometricFitConfig) -> Path:
    key = json.dumps({"scene": asdict(scene.config), "n": len(scene.gaussians), "fit": asdict(cfg), "v": 2},
                     sort_keys=True, default=str)
    return Path(cache_dir) / f"photometric_{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def fit_scene(scene, cfg: PhotometricFitConfig | None = None, *, cache_dir: str | None = ".cache/shifts"):
    """A copy of ``scene`` (a :class:`~chorus_ros.core.synthetic.room.SyntheticScene`) whose
    Gaussians are fitted photometrically to its own rendered views (cached)."""
    from safetensors.torch import load_file, save_file

    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    cfg = cfg or PhotometricFitConfig()
    path = _cache_path(cache_dir, scene, cfg) if cache_dir else None
    if path is not None and path.is_file():
        t = load_file(str(path))
        extras = {k[len("extra."):]: v for k, v in t.items() if k.startswith("extra.")}
        g = GaussianArrays(t["means"], t["sh"], t["opacities"], t["log_scales"], t["quats"], t["ids"], extras)
        return replace(scene, gaussians=g)
    loop = min(cfg.views, 12)
    traj = make_trajectory(scene, TrajectoryConfig(loop_views=loop, random_views=cfg.views - loop, width=cfg.width,
                                                   height=cfg.height, seed=int(scene.seed) + 777))
    res = fit_gaussians(scene.gaussians, traj.cameras, cfg)
    g = res.gaussians
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        t = {"means": g.means, "sh": g.sh, "opacities": g.opacities, "log_scales": g.log_scales, "quats": g.quats,
             "ids": g.ids, **{f"extra.{k}": v.contiguous() for k, v in g.extras.items()}}
        save_file({k: v.contiguous() for k, v in t.items()}, str(path))
    return replace(scene, gaussians=g)


def gaussian_statistics(g: GaussianArrays) -> dict[str, float]:
    """The statistics the issue quotes for a real photometric 3DGS (fractions in [0, 1], metres)."""
    s = g.scales.float()
    op = g.opacity.float()
    smax, smin = s.max(1).values, s.min(1).values
    tiny = smax < 1e-3
    return {
        "gaussians": float(len(g)),
        "median_opacity": float(op.median()),
        "frac_opacity_below_0.1": float((op < 0.1).float().mean()),
        "frac_opacity_above_0.9": float((op > 0.9).float().mean()),
        "frac_largest_axis_below_1mm": float(tiny.float().mean()),
        "median_opacity_of_sub_mm": float(op[tiny].median()) if bool(tiny.any()) else float("nan"),
        "frac_largest_axis_above_10cm": float((smax > 0.1).float().mean()),
        "max_largest_axis": float(smax.max()),
        "median_axis_ratio": float((smax / smin.clamp_min(1e-12)).median()),
    }
