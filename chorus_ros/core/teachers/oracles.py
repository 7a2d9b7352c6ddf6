"""Synthetic "oracle" teachers: dense features computed from a synthetic view's ground truth.

They stand in for the real teachers on synthetic scenes (tests, the demo checkpoint) and go
through exactly the same lifting and training code. Each reads the :class:`FrameContext` of
the view (GT class and instance images, the label set) and returns ``[h, w, dim]`` at a patch
resolution of ``patch_size`` pixels, where each patch is the *average* of its member pixels'
per-pixel features (edge patches average the pixels they hold), like a ViT's patch grid.

* ``oracle_language``: the configured text encoder's embedding of each pixel's class name
  (zero for unlabeled pixels), pooled, plus Gaussian noise of std ``noise``.
* ``oracle_generalist``: a fixed random projection of ``[class one-hot * class_weight,
  blurred rgb * rgb_weight]`` - smooth features of class and appearance.
* ``oracle_object``: a fixed random unit vector per instance id (hashed deterministically from
  the id and ``seed``), optionally mixed with a per-class vector (``class_mix``) - embeddings
  that separate instances.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.labels import UNLABELED
from chorus_ros.core.teachers.base import FrameContext, Teacher, TeacherSpec, option
from chorus_ros.core.teachers.registry import register_teacher

__all__ = ["patch_pool", "hashed_unit_vectors", "OracleLanguageTeacher", "OracleGeneralistTeacher",
           "OracleObjectTeacher"]


def patch_pool(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Average ``[H, W, C]`` over ``patch x patch`` cells -> ``[ceil(H/p), ceil(W/p), C]``.

    Edge cells that extend past the image average only the pixels they contain.
    """
    if patch < 1:
        raise InvalidInputError(f"patch size must be >= 1, got {patch}")
    H, W, C = x.shape
    h, w = math.ceil(H / patch), math.ceil(W / patch)
    pad = (0, 0, 0, w * patch - W, 0, h * patch - H)
    xs = F.pad(x, pad).reshape(h, patch, w, patch, C).sum(dim=(1, 3))
    ones = F.pad(torch.ones(H, W, 1, dtype=x.dtype, device=x.device), pad)
    cnt = ones.reshape(h, patch, w, patch, 1).sum(dim=(1, 3))
    return xs / cnt


def hashed_unit_vectors(ids, dim: int, seed: int, salt: int = 0) -> torch.Tensor:
    """``[k, dim]`` float32 unit vectors, each a pure function of ``(seed, salt, id)``.

    Uses numpy's SeedSequence, so the vectors are the same in every process and platform.
    """
    out = np.empty((len(ids), dim), dtype=np.float64)
    for r, i in enumerate(ids):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(salt), int(i) & (2**63 - 1)])))
        v = rng.standard_normal(dim)
        out[r] = v / np.linalg.norm(v)
    return torch.from_numpy(out).float()


def _check_gt(context: FrameContext | None, image: torch.Tensor, who: str, field: str) -> torch.Tensor:
    t = getattr(context, field, None) if context is not None else None
    if t is None:
        raise InvalidInputError(f"teacher {who!r} needs FrameContext.{field} (a [H, W] ground-truth image)")
    t = torch.as_tensor(t)
    if tuple(t.shape) != tuple(image.shape[:2]):
        raise InvalidInputError(f"teacher {who!r}: FrameContext.{field} is {tuple(t.shape)}, "
                                f"image is {tuple(image.shape[:2])}")
    return t.long()


def _onehot_classes(labels: torch.Tensor, k: int, who: str) -> torch.Tensor:
    """``[H, W]`` class ids -> ``[H, W, K]`` float one-hot (zero rows for unlabeled)."""
    bad = (labels != UNLABELED) & ((labels < 0) | (labels >= k))
    if bad.any():
        raise InvalidInputError(f"teacher {who!r}: label image has ids {labels[bad].unique()[:8].tolist()} "
                                f"outside the label set (0..{k - 1}) and not {UNLABELED}")
    valid = labels != UNLABELED
    oh = torch.zeros(*labels.shape, k + 1)
    oh.scatter_(-1, torch.where(valid, labels, torch.full_like(labels, k))[..., None], 1.0)
    return oh[..., :k]


