"""The shift suite: held-out scenes under named distribution shifts, scored side by side.

For every shift of :data:`chorus_ros.core.synthetic.shifts.SHIFT_SUITE` (or a chosen subset) and
every seed (default 5000+, never used in training), :func:`~chorus_ros.core.synthetic.shifts.generate_shifted_scene`
builds the scene, its ground-truth views are rendered from the shifted Gaussians themselves (the
cameras move with the map), and :func:`chorus_ros.core.metrics.scenes.evaluate_scenes` scores a
checkpoint's feed-forward pipeline on them (the map it receives carries no ground truth).

``chorus-eval --suite shift [--checkpoint CKPT ...] [--json F] [--out F]`` prints the table:
mIoU, PQ and predicted objects / true instances per shift.

Two ground truths (``ShiftSuiteConfig.ground_truth``, ``chorus-eval --suite-ground-truth``):
``map`` (default) renders the labelled views from the shifted map itself, so a floater or a
blurred fit carries the label of the surface it was copied or fitted from wherever it is the
strongest Gaussian of a pixel; ``source`` renders them (images too) from the room before its
per-Gaussian shifts and before the photometric fit, as a camera would see the scene, while the
pipeline still receives the shifted map. The two differ only on shifts that change the map's
Gaussians (noise, photometric, sizes, shapes, colours); both keep the cameras moved with the map.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

__all__ = ["GROUND_TRUTHS", "ShiftSuiteConfig", "suite_scene", "evaluate_shift_suite", "shift_suite_markdown", "shift_suite_json"]


def _default_shifts() -> list[str]:
    from chorus_ros.core.synthetic.shifts import SHIFT_SUITE
    return list(SHIFT_SUITE)


GROUND_TRUTHS = ("map", "source")
"""``ShiftSuiteConfig.ground_truth`` choices (module docstring)."""


@dataclass
class ShiftSuiteConfig:
    """Scenes and views of the shift suite (``chorus-eval --suite shift``)."""

    shifts: list[str] = field(default_factory=_default_shifts)
    """Names of the shifts to run (keys of chorus_ros.core.synthetic.shifts.SHIFT_SUITE)."""
    seeds: list[int] = field(default_factory=lambda: [5000, 5001])
    """Scene seeds (held out: training uses seeds < 1000)."""
    target_gaussians: int = 40000
    """Gaussians per room where a shift does not set the density."""
    loop_views: int = 6
    """Views on the loop per scene."""
    random_views: int = 2
    """Random object views per scene."""
    width: int = 320
    """View width, pixels."""
    height: int = 240
    """View height, pixels."""
    query: bool = False
    """Also run query top-1 (slower)."""
    cache_dir: str = ".cache/shifts"
    """Cache of the expensive shifted scenes (photometric fits)."""
    ground_truth: str = "map"
    """Where the labelled views come from: 'map' (the shifted map itself) or 'source' (the room
    before its per-Gaussian shifts and photometric fit; see the module docstring)."""


def suite_scene(shift: str, seed: int, cfg: ShiftSuiteConfig):
    """One shift's held-out scene as an in-memory scene folder (ground truth rendered)."""
    from chorus_ros.core.datasets.synthetic import scene_from_synthetic
    from chorus_ros.core.synthetic.shifts import generate_shifted_scene
    from chorus_ros.core.errors import InvalidInputError
    if cfg.ground_truth not in GROUND_TRUTHS:
        raise InvalidInputError(f"shift suite ground_truth must be one of {list(GROUND_TRUTHS)}, got {cfg.ground_truth!r}")
    sc = generate_shifted_scene(shift, seed, scene={"target_gaussians": cfg.target_gaussians},
                                views={"loop_views": cfg.loop_views, "random_views": cfg.random_views,
                                       "width": cfg.width, "height": cfg.height}, cache_dir=cfg.cache_dir)
    cams = sc.cameras
    c2w = np.stack([np.linalg.inv(c.viewmat.double().numpy()) for c in cams])
    traj = SimpleNamespace(cameras=cams, c2w=c2w, K=cams[0].K.double().numpy(), width=cfg.width, height=cfg.height)
    folder = scene_from_synthetic(SimpleNamespace(gaussians=sc.gaussians, labels=sc.labels, seed=seed), traj,
                                  name=f"{shift}:{seed}")
    if cfg.ground_truth == "map":
        return folder
    return _with_source_ground_truth(folder, shift, seed, sc, cfg)


