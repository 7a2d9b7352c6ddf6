"""Scene folders from outside: posed images with ground truth plus a 3DGS map.

Two layouts are read; :func:`open_scene` tells them apart by their small files.

**Replica / semantic-nerf layout** (issue 7)::

    <root>/
      rgb/rgb_<i>.png                                8-bit colour
      depth/depth_<i>.png                            uint16 millimetres, 0 = none   (optional)
      semantic_class/semantic_class_<i>.png          uint16 class id, unlabeled_id = none (optional)
      semantic_instance/semantic_instance_<i>.png    uint16 instance id                 (optional)
      traj_w_c.txt      line i: camera-to-world 4x4 of frame i, 16 numbers row-major, OpenCV
                        optical axes (x right, y down, z forward)
      intrinsics.txt    fx fy cx cy width height (pixels; pixel centres at u + 0.5)
      classes.json      {"classes": [{"id": 0, "name": "wall"}, ...], "unlabeled_id": 65535,
                         "instance_none_id": 0}
      gaussians.ply     the 3DGS map (or any PLY passed as ``map_path``)

**chorus_ros export layout** (:func:`chorus_ros.core.synthetic.dataset.export_dataset`): the
same image folders and ``traj_w_c.txt``, with ``camera.yaml`` (fx fy cx cy width height
depth_scale), ``labels.yaml`` (class id = position), ``instances.yaml`` and ``scene.ply``;
unlabeled and "no instance" are both 65535 there.

A folder without ``rgb/`` has no frames (3D scoring only); ``intrinsics.txt`` and
``traj_w_c.txt`` are then optional.

**Ground truth never reaches the model.** Every PLY vertex property that is not a 3DGS
parameter (``label``, ``instance``, anything else) is stripped from :attr:`SceneFolder.gaussians`
and listed in :attr:`SceneFolder.ignored_properties`; the class and instance columns (first
match of :data:`GT_LABEL_PROPERTIES` / :data:`GT_INSTANCE_PROPERTIES`) are kept apart as
:attr:`SceneFolder.gt_gaussian_labels` / :attr:`SceneFolder.gt_gaussian_instances`.

**Class mapping.** Ground-truth classes map to a model's :class:`~chorus_ros.core.labels.LabelSet`
by name, or through a labels map (YAML ``gt name: model name``; ``null`` drops a class), see
:meth:`SceneFolder.class_map_to`. Ground truth that maps to no model class is ignored.

Every malformed input raises :class:`~chorus_ros.core.errors.DatasetError` naming the file.

Example::

    scene = open_scene("data/room0", views=parse_views("::4"),
                       labels_map=load_labels_map("nyu40_to_demo.yaml"))
    lut = scene.class_map_to(pipe.labels)          # [65536] folder id -> model id / 65535
    f = scene.frame(0)                             # SceneFrame: rgb, depth, semantic, ...
    gt = lut[f.semantic]
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from chorus_ros.core.errors import DatasetError, InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera
from chorus_ros.core.labels import UNLABELED, LabelSet

__all__ = ["SceneFolder", "SceneFrame", "Intrinsics", "LabelsMap", "open_scene", "parse_views", "check_labels_map",
           "load_labels_map", "strip_gaussians", "GT_LABEL_PROPERTIES", "GT_INSTANCE_PROPERTIES",
           "LAYOUT_REPLICA", "LAYOUT_EXPORT"]

LAYOUT_REPLICA = "replica"
"""Replica / semantic-nerf layout with ``intrinsics.txt`` and ``classes.json``."""
LAYOUT_EXPORT = "chorus"
"""chorus_ros ``export_dataset`` layout with ``camera.yaml`` and ``labels.yaml``."""

GT_LABEL_PROPERTIES = ("label", "semantic", "semantic_class", "class", "class_id", "label_id")
"""PLY vertex properties read as per-Gaussian ground-truth class ids (first present wins)."""
GT_INSTANCE_PROPERTIES = ("instance", "instance_id", "semantic_instance", "object_id")
"""PLY vertex properties read as per-Gaussian ground-truth instance ids (first present wins)."""

_SUB = {"rgb": "rgb", "depth": "depth", "semantic": "semantic_class", "instance": "semantic_instance"}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- small types


@dataclass
class Intrinsics:
    """Pinhole intrinsics shared by all frames of a folder (pixels; pixel centres at u + 0.5, as
    gsplat, OpenCV and ``sensor_msgs/CameraInfo``)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def K(self) -> np.ndarray:
        """``[3, 3]`` float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def camera(self, c2w: np.ndarray, frame_id: str = "camera_optical_frame") -> Camera:
        """The :class:`~chorus_ros.core.geometry.Camera` of a ``[4, 4]`` camera-to-world pose
        (optical frame)."""
        return Camera.from_c2w(c2w, self.K, self.width, self.height, frame_id)


@dataclass
class SceneFrame:
    """One posed frame of a scene folder. Images are ``[H, W, ...]`` numpy arrays."""

    index: int
    """Frame index ``i`` of the file names (``rgb_<i>.png``) and of the trajectory line."""
    c2w: np.ndarray
    """[4, 4] float64 camera-to-world, OpenCV optical frame (x right, y down, z forward)."""
    rgb: np.ndarray | None
    """[H, W, 3] uint8 RGB."""
    depth: np.ndarray | None
    """[H, W] float32 metres along the optical axis, 0 = none; None without depth images."""
    semantic: np.ndarray | None
    """[H, W] uint16 folder class ids (``unlabeled_id`` = none); None without class images."""
    instance: np.ndarray | None
    """[H, W] uint16 folder instance ids (``instance_none_id`` = none); None without them."""
    camera: Camera
    """The view's camera (pose + intrinsics), ready for the renderer / pipeline."""


