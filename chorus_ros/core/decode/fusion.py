"""VDVI fusion decoder (RT-GS2): per-view labels from an image *and* the splatted 3D features.

Per view, a light 2D network reads

* the **view-dependent** branch: an RGB image ``[B, 3, H, W]`` (the rendered view, or a live
  camera image registered to it) plus optionally the rendered depth ``[B, 1, H, W]``;
* the **view-independent** branch: the per-Gaussian language features projected to a few
  channels (``feat_channels``, a learned linear map ``proj``) and splatted by the renderer,
  plus the rendered alpha: ``[B, feat_channels + 1, H, W]``. Splatting is linear, so projecting
  per Gaussian and then splatting equals splatting and then projecting per pixel
  (:meth:`FusionDecoder.project_gaussians` / :meth:`FusionDecoder.project_pixels`).

Both encoders are strided conv stacks (scales 1/2, 1/4, 1/8 by default); at every scale the two
branches are fused (concatenate + 1x1 conv), and one FPN-style decoder upsamples the fused
pyramid to full resolution and outputs a per-pixel **embedding** ``[B, D, H, W]`` (``D`` = the
text encoder's dimension). Labels come from the cosine between that embedding and the text
embeddings of the active class names (:func:`fusion_logits`), so the label space stays open:
changing the label set only changes the text embeddings.

Used by :class:`chorus_ros.core.pipeline.PerceptionPipeline` when ``per_view.fusion`` is
'rendered' or 'camera'; trained by ``chorus-train`` stage ``fusion``
(:mod:`chorus_ros.core.train.stages.fusion`). Saved as ``<checkpoint>/fusion/`` (weights +
config, :func:`save_fusion` / :func:`load_fusion`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chorus_ros.core.decode.instance_image import INSTANCE_IMAGE_MODES
from chorus_ros.core.errors import CheckpointError, InvalidInputError

__all__ = ["FusionConfig", "FusionDecoder", "fusion_logits", "fused_class_logits", "view_class_probabilities", "save_fusion", "load_fusion", "snap_instances",
           "warm_start_fusion", "decoder_class_logits", "PerViewConfig",
           "FUSION_DIR", "FUSION_MODES"]

FUSION_DIR = "fusion"
"""Sub-directory of a checkpoint holding the fusion decoder."""
FUSION_MODES = ("off", "rendered", "camera")
"""Values of the pipeline option ``per_view.fusion``."""
PRIOR_FLOOR = 1e-4
"""Smallest 3D class probability whose log enters a ``prior`` decoder's logits."""


