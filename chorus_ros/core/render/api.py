"""The renderer's one API: :func:`render` with a gsplat (CUDA) and a pure-torch (CPU) backend.

Both backends share gsplat's conventions (projection with the EWA Jacobian, ``eps2d`` added to
the 2D covariance diagonal, near/far culling on camera z, gsplat 1.5.3's opacity-aware per-axis
radii ``ceil(min(3.33, sqrt(2 ln(255 opacity))) * sigma_axis)``, alpha clamped to 0.999 and
skipped below 1/255, front-to-back compositing stopped before the Gaussian that would bring the
transmittance to <= 1e-4, pixel centres at integer + 0.5). ``RenderOutput.radii`` holds the
larger of the two axis radii. Details: :mod:`.projection`, :mod:`.reference`,
:mod:`.gsplat_backend`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from chorus_ros.core.errors import BackendUnavailableError, InvalidInputError, RegistryError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera

__all__ = ["RenderSettings", "RenderOutput", "render", "available_backends", "select_backend"]

BACKENDS = ("reference", "gsplat")


@dataclass
class RenderSettings:
    """Renderer configuration (mirrored into ROS parameters under ``render.*``)."""

    backend: str = "auto"
    """'auto' (gsplat when CUDA is available, else the torch reference), 'gsplat' or 'reference'."""
    near: float = 0.01
    """Near plane on camera z, metres; Gaussians closer are culled (gsplat ``near_plane``)."""
    far: float = 1e10
    """Far plane on camera z, metres (gsplat ``far_plane``)."""
    eps2d: float = 0.3
    """Added to the 2D covariance diagonal, pixels^2 (gsplat ``eps2d``)."""
    sh_degree: int | None = None
    """SH degree used for colour; None uses the Gaussians' own degree."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """RGB composited behind the Gaussians."""
    tile_size: int = 16
    """Tile edge in pixels for gsplat's binning; the reference bins into its own 8-pixel tiles
    (the image does not depend on the tile size)."""
    radius_clip: float = 0.0
    """Skip Gaussians whose screen radius is at most this many pixels."""

    def validate(self) -> None:
        """Raise InvalidInputError naming a setting no render can use (run-time parameter
        changes are checked with this before they are accepted)."""
        import math
        near, far = self.near, self.far
        if not (math.isfinite(near) and near > 0 and not math.isnan(far) and far > near):
            raise InvalidInputError(f"render settings need 0 < near < far (near finite), got near={near}, far={far}")
        if not (math.isfinite(self.eps2d) and self.eps2d >= 0):
            raise InvalidInputError(f"render eps2d must be finite and >= 0, got {self.eps2d}")
        if not (math.isfinite(self.radius_clip) and self.radius_clip >= 0):
            raise InvalidInputError(f"render radius_clip must be finite and >= 0, got {self.radius_clip}")
        if self.sh_degree is not None and self.sh_degree not in (0, 1, 2, 3):
            raise InvalidInputError(f"render sh_degree must be unset or 0..3, got {self.sh_degree}")
        bg = tuple(self.background)
        if len(bg) != 3 or not all(math.isfinite(float(v)) for v in bg):
            raise InvalidInputError(f"render background must be 3 finite numbers, got {self.background}")
        if int(self.tile_size) < 1:
            raise InvalidInputError(f"render tile_size must be >= 1, got {self.tile_size}")


@dataclass
class RenderOutput:
    """What one view's render returns. Images are ``[H, W, ...]`` in the camera's pixel grid."""

    rgb: torch.Tensor
    """[H, W, 3] colour composited over ``background``."""
    depth: torch.Tensor
    """[H, W] expected camera-z depth, metres (accumulated depth / alpha; 0 where alpha = 0)."""
    alpha: torch.Tensor
    """[H, W] accumulated opacity in [0, 1]."""
    features: torch.Tensor | None = None
    """[H, W, C] alpha-composited per-Gaussian features (no background), when features were given."""
    weights: torch.Tensor | None = None
    """[N] each Gaussian's total blending weight (sum over pixels of alpha*T), when asked for."""
    top_index: torch.Tensor | None = None
    """[H, W] int64 index of the Gaussian with the largest blending weight per pixel (-1: none)."""
    radii: torch.Tensor | None = None
    """[N] int32 screen radius in pixels (0 where culled)."""
    backend: str = ""
    """The backend that produced this output."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "RenderOutput":
        def mv(t):
            return None if t is None else t.to(device)
        return replace(self, rgb=mv(self.rgb), depth=mv(self.depth), alpha=mv(self.alpha),
                       features=mv(self.features), weights=mv(self.weights),
                       top_index=mv(self.top_index), radii=mv(self.radii),
                       extras={k: v.to(device) for k, v in self.extras.items()})

    def cpu(self) -> "RenderOutput":
        return self.to("cpu")


def available_backends() -> list[str]:
    """Backends that can run here: 'reference' always, 'gsplat' when it imports and CUDA works."""
    out = ["reference"]
    if torch.cuda.is_available():
        try:
            import gsplat  # noqa: F401
            out.append("gsplat")
        except Exception:  # pragma: no cover - depends on the machine
            pass
    return out


def select_backend(requested: str, device: torch.device) -> str:
    """Resolve 'auto' and check that a forced backend can run on ``device``."""
    if requested not in BACKENDS + ("auto",):
        raise RegistryError(f"unknown render backend {requested!r}; known: {', '.join(BACKENDS + ('auto',))}")
    if requested == "auto":
        return "gsplat" if device.type == "cuda" and "gsplat" in available_backends() else "reference"
    if requested == "gsplat":
        if "gsplat" not in available_backends():
            raise BackendUnavailableError("render backend 'gsplat' needs CUDA and the gsplat package")
        if device.type != "cuda":
            raise BackendUnavailableError(f"render backend 'gsplat' needs CUDA tensors, got device {device}")
    return requested


def render(
    gaussians: GaussianArrays,
    camera: Camera,
    settings: RenderSettings | None = None,
    *,
    features: torch.Tensor | None = None,
    return_weights: bool = False,
    return_top_index: bool = False,
) -> RenderOutput:
    """Render one view of ``gaussians``.

    Args:
        gaussians: N Gaussians (raw parameters, world frame) on the render device.
        camera: the view (world-to-camera ``viewmat``, ``K``, size).
        settings: renderer settings; defaults to :class:`RenderSettings()`.
        features: optional ``[N, C]`` per-Gaussian features splatted like colour (no SH);
            gradients flow to them and to the Gaussian parameters.
        return_weights: also return each Gaussian's total blending weight in this view ``[N]``.
        return_top_index: also return the per-pixel index of the highest-weight Gaussian.

    Returns:
        :class:`RenderOutput` on the Gaussians' device.
    """
    settings = settings or RenderSettings()
    if features is not None and (features.ndim != 2 or features.shape[0] != len(gaussians)):
        raise InvalidInputError(
            f"features must be [N, C] with N={len(gaussians)}, got {tuple(features.shape)}")
    backend = select_backend(settings.backend, gaussians.device)
    camera = camera.to(gaussians.device)
    if backend == "gsplat":
        from chorus_ros.core.render import gsplat_backend as impl
    else:
        from chorus_ros.core.render import reference as impl
    out = impl.render(gaussians, camera, settings, features=features, return_weights=return_weights,
                      return_top_index=return_top_index)
    out.backend = backend
    return out
