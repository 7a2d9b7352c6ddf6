"""Held-out evaluation of a checkpoint on synthetic scenes, and the markdown tables for docs/.

For every seed: generate the scene (ground-truth extras are stripped before the map sees it),
feed it to a :class:`~chorus_ros.core.pipeline.PerceptionPipeline` (one full, feed-forward
encode; or ``chunks`` spatial pieces added one after another, each followed by an incremental
encode, to measure id consistency as the map grows), then render the trajectory's views and
compare them with ground-truth images rendered from the same Gaussians
(:func:`~chorus_ros.core.synthetic.groundtruth.render_ground_truth`, same renderer, same
``min_alpha``). Metrics: :mod:`.semantic` (mIoU, mAcc, oAcc, foreground variants) and
:mod:`.instance` (panoptic quality over things; cross-view id consistency per object).

Ground-truth class ids are mapped to the checkpoint's label set by name; ground-truth classes
missing from it are ignored.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from chorus_ros.core.labels import UNLABELED
from chorus_ros.core.metrics.instance import (ConsistencyScores, IdConsistency, PanopticQuality,
                                              PanopticScores)
from chorus_ros.core.metrics.semantic import DEFAULT_BACKGROUND, ConfusionMatrix, SemanticScores

__all__ = ["EvalConfig", "EvalResult", "evaluate_checkpoint", "evaluation_markdown", "ablation_markdown"]


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
    min_alpha: float = 0.3
    """Pixels below this accumulated opacity are unlabeled, in prediction and ground truth alike."""
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


def _strip(g):
    from chorus_ros.core.gaussians import GaussianArrays
    return GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids)


def evaluate_checkpoint(name: str, make_pipeline, cfg: EvalConfig, gt_cache: dict | None = None,
                        progress=None) -> EvalResult:
    """Evaluate one checkpoint.

    Args:
        name: row name in the tables.
        make_pipeline: ``f() -> PerceptionPipeline`` (a fresh pipeline per scene).
        cfg: evaluation settings.
        gt_cache: optional dict reused across checkpoints (scenes, cameras, ground-truth views).
        progress: optional ``f(str)`` called with a status line per scene.
    """
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

    gt_cache = {} if gt_cache is None else gt_cache
    cm = cm3 = pq = ic = None
    n_views, n_g, secs, has_lang = 0, [], [], True
    for seed in cfg.seeds:
        key = (seed, cfg.target_gaussians, cfg.loop_views, cfg.random_views, cfg.width, cfg.height,
               cfg.min_alpha, cfg.render_backend)
        if key not in gt_cache:
            scene = generate_scene(SceneConfig(seed=seed, target_gaussians=cfg.target_gaussians))
            traj = make_trajectory(scene, TrajectoryConfig(loop_views=cfg.loop_views, random_views=cfg.random_views,
                                                           width=cfg.width, height=cfg.height))
            settings = RenderSettings(backend=cfg.render_backend)
            gts = [render_ground_truth(scene.gaussians, cam, settings, min_alpha=cfg.min_alpha)
                   for cam in traj.cameras]
            gt_cache[key] = (scene, traj.cameras, [(g.semantic.numpy(), g.instance.numpy()) for g in gts])
        scene, cameras, gts = gt_cache[key]
        pipe = make_pipeline()
        pipe.config.semantic.min_alpha = cfg.min_alpha
        pipe.config.render.backend = cfg.render_backend
        names = pipe.labels.names
        k = len(names)
        if cm is None:
            cm = ConfusionMatrix(k)
            cm3 = ConfusionMatrix(k)
            thing = np.array([not pipe.labels.stuff[i] and n not in cfg.background for i, n in enumerate(names)])
            pq = PanopticQuality(k, thing)
            ic = IdConsistency(thing)
        lut = np.array([names.index(n) if n in names else UNLABELED for n in scene.labels.names] + [UNLABELED])
        g = _strip(scene.gaussians)
        n_g.append(len(g))
        order = torch.argsort(g.means[:, 0], stable=True)
        pieces = [order] if cfg.chunks <= 1 else list(torch.chunk(order, cfg.chunks))
        t_enc = 0.0
        for i, idx in enumerate(pieces):
            pipe.apply_update(g.index(idx), None, full=(i == 0))
            t0 = time.perf_counter()
            pipe.encode()
            t_enc += time.perf_counter() - t0
            has_lang = has_lang and "language" in pipe._heads()
            final = i == len(pieces) - 1
            views_gt = gts
            if not final:  # ground truth of the partial map (same Gaussians as the pipeline holds)
                part = scene.gaussians.index(torch.cat(pieces[: i + 1]))
                settings = RenderSettings(backend=cfg.render_backend)
                views_gt = []
                for cam in cameras:
                    gv = render_ground_truth(part, cam, settings, min_alpha=cfg.min_alpha)
                    views_gt.append((gv.semantic.numpy(), gv.instance.numpy()))
            for cam, (gsem, ginst) in zip(cameras, views_gt):
                v = pipe.render_view(cam)
                gs = lut[np.where(gsem == UNLABELED, len(lut) - 1, gsem)]
                if final:
                    cm.update(v.labels.astype(np.int64), gs)
                    pq.update(v.labels.astype(np.int64), v.instances, gs, ginst)
                    n_views += 1
                ic.update(ginst, v.instances, gs, scene=seed)
        secs.append(t_enc)
        from chorus_ros.core.pipeline import ATTR_LABEL
        if ATTR_LABEL in pipe.map.attribute_names():
            ids = pipe.map.arrays().ids.long().cpu()
            gl = scene.gaussians.extras["label"].long().cpu()
            sid = scene.gaussians.ids.long().cpu()
            order = torch.argsort(sid)
            pos = order[torch.searchsorted(sid[order], ids)]
            cm3.update(pipe.map.attribute(ATTR_LABEL).long().cpu(), torch.as_tensor(lut)[gl[pos]])
        if progress:
            progress(f"{name}: seed {seed} done ({len(g)} Gaussians, encode {t_enc:.1f} s)")
    return EvalResult(name, cm.compute(names, cfg.background), pq.compute(), ic.compute(), len(cfg.seeds), n_views,
                      float(np.mean(n_g)), float(np.mean(secs)), has_lang,
                      "" if has_lang else "no language head: nothing can be labelled",
                      cm3.compute(names, cfg.background))


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


_HEADER = ("| {} | mIoU | mAcc | oAcc | fg-mIoU | fg-mAcc | PQ | SQ | RQ | id cons. (obj) | id cons. (px) "
           "| 3D mIoU |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def _row(r: EvalResult) -> str:
    s, p, c = r.semantic, r.panoptic, r.consistency
    sem = [_pct(v) for v in (s.miou, s.macc, s.oacc, s.fg_miou, s.fg_macc)]
    if not r.has_language:
        sem = ["n/a"] * 5
    s3 = _pct(r.semantic_3d.miou) if r.semantic_3d is not None and r.has_language else "n/a"
    return (f"| {r.name} | " + " | ".join(sem) + f" | {_pct(p.pq)} | {_pct(p.sq)} | {_pct(p.rq)} | "
            f"{_pct(c.object_mean)} | {_pct(c.pixel_weighted)} | {s3} |\n")


def _setup(cfg: EvalConfig, results: list[EvalResult]) -> str:
    r = results[0]
    return (f"Held-out synthetic scenes, seeds {cfg.seeds} (never used in training), about "
            f"{r.mean_gaussians:.0f} Gaussians each; {r.num_views} views in all "
            f"({cfg.loop_views} loop + {cfg.random_views} random per scene) at {cfg.width}x{cfg.height}; "
            f"pixels with alpha < {cfg.min_alpha} unlabeled in both prediction and ground truth; "
            + ("one feed-forward encode per scene" if cfg.chunks <= 1 else
               f"each scene added in {cfg.chunks} slabs with an incremental encode after each") + ".\n")


_DEFS = ("\nDefinitions (percent): mIoU/mAcc/oAcc from one confusion matrix over all views; fg- variants "
         "exclude wall, floor, ceiling. PQ/SQ/RQ: panoptic quality over thing classes, per view, segments "
         "matched at IoU > 0.5 within a class, accumulated over views (chorus_ros.core.metrics.instance). "
         "id cons.: for each ground-truth object, the share of its pixels over all views (and, with "
         "slabs, over all map states) that carry its majority predicted id; averaged over objects (obj) "
         "or pooled over pixels (px). 3D mIoU: per Gaussian (its decoded class vs its true class), "
         "over the same scenes.\n")


def evaluation_markdown(result: EvalResult, cfg: EvalConfig, command: str = "") -> str:
    """Main table + per-class IoU/accuracy of one checkpoint."""
    out = "# Evaluation\n\n"
    if command:
        out += f"Produced by `{command}`.\n\n"
    out += _setup(cfg, [result]) + "\n" + _HEADER.format("checkpoint") + _row(result)
    out += f"\nMean encode time per scene: {result.seconds_encode:.2f} s ({cfg.device}).\n"
    out += "\n## Per-class IoU and accuracy\n\n| class | IoU | Acc |\n|---|---|---|\n"
    s = result.semantic
    for n, i, a in zip(s.class_names, s.iou, s.acc):
        out += f"| {n} | {_pct(i)} | {_pct(a)} |\n"
    return out + _DEFS


def ablation_markdown(results: list[EvalResult], cfg: EvalConfig, command: str = "") -> str:
    """One row per checkpoint (e.g. each head removed, gradient calibration off)."""
    out = "# Ablation\n\n"
    if command:
        out += f"Produced by `{command}`.\n\n"
    out += _setup(cfg, results) + "\n" + _HEADER.format("variant") + "".join(_row(r) for r in results)
    notes = [f"- {r.name}: {r.notes}" for r in results if r.notes]
    if notes:
        out += "\n" + "\n".join(notes) + "\n"
    return out + _DEFS
