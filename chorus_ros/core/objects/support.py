"""Query scores that account for an object's support (how many Gaussians hold it up).

A language query compares the text embedding with each object's mean language embedding. A
fragment of a few Gaussians has a noisy mean that can match any text almost perfectly, so the
raw cosine lets a 15-Gaussian splinter outrank a whole chair. The ranked score is therefore

    score = cos * w(n)            (cos > 0; negative cosines are kept as they are)
    w(n)  = min(1, n / (2 * half * ref))

with ``n`` the object's Gaussian count and ``ref`` the median count of the objects being ranked
(so the weight does not depend on the map's density: a map ten times denser has ten times the
counts everywhere). The weight saturates: every object with at least ``2 * half`` times the
median support (a tenth of it with the default ``half = 0.05``) keeps its raw cosine, so genuinely
small objects (a lamp beside a sofa) are ranked by their match alone; below that the score falls
linearly, to 1/2 at ``half`` x the median and 0.25 for a fragment at a fortieth of it. (An earlier
smooth weight ``n / (n + half * ref)`` also demoted lamps below sofas whose cosine was 2 % lower.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chorus_ros.core.errors import InvalidInputError

__all__ = ["SupportConfig", "support_weight", "support_confidence", "support_scores"]


@dataclass
class SupportConfig:
    """How object support weighs into query scores."""

    half: float = 0.05
    """Support weight is 1 from ``2 * half`` x the median object Gaussian count up, 1/2 at ``half`` x
    the median, falling linearly to 0 below; 0 disables it."""
    min_reference: float = 8.0
    """Lower bound of the reference count (median), so a map of only fragments is not rescued."""

    def validate(self) -> None:
        if not self.half >= 0 or not self.min_reference > 0:
            raise InvalidInputError(f"support half must be >= 0 and min_reference > 0, got {self}")


def _counts_and_scale(counts, config: SupportConfig | None, reference: float | None
                      ) -> tuple[np.ndarray, float | None]:
    """Validated ``[M]`` counts and ``half * ref`` (None when support is switched off or M = 0)."""
    c = config or SupportConfig()
    c.validate()
    n = np.asarray(counts, dtype=np.float64).reshape(-1)
    if n.size and (not np.isfinite(n).all() or (n < 0).any()):
        raise InvalidInputError("object Gaussian counts must be finite and >= 0")
    if c.half == 0 or n.size == 0:
        return n, None
    ref = max(float(np.median(n)) if reference is None else float(reference), c.min_reference)
    return n, c.half * ref


def support_weight(counts, config: SupportConfig | None = None, reference: float | None = None) -> np.ndarray:
    """``[M]`` float32 weights in [0, 1] of objects with ``counts`` Gaussians (``[M]`` ints).

    ``reference`` defaults to the median of ``counts`` (bounded below by ``config.min_reference``).
    """
    n, scale = _counts_and_scale(counts, config, reference)
    if scale is None:
        return np.ones(n.shape, np.float32)
    return np.minimum(1.0, n / (2.0 * scale)).astype(np.float32)


def support_confidence(counts, config: SupportConfig | None = None,
                       reference: float | None = None) -> np.ndarray:
    """``[M]`` float32 confidences in (0, 1) from object support: the smooth ``n / (n + half * ref)``.

    Unlike :func:`support_weight` (which ranks queries and saturates, so that genuinely small
    objects are not demoted), this keeps growing with support: an object record's confidence
    says how much of the map holds it up, relative to the median object.
    """
    n, scale = _counts_and_scale(counts, config, reference)
    if scale is None:
        return np.ones(n.shape, np.float32)
    return (n / (n + scale)).astype(np.float32)


def support_scores(cosine, counts, config: SupportConfig | None = None,
                   reference: float | None = None) -> np.ndarray:
    """``[M]`` support-aware query scores from ``cosine`` ([M], in [-1, 1]) and ``counts`` ([M])."""
    cos = np.asarray(cosine, dtype=np.float32).reshape(-1)
    w = support_weight(counts, config, reference)
    if w.shape != cos.shape:
        raise InvalidInputError(f"cosine {cos.shape} and counts {w.shape} must have the same length")
    return np.where(cos > 0, cos * w, cos).astype(np.float32)
