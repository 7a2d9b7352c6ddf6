"""Score a checkpoint on scenes (outside folders or generated scenes): one function,
:func:`evaluate_scenes`, used by ``chorus-eval --dataset``, ``--seeds`` and the shift suite.

Per scene: a fresh :class:`~chorus_ros.core.pipeline.PerceptionPipeline` receives the scene's
*stripped* map (no ground-truth property reaches it) and encodes it once (or in ``chunks``
spatial slabs, each followed by an incremental encode); then every selected frame is rendered
from the frame's camera and compared with the frame's ground-truth images.

**Shared alpha threshold.** Pixels where the map's accumulated opacity is below ``min_alpha``
are unlabeled in the prediction (the pipeline's own rule) *and* void in the ground truth, so
neither side is scored where the map has no surface. Default: the pipeline's
``semantic.min_alpha``.

**Class mapping.** Ground-truth classes map to the checkpoint's label set by name or through the
scene's labels map (:meth:`~chorus_ros.core.datasets.SceneFolder.class_map_to`); ground truth that
maps to no model class is void.

Metrics (fractions here, percent in reports; definitions also in ``docs/evaluation.md``):

* semantic (:mod:`.semantic`): mIoU (classes in the ground truth or predicted), ``mIoU_present``
  (classes present in the ground truth: the ScanNet protocol), mAcc, oAcc, per-class IoU/Acc,
  foreground variants (background = ``background`` classes);
* panoptic quality over thing classes, cross-view id consistency (:mod:`.instance`); with
  per-Gaussian ground-truth instances also ``PQ_3d`` over the map's Gaussians (3D-only folders);
* per-Gaussian (3D) confusion when the scene has per-Gaussian ground-truth classes;
* objects: ``n_pred_objects`` (decoded objects whose class is a thing) against
  ``n_gt_instances`` (ground-truth instances whose majority class maps to a thing);
* query top-1: for every class present in the ground truth (stuff included: walls and floors are
  objects of the decoder too), the pipeline is queried with
  the class name; it passes when the top object is mostly (> 50 %) made of that class: of its
  Gaussians' ground-truth classes when the scene has them, else of the ground-truth classes of
  the pixels it covers over all views.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from chorus_ros.core.errors import DatasetError, InvalidInputError
from chorus_ros.core.labels import UNLABELED
from chorus_ros.core.metrics.instance import (ConsistencyScores, IdConsistency, PanopticQuality,
                                              PanopticScores)
from chorus_ros.core.metrics.semantic import DEFAULT_BACKGROUND, ConfusionMatrix, SemanticScores

__all__ = ["SceneEvalConfig", "SceneScores", "DatasetEvalResult", "evaluate_scenes", "results_json",
           "JSON_KEYS"]

_GT_NONE = -1  # ground-truth "no instance" after normalising each scene's own none id

JSON_KEYS = ("mIoU", "mIoU_present", "mAcc", "oAcc", "fg_mIoU", "PQ", "id_consistency", "query_top1",
             "n_pred_objects", "n_gt_instances", "per_class_iou", "encode_s", "render_ms_per_view", "scenes")
"""Keys of :func:`results_json` required by issue 7 (more keys follow them)."""


@dataclass
class SceneEvalConfig:
    """How :func:`evaluate_scenes` scores scenes (``chorus-eval`` flags)."""

    min_alpha: float | None = None
    """Shared alpha threshold for prediction and ground truth; None = the pipeline's
    ``semantic.min_alpha``."""
    background: tuple[str, ...] = DEFAULT_BACKGROUND
    """Classes excluded by the foreground metrics and the instance metrics (PQ, id consistency,
    object counts)."""
    chunks: int = 1
    """1: one full encode; >1: the map arrives in this many slabs along x, each followed by an
    incremental encode, views rendered after each (needs per-Gaussian ground truth)."""
    render_backend: str | None = None
    """Renderer backend for the pipeline's views (None: the pipeline's own)."""
    contact_views: int = 2
    """Views per scene kept (downscaled) for the contact sheet."""
    query: bool = True
    """Run query top-1."""
    contact_max_width: int = 320
    """Kept contact views are downscaled to at most this width."""


@dataclass
class SceneScores:
    """Everything measured on one scene (or, for :attr:`DatasetEvalResult.total`, all scenes)."""

    name: str
    semantic: SemanticScores
    panoptic: PanopticScores
    consistency: ConsistencyScores
    semantic_3d: SemanticScores | None
    """Per-Gaussian scores, or None without per-Gaussian ground truth."""
    confusion: np.ndarray
    """[K, K+1] int64 pixel confusion matrix (rows ground truth, last column predicted unlabeled)."""
    query_top1: float
    """Share of queried classes whose top object is mostly that class (NaN: nothing queried)."""
    query_details: dict[str, dict] = field(default_factory=dict)
    """Class name -> {'pass', 'instance_id', 'share', 'by'} ('by': 'gaussians' or 'pixels')."""
    n_pred_objects: int = 0
    n_gt_instances: int = 0
    encode_s: float = 0.0
    """Seconds of encoding (full, or summed over slabs); mean over scenes in the total."""
    render_ms_per_view: float = float("nan")
    n_views: int = 0
    n_gaussians: int = 0
    ignored_properties: list[str] = field(default_factory=list)
    mapping: dict[str, str | None] = field(default_factory=dict)
    """Ground-truth class name -> model class name (None: void)."""
    min_alpha: float = float("nan")
    has_language: bool = True
    confusion_3d: np.ndarray | None = None
    """[K, K+1] int64 per-Gaussian confusion matrix, or None without per-Gaussian ground truth."""
    panoptic_3d: PanopticScores | None = None
    """Panoptic quality over the map's Gaussians (each Gaussian one "pixel": predicted class and
    instance against its ground-truth class and instance; scenes with views or without, e.g.
    3D-only folders), or None without per-Gaussian ground-truth instances."""


@dataclass
class DatasetEvalResult:
    """Per-scene scores plus the pooled total (confusion matrices and instance counts summed)."""

    scenes: list[SceneScores]
    total: SceneScores
    class_names: list[str]
    contact: list[dict] = field(default_factory=list)
    """Kept views: {'scene', 'index', 'rgb', 'gt', 'pred', 'instances'} uint8 [h, w, 3] images."""


def _canon_instances(inst: np.ndarray, none: int) -> np.ndarray:
    i = inst.astype(np.int64)
    return np.where(i == none, _GT_NONE, i)


def _rows_of(scene_ids: torch.Tensor | None, n: int, map_ids: torch.Tensor) -> torch.Tensor:
    """Row in the scene's arrays of each map Gaussian (by id)."""
    if scene_ids is None:
        return map_ids.long()
    sid = scene_ids.long().cpu()
    order = torch.argsort(sid)
    pos = torch.searchsorted(sid[order], map_ids.long().cpu()).clamp_max(max(n - 1, 0))
    rows = order[pos]
    if not bool((sid[rows] == map_ids.long().cpu()).all()):
        raise InvalidInputError("the pipeline's map holds Gaussian ids the scene does not")
    return rows


