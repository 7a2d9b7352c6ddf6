"""Procedural furniture and objects built from primitives, in an object-local frame.

Local frame of every object: origin at the centre of its footprint on the floor (or on the
support it stands on), **x** across its width, **y** pointing to its *front* (so the back is at
``-y``: the side that goes against a wall), **z** up. Wall fixtures (door, window, picture)
use the wall's frame: x along the wall, y into the room, z up, origin on the wall plane at
the floor.

Each builder draws its random dimensions from ``rng`` and returns a :class:`Built`: the parts
(a primitive and a material name each) and, where things can stand on it, support rectangles.
Dimensions are realistic (metres): e.g. tables 0.72-0.78 m high, chairs with a 0.45 m seat.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from chorus_ros.core.synthetic.primitives import Box, Cylinder, Ellipsoid, Primitive

__all__ = ["Part", "Support", "Built", "BUILDERS", "build"]


@dataclass
class Part:
    """One primitive of an object and the material it is made of."""

    prim: Primitive
    material: str


@dataclass
class Support:
    """A horizontal rectangle things can stand on, object-local: x in [x0, x1], y in [y0, y1] at height z."""

    x0: float
    x1: float
    y0: float
    y1: float
    z: float
    shelf_height: float = math.inf
    """Free height above the surface (shelf boards), metres."""


@dataclass
class Built:
    parts: list[Part]
    supports: list[Support] = field(default_factory=list)
    params: dict[str, float] = field(default_factory=dict)
    """Builder-specific dimensions other code needs (e.g. a door's width)."""


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _box(x0, x1, y0, y1, z0, z1, material: str, skip=()) -> Part:
    """Axis-aligned box part from its extents."""
    c = [(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2]
    h = [(x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2]
    return Part(Box(c, h, skip=frozenset(skip)), material)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


# --------------------------------------------------------------------------- furniture
def table(rng: np.random.Generator, *, desk: bool = False) -> Built:
    """Top slab on four legs. ``desk``: smaller, for standing against a wall."""
    w = _u(rng, 1.0, 1.4) if desk else _u(rng, 1.1, 1.8)
    d = _u(rng, 0.6, 0.75) if desk else _u(rng, 0.75, 1.0)
    h, t = _u(rng, 0.72, 0.78), _u(rng, 0.025, 0.045)
    top = _pick(rng, ["wood_light", "wood_dark", "painted"])
    legs = _pick(rng, [top, "metal"])
    lw, inset = _u(rng, 0.04, 0.06), _u(rng, 0.03, 0.08)
    parts = [_box(-w / 2, w / 2, -d / 2, d / 2, h - t, h, top)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - inset - lw / 2), sy * (d / 2 - inset - lw / 2)
            parts.append(_box(cx - lw / 2, cx + lw / 2, cy - lw / 2, cy + lw / 2, 0, h - t, legs,
                              skip=("-z", "+z")))
    return Built(parts, [Support(-w / 2, w / 2, -d / 2, d / 2, h)], {"width": w, "depth": d, "height": h})


def chair(rng: np.random.Generator) -> Built:
    """Seat on four legs with a back rest at ``-y``."""
    s, sh, st = _u(rng, 0.4, 0.48), _u(rng, 0.43, 0.48), _u(rng, 0.03, 0.06)
    bh, bt = _u(rng, 0.35, 0.5), _u(rng, 0.025, 0.04)
    seat = _pick(rng, ["wood_light", "wood_dark", "fabric", "painted"])
    legs = _pick(rng, [seat if seat != "fabric" else "wood_dark", "metal"])
    lr = _u(rng, 0.012, 0.02)
    parts = [_box(-s / 2, s / 2, -s / 2, s / 2, sh - st, sh, seat),
             _box(-s / 2, s / 2, -s / 2, -s / 2 + bt, sh, sh + bh, _pick(rng, [seat, legs]))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            base = [sx * (s / 2 - lr - 0.01), sy * (s / 2 - lr - 0.01), 0.0]
            parts.append(Part(Cylinder(base, lr, sh - st, caps=()), legs))
    return Built(parts, params={"width": s, "depth": s, "height": sh + bh})


def sofa(rng: np.random.Generator) -> Built:
    """Base + back + two arm rests (fabric)."""
    w, d = _u(rng, 1.6, 2.2), _u(rng, 0.85, 0.95)
    sh, bh, ah = _u(rng, 0.4, 0.45), _u(rng, 0.75, 0.9), _u(rng, 0.55, 0.65)
    bt, aw = _u(rng, 0.18, 0.25), _u(rng, 0.15, 0.22)
    m = "fabric"
    parts = [_box(-w / 2 + aw, w / 2 - aw, -d / 2 + bt, d / 2, 0, sh, m, skip=("-z",)),
             _box(-w / 2, w / 2, -d / 2, -d / 2 + bt, 0, bh, m, skip=("-z", "-y")),
             _box(-w / 2, -w / 2 + aw, -d / 2 + bt, d / 2, 0, ah, m, skip=("-z",)),
             _box(w / 2 - aw, w / 2, -d / 2 + bt, d / 2, 0, ah, m, skip=("-z",))]
    sup = Support(-w / 2 + aw, w / 2 - aw, -d / 2 + bt, d / 2, sh)
    return Built(parts, [sup], {"width": w, "depth": d, "height": bh, "back": -d / 2 + bt})


def bed(rng: np.random.Generator) -> Built:
    """Frame + mattress + blanket + headboard at ``-y``."""
    w = _pick(rng, ["single", "double"])
    w = _u(rng, 0.9, 1.0) if w == "single" else _u(rng, 1.4, 1.8)
    length, fh, mh = _u(rng, 2.0, 2.15), _u(rng, 0.25, 0.35), _u(rng, 0.18, 0.25)
    hh, ht = _u(rng, 0.9, 1.1), 0.05
    frame = _pick(rng, ["wood_light", "wood_dark", "painted"])
    y0 = -length / 2 + ht
    parts = [_box(-w / 2, w / 2, y0, length / 2, 0, fh, frame, skip=("-z",)),
             _box(-w / 2 + 0.02, w / 2 - 0.02, y0 + 0.02, length / 2 - 0.02, fh, fh + mh, "bedding",
                  skip=("-z",)),
             _box(-w / 2 + 0.01, w / 2 - 0.01, y0 + 0.5, length / 2 - 0.01, fh + mh, fh + mh + 0.03,
                  "fabric", skip=("-z",)),
             _box(-w / 2, w / 2, -length / 2, y0, 0, hh, frame, skip=("-z", "-y"))]
    sup = Support(-w / 2 + 0.05, w / 2 - 0.05, y0 + 0.05, y0 + 0.5, fh + mh)
    return Built(parts, [sup], {"width": w, "depth": length, "height": hh})


def shelf(rng: np.random.Generator) -> Built:
    """Bookshelf: two sides, top, bottom plinth, back panel and 2-4 inner boards."""
    w, d, h = _u(rng, 0.7, 1.2), _u(rng, 0.28, 0.4), _u(rng, 1.5, 2.0)
    t = _u(rng, 0.018, 0.03)
    m = _pick(rng, ["wood_light", "wood_dark", "painted"])
    nb = int(rng.integers(3, 6))  # compartments
    z0 = _u(rng, 0.06, 0.1)
    parts = [_box(-w / 2, -w / 2 + t, -d / 2, d / 2, 0, h, m, skip=("-z", "-y")),
             _box(w / 2 - t, w / 2, -d / 2, d / 2, 0, h, m, skip=("-z", "-y")),
             _box(-w / 2 + t, w / 2 - t, -d / 2, d / 2, h - t, h, m, skip=("-y",)),
             _box(-w / 2 + t, w / 2 - t, -d / 2 + t, d / 2, 0, z0, m, skip=("-z",)),
             _box(-w / 2 + t, w / 2 - t, -d / 2, -d / 2 + t, z0, h - t, m, skip=("-y",))]
    supports = []
    pitch = (h - t - z0) / nb
    for k in range(nb):
        zb = z0 + k * pitch
        if k > 0:
            parts.append(_box(-w / 2 + t, w / 2 - t, -d / 2 + t, d / 2, zb - t, zb, m))
        supports.append(Support(-w / 2 + t, w / 2 - t, -d / 2 + t, d / 2, zb, pitch - t))
    supports.append(Support(-w / 2, w / 2, -d / 2, d / 2, h))  # the top
    return Built(parts, supports, {"width": w, "depth": d, "height": h})


def cabinet(rng: np.random.Generator) -> Built:
    """Box body with one or two front doors and handles."""
    w, d, h = _u(rng, 0.6, 1.2), _u(rng, 0.4, 0.55), _u(rng, 0.7, 1.1)
    body = _pick(rng, ["wood_light", "wood_dark", "painted"])
    front = _pick(rng, [body, "painted"])
    parts = [_box(-w / 2, w / 2, -d / 2, d / 2, 0, h, body, skip=("-z", "-y"))]
    nd = 1 if w < 0.8 else 2
    dw = (w - 0.02) / nd
    for k in range(nd):
        x0 = -w / 2 + 0.01 + k * dw
        parts.append(_box(x0 + 0.003, x0 + dw - 0.003, d / 2, d / 2 + 0.015, 0.04, h - 0.02, front,
                          skip=("-y",)))
        hx = x0 + (dw - 0.05 if k == 0 else 0.05) if nd == 2 else x0 + dw - 0.05
        parts.append(_box(hx - 0.01, hx + 0.01, d / 2 + 0.015, d / 2 + 0.04, h - 0.25, h - 0.12, "metal",
                          skip=("-y",)))
    return Built(parts, [Support(-w / 2, w / 2, -d / 2, d / 2, h)], {"width": w, "depth": d + 0.04, "height": h})


def lamp(rng: np.random.Generator, *, floor: bool = False) -> Built:
    """Base + pole + open, semi-transparent shade (a table lamp, or a floor lamp)."""
    if floor:
        rb, hb, pole, rs, hs = _u(rng, 0.13, 0.18), 0.03, _u(rng, 1.25, 1.5), _u(rng, 0.18, 0.25), _u(rng, 0.22, 0.3)
    else:
        rb, hb, pole, rs, hs = _u(rng, 0.06, 0.09), 0.025, _u(rng, 0.2, 0.32), _u(rng, 0.11, 0.16), _u(rng, 0.14, 0.2)
    metal = _pick(rng, ["metal", "painted"])
    parts = [Part(Cylinder([0, 0, 0], rb, hb, caps=("top",)), metal),
             Part(Cylinder([0, 0, hb], 0.012 if not floor else 0.016, pole, caps=()), metal),
             Part(Cylinder([0, 0, hb + pole - 0.3 * hs], rs, hs, r1=rs * _u(rng, 0.6, 0.8), caps=()), "shade")]
    return Built(parts, params={"width": 2 * max(rb, rs), "depth": 2 * max(rb, rs), "height": hb + pole + 0.7 * hs})


def plant(rng: np.random.Generator, *, small: bool = False) -> Built:
    """Pot + soil + 1-3 foliage blobs."""
    if small:
        rp, hp, fr = _u(rng, 0.05, 0.08), _u(rng, 0.08, 0.13), _u(rng, 0.08, 0.14)
    else:
        rp, hp, fr = _u(rng, 0.13, 0.2), _u(rng, 0.28, 0.42), _u(rng, 0.25, 0.4)
    parts = [Part(Cylinder([0, 0, 0], rp * 0.8, hp, r1=rp, caps=()), "terracotta"),
             Part(Cylinder([0, 0, hp - 0.03], rp * 0.95, 0.005, caps=("top",)), "soil")]
    zc = hp + fr * _u(rng, 0.7, 0.9)
    parts.append(Part(Ellipsoid([0, 0, zc], [fr, fr * _u(rng, 0.8, 1.0), fr * _u(rng, 1.0, 1.4)]), "foliage"))
    r_out = fr
    for _ in range(int(rng.integers(0, 3))):
        ang = _u(rng, 0, 2 * math.pi)
        r2 = fr * _u(rng, 0.5, 0.7)
        off = fr * _u(rng, 0.4, 0.6)
        c = [off * math.cos(ang), off * math.sin(ang), zc + fr * _u(rng, -0.1, 0.6)]
        parts.append(Part(Ellipsoid(c, [r2, r2, r2 * 1.1]), "foliage"))
        r_out = max(r_out, off + r2)
    return Built(parts, params={"width": 2 * r_out, "depth": 2 * r_out})


def monitor(rng: np.random.Generator) -> Built:
    """Screen (bezel + dark panel facing +y) on a pole and a foot."""
    sw, sh, st = _u(rng, 0.5, 0.7), _u(rng, 0.3, 0.42), _u(rng, 0.02, 0.035)
    fw, fd, ph = _u(rng, 0.18, 0.25), _u(rng, 0.14, 0.2), _u(rng, 0.08, 0.14)
    m = "plastic_black"
    z0 = 0.015 + ph
    parts = [_box(-fw / 2, fw / 2, -fd / 2, fd / 2, 0, 0.015, m, skip=("-z",)),
             _box(-0.02, 0.02, -fd / 2 + 0.01, -fd / 2 + 0.04, 0.015, z0 + 0.05, m, skip=("-z", "+z")),
             _box(-sw / 2, sw / 2, -fd / 2 + 0.04, -fd / 2 + 0.04 + st, z0, z0 + sh, m),
             _box(-sw / 2 + 0.012, sw / 2 - 0.012, -fd / 2 + 0.04 + st, -fd / 2 + 0.043 + st,
                  z0 + 0.012, z0 + sh - 0.012, "screen", skip=("-y",))]
    return Built(parts, params={"width": max(fw, sw), "depth": fd, "height": z0 + sh})


def rug(rng: np.random.Generator, w: float, d: float) -> Built:
    """Thin slab (8-12 mm) of ``w`` x ``d`` metres with a striped texture."""
    t = _u(rng, 0.008, 0.012)
    return Built([_box(-w / 2, w / 2, -d / 2, d / 2, 0, t, "rug", skip=("-z",))],
                 [Support(-w / 2, w / 2, -d / 2, d / 2, t)], {"width": w, "depth": d, "height": t})


def pillow(rng: np.random.Generator, *, upright: bool) -> Built:
    """Flattened ellipsoid; ``upright`` cushions lean back against a sofa back (tilt about x)."""
    a, b, c = _u(rng, 0.2, 0.32), _u(rng, 0.14, 0.2), _u(rng, 0.05, 0.08)
    if upright:
        tilt = math.radians(_u(rng, 60, 75))
        rot = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
        radii = np.array([a, b, c])
        ext = np.sqrt(((rot * radii) ** 2).sum(1))
        prim = Ellipsoid([0, 0, ext[2]], radii, rot)
    else:
        ext = np.array([a, b, c])
        prim = Ellipsoid([0, 0, c], [a, b, c])
    m = _pick(rng, ["fabric", "bedding"])
    return Built([Part(prim, m)], params={"width": 2 * ext[0], "depth": 2 * ext[1]})


def book(rng: np.random.Generator, max_height: float) -> Built:
    """A closed book standing upright: thickness along x."""
    t = _u(rng, 0.015, 0.05)
    h = min(_u(rng, 0.16, 0.3), max_height)
    d = _u(rng, 0.12, 0.22)
    return Built([_box(-t / 2, t / 2, -d / 2, d / 2, 0, h, "paper", skip=("-z",))],
                 params={"width": t, "depth": d, "height": h})


# ----------------------------------------------------------------------- wall fixtures
def door(rng: np.random.Generator) -> Built:
    """Door leaf set just behind the wall plane (y < 0), a trim frame and a handle.

    ``params``: ``width``, ``height`` of the wall opening (centred on x = 0, from the floor).
    """
    w, h = _u(rng, 0.8, 0.95), _u(rng, 2.0, 2.1)
    leaf = _pick(rng, ["wood_light", "wood_dark", "painted"])
    trim = _pick(rng, ["frame", leaf])
    ft = 0.06
    parts = [_box(-w / 2, w / 2, -0.05, -0.01, 0, h, leaf, skip=("-y", "-z", "+x", "-x", "+z")),
             _box(-w / 2 - ft, -w / 2 + 0.01, -0.05, 0.02, 0, h + ft, trim, skip=("-y", "-z")),
             _box(w / 2 - 0.01, w / 2 + ft, -0.05, 0.02, 0, h + ft, trim, skip=("-y", "-z")),
             _box(-w / 2 + 0.01, w / 2 - 0.01, -0.05, 0.02, h - 0.01, h + ft, trim, skip=("-y",))]
    hx = w / 2 - 0.09
    parts.append(_box(hx - 0.06, hx + 0.02, -0.01, 0.05, 0.98, 1.0, "metal", skip=("-y",)))
    return Built(parts, params={"width": w, "height": h})


def window(rng: np.random.Generator) -> Built:
    """Semi-transparent glass pane set back in the opening, frame and a mullion.

    ``params``: ``width``, ``height``, ``sill`` (bottom of the opening above the floor).
    """
    w, h, sill = _u(rng, 0.9, 1.6), _u(rng, 1.0, 1.4), _u(rng, 0.8, 1.0)
    fm = "frame"
    ft = 0.04
    parts = [_box(-w / 2, w / 2, -0.055, -0.045, sill, sill + h, "glass", skip=("+x", "-x", "+z", "-z")),
             _box(-w / 2 - ft, -w / 2 + ft, -0.08, 0.02, sill - ft, sill + h + ft, fm, skip=("-y",)),
             _box(w / 2 - ft, w / 2 + ft, -0.08, 0.02, sill - ft, sill + h + ft, fm, skip=("-y",)),
             _box(-w / 2 + ft, w / 2 - ft, -0.08, 0.02, sill + h - ft, sill + h + ft, fm, skip=("-y",)),
             _box(-w / 2 - 0.06, w / 2 + 0.06, -0.08, 0.06, sill - ft, sill + ft, fm, skip=("-y",))]
    if w > 1.1:
        parts.append(_box(-0.02, 0.02, -0.06, 0.0, sill + ft, sill + h - ft, fm, skip=("-y",)))
    return Built(parts, params={"width": w, "height": h, "sill": sill})


def picture(rng: np.random.Generator) -> Built:
    """Frame + painted canvas hanging on a wall (centre height 1.4-1.7 m)."""
    w, h, zc = _u(rng, 0.35, 1.0), _u(rng, 0.3, 0.75), _u(rng, 1.4, 1.7)
    fw, depth = _u(rng, 0.02, 0.05), _u(rng, 0.02, 0.035)
    fm = _pick(rng, ["frame", "wood_dark", "metal"])
    parts = [_box(-w / 2, w / 2, 0.0, depth, zc - h / 2, zc + h / 2, fm, skip=("-y",)),
             _box(-w / 2 + fw, w / 2 - fw, depth, depth + 0.004, zc - h / 2 + fw, zc + h / 2 - fw, "canvas",
                  skip=("-y",))]
    return Built(parts, params={"width": w, "height": h})


BUILDERS = {
    "table": table, "chair": chair, "sofa": sofa, "bed": bed, "shelf": shelf, "cabinet": cabinet,
    "lamp": lamp, "plant": plant, "monitor": monitor, "rug": rug, "pillow": pillow, "book": book,
    "door": door, "window": window, "picture": picture,
}


def build(kind: str, rng: np.random.Generator, **kwargs) -> Built:
    """Build one object by class name (see :data:`BUILDERS`)."""
    return BUILDERS[kind](rng, **kwargs)
