"""Random scene augmentation that keeps what the encoder must generalise over.

A rigid turn about the up axis, a translation (which also moves the absolute voxel grid
relative to the scene), a small global scale, colour jitter on the base colour, random Gaussian
dropout and random horizontal crops (partial maps, as the live map grows block by block), random
densification by 3DGS's split (:func:`split_gaussians`, ``AugmentConfig.densify_max``), and
optionally the per-Gaussian shifts of :mod:`chorus_ros.core.synthetic.shifts` (``AugmentConfig.shift``:
sizes, shapes, tilt, colour and lighting, position noise, opacities, floaters), each at a random
strength in [0, the configured value] per step, then optionally the removal of Gaussians below
``min_opacity`` (as the perception pipeline does before encoding).
Targets are per Gaussian and invariant, so they are just subset alongside the Gaussians.

Rotations act on positions and orientations; view-dependent SH bands (degree > 0) would need
rotating too, so they are dropped (the encoder reads colour from the DC term only).
"""
from __future__ import annotations

import math

import torch

from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc, sh_dc_to_rgb
from chorus_ros.core.geometry import quat_multiply, rotate_about_axis  # re-exported (their old home)
from chorus_ros.core.lift import LiftedTargets
from chorus_ros.core.train.config import AugmentConfig

__all__ = ["augment_scene", "quat_multiply", "random_shift", "rotate_about_axis", "split_gaussians", "SPLIT_SHRINK"]


SPLIT_SHRINK = 1.6
"""3DGS's split: each child's axes are its parent's divided by this."""


def split_gaussians(g: GaussianArrays, count: int, gen: torch.Generator) -> tuple[GaussianArrays, torch.Tensor]:
    """Split ``count`` distinct random Gaussians of ``g`` (at most ``len(g)``) the way 3DGS densifies.

    Each chosen Gaussian is replaced by two children at points drawn from it (``mean + R (s * z)``,
    ``z ~ N(0, I)``, ``R`` its rotation, ``s`` its axis lengths), with axes ``s / SPLIT_SHRINK`` and the
    parent's rotation, opacity and colour. Returns ``(split, source)``: the ``len(g) + count``
    Gaussians (the unsplit ones first, in order, then the first and the second children) and
    ``source [M]`` int64, the index in ``g`` each came from (so targets and labels follow). Ids are
    renumbered ``0..M-1`` (children are new Gaussians).
    """
    from chorus_ros.core.encoder.features import quats_wxyz_to_rotmats
    n = len(g)
    count = max(0, min(int(count), n))
    pick = torch.randperm(n, generator=gen)[:count]
    rest = torch.ones(n, dtype=torch.bool)
    rest[pick] = False
    src = torch.cat([rest.nonzero().squeeze(1), pick, pick])
    out = g.index(src)
    R = quats_wxyz_to_rotmats(g.quats[pick].float())
    axes = g.log_scales[pick].float().exp()
    z = torch.randn(2, count, 3, generator=gen)
    offsets = torch.einsum("kij,ckj->cki", R, axes[None] * z).reshape(2 * count, 3)
    means = out.means.clone()
    log_scales = out.log_scales.clone()
    m0 = n - count
    means[m0:] = means[m0:] + offsets.to(means.dtype)
    log_scales[m0:] = log_scales[m0:] - math.log(SPLIT_SHRINK)
    ids = None if g.ids is None else torch.arange(len(src), dtype=torch.int64)
    return GaussianArrays(means, out.sh, out.opacities, log_scales, out.quats, ids, dict(out.extras)), src


_SCALED_SHIFT_OPTIONS = ("size_jitter", "isotropic_fraction", "tilt_deg", "white_balance", "exposure", "shading",
                         "palette_deg", "position_noise", "low_opacity_fraction", "floater_fraction", "dead_fraction",
                         "instance_hue_deg")


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def random_shift(g: GaussianArrays, shift: dict, gen: torch.Generator):
    """Domain randomisation: the shift ``shift`` (:class:`~chorus_ros.core.synthetic.shifts.ShiftConfig`
    fields) with each scalable option that is on drawn at a strength uniform in [0, its value].

    Returns :func:`~chorus_ros.core.synthetic.shifts.shift_gaussians`'s ``(shifted, source, T)``:
    ``source [M]`` indexes the original each shifted Gaussian came from, ``T [4, 4]`` is the rigid
    transform applied (new world <- old world), which cameras must follow."""
    from chorus_ros.core.synthetic.shifts import ShiftConfig, shift_gaussians
    sc = ShiftConfig.from_dict(shift)
    for f in _SCALED_SHIFT_OPTIONS:
        if getattr(sc, f) > 0:
            setattr(sc, f, getattr(sc, f) * _u(gen, 0.0, 1.0))
    return shift_gaussians(g, sc, gen)