def _noise(shape, std: float, seed: int, frame_seed: int) -> torch.Tensor:
    if std <= 0:
        return torch.zeros(shape)
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(frame_seed)) & (2**62 - 1))
    return torch.randn(shape, generator=g) * std


class _Oracle(Teacher):
    needs_context = True

    def _label_set(self, context: FrameContext):
        if context.label_set is None:
            raise InvalidInputError(f"teacher {self.name!r} needs FrameContext.label_set")
        return context.label_set


@register_teacher("oracle_language")
class OracleLanguageTeacher(_Oracle):
    """Text embedding of each pixel's class name, pooled to patches, with noise.

    Options: ``patch_size`` (px, default 8), ``noise`` (std per channel, default 0.05),
    ``seed``, ``text_encoder`` (a TextEncoderSpec dict; used when no ``text_encoder``
    resource is passed to :func:`build_teacher`).
    """

    name = "oracle_language"
    RESOURCES = ("text_encoder",)
    DEFAULTS = {"patch_size": 8, "noise": 0.05, "seed": 0, "text_encoder": None}

    def __init__(self, spec: TeacherSpec, text_encoder=None) -> None:
        super().__init__(spec)
        self.o = option(spec, self.DEFAULTS)
        if text_encoder is None:
            if self.o["text_encoder"] is None:
                raise InvalidInputError("teacher 'oracle_language' needs a text encoder: pass "
                                        "text_encoder= to build_teacher or set options.text_encoder")
            from chorus_ros.core.text import build_text_encoder
            text_encoder = build_text_encoder(self.o["text_encoder"])
        self.text_encoder = text_encoder
        self.dim = int(text_encoder.dim)
        self._table: dict[tuple, torch.Tensor] = {}

    def class_embeddings(self, label_set) -> torch.Tensor:
        """``[K, dim]`` text embeddings of the label set's class names (cached)."""
        key = tuple(label_set.names)
        if key not in self._table:
            self._table[key] = self.text_encoder.encode(list(label_set.names)).float()
        return self._table[key]

    def features(self, image: torch.Tensor, context: FrameContext | None) -> torch.Tensor:
        labels = _check_gt(context, image, self.name, "labels")
        table = self.class_embeddings(self._label_set(context))
        oh = patch_pool(_onehot_classes(labels, table.shape[0], self.name), int(self.o["patch_size"]))
        f = oh @ table
        return f + _noise(f.shape, float(self.o["noise"]), self.o["seed"], context.seed)


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[H, W, C]`` (reflect padding)."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[-1]
    t = img.permute(2, 0, 1)[None]
    mode = "reflect" if min(img.shape[:2]) > r else "replicate"
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return t[0].permute(1, 2, 0)


@register_teacher("oracle_generalist")
class OracleGeneralistTeacher(_Oracle):
    """A fixed random projection of ``[class one-hot * class_weight, blurred rgb * rgb_weight]``.

    Options: ``dim`` (default 32), ``patch_size`` (8), ``blur_sigma`` (px, 2.0),
    ``class_weight`` (1.0), ``rgb_weight`` (1.0), ``noise`` (0.0), ``seed``.
    """

    name = "oracle_generalist"
    DEFAULTS = {"dim": 32, "patch_size": 8, "blur_sigma": 2.0, "class_weight": 1.0, "rgb_weight": 1.0,
                "noise": 0.0, "seed": 1}

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__(spec)
        self.o = option(spec, self.DEFAULTS)
        self.dim = int(self.o["dim"])
        if self.dim < 1:
            raise InvalidInputError(f"oracle_generalist dim must be >= 1, got {self.dim}")
        self._proj: dict[int, torch.Tensor] = {}

    def projection(self, k: int) -> torch.Tensor:
        """``[k + 3, dim]`` fixed random projection for a label set of ``k`` classes."""
        if k not in self._proj:
            g = torch.Generator().manual_seed(int(self.o["seed"]) * 7919 + k)
            self._proj[k] = torch.randn(k + 3, self.dim, generator=g) / math.sqrt(k + 3)
        return self._proj[k]

    def features(self, image: torch.Tensor, context: FrameContext | None) -> torch.Tensor:
        labels = _check_gt(context, image, self.name, "labels")
        k = len(self._label_set(context).names)
        x = torch.cat([_onehot_classes(labels, k, self.name) * float(self.o["class_weight"]),
                       _gaussian_blur(image.cpu(), float(self.o["blur_sigma"])) * float(self.o["rgb_weight"])], -1)
        f = patch_pool(x, int(self.o["patch_size"])) @ self.projection(k)
        return f + _noise(f.shape, float(self.o["noise"]), self.o["seed"], context.seed)


