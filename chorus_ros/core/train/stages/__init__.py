"""Named training stages behind one :class:`~chorus_ros.core.train.trainer.Trainer`.

A stage is *a config plus a loss*: a dataclass of options (read from the training config's
``stage_options.<name>`` mapping) and :meth:`Stage.scene_loss`, which turns one training scene
into a :class:`StageLoss`. The trainer owns everything else (optimiser, schedule, scene
sampling, gradient calibration, logs, checkpoints, resume, DDP) and never branches on the
stage's name.

Registering a stage::

    from dataclasses import dataclass
    from chorus_ros.core.train.stages import Stage, StageLoss, register_stage

    @dataclass
    class MyOptions:
        weight: float = 1.0
        \"\"\"Docstring under every field.\"\"\"

    @register_stage("mine")
    class MyStage(Stage):
        options_cls = MyOptions
        def scene_loss(self, trainer, scene) -> StageLoss:
            out = trainer.ddp_model(scene.gaussians.to(trainer.device))
            return StageLoss(extra=self.options.weight * out.embedding.pow(2).mean())

and ``chorus-train --config ... stage=mine stage_options.mine.weight=0.5``. Built-in stages:
``align`` (lift-then-align distillation, the default), ``contrastive`` (PointContrast-style
self-supervision, :mod:`.contrastive`), ``fusion`` (the VDVI 2D fusion decoder, :mod:`.fusion`).
Other modules register theirs by importing :func:`register_stage`; list them with
:func:`list_stages` (the module must be imported first: add it to ``_BUILTIN`` below or import
it before building the trainer).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from chorus_ros.core.errors import InvalidInputError, RegistryError

__all__ = ["Stage", "StageLoss", "register_stage", "get_stage", "list_stages", "build_stage", "STAGES"]

STAGES: dict[str, type["Stage"]] = {}
"""name -> Stage subclass (filled by :func:`register_stage`)."""

_BUILTIN = ("chorus_ros.core.train.stages.align", "chorus_ros.core.train.stages.contrastive",
            "chorus_ros.core.train.stages.fusion", "chorus_ros.core.train.stages.gocl")
"""Modules imported on first lookup so that their stages register (missing ones are skipped)."""


@dataclass
class StageLoss:
    """What a stage returns for one scene.

    The trainer back-propagates (divided by ``optim.scenes_per_step``)::

        sum_k tasks[k]  +  <shared, G>  +  extra

    where ``G`` is the *calibrated* combination (:func:`~chorus_ros.core.train.losses.calibrate_gradients`)
    of the task gradients ``d tasks[k] / d shared_leaf``. ``shared_leaf`` must be
    ``shared.detach().requires_grad_(True)`` and the task losses must be computed *from it*, so
    that task-specific parameters (heads) get their own loss's gradient and the backbone gets
    ``G`` only. Without ``shared`` the task losses are simply summed. ``extra`` (e.g. a
    contrastive term) reaches every parameter plainly, uncalibrated; the second calibration
    level (per input branch, :class:`~chorus_ros.core.encoder.model.BranchCalibration`) is
    active only while ``<shared, G>`` is back-propagated.
    """

    tasks: dict[str, torch.Tensor] = field(default_factory=dict)
    """task name -> scalar loss (keeps its graph)."""
    shared: torch.Tensor | None = None
    """The shared backbone tensor at which task gradients are calibrated (e.g. the embedding [N, D])."""
    shared_leaf: torch.Tensor | None = None
    """``shared.detach().requires_grad_(True)``, the input of the task losses."""
    extra: torch.Tensor | None = None
    """Optional scalar loss added without calibration."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Per-scene numbers to log (averaged over the scenes of a step)."""


class Stage:
    """Base class of a training stage (see the module docstring).

    Subclasses set ``options_cls`` (a dataclass with a docstring under every field, or None)
    and implement :meth:`scene_loss`; the other hooks have sensible defaults. ``self.options``
    is the parsed options instance; ``self.modules`` an :class:`nn.ModuleDict` of extra
    trainable modules the stage owns (optimised with the model, saved in the trainer state,
    written beside the checkpoint by :meth:`save`).
    """

    name: ClassVar[str] = ""
    options_cls: ClassVar[type | None] = None
    needs_teachers: ClassVar[bool] = True
    """Whether the stage's scenes come with lifted teacher targets (False: Gaussians and views only)."""

    def __init__(self, options: Any) -> None:
        self.options = options
        self.modules = nn.ModuleDict()

    # -------------------------------------------------------------- hooks (overridable)
    def load_scenes(self, trainer) -> list:
        """Training scenes (default: synthetic scenes with lifted teacher targets)."""
        return trainer.lift_scenes()

    def resolve_heads(self, trainer) -> list[str]:
        """Encoder heads this stage trains (default: the configured subset of the teachers' kinds)."""
        return trainer.default_heads()

    def prepare(self, trainer) -> None:
        """Called once the scenes and heads are known, before the model is built."""

    def build_model(self, trainer) -> nn.Module:
        """The model (default: a ChorusEncoder from ``config.encoder`` with one head per trained head)."""
        return trainer.build_encoder()

    def setup(self, trainer) -> None:
        """Called after the model exists (on its device), before the optimiser is built: create
        ``self.modules`` here."""

    def scene_loss(self, trainer, scene) -> StageLoss:
        """Loss of one training scene (see :class:`StageLoss`)."""
        raise NotImplementedError

    def checkpoint_meta(self, trainer) -> dict:
        """Extra entries for the checkpoint's ``training`` metadata."""
        return {}

    def save(self, trainer, ckpt_dir) -> None:
        """Write stage artefacts beside the checkpoint (rank 0 only; default: nothing)."""


def register_stage(name: str) -> Callable[[type[Stage]], type[Stage]]:
    """Class decorator registering a :class:`Stage` under ``name`` (re-registering replaces)."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"stage name must be a non-empty string, got {name!r}")

    def deco(cls: type[Stage]) -> type[Stage]:
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise InvalidInputError(f"register_stage({name!r}) needs a Stage subclass, got {cls!r}")
        cls.name = name
        STAGES[name] = cls
        return cls
    return deco


def _load_builtins() -> None:
    for mod in _BUILTIN:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # the stage module exists but one of its imports is missing
                raise


def list_stages() -> list[str]:
    """Names of the registered stages, sorted."""
    _load_builtins()
    return sorted(STAGES)


def get_stage(name: str) -> type[Stage]:
    """The stage class registered as ``name``; an unknown name lists the known ones."""
    _load_builtins()
    try:
        return STAGES[name]
    except KeyError:
        raise RegistryError(f"unknown training stage {name!r}; known: {sorted(STAGES)}") from None


def build_stage(name: str, stage_options: dict | None = None) -> Stage:
    """Instantiate stage ``name`` with its options from ``stage_options[name]`` (a mapping).

    Unknown option keys raise naming their dotted path (``stage_options.<name>.<key>``); keys of
    ``stage_options`` that name no registered stage raise too (typos must not pass silently).
    """
    from chorus_ros.core.train.config import config_from_dict

    cls = get_stage(name)
    so = dict(stage_options or {})
    unknown = sorted(set(so) - set(STAGES))
    if unknown:
        raise InvalidInputError(f"stage_options has sections for unknown stages {unknown}; known: {sorted(STAGES)}")
    raw = so.get(name) or {}
    opts = config_from_dict(cls.options_cls, raw, f"stage_options.{name}") if cls.options_cls is not None else None
    if cls.options_cls is None and raw:
        raise InvalidInputError(f"stage {name!r} takes no options, got stage_options.{name} = {raw!r}")
    return cls(opts)
