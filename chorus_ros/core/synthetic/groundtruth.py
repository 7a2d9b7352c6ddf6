"""Ground-truth images of labelled Gaussians, from the same renderer as everything else.

Per pixel, the semantic and instance labels are those of the Gaussian with the largest blending
weight ``alpha_i * T_i`` (``RenderOutput.top_index``); pixels whose accumulated alpha is below
``min_alpha`` (or that no Gaussian touches) are ``65535`` (unlabeled). RGB and depth are the
renderer's own outputs, so labels and images agree pixel for pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera
from chorus_ros.core.labels import UNLABELED
from chorus_ros.core.render import RenderSettings, render

__all__ = ["GroundTruthView", "render_ground_truth", "DEFAULT_MIN_ALPHA"]

DEFAULT_MIN_ALPHA = 0.3
"""Accumulated opacity below which a pixel is unlabeled (windows' glass is about 0.3-0.45)."""


@dataclass
class GroundTruthView:
    """One rendered view with labels. All images ``[H, W, ...]`` on the CPU."""

    rgb: torch.Tensor
    """[H, W, 3] float32 colour in [0, 1] over the render background."""
    depth: torch.Tensor
    """[H, W] float32 expected camera-z depth, metres (0 where alpha = 0)."""
    alpha: torch.Tensor
    """[H, W] float32 accumulated opacity."""
    semantic: torch.Tensor
    """[H, W] int64 class id of the top-weight Gaussian; 65535 = unlabeled."""
    instance: torch.Tensor
    """[H, W] int64 instance id of the top-weight Gaussian; 65535 = unlabeled."""
    top_index: torch.Tensor
    """[H, W] int64 index of the top-weight Gaussian (-1 where none)."""


def render_ground_truth(gaussians: GaussianArrays, camera: Camera, settings: RenderSettings | None = None,
                        *, min_alpha: float = DEFAULT_MIN_ALPHA) -> GroundTruthView:
    """Render RGB, depth and label images of Gaussians carrying ``extras['label']`` and
    ``extras['instance']`` (e.g. ``SyntheticScene.gaussians``).

    Args:
        gaussians: labelled Gaussians (world frame).
        camera: the view.
        settings: renderer settings (default :class:`RenderSettings()`).
        min_alpha: pixels with accumulated alpha below this are unlabeled.
    """
    for key in ("label", "instance"):
        if key not in gaussians.extras:
            raise InvalidInputError(f"ground truth needs gaussians.extras[{key!r}]; "
                                    f"have {sorted(gaussians.extras)}")
    if not 0.0 <= min_alpha <= 1.0:
        raise InvalidInputError(f"min_alpha must be in [0, 1], got {min_alpha}")
    settings = settings or RenderSettings()
    with torch.no_grad():
        out = render(gaussians, camera, settings, return_top_index=True).cpu()
    top = out.top_index.long()
    valid = (top >= 0) & (out.alpha >= min_alpha)
    safe = top.clamp_min(0)
    lab = gaussians.extras["label"].cpu().long()
    ins = gaussians.extras["instance"].cpu().long()
    sem = torch.where(valid, lab[safe], torch.full_like(safe, UNLABELED))
    inst = torch.where(valid, ins[safe], torch.full_like(safe, UNLABELED))
    return GroundTruthView(out.rgb.float(), out.depth.float(), out.alpha.float(), sem, inst,
                           torch.where(top >= 0, top, torch.full_like(top, -1)))
