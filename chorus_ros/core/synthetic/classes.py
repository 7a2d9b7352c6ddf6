"""Classes and materials of the synthetic indoor scenes.

Classes (ids are the order below; ``config/labels/synthetic.yaml`` holds the same table and a
test keeps them equal):

* **Stuff** classes ``floor``, ``wall``, ``ceiling``: amorphous background surfaces. They still
  get instance ids (the floor is one instance, each of the four walls one, the ceiling one), so
  every Gaussian has an instance; consumers that evaluate object instances skip stuff classes
  (``LabelSet.stuff``).
* **Thing** classes: furniture and objects, one instance id per object. ``door`` and ``window``
  are set into wall openings; ``picture`` hangs on a wall; ``rug`` lies on the floor; ``book``
  stands on shelves; ``pillow`` lies on beds and sofas; ``monitor``/``lamp``/small ``plant``
  stand on tables or cabinets.

Materials give each object part a colour palette (one colour picked per instance, then jittered),
a texture (low-frequency value noise, stripes or blotches over world position plus
per-Gaussian white noise) and an opacity range. Colours are linear-ish RGB in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chorus_ros.core.labels import LabelSet

__all__ = ["ClassSpec", "CLASSES", "STUFF_CLASSES", "THING_CLASSES", "Material", "MATERIALS",
           "synthetic_label_set", "class_id"]


@dataclass(frozen=True)
class ClassSpec:
    """One semantic class of the generator."""

    name: str
    """Class name (unique)."""
    color: tuple[int, int, int]
    """Display colour for label images, RGB uint8."""
    stuff: bool
    """True for background surfaces (floor, wall, ceiling)."""
    description: str
    """What the generator builds for this class."""


CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("floor", (152, 118, 84), True, "room floor (one rect)"),
    ClassSpec("wall", (174, 199, 232), True, "four room walls, with openings for doors and windows"),
    ClassSpec("ceiling", (220, 220, 220), True, "room ceiling (optional)"),
    ClassSpec("door", (214, 39, 40), False, "door leaf + frame + handle in a wall opening"),
    ClassSpec("window", (23, 190, 207), False, "semi-transparent glass + frame in a wall opening"),
    ClassSpec("table", (255, 127, 14), False, "top slab + four legs"),
    ClassSpec("chair", (44, 160, 44), False, "seat + four legs + back"),
    ClassSpec("sofa", (140, 86, 75), False, "base + back + two armrests"),
    ClassSpec("bed", (255, 187, 120), False, "frame + mattress + headboard"),
    ClassSpec("shelf", (148, 103, 189), False, "bookshelf: sides, top, bottom, back, boards"),
    ClassSpec("cabinet", (31, 119, 180), False, "box body + front doors + handles"),
    ClassSpec("lamp", (255, 230, 50), False, "base + pole + semi-transparent shade (table or floor)"),
    ClassSpec("plant", (60, 220, 90), False, "pot + soil + foliage blobs"),
    ClassSpec("monitor", (90, 90, 250), False, "screen + stand (pole and foot)"),
    ClassSpec("rug", (227, 119, 194), False, "thin striped slab on the floor"),
    ClassSpec("picture", (188, 189, 34), False, "framed canvas on a wall"),
    ClassSpec("book", (247, 182, 210), False, "small box standing on a shelf board"),
    ClassSpec("pillow", (197, 176, 213), False, "flattened ellipsoid on a bed or sofa"),
)

STUFF_CLASSES = tuple(c.name for c in CLASSES if c.stuff)
THING_CLASSES = tuple(c.name for c in CLASSES if not c.stuff)
_INDEX = {c.name: i for i, c in enumerate(CLASSES)}


def class_id(name: str) -> int:
    """Class id of a generator class name."""
    return _INDEX[name]


def synthetic_label_set() -> LabelSet:
    """The generator's :class:`LabelSet` (same as ``config/labels/synthetic.yaml``)."""
    return LabelSet([c.name for c in CLASSES], np.array([c.color for c in CLASSES]),
                    np.array([c.stuff for c in CLASSES]), "synthetic")


