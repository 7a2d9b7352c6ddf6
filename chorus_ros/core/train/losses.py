"""Distillation losses and multi-task gradient calibration across the teacher heads.

Loss of one head on one scene (valid Gaussians ``i``, lift weights ``w_i``)::

    L = sum_i a_i [ cosine_weight * (1 - cos(p_i, t_i)) + l2_weight * mean_c (p_ic - t_ic)^2 ]
    a_i = w_i^power / sum_j w_j^power

Gradient calibration (the seed method, at the shared backbone's last layer): with ``g_k`` the
gradient of head ``k``'s loss w.r.t. the shared embedding ``E [N, D]`` (flattened),

1. conflict projection (PCGrad-style): for each ``k`` and each other head ``j`` in a random
   order, if ``<g_k, g_j> < 0`` remove the conflicting component ``g_k -= <g_k, g_j>/|g_j|^2 g_j``
   (``g_j`` the *original* gradient of ``j``);
2. magnitude equalisation: rescale every ``g_k`` to the mean of the heads' norms;
3. the backbone receives ``G = sum_k g_k`` at ``E``, while each head's own parameters receive
   the gradient of their own loss only.

With calibration off, the backbone simply receives ``sum_k dL_k/dE`` (the plain sum).

Rarity balancing (optional, ``balance_clusters > 0``): per scene and head, the valid targets are
grouped by cosine k-means; a Gaussian's factor is ``share(group) ** -balance_power`` where the
share is the group's part of the loss mass ``sum w^power``. It needs nothing but the targets, so
it applies to real teachers as well as to the oracles.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.train.config import CalibrationConfig, LossConfig

__all__ = ["HeadLoss", "head_loss", "calibrate_gradients", "CalibrationStats", "cosine_kmeans", "rarity_balance",
           "InstanceBoundaryOptions", "InstanceBoundaryLoss", "instance_boundary_loss", "rotation_consistency_loss"]


@dataclass
class HeadLoss:
    """One head's loss and its parts (scalars; ``loss`` keeps the graph)."""

    loss: torch.Tensor
    cosine: float
    """Weighted mean cosine similarity between prediction and target."""
    l2: float
    """Weighted mean per-channel squared error."""


def head_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor,
              cfg: LossConfig, balance: torch.Tensor | None = None) -> HeadLoss:
    """Loss of ``pred [N, C]`` against lifted ``target [N, C]`` (see the module docstring).

    ``balance [N]``: optional extra per-Gaussian factors (:func:`rarity_balance`).
    """
    if not bool(valid.any()):
        z = pred.sum() * 0.0
        return HeadLoss(z, 0.0, 0.0)
    p, t = pred[valid], target[valid].to(pred.dtype)
    w = weight[valid].to(pred.dtype).clamp_min(0)
    a = w.pow(cfg.weight_power) if cfg.weight_power != 0 else torch.ones_like(w)
    if balance is not None:
        a = a * balance[valid].to(a.dtype)
    a = a / a.sum().clamp_min(1e-12)
    cos = F.cosine_similarity(p, t, dim=1, eps=1e-8)
    l2 = (p - t).pow(2).mean(dim=1)
    loss = (a * (cfg.cosine_weight * (1 - cos) + cfg.l2_weight * l2)).sum()
    return HeadLoss(loss, float((a * cos).sum().detach()), float((a * l2).sum().detach()))


@dataclass
class CalibrationStats:
    """Diagnostics of one calibration (for logs)."""

    norms: dict[str, float]
    """Norm of each head's raw gradient at the shared embedding."""
    conflicts: int
    """Number of (ordered) head pairs whose gradients conflicted (negative inner product)."""
    min_cosine: float
    """Smallest cosine between two heads' raw gradients (1.0 with a single head)."""


def calibrate_gradients(grads: dict[str, torch.Tensor], cfg: CalibrationConfig,
                        gen: torch.Generator | None = None) -> tuple[torch.Tensor, CalibrationStats]:
    """Combine per-head gradients at the shared embedding into one (see the module docstring).

    Args:
        grads: head name -> gradient ``[N, D]`` of that head's loss w.r.t. the embedding.
        cfg: which steps to apply; ``enabled=False`` returns the plain sum.
        gen: random generator for the projection order (PCGrad shuffles it).

    Returns:
        ``(G [N, D], stats)``.
    """
    names = list(grads)
    flat = {k: grads[k].reshape(-1).double() for k in names}
    norms = {k: float(v.norm()) for k, v in flat.items()}
    conflicts, min_cos = 0, 1.0
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            na, nb = norms[names[a]], norms[names[b]]
            if na > 0 and nb > 0:
                min_cos = min(min_cos, float(flat[names[a]] @ flat[names[b]]) / (na * nb))
    if not cfg.enabled:
        total = sum(grads[k] for k in names)
        return total, CalibrationStats(norms, 0, min_cos)
    out = {}
    for k in names:
        gk = flat[k].clone()
        if cfg.project_conflicts:
            others = [j for j in names if j != k]
            if gen is not None and len(others) > 1:
                others = [others[i] for i in torch.randperm(len(others), generator=gen).tolist()]
            for j in others:
                gj = flat[j]
                dot = float(gk @ gj)
                nj2 = float(gj @ gj)
                if dot < 0 and nj2 > 0:
                    gk = gk - (dot / nj2) * gj
                    conflicts += 1
        out[k] = gk
    if cfg.equalize:
        live = [k for k in names if norms[k] > 0]
        target = sum(norms[k] for k in live) / max(1, len(live))
        for k in live:
            n = float(out[k].norm())
            if n > 0:
                out[k] = out[k] * (target / n)
    total = sum(out[k] for k in names).to(next(iter(grads.values())).dtype)
    return total.reshape(next(iter(grads.values())).shape), CalibrationStats(norms, conflicts, min_cos)


