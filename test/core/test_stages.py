"""Training stages: registry, options, and a custom stage driven by the one trainer."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from chorus_ros.core.errors import InvalidInputError, RegistryError
from chorus_ros.core.train import Trainer
from chorus_ros.core.train.stages import STAGES, Stage, StageLoss, build_stage, get_stage, list_stages, register_stage

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_tt", pathlib.Path(__file__).with_name("test_train.py"))
_tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tt)
FakeEncoder, _toy_cfg, _toy_scene = _tt.FakeEncoder, _tt._toy_cfg, _tt._toy_scene


def test_registry_lists_builtins_and_unknown_names_list_known():
    assert {"align", "contrastive"} <= set(list_stages())
    with pytest.raises(RegistryError, match="known: .*align"):
        get_stage("nope")
    with pytest.raises(InvalidInputError, match="stage_options.align"):
        build_stage("align", {"align": {"no_such_option": 1}})
    with pytest.raises(InvalidInputError, match="unknown stages"):
        build_stage("align", {"alignn": {}})
    assert build_stage("align", {"align": {"contrastive_weight": 0.5}}).options.contrastive_weight == 0.5


@dataclass
class _ToyOptions:
    scale: float = 2.0
    """Multiplier of the toy loss."""


def test_custom_stage_runs_in_the_trainer_without_a_branch(tmp_path):
    @register_stage("toy_square")
    class ToyStage(Stage):
        options_cls = _ToyOptions

        def setup(self, trainer):
            self.modules["probe"] = torch.nn.Linear(8, 1)

        def scene_loss(self, trainer, scene):
            out = trainer.ddp_model(scene.gaussians)
            z = self.modules["probe"](out.embedding)
            return StageLoss(extra=self.options.scale * z.pow(2).mean(), metrics={"z": float(z.abs().mean())})

    try:
        cfg = _toy_cfg(tmp_path)
        cfg.stage = "toy_square"
        cfg.stage_options = {"toy_square": {"scale": 3.0}}
        tr = Trainer(cfg, scenes=[_toy_scene()], model=FakeEncoder({"language": 4}))
        assert tr.stage.options.scale == 3.0
        first = tr.train_step()["loss"]
        for _ in range(30):
            last = tr.train_step()["loss"]
        assert last < first  # the stage's own module is optimised too
        assert tr.stage.modules["probe"].weight.grad is not None
    finally:
        STAGES.pop("toy_square", None)
