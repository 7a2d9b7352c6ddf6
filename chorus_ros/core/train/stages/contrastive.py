"""Stage ``contrastive``: self-supervised, view-independent Gaussian features (RT-GS2 / PointContrast).

No teacher and no label: per training scene,

1. pick two views whose sets of visible Gaussians overlap by ``overlap`` in
   ``[overlap_min, overlap_max]`` (intersection over union of the visible sets; visibility =
   in the frustum and not behind the z-buffer of the opaque Gaussians' centres,
   :func:`visible_gaussians`);
2. give each view its own copy of the map restricted to the Gaussians it sees, augmented
   independently (:func:`augment_copy`: rotation about the up axis + translation, per-Gaussian
   scale and opacity jitter, colour jitter, random dropout);
3. encode both copies; the positives are up to ``pairs`` Gaussians visible (and kept) in both;
4. InfoNCE (PointContrast's hardest-free form): with ``z = normalize(embedding)``,
   ``L = CE(z1 z2^T / tau, diag)`` averaged over both directions; every other sampled Gaussian
   of the other view is a negative.

:func:`contrastive_map_loss` is the callable other modules use on any map with camera poses
(e.g. the adaptation on unlabelled robot maps); the stage wraps it for ``chorus-train``. As an
extra term next to the teacher heads set ``stage_options.align.contrastive_weight``; as an
initialisation set ``init_from: <contrastive checkpoint dir>`` in the next run.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc, sh_dc_to_rgb
from chorus_ros.core.geometry import Camera, quat_multiply, rotate_about_axis
from chorus_ros.core.train.stages import Stage, StageLoss, register_stage

__all__ = ["ContrastiveOptions", "ContrastiveLoss", "MapScene", "SceneViews", "visible_gaussians",
           "view_overlaps", "pick_view_pair", "augment_copy", "info_nce", "contrastive_map_loss",
           "ContrastiveStage", "load_map_scenes"]


@dataclass
class ContrastiveOptions:
    """Options of the PointContrast loss (stage ``contrastive`` and the extra term of ``align``)."""

    pairs: int = 4096
    """Positive pairs (Gaussians visible in both views) sampled per scene; RT-GS2 uses 4096."""
    temperature: float = 0.07
    """InfoNCE temperature tau."""
    overlap_min: float = 0.3
    """Smallest accepted overlap (IoU of the two views' visible Gaussian sets)."""
    overlap_max: float = 0.8
    """Largest accepted overlap (too similar views teach little)."""
    visibility_grid: int = 64
    """Width, in cells, of the z-buffer used for the visibility test (height keeps the aspect)."""
    depth_tolerance: float = 0.1
    """A Gaussian is visible when its depth is at most (1 + tol) x the z-buffer's at its cell, plus 2 cm."""
    min_visible: int = 64
    """Views seeing fewer Gaussians are not used."""
    up_axis: int = 2
    """World axis that points up (rotations turn about it)."""
    rotate: bool = True
    """Independent random rotation of each copy about the up axis."""
    translate: float = 0.5
    """Random translation of each copy, uniform in [-t, t] metres per axis."""
    scale_jitter: float = 0.2
    """Per-Gaussian log-scale noise, normal with this standard deviation."""
    opacity_jitter: float = 0.5
    """Per-Gaussian opacity-logit noise, normal with this standard deviation."""
    color_jitter: float = 0.15
    """Brightness/contrast/saturation jitter amplitude of each copy."""
    drop_max: float = 0.3
    """Each copy drops a random fraction, uniform in [0, drop_max], of its Gaussians."""


@dataclass
class ContrastiveLoss:
    """One scene's contrastive loss."""

    loss: torch.Tensor
    """Scalar (keeps the graph)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """``pairs``, ``overlap``, ``pos_cos`` (mean cosine of positives), ``neg_cos`` (of negatives), ``acc`` (top-1 matching)."""


@dataclass
class MapScene:
    """A map with camera poses and no labels: the training sample of stage ``contrastive``."""

    scene_id: str
    gaussians: GaussianArrays
    """N Gaussians (world frame). Synthetic ones carry ground truth in ``extras`` (never used here)."""
    cameras: list[Camera]
    """Views of the map (e.g. a robot's recorded poses)."""


# ------------------------------------------------------------------------------- views
def visible_gaussians(g: GaussianArrays, camera: Camera, options: ContrastiveOptions | None = None) -> torch.Tensor:
    """``[N]`` bool: Gaussians whose centre is in ``camera``'s frustum and not occluded.

    Occlusion: a coarse z-buffer (``visibility_grid`` cells wide) of the centres of the opaque
    Gaussians (opacity > 0.5); a centre is visible when its depth is within
    ``(1 + depth_tolerance) * zbuf + 0.02`` m of its cell's nearest opaque centre.
    """
    o = options or ContrastiveOptions()
    vm = camera.viewmat.to(g.means.device, torch.float32)
    K = camera.K.to(g.means.device, torch.float32)
    pc = g.means.float() @ vm[:3, :3].T + vm[:3, 3]
    z = pc[:, 2]
    zs = z.clamp_min(1e-6)
    u = K[0, 0] * pc[:, 0] / zs + K[0, 2]
    v = K[1, 1] * pc[:, 1] / zs + K[1, 2]
    inside = (z > 0.05) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    gw = max(4, int(o.visibility_grid))
    gh = max(3, int(round(gw * camera.height / camera.width)))
    cu = (u / camera.width * gw).clamp(0, gw - 1).long()
    cv = (v / camera.height * gh).clamp(0, gh - 1).long()
    cell = cv * gw + cu
    opaque = inside & (g.opacity > 0.5)
    zbuf = torch.full((gw * gh,), float("inf"), device=z.device)
    if bool(opaque.any()):
        zbuf = zbuf.scatter_reduce(0, cell[opaque], z[opaque], reduce="amin")
    return inside & (z <= zbuf[cell] * (1 + o.depth_tolerance) + 0.02)


def view_overlaps(vis: torch.Tensor) -> torch.Tensor:
    """``[C, C]`` IoU of the visible sets ``vis [C, N]`` (bool) of ``C`` views."""
    v = vis.float()
    inter = v @ v.T
    cnt = v.sum(1)
    union = cnt[:, None] + cnt[None, :] - inter
    return inter / union.clamp_min(1)


def pick_view_pair(overlap: torch.Tensor, counts: torch.Tensor, options: ContrastiveOptions,
                   gen: torch.Generator | None = None) -> tuple[int, int] | None:
    """A random pair ``(a, b)`` with overlap in range (else the pair closest to the range), or None."""
    c = overlap.shape[0]
    ok_views = counts >= options.min_visible
    a_idx, b_idx = torch.triu_indices(c, c, 1)
    if a_idx.numel() == 0:
        return None
    ov = overlap[a_idx, b_idx]
    usable = ok_views[a_idx] & ok_views[b_idx] & (ov > 0)
    if not bool(usable.any()):
        return None
    inr = usable & (ov >= options.overlap_min) & (ov <= options.overlap_max)
    if bool(inr.any()):
        cand = inr.nonzero().squeeze(1)
        j = cand[int(torch.randint(len(cand), (1,), generator=gen))]
    else:
        dist = torch.where(ov < options.overlap_min, options.overlap_min - ov, ov - options.overlap_max)
        dist = torch.where(usable, dist, torch.full_like(dist, float("inf")))
        j = int(dist.argmin())
    return int(a_idx[j]), int(b_idx[j])


class SceneViews:
    """Per-scene visibility of every view, computed once and cached by scene id.

    Scenes with a ``cameras`` attribute (:class:`MapScene`) use them; synthetic
    :class:`~chorus_ros.core.lift.LiftedScene` s (ids ``synthetic:{"seed": s, ...}``) get their
    synthetic trajectory regenerated with the training config's ``data.views`` overrides.
    """

    def __init__(self, options: ContrastiveOptions, views: dict | None = None) -> None:
        self.options = options
        self.views = dict(views or {})
        self._cams: dict[str, list[Camera]] = {}
        self._vis: dict[str, torch.Tensor] = {}

    def cameras(self, scene) -> list[Camera]:
        cams = getattr(scene, "cameras", None)
        if cams is not None:
            return list(cams)
        sid = scene.scene_id
        if sid not in self._cams:
            if not sid.startswith("synthetic:"):
                raise InvalidInputError(f"scene {sid!r} has no cameras; the contrastive loss needs views")
            from chorus_ros.core.synthetic import SceneConfig, generate_scene
            from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
            spec = json.loads(sid[len("synthetic:"):])
            sc = generate_scene(SceneConfig(seed=int(spec["seed"]), **spec.get("scene", {})))
            self._cams[sid] = list(make_trajectory(sc, TrajectoryConfig(**self.views)).cameras)
        return self._cams[sid]

    def visibility(self, scene_id: str, g: GaussianArrays, cameras: list[Camera]) -> torch.Tensor:
        if scene_id not in self._vis:
            self._vis[scene_id] = torch.stack([visible_gaussians(g, c, self.options) for c in cameras])
        return self._vis[scene_id]


# ------------------------------------------------------------------------- augmentation
def _u(gen, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def augment_copy(g: GaussianArrays, idx: torch.Tensor, options: ContrastiveOptions,
                 gen: torch.Generator | None = None) -> tuple[GaussianArrays, torch.Tensor]:
    """One view's augmented copy of the Gaussians ``idx`` of ``g``.

    Returns ``(copy, kept)``: ``kept [M]`` are the indices into ``g`` of the copy's Gaussians,
    in the copy's order (dropout removes some of ``idx``). Deterministic given ``gen``.
    """
    o = options
    if o.drop_max > 0 and len(idx) > 0:
        p = _u(gen, 0, o.drop_max)
        idx = idx[torch.rand(len(idx), generator=gen) >= p]
    sub = g.index(idx.to(g.means.device))
    n = len(sub)
    dev, dt = sub.means.device, sub.means.dtype
    means, quats = sub.means, sub.quats
    angle = _u(gen, 0, 2 * math.pi) if o.rotate else 0.0
    R, q = rotate_about_axis(angle, o.up_axis)
    t = torch.tensor([_u(gen, -o.translate, o.translate) for _ in range(3)]) if o.translate > 0 else torch.zeros(3)
    centre = means.mean(0) if n else torch.zeros(3, device=dev, dtype=dt)
    means = (means - centre) @ R.T.to(dev, dt) + centre + t.to(dev, dt)
    quats = quat_multiply(q.to(dev, quats.dtype).expand_as(quats), quats)
    log_scales = sub.log_scales + o.scale_jitter * torch.randn(n, 3, generator=gen).to(dev, dt)
    opac = sub.opacities + o.opacity_jitter * torch.randn(n, generator=gen).to(dev, dt)
    sh = sub.sh.clone()
    if o.color_jitter > 0 and n:
        rgb = sh_dc_to_rgb(sh[:, 0])
        b = _u(gen, -o.color_jitter, o.color_jitter)
        c = _u(gen, 1 - o.color_jitter, 1 + o.color_jitter)
        s = _u(gen, 1 - o.color_jitter, 1 + o.color_jitter)
        mean = rgb.mean(0, keepdim=True)
        rgb = (rgb - mean) * c + mean + b
        grey = rgb.mean(1, keepdim=True)
        sh[:, 0] = rgb_to_sh_dc((grey + (rgb - grey) * s).clamp(0, 1))
    out = GaussianArrays(means, sh, opac, log_scales, quats, sub.ids, {})
    return out, idx


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE between row-matched features ``z1, z2 [P, D]`` (row i of each is a positive pair).

    Rows are L2-normalised; logits ``z1 z2^T / temperature``; the loss is the mean of the
    cross-entropies in both directions with the diagonal as targets.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise InvalidInputError(f"info_nce needs two [P, D] tensors of one shape, got {tuple(z1.shape)} "
                                f"and {tuple(z2.shape)}")
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = a @ b.T / temperature
    tgt = torch.arange(len(a), device=a.device)
    loss = 0.5 * (F.cross_entropy(logits, tgt) + F.cross_entropy(logits.T, tgt))
    with torch.no_grad():
        sim = a @ b.T
        p = len(a)
        pos = float(sim.diagonal().mean())
        neg = float((sim.sum() - sim.diagonal().sum()) / max(1, p * p - p))
        acc = float((logits.argmax(1) == tgt).float().mean())
    return loss, {"pos_cos": pos, "neg_cos": neg, "acc": acc}


def contrastive_map_loss(model, gaussians: GaussianArrays, cameras: list[Camera],
                         options: ContrastiveOptions | None = None, gen: torch.Generator | None = None,
                         device: torch.device | str | None = None, *, visibility: torch.Tensor | None = None,
                         pair: tuple[int, int] | None = None) -> ContrastiveLoss | None:
    """PointContrast loss of ``model`` on one map seen from ``cameras`` (no labels needed).

    Args:
        model: callable ``GaussianArrays -> EncoderOutput`` (a ChorusEncoder, possibly DDP-wrapped).
        gaussians: the map (N Gaussians, world frame), any device.
        cameras: at least two views of it (e.g. recorded robot poses).
        options: loss and augmentation settings (defaults: :class:`ContrastiveOptions`).
        gen: random generator (view pair, augmentation, pair sampling).
        device: where to encode (default: the model's parameters' device).
        visibility: optional precomputed ``[C, N]`` bool visibility (:func:`visible_gaussians`).
        pair: optional fixed view pair (a, b) instead of a random one.

    Returns:
        :class:`ContrastiveLoss`, or None when no two views share visible Gaussians.
    """
    o = options or ContrastiveOptions()
    if len(cameras) < 2:
        raise InvalidInputError(f"the contrastive loss needs at least two views, got {len(cameras)}")
    if device is None:
        device = next(model.parameters()).device
    g = gaussians.to("cpu")
    vis = visibility if visibility is not None else torch.stack([visible_gaussians(g, c, o) for c in cameras])
    if pair is None:
        pair = pick_view_pair(view_overlaps(vis), vis.sum(1), o, gen)
        if pair is None:
            return None
    a, b = pair
    overlap = float(view_overlaps(vis[[a, b]])[0, 1])
    g1, k1 = augment_copy(g, vis[a].nonzero().squeeze(1), o, gen)
    g2, k2 = augment_copy(g, vis[b].nonzero().squeeze(1), o, gen)
    n = len(g)
    pos1 = torch.full((n,), -1, dtype=torch.long)
    pos2 = torch.full((n,), -1, dtype=torch.long)
    pos1[k1] = torch.arange(len(k1))
    pos2[k2] = torch.arange(len(k2))
    both = ((pos1 >= 0) & (pos2 >= 0)).nonzero().squeeze(1)
    if len(both) < 2:
        return None
    if len(both) > o.pairs:
        both = both[torch.randperm(len(both), generator=gen)[: o.pairs]]
    e1 = model(g1.to(device)).embedding
    e2 = model(g2.to(device)).embedding
    i1, i2 = pos1[both].to(e1.device), pos2[both].to(e1.device)
    loss, m = info_nce(e1[i1], e2[i2], o.temperature)
    m.update({"pairs": float(len(both)), "overlap": overlap})
    return ContrastiveLoss(loss, m)


# ------------------------------------------------------------------------------- stage
def load_map_scenes(seeds, *, scene: dict | None = None, views: dict | None = None,
                    density_range=None) -> list[MapScene]:
    """Synthetic training maps with their trajectory cameras (no teachers, no lifting)."""
    from chorus_ros.core.lift import scene_density
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    out = []
    for s in seeds:
        sc = dict(scene or {})
        if density_range:
            sc["target_gaussians"] = scene_density(s, density_range)
        gen = generate_scene(SceneConfig(seed=int(s), **sc))
        traj = make_trajectory(gen, TrajectoryConfig(**dict(views or {})))
        sid = "synthetic:" + json.dumps({"seed": int(s), "scene": sc}, sort_keys=True)
        out.append(MapScene(sid, gen.gaussians, list(traj.cameras)))
    return out


@register_stage("contrastive")
class ContrastiveStage(Stage):
    """Self-supervised pre-training with :func:`contrastive_map_loss` (see the module docstring).

    Scenes: ``data.train_seeds`` synthetic maps with their ``data.views`` trajectories (no
    teachers are built, no targets lifted). The encoder keeps ``config.encoder``'s heads
    (untrained: only the backbone and the shared embedding learn), so the checkpoint can
    initialise an ``align`` run (``init_from``), whose heads are copied where their shapes match.
    """

    options_cls = ContrastiveOptions
    needs_teachers = False

    def load_scenes(self, trainer) -> list:
        d = trainer.cfg.data
        if d.source != "synthetic":
            raise InvalidInputError(f"data.source {d.source!r} unknown; known: ['synthetic']")
        seeds = list(d.train_seeds)
        if trainer.dist.distributed and len(seeds) >= trainer.dist.world_size:
            seeds = seeds[trainer.dist.rank::trainer.dist.world_size]
        return load_map_scenes(seeds, scene=d.scene, views=d.views, density_range=d.density_range or None)

    def resolve_heads(self, trainer) -> list[str]:
        return []

    def prepare(self, trainer) -> None:
        self.views = SceneViews(self.options, trainer.cfg.data.views)

    def scene_loss(self, trainer, scene) -> StageLoss:
        cams = self.views.cameras(scene)
        vis = self.views.visibility(scene.scene_id, scene.gaussians, cams)
        cl = contrastive_map_loss(trainer.ddp_model, scene.gaussians, cams, self.options, trainer.gen,
                                  trainer.device, visibility=vis)
        if cl is None:  # no overlapping views: a zero loss that still touches every parameter (DDP)
            z = sum(p.sum() for p in trainer.model.parameters()) * 0.0
            return StageLoss(extra=z, metrics={"pairs": 0.0})
        return StageLoss(extra=cl.loss, metrics={f"{k}": v for k, v in cl.metrics.items()})

    def checkpoint_meta(self, trainer) -> dict:
        return {"contrastive": {"pairs": self.options.pairs, "temperature": self.options.temperature}}
