"""Stage ``fusion``: train the VDVI fusion decoder (:mod:`chorus_ros.core.decode.fusion`).

The encoder is a trained checkpoint (``stage_options.fusion.encoder``) and stays frozen. For
every training scene (synthetic, ``data.train_seeds``, ``data.views`` trajectory) the map is
encoded once; each view is rendered once with the language features splatted (``[H, W, D]``,
cached as float16) and labelled from the ground truth of its top-weight Gaussian. A step takes
``views_per_step`` random views of a scene, projects the splat to ``feat_channels`` (the linear
``proj`` -- the same map the pipeline applies per Gaussian before splatting), runs the decoder on
(RGB [+ depth], projected splat + alpha) and scores the per-pixel embedding against the text
embeddings of the label set's class names: cross-entropy of ``cos / temperature`` over pixels
with a ground-truth label and alpha >= ``min_alpha``. The image is photometrically jittered
(``image_jitter``) so a live camera image, which never matches the render exactly, stays in
distribution. With ``variants`` > 1 each room is also rendered under random draws of ``shift``
(domain randomisation of the Gaussians: colours, lighting, sizes, noise, floaters), re-encoded by
the frozen encoder, so both the image and the 3D branch see shifted maps (:func:`fusion_variants`).

Output: the checkpoint directory holds the (unchanged) encoder, its text encoder and label set,
and ``fusion/`` (the decoder), so :meth:`PerceptionPipeline.from_checkpoint` loads both.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.labels import UNLABELED
from chorus_ros.core.pipeline import DEFAULT_MIN_OPACITY
from chorus_ros.core.train.stages import Stage, StageLoss, register_stage

__all__ = ["FusionOptions", "FusionStage", "FusionScene", "fusion_variants", "render_fusion_views"]


@dataclass
class FusionOptions:
    """Options of stage ``fusion``."""

    encoder: str = ""
    """Checkpoint directory of the trained (frozen) encoder whose language features are splatted."""
    feat_channels: int = 8
    """Channels of the projected language features that are splatted."""
    use_depth: bool = True
    """Give the rendered depth to the image branch."""
    channels: list[int] = field(default_factory=lambda: [16, 32, 48])
    """Encoder channels per scale (1/2, 1/4, 1/8)."""
    decoder_channels: int = 32
    """FPN decoder width."""
    temperature: float = 0.05
    """Softmax temperature on the cosine logits (as in decode.semantic)."""
    views_per_step: int = 4
    """Views of one scene per optimisation step (one batch)."""
    min_alpha: float = 0.5
    """Pixels with less rendered alpha carry no loss."""
    image_jitter: float = 0.1
    """Brightness/contrast/colour-gain jitter of the input image (robustness to real camera images)."""
    prior: bool = False
    """Train a decoder that corrects the encoder's 3D labels: the view's 3D class probabilities
    (the frozen encoder's, as the pipeline decodes them: softmax of cos(language, text) /
    ``temperature`` over the checkpoint's label set, splatted and divided by alpha) enter its 3D
    branch as input channels and their log is added to its logits
    (:class:`~chorus_ros.core.decode.fusion.FusionConfig` ``prior`` and ``prior_names``). The
    decoder then serves only that label set."""
    flip: bool = False
    """Mirror each step's views left to right with probability 1/2."""
    variants: int = 1
    """Renderings of each training room: the first is the room as generated, each further one the
    room under a random draw of ``shift`` (its own Gaussians, 3D labels and images), so that the
    decoder sees the colour, lighting, size and noise changes of real maps in both its inputs."""
    shift: dict = field(default_factory=dict)
    """Domain randomisation of the variants after the first: :class:`~chorus_ros.core.synthetic.shifts.ShiftConfig`
    fields, each scalable option drawn at a strength in [0, its value] per variant (as ``augment.shift``);
    the cameras follow a tilt. Empty with ``variants`` > 1 is an error."""
    min_opacity: float = DEFAULT_MIN_OPACITY
    """Gaussians below this opacity are dropped before encoding and rendering, as the perception
    pipeline sets them aside (``PipelineConfig.min_opacity``)."""


@dataclass
class FusionScene:
    """Pre-rendered training views of one scene (CPU tensors, ``V`` views)."""

    scene_id: str
    rgb: torch.Tensor
    """[V, 3, H, W] float32 rendered colour."""
    depth: torch.Tensor
    """[V, 1, H, W] float32 rendered depth, metres."""
    alpha: torch.Tensor
    """[V, 1, H, W] float32 rendered alpha."""
    splat: torch.Tensor
    """[V, D, H, W] float16 splatted language features."""
    label: torch.Tensor
    """[V, H, W] int64 ground-truth class (UNLABELED where none)."""
    probs: torch.Tensor | None = None
    """[V, K, H, W] float32 splatted 3D class probabilities divided by alpha (``prior`` only)."""


@torch.no_grad()
def render_fusion_views(model, gaussians, cameras, render_settings=None, text_emb: torch.Tensor | None = None,
                        temperature: float = 0.05) -> tuple[torch.Tensor, ...]:
    """Encode ``gaussians`` with ``model`` and render every camera with the language features
    splatted; returns ``(rgb, depth, alpha, splat, label, probs)`` as in :class:`FusionScene`:
    ``probs`` is None without ``text_emb``; with ``text_emb [K, E]`` (unit rows) it holds the splatted
    3D class probabilities ``[V, K, H, W]`` (softmax of cos(language, text) / ``temperature`` per
    Gaussian, divided by alpha)."""
    from chorus_ros.core.decode.fusion import view_class_probabilities
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.core.render import RenderSettings, render
    model.eval()
    lang = model(gaussians).heads["language"].float().cpu()
    g = GaussianArrays(gaussians.means, gaussians.sh, gaussians.opacities, gaussians.log_scales, gaussians.quats)
    lab = gaussians.extras["label"].long() if "label" in gaussians.extras else None
    rs = render_settings or RenderSettings(backend="reference")
    d = lang.shape[1]
    feats = lang
    if text_emb is not None:
        from chorus_ros.core.adapt.loop import class_probabilities
        feats = torch.cat([lang, class_probabilities(lang, text_emb.float().cpu(), temperature)], 1).contiguous()
    rgb, depth, alpha, splat, label, probs = [], [], [], [], [], []
    for cam in cameras:
        out = render(g, cam, rs, features=feats, return_top_index=True).cpu()
        rgb.append(out.rgb.permute(2, 0, 1).float().clamp(0, 1))
        depth.append(out.depth[None].float())
        alpha.append(out.alpha[None].float())
        splat.append(out.features[..., :d].permute(2, 0, 1).half())
        if text_emb is not None:
            probs.append(view_class_probabilities(out.features[..., d:], out.alpha))
        top = out.top_index.long()
        if lab is not None:
            label.append(torch.where(top >= 0, lab[top.clamp_min(0)], torch.full_like(top, UNLABELED)))
    st = torch.stack
    return (st(rgb), st(depth), st(alpha), st(splat), (st(label) if label else None),
            (st(probs) if probs else None))


def fusion_variants(gaussians, cameras, variants: int, shift: dict, *, seed: int, min_opacity: float = 0.0):
    """The renderings stage ``fusion`` trains on for one room: ``[(gaussians, cameras)]``, first the
    room as given, then ``variants - 1`` random draws of ``shift``
    (:func:`~chorus_ros.core.train.augment.random_shift`; extras such as the ground-truth labels follow
    their source Gaussian, cameras follow the rigid transform). Gaussians below ``min_opacity`` are
    dropped from each, as the pipeline sets them aside. Deterministic in ``seed``."""
    from chorus_ros.core.synthetic.shifts import transform_camera
    from chorus_ros.core.train.augment import random_shift

    def opaque(g):
        keep = ~g.faint_mask(min_opacity)
        return g if bool(keep.all()) else g.index(keep.nonzero().squeeze(1))

    out = [(opaque(gaussians), list(cameras))]
    for k in range(1, variants):
        gen = torch.Generator().manual_seed(int(seed) + k)
        g, _, T = random_shift(gaussians, shift, gen)
        out.append((opaque(g), [transform_camera(c, T) for c in cameras]))
    return out


def jitter_image(rgb: torch.Tensor, amount: float, gen: torch.Generator | None) -> torch.Tensor:
    """Random brightness, contrast and per-channel gain (per image of ``[B, 3, H, W]``)."""
    if amount <= 0:
        return rgb
    b = rgb.shape[0]
    u = lambda *s: (torch.rand(*s, generator=gen) * 2 - 1) * amount  # noqa: E731
    gain = (1 + u(b, 3, 1, 1)).to(rgb)
    contrast = (1 + u(b, 1, 1, 1)).to(rgb)
    bright = u(b, 1, 1, 1).to(rgb)
    mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
    return (((rgb - mean) * contrast + mean) * gain + bright).clamp(0, 1)


@register_stage("fusion")
class FusionStage(Stage):
    """Trains :class:`~chorus_ros.core.decode.fusion.FusionDecoder` on a frozen encoder."""

    options_cls = FusionOptions
    needs_teachers = False

    def _checkpoint(self):
        if not self.options.encoder:
            raise InvalidInputError("stage 'fusion' needs stage_options.fusion.encoder (a trained checkpoint dir)")
        if getattr(self, "_ck", None) is None:
            from chorus_ros.core.encoder.checkpoint import load_checkpoint
            self._ck = load_checkpoint(self.options.encoder)
        return self._ck

    def load_scenes(self, trainer) -> list:
        from chorus_ros.core.train.stages.contrastive import load_map_scenes
        d = trainer.cfg.data
        o = self.options
        if int(o.variants) < 1:
            raise InvalidInputError(f"stage 'fusion': variants must be >= 1, got {o.variants}")
        if int(o.variants) > 1 and not o.shift:
            raise InvalidInputError("stage 'fusion': variants > 1 needs stage_options.fusion.shift (the "
                                    "randomisation that makes the variants differ)")
        ck = self._checkpoint()
        maps = load_map_scenes(list(d.train_seeds), scene=d.scene, views=d.views,
                               density_range=d.density_range or None)
        text_emb = self._prior_text(trainer) if o.prior else None
        out = []
        for i, m in enumerate(maps):
            for k, (g, cams) in enumerate(fusion_variants(m.gaussians, m.cameras, int(o.variants), o.shift,
                                                          seed=int(trainer.cfg.seed) * 1_000_003 + i * 101,
                                                          min_opacity=o.min_opacity)):
                r = render_fusion_views(ck.model, g, cams, text_emb=text_emb, temperature=o.temperature)
                out.append(FusionScene(m.scene_id + (f"#variant{k}" if k else ""), *r))
        return out

    def _prior_text(self, trainer) -> torch.Tensor:
        """Unit text embeddings ``[K, E]`` of the checkpoint's label set (what the pipeline decodes
        the 3D labels with); it must be the training label set, whose ids the ground truth uses."""
        from chorus_ros.core.pipeline import labels_from_meta
        ck = self._checkpoint()
        names = list(labels_from_meta(dict(ck.meta or {})).names)
        if names != list(trainer.label_set.names):
            raise InvalidInputError(f"stage 'fusion' with prior: the encoder checkpoint's label set {names[:5]}... "
                                    f"is not the training label set {list(trainer.label_set.names)[:5]}...: the "
                                    "3D probabilities and the ground truth must index the same classes")
        with torch.no_grad():
            return F.normalize(self._text_encoder().encode(names).float(), dim=-1)

    def _text_encoder(self):
        """The checkpoint's own text encoder (its language head was trained against it), built once."""
        if getattr(self, "_te", None) is None:
            from chorus_ros.core.pipeline import text_spec_from_meta
            from chorus_ros.core.text import build_text_encoder
            self._te = build_text_encoder(text_spec_from_meta(dict(self._checkpoint().meta or {}),
                                                              self.options.encoder))
        return self._te

    def resolve_heads(self, trainer) -> list[str]:
        return list(self._checkpoint().model.config.head_dims())

    def prepare(self, trainer) -> None:
        trainer._text_encoder = self._text_encoder()

    def build_model(self, trainer):
        model = self._checkpoint().model
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def setup(self, trainer) -> None:
        from chorus_ros.core.decode.fusion import FusionConfig, FusionDecoder
        o = self.options
        lang = self._checkpoint().model.config.head_dims()["language"]
        names = tuple(trainer.label_set.names) if o.prior else ()
        cfg = FusionConfig(language_dim=lang, embed_dim=trainer.text_encoder.dim, feat_channels=o.feat_channels,
                           use_depth=o.use_depth, channels=tuple(o.channels), decoder_channels=o.decoder_channels,
                           prior=o.prior, prior_names=names)
        self.modules["fusion"] = FusionDecoder(cfg)
        with torch.no_grad():
            self._text = trainer.text_encoder.encode(list(trainer.label_set.names)).float().to(trainer.device)

    def scene_loss(self, trainer, scene: FusionScene) -> StageLoss:
        from chorus_ros.core.decode.fusion import decoder_class_logits
        o = self.options
        fd = self.modules["fusion"]
        v = scene.rgb.shape[0]
        idx = torch.randperm(v, generator=trainer.gen)[: max(1, o.views_per_step)]
        dev = trainer.device
        rgb = jitter_image(scene.rgb[idx], o.image_jitter, trainer.gen)
        ins = [rgb, scene.splat[idx].float(), scene.alpha[idx], scene.depth[idx], scene.label[idx]]
        if o.prior:
            if scene.probs is None:
                raise InvalidInputError(f"stage 'fusion' with prior: scene {scene.scene_id} has no 3D class probabilities")
            ins.append(scene.probs[idx])
        mirror = o.flip and bool(torch.rand(1, generator=trainer.gen) < 0.5)
        if mirror:                               # the same pixels, mirrored: labels move with them
            ins = [t.flip(-1) for t in ins]
        rgb, splat, alpha, depth, lab, *pr = (t.to(dev) for t in ins)
        prior = pr[0] if pr else None
        logits = decoder_class_logits(fd, rgb, fd.project_pixels(splat), alpha, depth, self._text, o.temperature, prior)
        ok = (lab != UNLABELED) & (alpha[:, 0] >= o.min_alpha)
        if not bool(ok.any()):
            return StageLoss(extra=logits.sum() * 0.0, metrics={"pixels": 0})
        loss = F.cross_entropy(logits.permute(0, 2, 3, 1)[ok], lab[ok])
        acc = float((logits.argmax(1)[ok] == lab[ok]).float().mean())
        return StageLoss(extra=loss, metrics={"acc": acc, "pixels": int(ok.sum())})

    def checkpoint_meta(self, trainer) -> dict:
        return {"fusion": {"encoder": self.options.encoder}}

    def save(self, trainer, ckpt_dir) -> None:
        from pathlib import Path

        from chorus_ros.core.decode.fusion import FUSION_DIR, save_fusion
        save_fusion(Path(ckpt_dir) / FUSION_DIR, self.modules["fusion"],
                    {"step": trainer.step, "encoder": self.options.encoder, "temperature": self.options.temperature,
                     "training": trainer.cfg.to_dict()})
