"""Stage ``align`` (the default): the encoder's heads learn the lifted teacher targets.

Per scene: augment (:func:`~chorus_ros.core.train.augment.augment_scene`), encode, score every
trained head with :func:`~chorus_ros.core.train.losses.head_loss` on the detached embedding; the
trainer calibrates the heads' gradients at the shared embedding. With
``stage_options.align.contrastive_weight > 0`` a PointContrast term on the same scene
(:func:`chorus_ros.core.train.stages.contrastive.contrastive_map_loss`) is added uncalibrated.
With ``stage_options.align.instance_boundary_weight > 0`` and scenes whose Gaussians carry
``extras['instance']`` (synthetic rooms, scene folders with per-Gaussian instances), the object
head's task also holds :func:`~chorus_ros.core.train.losses.instance_boundary_loss`: touching
Gaussians of two instances are pushed apart, of one instance pulled together, so the instance
decoder joins fewer touching objects of one class (a row of books comes apart in groups;
docs/instances.md). It is calibrated with the object head's distillation loss, as one task.
With ``stage_options.align.rotation_consistency_weight > 0`` the augmented scene is encoded a
second time, turned about the up axis by a random angle and shifted by a random fraction of a
voxel (the transform a member of :class:`~chorus_ros.core.encoder.ensemble.RotationEnsemble`
applies), and :func:`~chorus_ros.core.train.losses.rotation_consistency_loss` pulls every trained
head's outputs of the two copies together (uncalibrated, like the contrastive term): the plain
encoder is trained towards the agreement the rotation ensemble gets by averaging.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from chorus_ros.core.geometry import rotate_about_axis, transform_gaussians
from chorus_ros.core.train.augment import augment_scene
from chorus_ros.core.train.losses import (InstanceBoundaryOptions, head_loss, instance_boundary_loss,
                                          rarity_balance, rotation_consistency_loss)
from chorus_ros.core.train.stages import Stage, StageLoss, register_stage

__all__ = ["AlignOptions", "AlignStage"]


@dataclass
class AlignOptions:
    """Options of stage ``align``."""

    contrastive_weight: float = 0.0
    """Weight of an extra PointContrast loss next to the teacher heads (0 = off)."""
    contrastive: dict = field(default_factory=dict)
    """Options of that extra term (fields of stage ``contrastive``'s ContrastiveOptions)."""
    instance_boundary_weight: float = 0.0
    """Weight of the instance-boundary term on the ``instance_boundary_head`` (0 = off)."""
    instance_boundary_head: str = "object"
    """The head whose features the instance-boundary term shapes (the instance decoder's)."""
    instance_boundary: dict = field(default_factory=dict)
    """Options of that term (fields of :class:`~chorus_ros.core.train.losses.InstanceBoundaryOptions`)."""
    rotation_consistency_weight: float = 0.0
    """Weight of the rotation-consistency term (0 = off; module docstring). Costs a second forward
    and backward pass per scene."""


@register_stage("align")
class AlignStage(Stage):
    """Lift-then-align distillation (see the module docstring)."""

    options_cls = AlignOptions

    def prepare(self, trainer) -> None:
        cfg = trainer.cfg
        if cfg.loss.balance_clusters > 0:
            for i, sc in enumerate(trainer.scenes):
                for h in trainer.heads:
                    key = f"balance.{h}"
                    if key not in sc.targets.aux:
                        sc.targets.aux[key] = rarity_balance(sc.targets.features[h], sc.targets.weight,
                                                             sc.targets.valid, cfg.loss, seed=cfg.seed + i)
        self._contrast = None
        self._boundary = None
        if self.options.instance_boundary_weight > 0:
            from chorus_ros.core.errors import InvalidInputError
            from chorus_ros.core.train.config import config_from_dict
            if self.options.instance_boundary_head not in trainer.heads:
                raise InvalidInputError(
                    f"stage_options.align.instance_boundary_head {self.options.instance_boundary_head!r} is not a "
                    f"trained head; trained: {list(trainer.heads)}")
            bopts = config_from_dict(InstanceBoundaryOptions, self.options.instance_boundary,
                                     "stage_options.align.instance_boundary")
            bopts.validate()
            self._boundary = bopts
        if self.options.contrastive_weight > 0:
            from chorus_ros.core.train.config import config_from_dict
            from chorus_ros.core.train.stages.contrastive import ContrastiveOptions, SceneViews
            copts = config_from_dict(ContrastiveOptions, self.options.contrastive, "stage_options.align.contrastive")
            self._contrast = (copts, SceneViews(copts, trainer.cfg.data.views))

    def _rotated_copy(self, trainer, g):
        """``g`` turned about the up axis by a random angle and shifted by a random fraction of
        a voxel across it (drawn from the trainer's generator)."""
        up = int(trainer.cfg.augment.up_axis)
        u = torch.rand(3, generator=trainer.gen, dtype=torch.float64)
        R, q = rotate_about_axis(2.0 * math.pi * float(u[0]), up, torch.float64)
        t = torch.zeros(3, dtype=torch.float64)
        across = [i for i in range(3) if i != up]
        voxel = getattr(getattr(trainer.model, "config", None), "voxel_size", 0.0)   # models without a grid: no shift
        t[across] = u[1:] * float(voxel)
        return transform_gaussians(g, R, q, t, torch.float64)

    def scene_loss(self, trainer, scene) -> StageLoss:
        cfg = trainer.cfg
        g, tg = augment_scene(scene.gaussians, scene.targets, cfg.augment, trainer.gen)
        g = g.to(trainer.device)
        tg = tg.to(trainer.device)
        out = trainer.ddp_model(g)
        emb = out.embedding
        e = emb.detach().requires_grad_(True)
        hw = cfg.loss.head_weights
        tasks, metrics = {}, {"gaussians": len(g)}
        for k in trainer.heads:
            pred = trainer.model.heads[k](e)
            hl = head_loss(pred, tg.features[k], tg.weight, tg.valid, cfg.loss, tg.aux.get(f"balance.{k}"))
            loss = hl.loss
            if self._boundary is not None and k == self.options.instance_boundary_head:
                ib = None
                if "instance" in g.extras:   # scenes without per-Gaussian instances: distillation only
                    ib = instance_boundary_loss(pred, g.means, g.extras["instance"], self._boundary, trainer.gen)
                    loss = loss + self.options.instance_boundary_weight * ib.loss
                metrics.update({"boundary_pos_cos": ib.pos_cos if ib else float("nan"),
                                "boundary_neg_cos": ib.neg_cos if ib else float("nan"),
                                "boundary_neg_pairs": ib.neg_pairs if ib else 0})
            tasks[k] = loss * float(hw.get(k, 1.0))
            metrics[f"cos_{k}"] = hl.cosine
            metrics[f"l2_{k}"] = hl.l2
        extra = None
        if self.options.rotation_consistency_weight > 0:
            out2 = trainer.ddp_model(self._rotated_copy(trainer, g))
            rc = rotation_consistency_loss({k: out.heads[k] for k in trainer.heads},
                                           {k: out2.heads[k] for k in trainer.heads})
            extra = self.options.rotation_consistency_weight * rc
            metrics["rotation_consistency"] = float(rc.detach())
        if self._contrast is not None:
            from chorus_ros.core.train.stages.contrastive import contrastive_map_loss
            copts, views = self._contrast
            cams = views.cameras(scene)
            cl = contrastive_map_loss(trainer.ddp_model, scene.gaussians, cams, copts, trainer.gen, trainer.device)
            if cl is not None:
                extra = self.options.contrastive_weight * cl.loss + (extra if extra is not None else 0.0)
                metrics.update({f"contrast_{k}": v for k, v in cl.metrics.items()})
        return StageLoss(tasks=tasks, shared=emb, shared_leaf=e, extra=extra, metrics=metrics)
