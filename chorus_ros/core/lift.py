"""Lift: per-Gaussian pseudo-labels from many views' 2D teacher features (Chorus "lift").

For every view, each teacher's patch-resolution map ``[h, w, C]`` is bilinearly upsampled to
the render resolution ``[H, W, C]`` (``F``). Every Gaussian ``i`` then receives

    target_i = sum_views sum_p w_i(p) F(p)  /  sum_views sum_p w_i(p)

where ``w_i(p) = alpha_i(p) T_i(p)`` is its blending weight at pixel ``p`` - so occluded
Gaussians (small transmittance ``T``) receive little or nothing and a Gaussian seen by few
pixels gets a low total weight. Both sums come *exactly* from the renderer: rendering per-
Gaussian features ``f = 0`` (requiring grad) composites ``R(p) = sum_i w_i(p) f_i``, so the
gradient of ``sum_p <R(p), F(p)>`` w.r.t. ``f_i`` is ``sum_p w_i(p) F(p)``; the denominator is
``render(..., return_weights=True).weights``. All teachers of a view share one render (their
channels are concatenated). Gaussians whose total weight stays below ``eps`` are not ``valid``.

Results are cached on disk (safetensors) under a key hashing the scene id, the teacher specs
and the view set (cameras), so training runs re-use them.

Example::

    targets = lift_scene(gaussians, cameras, teachers, contexts=ctxs, scene_id="synthetic-3",
                         config=LiftConfig(cache_dir="cache/lift"))
    targets.features["language"]   # [N, 64]; targets.valid [N] bool; targets.weight [N]
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera
from chorus_ros.core.labels import UNLABELED
from chorus_ros.core.render import RenderSettings, render

__all__ = ["LiftConfig", "LiftedTargets", "LiftedScene", "lift_view", "lift_scene", "lift_cache_key",
           "upsample_map", "lift_synthetic_scene", "lift_synthetic_scenes", "lift_folder_scene", "scene_density",
           "mesh_selected",
           "LIFT_VERSION"]

LIFT_VERSION = 1
"""Bumped when the lifting maths changes, so stale caches are not reused."""


@dataclass
class LiftConfig:
    """How teacher features are lifted onto Gaussians."""

    eps: float = 1e-3
    """A Gaussian is a valid target when its total blending weight over all views exceeds this."""
    cache_dir: str | None = None
    """Directory of the safetensors cache; None disables caching."""
    backend: str = "auto"
    """Render backend ('auto', 'reference', 'gsplat')."""
    near: float = 0.01
    """Near plane of the lifting renders, metres."""
    progress: bool = False
    """Show a tqdm bar over views."""


@dataclass
class LiftedTargets:
    """Per-Gaussian pseudo-labels of one scene.

    Attributes:
        features: head name -> ``[N, dim]`` float32 weighted-mean teacher feature (zeros where
            not valid).
        weight: ``[N]`` float32 total blending weight over all views (pixels).
        valid: ``[N]`` bool, ``weight > eps``.
        n_views: number of views lifted.
        key: cache key ('' when not cached).
    """

    features: dict[str, torch.Tensor]
    weight: torch.Tensor
    valid: torch.Tensor
    n_views: int = 0
    key: str = ""
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    """Optional per-Gaussian tensors ``[N, ...]`` attached by consumers (e.g. loss balancing
    weights); subset with the targets, not saved."""

    def __len__(self) -> int:
        return int(self.weight.shape[0])

    def index(self, idx: torch.Tensor | slice) -> "LiftedTargets":
        """Subset by an index tensor, boolean mask or slice (matches ``GaussianArrays.index``)."""
        return LiftedTargets({k: v[idx] for k, v in self.features.items()}, self.weight[idx], self.valid[idx],
                             self.n_views, self.key, {k: v[idx] for k, v in self.aux.items()})

    def select_heads(self, heads: Sequence[str]) -> "LiftedTargets":
        """Keep only ``heads``; a missing head raises naming the available ones."""
        missing = [h for h in heads if h not in self.features]
        if missing:
            raise InvalidInputError(f"lifted targets lack heads {missing}; have {sorted(self.features)}")
        return replace(self, features={h: self.features[h] for h in heads})

    def to(self, device) -> "LiftedTargets":
        return LiftedTargets({k: v.to(device) for k, v in self.features.items()}, self.weight.to(device),
                             self.valid.to(device), self.n_views, self.key, {k: v.to(device) for k, v in self.aux.items()})

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Write as safetensors (``feat.<head>``, ``weight``, ``valid``) with JSON metadata."""
        from safetensors.torch import save_file
        tensors = {f"feat.{k}": v.contiguous().float().cpu() for k, v in self.features.items()}
        tensors["weight"] = self.weight.float().cpu().contiguous()
        tensors["valid"] = self.valid.to(torch.uint8).cpu().contiguous()
        md = {"n_views": str(self.n_views), "key": self.key, "version": str(LIFT_VERSION),
              "heads": json.dumps(list(self.features)),
              "meta": json.dumps(meta or {}, default=str)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=md)
        tmp.replace(path)  # atomic: concurrent readers never see half a file

    @classmethod
    def load(cls, path: str | Path) -> "LiftedTargets":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
        feats = {k[5:]: v for k, v in t.items() if k.startswith("feat.")}
        order = json.loads(md.get("heads", "[]"))  # safetensors sorts keys; keep the teachers' order
        feats = {k: feats[k] for k in order if k in feats} | {k: v for k, v in feats.items() if k not in order}
        return cls(feats, t["weight"], t["valid"].bool(), int(md.get("n_views", 0)), md.get("key", ""))


