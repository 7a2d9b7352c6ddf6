"""Configuration of the Chorus scene encoder (ROS parameters ``encoder.*``).

The defaults are sized for a CPU: a three-level sparse U-Net with 5 cm voxels. The receptive
field (derived from the modules in :func:`chorus_ros.core.encoder.model.receptive_field`) sets
the halo that incremental encoding must re-encode around every change, so deeper or wider
networks make every map update more expensive: with the defaults it is 24 voxels (1.25 m).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from chorus_ros.core.errors import InvalidInputError

__all__ = ["HeadSpec", "EncoderConfig", "HEAD_KINDS", "VARIANTS", "NORMS"]

HEAD_KINDS = ("language", "generalist", "object")
"""Teacher head names used across the project."""
VARIANTS = ("gaussian", "pointcloud")
"""Input variants: full Gaussian parameters, or centres + colours + estimated normals only."""
NORMS = ("layer", "batch")
"""Per-voxel normalisations ('layer': LayerNorm over channels; 'batch': BatchNorm, which is a
per-channel affine map in eval mode). Neither mixes voxels at inference."""


@dataclass
class HeadSpec:
    """One teacher-specific projection head on the shared embedding."""

    name: str
    """Head name, one of 'language', 'generalist', 'object' (the teacher kind it is distilled from)."""
    dim: int
    """Output dimension (the teacher's feature dimension; the language head must match the text encoder)."""


def _default_heads() -> list[HeadSpec]:
    return [HeadSpec("language", 64), HeadSpec("generalist", 32), HeadSpec("object", 16)]


@dataclass
class EncoderConfig:
    """Architecture of :class:`chorus_ros.core.encoder.model.ChorusEncoder`."""

    variant: str = "gaussian"
    """Input variant: 'gaussian' (colour, opacity, scales, orientation, position in voxel) or 'pointcloud' (centres, colours, estimated normals only)."""
    feature_version: int = 2
    """Input encoding version (chorus_ros.core.encoder.features): 1 = absolute Gaussian sizes and world-frame normals (checkpoints before issue 8; a config without this field loads as 1), 2 = sizes relative to the neighbourhood and gravity-aligned normals."""
    branches: bool = False
    """Modality branches: one point MLP per channel group of the input encoding ('appearance', 'geometry'), summed before the shared U-Net (training can then equalise their gradients, calibration.branches). False: one stem over all channels (checkpoints without this field)."""
    voxel_size: float = 0.05
    """Edge of the finest voxels, metres. Voxel indices are floor(mean / voxel_size) in the absolute world grid."""
    channels: tuple[int, ...] = (32, 64, 96)
    """Feature channels per U-Net level (finest first); len(channels) - 1 stride-2 downsamplings."""
    encoder_blocks: tuple[int, ...] = (1, 1, 1)
    """Residual blocks (two 3x3x3 submanifold convolutions each) per level on the way down; the last entry is the bottleneck."""
    decoder_blocks: tuple[int, ...] = (1, 1)
    """Residual blocks per level on the way up (finest first), len(channels) - 1 entries."""
    kernel_size: int = 3
    """Kernel size of the submanifold convolutions (odd)."""
    norm: str = "layer"
    """Normalisation inside the U-Net: 'layer' (LayerNorm per voxel) or 'batch' (BatchNorm; affine per channel in eval mode)."""
    point_hidden: int = 32
    """Width of the per-Gaussian MLP whose outputs are averaged into each voxel."""
    head_hidden: int = 96
    """Width of the MLP combining interpolated voxel features with the per-Gaussian encoding."""
    embed_dim: int = 64
    """Dimension of the shared per-Gaussian embedding that feeds every head."""
    heads: list[HeadSpec] = field(default_factory=_default_heads)
    """Projection heads, one per teacher: name and output dimension."""

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.encoder_blocks = tuple(int(b) for b in self.encoder_blocks)
        self.decoder_blocks = tuple(int(b) for b in self.decoder_blocks)
        self.heads = [h if isinstance(h, HeadSpec) else HeadSpec(**h) for h in self.heads]
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InvalidInputError` naming the first inconsistent field."""
        if self.variant not in VARIANTS:
            raise InvalidInputError(f"EncoderConfig.variant {self.variant!r} unknown; known: {list(VARIANTS)}")
        if self.norm not in NORMS:
            raise InvalidInputError(f"EncoderConfig.norm {self.norm!r} unknown; known: {list(NORMS)}")
        from chorus_ros.core.encoder.features import FEATURE_VERSIONS
        if self.feature_version not in FEATURE_VERSIONS:
            raise InvalidInputError(
                f"EncoderConfig.feature_version {self.feature_version!r} unknown; known: {sorted(FEATURE_VERSIONS)} "
                "(was this checkpoint written by a newer chorus_ros?)")
        if not self.voxel_size > 0:
            raise InvalidInputError(f"EncoderConfig.voxel_size must be > 0, got {self.voxel_size}")
        if not self.channels or min(self.channels) <= 0:
            raise InvalidInputError(f"EncoderConfig.channels must be non-empty and positive, got {self.channels}")
        if len(self.encoder_blocks) != len(self.channels) or min(self.encoder_blocks) < 0:
            raise InvalidInputError(
                f"EncoderConfig.encoder_blocks {self.encoder_blocks} needs one entry >= 0 per level "
                f"({len(self.channels)} levels)")
        if len(self.decoder_blocks) != len(self.channels) - 1 or min(self.decoder_blocks, default=0) < 0:
            raise InvalidInputError(
                f"EncoderConfig.decoder_blocks {self.decoder_blocks} needs one entry >= 0 per level "
                f"below the bottleneck ({len(self.channels) - 1})")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise InvalidInputError(f"EncoderConfig.kernel_size must be odd and >= 1, got {self.kernel_size}")
        for name in ("point_hidden", "head_hidden", "embed_dim"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"EncoderConfig.{name} must be > 0, got {getattr(self, name)}")
        if not self.heads:
            raise InvalidInputError("EncoderConfig.heads is empty; at least one head is needed")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"EncoderConfig.heads has duplicate names: {names}")
        for h in self.heads:
            if h.name not in HEAD_KINDS:
                raise InvalidInputError(f"head name {h.name!r} unknown; known: {list(HEAD_KINDS)}")
            if int(h.dim) <= 0:
                raise InvalidInputError(f"head {h.name!r} has dim {h.dim}, must be > 0")

    @property
    def levels(self) -> int:
        """Number of U-Net levels (finest included)."""
        return len(self.channels)

    def head_dims(self) -> dict[str, int]:
        """``{head name: dim}`` in config order."""
        return {h.name: int(h.dim) for h in self.heads}

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists/ints/floats/strings (``yaml.safe_dump``-able)."""
        d = asdict(self)
        for k in ("channels", "encoder_blocks", "decoder_blocks"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
        """Inverse of :meth:`to_dict`; unknown fields raise :class:`InvalidInputError` naming them."""
        if not isinstance(d, dict):
            raise InvalidInputError(f"encoder config must be a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise InvalidInputError(f"encoder config has unknown fields {unknown}; known fields: {known}")
        heads = d.get("heads")
        kw = dict(d)
        kw.setdefault("feature_version", 1)  # configs written before feature versions existed
        if heads is not None:
            if not isinstance(heads, list):
                raise InvalidInputError(f"encoder config 'heads' must be a list, got {type(heads).__name__}")
            parsed = []
            for h in heads:
                if isinstance(h, HeadSpec):
                    parsed.append(h)
                    continue
                if not isinstance(h, dict) or set(h) != {"name", "dim"}:
                    raise InvalidInputError(f"encoder config head {h!r} must be a mapping with exactly 'name' and 'dim'")
                parsed.append(HeadSpec(str(h["name"]), int(h["dim"])))
            kw["heads"] = parsed
        return cls(**kw)