def cosine_kmeans(x: torch.Tensor, k: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """``[M]`` cluster index of each row of ``x [M, C]`` (spherical k-means, k-means++ seeding).

    Deterministic in ``seed``; zero rows join the cluster of their first best match.
    """
    m = x.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.long)
    k = max(1, min(int(k), m))
    xn = F.normalize(x.float(), dim=1)
    gen = torch.Generator().manual_seed(int(seed))
    centres = [int(torch.randint(m, (1,), generator=gen))]
    best = torch.full((m,), -2.0)
    for _ in range(1, k):
        best = torch.maximum(best, xn @ xn[centres[-1]])
        d = (1 - best).clamp_min(0) ** 2
        if float(d.sum()) <= 0:
            break
        centres.append(int(torch.multinomial(d, 1, generator=gen)))
    c = xn[centres].clone()
    assign = (xn @ c.T).argmax(1)
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, assign, xn)
        c = torch.where(sums.norm(dim=1, keepdim=True) > 0, F.normalize(sums, dim=1), c)
        new = (xn @ c.T).argmax(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def rarity_balance(target: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor, cfg: LossConfig,
                   seed: int = 0) -> torch.Tensor:
    """``[N]`` balancing factors (0 where not valid; mean 1 over the loss mass of valid rows)."""
    out = torch.zeros(target.shape[0])
    if cfg.balance_clusters <= 0 or not bool(valid.any()):
        out[valid] = 1.0
        return out
    w = weight[valid].float().clamp_min(0)
    a = w.pow(cfg.weight_power) if cfg.weight_power != 0 else torch.ones_like(w)
    assign = cosine_kmeans(target[valid], cfg.balance_clusters, seed=seed)
    mass = torch.zeros(int(assign.max()) + 1).index_add_(0, assign, a)
    share = (mass / mass.sum().clamp_min(1e-12)).clamp_min(1e-6)
    b = share[assign].pow(-cfg.balance_power)
    b = b * a.sum() / (a * b).sum().clamp_min(1e-12)
    out[valid] = b
    return out


@dataclass
class InstanceBoundaryOptions:
    """Options of :func:`instance_boundary_loss` (``stage_options.align.instance_boundary``)."""

    balls: int = 16
    """Local neighbourhoods drawn per scene: a random Gaussian with an instance and its
    ``ball_size`` nearest Gaussians (with an instance)."""
    ball_size: int = 256
    """Gaussians per neighbourhood."""
    k: int = 8
    """Nearest neighbours of each Gaussian within its neighbourhood that form pairs."""
    radius: float = 0.05
    """Pairs farther apart than this (metres) are dropped: only touching Gaussians are compared."""
    pos_margin: float = 0.9
    """Pairs of one instance are pulled until their cosine reaches this."""
    neg_margin: float = 0.5
    """Pairs of two instances are pushed until their cosine is below this (under the instance
    decoder's ``feature_threshold``, 0.7 by default, so the decoder keeps them apart)."""

    def validate(self) -> None:
        from chorus_ros.core.errors import InvalidInputError
        if self.balls < 1 or self.ball_size < 2 or self.k < 1:
            raise InvalidInputError(f"instance_boundary needs balls >= 1, ball_size >= 2 and k >= 1, got "
                              f"{self.balls}, {self.ball_size}, {self.k}")
        if self.radius <= 0:
            raise InvalidInputError(f"instance_boundary.radius must be > 0, got {self.radius}")
        if not -1.0 <= self.neg_margin < self.pos_margin <= 1.0:
            raise InvalidInputError(f"instance_boundary needs -1 <= neg_margin < pos_margin <= 1, got "
                              f"{self.neg_margin}, {self.pos_margin}")


@dataclass
class InstanceBoundaryLoss:
    """What :func:`instance_boundary_loss` returns (``loss`` keeps the graph)."""

    loss: torch.Tensor
    pos_cos: float
    """Mean cosine of the same-instance pairs (nan without any)."""
    neg_cos: float
    """Mean cosine of the pairs across an instance boundary (nan without any)."""
    neg_pairs: int
    """Pairs across an instance boundary."""


def instance_boundary_loss(features: torch.Tensor, means: torch.Tensor, instance: torch.Tensor,
                           opts: InstanceBoundaryOptions, gen: torch.Generator | None = None) -> InstanceBoundaryLoss:
    """Local discriminative loss on per-Gaussian identity features.

    Touching Gaussians (``k`` nearest within ``radius``, in ``balls`` random neighbourhoods) of
    one instance are pulled together, those of two instances pushed apart::

        L = mean_pos relu(pos_margin - cos)^2 + mean_neg relu(cos - neg_margin)^2

    Only neighbours are compared: two identical chairs far apart may share a feature (a local
    encoder cannot tell them apart, and the instance decoder separates them by connectivity),
    but two touching books must not, or the decoder joins them.

    Args:
        features: ``[N, D]`` identity features (e.g. the object head's output).
        means: ``[N, 3]`` Gaussian centres, metres.
        instance: ``[N]`` int instance ids; ids <= 0 mean "no instance" and take no part.
        opts: see :class:`InstanceBoundaryOptions`.
        gen: random generator for the neighbourhood centres.
    """
    zero = features.sum() * 0.0
    nan = float("nan")
    valid = torch.nonzero(instance > 0).squeeze(1)
    if valid.numel() < 2:
        return InstanceBoundaryLoss(zero, nan, nan, 0)
    pts = means[valid].detach().float()
    m = min(opts.ball_size, valid.numel())
    centres = torch.randint(0, valid.numel(), (opts.balls,), generator=gen).to(pts.device)
    d_c = torch.cdist(pts[centres], pts)                                    # [B, V]
    members = d_c.topk(m, dim=1, largest=False).indices                     # [B, m] rows of valid
    rows = valid[members]                                                   # [B, m] Gaussian rows
    p = pts[members]
    d = torch.cdist(p, p)                                                   # [B, m, m]
    d = d + torch.eye(m, dtype=d.dtype, device=d.device).unsqueeze(0) * 1e9                  # no self pairs
    kk = min(opts.k, m - 1)
    dist, nb = d.topk(kk, dim=2, largest=False)                            # [B, m, k]
    near = dist < opts.radius
    a = rows.unsqueeze(2).expand_as(nb)[near]
    b = torch.gather(rows, 1, nb.flatten(1)).view_as(nb)[near]
    if a.numel() == 0:
        return InstanceBoundaryLoss(zero, nan, nan, 0)
    f = F.normalize(features.float(), dim=1)   # as a whole: the stage-6 runs were trained with this order
    cos = (f[a] * f[b]).sum(1)
    same = instance[a] == instance[b]
    loss = zero
    pos = cos[same]
    neg = cos[~same]
    if pos.numel():
        loss = loss + F.relu(opts.pos_margin - pos).pow(2).mean()
    if neg.numel():
        loss = loss + F.relu(neg - opts.neg_margin).pow(2).mean()
    pos, neg = pos.detach(), neg.detach()
    return InstanceBoundaryLoss(loss, float(pos.mean()) if pos.numel() else nan,
                                float(neg.mean()) if neg.numel() else nan, int(neg.numel()))


def rotation_consistency_loss(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                              eps: float = 1e-8) -> torch.Tensor:
    """Disagreement of two encodes of the same Gaussians, mean over heads (scalar, keeps the graph).

    ``a[k]``, ``b[k]``: ``[N, C_k]`` outputs of head ``k`` for the same ``N`` Gaussians in the same
    order (e.g. the map and a rotated copy of it). Per head: the mean squared difference over
    Gaussians divided by the mean squared magnitude of the two (detached), so heads of different
    scales weigh alike and shrinking the outputs does not lower the loss. 0 when they agree.
    Used by stage ``align``'s ``rotation_consistency_weight`` (docs/training.md).
    """
    if set(a) != set(b) or not a:
        raise InvalidInputError(f"rotation_consistency_loss needs the same non-empty heads, got {sorted(a)} "
                                f"and {sorted(b)}")
    terms = []
    for k in sorted(a):
        x, y = a[k].float(), b[k].float()
        if x.shape != y.shape or x.ndim != 2:
            raise InvalidInputError(f"head {k!r}: outputs of shapes {tuple(x.shape)} and {tuple(y.shape)}, "
                                    "expected the same [N, C]")
        scale = 0.5 * (x.detach().pow(2).sum(1).mean() + y.detach().pow(2).sum(1).mean())
        terms.append((x - y).pow(2).sum(1).mean() / (scale + eps))
    return torch.stack(terms).mean()