def _with_source_ground_truth(folder, shift: str, seed: int, sc, cfg: ShiftSuiteConfig):
    """``folder`` (the shifted map and its cameras) with every frame re-rendered from the source
    room: the shift's base scene without the photometric fit, in the room frame, seen by each
    camera moved back by the shift's rigid transform."""
    import dataclasses

    from chorus_ros.core.datasets.folder import SceneFolder
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth
    from chorus_ros.core.synthetic.shifts import SHIFT_SUITE, base_scene, transform_camera
    src_cfg = dataclasses.replace(SHIFT_SUITE[shift], photometric_steps=0)
    src = base_scene(seed, src_cfg, {"target_gaussians": cfg.target_gaussians}, cache_dir=cfg.cache_dir)
    back = np.linalg.inv(np.asarray(sc.transform, dtype=np.float64))
    frames = []
    for k in range(len(folder)):
        fr = folder.frame(k)
        gt = render_ground_truth(src.gaussians, transform_camera(fr.camera, back))
        frames.append(dataclasses.replace(
            fr, rgb=np.clip(np.round(gt.rgb.numpy() * 255.0), 0, 255).astype(np.uint8),
            depth=gt.depth.numpy().astype(np.float32), semantic=gt.semantic.numpy().astype(np.uint16),
            instance=gt.instance.numpy().astype(np.uint16)))
    labels = sc.labels
    return SceneFolder.in_memory(f"{shift}:{seed}:source", sc.gaussians, dict(enumerate(labels.names)), frames,
                                 intrinsics=folder.camera, unlabeled_id=folder.unlabeled_id,
                                 instance_none_id=folder.instance_none_id,
                                 stuff_names=[n for n, st in zip(labels.names, labels.stuff) if st])


def evaluate_shift_suite(make_pipeline, cfg: ShiftSuiteConfig | None = None, *, cache: dict | None = None,
                         progress: bool = True) -> dict:
    """``{shift name: DatasetEvalResult}`` of one checkpoint's pipeline (``make_pipeline()`` ->
    fresh :class:`~chorus_ros.core.pipeline.PerceptionPipeline`). ``cache`` (a dict) keeps the
    scenes between checkpoints."""
    from chorus_ros.core.errors import InvalidInputError
    from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes
    from chorus_ros.core.synthetic.shifts import SHIFT_SUITE
    cfg = cfg or ShiftSuiteConfig()
    unknown = [s for s in cfg.shifts if s not in SHIFT_SUITE]
    if unknown:
        raise InvalidInputError(f"unknown shifts {unknown}; known: {sorted(SHIFT_SUITE)}")
    cache = {} if cache is None else cache
    out = {}
    for name in cfg.shifts:
        scenes = []
        for seed in cfg.seeds:
            key = (name, seed, cfg.target_gaussians, cfg.loop_views, cfg.random_views, cfg.width, cfg.height,
                   cfg.ground_truth)
            if key not in cache:
                cache[key] = suite_scene(name, seed, cfg)
            scenes.append(cache[key])
        out[name] = evaluate_scenes(make_pipeline, scenes, SceneEvalConfig(query=cfg.query, contact_views=1),
                                    progress=False)
        if progress:
            t = out[name].total
            print(f"shift {name}: mIoU {100 * t.semantic.miou:.1f} PQ {100 * t.panoptic.pq:.1f} "
                  f"objects {t.n_pred_objects}/{t.n_gt_instances}", file=sys.stderr, flush=True)
    return out


def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def shift_suite_markdown(results: dict, cfg: ShiftSuiteConfig, command: str = "") -> str:
    """Side-by-side table: ``results`` = ``{checkpoint name: {shift: DatasetEvalResult}}``."""
    names = list(results)
    out = "## Shift suite\n\n"
    if command:
        out += f"Produced by `{command}`.\n\n"
    out += (f"Held-out seeds {cfg.seeds} per shift (never used in training), {cfg.loop_views + cfg.random_views} "
            f"views per scene at {cfg.width}x{cfg.height}, one feed-forward encode per scene; "
            f"rooms of {cfg.target_gaussians} Gaussians unless the shift sets the density; ground truth "
            + ("rendered from the shifted map itself" if cfg.ground_truth == "map" else
               "rendered from the source room (before per-Gaussian shifts and the photometric fit)")
            + ". Cells: mIoU / PQ / predicted objects : true instances.\n\n")
    out += "| shift | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    shifts = list(next(iter(results.values())))
    for s in shifts:
        cells = []
        for n in names:
            t = results[n][s].total
            cells.append(f"{_pct(t.semantic.miou)} / {_pct(t.panoptic.pq)} / {t.n_pred_objects}:{t.n_gt_instances}")
        out += f"| {s} | " + " | ".join(cells) + " |\n"
    return out


def shift_suite_json(results: dict) -> dict:
    """``{checkpoint: {shift: results_json(...)}}`` (percent)."""
    from chorus_ros.core.metrics.scenes import results_json
    return {n: {s: results_json(r) for s, r in per.items()} for n, per in results.items()}