@dataclass(frozen=True)
class Material:
    """Appearance of a surface."""

    palette: tuple[tuple[float, float, float], ...]
    """Base colours (RGB in [0, 1]); one is picked per instance."""
    jitter: float = 0.06
    """Per-instance colour jitter (brightness scale +-jitter and per-channel +-jitter/2)."""
    noise: float = 0.06
    """Amplitude of the low-frequency value noise (relative brightness)."""
    noise_freq: float = 4.0
    """Spatial frequency of the value noise, cycles per metre."""
    white: float = 0.02
    """Per-Gaussian white colour noise (std, absolute)."""
    pattern: str = "noise"
    """'noise', 'stripes' (two-colour bands) or 'blotches' (multi-colour painting)."""
    opacity: tuple[float, float] = (0.88, 0.99)
    """Opacity range drawn uniformly per Gaussian."""


def _rgb(*hexes: str) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4)) for h in hexes)


MATERIALS: dict[str, Material] = {
    "floor": Material(_rgb("9c7a54", "b08d62", "7d5b3c", "a8a39a", "6f6a64"), noise=0.10,
                      noise_freq=3.0),
    "wall": Material(_rgb("e8e4da", "dcd6c8", "cfd8dc", "e6d9c3", "d8e2d0"), noise=0.03,
                     noise_freq=1.5, white=0.01),
    "ceiling": Material(_rgb("f2f2f0", "ebebe6"), noise=0.02, white=0.01),
    "wood_light": Material(_rgb("c8a06e", "d2b48c", "b98b58"), noise=0.12, noise_freq=9.0),
    "wood_dark": Material(_rgb("6b4a2f", "5a3b22", "7a5636"), noise=0.12, noise_freq=9.0),
    "painted": Material(_rgb("f0f0f0", "2f3d4c", "8c9a7b", "b03a2e", "e0d6b8"), noise=0.03),
    "fabric": Material(_rgb("4a6a8a", "8a4a4a", "6a7a5a", "9a9a9a", "3a3a4a", "c0a080"),
                       noise=0.08, noise_freq=12.0, white=0.03),
    "bedding": Material(_rgb("f4f4f4", "dfe8f0", "f0e0e0", "e8e8d8"), noise=0.05, noise_freq=6.0),
    "metal": Material(_rgb("2a2a2a", "8a8a8a", "b8b8b8"), noise=0.03, white=0.015),
    "plastic_black": Material(_rgb("1e1e1e", "2c2c2c"), noise=0.02, white=0.01),
    "screen": Material(_rgb("0c1018", "101820"), noise=0.05, noise_freq=2.0, white=0.01),
    "glass": Material(_rgb("a8c8e0", "b8d8e8"), noise=0.03, white=0.01, opacity=(0.30, 0.45)),
    "frame": Material(_rgb("f5f5f5", "e0e0e0", "5a4030"), noise=0.02),
    "shade": Material(_rgb("f3e6c8", "ffffff", "e8d0a0"), noise=0.03, opacity=(0.55, 0.8)),
    "terracotta": Material(_rgb("b5603c", "a0522d", "d8d8d8", "404040"), noise=0.06),
    "soil": Material(_rgb("3b2a1a", "4a3422"), noise=0.15, noise_freq=20.0, white=0.04),
    "foliage": Material(_rgb("3a7d2c", "2e6b30", "4f8f3a", "6a9a3a"), noise=0.25, noise_freq=15.0,
                        white=0.06, opacity=(0.55, 0.97)),
    "rug": Material(_rgb("8b2e3c", "2e4a8b", "c8a050", "4a6a4a"), noise=0.05, noise_freq=6.0,
                    pattern="stripes"),
    "canvas": Material(_rgb("d04040", "4080d0", "e0c040", "40a060", "f0f0e8"), noise=0.0,
                       white=0.03, pattern="blotches"),
    "paper": Material(_rgb("c03030", "3050a0", "30803a", "d0a020", "603080", "e0e0d0", "202020"),
                      jitter=0.1, noise=0.03),
}