def upsample_map(fmap: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear ``[h, w, C]`` -> ``[height, width, C]`` (pixel-centre aligned, no corner pinning)."""
    if fmap.ndim != 3:
        raise InvalidInputError(f"teacher feature map must be [h, w, C], got {tuple(fmap.shape)}")
    if tuple(fmap.shape[:2]) == (height, width):
        return fmap
    x = fmap.permute(2, 0, 1)[None]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)


def _settings(config: LiftConfig) -> RenderSettings:
    return RenderSettings(backend=config.backend, near=config.near, sh_degree=0)


def lift_view(gaussians: GaussianArrays, camera: Camera, fmap: torch.Tensor,
              settings: RenderSettings | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One view's per-Gaussian weighted feature sums.

    Args:
        gaussians: N Gaussians (world frame).
        camera: the view.
        fmap: ``[h, w, C]`` teacher features (any resolution; upsampled bilinearly to the view).

    Returns:
        ``(sums [N, C], weights [N])``: ``sum_p w_i(p) F(p)`` and ``sum_p w_i(p)`` (float32),
        computed through the renderer's autograd (see the module docstring).
    """
    settings = settings or RenderSettings(sh_degree=0)
    dev = gaussians.device
    up = upsample_map(fmap.to(dev, torch.float32), camera.height, camera.width)
    zeros = torch.zeros(len(gaussians), up.shape[-1], device=dev, dtype=gaussians.means.dtype,
                        requires_grad=True)
    with torch.enable_grad():
        out = render(gaussians, camera, settings, features=zeros, return_weights=True)
        if out.features is None or not out.features.requires_grad:
            # nothing visible: no graph was built
            return torch.zeros_like(zeros, requires_grad=False), out.weights.detach().float()
        (sums,) = torch.autograd.grad((out.features * up.to(out.features.dtype)).sum(), zeros,
                                      allow_unused=True)
    if sums is None:
        sums = torch.zeros_like(zeros)
    return sums.detach().float(), out.weights.detach().float()


def _camera_digest(cameras: Sequence[Camera]) -> str:
    h = hashlib.sha256()
    for c in cameras:
        h.update(torch.round(c.viewmat.double() * 1e5).to(torch.int64).numpy().tobytes())
        h.update(torch.round(c.K.double() * 1e3).to(torch.int64).numpy().tobytes())
        h.update(f"{c.width}x{c.height};".encode())
    return h.hexdigest()


def _gaussian_digest(g: GaussianArrays) -> str:
    h = hashlib.sha256()
    for t in (g.means, g.sh[:, 0], g.opacities, g.log_scales, g.quats):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _teacher_token(t) -> dict:
    """What identifies a teacher's output: its spec, plus any shared resource it uses."""
    tok = {"spec": t.spec.to_dict(), "dim": int(t.dim)}
    wt = getattr(t, "cache_token", None)      # content hash of weights a spec only names by path
    if wt:
        tok["weights"] = str(wt)
    te = getattr(t, "text_encoder", None)
    if te is not None and hasattr(te, "spec"):
        tok["text_encoder"] = te.spec.to_dict() if hasattr(te.spec, "to_dict") else str(te.spec)
    return tok


def lift_cache_key(scene_id: str | None, gaussians: GaussianArrays, teachers: Sequence, cameras: Sequence[Camera],
                   config: LiftConfig, images_digest: str = "rendered") -> str:
    """Cache key: hash of (scene id or Gaussian content, teacher specs, views, lift settings)."""
    blob = {
        "version": LIFT_VERSION,
        "scene": scene_id if scene_id is not None else _gaussian_digest(gaussians),
        "n": len(gaussians),
        "teachers": [_teacher_token(t) for t in teachers],
        "views": _camera_digest(cameras),
        "images": images_digest,
        "eps": config.eps,
        "near": config.near,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24]


def lift_scene(gaussians: GaussianArrays, cameras: Sequence[Camera], teachers: Sequence, *,
               images: Sequence[torch.Tensor] | None = None, contexts: Sequence | None = None,
               frame_fn: Callable[[int], tuple] | None = None,
               config: LiftConfig | None = None, scene_id: str | None = None,
               images_digest: str | None = None) -> LiftedTargets:
    """Lift every teacher's features over all views onto the Gaussians.

    Args:
        gaussians: N Gaussians of one scene (world frame).
        cameras: the views.
        teachers: built teachers (each supervises head ``teacher.kind``; kinds must be unique).
        images: optional ``[H, W, 3]`` float images in [0, 1] per view (the teachers' input);
            None renders the Gaussians' own RGB for each view.
        contexts: optional :class:`~chorus_ros.core.teachers.FrameContext` per view (the
            oracles' ground truth).
        frame_fn: alternative to ``images``/``contexts``: ``frame_fn(v) -> (image | None,
            context | None)`` called lazily per view, only when the cache misses (e.g. to
            render ground truth on demand).
        config: lifting settings (cache dir, eps, backend).
        scene_id: stable id of the scene for the cache key (None: hash of the Gaussians).
        images_digest: identifies ``images`` in the cache key when they are given (e.g. the
            dataset's frame ids); required for caching with given images.

    Returns:
        :class:`LiftedTargets` with one entry per teacher kind.
    """
    config = config or LiftConfig()
    cameras = list(cameras)
    if not cameras:
        raise InvalidInputError("lift_scene needs at least one camera")
    kinds = [t.kind for t in teachers]
    if not teachers or len(set(kinds)) != len(kinds):
        raise InvalidInputError(f"lift_scene needs teachers with distinct kinds, got {kinds}")
    if frame_fn is not None and (images is not None or contexts is not None):
        raise InvalidInputError("give either frame_fn or images/contexts, not both")
    if frame_fn is not None and images_digest is None and config.cache_dir:
        raise InvalidInputError("caching lifted targets from frame_fn images needs images_digest")
    for name, seq in (("images", images), ("contexts", contexts)):
        if seq is not None and len(seq) != len(cameras):
            raise InvalidInputError(f"{name} has {len(seq)} entries for {len(cameras)} cameras")
    cache_path = None
    if config.cache_dir:
        if images is not None and images_digest is None:
            raise InvalidInputError("caching lifted targets from given images needs images_digest")
        key = lift_cache_key(scene_id, gaussians, teachers, cameras, config, images_digest or "rendered")
        cache_path = Path(config.cache_dir) / f"lift-{key}.safetensors"
        if cache_path.is_file():
            out = LiftedTargets.load(cache_path)
            if len(out) == len(gaussians) and set(out.features) == set(kinds):
                return out
    else:
        key = ""

    settings = _settings(config)
    n = len(gaussians)
    dims = [int(t.dim) for t in teachers]
    sums = torch.zeros(n, sum(dims), dtype=torch.float64)
    wsum = torch.zeros(n, dtype=torch.float64)
    it = range(len(cameras))
    if config.progress:
        from tqdm import tqdm
        it = tqdm(it, desc="lift", unit="view")
    t0 = time.perf_counter()
    for v in it:
        cam = cameras[v]
        if frame_fn is not None:
            img, ctx = frame_fn(v)
        else:
            img = images[v] if images is not None else None
            ctx = contexts[v] if contexts is not None else None
        if img is None:
            with torch.no_grad():
                img = render(gaussians, cam, settings).rgb.clamp(0, 1)
        maps = [upsample_map(t(img, ctx), cam.height, cam.width) for t in teachers]
        s, w = lift_view(gaussians, cam, torch.cat(maps, dim=-1), settings)
        sums += s.double().cpu()
        wsum += w.double().cpu()
    valid = wsum > config.eps
    mean = torch.where(valid[:, None], sums / wsum.clamp_min(1e-12)[:, None], torch.zeros((), dtype=sums.dtype))
    feats = dict(zip(kinds, mean.float().split(dims, dim=1)))
    out = LiftedTargets({k: v.contiguous() for k, v in feats.items()}, wsum.float(), valid, len(cameras), key)
    if cache_path is not None:
        out.save(cache_path, meta={"scene_id": scene_id, "seconds": time.perf_counter() - t0,
                                   "teachers": [_teacher_token(t) for t in teachers]})
    return out


# ------------------------------------------------------------------ synthetic scenes
@dataclass
class LiftedScene:
    """A scene's Gaussians with their lifted targets (one training sample)."""

    scene_id: str
    gaussians: GaussianArrays
    """N Gaussians (world frame); synthetic ones carry ``extras['label']`` and ``extras['instance']``."""
    targets: LiftedTargets


def lift_synthetic_scene(seed: int, teachers: Sequence, *, scene: dict | None = None, views: dict | None = None,
                         config: LiftConfig | None = None, photometric: dict | None = None) -> LiftedScene:
    """Generate synthetic scene ``seed``, render its ground-truth views and lift ``teachers``.

    Args:
        seed: scene seed (chorus_ros.core.synthetic).
        teachers: built teachers (the oracles read each view's ground-truth labels/instances).
        scene: overrides of :class:`~chorus_ros.core.synthetic.SceneConfig` (not ``seed``).
        views: overrides of :class:`~chorus_ros.core.synthetic.trajectory.TrajectoryConfig`.
        config: lifting settings (cache dir...). Ground truth is only rendered on a cache miss.
        photometric: when not None (an empty dict too), the room is replaced by its photometric
            3DGS fit before lifting: ``photometric_*`` fields of :class:`~chorus_ros.core.synthetic.shifts.ShiftConfig`
            (missing ones from the shift suite's ``photometric`` shift) and ``cache_dir`` of the
            fits (default ``.cache/shifts``). The fitted Gaussians carry the labels of the nearest
            source surface, and the views are rendered from the fitted map.

    The teacher input image of each view is the rendered RGB of the scene; the per-view
    noise seed of the oracles is ``seed * 1000 + view``.
    """
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.core.teachers import FrameContext

    scene = dict(scene or {})
    views = dict(views or {})
    if "seed" in scene:
        raise InvalidInputError("scene overrides must not set 'seed' (pass it as the seed argument)")
    sc = synthetic_room(seed, scene, photometric)
    traj = make_trajectory(sc, TrajectoryConfig(**views))
    config = config or LiftConfig()
    rs = RenderSettings(backend=config.backend, near=config.near)

    def frame(v: int):
        gt = render_ground_truth(sc.gaussians, traj.cameras[v], rs)
        return gt.rgb.clamp(0, 1), FrameContext(labels=gt.semantic, instances=gt.instance, label_set=sc.labels,
                                                seed=int(seed) * 1000 + v)

    key = {"seed": int(seed), "scene": scene}
    if photometric is not None:
        key["photometric"] = {k: v for k, v in photometric.items() if k != "cache_dir"}
    sid = "synthetic:" + json.dumps(key, sort_keys=True)
    digest = "synthetic-gt:" + json.dumps(views, sort_keys=True)
    targets = lift_scene(sc.gaussians, traj.cameras, teachers, frame_fn=frame, config=config, scene_id=sid,
                         images_digest=digest)
    return LiftedScene(sid, sc.gaussians, targets)


FOLDER_SCENE_PREFIX = "folder:"
"""Scene ids of :func:`lift_folder_scene` samples start with this (generated rooms' never do)."""


def lift_folder_scene(root: str | Path, teachers: Sequence, label_set, *, labels_map: str | Path | None = None,
                      views: str | None = None, config: LiftConfig | None = None, seed: int = 0) -> LiftedScene:
    """Lift a scene folder (:func:`~chorus_ros.core.datasets.open_scene`: a 3DGS map plus posed
    ``rgb`` / ``semantic_class`` / ``semantic_instance`` frames, e.g. a real scan turned into
    Gaussians) into a training sample, like :func:`lift_synthetic_scene` does a generated room.

    Each teacher sees the folder's camera image of a view; the oracles' ground truth is the
    view's label image mapped into ``label_set`` (by ``labels_map``, a YAML of folder class ->
    model class or null, else by equal name; unmapped classes and the folder's unlabeled id
    become 65535) and its instance image (the folder's "none" id -> 65535). Gaussians whose own
    ground-truth label (the map's ``label`` property, where the folder has it) maps to no class of
    ``label_set`` carry no target (``valid`` False): they would otherwise be taught the zero
    features of unlabeled pixels. The per-view noise seed of the oracles is ``seed * 1000 + view``.

    Raises:
        DatasetError / InvalidInputError: the folder is invalid, or has no labelled camera images.
    """
    from chorus_ros.core.datasets import load_labels_map, open_scene
    from chorus_ros.core.datasets.folder import parse_views
    from chorus_ros.core.teachers import FrameContext

    lm = load_labels_map(labels_map) if labels_map else None
    scene = open_scene(root, views=parse_views(views) if views else None, labels_map=lm, check_map_keys=False)
    if not len(scene):
        raise InvalidInputError(f"training folder {root}: no frames (a training folder needs posed, labelled images)")
    if scene.camera is None:
        raise InvalidInputError(f"training folder {root}: no camera intrinsics")
    lut = scene.class_map_to(label_set)
    cameras = [scene.camera.camera(scene.poses[k]) for k in range(len(scene))]

    def frame(v: int):
        fr = scene.frame(v)
        if fr.rgb is None or fr.semantic is None:
            raise InvalidInputError(f"training folder {root}: frame {fr.index} lacks its rgb or semantic_class image")
        img = torch.from_numpy(np.ascontiguousarray(fr.rgb)).float() / 255.0
        lab = torch.from_numpy(lut[fr.semantic.astype(np.int64)])
        inst = None
        if fr.instance is not None:
            i = torch.from_numpy(fr.instance.astype(np.int64))
            inst = torch.where((i == scene.instance_none_id) | (lab == UNLABELED), torch.full_like(i, UNLABELED), i)
        return img, FrameContext(labels=lab, instances=inst, label_set=label_set, seed=int(seed) * 1000 + v)

    root_p = Path(root).resolve()
    key = {"folder": str(root_p), "views": views or "", "labels": label_set.name, "names": list(label_set.names),
           "map": {str(k): v for k, v in sorted((lm or {}).items())}}
    sid = FOLDER_SCENE_PREFIX + json.dumps(key, sort_keys=True)
    stamp = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in sorted(root_p.rglob("*")) if f.is_file()]
    digest = "folder-frames:" + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:24]
    targets = lift_scene(scene.gaussians, cameras, teachers, frame_fn=frame, config=config, scene_id=sid,
                         images_digest=digest)
    g = scene.gaussians
    if scene.gt_gaussian_labels is not None:
        gl = lut[np.asarray(scene.gt_gaussian_labels, dtype=np.int64)]
        targets.valid = targets.valid & torch.from_numpy(gl != UNLABELED)
        extras = {"label": torch.from_numpy(gl)}
        if scene.gt_gaussian_instances is not None:
            extras["instance"] = torch.from_numpy(np.asarray(scene.gt_gaussian_instances, dtype=np.int64))
        g = GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids, dict(g.extras, **extras))
    return LiftedScene(sid, g, targets)


