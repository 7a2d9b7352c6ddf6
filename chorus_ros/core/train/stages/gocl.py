"""Training stage ``gocl``: dataset-level, unsupervised pre-training of the GOCL object model.

The stage's "scenes" are batches of 2D views: for every training seed, the synthetic room's
views are rendered (RGB) and one teacher (``stage_options.gocl.teacher``, a teacher spec; real or
oracle, through the registry) turns each into a patch feature map. The GOCL model
(:class:`~chorus_ros.core.objects.GOCL`: slot attention + the scene-agnostic prototype codebook)
learns to reconstruct those features from a few slots; nothing is labelled. Ground-truth instance
maps are kept only to *report* how well the masks match objects (FG-ARI), never in the loss.

The encoder is untouched here (the stage trains no head): the trained GOCL is written beside the
checkpoint (``gocl/``) and then supervises the encoder's object head through the ``gocl``
teacher (:mod:`chorus_ros.core.objects.teacher`) and the ordinary ``align`` stage.

Example::

    chorus-train --config config/train/gocl.yaml            # stage: gocl
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.train.stages import Stage, StageLoss, register_stage

__all__ = ["GoclOptions", "GoclStage", "ViewBatch", "collect_views"]


@dataclass
class GoclOptions:
    """Options of the ``gocl`` stage (``stage_options.gocl.*``)."""

    teacher: dict = field(default_factory=lambda: {"kind": "generalist", "type": "oracle_generalist",
                                                   "options": {"dim": 32, "patch_size": 8, "seed": 1}})
    """Teacher spec whose patch features GOCL reads (any registered teacher, real or oracle)."""
    num_slots: int = 8
    """Slots per view."""
    slot_dim: int = 64
    """Slot width."""
    iters: int = 3
    """Slot attention iterations."""
    num_codes: int = 32
    """Prototypes in the scene-agnostic codebook."""
    code_dim: int = 32
    """Width of the code space (the identity feature width)."""
    decoder: str = "mixture"
    """'mixture' or 'broadcast' (see GOCLConfig.decoder)."""
    views_per_step: int = 8
    """Views of one scene in each step's batch."""
    usage_weight: float = 0.1
    """Weight of the code-usage entropy bonus."""
    revive_every: int = 50
    """Every this many steps, codes unused in the last step are re-seeded from slot embeddings (0: never)."""


@dataclass
class ViewBatch:
    """One scene's views as teacher features (a training "scene" of this stage)."""

    scene_id: str
    feats: torch.Tensor
    """``[V, h, w, C]`` teacher patch features."""
    instances: torch.Tensor
    """``[V, h, w]`` int64 majority ground-truth instance per patch (-1 none); for metrics only."""
    labels: torch.Tensor
    """``[V, h, w]`` int64 majority ground-truth class per patch (65535 none); for metrics only."""


def _patch_majority(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[H, W]`` int ids -> ``[h, w]`` nearest-sampled ids at patch centres."""
    H, W = img.shape
    ys = ((torch.arange(h) + 0.5) * H / h).long().clamp_max(H - 1)
    xs = ((torch.arange(w) + 0.5) * W / w).long().clamp_max(W - 1)
    return img[ys][:, xs].long()


def collect_views(seeds, teacher, *, scene: dict | None = None, views: dict | None = None,
                  backend: str = "auto") -> list[ViewBatch]:
    """Render each seed's synthetic views and compute ``teacher``'s features (no lifting)."""
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.core.teachers import FrameContext

    out = []
    rs = RenderSettings(backend=backend)
    for seed in seeds:
        sc = generate_scene(SceneConfig(seed=int(seed), **dict(scene or {})))
        traj = make_trajectory(sc, TrajectoryConfig(**dict(views or {})))
        fs, ins, labs = [], [], []
        for v, cam in enumerate(traj.cameras):
            gt = render_ground_truth(sc.gaussians, cam, rs)
            ctx = FrameContext(labels=gt.semantic, instances=gt.instance, label_set=sc.labels,
                               seed=int(seed) * 1000 + v)
            f = teacher(gt.rgb.clamp(0, 1), ctx)
            fs.append(f)
            ins.append(_patch_majority(gt.instance, f.shape[0], f.shape[1]))
            labs.append(_patch_majority(gt.semantic, f.shape[0], f.shape[1]))
        out.append(ViewBatch(f"synthetic:{int(seed)}", torch.stack(fs), torch.stack(ins), torch.stack(labs)))
    return out


@register_stage("gocl")
class GoclStage(Stage):
    """Unsupervised GOCL pre-training over every training scene's views (see the module docstring)."""

    options_cls = GoclOptions
    needs_teachers = False

    def load_scenes(self, trainer) -> list[ViewBatch]:
        from chorus_ros.core.teachers import build_teacher
        d = trainer.cfg.data
        spec = dict(self.options.teacher)
        res = {"text_encoder": trainer.text_encoder} if spec.get("type") == "oracle_language" else {}
        self.teacher = build_teacher(spec, **res)
        return collect_views(d.train_seeds, self.teacher, scene=d.scene, views=d.views, backend=d.render_backend)

    def resolve_heads(self, trainer) -> list[str]:
        return []

    def build_model(self, trainer):
        return trainer.build_encoder(head_dims={})

    def setup(self, trainer) -> None:
        from chorus_ros.core.objects import GOCL, CodebookConfig, GOCLConfig, SlotAttentionConfig
        o = self.options
        in_dim = int(trainer.scenes[0].feats.shape[-1])
        cfg = GOCLConfig(in_dim=in_dim, slots=SlotAttentionConfig(num_slots=o.num_slots, dim=o.slot_dim, iters=o.iters,
                                                                  mlp_hidden=2 * o.slot_dim),
                         codebook=CodebookConfig(num_codes=o.num_codes, dim=o.code_dim), decoder=o.decoder,
                         decoder_hidden=2 * o.slot_dim, usage_weight=o.usage_weight)
        self.modules["gocl"] = GOCL(cfg)
        self._steps = 0

    def scene_loss(self, trainer, scene: ViewBatch) -> StageLoss:
        if not isinstance(scene, ViewBatch):
            raise InvalidInputError(f"stage 'gocl' trains on view batches, got {type(scene).__name__}")
        v = scene.feats.shape[0]
        pick = torch.randperm(v, generator=trainer.gen)[: self.options.views_per_step]
        model = self.modules["gocl"]
        out = model(scene.feats[pick].to(trainer.device), generator=trainer.gen)
        self._steps += 1
        if self.options.revive_every and self._steps % self.options.revive_every == 0:
            counts = torch.bincount(out.codes.code.reshape(-1).cpu(), minlength=model.config.codebook.num_codes)
            model.codebook.revive(out.codes.embedding.detach().reshape(-1, model.config.codebook.dim).cpu(),
                                  counts, trainer.gen)
        return StageLoss(extra=out.loss, metrics=dict(out.parts))

    def checkpoint_meta(self, trainer) -> dict:
        return {"gocl": {"teacher": dict(self.options.teacher), "dir": "gocl"}}

    def save(self, trainer, ckpt_dir) -> None:
        from pathlib import Path
        self.modules["gocl"].save(Path(ckpt_dir) / "gocl", meta={"teacher": dict(self.options.teacher),
                                                               "train_seeds": list(trainer.cfg.data.train_seeds)})
        (Path(ckpt_dir) / "gocl" / "stage_options.json").write_text(json.dumps(self.options.__dict__, indent=1,
                                                                               default=str))
