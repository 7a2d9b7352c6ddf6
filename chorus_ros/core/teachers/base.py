"""Teacher contract: a 2D image model whose dense features the encoder learns to predict.

A :class:`Teacher` maps one RGB image ``[H, W, 3]`` (float in [0, 1]) to a feature map
``[h, w, dim]`` at its own patch resolution. The lifting step (:mod:`chorus_ros.core.lift`)
upsamples that map to the render resolution and turns many views' maps into per-Gaussian
pseudo-labels, so every teacher - a real open_clip / timm network or a synthetic oracle - goes
through exactly the same lifting and training code.

Each teacher supervises one encoder head, named by its ``kind``: ``'language'`` (features
comparable with text embeddings), ``'generalist'`` (general visual features, DINO-style) or
``'object'`` (features that separate object instances, SAM-style).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from chorus_ros.core.errors import InvalidInputError

__all__ = ["TEACHER_KINDS", "TeacherSpec", "FrameContext", "Teacher", "check_image"]

TEACHER_KINDS = ("language", "generalist", "object")
"""The head a teacher supervises; also the encoder head's name."""


@dataclass
class TeacherSpec:
    """Which teacher to build (stored in checkpoint metadata as a plain dict)."""

    kind: str
    """Head it supervises: 'language', 'generalist' or 'object'."""
    type: str
    """Registry key (see ``chorus_ros.core.teachers.known_teachers()``)."""
    options: dict = field(default_factory=dict)
    """Type-specific options (model name, local checkpoint path, patch size, noise...)."""

    def __post_init__(self) -> None:
        if self.kind not in TEACHER_KINDS:
            raise InvalidInputError(f"teacher kind {self.kind!r} is not one of {TEACHER_KINDS}")
        if not isinstance(self.options, dict):
            raise InvalidInputError(f"teacher options must be a mapping, got {type(self.options).__name__}")
        self.options = dict(self.options)

    @classmethod
    def from_dict(cls, d: "dict | TeacherSpec") -> "TeacherSpec":
        """Build from a plain dict; unknown keys raise naming them."""
        if isinstance(d, TeacherSpec):
            return d
        if not isinstance(d, dict):
            raise InvalidInputError(f"teacher spec must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise InvalidInputError(f"unknown teacher spec keys {bad}; known: {sorted(known)}")
        missing = sorted({"kind", "type"} - set(d))
        if missing:
            raise InvalidInputError(f"teacher spec {d!r} lacks {missing}")
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain, YAML-safe dict."""
        return asdict(self)

    def digest(self) -> str:
        """Stable hash of the spec (cache keys)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class FrameContext:
    """Ground truth of one synthetic view, for the oracle teachers (real teachers ignore it).

    Attributes:
        labels: ``[H, W]`` int64 class ids of the view (65535 = unlabeled), or None.
        instances: ``[H, W]`` int64 instance ids (negative or 65535 = none), or None.
        label_set: the :class:`~chorus_ros.core.labels.LabelSet` the ids refer to.
        seed: per-frame seed for deterministic teacher noise.
    """

    labels: torch.Tensor | None = None
    instances: torch.Tensor | None = None
    label_set: Any = None
    seed: int = 0


def check_image(image: torch.Tensor, who: str) -> torch.Tensor:
    """Validate an ``[H, W, 3]`` float image in [0, 1]; returns it as float32."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[-1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInputError(f"{who}: image must be a [H, W, 3] tensor, got {shape}")
    if not image.is_floating_point():
        raise InvalidInputError(f"{who}: image must be float in [0, 1], got dtype {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidInputError(f"{who}: image is empty ({tuple(image.shape)})")
    return image.float()


class Teacher:
    """Base class. Subclasses set ``dim`` and implement :meth:`features`.

    Attributes:
        name: registry key it was built from.
        kind: the head it supervises ('language', 'generalist', 'object').
        dim: feature channels of the output map.
        spec: the :class:`TeacherSpec` it was built from.
    """

    name: str = ""
    dim: int = 0
    needs_context: bool = False
    """True for oracles, which read the ground truth in :class:`FrameContext`."""

    def __init__(self, spec: TeacherSpec) -> None:
        self.spec = spec
        self.kind = spec.kind

    def __call__(self, image: torch.Tensor, context: FrameContext | None = None) -> torch.Tensor:
        """``[H, W, 3]`` float image in [0, 1] -> ``[h, w, dim]`` float32 feature map (CPU).

        ``context`` carries the ground truth that oracle teachers need.
        """
        image = check_image(image, f"teacher {self.name!r}")
        if self.needs_context and context is None:
            raise InvalidInputError(f"teacher {self.name!r} is a synthetic oracle and needs a FrameContext "
                                    "with ground-truth label/instance images")
        with torch.no_grad():
            out = self.features(image, context)
        assert out.ndim == 3 and out.shape[-1] == self.dim, (tuple(out.shape), self.dim)
        return out.float().cpu()

    def features(self, image: torch.Tensor, context: FrameContext | None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, dim={self.dim})"


def option(spec: TeacherSpec, known: dict[str, Any]) -> dict[str, Any]:
    """Merge ``spec.options`` over ``known`` defaults; unknown option keys raise naming them."""
    bad = sorted(set(spec.options) - set(known))
    if bad:
        raise InvalidInputError(f"teacher {spec.type!r}: unknown options {bad}; known: {sorted(known)}")
    out = dict(known)
    out.update(spec.options)
    return out