def _majority_counts(pairs: dict) -> dict:
    return {k: max(v.items(), key=lambda kv: kv[1])[0] for k, v in pairs.items() if v}


class _SceneRun:
    """Accumulators of one scene."""

    def __init__(self, k: int, thing: np.ndarray):
        self.k = k
        self.cm = ConfusionMatrix(k)
        self.pq = PanopticQuality(k, thing, gt_none=_GT_NONE)
        self.ic = IdConsistency(thing, gt_none=_GT_NONE)
        self.pix_obj = defaultdict(lambda: np.zeros(k + 1, np.int64))  # pred instance -> gt class counts
        self.gt_inst_votes = defaultdict(lambda: defaultdict(int))     # gt instance -> class -> pixels
        self.gt_present = np.zeros(k, bool)


def _score_view(run: _SceneRun, v, gs: np.ndarray | None, gi: np.ndarray | None, scene_key, final: bool) -> None:
    pl = v.labels.astype(np.int64)
    pi = v.instances.astype(np.int64)
    if gs is None:
        return
    if final:
        run.cm.update(pl, gs)
        lab = gs != UNLABELED
        run.gt_present[np.unique(gs[lab])] = True
        # pixels of each predicted object by ground-truth class (for pixel-based query top-1)
        has = (pi > 0) & lab
        if has.any():
            ids, inv = np.unique(pi[has], return_inverse=True)
            cnt = np.bincount(inv * (run.k + 1) + gs[has], minlength=len(ids) * (run.k + 1)).reshape(len(ids), -1)
            for j, iid in enumerate(ids.tolist()):
                run.pix_obj[iid] += cnt[j]
    if gi is None:
        return
    if final:
        run.pq.update(pl, pi, gs, gi)
        ok = (gi != _GT_NONE) & (gs != UNLABELED)
        if ok.any():
            pairs, cnt = np.unique(np.stack([gi[ok], gs[ok]], 1), axis=0, return_counts=True)
            for (a, c), n in zip(pairs.tolist(), cnt.tolist()):
                run.gt_inst_votes[a][c] += n
    run.ic.update(gi, pi, gs, scene=scene_key)