def augment_scene(g: GaussianArrays, targets: LiftedTargets, cfg: AugmentConfig,
                  gen: torch.Generator) -> tuple[GaussianArrays, LiftedTargets]:
    """Return an augmented copy of ``(g, targets)`` (same Gaussian order, possibly fewer).

    Deterministic given the state of ``gen``.
    """
    if not cfg.enabled:
        return g, targets
    n = len(g)
    keep = torch.ones(n, dtype=torch.bool)
    # random crop to a horizontal box (on the two axes orthogonal to up)
    if cfg.crop_prob > 0 and _u(gen, 0, 1) < cfg.crop_prob:
        box = torch.ones(n, dtype=torch.bool)
        for a in [x for x in range(3) if x != cfg.up_axis]:
            lo, hi = float(g.means[:, a].min()), float(g.means[:, a].max())
            ext = hi - lo
            size = ext * _u(gen, cfg.crop_min_fraction, 1.0)
            start = lo + _u(gen, 0, 1) * (ext - size)
            box &= (g.means[:, a] >= start) & (g.means[:, a] <= start + size)
        if int((box & targets.valid).sum()) >= cfg.min_gaussians:
            keep &= box
    if cfg.drop_max > 0:
        p = _u(gen, 0, cfg.drop_max)
        drop = torch.rand(n, generator=gen) < p
        if int((keep & ~drop & targets.valid).sum()) >= cfg.min_gaussians:
            keep &= ~drop
    if not bool(keep.all()):
        idx = keep.nonzero().squeeze(1)
        g, targets = g.index(idx), targets.index(idx)
    if cfg.densify_max > 1 and (cfg.densify_prob >= 1 or _u(gen, 0, 1) < cfg.densify_prob):
        # denser maps of smaller Gaussians (repeated splits up to the factor)
        want = int(round(len(g) * _u(gen, 1.0, cfg.densify_max)))
        while len(g) < want:
            g, src = split_gaussians(g, want - len(g), gen)
            targets = targets.index(src)

    if cfg.shift:  # domain randomisation (chorus_ros.core.synthetic.shifts), targets follow their source
        g, src, _ = random_shift(g, cfg.shift, gen)
        if len(src) != len(targets) or not bool((src == torch.arange(len(src))).all()):
            targets = targets.index(src)
    if cfg.min_opacity > 0:   # what the pipeline would set aside never reaches the encoder
        opaque = ~g.faint_mask(cfg.min_opacity)
        if not bool(opaque.all()) and int((opaque & targets.valid).sum()) >= cfg.min_gaussians:
            idx = opaque.nonzero().squeeze(1)
            g, targets = g.index(idx), targets.index(idx)

    means, quats, log_scales = g.means, g.quats, g.log_scales
    sh = g.sh[:, :1]
    centre = means.mean(0)
    angle = _u(gen, 0, 2 * math.pi) if cfg.rotate else 0.0
    R, q = rotate_about_axis(angle, cfg.up_axis)
    s = _u(gen, 1 - cfg.scale, 1 + cfg.scale) if cfg.scale > 0 else 1.0
    t = torch.tensor([_u(gen, -cfg.translate, cfg.translate) for _ in range(3)]) if cfg.translate > 0 else torch.zeros(3)
    means = (means - centre) @ R.T.to(means.dtype) * s + centre + t.to(means.dtype)
    quats = quat_multiply(q.to(quats.dtype).expand_as(quats), quats)
    log_scales = log_scales + math.log(s)

    rgb = sh_dc_to_rgb(sh[:, 0])
    if cfg.color_brightness > 0 or cfg.color_contrast > 0 or cfg.color_saturation > 0:
        b = _u(gen, -cfg.color_brightness, cfg.color_brightness)
        c = _u(gen, 1 - cfg.color_contrast, 1 + cfg.color_contrast)
        sat = _u(gen, 1 - cfg.color_saturation, 1 + cfg.color_saturation)
        mean = rgb.mean(0, keepdim=True)
        rgb = (rgb - mean) * c + mean + b
        grey = rgb.mean(1, keepdim=True)
        rgb = (grey + (rgb - grey) * sat).clamp(0.0, 1.0)
    sh = rgb_to_sh_dc(rgb)[:, None, :]
    out = GaussianArrays(means, sh, g.opacities, log_scales, quats, g.ids, dict(g.extras))
    return out, targets
