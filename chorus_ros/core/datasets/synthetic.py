"""Generated scenes as :class:`~chorus_ros.core.datasets.SceneFolder` objects (in memory), so that
held-out synthetic evaluation and outside folders go through the same scoring code."""
from __future__ import annotations

import numpy as np

from chorus_ros.core.datasets.folder import Intrinsics, SceneFolder, SceneFrame
from chorus_ros.core.labels import UNLABELED

__all__ = ["scene_from_synthetic"]


def scene_from_synthetic(scene, trajectory, settings=None, *, name: str | None = None,
                         min_alpha: float = 0.0, progress=None) -> SceneFolder:
    """Render ``trajectory``'s ground truth of a generated scene into an in-memory SceneFolder.

    Args:
        scene: a :class:`~chorus_ros.core.synthetic.SyntheticScene` (labelled Gaussians).
        trajectory: its :class:`~chorus_ros.core.synthetic.trajectory.Trajectory`.
        settings: renderer settings for the ground truth.
        name: scene name (default ``seed<seed>``).
        min_alpha: pixels below this accumulated alpha are unlabeled in the ground truth (the
            evaluation applies its own shared threshold on top; 0 keeps every touched pixel).
        progress: optional ``f()`` called after each rendered view.

    Class ids are the positions in ``scene.labels``; unlabeled and "no instance" are 65535.
    """
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth

    frames = []
    for i, cam in enumerate(trajectory.cameras):
        gt = render_ground_truth(scene.gaussians, cam, settings, min_alpha=min_alpha)
        rgb = np.clip(np.round(gt.rgb.numpy() * 255.0), 0, 255).astype(np.uint8)
        frames.append(SceneFrame(i, np.asarray(trajectory.c2w[i], dtype=np.float64), rgb,
                                 gt.depth.numpy().astype(np.float32), gt.semantic.numpy().astype(np.uint16),
                                 gt.instance.numpy().astype(np.uint16), cam))
        if progress is not None:
            progress()
    K = trajectory.K
    intr = Intrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), trajectory.width,
                      trajectory.height)
    labels = scene.labels
    return SceneFolder.in_memory(name or f"seed{scene.seed}", scene.gaussians, dict(enumerate(labels.names)), frames,
                                 intrinsics=intr, unlabeled_id=UNLABELED, instance_none_id=UNLABELED,
                                 stuff_names=[n for n, s in zip(labels.names, labels.stuff) if s])