class LabelsMap(dict):
    """``{ground-truth class name: model class name or None}`` read from a YAML file;
    :attr:`source` (the file) is named in errors."""

    def __init__(self, mapping: dict | None = None, source: str = "labels map") -> None:
        super().__init__(mapping or {})
        self.source = source


def strip_gaussians(g: GaussianArrays) -> GaussianArrays:
    """The 3DGS parameters and ids of ``g`` without any extras (ground truth never reaches the model)."""
    return GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids)


def parse_views(text: str | None) -> slice | None:
    """Python slice syntax over frame positions: ``"30:60"``, ``"::4"``, ``"5"`` (one frame).

    Raises:
        InvalidInputError: not ``[start]:[stop][:step]`` with integers, or a zero step.
    """
    if text is None or str(text).strip() in ("", ":", "::"):
        return None
    s = str(text).strip()
    parts = s.split(":")
    try:
        vals = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise InvalidInputError(f"--views {s!r}: expected Python slice syntax like '30:60' or '::4'") from None
    if len(vals) == 1:
        i = vals[0]
        return slice(i, None if i == -1 else i + 1)
    if len(vals) > 3:
        raise InvalidInputError(f"--views {s!r}: at most start:stop:step")
    if len(vals) == 3 and vals[2] == 0:
        raise InvalidInputError(f"--views {s!r}: the step must not be 0")
    return slice(*vals)