def synthetic_room(seed: int, scene: dict | None = None, photometric: dict | None = None):
    """The generated room ``seed`` (``scene``: SceneConfig overrides), replaced by its photometric
    3DGS fit when ``photometric`` is not None (fits cached under its ``cache_dir``, default
    ``.cache/shifts``): the room :func:`lift_synthetic_scene` lifts.

    ``scene["source"] == "mesh"`` builds the room with the second room source instead
    (:func:`~chorus_ros.core.synthetic.meshrooms.generate_mesh_room`; its only other key is
    ``target_gaussians``), as :func:`synthetic_room_specs` does for ``mesh_fraction``.
    """
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    scene = dict(scene or {})
    source = scene.pop("source", "rooms")
    if source == "mesh":
        from chorus_ros.core.synthetic.meshrooms import MeshRoomConfig, generate_mesh_room
        bad = sorted(k for k in scene if k != "target_gaussians")
        if bad:
            raise InvalidInputError(f"a mesh room takes only 'target_gaussians' from the scene overrides, got {bad}")
        sc = generate_mesh_room(MeshRoomConfig(seed=int(seed), **scene))
    elif source == "rooms":
        sc = generate_scene(SceneConfig(seed=int(seed), **scene))
    else:
        raise InvalidInputError(f"unknown room source {source!r}; known: ['rooms', 'mesh']")
    if photometric is not None:
        from chorus_ros.core.synthetic.photometric import fit_scene
        sc = fit_scene(sc, photometric_fit_config(photometric, int(seed)),
                       cache_dir=photometric.get("cache_dir", ".cache/shifts"))
    return sc


