"""Semantic segmentation metrics from an accumulated confusion matrix.

Definitions (``C`` = confusion matrix, rows = ground truth class, columns = prediction; pixels
or points whose ground truth is ``ignore_index`` (65535) are skipped; a prediction of
``ignore_index`` on a labelled pixel goes to an extra "unlabeled" column, so it counts as a miss
of the true class and as nobody's false positive):

* ``IoU_k = C[k,k] / (sum_j C[k,j] + sum_i C[i,k] - C[k,k])`` (TP / (TP + FN + FP)); undefined
  (NaN) when class k neither occurs in the ground truth nor is predicted.
* ``Acc_k = C[k,k] / sum_j C[k,j]`` (recall); NaN when class k does not occur in the ground truth.
* ``mIoU`` / ``mAcc``: mean over the classes where the value is defined (for mIoU: classes
  that occur in the ground truth or are predicted).
* ``mIoU_present``: mean IoU over the classes that occur in the ground truth only (the ScanNet
  protocol); a class predicted but absent from the ground truth does not enter the mean (its
  false positives still lower the IoU of the true classes they were taken from).
* ``oAcc = trace(C) / (number of labelled ground-truth pixels)``.
* Foreground variants (``fg_miou``, ``fg_macc``): the same means over classes whose names are
  not in ``background`` (default wall, floor, ceiling), as in Chorus' foreground mIoU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.labels import UNLABELED

__all__ = ["ConfusionMatrix", "SemanticScores", "DEFAULT_BACKGROUND"]

DEFAULT_BACKGROUND = ("wall", "floor", "ceiling")
"""Class names excluded by the foreground metrics."""


def _flat(x) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).long().reshape(-1).cpu()


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


@dataclass
class SemanticScores:
    """Semantic metrics, all fractions in [0, 1] (NaN where undefined)."""

    miou: float
    macc: float
    oacc: float
    fg_miou: float
    fg_macc: float
    iou: np.ndarray
    """[K] per-class IoU."""
    acc: np.ndarray
    """[K] per-class accuracy (recall)."""
    class_names: list[str]
    num_pixels: int
    """Labelled ground-truth pixels counted."""
    miou_present: float = float("nan")
    """Mean IoU over the classes present in the ground truth (ScanNet protocol)."""
    present: np.ndarray | None = None
    """[K] bool, class occurs in the ground truth."""


class ConfusionMatrix:
    """Accumulates a ``[K, K+1]`` confusion matrix (last column: predicted unlabeled)."""

    def __init__(self, num_classes: int, ignore_index: int = UNLABELED) -> None:
        if num_classes < 1:
            raise InvalidInputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64)

    def update(self, pred, gt) -> None:
        """Add one image / point set. ``pred`` and ``gt``: same-shape integer class ids."""
        pred, gt = _flat(pred), _flat(gt)
        if pred.shape != gt.shape:
            raise InvalidInputError(f"prediction has {pred.numel()} elements, ground truth {gt.numel()}")
        keep = gt != self.ignore_index
        gt, pred = gt[keep], pred[keep]
        k = self.num_classes
        if gt.numel() and (gt.min() < 0 or gt.max() >= k):
            raise InvalidInputError(f"ground-truth class ids must be in [0, {k}) or {self.ignore_index}, "
                                    f"got range [{int(gt.min())}, {int(gt.max())}]")
        bad_pred = (pred < 0) | (pred >= k)
        if bool((bad_pred & (pred != self.ignore_index)).any()):
            vals = torch.unique(pred[bad_pred & (pred != self.ignore_index)])[:8].tolist()
            raise InvalidInputError(f"predicted class ids {vals} are neither in [0, {k}) nor {self.ignore_index}")
        pred = torch.where(bad_pred, torch.full_like(pred, k), pred)
        self.matrix += torch.bincount(gt * (k + 1) + pred, minlength=k * (k + 1)).reshape(k, k + 1)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix

    def compute(self, class_names: list[str] | None = None,
                background: tuple[str, ...] = DEFAULT_BACKGROUND) -> SemanticScores:
        """Metrics of everything accumulated so far (see the module docstring)."""
        k = self.num_classes
        names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        if len(names) != k:
            raise InvalidInputError(f"{len(names)} class names for {k} classes")
        c = self.matrix.double().numpy()
        tp = np.diag(c[:, :k])
        gt_count = c.sum(1)
        pred_count = c[:, :k].sum(0)
        union = gt_count + pred_count - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt_count > 0, tp / gt_count, np.nan)
        fg = np.array([n not in set(background) for n in names])
        total = gt_count.sum()
        return SemanticScores(
            miou=_nanmean(iou), macc=_nanmean(acc),
            oacc=float(tp.sum() / total) if total > 0 else float("nan"),
            fg_miou=_nanmean(iou[fg]), fg_macc=_nanmean(acc[fg]),
            iou=iou, acc=acc, class_names=names, num_pixels=int(total),
            miou_present=_nanmean(iou[gt_count > 0]), present=gt_count > 0)
