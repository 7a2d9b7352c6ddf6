"""Synthetic indoor scenes made of surface Gaussians, with ground-truth classes and instances.

* :mod:`.classes`: the class table (stuff and things) and materials.
* :mod:`.primitives`: boxes, cylinders/frustums, ellipsoids and rectangles, sampled on their surfaces.
* :mod:`.objects`: furniture builders (chair = seat + legs + back, ...).
* :mod:`.room`: :func:`generate_scene` -> :class:`SyntheticScene`.
* :mod:`.trajectory`: camera paths inside the room.
* :mod:`.groundtruth`: RGB, depth, semantic and instance images from the renderer.
* :mod:`.dataset`: export to / load from a Replica/semantic-nerf style folder.
* :mod:`.shifts`: named distribution shifts (density, sizes, photometric fit, rotation, colour,
  noise, second source) for the shift suite and as training randomisation; :mod:`.meshrooms`
  (the second, mesh-sampled room source) and :mod:`.photometric` (3DGS-style photometric fit).
"""
from chorus_ros.core.synthetic.classes import CLASSES, STUFF_CLASSES, THING_CLASSES, synthetic_label_set
from chorus_ros.core.synthetic.room import InstanceInfo, SceneConfig, SyntheticScene, generate_scene

__all__ = ["CLASSES", "STUFF_CLASSES", "THING_CLASSES", "synthetic_label_set", "InstanceInfo",
           "SceneConfig", "SyntheticScene", "generate_scene"]
