"""Exact nearest-neighbour distances by brute force, in bounded memory (pure torch).

Used where a map's sample spacing is measured: the sizes given to plain point clouds
(:mod:`chorus_ros.core.plain_cloud`) and the instance decoder's spacing
(:func:`chorus_ros.core.decode.instances.median_knn_distance`). Distances are computed from
coordinate differences, never with the ``|a|^2 + |b|^2 - 2ab`` shortcut: that loses a
centimetre spacing to float32 rounding on maps far from the origin (a SLAM world frame), and
it makes a pair's distance depend on which other points share the call.
"""
from __future__ import annotations

import math

import torch

__all__ = ["pairwise_distances", "knn_distances"]


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[A, B]`` Euclidean distances between the rows of ``a`` ``[A, 3]`` and ``b`` ``[B, 3]``
    (same units as the inputs), from differences: a pair's value never depends on the other rows."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_distances(q: torch.Tensor, p: torch.Tensor, k: int, chunk: int = 16384) -> torch.Tensor:
    """``[Q, k]`` ascending distances from each row of ``q`` ``[Q, 3]`` to its ``k`` nearest rows
    of ``p`` ``[P, 3]`` (a query that is itself a row of ``p`` finds itself at distance 0); ``inf``
    where ``p`` has fewer than ``k`` rows. A running top-k over chunks of ``chunk`` rows of ``p``
    bounds the memory to about ``Q x (k + chunk)`` values."""
    best = torch.full((q.shape[0], k), math.inf, dtype=q.dtype, device=q.device)
    for j in range(0, p.shape[0], chunk):
        d = torch.cat([best, pairwise_distances(q, p[j:j + chunk])], 1)
        best = d.topk(k, dim=1, largest=False, sorted=True).values
    return best
