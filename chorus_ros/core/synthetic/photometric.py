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
   random view per step, L1 photometric loss (no densification, no pruning).

Labels: every fitted Gaussian keeps the class and instance of the source Gaussian it was
initialised from (floaters: of the surface behind them), wherever the optimiser moves it.
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

__all__ = ["PhotometricFitConfig", "FitResult", "fit_gaussians", "fit_scene", "gaussian_statistics"]


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
    seed: int = 0
    """Random seed of the initialisation and the view order."""

    def validate(self) -> None:
        if self.steps < 0 or self.views < 1 or self.width < 8 or self.height < 8:
            raise InvalidInputError(f"photometric fit needs steps >= 0, views >= 1, images >= 8 px; got {self}")
        if not 0 < self.init_fraction <= 1 or not 0 < self.init_opacity < 1 or self.floater_fraction < 0:
            raise InvalidInputError("photometric fit: init_fraction in (0, 1], init_opacity in (0, 1), "
                                    "floater_fraction >= 0")


@dataclass
class FitResult:
    """Fitted Gaussians and their provenance."""

    gaussians: GaussianArrays
    """Fitted Gaussians (world frame), extras copied from their source Gaussians."""
    source: torch.Tensor
    """[M] int64 index of the source Gaussian each fitted one was initialised from."""
    losses: list[float]
    """L1 loss per step."""


def _knn_mean_distance(p: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """[N] mean distance of each point to its ``k`` nearest other points."""
    out = torch.empty(p.shape[0])
    for i in range(0, p.shape[0], chunk):
        d = torch.cdist(p[i:i + chunk], p)
        out[i:i + chunk] = d.topk(k + 1, largest=False).values[:, 1:].mean(1)
    return out


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
    log_s = torch.log(_knn_mean_distance(means).clamp(1e-4, 0.5))[:, None].repeat(1, 3)
    rgb = (source.base_rgb[idx].float() + 0.05 * torch.randn(m, 3, generator=gen)).clamp(0.0, 1.0)
    params = {
        "means": means.clone().requires_grad_(True),
        "log_scales": log_s.requires_grad_(True),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(m, 1).requires_grad_(True),
        "opacities": torch.full((m,), math.log(cfg.init_opacity / (1 - cfg.init_opacity))).requires_grad_(True),
        "dc": rgb_to_sh_dc(rgb).requires_grad_(True),
    }
    opt = torch.optim.Adam([
        {"params": [params["means"]], "lr": cfg.lr_means},
        {"params": [params["log_scales"]], "lr": cfg.lr_scales},
        {"params": [params["quats"]], "lr": cfg.lr_quats},
        {"params": [params["opacities"]], "lr": cfg.lr_opacity},
        {"params": [params["dc"]], "lr": cfg.lr_colour},
    ], eps=1e-15)
    losses = []
    for _ in range(cfg.steps):
        v = int(torch.randint(len(cameras), (1,), generator=gen))
        g = GaussianArrays(params["means"], params["dc"][:, None, :], params["opacities"], params["log_scales"],
                           params["quats"])
        out = render(g, cameras[v], settings)
        loss = (out.rgb - targets[v]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["log_scales"].clamp_(math.log(1e-4), math.log(3.0))
        losses.append(float(loss.detach()))
    extras = {k: v[idx].clone() for k, v in source.extras.items()}
    with torch.no_grad():
        q = params["quats"] / params["quats"].norm(dim=1, keepdim=True).clamp_min(1e-12)
        fitted = GaussianArrays(params["means"].detach().clone(), params["dc"].detach()[:, None, :].clone(),
                                params["opacities"].detach().clone(), params["log_scales"].detach().clone(),
                                q.clone(), torch.arange(m, dtype=torch.int64), extras)
    return FitResult(fitted, idx, losses)


def _cache_path(cache_dir: str, scene, cfg: PhotometricFitConfig) -> Path:
    key = json.dumps({"scene": asdict(scene.config), "n": len(scene.gaussians), "fit": asdict(cfg), "v": 1},
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