def load_labels_map(path: str | Path) -> LabelsMap:
    """Read a labels map: YAML mapping ``gt name: model name`` (``null`` = ignore that class).

    Raises:
        DatasetError: missing file, not a mapping of names, empty names.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"labels map not found: {p}")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DatasetError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise DatasetError(f"{p}: expected a mapping 'gt name: model name', got {type(d).__name__}")
    out = LabelsMap(source=str(p))
    for k, v in d.items():
        if not isinstance(k, str) or not k.strip():
            raise DatasetError(f"{p}: ground-truth class names must be non-empty strings, got {k!r}")
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise DatasetError(f"{p}: model class for {k!r} must be a name or null, got {v!r}")
        out[k.strip()] = None if v is None else v.strip()
    return out


# ----------------------------------------------------------------------------- the folder


@dataclass
class SceneFolder:
    """An opened scene: the stripped map, per-Gaussian ground truth (if any), classes, camera and
    lazily loaded frames (:meth:`frame`). Build one with :func:`open_scene`, or in memory with
    :meth:`in_memory`.
    """

    root: Path | None
    """The folder (None for an in-memory scene)."""
    name: str
    """Scene name (the folder's name by default)."""
    gaussians: GaussianArrays
    """The 3DGS map with every extra property stripped (parameters and ids only)."""
    ignored_properties: list[str]
    """PLY vertex properties that were not given to the model (e.g. ``['instance', 'label']``)."""
    gt_gaussian_labels: np.ndarray | None
    """[N] int64 folder class id per Gaussian (rows of :attr:`gaussians`), or None."""
    gt_gaussian_instances: np.ndarray | None
    """[N] int64 folder instance id per Gaussian, or None."""
    classes: dict[int, str]
    """Folder class id -> name."""
    unlabeled_id: int
    """Class id meaning "no class" in the folder's images and PLY."""
    instance_none_id: int
    """Instance id meaning "no instance" in the folder's images and PLY."""
    camera: Intrinsics | None
    """Intrinsics shared by all frames (None when the folder has no frames)."""
    frame_indices: list[int]
    """File/trajectory indices of the selected frames; :meth:`frame` takes a position in this list."""
    poses: np.ndarray
    """[V, 4, 4] float64 camera-to-world of the selected frames (same order as frame_indices)."""
    labels_map: LabelsMap | None = None
    """Ground-truth name -> model name overrides (validated against :attr:`classes`)."""
    layout: str = LAYOUT_REPLICA
    """:data:`LAYOUT_REPLICA`, :data:`LAYOUT_EXPORT` or ``"memory"``."""
    stuff_names: frozenset = frozenset()
    """Folder class names marked as stuff by the folder itself (export layout), else empty."""
    map_path: Path | None = None
    """The PLY the map came from."""
    depth_scale: float = 1000.0
    """Depth PNG units per metre."""
    _loader: Callable[[int], SceneFrame] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frame_indices)

    def without_faint(self, min_opacity: float) -> "SceneFolder":
        """The same scene with the Gaussians below ``min_opacity`` left out of the map (and of the
        per-Gaussian ground truth), as the perception pipeline sets them aside
        (``PipelineConfig.min_opacity``); ``self`` when none is below it. Frames are shared."""
        keep = ~self.gaussians.faint_mask(min_opacity).cpu()
        if bool(keep.all()):
            return self
        k = keep.numpy()
        return replace(self, gaussians=self.gaussians.index(keep),
                       gt_gaussian_labels=None if self.gt_gaussian_labels is None else self.gt_gaussian_labels[k],
                       gt_gaussian_instances=(None if self.gt_gaussian_instances is None
                                              else self.gt_gaussian_instances[k]))

    def frame(self, k: int) -> SceneFrame:
        """Load the ``k``-th selected frame (``0 <= k < len(self)``).

        Raises:
            IndexError: ``k`` out of range.
            DatasetError: an image cannot be read or has the wrong size/type (names the file).
        """
        k = int(k)
        if not 0 <= k < len(self):
            raise IndexError(f"frame position {k} out of range for {len(self)} frames of {self.name}")
        return self._loader(k)

    def __iter__(self):
        for k in range(len(self)):
            yield self.frame(k)

    # ------------------------------------------------------------------ classes
    def class_names(self) -> list[str]:
        """Folder class names in id order."""
        return [self.classes[i] for i in sorted(self.classes)]

    def mapped_names(self, label_set: LabelSet) -> dict[str, str | None]:
        """Folder class name -> model class name (None: ignored), by :attr:`labels_map`, else by
        equal name.

        Raises:
            DatasetError: the labels map names a model class that ``label_set`` does not have.
        """
        lm = self.labels_map or {}
        src = getattr(self.labels_map, "source", "labels map")
        out: dict[str, str | None] = {}
        known = set(label_set.names)
        for name in self.class_names():
            if name in lm:
                tgt = lm[name]
                if tgt is not None and tgt not in known:
                    raise DatasetError(f"{src}: {name!r} maps to {tgt!r}, which is not a class of the model's "
                                       f"label set {label_set.name!r} (known: {', '.join(label_set.names)})")
                out[name] = tgt
            else:
                out[name] = name if name in known else None
        return out

    def class_map_to(self, label_set: LabelSet) -> np.ndarray:
        """``[65536]`` int64 lookup: folder class id -> model class id, or 65535 (ignored).

        ``lut[semantic_image]`` maps a whole image; :attr:`unlabeled_id` and ids the folder does
        not list map to 65535.
        """
        lut = np.full(UNLABELED + 1, UNLABELED, dtype=np.int64)
        names = self.mapped_names(label_set)
        for cid, name in self.classes.items():
            tgt = names[name]
            if tgt is not None and cid != self.unlabeled_id:
                lut[cid] = label_set.names.index(tgt)
        return lut

    # ------------------------------------------------------------------ building
    @classmethod
    def in_memory(cls, name: str, gaussians: GaussianArrays, classes: dict[int, str],
                  frames: list[SceneFrame], *, intrinsics: Intrinsics | None = None,
                  unlabeled_id: int = UNLABELED, instance_none_id: int = UNLABELED,
                  labels_map: dict | None = None, stuff_names=()) -> "SceneFolder":
        """A scene whose frames are already in memory (generated scenes, shifted copies).

        ``gaussians.extras['label'/'instance']`` (if present) become the per-Gaussian ground
        truth; all extras are stripped from the map the model sees.
        """
        lab, ins, ignored = _split_ground_truth(gaussians)
        if intrinsics is None and frames:
            c = frames[0].camera
            K = c.K.double().numpy()
            intrinsics = Intrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), c.width, c.height)
        frames = list(frames)
        poses = np.stack([f.c2w for f in frames]) if frames else np.zeros((0, 4, 4))
        lm = labels_map if labels_map is None or isinstance(labels_map, LabelsMap) else LabelsMap(labels_map)
        out = cls(None, name, strip_gaussians(gaussians), ignored, lab, ins, dict(classes), int(unlabeled_id),
                  int(instance_none_id), intrinsics, [f.index for f in frames], poses, lm, "memory",
                  frozenset(stuff_names))
        out._loader = frames.__getitem__
        _check_labels_map_keys(out)
        return out