def _contact_images(frame, v, gs: np.ndarray | None, gi: np.ndarray | None, labels, max_w: int) -> dict:
    from chorus_ros.core.labels import colorize_instances

    import cv2

    h, w = v.labels.shape
    s = min(1.0, max_w / float(w))
    size = (max(1, round(w * s)), max(1, round(h * s)))

    def small(img):
        return cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_NEAREST)
    rgb = frame.rgb if frame.rgb is not None else v.rgb
    gt = labels.colorize(gs) if gs is not None else np.zeros((h, w, 3), np.uint8)
    return {"rgb": small(rgb), "gt": small(gt), "pred": small(v.color),
            "instances": small(colorize_instances(np.where(v.instances > 0, v.instances, UNLABELED)))}


def evaluate_scenes(pipeline_factory, scenes, cfg: SceneEvalConfig | None = None, *,
                    progress: bool = True) -> DatasetEvalResult:
    """Score a checkpoint's pipeline on scenes.

    Args:
        pipeline_factory: ``f() -> PerceptionPipeline``, called once per scene (fresh map).
        scenes: iterable of :class:`~chorus_ros.core.datasets.SceneFolder` (opened folders or
            in-memory scenes); each needs ground-truth images, per-Gaussian ground truth, or both.
        cfg: scoring settings.
        progress: show tqdm progress bars (stderr) for scenes and views.

    Returns:
        :class:`DatasetEvalResult` (per scene and pooled; see the module docstring).

    Raises:
        DatasetError: a scene that cannot be scored (named), or scenes disagreeing on the label set.
    """
    from tqdm import tqdm

    from chorus_ros.core.pipeline import ATTR_INSTANCE, ATTR_LABEL

    cfg = cfg or SceneEvalConfig()
    scenes = list(scenes)
    if not scenes:
        raise DatasetError("no scenes to evaluate")
    per: list[SceneScores] = []
    contact: list[dict] = []
    names = None
    tot = None
    for scene in tqdm(scenes, desc="scenes", unit="scene", disable=not progress or len(scenes) < 2):
        pipe = pipeline_factory()
        if cfg.min_alpha is not None:
            pipe.config.semantic.min_alpha = float(cfg.min_alpha)
        if cfg.render_backend:
            pipe.config.render.backend = cfg.render_backend
        min_alpha = float(pipe.config.semantic.min_alpha)
        labels = pipe.labels
        if names is None:
            names = list(labels.names)
            k = len(names)
            thing = np.array([not labels.stuff[i] and n not in cfg.background for i, n in enumerate(names)])
            tot = _SceneRun(k, thing)
            tot_cm3 = ConfusionMatrix(k)
            tot_has3d = False
            tot_pq3 = PanopticQuality(k, thing, gt_none=_GT_NONE)
            tot_has_pq3 = False
        elif list(labels.names) != names:
            raise DatasetError(f"scene {scene.name}: the pipeline's label set differs from the first scene's")
        lut = scene.class_map_to(labels)
        mapping = scene.mapped_names(labels)
        run = _SceneRun(k, thing)
        g = scene.gaussians
        if len(g) == 0:
            raise DatasetError(f"scene {scene.name}: the map has no Gaussians")
        has3d = scene.gt_gaussian_labels is not None
        if cfg.chunks > 1 and not (has3d and scene.gt_gaussian_instances is not None):
            raise DatasetError(f"scene {scene.name}: chunks > 1 needs per-Gaussian ground-truth classes and "
                               "instances (to render the ground truth of each partial map)")
        order = torch.argsort(g.means[:, 0], stable=True)
        pieces = [order] if cfg.chunks <= 1 else list(torch.chunk(order, cfg.chunks))
        t_enc, render_ms, n_views = 0.0, [], 0
        has_lang = True
        for pi_, idx in enumerate(pieces):
            pipe.apply_update(g.index(idx), None, full=(pi_ == 0))
            t0 = time.perf_counter()
            pipe.encode()
            t_enc += time.perf_counter() - t0
            has_lang = has_lang and "language" in pipe._heads()
            final = pi_ == len(pieces) - 1
            part = None if final else torch.cat(pieces[: pi_ + 1])
            bar = tqdm(range(len(scene)), desc=f"{scene.name} views" + ("" if final else f" (slab {pi_ + 1})"),
                       unit="view", disable=not progress, leave=False)
            for kk in bar:
                f = scene.frame(kk)
                t0 = time.perf_counter()
                v = pipe.render_view(f.camera)
                if final:
                    render_ms.append(1000.0 * (time.perf_counter() - t0))
                void = v.alpha < min_alpha
                if final:
                    sem, ins = f.semantic, f.instance
                    gi = None if ins is None else _canon_instances(ins, scene.instance_none_id)
                else:
                    sem, gi = _partial_ground_truth(scene, part, f.camera, pipe.config.render)
                gs = None
                if sem is not None:
                    gs = lut[np.clip(sem.astype(np.int64), 0, UNLABELED)]
                    gs = np.where(void, UNLABELED, gs)
                if gi is not None:
                    gi = np.where(void, _GT_NONE, gi)
                _score_view(run, v, gs, gi, scene.name, final)
                if final:
                    n_views += 1
                    if kk < cfg.contact_views:
                        c = _contact_images(f, v, gs, gi, labels, cfg.contact_max_width)
                        contact.append({"scene": scene.name, "index": f.index, **c})
        cm3 = None
        rows = None
        pq3 = None
        if has3d and ATTR_LABEL in pipe.map.attribute_names():
            gl = torch.as_tensor(lut[np.clip(scene.gt_gaussian_labels, 0, UNLABELED)])
            rows = _rows_of(g.ids, len(g), pipe.map.arrays().ids)
            cm3 = ConfusionMatrix(k)
            cm3.update(pipe.map.attribute(ATTR_LABEL).long().cpu(), gl[rows])
            tot_cm3.merge(cm3)
            tot_has3d = True
            if scene.gt_gaussian_instances is not None and ATTR_INSTANCE in pipe.map.attribute_names():
                # per-Gaussian panoptic quality: every Gaussian is one "pixel" of a single view
                pq3 = PanopticQuality(k, thing, gt_none=_GT_NONE)
                gi3 = _canon_instances(np.asarray(scene.gt_gaussian_instances), scene.instance_none_id)
                pq3.update(pipe.map.attribute(ATTR_LABEL).long().cpu(), pipe.map.attribute(ATTR_INSTANCE).long().cpu(),
                           gl[rows], torch.as_tensor(gi3)[rows])
                for a in ("tp", "fp", "fn", "iou_sum"):
                    getattr(tot_pq3, a)[:] += getattr(pq3, a)
                tot_has_pq3 = True
        # objects and instances
        objs = pipe.objects()
        n_pred = sum(1 for o in objs if 0 <= o.label_id < k and thing[o.label_id])
        gt_inst_cls = _gt_instance_classes(scene, lut, run)
        n_gt = sum(1 for c in gt_inst_cls.values() if 0 <= c < k and thing[c])
        # query top-1
        qd: dict[str, dict] = {}
        if cfg.query and has_lang:
            present = run.gt_present.copy()
            if has3d:
                gl_np = lut[np.clip(scene.gt_gaussian_labels, 0, UNLABELED)]
                present = np.zeros(k, bool)
                present[np.unique(gl_np[gl_np != UNLABELED])] = True
            inst_attr = (pipe.map.attribute(ATTR_INSTANCE).long().cpu().numpy()
                         if ATTR_INSTANCE in pipe.map.attribute_names() else None)
            for c in np.nonzero(present)[0].tolist():
                hits = pipe.query(names[c], top_k=1)
                if not hits:
                    qd[names[c]] = {"pass": False, "instance_id": None, "share": 0.0, "by": "none"}
                    continue
                iid = hits[0].record.instance_id
                if has3d and inst_attr is not None:
                    member = rows[torch.as_tensor(inst_attr == iid)].numpy()
                    cls = lut[np.clip(scene.gt_gaussian_labels[member], 0, UNLABELED)]
                    share, by = (float((cls == c).mean()) if cls.size else 0.0), "gaussians"
                else:
                    cnt = run.pix_obj.get(iid)
                    tot_px = 0 if cnt is None else int(cnt[:k].sum())
                    share, by = (float(cnt[c]) / tot_px if tot_px else 0.0), "pixels"
                qd[names[c]] = {"pass": share > 0.5, "instance_id": int(iid), "share": share, "by": by}
        q = float(np.mean([d["pass"] for d in qd.values()])) if qd else float("nan")
        s = SceneScores(scene.name, run.cm.compute(names, cfg.background), run.pq.compute(), run.ic.compute(),
                        cm3.compute(names, cfg.background) if cm3 is not None else None,
                        run.cm.matrix.numpy().copy(), q, qd, n_pred, n_gt, t_enc,
                        float(np.mean(render_ms)) if render_ms else float("nan"), n_views, len(g),
                        list(scene.ignored_properties), mapping, min_alpha, has_lang,
                        cm3.matrix.numpy().copy() if cm3 is not None else None,
                        pq3.compute() if pq3 is not None else None)
        per.append(s)
        # pool
        tot.cm.merge(run.cm)
        for a in ("tp", "fp", "fn", "iou_sum"):
            getattr(tot.pq, a)[:] += getattr(run.pq, a)
        for key, cnts in run.ic.counts.items():
            for b, n in cnts.items():
                tot.ic.counts[key][b] += n
        for key, n in run.ic.totals.items():
            tot.ic.totals[key] += n
    qall = [d["pass"] for s in per for d in s.query_details.values()]
    total = SceneScores(
        "all", tot.cm.compute(names, cfg.background), tot.pq.compute(), tot.ic.compute(),
        tot_cm3.compute(names, cfg.background) if tot_has3d else None, tot.cm.matrix.numpy().copy(),
        float(np.mean(qall)) if qall else float("nan"),
        {f"{s.name}/{c}": d for s in per for c, d in s.query_details.items()},
        sum(s.n_pred_objects for s in per), sum(s.n_gt_instances for s in per),
        float(np.mean([s.encode_s for s in per])),
        _nanmean([s.render_ms_per_view for s in per], [s.n_views for s in per]),
        sum(s.n_views for s in per), int(round(np.mean([s.n_gaussians for s in per]))),
        sorted({p for s in per for p in s.ignored_properties}), {}, per[0].min_alpha,
        all(s.has_language for s in per), tot_cm3.matrix.numpy().copy() if tot_has3d else None,
        tot_pq3.compute() if tot_has_pq3 else None)
    return DatasetEvalResult(per, total, names, contact)


