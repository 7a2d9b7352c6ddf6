"""Label sets: the ordered class names and display colours used everywhere in chorus_ros.

A :class:`LabelSet` maps a class id (its index in ``names``) to a name and an RGB colour. The
id ``65535`` (:attr:`LabelSet.UNLABELED`, the uint16 "unlabeled" of ``vision_msgs/LabelInfo``)
marks pixels or Gaussians without a class; it is never a valid class index.

YAML layout (``config/labels/*.yaml``)::

    name: synthetic            # free-form name of the label space
    unlabeled_id: 65535        # fixed; checked on load
    classes:                   # in id order: the first entry is id 0
      - {name: floor, color: [128, 96, 64], stuff: true}
      - {name: chair, color: [220, 20, 60]}

``stuff`` (optional, default false) marks amorphous background classes (floor, wall...) as in
panoptic segmentation; consumers may treat them differently (e.g. no per-object instances).

Example::

    labels = LabelSet.from_yaml("config/labels/synthetic.yaml")
    rgb = labels.colorize(label_image)          # [H, W] ids -> [H, W, 3] uint8
    chair = labels.index_of("chair")
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import yaml

from chorus_ros.core.errors import InvalidInputError, RegistryError

__all__ = ["LabelSet", "UNLABELED", "colorize_instances", "instance_palette"]

UNLABELED = 65535
"""Label id meaning "no class" (uint16 max, as ``vision_msgs/LabelInfo``)."""


def _as_numpy(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    return np.asarray(image)


@dataclass
class LabelSet:
    """An ordered list of classes with display colours.

    Attributes:
        names: class names; class id ``i`` is ``names[i]``. Unique, non-empty.
        colors: ``[K, 3]`` uint8 RGB display colour per class.
        stuff: ``[K]`` bool, True for amorphous background ("stuff") classes.
        name: name of the label space (e.g. ``"synthetic"``).
    """

    names: list[str]
    colors: np.ndarray
    stuff: np.ndarray | None = None
    name: str = "labels"

    UNLABELED: ClassVar[int] = UNLABELED
    """Label id for "no class"; colourised black."""

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        k = len(self.names)
        if k == 0:
            raise InvalidInputError("a LabelSet needs at least one class")
        if k >= UNLABELED:
            raise InvalidInputError(f"a LabelSet holds at most {UNLABELED - 1} classes, got {k}")
        if any(not n for n in self.names):
            raise InvalidInputError(f"class names must be non-empty, got {self.names}")
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise InvalidInputError(f"duplicate class names in LabelSet: {dup}")
        colors = np.asarray(self.colors)
        if colors.shape != (k, 3):
            raise InvalidInputError(f"colors must be [{k}, 3] (one RGB per class), got {colors.shape}")
        if colors.size and (not np.all(np.isfinite(colors)) or colors.min() < 0 or colors.max() > 255):
            raise InvalidInputError(f"colors must be integers in [0, 255], got range "
                                    f"[{colors.min()}, {colors.max()}]")
        self.colors = colors.astype(np.uint8)
        if self.stuff is None:
            self.stuff = np.zeros(k, dtype=bool)
        self.stuff = np.asarray(self.stuff, dtype=bool).reshape(-1)
        if self.stuff.shape != (k,):
            raise InvalidInputError(f"stuff must have one flag per class ({k}), got {self.stuff.shape}")

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        """Number of classes K (valid ids are ``0..K-1``)."""
        return len(self.names)

    def index_of(self, name: str) -> int:
        """Class id of ``name``; raises :class:`RegistryError` listing the known names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise RegistryError(f"unknown class {name!r} in label set {self.name!r}; "
                                f"known: {', '.join(self.names)}") from None

    def is_stuff(self, class_id: int) -> bool:
        """True if ``class_id`` is a stuff (background) class."""
        return bool(self.stuff[self._check_id(class_id)])

    def _check_id(self, class_id: int) -> int:
        c = int(class_id)
        if not 0 <= c < len(self.names):
            raise InvalidInputError(f"class id {c} out of range for {len(self.names)} classes")
        return c

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return (self.names == other.names and np.array_equal(self.colors, other.colors)
                and np.array_equal(self.stuff, other.stuff) and self.name == other.name)

    # ---------------------------------------------------------------- colours
    def colorize(self, label_image) -> np.ndarray:
        """Display colours for a label image.

        Args:
            label_image: ``[...]`` integer class ids (numpy or torch); ``65535`` = unlabeled.

        Returns:
            ``[..., 3]`` uint8 RGB; unlabeled pixels are black.

        Raises:
            InvalidInputError: for ids that are neither a class nor ``65535``.
        """
        lab = _as_numpy(label_image)
        if lab.dtype.kind not in "iu":
            raise InvalidInputError(f"label image must hold integers, got dtype {lab.dtype}")
        lab = lab.astype(np.int64)
        unl = lab == UNLABELED
        bad = ~unl & ((lab < 0) | (lab >= len(self.names)))
        if bad.any():
            vals = np.unique(lab[bad])[:8].tolist()
            raise InvalidInputError(f"label image holds ids {vals} that are neither a class of "
                                    f"{self.name!r} (0..{len(self.names) - 1}) nor {UNLABELED}")
        table = np.concatenate([self.colors, np.zeros((1, 3), np.uint8)])
        return table[np.where(unl, len(self.names), lab)]

    # -------------------------------------------------------------------- IO
    def to_dict(self) -> dict:
        """Plain-YAML-able dict (see the module docstring for the layout)."""
        classes = []
        for n, c, s in zip(self.names, self.colors.tolist(), self.stuff.tolist()):
            entry = {"name": n, "color": [int(v) for v in c]}
            if s:
                entry["stuff"] = True
            classes.append(entry)
        return {"name": self.name, "unlabeled_id": UNLABELED, "classes": classes}

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "label set") -> "LabelSet":
        """Inverse of :meth:`to_dict`; errors name ``source`` and the bad entry."""
        if not isinstance(d, dict) or not isinstance(d.get("classes"), list):
            raise InvalidInputError(f"{source}: expected a mapping with a 'classes' list")
        unl = d.get("unlabeled_id", UNLABELED)
        if unl != UNLABELED:
            raise InvalidInputError(f"{source}: unlabeled_id must be {UNLABELED}, got {unl}")
        names, colors, stuff = [], [], []
        for i, e in enumerate(d["classes"]):
            if not isinstance(e, dict) or "name" not in e or "color" not in e:
                raise InvalidInputError(f"{source}: class entry {i} needs 'name' and 'color', got {e!r}")
            col = e["color"]
            if not (isinstance(col, (list, tuple)) and len(col) == 3
                    and all(isinstance(v, int) and 0 <= v <= 255 for v in col)):
                raise InvalidInputError(f"{source}: class {e['name']!r} colour must be 3 ints in "
                                        f"[0, 255], got {col!r}")
            names.append(e["name"])
            colors.append(col)
            stuff.append(bool(e.get("stuff", False)))
        return cls(names, np.asarray(colors, dtype=np.int64).reshape(-1, 3), np.asarray(stuff),
                   str(d.get("name", "labels")))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LabelSet":
        """Load a label set from a YAML file."""
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"label set file not found: {path}")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f), source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        """Write the label set as YAML (readable by :meth:`from_yaml`)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        Path(path).write_text(text, encoding="utf-8")


def instance_palette(ids) -> np.ndarray:
    """Deterministic, well-spread display colour per instance id: ``[...]`` ints -> ``[..., 3]`` uint8.

    Colours come from a golden-ratio hue walk (id ``i`` -> hue ``i * 0.618...``) with
    alternating saturation/value rows, so neighbouring ids get distinct colours. ``65535`` and
    negative ids map to black.
    """
    ids = _as_numpy(ids).astype(np.int64)
    h = np.mod(ids * 0.6180339887498949, 1.0)
    s = np.where(ids % 2 == 0, 0.85, 0.6)
    v = np.where((ids // 2) % 2 == 0, 0.95, 0.75)
    # HSV -> RGB, vectorised
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    rgb = np.round(np.stack([r, g, b], -1) * 255).astype(np.uint8)
    rgb[(ids == UNLABELED) | (ids < 0)] = 0
    return rgb


def colorize_instances(instance_image) -> np.ndarray:
    """``[H, W]`` instance ids -> ``[H, W, 3]`` uint8 (see :func:`instance_palette`)."""
    return instance_palette(instance_image)
