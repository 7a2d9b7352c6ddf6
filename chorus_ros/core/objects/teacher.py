"""Teacher ``gocl``: per-patch identity features from a trained GOCL over another teacher's features.

This is how the scene-agnostic codebook supervises the encoder's *object* (identity) head without
changing the model: a view goes through a base teacher (e.g. ``mobilesam`` or an oracle), the
trained GOCL splits its patches into slots and assigns each slot a code, and every patch gets
``sum_s mask_s(p) * e_s`` - the unit code-space embedding of its slot, weighted by the slot's mask.
The lift (:mod:`chorus_ros.core.lift`) then averages these over every view a Gaussian is seen in,
so Gaussians rendered into one slot's mask are trained towards that slot's embedding, and the
ordinary ``align`` stage trains the head. Slot embeddings of one object agree across views because
the codebook and slots are shared by the whole dataset (no per-scene association step).

Options: ``checkpoint`` (a GOCL directory written by the ``gocl`` stage, or a training checkpoint
directory holding ``gocl/``), ``base`` (the base teacher's spec; default: the spec saved with
the GOCL), ``seed`` (initial slots).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from chorus_ros.core.errors import CheckpointError
from chorus_ros.core.teachers.base import FrameContext, Teacher, TeacherSpec, option
from chorus_ros.core.teachers.registry import build_teacher, register_teacher

__all__ = ["GoclTeacher", "gocl_dir"]


def gocl_dir(path: str | Path) -> Path:
    """The GOCL folder inside ``path`` (``path`` itself or ``path/gocl``)."""
    p = Path(path)
    for d in (p, p / "gocl"):
        if (d / "gocl.json").is_file():
            return d
    raise CheckpointError(f"no GOCL model (gocl.json) in {p} or {p / 'gocl'}")


@register_teacher("gocl")
class GoclTeacher(Teacher):
    """Identity features of GOCL slots (see the module docstring); ``dim`` = the code width."""

    name = "gocl"
    DEFAULTS = {"checkpoint": None, "base": None, "seed": 0}
    RESOURCES = ("text_encoder",)

    def __init__(self, spec: TeacherSpec, text_encoder=None) -> None:
        super().__init__(spec)
        from chorus_ros.core.objects.gocl import GOCL
        o = option(spec, self.DEFAULTS)
        if o["checkpoint"] is None:
            raise CheckpointError("teacher 'gocl' needs options.checkpoint = a GOCL directory (stage 'gocl')")
        d = gocl_dir(o["checkpoint"])
        self.model = GOCL.load(d)
        base = o["base"] or json.loads((d / "gocl.json").read_text(encoding="utf-8")).get("meta", {}).get("teacher")
        if not base:
            raise CheckpointError(f"teacher 'gocl': {d} names no base teacher; set options.base")
        self.base = build_teacher(base, text_encoder=text_encoder)
        self.needs_context = self.base.needs_context
        self.seed = int(o["seed"])
        self.dim = int(self.model.config.codebook.dim)
        import hashlib
        self.cache_token = hashlib.sha256((d / "gocl.safetensors").read_bytes()).hexdigest()[:16]
        """Content hash of the GOCL weights (lift caches must not outlive a retrained GOCL)."""

    def features(self, image: torch.Tensor, context: FrameContext | None) -> torch.Tensor:
        f = self.base(image, context)
        ident, _ = self.model.identity_map(f, seed=self.seed)
        return ident

    def slots(self, image: torch.Tensor, context: FrameContext | None = None):
        """The full :class:`~chorus_ros.core.objects.gocl.GOCLOutput` of one view (masks, codes)."""
        f = self.base(image, context)
        with torch.no_grad():
            return self.model.identity_map(f, seed=self.seed)[1]
