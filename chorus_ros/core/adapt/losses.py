"""Loss terms of render-and-distill adaptation, on sampled pixels of the training views.

Every term works on ``P`` pixels of one view whose rendered alpha is at least ``min_alpha``;
rendered per-Gaussian quantities are alpha-normalised first (``R(p) / alpha(p)``, what the
semantic decoder does with class scores at inference), and each pixel carries a weight
``pw`` (the depth gate, :class:`~chorus_ros.core.adapt.config.LossWeights`).

* labels: ``sum_p pw_p (1 + boundary * near_border_p) * -log q_p[y_p] / sum_p pw_p (...)``
  with ``q`` the normalised class probabilities;
* teachers: ``cos_w * (1 - cos(F_p, T_p)) + l2_w * mean_c (F_pc - T_pc)^2``, pixel-weighted mean;
* rgb: ``mean_c |C_p - I_p|``, pixel-weighted mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from chorus_ros.core.labels import UNLABELED

__all__ = ["boundary_mask", "label_loss", "teacher_loss", "rgb_loss"]


def boundary_mask(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """``[H, W]`` bool: pixels within ``radius`` pixels (Chebyshev) of a pixel with another label
    (unlabeled pixels count as a label, so the rim of a labelled region is a border too).

    ``labels``: ``[H, W]`` integer class ids.
    """
    if radius <= 0:
        return torch.zeros(labels.shape, dtype=torch.bool)
    x = labels.to(torch.float64)[None, None]
    k = 2 * radius + 1
    hi = F.max_pool2d(x, k, stride=1, padding=radius)
    lo = -F.max_pool2d(-x, k, stride=1, padding=radius)
    return (hi != lo)[0, 0]


def _wmean(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (v * w).sum() / w.sum().clamp_min(1e-12)


def label_loss(probs: torch.Tensor, labels: torch.Tensor, pixel_weight: torch.Tensor,
               border: torch.Tensor, boundary: float) -> torch.Tensor:
    """Cross-entropy with a boundary-aware weight (module docstring).

    Args:
        probs: ``[P, K]`` alpha-normalised composited class probabilities (rows sum to ~1).
        labels: ``[P]`` int64 class ids; :data:`UNLABELED` pixels are skipped.
        pixel_weight: ``[P]`` per-pixel weights (depth gate).
        border: ``[P]`` bool, near a label border.
        boundary: extra weight of border pixels.
    """
    ok = labels != UNLABELED
    if not bool(ok.any()):
        return probs.sum() * 0.0
    q = probs[ok].gather(1, labels[ok][:, None]).squeeze(1)
    nll = -torch.log(q.clamp_min(1e-6))
    w = pixel_weight[ok].to(nll.dtype) * (1.0 + boundary * border[ok].to(nll.dtype))
    return _wmean(nll, w)


def teacher_loss(feats: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor,
                 cos_weight: float, l2_weight: float) -> torch.Tensor:
    """``[P, C]`` rendered (alpha-normalised) head features against ``[P, C]`` teacher features."""
    cos = F.cosine_similarity(feats, target.to(feats.dtype), dim=1, eps=1e-8)
    l2 = (feats - target.to(feats.dtype)).pow(2).mean(dim=1)
    return _wmean(cos_weight * (1.0 - cos) + l2_weight * l2, pixel_weight.to(feats.dtype))


def rgb_loss(rgb: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor) -> torch.Tensor:
    """L1 of ``[P, 3]`` rendered colour against ``[P, 3]`` image colour in [0, 1]."""
    return _wmean((rgb - target.to(rgb.dtype)).abs().mean(dim=1), pixel_weight.to(rgb.dtype))
