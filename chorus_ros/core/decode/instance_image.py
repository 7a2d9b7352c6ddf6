"""Per-view instance images by blending weight, restricted to the pixel's class.

The default instance image gives a pixel the object of its strongest Gaussian (the renderer's top
index). A faint floater in front of an object is often that Gaussian, and then the floater's
object takes the pixel, although the composited class scores still see the object behind it.
:func:`weighted_instance_image` instead gives a pixel, among the objects whose Gaussians carry the
pixel's class, the one with the most blending weight there.

Per-object weights are not rendered one channel per object (a map holds hundreds). Every object id
gets a fixed pseudo-random unit code of :data:`CODE_DIM` channels (:func:`instance_codes`). Each
Gaussian carries its object's code, and one render pass composites them: a pixel's vector is
``sum_i w_i code(obj_i)``. Its dot product with ``code(o)`` is object ``o``'s weight at the pixel,
plus cross-talk from the other objects there, which is small for random codes among the few
candidates of one class. :func:`exact_weighted_instance_image` is the slow reference (one-hot
channels per candidate object), which the tests hold the fast path to.
"""
from __future__ import annotations

import torch

from chorus_ros.core.labels import UNLABELED

__all__ = ["CODE_DIM", "INSTANCE_IMAGE_MODES", "instance_codes", "gaussian_instance_codes", "class_object_pairs",
           "weighted_instance_image", "exact_weighted_instance_image"]

CODE_DIM = 16
"""Channels of an object's code (one render pass)."""

INSTANCE_IMAGE_MODES = ("top", "weighted")
"""``per_view.instance_image`` choices."""


def instance_codes(ids: torch.Tensor, dim: int = CODE_DIM) -> torch.Tensor:
    """``[M, dim]`` float32 unit codes of object ids ``[M]`` int64: a fixed function of the id, so
    the same object has the same code in every view, process and map update."""
    ids = ids.reshape(-1).to(torch.int64)
    out = torch.empty(len(ids), dim)
    for k, i in enumerate(ids.tolist()):
        g = torch.Generator().manual_seed((int(i) * 2654435761 + 97) % (2 ** 62))
        out[k] = torch.randn(dim, generator=g)
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)


def gaussian_instance_codes(inst: torch.Tensor, dim: int = CODE_DIM) -> torch.Tensor:
    """``[N, dim]`` the code of each Gaussian's object (``inst [N]`` int64; ids <= 0: no object,
    zero code)."""
    inst = inst.reshape(-1).to(torch.int64)
    u, inv = torch.unique(inst, return_inverse=True)
    codes = instance_codes(u, dim)
    out = codes[inv]
    return out * (inst > 0).unsqueeze(1).to(out.dtype)


def class_object_pairs(labels: torch.Tensor, inst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([P], [P])``: each object's class (the most frequent class of its Gaussians; ties to the
    smaller class id) and its id, over the Gaussians (``labels [N]``, ``inst [N]``). Gaussians
    without an object (id <= 0) or a class (``UNLABELED``) are skipped. An object is a candidate
    only for its own class: a wall whose edge Gaussians are labelled picture must not compete for
    the picture's pixels."""
    labels, inst = labels.reshape(-1).to(torch.int64), inst.reshape(-1).to(torch.int64)
    keep = (inst > 0) & (labels != UNLABELED)
    if not bool(keep.any()):
        e = torch.zeros(0, dtype=torch.int64)
        return e, e.clone()
    pairs, counts = torch.unique(torch.stack([inst[keep], labels[keep]], 1), dim=0, return_counts=True)
    ids = pairs[:, 0]                          # rows sorted by (id, class)
    u, inv = torch.unique_consecutive(ids, return_inverse=True)
    most = torch.zeros(len(u), dtype=counts.dtype).scatter_reduce(0, inv, counts, reduce="amax")
    top = counts == most[inv]
    rows = torch.arange(len(ids))
    first = torch.full((len(u),), len(ids), dtype=torch.int64).scatter_reduce(0, inv[top], rows[top], reduce="amin")
    return pairs[first, 1], pairs[first, 0]


def _assign(score_fn, labels: torch.Tensor, pair_class: torch.Tensor, pair_id: torch.Tensor,
            top_instance: torch.Tensor, min_weight: float) -> torch.Tensor:
    """Per class ``c`` of ``labels``, its pixels take the candidate (objects paired with ``c``) of
    the largest ``score_fn(mask, cand) -> [pixels, candidates]``; pixels without candidates or
    with a best score under ``min_weight`` keep ``top_instance``."""
    out = top_instance.clone().to(torch.int64)
    labels = labels.to(torch.int64)
    for c in torch.unique(labels).tolist():
        if c == UNLABELED:
            continue
        cand = pair_id[pair_class == c]
        if len(cand) == 0:
            continue
        m = labels == c
        val, best = score_fn(m, cand).max(1)
        out[m] = torch.where(val >= min_weight, cand[best], out[m])
    return out


def weighted_instance_image(code_image: torch.Tensor, labels: torch.Tensor, pair_class: torch.Tensor,
                            pair_id: torch.Tensor, top_instance: torch.Tensor, *,
                            min_weight: float = 0.05) -> torch.Tensor:
    """``[H, W]`` int64 instance image: each pixel of class ``c`` (``labels [H, W]``) takes, among
    the objects paired with ``c`` (``pair_class``, ``pair_id`` from :func:`class_object_pairs`),
    the one whose code has the largest dot product with the rendered codes ``code_image [H, W,
    D]`` (the composite of :func:`gaussian_instance_codes`). Pixels whose class has no object, or
    whose best weight is under ``min_weight``, keep ``top_instance [H, W]``."""
    dim = code_image.shape[-1]
    return _assign(lambda m, cand: code_image[m].float() @ instance_codes(cand, dim).T,
                   labels, pair_class, pair_id, top_instance, min_weight)


def exact_weighted_instance_image(render_fn, inst: torch.Tensor, labels: torch.Tensor, pair_class: torch.Tensor,
                                  pair_id: torch.Tensor, top_instance: torch.Tensor, *,
                                  min_weight: float = 0.05) -> torch.Tensor:
    """Slow reference of :func:`weighted_instance_image`: every candidate object's blending weight
    rendered exactly as its own one-hot channel (``render_fn(features [N, C]) -> [H, W, C]``)."""
    objs = torch.unique(pair_id)
    onehot = (inst.reshape(-1, 1).to(torch.int64) == objs.reshape(1, -1)).float()
    weights = render_fn(onehot)                      # [H, W, n_objects]
    return _assign(lambda m, cand: weights[m][:, torch.searchsorted(objs, cand)],
                   labels, pair_class, pair_id, top_instance, min_weight)
