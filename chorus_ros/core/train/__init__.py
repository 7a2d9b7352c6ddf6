"""Training of the Chorus encoder (``chorus-train``): named stages behind one trainer.

* :mod:`.config`: :class:`TrainConfig` (YAML + dotted overrides).
* :mod:`.augment`: random scene augmentation.
* :mod:`.losses`: per-head cosine + L2 loss, multi-task gradient calibration.
* :mod:`.trainer`: :class:`Trainer` (multi-scene, logs, checkpoints + resume, DDP).
* :mod:`.stages`: the stage registry (``align`` lift-then-align, ``contrastive``, ``fusion``, ...).

Example::

    from chorus_ros.core.train import Trainer, load_train_config
    cfg = load_train_config("config/train/demo.yaml", ["optim.steps=10"])
    Trainer(cfg).fit()
"""
from chorus_ros.core.train.config import TrainConfig, apply_overrides, load_train_config
from chorus_ros.core.train.losses import calibrate_gradients, head_loss
from chorus_ros.core.train.trainer import Trainer, TrainResult

__all__ = ["TrainConfig", "apply_overrides", "load_train_config", "calibrate_gradients", "head_loss", "Trainer",
           "TrainResult"]
