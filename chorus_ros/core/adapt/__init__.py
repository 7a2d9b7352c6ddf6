"""Render-and-distill adaptation of an encoder checkpoint to a new site (``chorus-adapt``).

The encoder's per-Gaussian class scores and head features are splatted into posed training
views with the differentiable renderer's blending weights and fitted to 2D targets (label
images, teacher feature maps) plus self-supervised terms; the result is a normal encoder
checkpoint with its provenance. Sits over :mod:`chorus_ros.core.render` and
:mod:`chorus_ros.core.encoder`, apart from the trainer.

* :mod:`.config`: :class:`AdaptConfig`, :class:`LossWeights`.
* :mod:`.splat`: cached per-pixel blending weights of a fixed map (the CPU fast path).
* :mod:`.losses`: cross-entropy with a boundary term, teacher cosine + L2, RGB.
* :mod:`.lora`: low-rank adapters.
* :mod:`.widen`: function-preserving widening of the per-Gaussian decoder (more site capacity).
* :mod:`.loop`: targets, the training loop, held-out evaluation, the lifting baseline, saving.
* :mod:`.fusion`: the per-site VDVI fusion decoder that corrects the adapted labels with the camera images.
"""
from chorus_ros.core.adapt.config import AdaptConfig, LossWeights
from chorus_ros.core.adapt.loop import (AdaptResult, adapt, adapt_checkpoint, adaptation_label_set,
                                        evaluate_views, lift_baseline, load_with_adapter, save_adapted)
from chorus_ros.core.adapt.splat import PixelBlend, blend_weights

__all__ = ["AdaptConfig", "LossWeights", "AdaptResult", "adapt", "adapt_checkpoint", "adaptation_label_set",
           "evaluate_views", "lift_baseline", "load_with_adapter", "save_adapted", "PixelBlend", "blend_weights"]