def synthetic_room_specs(seeds: Sequence[int], *, scene: dict | None = None,
                         density_range: Sequence[int] | None = None, photometric_fraction: float = 0.0,
                         photometric_fit: dict | None = None,
                         mesh_fraction: float = 0.0) -> list[tuple[int, dict, dict | None]]:
    """``[(seed, scene overrides, photometric overrides or None)]`` of each training room, as
    :func:`lift_synthetic_scenes` builds them (``density_range`` sets ``target_gaussians`` with
    :func:`scene_density`; :func:`photometric_selected` picks the fitted rooms; of the others,
    :func:`mesh_selected` picks the rooms built by the second room source, whose overrides are
    ``{"source": "mesh", "target_gaussians": ...}``)."""
    out = []
    for s in seeds:
        sc = dict(scene or {})
        if density_range:
            sc["target_gaussians"] = scene_density(s, density_range)
        photo = dict(photometric_fit or {}) if photometric_selected(s, photometric_fraction) else None
        if photo is None and mesh_selected(s, mesh_fraction):
            sc = {"source": "mesh", **({"target_gaussians": sc["target_gaussians"]} if "target_gaussians" in sc else {})}
        out.append((int(s), sc, photo))
    return out


def mesh_selected(seed: int, fraction: float) -> bool:
    """Whether training room ``seed`` comes from the second room source (mesh-sampled rooms,
    :mod:`chorus_ros.core.synthetic.meshrooms`); deterministic per seed, independent of
    :func:`photometric_selected` (which wins where both pick a seed)."""
    return _seed_selected("mesh", seed, fraction)


