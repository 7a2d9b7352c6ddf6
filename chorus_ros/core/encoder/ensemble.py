"""Rotation ensemble: the encoder run on K rotated copies of the map, outputs averaged.

A sparse voxel encoder is not exactly invariant to a rotation of the map about the vertical: the
voxel grid cuts the room differently, and the network only saw rotations as training
randomisation. Averaging its per-Gaussian outputs over several fixed rotations (and sub-voxel
shifts) of the same map removes part of that variance -- a test-time ensemble of one network.
It stays feed-forward (no per-scene optimisation) and costs K forward passes per encode.

Member ``k`` of ``K`` (``k = 0..K-1``) sees the map rotated by ``2 pi k / K`` about the world
``z`` axis through the world origin (the encoder's up axis, ``feature_version`` 2), then shifted
by :func:`member_offset` (a fixed fraction of a voxel in x and y, so that the members also differ
in how the grid cuts the map). Member 0 is the map itself, so ``K = 1`` is the plain encoder,
bit for bit.

Every member is a fixed rigid transform of world coordinates, so a Gaussian's averaged outputs
still depend only on the Gaussians within a bounded distance: the base receptive field ``R``
(L-infinity, in the member's frame) becomes at most ``R (|cos a| + |sin a|)`` in world x and y
(:attr:`RotationEnsemble.receptive_field_m`). The halo path of
:class:`~chorus_ros.core.encoder.incremental.IncrementalEncoder` uses that radius, so incremental
updates stay equal to a full encode (tested). The cached path keeps one network's activations
per voxel of the world grid and cannot hold K rotated grids: an ensemble needs
``incremental.mode: halo``.

Measured on the shipped checkpoint: docs/generalisation.md, "A rotation ensemble at encode time".
"""
from __future__ import annotations

import math

import torch
from torch import nn

from chorus_ros.core.encoder.model import ChorusEncoder, EncoderOutput
from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import rotate_about_axis, transform_gaussians

__all__ = ["RotationEnsemble", "member_transform", "member_offset", "MAX_ROTATIONS"]

MAX_ROTATIONS = 32
"""Most members accepted (each one is a full forward pass)."""

_SHIFT_X = (math.sqrt(5.0) - 1.0) / 2.0     # golden-ratio steps: members' grid shifts do not repeat
_SHIFT_Y = 1.0 - _SHIFT_X / 2.0


def member_offset(k: int, voxel_size: float) -> torch.Tensor:
    """``[3]`` shift (metres, world frame after the rotation) of member ``k``: a fraction of a
    voxel in x and y (``0`` for member 0), none in z (the floor stays where it was)."""
    if k == 0:
        return torch.zeros(3, dtype=torch.float64)
    fx, fy = (k * _SHIFT_X) % 1.0, (k * _SHIFT_Y) % 1.0
    return torch.tensor([fx * voxel_size, fy * voxel_size, 0.0], dtype=torch.float64)


def member_transform(k: int, rotations: int, voxel_size: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(R [3, 3], q [4] wxyz, t [3])`` of member ``k`` of ``rotations``: ``x' = R x + t``,
    Gaussian orientation ``q * q_gaussian`` (float64)."""
    R, q = rotate_about_axis(2.0 * math.pi * k / rotations, 2, torch.float64)
    return R, q, member_offset(k, voxel_size)


class RotationEnsemble(nn.Module):
    """``base`` averaged over ``rotations`` rotated copies of its input (module docstring).

    Example::

        ens = RotationEnsemble(model, 8).eval()
        with torch.no_grad():
            out = ens(gaussians)             # EncoderOutput, the mean of 8 members
        ens.receptive_field_m               # >= model.receptive_field_m

    It has the base encoder's parameters (``ens.base``) and nothing else: it is a way of running
    a checkpoint, not a new model.
    """

    def __init__(self, base: ChorusEncoder, rotations: int) -> None:
        super().__init__()
        if not isinstance(base, ChorusEncoder):
            raise InvalidInputError(f"RotationEnsemble needs a ChorusEncoder, got {type(base).__name__}")
        if not 1 <= int(rotations) <= MAX_ROTATIONS:
            raise InvalidInputError(f"rotations must be in [1, {MAX_ROTATIONS}], got {rotations}")
        self.base = base
        self.rotations = int(rotations)
        vs = float(base.config.voxel_size)
        self._members = [member_transform(k, self.rotations, vs) for k in range(self.rotations)]
        self.xy_gain = max(abs(float(R[0, 0])) + abs(float(R[0, 1])) for R, _, _ in self._members)
        """Largest ``|cos a| + |sin a|`` over the members: how far an L-infinity box of a member's
        frame reaches in world x and y per unit of its half-width, and how much larger a member's
        coordinates can be than the world's (the voxel key range,
        :func:`~chorus_ros.core.encoder.incremental.max_supported_coordinate`)."""

    @property
    def config(self):
        """The base encoder's :class:`~chorus_ros.core.encoder.config.EncoderConfig`."""
        return self.base.config

    @property
    def receptive_field_m(self) -> float:
        """L-infinity distance (metres, world frame) beyond which a Gaussian cannot affect
        another's averaged outputs: the base radius times :attr:`xy_gain` (a member's shift moves
        both Gaussians alike, and the base radius already covers the voxel rounding)."""
        return self.base.receptive_field_m * self.xy_gain

    def forward(self, g: GaussianArrays) -> EncoderOutput:
        """Mean of the base encoder's outputs over the members, in the order of ``g``."""
        if self.rotations == 1:
            return self.base(g)
        emb = None
        heads: dict[str, torch.Tensor] = {}
        for R, q, t in self._members:
            out = self.base(transform_gaussians(g, R, q, t, torch.float64))
            if emb is None:
                emb = out.embedding.float().clone()
                heads = {k: v.float().clone() for k, v in out.heads.items()}
            else:
                emb += out.embedding.float()
                for k, v in out.heads.items():
                    heads[k] += v.float()
        k = float(self.rotations)
        return EncoderOutput(emb / k, {name: v / k for name, v in heads.items()})
