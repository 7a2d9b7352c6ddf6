"""Instance metrics: panoptic quality over thing classes, and cross-view id consistency.

**Panoptic quality** (Kirillov et al., CVPR 2019), evaluated per view and accumulated over all
views, for *thing* classes only:

* Ground-truth segments: the pixels of each ground-truth instance id (``gt_instance`` values
  other than ``gt_none``) whose class (majority ``gt_semantic``) is a thing.
* Predicted segments: the pixels of each predicted instance id (``pred_instance`` values other
  than ``pred_none``, default 0); a segment's class is the majority ``pred_semantic`` of its
  pixels (unlabeled pixels do not vote); segments whose class is not a thing are dropped.
* Void: pixels whose ground-truth class is unlabeled (65535).
* A ground-truth segment ``g`` and a predicted segment ``p`` of the same class match when
  ``IoU = |g ∩ p| / (|g ∪ p| - |p ∩ void|) > 0.5`` (unique by construction).
* Per class c: ``TP_c`` matches, ``FN_c`` unmatched ground-truth segments, ``FP_c`` unmatched
  predicted segments except those with more than half of their pixels in void.
  ``PQ_c = sum_TP IoU / (TP_c + FP_c/2 + FN_c/2)``, ``SQ_c = sum_TP IoU / TP_c``,
  ``RQ_c = TP_c / (TP_c + FP_c/2 + FN_c/2)``.
* ``PQ``, ``SQ``, ``RQ``: means over thing classes with ``TP + FP + FN > 0`` (SQ over classes
  with TP > 0).

**Cross-view id consistency**: for every ground-truth object (thing instances by default), over
all views of its scene, collect the predicted instance ids of all its pixels. Its *majority
id* is the most frequent predicted id other than ``pred_none``; its consistency is the number of
its pixels carrying that id divided by all its pixels (pixels with no predicted instance count
against it). ``object_mean`` averages over objects with at least ``min_pixels`` pixels (every
object counts equally); ``pixel_weighted`` is the ratio of the summed counts (large objects
weigh more). A constant prediction scores 1 here; read it beside PQ.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.labels import UNLABELED

__all__ = ["PanopticQuality", "PanopticScores", "IdConsistency", "ConsistencyScores"]


def _t(x) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).long().reshape(-1).cpu()


def _segments(inst: torch.Tensor, sem: torch.Tensor, none: int, num_classes: int):
    """(ids [S], class [S] majority of ``sem`` (UNLABELED ignored; -1 if none), area [S], seg index [P])."""
    valid = inst != none
    ids, seg = torch.unique(inst[valid], return_inverse=True)
    s = ids.numel()
    area = torch.bincount(seg, minlength=s)
    sv = sem[valid]
    voting = (sv >= 0) & (sv < num_classes)
    votes = torch.bincount(seg[voting] * num_classes + sv[voting], minlength=s * num_classes).reshape(s, num_classes)
    cls = torch.where(votes.sum(1) > 0, votes.argmax(1), torch.full((s,), -1, dtype=torch.long))
    full_seg = torch.full_like(inst, -1)
    full_seg[valid] = seg
    return ids, cls, area, full_seg


@dataclass
class PanopticScores:
    """Panoptic quality over thing classes, fractions in [0, 1] (NaN where undefined)."""

    pq: float
    sq: float
    rq: float
    per_class_pq: np.ndarray
    """[K] (NaN for stuff classes and classes never seen)."""
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray


class PanopticQuality:
    """Accumulates PQ/SQ/RQ over views (see the module docstring).

    Args:
        num_classes: K.
        thing: ``[K]`` bool, True for thing classes (e.g. ``~LabelSet.stuff``).
        iou_threshold: matching threshold (0.5 makes matches unique).
        gt_none / pred_none: the "no instance" value in ground-truth / predicted instance images.
    """

    def __init__(self, num_classes: int, thing, iou_threshold: float = 0.5, gt_none: int = UNLABELED,
                 pred_none: int = 0) -> None:
        self.k = int(num_classes)
        self.thing = np.asarray(thing, dtype=bool).reshape(-1)
        if self.thing.shape != (self.k,):
            raise InvalidInputError(f"thing mask must have {self.k} entries, got {self.thing.shape}")
        if not 0.5 <= iou_threshold < 1:
            raise InvalidInputError(f"iou_threshold must be in [0.5, 1), got {iou_threshold}")
        self.thr = float(iou_threshold)
        self.gt_none, self.pred_none = int(gt_none), int(pred_none)
        self.tp = np.zeros(self.k, np.int64)
        self.fp = np.zeros(self.k, np.int64)
        self.fn = np.zeros(self.k, np.int64)
        self.iou_sum = np.zeros(self.k, np.float64)

    def update(self, pred_semantic, pred_instance, gt_semantic, gt_instance) -> None:
        """Add one view (all four images the same shape)."""
        ps, pi, gs, gi = _t(pred_semantic), _t(pred_instance), _t(gt_semantic), _t(gt_instance)
        if not (ps.shape == pi.shape == gs.shape == gi.shape):
            raise InvalidInputError("panoptic quality needs four images of the same size")
        thing = torch.as_tensor(self.thing)
        g_ids, g_cls, g_area, g_seg = _segments(gi, gs, self.gt_none, self.k)
        p_ids, p_cls, p_area, p_seg = _segments(pi, ps, self.pred_none, self.k)
        g_ok = (g_cls >= 0) & thing[g_cls.clamp_min(0)]
        p_ok = (p_cls >= 0) & thing[p_cls.clamp_min(0)]
        void = gs == UNLABELED
        p_void = torch.bincount(p_seg[void & (p_seg >= 0)], minlength=p_ids.numel())
        both = (g_seg >= 0) & (p_seg >= 0)
        ng, npd = g_ids.numel(), p_ids.numel()
        inter = torch.bincount(g_seg[both] * max(npd, 1) + p_seg[both], minlength=ng * npd).reshape(ng, npd)
        gg, pp = torch.nonzero(inter, as_tuple=True)
        g_matched = torch.zeros(ng, dtype=torch.bool)
        p_matched = torch.zeros(npd, dtype=torch.bool)
        for a, b in zip(gg.tolist(), pp.tolist()):
            if not (g_ok[a] and p_ok[b]) or g_cls[a] != p_cls[b]:
                continue
            i = float(inter[a, b])
            union = float(g_area[a] + p_area[b]) - i - float(p_void[b])
            iou = i / union if union > 0 else 0.0
            if iou > self.thr:
                c = int(g_cls[a])
                self.tp[c] += 1
                self.iou_sum[c] += iou
                g_matched[a] = True
                p_matched[b] = True
        for a in torch.nonzero(g_ok & ~g_matched).squeeze(1).tolist():
            self.fn[int(g_cls[a])] += 1
        for b in torch.nonzero(p_ok & ~p_matched).squeeze(1).tolist():
            if float(p_void[b]) / float(p_area[b]) > 0.5:
                continue
            self.fp[int(p_cls[b])] += 1

    def compute(self) -> PanopticScores:
        den = self.tp + 0.5 * self.fp + 0.5 * self.fn
        seen = self.thing & (self.tp + self.fp + self.fn > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            pq_c = np.where(seen, self.iou_sum / np.where(den > 0, den, 1), np.nan)
            rq_c = np.where(seen, self.tp / np.where(den > 0, den, 1), np.nan)
            sq_c = np.where(self.thing & (self.tp > 0), self.iou_sum / np.maximum(self.tp, 1), np.nan)

        def m(x):
            x = x[np.isfinite(x)]
            return float(x.mean()) if x.size else float("nan")
        return PanopticScores(m(pq_c), m(sq_c), m(rq_c), pq_c, self.tp.copy(), self.fp.copy(), self.fn.copy())


@dataclass
class ConsistencyScores:
    """Cross-view id consistency, fractions in [0, 1]."""

    object_mean: float
    """Mean over objects of (pixels with the object's majority id) / (object's pixels)."""
    pixel_weighted: float
    """Sum over objects of majority-id pixels / sum of object pixels."""
    num_objects: int


class IdConsistency:
    """Accumulates, per (scene, ground-truth object), counts of predicted ids over views.

    Args:
        thing: optional ``[K]`` bool; when given with ``gt_semantic`` in :meth:`update`, only
            pixels of thing classes are counted (stuff is excluded).
        gt_none / pred_none: "no instance" values.
        min_pixels: objects with fewer pixels over all views are not averaged.
    """

    def __init__(self, thing=None, gt_none: int = UNLABELED, pred_none: int = 0, min_pixels: int = 1) -> None:
        self.thing = None if thing is None else torch.as_tensor(np.asarray(thing, dtype=bool))
        self.gt_none, self.pred_none, self.min_pixels = int(gt_none), int(pred_none), int(min_pixels)
        self.counts: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.totals: dict[tuple, int] = defaultdict(int)

    def update(self, gt_instance, pred_instance, gt_semantic=None, scene=0) -> None:
        """Add one view of ``scene`` (any hashable key)."""
        gi, pi = _t(gt_instance), _t(pred_instance)
        if gi.shape != pi.shape:
            raise InvalidInputError("id consistency needs equally sized instance images")
        keep = gi != self.gt_none
        if self.thing is not None and gt_semantic is not None:
            gs = _t(gt_semantic)
            ok = (gs >= 0) & (gs < self.thing.numel())
            keep &= ok & self.thing[gs.clamp(0, self.thing.numel() - 1)]
        g, p = gi[keep], pi[keep]
        ug, ng = torch.unique(g, return_counts=True)
        for a, n in zip(ug.tolist(), ng.tolist()):
            self.totals[(scene, a)] += n
        has = p != self.pred_none
        if bool(has.any()):
            pairs, cnt = torch.unique(torch.stack([g[has], p[has]], 1), dim=0, return_counts=True)
            for (a, b), n in zip(pairs.tolist(), cnt.tolist()):
                self.counts[(scene, a)][b] += n

    def compute(self) -> ConsistencyScores:
        per, num, den = [], 0, 0
        for key, total in self.totals.items():
            if total < self.min_pixels:
                continue
            best = max(self.counts[key].values(), default=0)
            per.append(best / total)
            num += best
            den += total
        return ConsistencyScores(float(np.mean(per)) if per else float("nan"),
                                 num / den if den else float("nan"), len(per))
