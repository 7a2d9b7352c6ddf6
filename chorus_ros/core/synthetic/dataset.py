"""Export a synthetic scene as a Replica/semantic-nerf style dataset folder, and load it back.

The folder layout is :data:`README_TEXT` (also written as ``README.md`` into every exported
folder).

Example::

    export_dataset(scene, trajectory, "out/room0")
    ds = load_dataset("out/room0")
    frame = ds[3]                # DatasetFrame: camera, c2w, rgb, depth, semantic, instance
"""
from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import yaml

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera
from chorus_ros.core.labels import UNLABELED, LabelSet
from chorus_ros.core.render import RenderSettings
from chorus_ros.core.synthetic.groundtruth import DEFAULT_MIN_ALPHA, GroundTruthView, render_ground_truth
from chorus_ros.core.synthetic.room import InstanceInfo, SyntheticScene
from chorus_ros.core.synthetic.trajectory import Trajectory

__all__ = ["DatasetFrame", "SceneDataset", "ExportSummary", "export_dataset", "load_dataset",
           "quantize_view", "README_TEXT"]

README_TEXT = """\
A synthetic indoor room rendered along a camera trajectory, in the Replica / semantic-nerf
folder style. Written by `chorus_ros.core.synthetic.dataset.export_dataset`, read by
`load_dataset`.

```
<root>/
  README.md        this description
  camera.yaml      fx fy cx cy (pixels) width height, depth_scale (units per metre), min_alpha
  labels.yaml      label set: class id = position in 'classes'; 'stuff' marks floor/wall/ceiling
  instances.yaml   instance table: id, class_id, class_name, name, aabb_min/max (m), parent, stuff
  scene.yaml       generator config, seed, sample spacing, room bounds, frame kinds
  scene.ply        the Gaussians (reference 3DGS PLY, SH degree 0) with uint16 'label' and
                   'instance' properties and a uint32 'id'
  traj_w_c.txt     line i: camera-to-world 4x4 of frame i, row-major, 16 numbers
  rgb/rgb_<i>.png                                8-bit colour
  depth/depth_<i>.png                            uint16 depth along the optical axis,
                                                 depth_scale units per metre (1000 = mm); 0 = none
  semantic_class/semantic_class_<i>.png          uint16 class id, 65535 = unlabeled
  semantic_instance/semantic_instance_<i>.png    uint16 instance id, 65535 = unlabeled
```

- Frame indices `<i>` run 0..V-1 and match the lines of `traj_w_c.txt`.
- Poses are in the camera *optical* frame (x right, y down, z forward; OpenCV), in the room's
  world frame (z up, metres, room interior from the origin to `room_max`).
- Labels come from the same renderer as the colour: each pixel takes the class and instance of
  the Gaussian with the largest blending weight; pixels whose accumulated alpha is below
  `min_alpha` are unlabeled (65535) and have depth 0.
- Instance ids start at 1; floor, walls and ceiling ("stuff") have instance ids too.
"""
"""Description of the dataset folder (written as its README.md)."""

_SUBDIRS = {"rgb": "rgb", "depth": "depth", "semantic": "semantic_class", "instance": "semantic_instance"}


def _frame_path(root: Path, kind: str, i: int) -> Path:
    sub = _SUBDIRS[kind]
    return root / sub / f"{sub}_{i}.png"


@dataclass
class QuantizedView:
    """A ground-truth view in the exact integer form stored in the folder."""

    rgb: np.ndarray
    """[H, W, 3] uint8 RGB."""
    depth: np.ndarray
    """[H, W] uint16, ``depth_scale`` units per metre, 0 = none."""
    semantic: np.ndarray
    """[H, W] uint16 class ids, 65535 = unlabeled."""
    instance: np.ndarray
    """[H, W] uint16 instance ids, 65535 = unlabeled."""