@register_teacher("oracle_object")
class OracleObjectTeacher(_Oracle):
    """A fixed random unit vector per instance id, pooled to patches.

    ``v(id) = normalize((1 - class_mix) * u(id) + class_mix * c(class of id))`` where ``u`` and
    ``c`` are unit vectors hashed from the id / class id and ``seed`` (``class_mix=0`` gives pure
    per-instance vectors; the class of an instance is the majority label of its pixels).
    Pixels with a negative or 65535 instance id get zeros. Options: ``dim`` (16), ``patch_size``
    (8), ``class_mix`` (0.0), ``noise`` (0.0), ``seed``.
    """

    name = "oracle_object"
    DEFAULTS = {"dim": 16, "patch_size": 8, "class_mix": 0.0, "noise": 0.0, "seed": 2}

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__(spec)
        self.o = option(spec, self.DEFAULTS)
        self.dim = int(self.o["dim"])
        if self.dim < 1:
            raise InvalidInputError(f"oracle_object dim must be >= 1, got {self.dim}")
        if not 0.0 <= float(self.o["class_mix"]) <= 1.0:
            raise InvalidInputError(f"oracle_object class_mix must be in [0, 1], got {self.o['class_mix']}")
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def instance_vectors(self, ids: list[int], classes: list[int] | None = None) -> torch.Tensor:
        """``[k, dim]`` unit vectors of instance ``ids`` (with their ``classes`` if class_mix > 0)."""
        m = float(self.o["class_mix"])
        classes = classes if classes is not None else [-1] * len(ids)
        out = []
        for i, c in zip(ids, classes):
            key = (int(i), int(c) if m > 0 else -1)
            if key not in self._cache:
                v = hashed_unit_vectors([i], self.dim, self.o["seed"], salt=0)[0]
                if m > 0:
                    if c < 0:
                        raise InvalidInputError("oracle_object with class_mix > 0 needs FrameContext.labels")
                    v = F.normalize((1 - m) * v + m * hashed_unit_vectors([c], self.dim, self.o["seed"], salt=1)[0],
                                    dim=0)
                self._cache[key] = v
            out.append(self._cache[key])
        return torch.stack(out) if out else torch.zeros(0, self.dim)

    def features(self, image: torch.Tensor, context: FrameContext | None) -> torch.Tensor:
        inst = _check_gt(context, image, self.name, "instances")
        valid = (inst >= 0) & (inst != UNLABELED)
        ids, inv = torch.unique(torch.where(valid, inst, torch.full_like(inst, -1)), return_inverse=True)
        classes = None
        if float(self.o["class_mix"]) > 0 and context.labels is not None:
            labels = _check_gt(context, image, self.name, "labels")
            classes = []
            for j, i in enumerate(ids.tolist()):
                lab = labels[(inv == j) & (labels != UNLABELED)]
                classes.append(int(torch.mode(lab).values) if lab.numel() else -1)
        table = torch.zeros(len(ids), self.dim)
        keep = ids >= 0
        if keep.any():
            table[keep] = self.instance_vectors(ids[keep].tolist(),
                                                None if classes is None else [c for c, k in zip(classes, keep.tolist()) if k])
        oh = F.one_hot(inv, len(ids)).float()
        f = patch_pool(oh, int(self.o["patch_size"])) @ table
        return f + _noise(f.shape, float(self.o["noise"]), self.o["seed"], context.seed)