def _nanmean(vals, weights) -> float:
    v = np.asarray(vals, float)
    w = np.asarray(weights, float)
    ok = np.isfinite(v) & (w > 0)
    return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")


def _gt_instance_classes(scene, lut: np.ndarray, run: _SceneRun) -> dict[int, int]:
    """Ground-truth instance -> majority mapped class (per Gaussian when available, else pixels)."""
    if scene.gt_gaussian_instances is not None and scene.gt_gaussian_labels is not None:
        ins = scene.gt_gaussian_instances
        cls = lut[np.clip(scene.gt_gaussian_labels, 0, UNLABELED)]
        ok = (ins != scene.instance_none_id) & (cls != UNLABELED)
        if not ok.any():
            return {}
        pairs, cnt = np.unique(np.stack([ins[ok], cls[ok]], 1), axis=0, return_counts=True)
        votes: dict = defaultdict(dict)
        for (a, c), n in zip(pairs.tolist(), cnt.tolist()):
            votes[a][c] = n
        return _majority_counts(votes)
    return _majority_counts(run.gt_inst_votes)


def _partial_ground_truth(scene, part: torch.Tensor, camera, settings):
    """Ground truth of the partial map ``part`` (rows of the scene), rendered from its labels."""
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth

    g = scene.gaussians
    sub = g.index(part)
    labelled = GaussianArrays(sub.means, sub.sh, sub.opacities, sub.log_scales, sub.quats, sub.ids,
                              {"label": torch.as_tensor(scene.gt_gaussian_labels)[part],
                               "instance": torch.as_tensor(scene.gt_gaussian_instances)[part]})
    gt = render_ground_truth(labelled, camera, settings, min_alpha=0.0)
    sem = gt.semantic.numpy()
    return sem, _canon_instances(gt.instance.numpy(), scene.instance_none_id)