def quantize_view(gt: GroundTruthView, depth_scale: float = 1000.0,
                  min_alpha: float = DEFAULT_MIN_ALPHA) -> QuantizedView:
    """The integer images :func:`export_dataset` writes for ``gt``."""
    rgb = np.clip(np.round(gt.rgb.numpy().astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    depth = gt.depth.numpy().astype(np.float64) * depth_scale
    valid = (gt.alpha.numpy() >= min_alpha) & np.isfinite(depth) & (depth > 0)
    depth = np.where(valid, np.clip(np.round(depth), 0, 65535), 0).astype(np.uint16)
    sem, ins = gt.semantic.numpy(), gt.instance.numpy()
    if min(sem.min(initial=0), ins.min(initial=0)) < 0 or max(sem.max(initial=0), ins.max(initial=0)) > UNLABELED:
        raise InvalidInputError("semantic/instance ids must fit in uint16 (0..65535)")
    return QuantizedView(rgb, depth, sem.astype(np.uint16), ins.astype(np.uint16))


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    if img.ndim == 3:
        img = img[:, :, ::-1]  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(img)):
        raise OSError(f"could not write {path}")


def _read_png(path: Path, dtype: np.dtype, channels: int) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InvalidInputError(f"missing or unreadable image: {path}")
    if img.dtype != dtype or (img.ndim == 3) != (channels == 3):
        raise InvalidInputError(f"{path}: expected {channels}-channel {np.dtype(dtype).name}, got "
                                f"{img.dtype.name} with shape {img.shape}")
    return img[:, :, ::-1].copy() if channels == 3 else img


@dataclass
class ExportSummary:
    """What :func:`export_dataset` wrote."""

    root: Path
    frames: int
    gaussians: int
    width: int
    height: int
    labelled_fraction: float
    """Fraction of all pixels with a class (not 65535)."""


def export_dataset(scene: SyntheticScene, trajectory: Trajectory, root: str | Path, *,
                   settings: RenderSettings | None = None, min_alpha: float = DEFAULT_MIN_ALPHA,
                   depth_scale: float = 1000.0, overwrite: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    """Render every view of ``trajectory`` and write the dataset folder (module docstring).

    Args:
        scene: the generated scene.
        trajectory: the views (all share ``trajectory.K`` and size).
        root: output folder; must not exist unless ``overwrite``.
        settings: renderer settings for the ground truth.
        min_alpha: pixels below this accumulated alpha are unlabeled and have no depth.
        depth_scale: depth PNG units per metre (1000 = millimetres, as Replica).
        overwrite: replace an existing folder.
        progress: called as ``progress(done, total)`` after each frame.
    """
    from chorus_ros.core.ply import write_ply

    root = Path(root)
    if root.exists():
        if not overwrite:
            raise InvalidInputError(f"dataset folder {root} exists (pass overwrite=True to replace it)")
        shutil.rmtree(root)
    if depth_scale <= 0 or not math.isfinite(depth_scale):
        raise InvalidInputError(f"depth_scale must be positive, got {depth_scale}")
    for sub in _SUBDIRS.values():
        (root / sub).mkdir(parents=True)
    (root / "README.md").write_text("# chorus_ros synthetic dataset\n\n" + README_TEXT + "\n", encoding="utf-8")
    K = trajectory.K
    cam = {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
           "width": int(trajectory.width), "height": int(trajectory.height), "depth_scale": float(depth_scale),
           "min_alpha": float(min_alpha), "frame": "optical (x right, y down, z forward)"}
    (root / "camera.yaml").write_text(yaml.safe_dump(cam, sort_keys=False), encoding="utf-8")
    scene.labels.to_yaml(root / "labels.yaml")
    inst = [scene.instances[i].to_dict() for i in sorted(scene.instances)]
    (root / "instances.yaml").write_text(yaml.safe_dump({"instances": inst}, sort_keys=False), encoding="utf-8")
    meta = {"seed": scene.seed, "gaussians": len(scene), "spacing": float(scene.spacing),
            "room_min": [float(v) for v in scene.room_min], "room_max": [float(v) for v in scene.room_max],
            "frames": len(trajectory), "kinds": list(trajectory.kinds),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(scene.config).items()}}
    (root / "scene.yaml").write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    write_ply(root / "scene.ply", scene.gaussians, extra_types={"label": "ushort", "instance": "ushort"},
              comments=[f"chorus_ros synthetic scene seed {scene.seed}"])
    with open(root / "traj_w_c.txt", "w", encoding="utf-8") as f:
        for c2w in trajectory.c2w:
            f.write(" ".join(repr(float(v)) for v in np.asarray(c2w, dtype=np.float64).reshape(16)) + "\n")
    labelled = 0
    for i, camera in enumerate(trajectory.cameras):
        q = quantize_view(render_ground_truth(scene.gaussians, camera, settings, min_alpha=min_alpha),
                          depth_scale, min_alpha)
        _write_png(_frame_path(root, "rgb", i), q.rgb)
        _write_png(_frame_path(root, "depth", i), q.depth)
        _write_png(_frame_path(root, "semantic", i), q.semantic)
        _write_png(_frame_path(root, "instance", i), q.instance)
        labelled += int((q.semantic != UNLABELED).sum())
        if progress is not None:
            progress(i + 1, len(trajectory))
    total = max(1, len(trajectory) * trajectory.width * trajectory.height)
    return ExportSummary(root, len(trajectory), len(scene), trajectory.width, trajectory.height, labelled / total)


@dataclass
class DatasetFrame:
    """One frame of a dataset folder."""

    index: int
    camera: Camera
    c2w: np.ndarray
    """[4, 4] float64 camera-to-world, optical frame."""
    rgb: np.ndarray
    """[H, W, 3] uint8 RGB."""
    depth: np.ndarray
    """[H, W] float32 metres (0 = none)."""
    depth_raw: np.ndarray
    """[H, W] uint16 as stored."""
    semantic: np.ndarray
    """[H, W] int64 class ids, 65535 = unlabeled."""
    instance: np.ndarray
    """[H, W] int64 instance ids, 65535 = unlabeled."""


class SceneDataset:
    """A dataset folder opened for reading; frames load lazily (``ds[i]``, ``iter(ds)``).

    Attributes:
        root: the folder.
        labels: the label set.
        instances: instance table (id -> :class:`InstanceInfo`).
        c2w: ``[V, 4, 4]`` float64 camera-to-world poses.
        K: ``[3, 3]`` float64 intrinsics; ``width``, ``height`` in pixels.
        depth_scale: depth PNG units per metre.
        meta: ``scene.yaml`` contents (empty if absent).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InvalidInputError(f"dataset folder not found: {self.root}")
        for name in ("camera.yaml", "labels.yaml", "traj_w_c.txt"):
            if not (self.root / name).is_file():
                raise InvalidInputError(f"{self.root}: missing {name}")
        cam = yaml.safe_load((self.root / "camera.yaml").read_text(encoding="utf-8"))
        try:
            self.K = np.array([[cam["fx"], 0.0, cam["cx"]], [0.0, cam["fy"], cam["cy"]], [0.0, 0.0, 1.0]])
            self.width, self.height = int(cam["width"]), int(cam["height"])
        except (KeyError, TypeError) as e:
            raise InvalidInputError(f"{self.root / 'camera.yaml'}: needs fx fy cx cy width height ({e})") from None
        self.depth_scale = float(cam.get("depth_scale", 1000.0))
        self.labels = LabelSet.from_yaml(self.root / "labels.yaml")
        rows = np.loadtxt(self.root / "traj_w_c.txt", dtype=np.float64, ndmin=2)
        if rows.shape[1] != 16:
            raise InvalidInputError(f"{self.root / 'traj_w_c.txt'}: expected 16 numbers per line, got {rows.shape[1]}")
        self.c2w = rows.reshape(-1, 4, 4)
        self.instances: dict[int, InstanceInfo] = {}
        if (self.root / "instances.yaml").is_file():
            d = yaml.safe_load((self.root / "instances.yaml").read_text(encoding="utf-8"))
            self.instances = {int(e["id"]): InstanceInfo.from_dict(e) for e in d["instances"]}
        self.meta = {}
        if (self.root / "scene.yaml").is_file():
            self.meta = yaml.safe_load((self.root / "scene.yaml").read_text(encoding="utf-8"))

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def camera(self, i: int) -> Camera:
        """Camera of frame ``i`` (frame id ``camera_optical_frame``)."""
        return Camera.from_c2w(self.c2w[self._check(i)], self.K, self.width, self.height)

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        return i

    def __getitem__(self, i: int) -> DatasetFrame:
        i = self._check(i)
        rgb = _read_png(_frame_path(self.root, "rgb", i), np.uint8, 3)
        d = _read_png(_frame_path(self.root, "depth", i), np.uint16, 1)
        sem = _read_png(_frame_path(self.root, "semantic", i), np.uint16, 1)
        ins = _read_png(_frame_path(self.root, "instance", i), np.uint16, 1)
        for name, img in (("rgb", rgb), ("depth", d), ("semantic", sem), ("instance", ins)):
            if img.shape[:2] != (self.height, self.width):
                raise InvalidInputError(f"{self.root}: frame {i} {name} is {img.shape[1]}x{img.shape[0]}, "
                                        f"camera.yaml says {self.width}x{self.height}")
        return DatasetFrame(i, self.camera(i), self.c2w[i].copy(), rgb,
                            (d.astype(np.float64) / self.depth_scale).astype(np.float32), d,
                            sem.astype(np.int64), ins.astype(np.int64))

    def __iter__(self) -> Iterator[DatasetFrame]:
        for i in range(len(self)):
            yield self[i]

    def load_gaussians(self) -> GaussianArrays:
        """The scene's Gaussians from ``scene.ply`` (``label``/``instance`` extras as int64)."""
        from chorus_ros.core.ply import read_ply

        g = read_ply(self.root / "scene.ply").gaussians
        for k in ("label", "instance"):
            if k in g.extras:
                g.extras[k] = g.extras[k].long()
        return g


def load_dataset(root: str | Path) -> SceneDataset:
    """Open a dataset folder written by :func:`export_dataset` (or laid out the same way)."""
    return SceneDataset(root)