def _split_ground_truth(g: GaussianArrays) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    lab = ins = None
    for k in GT_LABEL_PROPERTIES:
        if k in g.extras:
            lab = g.extras[k].detach().cpu().numpy().astype(np.int64).reshape(-1)
            break
    for k in GT_INSTANCE_PROPERTIES:
        if k in g.extras:
            ins = g.extras[k].detach().cpu().numpy().astype(np.int64).reshape(-1)
            break
    return lab, ins, sorted(g.extras)


def check_labels_map(labels_map: dict | None, scenes: list[SceneFolder]) -> None:
    """Raise :class:`DatasetError` (naming the labels-map file) for ground-truth names that are
    a class of none of ``scenes`` (a typo would otherwise silently drop a class)."""
    if not labels_map or not scenes:
        return
    names = {n for s in scenes for n in s.classes.values()}
    bad = sorted(k for k in labels_map if k not in names)
    if bad:
        src = getattr(labels_map, "source", "labels map")
        which = f"scene {scenes[0].name!r}" if len(scenes) == 1 else f"any of the {len(scenes)} scenes"
        raise DatasetError(f"{src}: unknown ground-truth class name(s) {bad} for {which} "
                           f"(classes: {', '.join(sorted(names))})")


def _check_labels_map_keys(scene: SceneFolder) -> None:
    check_labels_map(scene.labels_map, [scene])


# ----------------------------------------------------------------------------- reading files


