"""Distribution shifts of the synthetic rooms: one documented generator option per shift.

A robot's map comes from photometric 3DGS or from a SLAM system, and its densities, Gaussian
sizes, opacities, colours and orientation vary from site to site. :class:`ShiftConfig` names
each such change as an independent option; :func:`generate_shifted_scene` builds a held-out
scene under it (the shift suite, :mod:`chorus_ros.core.metrics.shift_suite`) and
:func:`shift_gaussians` applies the per-Gaussian options to any Gaussians with a torch
generator (training randomisation, :mod:`chorus_ros.core.train.augment`).

Options and what they change (all off by default):

* generator options (need a new scene): ``source`` (the procedural rooms of :mod:`.room`, or
  the structurally different mesh-sampled rooms of :mod:`.meshrooms`), ``density`` (Gaussians
  per room), ``stuff_density`` (floor/wall/ceiling sampling density relative to objects; 1.0
  makes every surface's Gaussians the same size distribution, independent of class),
  ``photometric_steps`` (re-fit the Gaussians photometrically to rendered views,
  :mod:`.photometric`);
* per-Gaussian options (keep each Gaussian's identity and label): ``equal_sizes``, ``size_jitter``,
  ``isotropic_fraction``, ``yaw_deg``/``tilt_deg`` (a rigid turn of the whole map about the
  vertical and a small tilt of gravity), ``white_balance``/``exposure``/``shading``/
  ``palette_deg`` (colour and lighting), ``position_noise``, ``low_opacity_fraction``;
* added Gaussians (labelled from the Gaussian they were copied from): ``floater_fraction``
  (large faint blobs off the surface) and ``dead_fraction`` (sub-millimetre, nearly transparent
  copies -- 30 % of a real photometric 3DGS are like that).

Frames: world frame z up, metres. A yaw/tilt turns the map about the centre of its bounding box;
:class:`ShiftedScene` keeps the rigid transform so cameras made in the room frame follow.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc, sh_dc_to_rgb
from chorus_ros.core.synthetic.classes import STUFF_CLASSES, class_id
from chorus_ros.core.synthetic.photometric import GS3D_RECIPE

__all__ = ["ShiftConfig", "ShiftedScene", "SHIFT_SUITE", "shift_gaussians", "generate_shifted_scene",
           "transform_camera", "rigid_transform", "rotation_yaw_tilt"]

SOURCES = ("rooms", "mesh")


@dataclass
class ShiftConfig:
    """One distribution shift (or, with wide ranges, a training randomisation). Ranges are
    ``[lo, hi]`` drawn uniformly per scene; empty lists and zeros switch an option off."""

    source: str = "rooms"
    """Room source: 'rooms' (chorus_ros.core.synthetic.room) or 'mesh' (chorus_ros.core.synthetic.meshrooms: other furniture shapes, area-uniform random surface samples, equal-size Gaussians)."""
    density: list[int] = field(default_factory=list)
    """[lo, hi] Gaussians per room (the generator's target_gaussians), e.g. [20000, 1000000]; empty keeps the base config's."""
    stuff_density: list[float] = field(default_factory=list)
    """[lo, hi] sampling density of floor/walls/ceiling relative to objects (room source); 1.0 gives every surface the same Gaussian size distribution, independent of class (the generator's default 0.35 makes stuff Gaussians 1.7x larger)."""
    equal_sizes: bool = False
    """Give every Gaussian the same in-plane size (the map's median; thickness ratio kept), so sizes do not depend on the surface or class; combine with size_jitter for a spread."""
    size_jitter: float = 0.0
    """Std of a log-normal size factor per Gaussian (all axes), independent of class."""
    isotropic_fraction: float = 0.0
    """Fraction of Gaussians made isotropic (all three scales = geometric mean of the two largest): 0 keeps flat surfels, 1 is an isotropic (point-splat) map."""
    yaw_deg: list[float] = field(default_factory=list)
    """[lo, hi] rotation of the whole map about the vertical axis, degrees."""
    tilt_deg: float = 0.0
    """Tilt of the whole map about a random horizontal axis, up to this many degrees (gravity estimated, not exact)."""
    white_balance: float = 0.0
    """Per-channel colour gain uniform in [1 - w, 1 + w]."""
    exposure: float = 0.0
    """Exposure change uniform in [-e, e] stops (colour x 2^stops)."""
    shading: float = 0.0
    """Baked directional lighting: colour x ((1 - s) + s |n . l|) for a random light direction l and each Gaussian's normal n."""
    palette_deg: float = 0.0
    """Hue rotation of all colours (about the grey axis) uniform in [-p, p] degrees: other texture palettes."""
    instance_hue_deg: float = 0.0
    """Hue rotation per object, uniform in [-p, p] degrees and independent across objects (the
    Gaussians of one ``extras['instance']`` id turn together): objects of one class in other
    colours, so colour alone does not name a class. Gaussians with no instance (id <= 0, or maps
    without instance ids) keep their colour."""
    instance_hue_stuff: bool = True
    """Whether ``instance_hue_deg`` also turns floors, walls and ceilings (the generator's stuff
    classes, by ``extras['label']``); False turns only objects."""
    position_noise: float = 0.0
    """Std of Gaussian noise on positions, metres (sensor / SLAM noise)."""
    low_opacity_fraction: float = 0.0
    """Fraction of Gaussians whose opacity is redrawn log-uniformly in [0.005, 0.5]."""
    floater_fraction: float = 0.0
    """Extra floaters as a fraction of N: copies moved 5-40 cm off their surface, 2-6x larger, opacity 0.02-0.3."""
    dead_fraction: float = 0.0
    """Extra 'dead' Gaussians as a fraction of N: copies shrunk to 0.3-1 mm with opacity 0.003-0.05."""
    photometric_steps: int = 0
    """>0: re-fit the scene's Gaussians photometrically to its rendered views for this many steps (chorus_ros.core.synthetic.photometric; cached)."""
    photometric_views: int = 16
    """Training views of the photometric fit."""
    photometric_size: list[int] = field(default_factory=lambda: [96, 72])
    """Width, height of the photometric fit's views, pixels."""
    photometric_options: dict = field(default_factory=dict)
    """Further :class:`~chorus_ros.core.synthetic.photometric.PhotometricFitConfig` fields (e.g. ``GS3D_RECIPE``: 3DGS's learning rates and density control)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InvalidInputError` naming the bad field."""
        if self.source not in SOURCES:
            raise InvalidInputError(f"ShiftConfig.source {self.source!r} unknown; known: {list(SOURCES)}")
        for name in ("density", "stuff_density", "yaw_deg"):
            v = getattr(self, name)
            if v and (len(v) != 2 or not v[0] <= v[1]):
                raise InvalidInputError(f"ShiftConfig.{name} must be [lo, hi] with lo <= hi, got {v}")
        if self.density and not 1000 <= self.density[0]:
            raise InvalidInputError(f"ShiftConfig.density must be >= 1000, got {self.density}")
        if self.stuff_density and not 0 < self.stuff_density[0] <= self.stuff_density[1] <= 4:
            raise InvalidInputError(f"ShiftConfig.stuff_density must lie in (0, 4], got {self.stuff_density}")
        for name in ("isotropic_fraction", "low_opacity_fraction", "white_balance", "shading"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInputError(f"ShiftConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("size_jitter", "tilt_deg", "exposure", "palette_deg", "instance_hue_deg", "position_noise",
                     "floater_fraction", "dead_fraction", "photometric_steps"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"ShiftConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.floater_fraction > 1 or self.dead_fraction > 1:
            raise InvalidInputError("ShiftConfig.floater_fraction and dead_fraction must be <= 1")
        if len(self.photometric_size) != 2 or min(self.photometric_size) < 8:
            raise InvalidInputError(f"ShiftConfig.photometric_size must be [w, h] >= 8, got {self.photometric_size}")
        if self.photometric_options:
            from chorus_ros.core.synthetic.photometric import PhotometricFitConfig
            known = set(PhotometricFitConfig.__dataclass_fields__) - {"steps", "views", "width", "height", "seed"}
            bad = sorted(set(self.photometric_options) - known)
            if bad:
                raise InvalidInputError(f"ShiftConfig.photometric_options: unknown fit settings {bad}; known: {sorted(known)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ShiftConfig":
        """Build from a mapping; unknown keys raise naming them."""
        d = dict(d or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise InvalidInputError(f"shift config has unknown keys {unknown}; known: {known}")
        return cls(**d)

    @property
    def per_gaussian(self) -> bool:
        """True if any option of :func:`shift_gaussians` is on."""
        return bool(self.equal_sizes or self.size_jitter or self.isotropic_fraction or self.yaw_deg or self.tilt_deg
                    or self.white_balance or self.exposure or self.shading or self.palette_deg or self.instance_hue_deg
                    or self.position_noise or self.low_opacity_fraction or self.floater_fraction
                    or self.dead_fraction)


SHIFT_SUITE: dict[str, ShiftConfig] = {
    "none": ShiftConfig(),
    "sparse": ShiftConfig(density=[20_000, 20_000]),
    "dense": ShiftConfig(density=[150_000, 150_000]),
    "uniform_sizes": ShiftConfig(stuff_density=[1.0, 1.0], equal_sizes=True, size_jitter=0.25),
    "isotropic": ShiftConfig(isotropic_fraction=1.0),
    "photometric": ShiftConfig(photometric_steps=2000, photometric_views=48, photometric_size=[160, 120],
                               photometric_options=dict(GS3D_RECIPE), density=[20_000, 20_000]),
    "rotated": ShiftConfig(yaw_deg=[20.0, 70.0], tilt_deg=3.0),
    "colour": ShiftConfig(white_balance=0.25, exposure=0.8, shading=0.5, palette_deg=40.0),
    "noise": ShiftConfig(position_noise=0.01, low_opacity_fraction=0.3, floater_fraction=0.05,
                         dead_fraction=0.3),
    "mesh": ShiftConfig(source="mesh"),
}
"""The named shifts of ``chorus-eval --suite shift`` (each independent of the others)."""


# ----------------------------------------------------------------------------- rigid motions
def rotation_yaw_tilt(yaw: float, tilt: float, tilt_axis_angle: float) -> np.ndarray:
    """``[3, 3]`` rotation: a turn by ``yaw`` radians about +z, then a tilt by ``tilt`` radians
    about the horizontal axis at angle ``tilt_axis_angle`` from +x."""
    c, s = math.cos(yaw), math.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    a = np.array([math.cos(tilt_axis_angle), math.sin(tilt_axis_angle), 0.0])
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    rt = np.eye(3) + math.sin(tilt) * k + (1 - math.cos(tilt)) * (k @ k)
    return rt @ rz


def _rotmat_to_quat(r: np.ndarray) -> torch.Tensor:
    from chorus_ros.core.geometry import rotmat_to_quat_wxyz
    return torch.as_tensor(rotmat_to_quat_wxyz(r), dtype=torch.float32)


def rigid_transform(g: GaussianArrays, T: np.ndarray) -> GaussianArrays:
    """Apply the ``[4, 4]`` rigid transform ``T`` (new world <- old world) to Gaussians:
    positions and orientations (SH bands above DC are dropped: they would need rotating)."""
    from chorus_ros.core.geometry import transform_gaussians
    return transform_gaussians(g, torch.as_tensor(T[:3, :3], dtype=torch.float32), _rotmat_to_quat(T[:3, :3]),
                               torch.as_tensor(T[:3, 3], dtype=torch.float32))


def transform_camera(camera, T: np.ndarray):
    """The camera that sees the transformed world (``T``: new world <- old world) as ``camera``
    saw the old one."""
    from chorus_ros.core.geometry import Camera
    vm = camera.viewmat.double() @ torch.as_tensor(np.linalg.inv(T), dtype=torch.float64)
    return Camera(vm.float(), camera.K, camera.width, camera.height, camera.frame_id)


# ----------------------------------------------------------------------------- per-Gaussian
def _u(gen: torch.Generator, lo: float, hi: float, n: int | None = None) -> torch.Tensor | float:
    if n is None:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _normals(g: GaussianArrays) -> torch.Tensor:
    """[N, 3] world axis of each Gaussian's smallest scale."""
    from chorus_ros.core.encoder.features import quats_wxyz_to_rotmats
    rot = quats_wxyz_to_rotmats(g.unit_quats.float())
    k = torch.argmin(g.log_scales, dim=1)
    return torch.gather(rot, 2, k[:, None, None].expand(-1, 3, 1)).squeeze(-1)


_STUFF_IDS = torch.tensor([class_id(c) for c in STUFF_CLASSES])
"""The generator's stuff class ids (floor, wall, ceiling), as in ``extras['label']``."""


def _hue_rotations(rad: torch.Tensor) -> torch.Tensor:
    """``[n, 3, 3]`` float32 rotations of RGB about the grey axis by the angles ``rad [n]``
    (radians; sines and cosines taken in ``rad``'s dtype)."""
    k = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
    sin = torch.sin(rad).float()[:, None, None]
    one_minus_cos = (1 - torch.cos(rad)).float()[:, None, None]
    return torch.eye(3) + sin * k + one_minus_cos * (k @ k)


def _hue_rotation(deg: float) -> torch.Tensor:
    """[3, 3] rotation of RGB about the grey axis by ``deg`` degrees."""
    return _hue_rotations(torch.tensor([math.radians(deg)], dtype=torch.float64))[0]


def _instance_hue(rgb: torch.Tensor, instance: torch.Tensor, max_deg: float, gen: torch.Generator,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """``rgb [M, 3]`` with each instance's colours turned about the grey axis by its own angle,
    uniform in [-max_deg, max_deg] (one draw per distinct id, in ascending id order); ids <= 0
    and the Gaussians of ``keep [M]`` (bool) stay as they are."""
    ids, inv = torch.unique(instance.long(), return_inverse=True)
    R = _hue_rotations(torch.deg2rad(_u(gen, -max_deg, max_deg, len(ids))))
    R[ids <= 0] = torch.eye(3)
    Rg = R[inv]
    if keep is not None:
        Rg[keep] = torch.eye(3)
    return torch.einsum("nij,nj->ni", Rg.to(rgb.dtype), rgb)


def shift_gaussians(g: GaussianArrays, cfg: ShiftConfig, gen: torch.Generator, *,
                    centre: torch.Tensor | None = None) -> tuple[GaussianArrays, torch.Tensor, np.ndarray]:
    """Apply the per-Gaussian options of ``cfg`` to ``g`` (deterministic in ``gen``'s state).

    Args:
        g: N Gaussians, world frame (z up); extras (labels, instances) are carried along.
        cfg: the shift.
        gen: random source.
        centre: ``[3]`` pivot of the yaw/tilt (default: the centre of the bounding box).

    Returns:
        ``(shifted, source, T)``: the M >= N shifted Gaussians (the first N are the originals in
        order, then floaters, then dead copies), ``source: [M]`` int64 index of the original
        each one came from (so labels and training targets follow), and ``T: [4, 4]`` the
        rigid transform applied (new world <- old world; identity without yaw/tilt).
    """
    n = len(g)
    src = torch.arange(n)
    means, log_s, quats, op_logit = g.means.float(), g.log_scales.float(), g.quats.float(), g.opacities.float()
    rgb = sh_dc_to_rgb(g.sh[:, 0].float())
    extras = dict(g.extras)
    # --- added Gaussians (copies of random originals)
    added = []
    for frac, kind in ((cfg.floater_fraction, "floater"), (cfg.dead_fraction, "dead")):
        m = int(round(frac * n))
        if m <= 0:
            continue
        idx = torch.randint(n, (m,), generator=gen)
        mu = means[idx]
        ls = log_s[idx]
        if kind == "floater":
            d = torch.randn(m, 3, generator=gen)
            d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-9)
            mu = mu + d * _u(gen, 0.05, 0.4, m)[:, None]
            ls = ls + torch.log(_u(gen, 2.0, 6.0, m))[:, None]
            op = _u(gen, 0.02, 0.3, m)
        else:
            ls = torch.log(_u(gen, 3e-4, 1e-3, m))[:, None] + torch.randn(m, 3, generator=gen) * 0.3
            op = _u(gen, 0.003, 0.05, m)
        added.append((idx, mu, ls, torch.logit(op), torch.randn(m, 4, generator=gen)))
    if added:
        src = torch.cat([src] + [a[0] for a in added])
        means = torch.cat([means] + [a[1] for a in added])
        log_s = torch.cat([log_s] + [a[2] for a in added])
        op_logit = torch.cat([op_logit] + [a[3] for a in added])
        quats = torch.cat([quats] + [a[4] for a in added])
        rgb = rgb[src]
        extras = {k: v[src] for k, v in extras.items()}
    m = means.shape[0]
    ids = g.ids[src] if g.ids is not None and not added else torch.arange(m, dtype=torch.int64)
    # --- sizes and shapes (class-independent)
    if cfg.equal_sizes and m > 0:
        top = torch.topk(log_s, 2, dim=1).values.mean(1)  # log in-plane size
        log_s = log_s - (top - top.median())[:, None]
    if cfg.size_jitter > 0:
        log_s = log_s + torch.randn(m, 1, generator=gen) * cfg.size_jitter
    if cfg.isotropic_fraction > 0:
        iso = torch.rand(m, generator=gen) < cfg.isotropic_fraction
        top2 = torch.topk(log_s, 2, dim=1).values.mean(1)
        log_s = torch.where(iso[:, None], top2[:, None].expand(-1, 3), log_s)
    # --- opacity
    if cfg.low_opacity_fraction > 0:
        low = torch.rand(m, generator=gen) < cfg.low_opacity_fraction
        val = torch.exp(_u(gen, math.log(0.005), math.log(0.5), m))
        op_logit = torch.where(low, torch.logit(val), op_logit)
    # --- colour and lighting
    if cfg.shading > 0:
        tmp = GaussianArrays(means, rgb[:, None], op_logit, log_s, quats)
        light = torch.randn(3, generator=gen)
        light[2] = light[2].abs() + 0.5  # from above, mostly
        light = light / light.norm()
        rgb = rgb * ((1 - cfg.shading) + cfg.shading * (_normals(tmp) @ light).abs())[:, None]
    if cfg.white_balance > 0:
        rgb = rgb * _u(gen, 1 - cfg.white_balance, 1 + cfg.white_balance, 3)[None]
    if cfg.exposure > 0:
        rgb = rgb * 2.0 ** _u(gen, -cfg.exposure, cfg.exposure)
    if cfg.palette_deg > 0:
        rgb = rgb @ _hue_rotation(_u(gen, -cfg.palette_deg, cfg.palette_deg)).T
    if cfg.instance_hue_deg > 0 and "instance" in extras:
        keep = None
        if not cfg.instance_hue_stuff and "label" in extras:
            keep = torch.isin(extras["label"].long(), _STUFF_IDS)
        rgb = _instance_hue(rgb, extras["instance"], cfg.instance_hue_deg, gen, keep)
    rgb = rgb.clamp(0.0, 1.0)
    # --- positions
    if cfg.position_noise > 0:
        means = means + torch.randn(m, 3, generator=gen) * cfg.position_noise
    T = np.eye(4)
    if cfg.yaw_deg or cfg.tilt_deg > 0:
        yaw = math.radians(_u(gen, *cfg.yaw_deg)) if cfg.yaw_deg else 0.0
        tilt = math.radians(_u(gen, 0.0, cfg.tilt_deg)) if cfg.tilt_deg > 0 else 0.0
        R = rotation_yaw_tilt(yaw, tilt, _u(gen, 0.0, 2 * math.pi))
        c = (g.means.min(0).values + g.means.max(0).values).double().numpy() / 2 if centre is None \
            else np.asarray(centre, dtype=np.float64)
        T[:3, :3] = R
        T[:3, 3] = c - R @ c
    out = GaussianArrays(means, rgb_to_sh_dc(rgb)[:, None, :], op_logit, log_s, quats, ids, extras)
    if not np.allclose(T, np.eye(4)):
        out = rigid_transform(out, T)
    return out, src, T


# ----------------------------------------------------------------------------- scenes
@dataclass
class ShiftedScene:
    """A held-out scene under a shift, with the cameras that look at it."""

    name: str
    """Shift name."""
    seed: int
    gaussians: GaussianArrays
    """Gaussians (world frame after the shift) with ``extras['label']`` and ``extras['instance']``."""
    cameras: list
    """Views (chorus_ros.core.geometry.Camera) inside the room, moved with the map."""
    labels: object
    """The label set the class ids index."""
    instances: dict
    """Instance table of the source scene (id -> InstanceInfo)."""
    transform: np.ndarray
    """[4, 4] rigid transform applied to the room (new world <- room frame)."""


def base_scene(seed: int, cfg: ShiftConfig, scene: dict | None = None, *, cache_dir: str | None = None):
    """The (unrotated) source scene of a shift: generator options ``source``, ``density``,
    ``stuff_density`` and ``photometric_steps``. Returns a
    :class:`~chorus_ros.core.synthetic.room.SyntheticScene`."""
    gen = np.random.default_rng([int(seed), 4242])
    overrides = dict(scene or {})
    if cfg.density:
        overrides["target_gaussians"] = int(round(gen.uniform(*cfg.density)))
    if cfg.source == "mesh":
        from chorus_ros.core.synthetic.meshrooms import MeshRoomConfig, generate_mesh_room
        keep = {k: v for k, v in overrides.items() if k in ("target_gaussians",)}
        sc = generate_mesh_room(MeshRoomConfig(seed=int(seed), **keep))
    else:
        from chorus_ros.core.synthetic.room import SceneConfig, generate_scene
        if cfg.stuff_density:
            overrides["stuff_density"] = float(gen.uniform(*cfg.stuff_density))
        sc = generate_scene(SceneConfig(seed=int(seed), **overrides))
    if cfg.photometric_steps > 0:
        from chorus_ros.core.synthetic.photometric import PhotometricFitConfig, fit_scene
        fc = PhotometricFitConfig(steps=cfg.photometric_steps, views=cfg.photometric_views,
                                  width=int(cfg.photometric_size[0]), height=int(cfg.photometric_size[1]),
                                  seed=int(seed), **cfg.photometric_options)
        sc = fit_scene(sc, fc, cache_dir=cache_dir)
    return sc


def generate_shifted_scene(name: str, seed: int, cfg: ShiftConfig | None = None, *, scene: dict | None = None,
                           views: dict | None = None, cache_dir: str | None = ".cache/shifts") -> ShiftedScene:
    """Build held-out scene ``seed`` under shift ``name`` (``cfg`` defaults to ``SHIFT_SUITE[name]``).

    ``scene``: overrides of the base generator config; ``views``: overrides of
    :class:`~chorus_ros.core.synthetic.trajectory.TrajectoryConfig` (cameras are made in the room
    frame and moved with the map).
    """
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    if cfg is None:
        if name not in SHIFT_SUITE:
            raise InvalidInputError(f"unknown shift {name!r}; known: {sorted(SHIFT_SUITE)}")
        cfg = SHIFT_SUITE[name]
    sc = base_scene(seed, cfg, scene, cache_dir=cache_dir)
    traj = make_trajectory(sc, TrajectoryConfig(**dict(views or {})))
    g, T = sc.gaussians, np.eye(4)
    if cfg.per_gaussian:
        gen = torch.Generator().manual_seed(int(seed) * 7919 + sum(map(ord, name)))
        g, _, T = shift_gaussians(g, cfg, gen)
    cams = [transform_camera(c, T) for c in traj.cameras] if not np.allclose(T, np.eye(4)) else list(traj.cameras)
    return ShiftedScene(name, int(seed), g, cams, sc.labels, sc.instances, T)
