"""Write a scene folder in the Replica / semantic-nerf layout read by
:func:`chorus_ros.core.datasets.open_scene` (see :mod:`chorus_ros.core.datasets.folder`).

Used by the tests, by ``scripts/scannet`` (scenes rebuilt from public meshes) and by anyone who
converts their own data.

Example::

    write_scene_folder("out/scene", gaussians=g, classes={0: "wall", 1: "chair"},
                       intrinsics=Intrinsics(100, 100, 64, 48, 128, 96), frames=frames)
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from chorus_ros.core.datasets.folder import Intrinsics, SceneFrame
from chorus_ros.core.errors import DatasetError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.labels import UNLABELED

__all__ = ["write_scene_folder", "write_classes_json"]


def _png(path: Path, img: np.ndarray) -> None:
    import cv2

    if img.ndim == 3:
        img = img[:, :, ::-1]  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(img)):
        raise OSError(f"could not write {path}")


def write_classes_json(path: str | Path, classes: dict[int, str], *, unlabeled_id: int = UNLABELED,
                       instance_none_id: int = 0, extra: dict | None = None) -> None:
    """``classes.json``: ``{"classes": [{"id", "name"}...], "unlabeled_id", "instance_none_id"}``."""
    d = {"classes": [{"id": int(i), "name": str(classes[i])} for i in sorted(classes)],
         "unlabeled_id": int(unlabeled_id), "instance_none_id": int(instance_none_id)}
    if extra:
        d.update(extra)
    Path(path).write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")


def write_scene_folder(root: str | Path, *, gaussians: GaussianArrays | None, classes: dict[int, str],
                       intrinsics: Intrinsics | None = None, frames: Iterable[SceneFrame] = (),
                       unlabeled_id: int = UNLABELED, instance_none_id: int = 0,
                       overwrite: bool = False, ply_name: str = "gaussians.ply",
                       extra_types: dict[str, str] | None = None) -> Path:
    """Write ``root`` in the Replica layout.

    Args:
        root: output folder; must not exist unless ``overwrite``.
        gaussians: the map, written as ``ply_name`` with its extras (e.g. ground-truth ``label``
            and ``instance`` as ``ushort``); None writes no PLY.
        classes: class id -> name (``classes.json``).
        intrinsics: shared intrinsics (``intrinsics.txt``); needed when ``frames`` is not empty.
        frames: frames to write (``index`` names the files and the trajectory line; indices must
            be 0..V-1 in order). ``depth`` in metres is stored as uint16 millimetres;
            ``semantic`` / ``instance`` / ``depth`` may be None (the folder is then omitted).
        unlabeled_id / instance_none_id: written to ``classes.json``.
        overwrite: replace an existing folder.
        ply_name: file name of the map.
        extra_types: PLY types of extras (default ``ushort`` for label/instance).

    Returns:
        ``root`` as a Path.
    """
    from chorus_ros.core.ply import write_ply

    root = Path(root)
    if root.exists():
        if not overwrite:
            raise DatasetError(f"scene folder {root} exists (pass overwrite=True to replace it)")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    write_classes_json(root / "classes.json", classes, unlabeled_id=unlabeled_id, instance_none_id=instance_none_id)
    if gaussians is not None:
        types = {k: "ushort" for k in ("label", "instance") if k in gaussians.extras}
        types.update(extra_types or {})
        write_ply(root / ply_name, gaussians, extra_types=types)
    poses = []
    for n, f in enumerate(frames):
        if intrinsics is None:
            raise DatasetError("write_scene_folder: frames need intrinsics")
        if f.index != n:
            raise DatasetError(f"write_scene_folder: frame indices must run 0..V-1 in order, got {f.index} at {n}")
        for kind, sub, img in (("rgb", "rgb", f.rgb), ("depth", "depth", f.depth),
                               ("semantic", "semantic_class", f.semantic),
                               ("instance", "semantic_instance", f.instance)):
            if img is None:
                continue
            if img.shape[:2] != (intrinsics.height, intrinsics.width):
                raise DatasetError(f"write_scene_folder: frame {n} {kind} is {img.shape[1]}x{img.shape[0]}, "
                                   f"intrinsics say {intrinsics.width}x{intrinsics.height}")
            if kind == "depth":
                d = np.asarray(img, dtype=np.float64) * 1000.0
                img = np.where(np.isfinite(d) & (d > 0), np.clip(np.round(d), 0, 65535), 0).astype(np.uint16)
            elif kind != "rgb":
                img = np.asarray(img).astype(np.uint16)
            (root / sub).mkdir(exist_ok=True)
            _png(root / sub / f"{sub}_{n}.png", np.asarray(img))
        poses.append(np.asarray(f.c2w, dtype=np.float64).reshape(16))
    if poses:
        with open(root / "traj_w_c.txt", "w", encoding="utf-8") as fh:
            for p in poses:
                fh.write(" ".join(repr(float(v)) for v in p) + "\n")
    if intrinsics is not None:
        i = intrinsics
        (root / "intrinsics.txt").write_text(f"{i.fx!r} {i.fy!r} {i.cx!r} {i.cy!r} {i.width} {i.height}\n",
                                             encoding="utf-8")
    return root