def _seed_selected(kind: str, seed: int, fraction: float) -> bool:
    """A deterministic per-seed draw: whether room ``seed`` is among the ``fraction`` picked for
    ``kind`` (``'<kind>_fraction'`` names the option in the error)."""
    if not 0.0 <= fraction <= 1.0:
        raise InvalidInputError(f"{kind}_fraction must be in [0, 1], got {fraction}")
    u = int(hashlib.sha256(f"{kind}:{int(seed)}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return u < fraction


def photometric_fit_config(photometric: dict, seed: int):
    """The :class:`~chorus_ros.core.synthetic.photometric.PhotometricFitConfig` of room ``seed``
    from ``photometric_*`` overrides of the shift suite's ``photometric`` shift (the same fit, so
    training rooms and the suite's held-out rooms are made alike)."""
    import dataclasses

    from chorus_ros.core.synthetic.photometric import PhotometricFitConfig
    from chorus_ros.core.synthetic.shifts import SHIFT_SUITE
    over = {k: v for k, v in photometric.items() if k != "cache_dir"}
    bad = sorted(k for k in over if not k.startswith("photometric_"))
    if bad:
        raise InvalidInputError(f"photometric fit overrides must be ShiftConfig photometric_* fields, got {bad}")
    cfg = dataclasses.replace(SHIFT_SUITE["photometric"], **over)
    return PhotometricFitConfig(steps=cfg.photometric_steps, views=cfg.photometric_views,
                                width=int(cfg.photometric_size[0]), height=int(cfg.photometric_size[1]),
                                seed=int(seed), **cfg.photometric_options)


def photometric_selected(seed: int, fraction: float) -> bool:
    """Whether training room ``seed`` is replaced by its photometric fit (deterministic per seed)."""
    return _seed_selected("photometric", seed, fraction)


def scene_density(seed: int, density_range: Sequence[int]) -> int:
    """Target Gaussian count of scene ``seed`` drawn deterministically in ``[lo, hi]``."""
    lo, hi = (int(v) for v in density_range)
    if not 1000 <= lo <= hi:
        raise InvalidInputError(f"density_range must be [lo, hi] with 1000 <= lo <= hi, got {list(density_range)}")
    frac = int(hashlib.sha256(f"density:{int(seed)}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return int(round(lo + (hi - lo) * frac))


def lift_synthetic_scenes(seeds: Sequence[int], teachers: Sequence, *, scene: dict | None = None,
                          views: dict | None = None, config: LiftConfig | None = None,
                          progress: bool = False, density_range: Sequence[int] | None = None,
                          photometric_fraction: float = 0.0, photometric_fit: dict | None = None,
                          mesh_fraction: float = 0.0) -> list[LiftedScene]:
    """:func:`lift_synthetic_scene` for every seed (cached ones load from disk).

    ``density_range=[lo, hi]`` sets each scene's ``target_gaussians`` with :func:`scene_density`;
    the rooms :func:`photometric_selected` picks for ``photometric_fraction`` are replaced by their
    photometric fit (``photometric_fit``: overrides, see :func:`lift_synthetic_scene`), and of the
    others those :func:`mesh_selected` picks for ``mesh_fraction`` by a mesh-sampled room of the
    second room source.
    """
    specs = synthetic_room_specs(seeds, scene=scene, density_range=density_range,
                                 photometric_fraction=photometric_fraction, photometric_fit=photometric_fit,
                                 mesh_fraction=mesh_fraction)
    if progress:
        from tqdm import tqdm
        specs = tqdm(specs, desc="lift scenes", unit="scene")
    return [lift_synthetic_scene(s, teachers, scene=sc, views=views, config=config, photometric=photo)
            for s, sc, photo in specs]
