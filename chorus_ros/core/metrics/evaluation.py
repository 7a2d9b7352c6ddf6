"""Held-out evaluation of a checkpoint on synthetic scenes, and the markdown tables for docs/.

For every seed: generate the scene, render the trajectory's ground truth from its labelled
Gaussians (:func:`~chorus_ros.core.datasets.scene_from_synthetic`), and score it with the same
code as outside scene folders (:func:`chorus_ros.core.metrics.scenes.evaluate_scenes`: stripped
map, one full encode or ``chunks`` incremental slabs, one shared alpha threshold, classes
mapped by name). Metrics: :mod:`.semantic` (mIoU, mAcc, oAcc, foreground variants),
:mod:`.instance` (panoptic quality over things; cross-view id consistency per object), 3D mIoU
and query top-1 (:mod:`.scenes`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from chorus_ros.core.metrics.instance import ConsistencyScores, PanopticScores
from chorus_ros.core.metrics.semantic import DEFAULT_BACKGROUND, SemanticScores

__all__ = ["EvalConfig", "EvalResult", "evaluate_checkpoint", "evaluation_markdown", "ablation_markdown",
           "build_heldout_scenes"]


@dataclass
class EvalConfig:
    """Held-out evaluation settings (``chorus-eval``)."""

    seeds: list[int] = field(default_factory=lambda: [1000, 1001, 1002])
    """Scene seeds; must never appear in training (the demo trains on seeds < 1000)."""
    target_gaussians: int = 40000
    """Gaussians per synthetic scene (inside the demo's training density range)."""
    loop_views: int = 8
    """Views on the head-height loop per scene."""
    random_views: int = 4
    """Random object-centred views per scene."""
    width: int = 128
    """Image width, pixels."""
    height: int = 96
    """Image height, pixels."""
    min_alpha: float | None = None
    """Pixels below this accumulated opacity are unlabeled, in prediction and ground truth alike
    (None: the pipeline's own ``semantic.min_alpha``)."""
    chunks: int = 1
    """1: one full encode of the whole scene; >1: the scene arrives in this many spatial slabs
    (along x), each followed by an incremental encode, and views are rendered after every slab."""
    background: tuple[str, ...] = DEFAULT_BACKGROUND
    """Classes excluded by the foreground metrics and by the instance metrics."""
    device: str = "cpu"
    """Torch device of the pipeline."""
    render_backend: str = "auto"
    """Renderer backend for predictions and ground truth."""


@dataclass
class EvalResult:
    """Metrics of one checkpoint over all scenes and views."""

    name: str
    semantic: SemanticScores
    panoptic: PanopticScores
    consistency: ConsistencyScores
    num_scenes: int
    num_views: int
    mean_gaussians: float
    seconds_encode: float
    """Mean seconds of the (full or summed incremental) encode per scene."""
    has_language: bool = True
    notes: str = ""
    semantic_3d: SemanticScores | None = None
    """Per-Gaussian scores (each Gaussian's own label vs its ground-truth class)."""
    dataset: object = None
    """The full :class:`~chorus_ros.core.metrics.scenes.DatasetEvalResult` (per scene, JSON, plots)."""


def build_heldout_scenes(cfg: EvalConfig, gt_cache: dict | None = None, progress: bool = False) -> list:
    """The held-out synthetic scenes of ``cfg`` as in-memory SceneFolders (ground truth rendered
    once per configuration and cached in ``gt_cache``)."""
    from chorus_ros.core.datasets import scene_from_synthetic
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

    gt_cache = {} if gt_cache is None else gt_cache
    out = []
    for seed in cfg.seeds:
        key = (seed, cfg.target_gaussians, cfg.loop_views, cfg.random_views, cfg.width, cfg.height,
               cfg.render_backend)
        if key not in gt_cache:
            scene = generate_scene(SceneConfig(seed=seed, target_gaussians=cfg.target_gaussians))
            traj = make_trajectory(scene, TrajectoryConfig(loop_views=cfg.loop_views, random_views=cfg.random_views,
                                                           width=cfg.width, height=cfg.height))
            gt_cache[key] = scene_from_synthetic(scene, traj, RenderSettings(backend=cfg.render_backend),
                                                 name=f"seed {seed}")
        out.append(gt_cache[key])
    return out


def evaluate_checkpoint(name: str, make_pipeline, cfg: EvalConfig, gt_cache: dict | None = None,
                        progress=None, contact_views: int = 2) -> EvalResult:
    """Evaluate one checkpoint on the held-out synthetic scenes of ``cfg``, through the same
    scoring code as outside folders (:func:`chorus_ros.core.metrics.scenes.evaluate_scenes`).

    Args:
        name: row name in the tables.
        make_pipeline: ``f() -> PerceptionPipeline`` (a fresh pipeline per scene).
        cfg: evaluation settings.
        gt_cache: optional dict reused across checkpoints (scenes and ground-truth views).
        progress: optional ``f(str)`` called with a status line per scene; when given, progress
            bars are shown too.
        contact_views: views per scene kept for the contact sheet.
    """
    from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes

    scenes = build_heldout_scenes(cfg, gt_cache)
    scfg = SceneEvalConfig(min_alpha=cfg.min_alpha, background=cfg.background, chunks=cfg.chunks,
                           render_backend=cfg.render_backend, contact_views=contact_views)
    res = evaluate_scenes(make_pipeline, scenes, scfg, progress=progress is not None)
    if progress:
        for s in res.scenes:
            progress(f"{name}: {s.name} done ({s.n_gaussians} Gaussians, encode {s.encode_s:.1f} s)")
    t = res.total
    return EvalResult(name, t.semantic, t.panoptic, t.consistency, len(res.scenes), t.n_views,
                      float(np.mean([s.n_gaussians for s in res.scenes])),
                      float(np.mean([s.encode_s for s in res.scenes])), t.has_language,
                      "" if t.has_language else "no language head: nothing can be labelled",
                      t.semantic_3d, res)


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


_HEADER = ("| {} | mIoU | mIoU (present) | mAcc | oAcc | fg-mIoU | fg-mAcc | PQ | SQ | RQ | id cons. (obj) "
           "| id cons. (px) | 3D mIoU | query top-1 |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def _row(r: EvalResult) -> str:
    s, p, c = r.semantic, r.panoptic, r.consistency
    sem = [_pct(v) for v in (s.miou, s.miou_present, s.macc, s.oacc, s.fg_miou, s.fg_macc)]
    if not r.has_language:
        sem = ["n/a"] * 6
    s3 = _pct(r.semantic_3d.miou) if r.semantic_3d is not None and r.has_language else "n/a"
    q = _pct(r.dataset.total.query_top1) if r.dataset is not None else "n/a"
    return (f"| {r.name} | " + " | ".join(sem) + f" | {_pct(p.pq)} | {_pct(p.sq)} | {_pct(p.rq)} | "
            f"{_pct(c.object_mean)} | {_pct(c.pixel_weighted)} | {s3} | {q} |\n")


def _alpha(cfg: EvalConfig, r: EvalResult) -> str:
    if cfg.min_alpha is not None:
        return f"{cfg.min_alpha:g}"
    a = r.dataset.total.min_alpha if r.dataset is not None else float("nan")
    return f"{a:g} (the pipeline's own)"


def _setup(cfg: EvalConfig, results: list[EvalResult]) -> str:
    r = results[0]
    return (f"Held-out synthetic scenes, seeds {cfg.seeds} (never used in training), about "
            f"{r.mean_gaussians:.0f} Gaussians each; {r.num_views} views in all "
            f"({cfg.loop_views} loop + {cfg.random_views} random per scene) at {cfg.width}x{cfg.height}; "
            f"pixels with alpha < {_alpha(cfg, r)} unlabeled in both prediction and ground truth; "
            + ("one feed-forward encode per scene" if cfg.chunks <= 1 else
               f"each scene added in {cfg.chunks} slabs with an incremental encode after each") + ".\n")


def evaluation_markdown(result: EvalResult, cfg: EvalConfig, command: str = "", *, plots: dict | None = None,
                        report_path=None, heading_level: int = 1, title: str | None = None) -> str:
    """Held-out report of one checkpoint: one row per scene and the pooled row, per-class IoU,
    query top-1 details, plots (:func:`chorus_ros.core.metrics.report.dataset_markdown`)."""
    from chorus_ros.core.metrics.report import dataset_markdown

    setup = _setup(cfg, [result]) + f"\nMean encode time per scene: {result.seconds_encode:.2f} s ({cfg.device}).\n"
    return dataset_markdown(result.dataset, title=title or "Evaluation", command=command, setup=setup, plots=plots,
                            report_path=report_path, heading_level=heading_level,
                            total_label=f"{result.name} (all scenes)")


def ablation_markdown(results: list[EvalResult], cfg: EvalConfig, command: str = "") -> str:
    """One row per checkpoint (e.g. each head removed, gradient calibration off)."""
    out = "# Ablation\n\n"
    if command:
        out += f"Produced by `{command}`.\n\n"
    out += _setup(cfg, results) + "\n" + _HEADER.format("variant") + "".join(_row(r) for r in results)
    notes = [f"- {r.name}: {r.notes}" for r in results if r.notes]
    if notes:
        out += "\n" + "\n".join(notes) + "\n"
    from chorus_ros.core.metrics.report import DEFINITIONS

    return out + "\n" + DEFINITIONS + "\n"
