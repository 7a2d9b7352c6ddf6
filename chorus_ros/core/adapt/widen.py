"""Function-preserving widening of the encoder's per-Gaussian decoder (a site head with more
capacity for ``train='heads'``).

The decoder after the U-Net is ``out_mlp = Linear(C0 + Ph, H) -> GELU -> Linear(H, E)``. Widening
by ``k`` adds ``k`` hidden units: their input weights are freshly initialised (as ``nn.Linear``
does), their output weights are zero, so the widened model computes exactly what the base
did until adaptation moves them (the gradient reaches the new output weights at once, and the
new input weights after the first step). The widened model is an ordinary encoder whose
config says ``head_hidden = H + k``: every loader builds it from its ``config.yaml``.
"""
from __future__ import annotations

import torch
from torch import nn

from chorus_ros.core.errors import InvalidInputError

__all__ = ["widen_decoder", "new_unit_parameters"]


@torch.no_grad()
def widen_decoder(model, extra: int, seed: int = 0):
    """Add ``extra`` hidden units to ``model.out_mlp`` (in place, see the module docstring) and
    set ``model.config.head_hidden`` accordingly. Returns ``model``.

    Args:
        model: a :class:`~chorus_ros.core.encoder.ChorusEncoder`.
        extra: hidden units to add (>= 0; 0 leaves the model unchanged).
        seed: seed of the new input weights.
    """
    if extra < 0:
        raise InvalidInputError(f"decoder widening must be >= 0 hidden units, got {extra}")
    if extra == 0:
        return model
    first, act, last = model.out_mlp
    if not (isinstance(first, nn.Linear) and isinstance(last, nn.Linear)):
        raise InvalidInputError("widen_decoder needs out_mlp = Linear, activation, Linear (adapters merged first)")
    h = first.out_features
    gen = torch.Generator().manual_seed(int(seed))
    new_first = nn.Linear(first.in_features, h + extra).to(first.weight.device, first.weight.dtype)
    new_last = nn.Linear(h + extra, last.out_features).to(last.weight.device, last.weight.dtype)
    bound = 1.0 / first.in_features ** 0.5  # nn.Linear's default range
    w = (torch.rand(extra, first.in_features, generator=gen) * 2 - 1) * bound
    b = (torch.rand(extra, generator=gen) * 2 - 1) * bound
    new_first.weight.copy_(torch.cat([first.weight, w.to(first.weight)], 0))
    new_first.bias.copy_(torch.cat([first.bias, b.to(first.bias)], 0))
    new_last.weight.copy_(torch.cat([last.weight, last.weight.new_zeros(last.out_features, extra)], 1))
    new_last.bias.copy_(last.bias)
    model.out_mlp = nn.Sequential(new_first, act, new_last)
    model.config.head_hidden = h + extra
    return model


def new_unit_parameters(model, extra: int) -> list[nn.Parameter]:
    """The parameters of the last ``extra`` hidden units of a widened ``out_mlp``, made trainable
    with a gradient mask so that only those units move: the input weights and biases of the new
    rows and the output weights of the new columns (everything else keeps ``requires_grad``
    as it is; the base rows/columns get zero gradient, so Adam without weight decay leaves
    them exactly unchanged)."""
    first, _, last = model.out_mlp
    h = first.out_features - extra
    if extra <= 0 or h <= 0:
        raise InvalidInputError(f"{extra} new units do not fit a decoder of {first.out_features} hidden units")
    row = torch.zeros(first.out_features, 1, dtype=first.weight.dtype, device=first.weight.device)
    row[h:] = 1.0
    col = torch.zeros(1, first.out_features, dtype=last.weight.dtype, device=last.weight.device)
    col[:, h:] = 1.0
    masks = ((first.weight, row), (first.bias, row[:, 0]), (last.weight, col))
    for p, m in masks:
        p.requires_grad_(True)
        p.register_hook(lambda g, m=m: g * m)
    return [p for p, _ in masks]