def _pct(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(100.0 * float(x), 2)


def _scores_json(s: SceneScores, names: list[str]) -> dict:
    sem = s.semantic
    d = {
        "mIoU": _pct(sem.miou), "mIoU_present": _pct(sem.miou_present), "mAcc": _pct(sem.macc),
        "oAcc": _pct(sem.oacc), "fg_mIoU": _pct(sem.fg_miou), "PQ": _pct(s.panoptic.pq),
        "id_consistency": _pct(s.consistency.object_mean), "query_top1": _pct(s.query_top1),
        "n_pred_objects": int(s.n_pred_objects), "n_gt_instances": int(s.n_gt_instances),
        "per_class_iou": {n: _pct(v) for n, v in zip(names, sem.iou) if math.isfinite(v)},
        "encode_s": round(float(s.encode_s), 4),
        "render_ms_per_view": None if not math.isfinite(s.render_ms_per_view) else round(s.render_ms_per_view, 2),
    }
    d.update({
        "fg_mAcc": _pct(sem.fg_macc), "SQ": _pct(s.panoptic.sq), "RQ": _pct(s.panoptic.rq),
        "id_consistency_px": _pct(s.consistency.pixel_weighted),
        "mIoU_3d": _pct(s.semantic_3d.miou) if s.semantic_3d is not None else None,
        "mIoU_3d_present": _pct(s.semantic_3d.miou_present) if s.semantic_3d is not None else None,
        "PQ_3d": _pct(s.panoptic_3d.pq) if s.panoptic_3d is not None else None,
        "SQ_3d": _pct(s.panoptic_3d.sq) if s.panoptic_3d is not None else None,
        "RQ_3d": _pct(s.panoptic_3d.rq) if s.panoptic_3d is not None else None,
        "per_class_acc": {n: _pct(v) for n, v in zip(names, sem.acc) if math.isfinite(v)},
        "n_views": int(s.n_views), "n_gaussians": int(s.n_gaussians), "labelled_pixels": int(sem.num_pixels),
        "min_alpha": s.min_alpha, "ignored_properties": list(s.ignored_properties),
        "query": {c: {"pass": bool(q["pass"]), "share": _pct(q["share"]), "by": q["by"]}
                  for c, q in s.query_details.items()},
    })
    return d


def results_json(result: DatasetEvalResult) -> dict:
    """One JSON-able object: the issue's keys (values in percent; counts and times as numbers;
    undefined values null) for all scenes pooled, ``scenes`` holding per-scene copies keyed by
    scene name, then extra keys (SQ, RQ, fg_mAcc, 3D mIoU, per-class accuracy, query details...)."""
    out = _scores_json(result.total, result.class_names)
    scenes: dict[str, dict] = {}
    for s in result.scenes:
        key, n = s.name, 2
        while key in scenes:
            key, n = f"{s.name}#{n}", n + 1
        d = _scores_json(s, result.class_names)
        d["mapping"] = s.mapping
        scenes[key] = d
    ordered = {k: out[k] for k in JSON_KEYS if k != "scenes"}
    ordered["scenes"] = scenes
    ordered.update({k: v for k, v in out.items() if k not in ordered})
    return ordered
