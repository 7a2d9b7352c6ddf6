"""Slot attention (Locatello et al. 2020): a fixed number of slots compete for the input tokens.

Each iteration: the slots (queries) attend over the tokens with a softmax *over the slots*
(tokens are shared out between slots, so slots compete), each slot takes the attention-weighted
mean of the token values, and a GRU cell updates the slot from that mean, followed by a residual
MLP. Slots start from a learned Gaussian (mean, std) sample, so they are exchangeable: permuting
the initial slots permutes every output the same way (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chorus_ros.core.errors import InvalidInputError

__all__ = ["SlotAttentionConfig", "SlotAttention"]


@dataclass
class SlotAttentionConfig:
    """Slot attention settings."""

    num_slots: int = 8
    """Slots per view (the most objects one view can be split into)."""
    dim: int = 64
    """Slot width."""
    iters: int = 3
    """Attention / GRU iterations."""
    mlp_hidden: int = 128
    """Hidden width of the residual slot MLP."""
    eps: float = 1e-8
    """Added to the attention before the weighted mean (no empty slot divides by zero)."""

    def validate(self) -> None:
        if self.num_slots < 1 or self.dim < 1 or self.iters < 1 or self.mlp_hidden < 1:
            raise InvalidInputError(f"slot attention needs num_slots, dim, iters, mlp_hidden >= 1, got {self}")


class SlotAttention(nn.Module):
    """Iterative slot attention over ``[B, N, dim]`` tokens.

    Example::

        sa = SlotAttention(SlotAttentionConfig(num_slots=4, dim=32))
        slots, attn = sa(tokens)           # [B, 4, 32], [B, N, 4] (softmax over slots)
    """

    def __init__(self, config: SlotAttentionConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.norm_in = nn.LayerNorm(c.dim)
        self.norm_slots = nn.LayerNorm(c.dim)
        self.norm_mlp = nn.LayerNorm(c.dim)
        self.to_q = nn.Linear(c.dim, c.dim, bias=False)
        self.to_k = nn.Linear(c.dim, c.dim, bias=False)
        self.to_v = nn.Linear(c.dim, c.dim, bias=False)
        self.gru = nn.GRUCell(c.dim, c.dim)
        self.mlp = nn.Sequential(nn.Linear(c.dim, c.mlp_hidden), nn.ReLU(), nn.Linear(c.mlp_hidden, c.dim))
        self.init_mu = nn.Parameter(torch.randn(1, 1, c.dim) * c.dim ** -0.5)
        self.init_log_sigma = nn.Parameter(torch.full((1, 1, c.dim), -1.0))

    def initial_slots(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[batch, S, dim]`` slots drawn from the learned Gaussian (``generator`` for determinism)."""
        c = self.config
        noise = torch.randn(batch, c.num_slots, c.dim, generator=generator).to(self.init_mu)
        return self.init_mu + self.init_log_sigma.exp() * noise

    def forward(self, tokens: torch.Tensor, slots: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            tokens: ``[B, N, dim]`` input tokens (e.g. encoded patch features).
            slots: optional ``[B, S, dim]`` initial slots (default: sampled, see :meth:`initial_slots`).
            generator: RNG for the sampled initial slots.

        Returns:
            ``slots [B, S, dim]`` and ``attn [B, N, S]`` (each token's softmax over slots, last iteration).
        """
        c = self.config
        if tokens.ndim != 3 or tokens.shape[-1] != c.dim:
            raise InvalidInputError(f"slot attention tokens must be [B, N, {c.dim}], got {tuple(tokens.shape)}")
        b = tokens.shape[0]
        if slots is None:
            slots = self.initial_slots(b, generator)
        elif slots.ndim != 3 or slots.shape[0] != b or slots.shape[-1] != c.dim:
            raise InvalidInputError(f"initial slots must be [{b}, S, {c.dim}], got {tuple(slots.shape)}")
        x = self.norm_in(tokens)
        k, v = self.to_k(x), self.to_v(x)
        scale = c.dim ** -0.5
        attn = tokens.new_zeros(b, tokens.shape[1], slots.shape[1])
        for _ in range(c.iters):
            prev = slots
            q = self.to_q(self.norm_slots(slots))
            attn = torch.softmax(torch.einsum("bnd,bsd->bns", k, q) * scale, dim=-1)      # over slots
            w = attn + c.eps
            w = w / w.sum(dim=1, keepdim=True)                                               # mean over tokens
            updates = torch.einsum("bns,bnd->bsd", w, v)
            slots = self.gru(updates.reshape(-1, c.dim), prev.reshape(-1, c.dim)).reshape(b, -1, c.dim)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, attn