@dataclass
class FusionConfig:
    """Architecture of :class:`FusionDecoder`."""

    language_dim: int = 64
    """Dimension of the per-Gaussian language features (the encoder's language head) projected by ``proj``."""
    embed_dim: int = 64
    """Output embedding dimension (must equal the text encoder's)."""
    feat_channels: int = 8
    """Channels the language features are projected to before splatting (few: the splat is per view)."""
    use_depth: bool = True
    """Feed the rendered depth (metres, / 4) to the image branch."""
    channels: tuple[int, ...] = (16, 32, 48)
    """Channels of the encoders' scales 1/2, 1/4, 1/8 ... (one stride-2 stage each)."""
    decoder_channels: int = 32
    """Width of the FPN decoder."""
    prior: bool = False
    """Residual on the 3D labels: the fused logits are the cosine logits plus the log of the
    view's 3D class probabilities (the splatted per-Gaussian class scores divided by alpha,
    floored at ``PRIOR_FLOOR``), so the decoder learns a correction of the 3D labels from the
    image (the per-site decoder of ``chorus-adapt --fusion-steps``). False: the cosine logits
    alone (``chorus-train`` stage ``fusion``)."""
    prior_names: tuple[str, ...] = ()
    """With ``prior``: also feed the view's 3D class probabilities of these classes (in this
    order: the label set the decoder was trained on) to the view-independent branch as input
    channels, so the decoder sees *what* the 3D labels say at every scale, not only their log
    added to its logits (the per-site decoder of ``chorus-adapt``, docs/adaptation.md). Empty: not
    fed. A decoder with names serves only that label set."""

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or min(self.channels) <= 0:
            raise InvalidInputError(f"FusionConfig.channels must be non-empty and positive, got {self.channels}")
        for name in ("language_dim", "embed_dim", "feat_channels", "decoder_channels"):
            if int(getattr(self, name)) <= 0:
                raise InvalidInputError(f"FusionConfig.{name} must be > 0, got {getattr(self, name)}")
        self.prior_names = tuple(str(n) for n in self.prior_names)
        if self.prior_names and not self.prior:
            raise InvalidInputError("FusionConfig.prior_names needs prior: true (the 3D probabilities it reads are "
                                    "the prior's)")
        if len(set(self.prior_names)) != len(self.prior_names):
            raise InvalidInputError(f"FusionConfig.prior_names has duplicates: {list(self.prior_names)}")

    @property
    def prior_classes(self) -> int:
        """Number of 3D class probability channels the decoder reads (``len(prior_names)``)."""
        return len(self.prior_names)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(d["channels"])
        d["prior_names"] = list(d["prior_names"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FusionConfig":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise InvalidInputError(f"fusion config has unknown fields {bad}; known: {sorted(known)}")
        return cls(**d)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(1, cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.GroupNorm(1, cout), nn.GELU())


class _Encoder(nn.Module):
    def __init__(self, cin: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        stages, c = [], cin
        for co in channels:
            stages.append(_block(c, co, 2))
            c = co
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for s in self.stages:
            x = s(x)
            out.append(x)
        return out


class FusionDecoder(nn.Module):
    """Two 2D encoders (image; splatted 3D features), per-scale fusion, one embedding decoder.

    Example::

        fd = FusionDecoder(FusionConfig(language_dim=64, embed_dim=64))
        f = fd.project_gaussians(lang)              # [N, 8] per Gaussian, then splat -> [H, W, 8]
        emb = fd(rgb, splat, alpha, depth)          # [B, 64, H, W], unit vectors per pixel
        logits = fusion_logits(emb, text, 0.05)     # [B, K, H, W]
    """

    def __init__(self, config: FusionConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FusionConfig()
        self.proj = nn.Linear(cfg.language_dim, cfg.feat_channels, bias=False)
        self.image_encoder = _Encoder(3 + int(cfg.use_depth), cfg.channels)
        self.feature_encoder = _Encoder(cfg.feat_channels + 1 + cfg.prior_classes, cfg.channels)
        self.fuse = nn.ModuleList([nn.Conv2d(2 * c, cfg.decoder_channels, 1) for c in cfg.channels])
        self.smooth = nn.ModuleList([nn.Sequential(nn.Conv2d(cfg.decoder_channels, cfg.decoder_channels, 3, 1, 1),
                                                   nn.GELU()) for _ in cfg.channels])
        c_full = cfg.decoder_channels + cfg.feat_channels + 1 + 3
        self.head = nn.Sequential(nn.Conv2d(c_full, cfg.decoder_channels, 3, 1, 1), nn.GELU(),
                                  nn.Conv2d(cfg.decoder_channels, cfg.embed_dim, 1))

    # ------------------------------------------------------------------ projections
    def project_gaussians(self, lang: torch.Tensor) -> torch.Tensor:
        """``[N, language_dim]`` per-Gaussian language features -> ``[N, feat_channels]`` to splat."""
        if lang.ndim != 2 or lang.shape[1] != self.config.language_dim:
            raise InvalidInputError(f"language features must be [N, {self.config.language_dim}], "
                                    f"got {tuple(lang.shape)}")
        return self.proj(lang)

    def project_pixels(self, splat: torch.Tensor) -> torch.Tensor:
        """``[B, language_dim, H, W]`` splatted language features -> ``[B, feat_channels, H, W]``
        (equal to splatting :meth:`project_gaussians`, the splat being linear)."""
        return torch.einsum("bchw,fc->bfhw", splat, self.proj.weight)

    # ------------------------------------------------------------------ forward
    def forward(self, rgb: torch.Tensor, feats: torch.Tensor, alpha: torch.Tensor,
                depth: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel unit embeddings ``[B, embed_dim, H, W]``.

        Args:
            rgb: ``[B, 3, H, W]`` in [0, 1] (rendered or camera image, same pixel grid).
            feats: ``[B, feat_channels, H, W]`` splatted projected language features.
            alpha: ``[B, 1, H, W]`` rendered accumulated opacity.
            depth: ``[B, 1, H, W]`` rendered depth in metres (required when ``use_depth``).
            prior: ``[B, prior_classes, H, W]`` the view's 3D class probabilities (required when
                ``prior_classes`` > 0, ignored otherwise).
        """
        cfg = self.config
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise InvalidInputError(f"rgb must be [B, 3, H, W], got {tuple(rgb.shape)}")
        b, _, h, w = rgb.shape
        if tuple(feats.shape) != (b, cfg.feat_channels, h, w):
            raise InvalidInputError(f"feats must be [{b}, {cfg.feat_channels}, {h}, {w}], got {tuple(feats.shape)}")
        if tuple(alpha.shape) != (b, 1, h, w):
            raise InvalidInputError(f"alpha must be [{b}, 1, {h}, {w}], got {tuple(alpha.shape)}")
        img = rgb
        if cfg.use_depth:
            if depth is None or tuple(depth.shape) != (b, 1, h, w):
                raise InvalidInputError(f"depth must be [{b}, 1, {h}, {w}] (use_depth), got "
                                        f"{None if depth is None else tuple(depth.shape)}")
            img = torch.cat([rgb, depth / 4.0], 1)
        f3 = torch.cat([feats, alpha], 1)
        fin = f3
        if cfg.prior_classes:
            if prior is None or tuple(prior.shape) != (b, cfg.prior_classes, h, w):
                raise InvalidInputError(f"this fusion decoder reads the 3D class probabilities of its "
                                        f"{cfg.prior_classes} classes: prior must be "
                                        f"[{b}, {cfg.prior_classes}, {h}, {w}], "
                                        f"got {None if prior is None else tuple(prior.shape)}")
            fin = torch.cat([f3, prior.to(f3)], 1)
        pi = self.image_encoder(img)
        pf = self.feature_encoder(fin)
        y = None
        for lvl in reversed(range(len(cfg.channels))):
            z = self.fuse[lvl](torch.cat([pi[lvl], pf[lvl]], 1))
            if y is not None:
                z = z + F.interpolate(y, size=z.shape[-2:], mode="bilinear", align_corners=False)
            y = self.smooth[lvl](z)
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        out = self.head(torch.cat([y, f3, rgb], 1))
        return F.normalize(out, dim=1)


def fusion_logits(emb: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[B, K, H, W]`` cosine logits between unit pixel embeddings ``[B, D, H, W]`` and class
    text embeddings ``[K, D]`` (normalised here), divided by ``temperature``."""
    if text.ndim != 2 or text.shape[1] != emb.shape[1]:
        raise InvalidInputError(f"text embeddings must be [K, {emb.shape[1]}], got {tuple(text.shape)}")
    return torch.einsum("bdhw,kd->bkhw", emb, F.normalize(text.to(emb), dim=1)) / temperature


def decoder_class_logits(model: "FusionDecoder", rgb: torch.Tensor, feats: torch.Tensor, alpha: torch.Tensor,
                         depth: torch.Tensor | None, text: torch.Tensor, temperature: float,
                         prior: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, K, H, W]`` class logits of ``model`` on one batch of views: its embeddings
    (``rgb [B, 3, H, W]``, projected splat ``feats [B, feat_channels, H, W]``, ``alpha``, ``depth``
    when the decoder uses it, ``prior [B, K, H, W]``) scored by :func:`fused_class_logits` against
    ``text [K, E]``. What the pipeline, stage ``fusion`` and the site decoder all run."""
    emb = model(rgb, feats, alpha, depth if model.config.use_depth else None, prior)
    return fused_class_logits(model, emb, text, temperature, prior)


def view_class_probabilities(scores: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``[K, H, W]`` the view's 3D class probabilities that a ``prior`` decoder reads and adds:
    per-Gaussian class probabilities splatted into ``scores [H, W, K]``, divided by the rendered
    ``alpha [H, W]`` (floored at 1e-6)."""
    return (scores.float() / alpha.float().clamp_min(1e-6)[..., None]).permute(2, 0, 1)


def fused_class_logits(model: FusionDecoder, emb: torch.Tensor, text: torch.Tensor, temperature: float,
                       prior: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, K, H, W]`` class logits of a fusion decoder's embeddings: :func:`fusion_logits`, plus
    ``log(max(prior, PRIOR_FLOOR))`` when ``model.config.prior``.

    Args:
        prior: ``[B, K, H, W]`` the view's 3D class probabilities (splatted class scores / alpha);
            required by a ``prior`` decoder, ignored otherwise.
    """
    logits = fusion_logits(emb, text, temperature)
    if not model.config.prior:
        return logits
    if prior is None or tuple(prior.shape) != tuple(logits.shape):
        raise InvalidInputError(f"this fusion decoder corrects the 3D labels: it needs their class probabilities "
                                f"{tuple(logits.shape)}, got {None if prior is None else tuple(prior.shape)}")
    return logits + torch.log(prior.to(logits).clamp_min(PRIOR_FLOOR))


def snap_instances(inst: torch.Tensor, labels3d: torch.Tensor, fused: torch.Tensor, radius: int = 2,
                   unlabeled: int = 65535) -> torch.Tensor:
    """Move instance boundaries to the fused labels where they agree (ids still come from 3D).

    A pixel whose 3D label disagrees with its fused label takes the id of the nearest pixel
    (Chebyshev distance <= ``radius``, nearest first, then scan order) whose 3D label equals
    that fused label, when there is one; every other pixel keeps its id. No new id is created.

    Args:
        inst: ``[H, W]`` int instance ids (0 = none).
        labels3d: ``[H, W]`` int labels decoded from the 3D features (splat).
        fused: ``[H, W]`` int fused labels.
    """
    if inst.shape != labels3d.shape or inst.shape != fused.shape:
        raise InvalidInputError(f"snap_instances needs three [H, W] images of one shape, got "
                                f"{tuple(inst.shape)}, {tuple(labels3d.shape)}, {tuple(fused.shape)}")
    out = inst.clone()
    todo = (labels3d != fused) & (fused != unlabeled)
    if not bool(todo.any()):
        return out
    h, w = inst.shape
    done = ~todo
    offsets = sorted(((dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                      if (dy, dx) != (0, 0)), key=lambda o: (max(abs(o[0]), abs(o[1])), o))
    pad_l = F.pad(labels3d[None, None].float(), (radius,) * 4, value=-1)[0, 0].long()
    pad_i = F.pad(inst[None, None].float(), (radius,) * 4, value=0)[0, 0].long()
    for dy, dx in offsets:
        nl = pad_l[radius + dy: radius + dy + h, radius + dx: radius + dx + w]
        ni = pad_i[radius + dy: radius + dy + h, radius + dx: radius + dx + w]
        hit = ~done & (nl == fused)
        out[hit] = ni[hit].to(out.dtype)
        done |= hit
        if bool(done.all()):
            break
    return out


_PRIOR_INPUT = "feature_encoder.stages.0.0.weight"
"""The first convolution of the 3D branch: input channels (projected features, alpha, prior classes)."""


@torch.no_grad()
def warm_start_fusion(model: FusionDecoder, init: FusionDecoder) -> dict:
    """Copy a trained decoder's weights into ``model`` (e.g. the feed-forward decoder of a
    checkpoint into a per-site decoder, which then trains from there instead of from scratch).

    Every parameter or buffer of equal name and shape is copied. The 3D branch's first
    convolution reads the 3D class probabilities of ``prior_names``; there the projected-feature
    and alpha channels are copied, and each class channel of ``model`` takes the weights of the
    class of the same name in ``init`` (classes ``init`` never saw keep their fresh weights), so a
    site with another label set still starts from what the shared classes learned.

    Returns:
        ``{"copied": tensors copied whole, "total": tensors of model, "prior_classes_matched": n,
        "prior_classes": m}``.

    Raises:
        InvalidInputError: the two architectures differ elsewhere (dimensions, channels, depth).
    """
    a, b = model.config, init.config
    for f in ("language_dim", "embed_dim", "feat_channels", "use_depth", "channels", "decoder_channels"):
        if getattr(a, f) != getattr(b, f):
            raise InvalidInputError(f"cannot warm-start the fusion decoder: {f} is {getattr(a, f)!r}, the initial "
                                    f"decoder's is {getattr(b, f)!r}")
    src = init.state_dict()
    dst = model.state_dict()
    copied, matched = 0, 0
    for name, t in dst.items():
        if name in src and src[name].shape == t.shape and (name != _PRIOR_INPUT or a.prior_names == b.prior_names):
            t.copy_(src[name])
            copied += 1
    if a.prior_names != b.prior_names and _PRIOR_INPUT in src:
        w, w0 = dst[_PRIOR_INPUT], src[_PRIOR_INPUT]
        base = a.feat_channels + 1
        w[:, :base].copy_(w0[:, :base])
        where = {n: i for i, n in enumerate(b.prior_names)}
        for j, n in enumerate(a.prior_names):
            if n in where:
                w[:, base + j].copy_(w0[:, base + where[n]])
                matched += 1
    elif a.prior_names:
        matched = len(a.prior_names)
    return {"copied": copied, "total": len(dst), "prior_classes_matched": matched,
            "prior_classes": len(a.prior_names)}


def save_fusion(path: str | Path, model: FusionDecoder, meta: dict | None = None) -> None:
    """Write ``fusion.safetensors`` + ``fusion.json`` (config and meta) into directory ``path``."""
    from safetensors.torch import save_file
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(p / "fusion.safetensors"))
    (p / "fusion.json").write_text(json.dumps({"config": model.config.to_dict(), "meta": meta or {}}, indent=1))


def load_fusion(path: str | Path, device: str | torch.device = "cpu") -> FusionDecoder:
    """Inverse of :func:`save_fusion` (strict keys, shapes checked)."""
    from safetensors.torch import load_file
    from chorus_ros.core.state_dict import load_state_dict_strict
    p = Path(path)
    if not (p / "fusion.json").is_file() or not (p / "fusion.safetensors").is_file():
        raise CheckpointError(f"no fusion decoder in {p} (needs fusion.json and fusion.safetensors)")
    d = json.loads((p / "fusion.json").read_text())
    model = FusionDecoder(FusionConfig.from_dict(d.get("config", {})))
    load_state_dict_strict(model, load_file(str(p / "fusion.safetensors")), what=f"fusion decoder {p}")
    return model.to(device).eval()


@dataclass
class PerViewConfig:
    """Per-view decoding of the perception pipeline (ROS parameters ``pipeline.per_view.*``)."""

    fusion: str = "off"
    """View labels: 'off' (class scores of the 3D features splatted), 'rendered' (the VDVI fusion decoder on the rendered RGB + splatted features), 'camera' (fusion with the live camera image paired by stamp with the view's pose; the rendered RGB when no image arrived). Fusion needs a checkpoint with a fusion/ decoder (chorus-train stage fusion)."""
    snap_radius: int = 0
    """With fusion: an instance boundary pixel whose 3D label disagrees with the fused label moves to the nearest instance within this many pixels whose 3D label agrees (0, the default: the instance image is the 3D one, which scored higher PQ and cross-view id consistency than 2 px, docs/fusion.md)."""
    temperature: float = 0.05
    """Softmax temperature on the fused cosine logits."""
    instance_image: str = "top"
    """Instance id of a pixel: 'top' (the object of the pixel's strongest Gaussian) or 'weighted' (of the objects whose Gaussians carry the pixel's class, the one with the most blending weight at the pixel; one extra render pass of 16 channels). 'weighted' keeps a faint floater in front of an object from taking the object's pixels, as the composited class scores already do."""

    def validate(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise InvalidInputError(f"per_view.fusion {self.fusion!r} unknown; known: {list(FUSION_MODES)}")
        if self.instance_image not in INSTANCE_IMAGE_MODES:
            raise InvalidInputError(f"per_view.instance_image {self.instance_image!r} unknown; "
                                    f"known: {list(INSTANCE_IMAGE_MODES)}")
        if int(self.snap_radius) < 0:
            raise InvalidInputError(f"per_view.snap_radius must be >= 0, got {self.snap_radius}")
        if not float(self.temperature) > 0:
            raise InvalidInputError(f"per_view.temperature must be > 0, got {self.temperature}")
