"""Real spherical harmonics, degree 0..3, in the basis and sign convention of 3DGS / gsplat.

The colour of a Gaussian seen along the unit direction ``d`` (camera centre -> Gaussian mean) is
``max(0, sum_k Y_k(d) * sh[k] + 0.5)`` with the basis functions below, written with their
normalisation constants ``sqrt((2l+1)/(4 pi) * (l-|m|)!/(l+|m|)!)`` (times sqrt(2) for m != 0)
spelled out. The signs (e.g. ``Y_1 = -c1*y, c1*z, -c1*x``) are those of the 3DGS reference
renderer, which gsplat reproduces; :func:`sh_basis` is checked against closed forms in the tests.
"""
from __future__ import annotations

import math

import torch

from chorus_ros.core.errors import InvalidInputError

__all__ = ["sh_basis", "eval_sh", "sh_to_rgb", "num_sh_bases"]

_PI = math.pi
# l = 0
_C0 = 0.5 / math.sqrt(_PI)                      # 0.28209...
# l = 1
_C1 = math.sqrt(3.0 / (4.0 * _PI))              # 0.48860...
# l = 2
_C2_XY = 0.5 * math.sqrt(15.0 / _PI)            # 1.09254...  (xy, yz, xz)
_C2_Z = 0.25 * math.sqrt(5.0 / _PI)             # 0.31539...  (2z^2 - x^2 - y^2)
_C2_XX = 0.25 * math.sqrt(15.0 / _PI)           # 0.54627...  (x^2 - y^2)
# l = 3
_C3_A = 0.25 * math.sqrt(35.0 / (2.0 * _PI))    # 0.59004...  (y(3x^2-y^2), x(x^2-3y^2))
_C3_B = 0.5 * math.sqrt(105.0 / _PI)            # 2.89061...  (xyz)
_C3_C = 0.25 * math.sqrt(21.0 / (2.0 * _PI))    # 0.45704...  (y(4z^2-x^2-y^2), x(...))
_C3_D = 0.25 * math.sqrt(7.0 / _PI)             # 0.37317...  (z(2z^2-3x^2-3y^2))
_C3_E = 0.25 * math.sqrt(105.0 / _PI)           # 1.44530...  (z(x^2-y^2))


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per channel for ``degree`` (1, 4, 9, 16)."""
    if degree not in (0, 1, 2, 3):
        raise InvalidInputError(f"SH degree must be 0..3, got {degree!r}")
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Basis values ``[..., (degree+1)^2]`` at directions ``dirs`` ``[..., 3]``.

    ``dirs`` need not be unit length: they are normalised here (a zero direction gives the
    DC term only, as its higher bands vanish).
    """
    k = num_sh_bases(degree)
    ones = torch.ones_like(dirs[..., 0])
    out = [_C0 * ones]
    if degree == 0:
        return torch.stack(out, dim=-1)
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d.unbind(-1)
    out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2_XY * x * y,
            -_C2_XY * y * z,
            _C2_Z * (2.0 * zz - xx - yy),
            -_C2_XY * x * z,
            _C2_XX * (xx - yy),
        ]
        if degree >= 3:
            out += [
                -_C3_A * y * (3.0 * xx - yy),
                _C3_B * x * y * z,
                -_C3_C * y * (4.0 * zz - xx - yy),
                _C3_D * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                -_C3_C * x * (4.0 * zz - xx - yy),
                _C3_E * z * (xx - yy),
                -_C3_A * x * (xx - 3.0 * yy),
            ]
    res = torch.stack(out, dim=-1)
    assert res.shape[-1] == k
    return res


def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Raw SH value ``[N, 3]`` (no +0.5 offset) of ``coeffs`` ``[N, K, 3]`` along ``dirs`` ``[N, 3]``.

    Only the first ``(degree+1)^2`` coefficients are used; ``K`` may be larger.
    """
    k = num_sh_bases(degree)
    if coeffs.ndim != 3 or coeffs.shape[-1] != 3 or coeffs.shape[1] < k:
        raise InvalidInputError(
            f"SH coefficients must be [N, >={k}, 3] for degree {degree}, got {tuple(coeffs.shape)}")
    basis = sh_basis(degree, dirs)  # [N, k]
    return torch.einsum("nk,nkc->nc", basis, coeffs[:, :k])


def sh_to_rgb(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colour ``[N, 3]`` as gsplat/3DGS compute it: ``max(eval_sh + 0.5, 0)`` (no upper clamp)."""
    return torch.clamp_min(eval_sh(degree, dirs, coeffs) + 0.5, 0.0)
