"""Scores of unsupervised object masks against ground-truth segments (no training use)."""
from __future__ import annotations

import torch

from chorus_ros.core.errors import InvalidInputError

__all__ = ["adjusted_rand_index"]


def adjusted_rand_index(true: torch.Tensor, pred: torch.Tensor, ignore: torch.Tensor | None = None) -> float:
    """Adjusted Rand index (Hubert & Arabie) of two labelings of the same pixels.

    Args:
        true: ``[...]`` int ground-truth segment ids.
        pred: ``[...]`` int predicted segment ids (same shape).
        ignore: optional ``[...]`` bool, True pixels are left out (e.g. background for FG-ARI).

    Returns:
        ARI in [-1, 1] (1: identical partitions up to renaming); 1.0 when both are a single segment.
    """
    if true.shape != pred.shape:
        raise InvalidInputError(f"ARI needs labelings of one shape, got {tuple(true.shape)} and {tuple(pred.shape)}")
    t, p = true.reshape(-1).long(), pred.reshape(-1).long()
    if ignore is not None:
        keep = ~ignore.reshape(-1).bool()
        t, p = t[keep], p[keep]
    n = t.numel()
    if n < 2:
        return 1.0
    _, ti = torch.unique(t, return_inverse=True)
    _, pi = torch.unique(p, return_inverse=True)
    kt, kp = int(ti.max()) + 1, int(pi.max()) + 1
    table = torch.zeros(kt * kp, dtype=torch.float64).index_add_(
        0, ti * kp + pi, torch.ones(n, dtype=torch.float64)).reshape(kt, kp)

    def comb2(x):
        return (x * (x - 1) / 2).sum()
    index = comb2(table)
    a, b = comb2(table.sum(1)), comb2(table.sum(0))
    total = n * (n - 1) / 2
    expected = a * b / total
    mx = (a + b) / 2
    if float(mx - expected) == 0:
        return 1.0
    return float((index - expected) / (mx - expected))
