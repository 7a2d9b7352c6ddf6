"""PNG plots of an evaluation, drawn with OpenCV (no plotting library needed).

* :func:`confusion_png`: row-normalised confusion matrix (rows ground truth, columns prediction,
  last column "unlabeled"), classes that occur in the ground truth or the prediction only.
* :func:`iou_bars_png`: per-class IoU as horizontal bars, with the value and the mean.
* :func:`contact_sheet_png`: rows of rgb | ground truth | prediction | instances.
* :func:`write_plots`: all three for a :class:`~chorus_ros.core.metrics.scenes.DatasetEvalResult`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["confusion_png", "iou_bars_png", "contact_sheet_png", "write_plots"]

_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)


def _text(img, s: str, org, scale=0.4, color=_BLACK, thick=1) -> None:
    import cv2

    cv2.putText(img, s, (int(org[0]), int(org[1])), _FONT, scale, color, thick, cv2.LINE_AA)


def _text_width(s: str, scale=0.4) -> int:
    import cv2

    return cv2.getTextSize(s, _FONT, scale, 1)[0][0]


def _save(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {path}")
    return path


def confusion_png(path, matrix: np.ndarray, names: list[str],
                  title: str = "confusion: rows ground truth, columns prediction (% of row)") -> Path:
    """Write the ``[K, K+1]`` confusion matrix (rows ground truth) as a heat map; returns the path."""
    m = np.asarray(matrix, dtype=np.float64)
    k = len(names)
    keep = np.nonzero((m[:, :k].sum(1) > 0) | (m[:, :k].sum(0) > 0))[0]
    if keep.size == 0:
        keep = np.arange(k)
    rows = m[keep][:, list(keep) + [k]]
    norm = rows / np.maximum(rows.sum(1, keepdims=True), 1)
    cols = [names[i] for i in keep] + ["(unlabeled)"]
    cell, scale = 22, 0.38
    left = max(_text_width(n, scale) for n in cols) + 10
    top = left + 24
    h, w = top + cell * len(keep) + 10, left + cell * len(cols) + 10
    img = np.full((h, w, 3), 255, np.uint8)
    _text(img, title, (6, 16), 0.45)
    for i in range(len(keep)):
        for j in range(len(cols)):
            v = float(norm[i, j])
            c = int(round(255 * (1 - v)))
            col = (255, c, c) if i != j else (c, 200 + c // 5, c)  # RGB: diagonal green, errors red
            y0, x0 = top + i * cell, left + j * cell
            img[y0:y0 + cell - 1, x0:x0 + cell - 1] = col
            if v >= 0.05:
                _text(img, f"{int(round(100 * v))}", (x0 + 2, y0 + cell - 7), 0.3,
                      _WHITE if v > 0.6 else _BLACK)
        _text(img, cols[i], (left - 6 - _text_width(cols[i], scale), top + i * cell + cell - 7), scale)
    # column labels: draw horizontally on a strip, then rotate it
    strip = np.full((cell * len(cols), left + 10, 3), 255, np.uint8)
    for j, n in enumerate(cols):
        _text(strip, n, (left + 4 - _text_width(n, scale), j * cell + cell - 7), scale)
    rot = np.rot90(strip, 1)  # text reads bottom-to-top
    hh = min(rot.shape[0], top - 22)
    img[top - hh:top, left:left + rot.shape[1]] = rot[rot.shape[0] - hh:, :w - left]
    return _save(path, img)


def iou_bars_png(path, names: list[str], iou: np.ndarray, title: str = "per-class IoU (%)") -> Path:
    """Horizontal bars of per-class IoU (classes with a defined IoU); returns the path."""
    vals = [(n, float(v)) for n, v in zip(names, iou) if math.isfinite(float(v))]
    scale, bar_h, width = 0.4, 16, 300
    left = max([_text_width(n, scale) for n, _ in vals] + [40]) + 10
    h, w = 34 + bar_h * max(1, len(vals)) + 22, left + width + 60
    img = np.full((h, w, 3), 255, np.uint8)
    mean = float(np.mean([v for _, v in vals])) if vals else float("nan")
    _text(img, f"{title}; mean {100 * mean:.1f}" if vals else f"{title}: none", (6, 16), 0.45)
    for i, (n, v) in enumerate(vals):
        y = 28 + i * bar_h
        _text(img, n, (left - 6 - _text_width(n, scale), y + bar_h - 4), scale)
        x1 = left + int(round(width * max(0.0, min(1.0, v))))
        img[y + 2:y + bar_h - 2, left:max(left + 1, x1)] = (70, 130, 180)
        _text(img, f"{100 * v:.1f}", (x1 + 4, y + bar_h - 4), 0.35)
    for t in (0.0, 0.5, 1.0):
        x = left + int(width * t)
        img[24:h - 18, x] = (180, 180, 180)
        _text(img, f"{int(100 * t)}", (x - 6, h - 6), 0.35)
    return _save(path, img)


def contact_sheet_png(path, views: list[dict], title: str = "") -> Path:
    """Rows of ``rgb | gt | pred | instances`` (each ``[h, w, 3]`` uint8, same size per row)."""
    import cv2

    if not views:
        raise ValueError("no views for the contact sheet")
    w = max(160, max(v["rgb"].shape[1] for v in views))  # tiny views are enlarged (nearest)
    pad, head = 4, 18
    rows = []
    for v in views:
        tiles = []
        for key in ("rgb", "gt", "pred", "instances"):
            t = v[key]
            if t.shape[1] != w:
                t = cv2.resize(t, (w, round(t.shape[0] * w / t.shape[1])), interpolation=cv2.INTER_NEAREST)
            tiles.append(t)
        hh = max(t.shape[0] for t in tiles)
        row = np.full((hh + head, 4 * w + 5 * pad, 3), 255, np.uint8)
        _text(row, f"{v.get('scene', '')} frame {v.get('index', '')}", (pad, 13), 0.4)
        for j, t in enumerate(tiles):
            x = pad + j * (w + pad)
            row[head:head + t.shape[0], x:x + w] = t
        rows.append(row)
    cap = np.full((20, rows[0].shape[1], 3), 255, np.uint8)
    for j, n in enumerate(("rgb", "ground truth", "prediction", "instances")):
        _text(cap, n, (pad + j * (w + pad), 14), 0.45)
    if title:
        _text(cap, title, (pad + 3 * (w + pad) + _text_width("instances", 0.45) + 12, 14), 0.35)
    width = max(r.shape[1] for r in rows)
    img = np.concatenate([cap] + [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                                  for r in rows], 0)
    return _save(path, img)


def write_plots(result, out_dir, *, prefix: str = "", max_views: int = 6) -> dict[str, Path]:
    """The confusion matrix, IoU bars and contact sheet of a DatasetEvalResult into ``out_dir``
    (pixel scores; per-Gaussian scores when no view was scored).

    Returns ``{'confusion': path, 'iou': path, 'contact': path}`` (contact only with kept views).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = result.total
    if t.confusion.sum() == 0 and t.confusion_3d is not None:  # no views: plot the per-Gaussian scores
        paths = {"confusion": confusion_png(out / f"{prefix}confusion.png", t.confusion_3d, result.class_names,
                                            "per-Gaussian confusion: rows ground truth, columns prediction (% of row)"),
                 "iou": iou_bars_png(out / f"{prefix}per_class_iou.png", result.class_names, t.semantic_3d.iou,
                                     "per-class IoU of Gaussians (%)")}
    else:
        paths = {"confusion": confusion_png(out / f"{prefix}confusion.png", t.confusion, result.class_names),
                 "iou": iou_bars_png(out / f"{prefix}per_class_iou.png", result.class_names, t.semantic.iou)}
    views = result.contact[:max_views]
    if views:
        paths["contact"] = contact_sheet_png(out / f"{prefix}contact_sheet.png", views)
    return paths