def _png_info(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk (reads 26 bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError as e:
        raise DatasetError(f"cannot read image {path}: {e.strerror}") from None
    if len(head) < 26 or not head.startswith(_PNG_SIG) or head[12:16] != b"IHDR":
        raise DatasetError(f"{path}: not a PNG file")
    w, h = struct.unpack(">II", head[16:24])
    return int(w), int(h), head[24], head[25]


_KIND_RULES = {  # kind -> (allowed (bit depth, colour type) pairs, description)
    "rgb": ({(8, 2), (8, 6), (8, 0)}, "8-bit RGB"),
    "depth": ({(16, 0)}, "16-bit grey (uint16 depth)"),
    "semantic": ({(16, 0), (8, 0)}, "16-bit grey (uint16 class ids)"),
    "instance": ({(16, 0), (8, 0)}, "16-bit grey (uint16 instance ids)"),
}


def _check_png(path: Path, kind: str, width: int, height: int) -> None:
    if not path.is_file():
        raise DatasetError(f"missing image {path} (every frame of {path.parent.name}/ needs one)")
    w, h, depth, ctype = _png_info(path)
    allowed, what = _KIND_RULES[kind]
    if (depth, ctype) not in allowed:
        raise DatasetError(f"{path}: expected {what}, got a PNG of bit depth {depth}, colour type {ctype}")
    if (w, h) != (width, height):
        raise DatasetError(f"{path}: image is {w}x{h}, the intrinsics say {width}x{height}")


def _read_png(path: Path, kind: str) -> np.ndarray:
    import cv2

    flag = cv2.IMREAD_COLOR if kind == "rgb" else cv2.IMREAD_UNCHANGED
    img = cv2.imread(str(path), flag)
    if img is None:
        raise DatasetError(f"cannot decode image {path}")
    if kind == "rgb":
        if img.dtype != np.uint8:
            raise DatasetError(f"{path}: expected 8-bit colour, got {img.dtype}")
        return np.ascontiguousarray(img[:, :, ::-1])
    if img.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel image, got shape {img.shape}")
    return img.astype(np.uint16)


def _frame_path(root: Path, kind: str, i: int) -> Path:
    sub = _SUB[kind]
    return root / sub / f"{sub}_{i}.png"


def _read_traj(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing trajectory file {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            raise DatasetError(f"{path}: line {n} is not 16 numbers: {line.strip()[:80]!r}") from None
        if len(vals) != 16:
            raise DatasetError(f"{path}: line {n} has {len(vals)} numbers, expected 16 (a row-major 4x4)")
        rows.append(vals)
    c2w = np.asarray(rows, dtype=np.float64).reshape(-1, 4, 4)
    for i, m in enumerate(c2w):
        if not np.all(np.isfinite(m)):
            raise DatasetError(f"{path}: pose {i} has non-finite values")
        if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-4):
            raise DatasetError(f"{path}: pose {i} last row is {m[3].tolist()}, expected [0, 0, 0, 1]")
        r = m[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-3) or np.linalg.det(r) < 0:
            raise DatasetError(f"{path}: pose {i} is not a rigid transform (its 3x3 block is not a rotation)")
    return c2w


def _intrinsics(fx, fy, cx, cy, width, height, source: Path) -> Intrinsics:
    vals = [fx, fy, cx, cy]
    if not all(np.isfinite(v) for v in vals) or fx <= 0 or fy <= 0:
        raise DatasetError(f"{source}: bad intrinsics fx={fx} fy={fy} cx={cx} cy={cy} "
                           "(need finite values, positive focal lengths)")
    if width != int(width) or height != int(height) or int(width) <= 0 or int(height) <= 0:
        raise DatasetError(f"{source}: bad image size {width}x{height} (need positive integers)")
    return Intrinsics(float(fx), float(fy), float(cx), float(cy), int(width), int(height))


def _read_intrinsics_txt(path: Path) -> Intrinsics:
    if not path.is_file():
        raise DatasetError(f"missing intrinsics file {path} (fx fy cx cy width height)")
    try:
        vals = [float(v) for v in path.read_text(encoding="utf-8").split()]
    except ValueError:
        raise DatasetError(f"{path}: expected 6 numbers 'fx fy cx cy width height'") from None
    if len(vals) != 6:
        raise DatasetError(f"{path}: expected 6 numbers 'fx fy cx cy width height', got {len(vals)}")
    return _intrinsics(*vals, source=path)


def _read_camera_yaml(path: Path) -> tuple[Intrinsics, float]:
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
        intr = _intrinsics(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]),
                           float(d["width"]), float(d["height"]), path)
        scale = float(d.get("depth_scale", 1000.0))
    except (KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: needs fx fy cx cy width height ({type(e).__name__}: {e})") from None
    if not np.isfinite(scale) or scale <= 0:
        raise DatasetError(f"{path}: depth_scale must be positive, got {scale}")
    return intr, scale


def _read_classes_json(path: Path) -> tuple[dict[int, str], int, int]:
    if not path.is_file():
        raise DatasetError(f"missing class table {path}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("classes"), list):
        raise DatasetError(f"{path}: expected an object with a 'classes' list")
    unl, none = d.get("unlabeled_id", UNLABELED), d.get("instance_none_id", 0)
    for key, v in (("unlabeled_id", unl), ("instance_none_id", none)):
        if not isinstance(v, int) or not 0 <= v <= UNLABELED:
            raise DatasetError(f"{path}: {key} must be an integer in [0, 65535], got {v!r}")
    classes: dict[int, str] = {}
    for j, e in enumerate(d["classes"]):
        if not isinstance(e, dict) or not isinstance(e.get("id"), int) or not isinstance(e.get("name"), str):
            raise DatasetError(f"{path}: class entry {j} needs an integer 'id' and a string 'name', got {e!r}")
        cid, name = e["id"], e["name"].strip()
        if not 0 <= cid <= UNLABELED or cid == unl:
            raise DatasetError(f"{path}: class {name!r} has id {cid}, outside [0, 65535] or equal to unlabeled_id")
        if not name:
            raise DatasetError(f"{path}: class id {cid} has an empty name")
        if cid in classes:
            raise DatasetError(f"{path}: class id {cid} is listed twice ({classes[cid]!r}, {name!r})")
        if name in classes.values():
            raise DatasetError(f"{path}: class name {name!r} is listed twice")
        classes[cid] = name
    if not classes:
        raise DatasetError(f"{path}: the 'classes' list is empty")
    return classes, int(unl), int(none)


def _read_map(path: Path):
    from chorus_ros.core.ply import read_ply

    if not path.is_file():
        raise DatasetError(f"missing 3DGS map {path}")
    try:
        return read_ply(path).gaussians
    except InvalidInputError as e:
        raise DatasetError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def _frame_list(root: Path) -> list[int]:
    d = root / _SUB["rgb"]
    pat = re.compile(r"rgb_(\d+)\.png$")
    idx = sorted(int(m.group(1)) for p in d.iterdir() if (m := pat.match(p.name)))
    if not idx:
        raise DatasetError(f"{d}: no images named rgb_<i>.png")
    return idx


def open_scene(root: str | Path, *, map_path: str | Path | None = None, views: slice | None = None,
               labels_map: dict[str, str | None] | None = None, name: str | None = None,
               check_map_keys: bool = True) -> SceneFolder:
    """Open a scene folder in either layout (module docstring) and validate it.

    Args:
        root: the folder.
        map_path: the 3DGS PLY (default ``gaussians.ply``, or ``scene.ply`` in the export layout).
        views: which frames, as a slice over the sorted frame indices (see :func:`parse_views`).
        labels_map: ground-truth name -> model name (e.g. from :func:`load_labels_map`); its keys
            must be classes of the folder.
        name: scene name (default: the folder's name).
        check_map_keys: reject labels-map keys that are not classes of this folder; pass False
            when one map serves several folders and call :func:`check_labels_map` on all of them.

    Every selected frame's files are checked here (existence, PNG type and size, one trajectory
    line per frame), so a malformed folder fails before any work starts.

    Raises:
        DatasetError: naming the file that is missing or malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"scene folder not found: {root}")
    depth_scale = 1000.0
    stuff: frozenset = frozenset()
    if (root / "classes.json").is_file() or (root / "intrinsics.txt").is_file():
        layout = LAYOUT_REPLICA
        classes, unl, none = _read_classes_json(root / "classes.json")
        default_map = root / "gaussians.ply"
    elif (root / "camera.yaml").is_file() or (root / "labels.yaml").is_file():
        layout = LAYOUT_EXPORT
        if not (root / "labels.yaml").is_file():
            raise DatasetError(f"missing label set {root / 'labels.yaml'}")
        try:
            ls = LabelSet.from_yaml(root / "labels.yaml")
        except InvalidInputError as e:
            raise DatasetError(f"{root / 'labels.yaml'}: {e}") from None
        classes = dict(enumerate(ls.names))
        stuff = frozenset(n for n, s in zip(ls.names, ls.stuff) if s)
        unl, none = UNLABELED, UNLABELED
        default_map = root / "scene.ply"
    else:
        raise DatasetError(f"{root}: not a scene folder: it has neither classes.json + intrinsics.txt "
                           "(Replica layout) nor camera.yaml + labels.yaml (chorus_ros export layout)")
    mp = Path(map_path) if map_path is not None else default_map
    g = _read_map(mp)
    lab, ins, ignored = _split_ground_truth(g)

    has_frames = (root / _SUB["rgb"]).is_dir()
    intr, poses, idx = None, np.zeros((0, 4, 4)), []
    if has_frames:
        if layout == LAYOUT_REPLICA:
            intr = _read_intrinsics_txt(root / "intrinsics.txt")
        else:
            if not (root / "camera.yaml").is_file():
                raise DatasetError(f"missing camera file {root / 'camera.yaml'}")
            intr, depth_scale = _read_camera_yaml(root / "camera.yaml")
        all_idx = _frame_list(root)
        traj = _read_traj(root / "traj_w_c.txt")
        if len(traj) <= all_idx[-1]:
            raise DatasetError(f"{root / 'traj_w_c.txt'}: {len(traj)} poses, but {len(all_idx)} images up to "
                               f"rgb_{all_idx[-1]}.png need {all_idx[-1] + 1} (one line per frame index)")
        idx = all_idx[views] if views is not None else all_idx
        if not idx:
            raise DatasetError(f"{root}: --views {views} selects none of the {len(all_idx)} frames")
        poses = traj[idx]
        kinds = [k for k in ("rgb", "depth", "semantic", "instance") if (root / _SUB[k]).is_dir()]
        for i in idx:
            for k in kinds:
                _check_png(_frame_path(root, k, i), k, intr.width, intr.height)
    else:
        kinds = []

    lm = labels_map if labels_map is None or isinstance(labels_map, LabelsMap) else LabelsMap(labels_map)
    scene = SceneFolder(root, name or root.resolve().name, strip_gaussians(g), ignored, lab, ins, classes, unl,
                        none, intr, list(idx), poses, lm, layout, stuff, mp, depth_scale)
    if check_map_keys:
        _check_labels_map_keys(scene)
    _check_gaussian_labels(scene, mp)

    def load(k: int, _root=root, _kinds=tuple(kinds), _scene=scene) -> SceneFrame:
        i = _scene.frame_indices[k]
        imgs = {}
        for kind in ("rgb", "depth", "semantic", "instance"):
            if kind not in _kinds:
                imgs[kind] = None
                continue
            p = _frame_path(_root, kind, i)
            img = _read_png(p, kind)
            if img.shape[:2] != (_scene.camera.height, _scene.camera.width):
                raise DatasetError(f"{p}: image is {img.shape[1]}x{img.shape[0]}, the intrinsics say "
                                   f"{_scene.camera.width}x{_scene.camera.height}")
            imgs[kind] = img
        depth = None if imgs["depth"] is None else (imgs["depth"].astype(np.float64)
                                                    / _scene.depth_scale).astype(np.float32)
        c2w = _scene.poses[k].copy()
        return SceneFrame(i, c2w, imgs["rgb"], depth, imgs["semantic"], imgs["instance"],
                          _scene.camera.camera(c2w))

    scene._loader = load
    return scene


def _check_gaussian_labels(scene: SceneFolder, source: Path) -> None:
    lab = scene.gt_gaussian_labels
    if lab is None or not lab.size:
        return
    vals = np.unique(lab)
    bad = [int(v) for v in vals if int(v) not in scene.classes and int(v) != scene.unlabeled_id]
    if bad:
        raise DatasetError(f"{source}: per-Gaussian class ids {bad[:10]} are not in the scene's class table "
                           f"(known ids: {sorted(scene.classes)[:20]}...)")
