"""Global Object-Centric Learning (GOCL): slot attention over a view's 2D features, slots matched to
a dataset-level codebook of object prototypes, trained unsupervised by feature reconstruction.

Model (one view's feature map ``[h, w, C]``, e.g. a teacher's patch features):

1. *Encoder*: per-patch MLP of the (layer-normed) features plus a learned positional term.
2. :class:`~chorus_ros.core.objects.slots.SlotAttention`: ``S`` slots compete for the patches.
3. *Codebook*: every slot is projected into the code space and assigned to its nearest of ``K``
   prototypes (:class:`~chorus_ros.core.objects.codebook.PrototypeCodebook`). The prototypes are
   the same for every scene (scene-agnostic), so a code means "this kind of object" anywhere.
4. *Decoder*, one of
   - ``'mixture'`` (default): the masks are the slot attention's own softmax over slots (the
     alpha masks) and each slot decodes into one feature vector; the reconstruction is the
     mask-weighted sum of the slots' features. Slots become soft clusters of patches that must
     explain the features, which trains in a few hundred steps on a CPU.
   - ``'broadcast'`` (spatial broadcast, Locatello et al.): each slot is broadcast over the grid,
     added to a positional embedding and decoded per patch into a feature and an alpha logit;
     alphas are normalised over slots into masks. More expressive, much slower to train.

Loss = ``|recon - target|^2`` (target = the layer-normed input features) + ``vq_weight`` x the
codebook's VQ loss - ``usage_weight`` x the code-usage entropy. Nothing is labelled.

The outputs used downstream: per-view soft object masks ``[S, h, w]``, each slot's code and its
unit identity embedding ``[S, code_dim]``; :meth:`GOCL.identity_map` paints the identity embedding
of each patch's slot (mask-weighted), which supervises the encoder's object head through the lift.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.objects.codebook import CodeAssignment, CodebookConfig, PrototypeCodebook
from chorus_ros.core.objects.slots import SlotAttention, SlotAttentionConfig

__all__ = ["GOCLConfig", "GOCLOutput", "GOCL", "grid_coords"]


@dataclass
class GOCLConfig:
    """GOCL architecture and loss weights (saved with the weights as JSON)."""

    in_dim: int = 32
    """Channels of the input feature map (the teacher's ``dim``)."""
    slots: SlotAttentionConfig = field(default_factory=SlotAttentionConfig)
    """Slot attention (``slots.dim`` is the model width)."""
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    """Scene-agnostic prototype codebook (``codebook.dim`` is the identity feature width)."""
    decoder: str = "mixture"
    """'mixture' (attention masks, one feature per slot) or 'broadcast' (spatial broadcast decoder)."""
    decoder_hidden: int = 64
    """Hidden width of the decoder MLP."""
    vq_weight: float = 1.0
    """Weight of the codebook's VQ loss."""
    usage_weight: float = 0.1
    """Weight of the code-usage entropy bonus (keeps many prototypes in use)."""

    @classmethod
    def from_dict(cls, d: dict) -> "GOCLConfig":
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise InvalidInputError(f"unknown GOCL config keys {bad}; known: {sorted(known)}")
        if isinstance(d.get("slots"), dict):
            d["slots"] = SlotAttentionConfig(**d["slots"])
        if isinstance(d.get("codebook"), dict):
            d["codebook"] = CodebookConfig(**d["codebook"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GOCLOutput:
    """Result of :meth:`GOCL.forward` for a batch of ``B`` views with ``S`` slots on an ``h x w`` grid."""

    masks: torch.Tensor
    """``[B, S, h, w]`` decoder masks (softmax over slots)."""
    attn: torch.Tensor
    """``[B, S, h, w]`` slot attention of the last iteration (softmax over slots)."""
    slots: torch.Tensor
    """``[B, S, dim]`` slot vectors."""
    codes: CodeAssignment
    """Slot-to-code assignment (``codes.code [B, S]``, ``codes.embedding [B, S, code_dim]``)."""
    recon: torch.Tensor
    """``[B, h, w, C]`` reconstructed (normalised) input features."""
    target: torch.Tensor
    """``[B, h, w, C]`` the normalised input features the reconstruction aims at."""
    loss: torch.Tensor
    """Scalar total loss."""
    parts: dict
    """Named float loss terms (recon, vq, usage)."""


def grid_coords(h: int, w: int, device=None) -> torch.Tensor:
    """``[h, w, 4]`` positional channels ``(y, x, 1 - y, 1 - x)`` in [0, 1] (patch centres)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy, xx, 1 - yy, 1 - xx], dim=-1)


class GOCL(nn.Module):
    """Slot attention + prototype codebook + broadcast decoder (see the module docstring).

    Example::

        model = GOCL(GOCLConfig(in_dim=256))
        out = model(feats)                     # feats [B, h, w, 256]
        out.loss.backward()
        out.masks.argmax(1)                    # [B, h, w] slot per patch
        out.codes.code                         # [B, S] prototype per slot
    """

    def __init__(self, config: GOCLConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.decoder not in ("mixture", "broadcast"):
            raise InvalidInputError(f"GOCL decoder must be 'mixture' or 'broadcast', got {c.decoder!r}")
        if c.in_dim < 1 or c.decoder_hidden < 1:
            raise InvalidInputError(f"GOCL needs in_dim, decoder_hidden >= 1, got {c.in_dim}, {c.decoder_hidden}")
        d = c.slots.dim
        self.in_norm = nn.LayerNorm(c.in_dim, elementwise_affine=False)
        self.enc_pos = nn.Linear(4, d)
        self.encoder = nn.Sequential(nn.Linear(c.in_dim, d), nn.ReLU(), nn.Linear(d, d))
        self.slot_attention = SlotAttention(c.slots)
        self.to_code = nn.Linear(d, c.codebook.dim)
        self.codebook = PrototypeCodebook(c.codebook)
        self.dec_pos = nn.Linear(4, d)
        self.decoder = nn.Sequential(nn.Linear(d, c.decoder_hidden), nn.ReLU(),
                                     nn.Linear(c.decoder_hidden, c.decoder_hidden), nn.ReLU(),
                                     nn.Linear(c.decoder_hidden, c.in_dim + (c.decoder == "broadcast")))

    def forward(self, feats: torch.Tensor, slots: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> GOCLOutput:
        """Args:
            feats: ``[B, h, w, C]`` feature maps (C = ``config.in_dim``), any scale.
            slots: optional ``[B, S, dim]`` initial slots (default: sampled from the learned prior).
            generator: RNG for the sampled initial slots (evaluation uses a fixed one).
        """
        c = self.config
        if feats.ndim != 4 or feats.shape[-1] != c.in_dim:
            raise InvalidInputError(f"GOCL expects features [B, h, w, {c.in_dim}], got {tuple(feats.shape)}")
        if not bool(torch.isfinite(feats).all()):
            raise InvalidInputError("GOCL input features contain NaN or Inf")
        b, h, w, _ = feats.shape
        target = self.in_norm(feats.float())
        pos = grid_coords(h, w, feats.device)
        tokens = self.encoder(target) + self.enc_pos(pos)                       # [B, h, w, d]
        slots, attn = self.slot_attention(tokens.reshape(b, h * w, -1), slots, generator)
        s = slots.shape[1]
        attn_map = attn.transpose(1, 2).reshape(b, s, h, w)
        if c.decoder == "mixture":
            masks = attn_map
            recon = torch.einsum("bshw,bsc->bhwc", masks, self.decoder(slots))
        else:
            z = slots[:, :, None, None, :] + self.dec_pos(pos)[None, None]      # [B, S, h, w, d]
            dec = self.decoder(z)
            feat, alpha = dec[..., :-1], dec[..., -1]
            masks = torch.softmax(alpha, dim=1)                                  # over slots
            recon = (masks[..., None] * feat).sum(1)
        area = masks.mean(dim=(2, 3))                                            # [B, S]
        codes = self.codebook.assign(self.to_code(slots), weight=area)
        rec = F.mse_loss(recon, target)
        usage = self.codebook.usage_entropy(codes.probs, area)
        loss = rec + c.vq_weight * codes.loss - c.usage_weight * usage
        parts = {"recon": float(rec.detach()), "vq": float(codes.loss.detach()), "usage": float(usage.detach())}
        return GOCLOutput(masks, attn_map, slots, codes, recon, target, loss, parts)

    @torch.no_grad()
    def identity_map(self, feats: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, GOCLOutput]:
        """Per-patch identity features of one view: ``sum_s mask_s * e_s`` with ``e_s`` the slot's unit
        code-space embedding.

        Args:
            feats: ``[h, w, C]`` one view's features.
            seed: seed of the initial slots (deterministic output).

        Returns:
            ``[h, w, code_dim]`` identity map and the full :class:`GOCLOutput` (batch of 1).
        """
        if feats.ndim != 3:
            raise InvalidInputError(f"identity_map expects one view's features [h, w, C], got {tuple(feats.shape)}")
        out = self(feats[None], generator=torch.Generator().manual_seed(int(seed)))
        ident = torch.einsum("bshw,bsd->bhwd", out.masks, out.codes.embedding)[0]
        return ident, out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Write ``<path>/gocl.safetensors`` and ``<path>/gocl.json`` (config + ``meta``)."""
        from safetensors.torch import save_file
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(p / "gocl.safetensors"))
        (p / "gocl.json").write_text(json.dumps({"config": self.config.to_dict(), "meta": meta or {}},
                                                indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "GOCL":
        """Load a model written by :meth:`save` (strict keys and shapes)."""
        from safetensors.torch import load_file
        from chorus_ros.core.state_dict import load_state_dict_strict
        p = Path(path)
        if not (p / "gocl.json").is_file() or not (p / "gocl.safetensors").is_file():
            raise CheckpointError(f"GOCL checkpoint {p} needs gocl.json and gocl.safetensors")
        cfg = GOCLConfig.from_dict(json.loads((p / "gocl.json").read_text(encoding="utf-8"))["config"])
        model = cls(cfg)
        load_state_dict_strict(model, load_file(str(p / "gocl.safetensors")), f"GOCL checkpoint {p}")
        return model.eval()
