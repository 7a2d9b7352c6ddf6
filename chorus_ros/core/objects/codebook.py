"""A scene-agnostic codebook of K object prototypes, learned over the whole dataset.

Slots (one per object of a view) are projected into the code space and assigned to their most
similar prototype by cosine. The assignment of a slot depends only on that slot, so permuting the
slots permutes the codes the same way and every set-level quantity (the loss, the multiset of
codes) does not change (tested). Prototypes learn like a VQ codebook: the prototype is pulled to
its assigned slots (stop-gradient on the slots) and the slots commit to their prototype; a usage
entropy term keeps many codes alive and :meth:`PrototypeCodebook.revive` re-seeds dead codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chorus_ros.core.errors import InvalidInputError

__all__ = ["CodebookConfig", "CodeAssignment", "PrototypeCodebook"]


@dataclass
class CodebookConfig:
    """Object-prototype codebook settings."""

    num_codes: int = 32
    """K, the number of object prototypes shared by every scene."""
    dim: int = 32
    """Width of the code space (also the identity feature width)."""
    temperature: float = 0.1
    """Softmax temperature of the soft assignment over codes (cosine logits)."""
    commitment: float = 0.25
    """Weight of the slot -> prototype commitment term."""

    def validate(self) -> None:
        if self.num_codes < 1 or self.dim < 1 or not self.temperature > 0:
            raise InvalidInputError(f"codebook needs num_codes, dim >= 1 and temperature > 0, got {self}")


@dataclass
class CodeAssignment:
    """Assignment of S slots to codes (leading batch dims ``...``)."""

    code: torch.Tensor
    """``[..., S]`` int64 index of the most similar prototype."""
    probs: torch.Tensor
    """``[..., S, K]`` softmax over codes of cosine / temperature."""
    embedding: torch.Tensor
    """``[..., S, dim]`` unit slot embedding in the code space (the identity feature of the slot)."""
    quantized: torch.Tensor
    """``[..., S, dim]`` the assigned prototype, with a straight-through gradient to ``embedding``."""
    loss: torch.Tensor
    """Scalar VQ loss: ``|sg(e) - p|^2 + commitment * |e - sg(p)|^2``, mean over slots (weighted)."""


class PrototypeCodebook(nn.Module):
    """K learned unit prototypes ``[K, dim]``; :meth:`assign` maps slot embeddings to them."""

    def __init__(self, config: CodebookConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.prototypes = nn.Parameter(F.normalize(torch.randn(config.num_codes, config.dim), dim=-1))

    def unit_prototypes(self) -> torch.Tensor:
        """``[K, dim]`` normalised prototypes."""
        return F.normalize(self.prototypes, dim=-1)

    def assign(self, embedding: torch.Tensor, weight: torch.Tensor | None = None) -> CodeAssignment:
        """Assign slot embeddings ``[..., S, dim]`` (any norm) to codes.

        Args:
            embedding: slot embeddings in the code space.
            weight: optional ``[..., S]`` weight of each slot in the loss (e.g. its mask area), so
                empty slots do not drag prototypes around.
        """
        c = self.config
        if embedding.shape[-1] != c.dim:
            raise InvalidInputError(f"codebook of width {c.dim} got slot embeddings {tuple(embedding.shape)}")
        e = F.normalize(embedding, dim=-1)
        p = self.unit_prototypes()
        cos = e @ p.T
        probs = torch.softmax(cos / c.temperature, dim=-1)
        code = cos.argmax(dim=-1)
        q = p[code]
        per = ((e.detach() - q) ** 2).sum(-1) + c.commitment * ((e - q.detach()) ** 2).sum(-1)
        if weight is None:
            loss = per.mean()
        else:
            w = weight.detach()
            loss = (per * w).sum() / w.sum().clamp_min(1e-8)
        quantized = e + (q - e).detach()
        return CodeAssignment(code, probs, e, quantized, loss)

    def usage_entropy(self, probs: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Entropy of the (weighted) mean code distribution over a batch; maximised to use many codes."""
        pr = probs.reshape(-1, probs.shape[-1])
        if weight is None:
            m = pr.mean(0)
        else:
            w = weight.reshape(-1, 1).detach()
            m = (pr * w).sum(0) / w.sum().clamp_min(1e-8)
        return -(m * (m + 1e-12).log()).sum()

    @torch.no_grad()
    def revive(self, embedding: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Re-seed codes with ``counts == 0`` ([K]) from random rows of ``embedding`` ([M, dim]);
        returns how many were re-seeded."""
        dead = torch.nonzero(counts == 0).squeeze(1)
        if dead.numel() == 0 or embedding.numel() == 0:
            return 0
        pick = torch.randint(0, embedding.shape[0], (dead.numel(),), generator=generator)
        self.prototypes.data[dead] = F.normalize(embedding.reshape(-1, self.config.dim)[pick].float(), dim=-1)
        return int(dead.numel())
