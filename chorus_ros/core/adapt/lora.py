"""Low-rank adapters (LoRA) on the encoder's linear layers and sparse convolutions.

An adapted weight is ``W + (alpha / rank) B A`` with ``W`` viewed as ``[out, rest]`` (a Linear's
``[out, in]``; a sparse convolution's kernel flattened after its first axis), ``A [rank, rest]``
random and ``B [out, rank]`` zero at the start, so training starts from the base model. The
adapters are registered with :mod:`torch.nn.utils.parametrize`, so every module (spconv's
included) keeps calling ``self.weight``.

A site's adapters are a few thousand numbers: :func:`adapter_state` returns them (keys
``<module>.lora_A`` / ``.lora_B``), :func:`apply_adapter` puts them on a freshly loaded base
model and :func:`merge_adapters` folds them into plain weights, which is what an adapted
checkpoint's ``model.safetensors`` holds (so every loader reads it unchanged); the adapters
themselves are saved beside it, so the same base can serve several sites.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from chorus_ros.core.errors import CheckpointError, InvalidInputError

__all__ = ["LowRankDelta", "lora_targets", "add_adapters", "adapter_state", "apply_adapter", "merge_adapters",
           "has_adapters"]


class LowRankDelta(nn.Module):
    """Parametrization ``W -> W + scale * (B @ A).view(W.shape)``."""

    def __init__(self, shape: torch.Size, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        out = int(shape[0])
        rest = int(math.prod(shape[1:]))
        self.rank = int(rank)
        self.scale = float(alpha) / float(rank)
        a = torch.randn(self.rank, rest, generator=generator) / math.sqrt(rest)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(out, self.rank))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.scale * (self.lora_B @ self.lora_A).view(w.shape).to(w.dtype)


def _is_sparse_conv(m: nn.Module) -> bool:
    return hasattr(m, "subm") and hasattr(m, "kernel_size") and isinstance(getattr(m, "weight", None), torch.Tensor)


def lora_targets(model: nn.Module, convs: bool) -> list[str]:
    """Names of the modules that get adapters: the decoder's Linear layers (``out_mlp``,
    ``heads``) and, with ``convs``, every sparse convolution of the U-Net."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and (name.startswith("out_mlp") or name.startswith("heads.")):
            names.append(name)
        elif convs and name.startswith("unet") and _is_sparse_conv(m):
            names.append(name)
    return names


def add_adapters(model: nn.Module, names: list[str], rank: int, alpha: float, seed: int = 0) -> list[nn.Parameter]:
    """Register a :class:`LowRankDelta` on ``weight`` of each named module; returns the new
    parameters (the only ones to train)."""
    gen = torch.Generator().manual_seed(int(seed))
    mods = dict(model.named_modules())
    params: list[nn.Parameter] = []
    for n in names:
        if n not in mods:
            raise InvalidInputError(f"no module {n!r} to adapt")
        m = mods[n]
        dev = m.weight.device
        delta = LowRankDelta(m.weight.shape, rank, alpha, gen).to(dev)
        parametrize.register_parametrization(m, "weight", delta)
        params += [delta.lora_A, delta.lora_B]
    return params


def has_adapters(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


def _deltas(model: nn.Module):
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            for p in m.parametrizations["weight"]:
                if isinstance(p, LowRankDelta):
                    yield name, p


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{'<module>.lora_A': [r, rest], '<module>.lora_B': [out, r]}`` of every adapter (CPU float32)."""
    out = {}
    for name, p in _deltas(model):
        out[f"{name}.lora_A"] = p.lora_A.detach().float().cpu().contiguous()
        out[f"{name}.lora_B"] = p.lora_B.detach().float().cpu().contiguous()
    return out


def apply_adapter(model: nn.Module, state: dict[str, torch.Tensor], alpha: float) -> None:
    """Register adapters from ``state`` (written by :func:`adapter_state`) on ``model``.

    Raises:
        CheckpointError: a module named in ``state`` does not exist, or shapes do not fit.
    """
    mods = dict(model.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in state})
    missing = [n for n in names if n not in mods]
    if missing:
        raise CheckpointError(f"adapter names modules the model does not have: {missing[:10]}")
    for n in names:
        a, b = state.get(f"{n}.lora_A"), state.get(f"{n}.lora_B")
        if a is None or b is None:
            raise CheckpointError(f"adapter of {n!r} lacks lora_A or lora_B")
        w = mods[n].weight
        if a.shape[1] != math.prod(w.shape[1:]) or b.shape[0] != w.shape[0] or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"adapter of {n!r}: A {tuple(a.shape)} / B {tuple(b.shape)} do not fit "
                                  f"weight {tuple(w.shape)}")
        delta = LowRankDelta(w.shape, a.shape[0], alpha).to(w.device)
        with torch.no_grad():
            delta.lora_A.copy_(a)
            delta.lora_B.copy_(b)
        parametrize.register_parametrization(mods[n], "weight", delta)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its plain weight (in place); the state dict keys become the base
    model's again."""
    for name, m in list(model.named_modules()):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model
