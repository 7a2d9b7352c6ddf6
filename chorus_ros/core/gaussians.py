"""A batch of 3D Gaussians in the raw 3DGS parameterisation (as stored in PLY files).

:class:`GaussianArrays` is the value type passed between the PLY reader, the map store, the
renderer, the encoder and the ROS conversions. Raw means *pre-activation*, exactly as the
reference 3DGS implementation stores parameters:

============  ===========  ==========================================================
field         shape        meaning
============  ===========  ==========================================================
means         [N, 3]       centres, world (map) frame, metres
sh            [N, K, 3]    SH coefficients, K = (degree+1)^2; ``sh[:, 0]`` = f_dc_0..2,
                           ``sh[:, 1:]`` from f_rest_* (channel-major in the PLY)
opacities     [N]          opacity logits (sigmoid gives opacity in (0, 1))
log_scales    [N, 3]       log of the per-axis standard deviations, metres
quats         [N, 4]       rotation, **wxyz** (PLY rot_0..3), not necessarily unit
ids           [N]          int64 holding uint32 Gaussian ids (stable across map updates)
extras        name->[N,..] optional per-Gaussian attributes (e.g. ``label``, ``instance``)
============  ===========  ==========================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from chorus_ros.core.errors import InvalidInputError

__all__ = ["GaussianArrays", "SH_C0", "sh_degree_from_k", "rgb_to_sh_dc", "sh_dc_to_rgb"]

SH_C0 = 0.28209479177387814
"""Zeroth-order SH basis constant: colour = 0.5 + SH_C0 * f_dc."""


def sh_degree_from_k(k: int) -> int:
    """SH degree for ``k`` coefficients per channel (1, 4, 9, 16 -> 0..3)."""
    for d in range(4):
        if (d + 1) ** 2 == k:
            return d
    raise InvalidInputError(f"{k} SH coefficients per channel is not (degree+1)^2 for degree 0..3")


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` colour in [0, 1] -> DC SH coefficient (f_dc)."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: torch.Tensor) -> torch.Tensor:
    """DC SH coefficient ``[..., 3]`` -> view-independent base colour (unclamped)."""
    return dc * SH_C0 + 0.5


@dataclass
class GaussianArrays:
    """N Gaussians in the raw 3DGS parameterisation. See the module docstring for fields."""

    means: torch.Tensor
    sh: torch.Tensor
    opacities: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    ids: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`InvalidInputError` naming the field whose shape is inconsistent."""
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expect = {
            "means": (self.means, (n, 3)),
            "opacities": (self.opacities, (n,)),
            "log_scales": (self.log_scales, (n, 3)),
            "quats": (self.quats, (n, 4)),
        }
        for name, (t, shape) in expect.items():
            if tuple(t.shape) != shape:
                raise InvalidInputError(f"GaussianArrays.{name} has shape {tuple(t.shape)}, expected {shape}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise InvalidInputError(f"GaussianArrays.sh has shape {tuple(self.sh.shape)}, expected ({n}, K, 3)")
        sh_degree_from_k(self.sh.shape[1])
        if self.ids is not None and tuple(self.ids.shape) != (n,):
            raise InvalidInputError(f"GaussianArrays.ids has shape {tuple(self.ids.shape)}, expected ({n},)")
        for k, v in self.extras.items():
            if v.shape[0] != n:
                raise InvalidInputError(f"GaussianArrays.extras[{k!r}] has {v.shape[0]} rows, expected {n}")

    # ------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        """Spherical-harmonics degree (0..3)."""
        return sh_degree_from_k(self.sh.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    # ---------------------------------------------------------- activations
    @property
    def opacity(self) -> torch.Tensor:
        """``[N]`` opacity in (0, 1) (sigmoid of the logits)."""
        return torch.sigmoid(self.opacities)

    def faint_mask(self, min_opacity: float) -> torch.Tensor:
        """``[N]`` bool: opacity below ``min_opacity`` (the Gaussians the perception pipeline sets
        aside, ``PipelineConfig.min_opacity``; a non-finite opacity is not faint). All False when
        ``min_opacity <= 0``."""
        if min_opacity <= 0:
            return torch.zeros(len(self), dtype=torch.bool, device=self.opacities.device)
        return self.opacity < float(min_opacity)

    @property
    def scales(self) -> torch.Tensor:
        """``[N, 3]`` per-axis standard deviations in metres."""
        return torch.exp(self.log_scales)

    @property
    def unit_quats(self) -> torch.Tensor:
        """``[N, 4]`` normalised wxyz quaternions (zero quaternions become identity)."""
        n = self.quats.norm(dim=-1, keepdim=True)
        ident = torch.zeros_like(self.quats)
        ident[:, 0] = 1.0
        return torch.where(n > 1e-12, self.quats / n.clamp_min(1e-12), ident)

    @property
    def base_rgb(self) -> torch.Tensor:
        """``[N, 3]`` view-independent colour from the DC term, clamped to [0, 1]."""
        return sh_dc_to_rgb(self.sh[:, 0]).clamp(0.0, 1.0)

    # ------------------------------------------------------------ utilities
    def to(self, device: torch.device | str) -> "GaussianArrays":
        """Copy with every tensor on ``device``."""
        return GaussianArrays(
            self.means.to(device), self.sh.to(device), self.opacities.to(device),
            self.log_scales.to(device), self.quats.to(device),
            None if self.ids is None else self.ids.to(device),
            {k: v.to(device) for k, v in self.extras.items()},
        )

    def cpu(self) -> "GaussianArrays":
        return self.to("cpu")

    def index(self, idx: torch.Tensor | slice) -> "GaussianArrays":
        """Subset by an index tensor, boolean mask or slice."""
        return GaussianArrays(
            self.means[idx], self.sh[idx], self.opacities[idx], self.log_scales[idx], self.quats[idx],
            None if self.ids is None else self.ids[idx],
            {k: v[idx] for k, v in self.extras.items()},
        )

    @staticmethod
    def concat(parts: list["GaussianArrays"]) -> "GaussianArrays":
        """Concatenate batches; SH degree, presence of ids and extras keys must agree."""
        if not parts:
            raise InvalidInputError("cannot concatenate zero GaussianArrays")
        keys = set(parts[0].extras)
        if any(set(p.extras) != keys for p in parts) or len({p.sh.shape[1] for p in parts}) != 1:
            raise InvalidInputError("GaussianArrays to concatenate differ in SH degree or extras")
        has_ids = [p.ids is not None for p in parts]
        if any(has_ids) and not all(has_ids):
            raise InvalidInputError("either all or none of the GaussianArrays to concatenate need ids")
        return GaussianArrays(
            torch.cat([p.means for p in parts]), torch.cat([p.sh for p in parts]),
            torch.cat([p.opacities for p in parts]), torch.cat([p.log_scales for p in parts]),
            torch.cat([p.quats for p in parts]),
            torch.cat([p.ids for p in parts]) if all(has_ids) else None,
            {k: torch.cat([p.extras[k] for p in parts]) for k in keys},
        )

    def with_sh_degree(self, degree: int) -> "GaussianArrays":
        """Copy truncated or zero-padded to ``degree``."""
        k = (degree + 1) ** 2
        sh = self.sh[:, :k]
        if sh.shape[1] < k:
            sh = torch.cat([sh, sh.new_zeros(len(self), k - sh.shape[1], 3)], dim=1)
        return GaussianArrays(self.means, sh, self.opacities, self.log_scales, self.quats, self.ids,
                              dict(self.extras))

    def finite_mask(self) -> torch.Tensor:
        """``[N]`` bool: all parameters finite."""
        m = torch.isfinite(self.means).all(-1) & torch.isfinite(self.log_scales).all(-1)
        m &= torch.isfinite(self.quats).all(-1) & torch.isfinite(self.opacities)
        return m & torch.isfinite(self.sh).flatten(1).all(-1)
