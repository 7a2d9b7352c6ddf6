"""Render-and-distill adaptation: fit an encoder checkpoint to one scene from posed 2D targets.

Protocol (one scene, a fixed map ``G`` of N Gaussians, training views ``V``):

1. **Targets** (:func:`prepare_views`): for every training view, a pool of pixels (half of them
   near label borders when labels are used) whose rendered alpha is at least ``min_alpha``; at
   those pixels the label (mapped into the adaptation label set), the image colour, the
   depth gate and each teacher's feature map (bilinearly upsampled) are kept. With
   ``splat='cached'`` the pixels' blending weights are computed once
   (:func:`~chorus_ros.core.adapt.splat.blend_weights`).
2. **Model** (:class:`EncoderRunner`): the encoder's per-Gaussian outputs; with ``train='heads'``
   (and adapters on the decoder only) the U-Net runs once and its outputs are cached, each step
   runs only the per-Gaussian decoder, and only on the Gaussians that the step's pixels see.
3. **Step**: take the next ``views_per_step`` views of a shuffled pass over all of them; class probabilities ``softmax(cos(f_lang, t_k) /
   T)`` over the text embeddings of the adaptation label set, head features, and an auxiliary
   colour are splatted at the views' pixels, alpha-normalised and compared with the targets
   (:mod:`.losses`); heads without targets are held to the base model's outputs on the scene
   (``preserve``), and every head to the base model's outputs on replay scenes of the
   training distribution (``replay``), so the site does not overwrite what the checkpoint
   knew. AdamW on the trainable parameters.
4. **Output** (:func:`save_adapted`): a normal encoder checkpoint (adapters merged) with the
   adaptation label set, the base checkpoint's text encoder and teachers, and the provenance
   (base checkpoint and its digest, scene, views, steps, losses, config) under
   ``meta.adaptation``; with ``train='lora'`` also ``adapter.safetensors`` (the adapters alone).

Held-out views never give targets: :func:`evaluate_views` renders the adapted class
probabilities into them, :func:`lift_baseline` lifts the training views' labels onto the
Gaussians (each takes the label with the most blending weight) and renders those.

Example::

    scene = open_scene("data/scene0470_00", views=None)
    res = adapt("checkpoints/demo", scene, train_positions=range(0, 60, 2),
                config=AdaptConfig(train="heads", steps=300), out_dir="checkpoints/site")
    res.history[-1]["loss"]
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chorus_ros.core.adapt import lora
from chorus_ros.core.adapt.config import AdaptConfig
from chorus_ros.core.adapt.losses import boundary_mask, label_loss, rgb_loss, teacher_loss
from chorus_ros.core.adapt.splat import PixelBlend, blend_weights
from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera
from chorus_ros.core.labels import UNLABELED, LabelSet
from chorus_ros.core.metrics.semantic import ConfusionMatrix, SemanticScores
from chorus_ros.core.render import RenderSettings, render

if TYPE_CHECKING:
    from chorus_ros.core.adapt.fusion import FusionRun

__all__ = ["load_fusion_init", "replay_class_names", "carve_validation", "epoch_batches", "planned_steps", "TrainView", "EncoderRunner",
           "AdaptResult", "adaptation_label_set", "prepare_views", "adapt", "evaluate_views", "lift_baseline", "save_adapted", "class_probabilities", "load_with_adapter", "adapt_checkpoint", "ADAPTER_FILE"]

ADAPTER_FILE = "adapter.safetensors"
"""Low-rank adapters of a ``train='lora'`` checkpoint (keys ``<module>.lora_A/B``)."""


# ----------------------------------------------------------------------------- label space
def adaptation_label_set(scene, base: LabelSet) -> LabelSet:
    """The classes the adapted checkpoint labels: the scene's class names after its labels map
    (``null`` drops a class), in folder id order; colours and stuff flags from ``base`` where
    the name exists there."""
    from chorus_ros.core.decode.semantic import default_colors
    lm = scene.labels_map or {}
    names: list[str] = []
    for n in scene.class_names():
        tgt = lm[n] if n in lm else n
        if tgt is not None and tgt not in names:
            names.append(tgt)
    if not names:
        raise InvalidInputError(f"scene {scene.name!r} has no class left after the labels map")
    fallback = default_colors(len(names))
    stuff_src = {lm.get(n, n) for n in getattr(scene, "stuff_names", ())}
    colors, stuff = [], []
    for i, n in enumerate(names):
        if n in base.names:
            j = base.names.index(n)
            colors.append(base.colors[j])
            stuff.append(bool(base.stuff[j]) or n in stuff_src)
        else:
            colors.append(fallback[i])
            stuff.append(n in stuff_src)
    return LabelSet(names, np.asarray(colors), np.asarray(stuff), f"{scene.name}-adapted")


# ----------------------------------------------------------------------------- targets
@dataclass
class TrainView:
    """Targets of one training view at its pooled pixels (``P`` of them)."""

    position: int
    """Position of the view in the scene's selected frames."""
    camera: Camera
    pixels: torch.Tensor
    """[P] int64 linear pixel indices ``y * W + x``."""
    alpha: torch.Tensor
    """[P] float32 rendered alpha of the map (>= min_alpha)."""
    weight: torch.Tensor
    """[P] float32 pixel weight (the depth gate; 1 without depth)."""
    labels: torch.Tensor | None = None
    """[P] int64 class ids in the adaptation label set (65535: none)."""
    border: torch.Tensor | None = None
    """[P] bool, near a label border."""
    rgb: torch.Tensor | None = None
    """[P, 3] float32 image colour in [0, 1]."""
    teachers: dict[str, torch.Tensor] = field(default_factory=dict)
    """head -> [P, C] teacher features at the pixels."""
    blend: PixelBlend | None = None
    """Cached blending weights (``splat='cached'``)."""
    classes: torch.Tensor | None = None
    """[C] int64 adaptation class ids shown anywhere in the view's label image (all its
    pixels, not only the pool)."""


def _sample_pool(labels: np.ndarray | None, border: np.ndarray | None, h: int, w: int, n: int,
                 gen: torch.Generator, border_share: float = 0.5) -> torch.Tensor:
    if labels is None:
        cand = torch.arange(h * w)
        return cand[torch.randperm(len(cand), generator=gen)[:n]]
    lab = torch.from_numpy(labels.reshape(-1) != UNLABELED)
    bor = torch.from_numpy(border.reshape(-1)) & lab
    b_idx = bor.nonzero().squeeze(1)
    b_idx = b_idx[torch.randperm(len(b_idx), generator=gen)[: int(n * border_share)]]
    rest = lab.clone()
    rest[b_idx] = False
    r_idx = rest.nonzero().squeeze(1)
    r_idx = r_idx[torch.randperm(len(r_idx), generator=gen)[: n - len(b_idx)]]
    return torch.sort(torch.cat([b_idx, r_idx])).values


def prepare_views(scene, gaussians: GaussianArrays, positions: Sequence[int], cfg: AdaptConfig,
                  lut: np.ndarray | None, label_set: LabelSet, teachers: Sequence = (),
                  splat: str = "cached", border_share: float = 0.5) -> list[TrainView]:
    """Targets of the training views (see the module docstring, step 1).

    Args:
        scene: a scene folder (``.frame(k)`` -> rgb/depth/semantic/instance/camera).
        gaussians: the map (ground truth stripped).
        positions: training frame positions in ``scene``.
        lut: ``[65536]`` folder class id -> adaptation class id (None: no label targets).
        label_set: the adaptation label set (the oracle teachers' context).
        teachers: built teachers (each supervises head ``teacher.kind``).
        splat: 'cached' computes the pixels' blending weights now.
        border_share: fraction of the pool drawn near label borders (validation views: 0,
            i.e. uniform over labelled pixels like the evaluation).
    """
    from chorus_ros.core.lift import upsample_map
    from chorus_ros.core.teachers import FrameContext

    settings = RenderSettings(backend=cfg.render_backend)
    gen = torch.Generator().manual_seed(cfg.seed)
    out: list[TrainView] = []
    for pos in positions:
        fr = scene.frame(int(pos))
        cam = fr.camera
        h, w = cam.height, cam.width
        labels = None
        if lut is not None:
            if fr.semantic is None:
                raise InvalidInputError(f"scene {scene.name!r} frame {fr.index} has no label image "
                                        "(semantic_class/), needed for label targets")
            labels = lut[fr.semantic.astype(np.int64)]
        border = boundary_mask(torch.from_numpy(labels), cfg.loss.boundary_px).numpy() if labels is not None else None
        pix = _sample_pool(labels, border, h, w, cfg.pixels_per_view, gen, border_share)
        blend = None
        if splat == "cached":
            blend = blend_weights(gaussians, cam, pix, settings)
            alpha, rdepth = blend.alpha, blend.depth
        else:
            with torch.no_grad():
                r = render(gaussians, cam, settings)
            alpha, rdepth = r.alpha.reshape(-1)[pix].float().cpu(), r.depth.reshape(-1)[pix].float().cpu()
        keep = (alpha >= cfg.min_alpha).nonzero().squeeze(1)
        if blend is not None:
            blend = blend.select(keep)
        pix, alpha, rdepth = pix[keep], alpha[keep], rdepth[keep]
        weight = torch.ones(len(pix))
        if cfg.loss.depth_gate > 0 and fr.depth is not None:
            d = torch.from_numpy(fr.depth.reshape(-1)[pix.numpy()]).float()
            bad = (d > 0) & ((rdepth - d).abs() > cfg.loss.depth_tolerance * d)
            weight = torch.where(bad, torch.full_like(weight, 1.0 - cfg.loss.depth_gate), weight)
        tv = TrainView(int(pos), cam, pix, alpha, weight, blend=blend)
        if labels is not None:
            tv.labels = torch.from_numpy(labels.reshape(-1)[pix.numpy()]).long()
            tv.border = torch.from_numpy(border.reshape(-1)[pix.numpy()])
            shown = np.unique(labels)
            tv.classes = torch.from_numpy(shown[shown != UNLABELED].astype(np.int64))
        img = None
        if fr.rgb is not None:
            img = torch.from_numpy(fr.rgb.astype(np.float32) / 255.0)
            tv.rgb = img.reshape(-1, 3)[pix]
        if teachers:
            if img is None:
                raise InvalidInputError(f"scene {scene.name!r} frame {fr.index} has no rgb image for the teachers")
            ctx = FrameContext(labels=None if labels is None else torch.from_numpy(labels),
                               instances=None if fr.instance is None else torch.from_numpy(
                                   np.where(fr.instance.astype(np.int64) == scene.instance_none_id, UNLABELED,
                                            fr.instance.astype(np.int64))),
                               label_set=label_set, seed=int(fr.index))
            for t in teachers:
                fmap = upsample_map(t(img, ctx), h, w)
                tv.teachers[t.kind] = fmap.reshape(h * w, -1)[pix].float()
        out.append(tv)
    return out


# ----------------------------------------------------------------------------- the model
class EncoderRunner(nn.Module):
    """The encoder's per-Gaussian outputs for adaptation, with the U-Net cached when frozen.

    Args:
        model: a :class:`~chorus_ros.core.encoder.ChorusEncoder` (adapted in place).
        gaussians: the scene's map.
        cfg: the adaptation config (``train``, ``lora_*``).
    """

    def __init__(self, model, gaussians: GaussianArrays, cfg: AdaptConfig, adapters: bool = True) -> None:
        super().__init__()
        self.model = model
        self.gaussians = gaussians
        self.cfg = cfg
        params: list[nn.Parameter] = []
        self.trunk_frozen = cfg.train == "heads" or (cfg.train == "lora" and not cfg.lora_convs)
        self._trunk: tuple[torch.Tensor, torch.Tensor] | None = None
        self.params = params
        if not adapters:  # a second view of an already prepared model (replay scenes)
            return
        if cfg.widen:
            from chorus_ros.core.adapt.widen import widen_decoder
            widen_decoder(model, cfg.widen, cfg.seed)
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.train == "all":
            for p in model.parameters():
                p.requires_grad_(True)
            params = list(model.parameters())
        elif cfg.widen_only:  # validate(): implies train 'heads' and widen > 0
            from chorus_ros.core.adapt.widen import new_unit_parameters
            params = new_unit_parameters(model, cfg.widen)
        elif cfg.train == "heads":
            for mod in (model.out_mlp, model.embed_norm, model.heads):
                for p in mod.parameters():
                    p.requires_grad_(True)
                    params.append(p)
        else:
            names = lora.lora_targets(model, convs=cfg.lora_convs)
            params = lora.add_adapters(model, names, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
        self.aux_rgb = nn.Linear(model.config.embed_dim, 3)
        self.params = params

    def trunk(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(interp [N, C0], h [N, point_hidden])``: the inputs of the per-Gaussian decoder."""
        from chorus_ros.core.encoder.features import voxelize
        from chorus_ros.core.encoder.model import interpolate_voxel_features
        if self.trunk_frozen and self._trunk is not None:
            return self._trunk
        m, g = self.model, self.gaussians
        with torch.set_grad_enabled(not self.trunk_frozen and torch.is_grad_enabled()):
            means = g.means.float()
            vox = voxelize(means, m.config.voxel_size)
            h = m.point_features(g, vox)
            v = m.voxel_stem(h, vox)
            y = m.unet(m._sparse_tensor(v, vox, 1))
            interp = interpolate_voxel_features(y.features, vox, means)
        if self.trunk_frozen:
            self._trunk = (interp.detach(), h.detach())
        return interp, h

    def forward(self, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(embedding [U, D], {head: [U, dim]})`` of the Gaussians ``idx`` (None: all N)."""
        interp, h = self.trunk()
        if idx is not None:
            interp, h = interp[idx], h[idx]
        return self.model.gaussian_head(interp, h)


def replay_scenes(cfg: AdaptConfig) -> list[GaussianArrays]:
    """The replay scenes of ``cfg.replay_seeds`` (synthetic, ground truth stripped)."""
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    out = []
    for s in cfg.replay_seeds:
        g = generate_scene(SceneConfig(seed=int(s), target_gaussians=int(cfg.replay_gaussians))).gaussians
        out.append(GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids))
    return out


def class_probabilities(lang: torch.Tensor, text_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[N, K]`` softmax of cos(language features, unit text embeddings) / temperature (as
    :class:`~chorus_ros.core.decode.SemanticDecoder`)."""
    return torch.softmax(F.normalize(lang, dim=-1) @ text_emb.T / temperature, dim=-1)


# ----------------------------------------------------------------------------- evaluation
def _render_scores(gaussians: GaussianArrays, cam: Camera, scores: torch.Tensor,
                   settings: RenderSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """``([H, W, K] composited scores, [H, W] alpha)`` of per-Gaussian ``scores [N, K]``,
    rendered 32 channels at a time."""
    parts, out = [], None
    for i in range(0, scores.shape[1], 32):
        out = render(gaussians, cam, settings, features=scores[:, i:i + 32].contiguous())
        parts.append(out.features)
    return torch.cat(parts, -1), out.alpha


@torch.no_grad()
def _render_labels(gaussians: GaussianArrays, cam: Camera, scores: torch.Tensor, min_alpha: float,
                   settings: RenderSettings) -> np.ndarray:
    """Argmax label image of per-Gaussian ``scores [N, K]``; 65535 where alpha < min_alpha or no score."""
    img, alpha = _render_scores(gaussians, cam, scores, settings)
    img = img.cpu()
    conf, lab = img.max(-1)
    bad = (alpha.cpu() < min_alpha) | (conf <= 0)
    return torch.where(bad, torch.full_like(lab, UNLABELED), lab).numpy()


def evaluate_views(gaussians: GaussianArrays, scene, positions: Sequence[int], scores: torch.Tensor,
                   lut: np.ndarray, label_set: LabelSet, min_alpha: float = 0.5,
                   backend: str = "auto") -> SemanticScores:
    """mIoU etc. of per-Gaussian class ``scores [N, K]`` (probabilities or one-hot) rendered
    into the views ``positions`` against their label images (mapped by ``lut``). Pixels with a
    label but rendered alpha below ``min_alpha`` count as misses."""
    settings = RenderSettings(backend=backend)
    cm = ConfusionMatrix(len(label_set))
    for pos in positions:
        fr = scene.frame(int(pos))
        pred = _render_labels(gaussians, fr.camera, scores.float(), min_alpha, settings)
        cm.update(pred, lut[fr.semantic.astype(np.int64)])
    return cm.compute(label_set.names)


def lift_baseline(gaussians: GaussianArrays, scene, train_positions: Sequence[int], lut: np.ndarray,
                  num_classes: int, backend: str = "auto") -> tuple[torch.Tensor, float]:
    """The no-learning baseline: lift the training views' label images onto the Gaussians with
    :func:`chorus_ros.core.lift.lift_view` (per Gaussian, the blending weight each class
    receives) and give each Gaussian the class with the most weight.

    Returns ``(one_hot [N, K] float32, zero rows for never-seen Gaussians; fraction of
    Gaussians never labelled)``.
    """
    from chorus_ros.core.lift import lift_view
    settings = RenderSettings(backend=backend, sh_degree=0)
    sums = torch.zeros(len(gaussians), num_classes, dtype=torch.float64)
    for pos in train_positions:
        fr = scene.frame(int(pos))
        lab = torch.from_numpy(lut[fr.semantic.astype(np.int64)])
        oh = torch.zeros(*lab.shape, num_classes + 1)
        oh.scatter_(-1, torch.where(lab == UNLABELED, num_classes, lab)[..., None], 1.0)
        s, _ = lift_view(gaussians, fr.camera, oh[..., :num_classes], settings)
        sums += s.double().cpu()
    seen = sums.sum(1) > 0
    one_hot = torch.zeros(len(gaussians), num_classes)
    idx = seen.nonzero().squeeze(1)
    one_hot[idx, sums[idx].argmax(1)] = 1.0
    return one_hot, float(1.0 - seen.double().mean())


# ----------------------------------------------------------------------------- the loop
@dataclass
class AdaptResult:
    """What :func:`adapt` returns."""

    model: nn.Module
    """The adapted encoder (adapters merged), eval mode."""
    label_set: LabelSet
    """The adaptation label set."""
    history: list[dict] = field(default_factory=list)
    """Per step: ``step``, ``loss`` and each term."""
    steps: int = 0
    seconds_prepare: float = 0.0
    seconds_train: float = 0.0
    adapter: dict[str, torch.Tensor] = field(default_factory=dict)
    """The low-rank adapters (``train='lora'``), else empty."""
    stopped_by_budget: bool = False
    scores: torch.Tensor | None = None
    """[N, K] per-Gaussian class probabilities of the scene after adaptation."""
    peak_rss_mib: float = 0.0
    """Peak resident memory of the process after the run (ru_maxrss), MiB."""
    cpu_seconds_prepare: float = 0.0
    """Process CPU time (all threads) of the preparation; on a shared machine the wall time
    also counts waiting for a core."""
    cpu_seconds_train: float = 0.0
    """Process CPU time of the training loop."""
    best_step: int | None = None
    """With validation views: the step whose weights were kept (``keep_best``) or would have been."""
    val_miou: float | None = None
    """With validation views: their best mIoU (pooled pixels)."""
    absent_classes: list[int] = field(default_factory=list)
    """Adaptation class ids no training view shows (held off by the ``absent`` term)."""
    language: torch.Tensor | None = None
    """[N, D] per-Gaussian language features of the scene after adaptation (what ``scores`` come from)."""
    fusion: "FusionRun | None" = None
    """The per-site fusion decoder and its training (``cfg.fusion_steps``), else None."""


def carve_validation(positions: Sequence[int], k: int) -> tuple[list[int], list[int]]:
    """``(train, val)``: ``k`` of the labelled ``positions``, evenly spaced and never the first
    (nor the last while ``k < len(positions) - 1``), become validation views for model
    selection; the rest stay training views."""
    positions = [int(p) for p in positions]
    if k <= 0:
        return positions, []
    if k > len(positions) - 1:
        raise InvalidInputError(f"{k} validation views leave no training view of {len(positions)}")
    idx = set(np.round(np.linspace(0, len(positions) - 1, k + 2)[1:-1]).astype(int).tolist())
    if len(idx) < k:
        idx = set(range(1, k + 1))
    return ([p for i, p in enumerate(positions) if i not in idx], [p for i, p in enumerate(positions) if i in idx])


def replay_class_names(base: LabelSet, site: LabelSet, include_site: bool = True) -> list[str]:
    """Class names of the replay KL: the base label set's, then (``include_site``) the site's
    names the base lacks. The adapted checkpoint ships with the site's label set, so on
    training-distribution scenes its class probabilities over *those* names must stay the
    base's too, not only over the base names."""
    names = list(base.names)
    if include_site:
        names += [n for n in site.names if n not in names]
    return names


def epoch_batches(n_views: int, per_step: int, gen: torch.Generator):
    """Endless view batches, epoch by epoch: each epoch is a shuffled pass over all ``n_views``
    views cut into ``ceil(n_views / per_step)`` batches (the last may be smaller), so after
    ``e`` epochs every view has been visited exactly ``e`` times."""
    while True:
        order = torch.randperm(n_views, generator=gen).tolist()
        for i in range(0, n_views, per_step):
            yield order[i:i + per_step]


def planned_steps(cfg: AdaptConfig, n_views: int) -> int:
    """Optimiser steps of a run with ``n_views`` training views: ``cfg.steps``, or with
    ``cfg.epochs > 0`` ``ceil(epochs * ceil(n_views / views_per_step))`` (every view visited
    ``epochs`` times)."""
    if cfg.epochs <= 0:
        return int(cfg.steps)
    per_epoch = -(-n_views // cfg.views_per_step)
    return int(np.ceil(cfg.epochs * per_epoch))


@torch.no_grad()
def _validation_miou(runner: "EncoderRunner", views: Sequence[TrainView], text_emb: torch.Tensor,
                     temperature: float, splat: str, gaussians: GaussianArrays, settings: RenderSettings) -> float:
    """mIoU (classes with a non-empty union, as :func:`evaluate_views`) of the argmax of the
    composited class probabilities at the validation views' pooled pixels."""
    dev = text_emb.device
    cm = ConfusionMatrix(text_emb.shape[0])
    full = None
    for v in views:
        if splat == "cached":
            uniq, inv = v.blend.gaussians_used()
            _, hd = runner(uniq.to(dev))
            img = v.blend.composite(class_probabilities(hd["language"], text_emb, temperature), inv.to(dev))
        else:
            if full is None:
                _, hd = runner()
                full = class_probabilities(hd["language"], text_emb, temperature)
            img = _render_scores(gaussians, v.camera, full, settings)[0].reshape(-1, full.shape[1])[v.pixels.to(dev)]
        cm.update(img.argmax(1).cpu(), v.labels)
    return float(cm.compute().miou)


def _resolve_splat(cfg: AdaptConfig) -> str:
    if cfg.splat != "auto":
        return cfg.splat
    return "render" if str(cfg.device).startswith("cuda") else "cached"


def adapt(model, gaussians: GaussianArrays, scene, train_positions: Sequence[int], cfg: AdaptConfig, *,
          label_set: LabelSet, lut: np.ndarray | None, text_encoder, teachers: Sequence = (),
          temperature: float = 0.05, replay_labels: LabelSet | None = None,
          val_positions: Sequence[int] = ()) -> AdaptResult:
    """Adapt ``model`` (in place) to ``scene`` (see the module docstring).

    Args:
        model: the base encoder.
        gaussians: the scene's map (ground truth stripped), on ``cfg.device``.
        scene: the scene folder giving the training frames.
        train_positions: frame positions whose 2D targets are used.
        cfg: adaptation settings.
        label_set: the adaptation label set (:func:`adaptation_label_set`).
        lut: folder class id -> ``label_set`` id (None unless label targets are used).
        text_encoder: encodes ``label_set.names`` for the class scores.
        teachers: built teachers (``cfg.targets`` 'teachers'/'both').
        temperature: softmax temperature of the class scores.
        replay_labels: the base checkpoint's label set; on replay scenes the language head is
            then held to the base class probabilities over it (KL divergence) rather than to its
            raw features.
        val_positions: validation views carved from the labelled views (never trained on);
            scored every ``cfg.val_every`` steps, and with ``cfg.keep_best`` the weights of the
            best-scoring step are returned (label targets only).
    """
    import resource

    t_start = time.perf_counter()
    c_start = time.process_time()
    cfg.validate()
    if not len(train_positions):
        raise InvalidInputError("adaptation needs at least one training view")
    use_labels = cfg.targets in ("labels", "both")
    use_teachers = cfg.targets in ("teachers", "both")
    if use_labels and lut is None:
        raise InvalidInputError("label targets need a class lookup (lut)")
    if use_teachers and not teachers:
        raise InvalidInputError("teacher targets need at least one teacher")
    heads = set(model.config.head_dims())
    if use_labels and "language" not in heads:
        raise InvalidInputError("label targets need the model's 'language' head")
    teachers = [t for t in teachers if t.kind in heads] if use_teachers else []
    overlap = sorted(set(int(p) for p in val_positions) & set(int(p) for p in train_positions))
    if overlap:
        raise InvalidInputError(f"validation views overlap the training views at positions {overlap[:10]}")
    if len(val_positions) and not use_labels:
        raise InvalidInputError("validation views need label targets (targets 'labels' or 'both')")
    torch.manual_seed(cfg.seed)
    splat = _resolve_splat(cfg)
    dev = torch.device(cfg.device)
    model = model.to(dev).eval()
    gaussians = gaussians.to(dev)
    view_gaussians = gaussians.cpu() if splat == "cached" else gaussians
    views = prepare_views(scene, view_gaussians, train_positions, cfg, lut if use_labels else None, label_set,
                          teachers, splat)
    views = [v for v in views if len(v.pixels)]
    if not views:
        raise InvalidInputError("no training view has pixels with rendered alpha >= min_alpha (does the map "
                                "face the cameras?)")
    val_views = []
    if len(val_positions):
        val_views = prepare_views(scene, view_gaussians, val_positions, cfg, lut, label_set, (), splat,
                                  border_share=0.0)
        val_views = [v for v in val_views if len(v.pixels)]
    absent = torch.empty(0, dtype=torch.long)
    if use_labels and cfg.loss.absent > 0:
        shown = torch.zeros(len(label_set), dtype=torch.bool)
        for v in views:
            shown[v.classes] = True
        absent = (~shown).nonzero().squeeze(1).to(dev)
    text_emb = F.normalize(text_encoder.encode(list(label_set.names)).float(), dim=-1).to(dev)
    runner = EncoderRunner(model, gaussians, cfg).to(dev)
    with torch.no_grad():
        _, base_heads = runner()
    base_heads = {k: v.detach() for k, v in base_heads.items()}
    replays = []
    replay_temb = None
    if replay_labels is not None:
        names = replay_class_names(replay_labels, label_set, cfg.replay_site_classes)
        replay_temb = F.normalize(text_encoder.encode(names).float(), dim=-1).to(dev)
    if cfg.loss.replay > 0:
        for rg in replay_scenes(cfg):
            r = EncoderRunner(model, rg.to(dev), cfg, adapters=False)
            with torch.no_grad():
                _, rb = r()
            replays.append((r, {k: v.detach() for k, v in rb.items()}))
    targeted = ({"language"} if use_labels else set()) | {t.kind for t in teachers}
    preserve = [k for k in base_heads if k not in targeted]
    params = list(runner.params)
    if cfg.loss.rgb > 0:
        params += list(runner.aux_rgb.parameters())
    lr = cfg.lr * (cfg.lr_all_factor if cfg.train == "all" else 1.0)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    n_steps = planned_steps(cfg, len(views))
    sched = None
    if cfg.lr_schedule == "cosine":
        from chorus_ros.core.train.trainer import lr_factor
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, n_steps, 0, 0.0))
    t_prep = time.perf_counter() - t_start
    c_prep = time.process_time() - c_start
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    batches = epoch_batches(len(views), cfg.views_per_step, gen)
    history: list[dict] = []
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=n_steps, desc="adapt", unit="step")
    settings = RenderSettings(backend=cfg.render_backend)
    stopped = False
    step = 0
    best: tuple[float, int, list[torch.Tensor]] | None = None
    n_all = len(gaussians)

    def validate(at: int) -> None:
        nonlocal best
        score = _validation_miou(runner, val_views, text_emb, temperature, splat, gaussians, settings)
        history[-1]["val_miou"] = score
        if best is None or score > best[0]:
            best = (score, at, [p.detach().clone() for p in params] if cfg.keep_best else [])

    for step in range(1, n_steps + 1):
        if cfg.budget_s and time.perf_counter() - t_start > cfg.budget_s:
            stopped = True
            step -= 1
            break
        sel = [views[i] for i in next(batches)]
        aidx = None
        if len(absent):
            aidx = torch.randint(n_all, (cfg.absent_batch,), generator=gen)
        if splat == "cached":
            allg = torch.cat([v.blend.pair_gaussian for v in sel])
            uniq, inv = torch.unique(allg, return_inverse=True)
            n_u = len(uniq)
            emb, hd = runner((uniq if aidx is None else torch.cat([uniq, aidx])).to(dev))
            absent_lang = None if aidx is None else hd["language"][n_u:]
            emb, hd = emb[:n_u], {k: v[:n_u] for k, v in hd.items()}
            inv = inv.to(dev).split([v.blend.nnz for v in sel])
            gsel = uniq.to(dev)
        else:
            emb, hd = runner()
            absent_lang = None if aidx is None else hd["language"][aidx.to(dev)]
            inv = [None] * len(sel)
            gsel = None
        chans = {}
        if use_labels:
            chans["probs"] = class_probabilities(hd["language"], text_emb, temperature)
        for t in teachers:
            chans[f"t.{t.kind}"] = hd[t.kind]
        if cfg.loss.rgb > 0:
            chans["rgb"] = torch.sigmoid(runner.aux_rgb(emb))
        names = list(chans)
        packed = torch.cat([chans[n] for n in names], 1)
        widths = [chans[n].shape[1] for n in names]
        terms: dict[str, torch.Tensor] = {}
        for v, rows in zip(sel, inv):
            if splat == "cached":
                img = v.blend.composite(packed, rows)
            else:
                out = render(gaussians, v.camera, settings, features=packed)
                img = out.features.reshape(-1, packed.shape[1])[v.pixels.to(dev)]
            img = img / v.alpha.to(dev)[:, None]
            parts = dict(zip(names, img.split(widths, 1)))
            wgt = v.weight.to(dev)
            if use_labels and cfg.loss.label_ce > 0:
                terms["labels"] = terms.get("labels", 0) + cfg.loss.label_ce * label_loss(
                    parts["probs"], v.labels.to(dev), wgt, v.border.to(dev), cfg.loss.boundary)
            for t in teachers:
                terms[f"teacher.{t.kind}"] = terms.get(f"teacher.{t.kind}", 0) + teacher_loss(
                    parts[f"t.{t.kind}"], v.teachers[t.kind].to(dev), wgt, cfg.loss.teacher_cos, cfg.loss.teacher_l2)
            if cfg.loss.rgb > 0 and v.rgb is not None:
                terms["rgb"] = terms.get("rgb", 0) + cfg.loss.rgb * rgb_loss(parts["rgb"], v.rgb.to(dev), wgt)
        terms = {k: val / len(sel) for k, val in terms.items()}
        if absent_lang is not None:
            # no training label shows these classes: keep their probability mass off every Gaussian
            mass = class_probabilities(absent_lang, text_emb, temperature)[:, absent].sum(1)
            terms["absent"] = cfg.loss.absent * -torch.log((1.0 - mass).clamp_min(1e-6)).mean()
        if preserve and cfg.loss.preserve > 0:
            base = {k: (base_heads[k] if gsel is None else base_heads[k][gsel]) for k in preserve}
            terms["preserve"] = cfg.loss.preserve * sum(
                (hd[k] - base[k]).pow(2).mean() / base[k].pow(2).mean().clamp_min(1e-8) for k in preserve) / len(preserve)
        if replays:
            rl = 0.0
            for r, rb in replays:
                idx = torch.randint(len(r.gaussians), (cfg.replay_batch,), generator=gen).to(dev)
                _, rh = r(idx)
                parts = []
                for k in rb:
                    if k == "language" and replay_temb is not None:
                        # what the language head is for: the class probabilities over the base label set
                        pb = class_probabilities(rb[k][idx], replay_temb, temperature)
                        logp = torch.log_softmax(F.normalize(rh[k], dim=-1) @ replay_temb.T / temperature, -1)
                        parts.append((pb * (torch.log(pb.clamp_min(1e-12)) - logp)).sum(1).mean())
                    else:
                        parts.append((rh[k] - rb[k][idx]).pow(2).mean() / rb[k][idx].pow(2).mean().clamp_min(1e-8))
                rl = rl + sum(parts) / len(parts)
            terms["replay"] = cfg.loss.replay * rl / len(replays)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        rec = {"step": step, "loss": float(loss.detach())}
        rec.update({k: float(v.detach()) for k, v in terms.items()})
        history.append(rec)
        if val_views and ((cfg.val_every and step % cfg.val_every == 0) or step == n_steps):
            validate(step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
    if bar is not None:
        bar.close()
    if val_views and history and "val_miou" not in history[-1]:
        validate(step)  # stopped by the budget between validations
    best_step = None
    if best is not None:
        best_step = best[1]
        if cfg.keep_best:
            with torch.no_grad():
                for p, v in zip(params, best[2]):
                    p.copy_(v)
    t_train = time.perf_counter() - t_start - t_prep
    c_train = time.process_time() - c_start - c_prep
    adapter = lora.adapter_state(model) if cfg.train == "lora" else {}
    runner._trunk = None
    runner.trunk_frozen = False
    with torch.no_grad():
        _, hd = runner()
        scores = class_probabilities(hd["language"], text_emb, temperature) if "language" in hd else None
    lora.merge_adapters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return AdaptResult(model.eval(), label_set, history, step, t_prep, t_train, adapter, stopped,
                       None if scores is None else scores.cpu(), rss, c_prep, c_train, best_step=best_step,
                       val_miou=None if best is None else best[0], absent_classes=[int(c) for c in absent.tolist()],
                       language=hd["language"].detach().float().cpu() if "language" in hd else None)


# ----------------------------------------------------------------------------- saving
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_adapted(out_dir: str | os.PathLike, result: AdaptResult, base_dir: str | os.PathLike, base_meta: dict,
                 provenance: dict) -> Path:
    """Write the adapted checkpoint (module docstring, step 4) and return its folder.

    Files of the base checkpoint other than its weights and config (the text encoder's
    weights, ...) are copied, so the new folder is self-contained; ``labels.yaml`` is rewritten
    with the adaptation label set.
    """
    from safetensors.torch import save_file

    from chorus_ros.core.decode.fusion import FUSION_DIR, save_fusion
    from chorus_ros.core.encoder.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_checkpoint
    base_dir, out = Path(base_dir), Path(out_dir)
    if out.resolve() == base_dir.resolve():
        raise InvalidInputError(f"--out {out} is the base checkpoint; write the adapted one elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    for f in base_dir.iterdir():
        if f.is_file() and f.name not in (WEIGHTS_FILE, CONFIG_FILE, ADAPTER_FILE, "labels.yaml"):
            shutil.copy2(f, out / f.name)
    meta = copy.deepcopy(dict(base_meta))
    meta.pop("labels", None)
    meta["label_set"] = result.label_set.to_dict()
    prov = dict(provenance)
    prov["base_checkpoint"] = str(base_dir.resolve())
    prov["base_digest"] = _digest(base_dir / WEIGHTS_FILE) if (base_dir / WEIGHTS_FILE).is_file() else ""
    prov["steps"] = int(result.steps)
    prov["stopped_by_budget"] = bool(result.stopped_by_budget)
    prov["seconds_prepare"] = round(float(result.seconds_prepare), 2)
    prov["seconds_train"] = round(float(result.seconds_train), 2)
    prov["cpu_seconds"] = round(float(result.cpu_seconds_prepare + result.cpu_seconds_train), 2)
    if result.history:
        first, last = result.history[0], result.history[-1]
        tail = result.history[-10:]
        prov["losses"] = {"first": {k: round(float(v), 6) for k, v in first.items() if k != "step"},
                          "last": {k: round(float(v), 6) for k, v in last.items() if k != "step"},
                          "last10_mean": round(float(np.mean([r["loss"] for r in tail])), 6)}
    if result.adapter:
        save_file(result.adapter, str(out / ADAPTER_FILE), metadata={"format": "chorus_lora/1"})
        prov["adapter"] = {"file": ADAPTER_FILE, "parameters": int(sum(v.numel() for v in result.adapter.values()))}
    fusion_dir = out / FUSION_DIR
    if fusion_dir.exists():                     # never leave an earlier run's decoder beside new weights
        shutil.rmtree(fusion_dir)
    run = result.fusion
    if run is not None and run.steps > 0:
        hist = run.history
        info = {"steps": int(run.steps), "stopped_by_budget": bool(run.stopped_by_budget),
                "init": provenance.get("config", {}).get("fusion_init", ""), "warm_start": run.warm_start,
                "seconds": round(float(run.seconds), 2), "views": prov.get("views"),
                "loss_first": round(hist[0]["loss"], 6) if hist else None,
                "loss_last": round(hist[-1]["loss"], 6) if hist else None,
                "loss_last10_mean": round(float(np.mean([r["loss"] for r in hist[-10:]])), 6) if hist else None}
        if run.val_miou is not None:
            info["validation"] = {"best_step": run.best_step, "best_miou": round(float(run.val_miou), 4),
                                  "prior_miou": round(float(run.prior_val_miou), 4), "rejected": bool(run.rejected)}
        if run.used:
            save_fusion(fusion_dir, run.decoder, dict(info, base_checkpoint=prov["base_checkpoint"]))
            prov["fusion"] = dict(info, dir=FUSION_DIR)
        else:                                   # it lost to the 3D labels on the validation views
            prov["fusion"] = dict(info, dir=None)
    meta["adaptation"] = prov
    save_checkpoint(out, result.model, meta)
    result.label_set.to_yaml(out / "labels.yaml")
    return out


def load_fusion_init(spec: str, base_dir):
    """The decoder ``AdaptConfig.fusion_init`` names: None for '' (from scratch), the fusion/ of
    checkpoint ``base_dir`` for 'base', else the decoder directory ``spec``.

    Raises:
        CheckpointError: no decoder there (named).
    """
    from chorus_ros.core.decode.fusion import FUSION_DIR, load_fusion
    if not spec:
        return None
    path = Path(base_dir) / FUSION_DIR if spec == "base" else Path(spec)
    if not (path / "fusion.json").is_file():
        raise CheckpointError(f"fusion_init {spec!r}: no fusion decoder in {path} (needs fusion.json and "
                              "fusion.safetensors)" + (" -- the base checkpoint has none" if spec == "base" else ""))
    return load_fusion(path)


def load_with_adapter(base_dir: str | os.PathLike, adapted_dir: str | os.PathLike, device: str = "cpu"):
    """Rebuild an adapted ``train='lora'`` encoder from its base checkpoint plus the small
    ``adapter.safetensors`` (how one base serves several sites). Returns the merged encoder."""
    from safetensors.torch import load_file

    from chorus_ros.core.encoder.checkpoint import load_checkpoint, load_checkpoint_config
    _, meta = load_checkpoint_config(adapted_dir)
    prov = meta.get("adaptation") or {}
    path = Path(adapted_dir) / ADAPTER_FILE
    if not path.is_file():
        raise CheckpointError(f"{adapted_dir} has no {ADAPTER_FILE} (not a train='lora' checkpoint)")
    alpha = float((prov.get("config") or {}).get("lora_alpha", 8.0))
    base = load_checkpoint(base_dir, device="cpu").model
    lora.apply_adapter(base, load_file(str(path)), alpha)
    return lora.merge_adapters(base).to(device).eval()


def _with_own_codebook(spec: dict, checkpoint: str | os.PathLike) -> dict:
    """A ``gocl`` teacher spec whose GOCL folder (a training-time path, e.g. under ``.cache``) is
    missing here reads the copy the checkpoint carries (``<checkpoint>/gocl``, written by the
    trainer) instead."""
    if spec.get("type") != "gocl":
        return spec
    opts = dict(spec.get("options") or {})
    own = Path(checkpoint) / "gocl"
    path = opts.get("checkpoint")
    if (not path or not Path(path).exists()) and (own / "gocl.json").is_file():
        opts["checkpoint"] = str(own)
        return dict(spec, options=opts)
    return spec


def adapt_checkpoint(checkpoint: str | os.PathLike, scene, train_positions: Sequence[int], cfg: AdaptConfig,
                     out_dir: str | os.PathLike | None = None, val_positions: Sequence[int] = ()) -> AdaptResult:
    """Load ``checkpoint``, adapt it to ``scene`` from ``train_positions`` (``val_positions``:
    labelled views kept for model selection, see :func:`adapt`) and (with ``out_dir``) save the
    adapted checkpoint with its provenance. The whole of ``chorus-adapt``."""
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.pipeline import labels_from_meta, text_spec_from_meta
    from chorus_ros.core.text import build_text_encoder

    ck = load_checkpoint(checkpoint, device=cfg.device)
    meta = dict(ck.meta or {})
    spec = text_spec_from_meta(meta, checkpoint)
    text = build_text_encoder(spec)
    base_labels = labels_from_meta(meta)
    label_set = adaptation_label_set(scene, base_labels)
    lut = scene.class_map_to(label_set) if cfg.targets in ("labels", "both") else None
    teachers = []
    if cfg.targets in ("teachers", "both"):
        from chorus_ros.core.teachers import build_teacher
        specs = meta.get("teachers") or []
        if not specs:
            raise CheckpointError(f"{checkpoint}: no teacher specs in its metadata; use --targets labels")
        teachers = [build_teacher(_with_own_codebook(s, checkpoint), text_encoder=text) for s in specs]
    temperature = cfg.score_temperature
    t_start = time.perf_counter()
    # a decoder to start the site fusion decoder from: loaded (or refused) before the adaptation runs
    init = load_fusion_init(cfg.fusion_init, checkpoint) if cfg.fusion_steps > 0 else None
    lang_dim = ck.model.config.head_dims().get("language")
    if init is not None and init.config.language_dim != lang_dim:
        raise InvalidInputError(f"fusion_init {cfg.fusion_init!r}: that decoder reads {init.config.language_dim}-d "
                                f"language features, the checkpoint's language head gives {lang_dim}-d")
    res = adapt(ck.model, scene.gaussians, scene, list(train_positions), cfg, label_set=label_set, lut=lut,
                text_encoder=text, teachers=teachers, temperature=temperature, replay_labels=base_labels,
                val_positions=list(val_positions))
    if cfg.fusion_steps > 0:
        from chorus_ros.core.adapt.fusion import render_site_views, train_site_fusion
        views = render_site_views(scene.gaussians, scene, list(train_positions), res.language, res.scores, lut,
                                  cfg.render_backend)
        # the adaptation's validation views (never trained on) choose the decoder's step, and
        # reject it if it cannot beat the adapted 3D labels there
        val_views = render_site_views(scene.gaussians, scene, list(val_positions), res.language, res.scores, lut,
                                      cfg.render_backend) if val_positions else None
        with torch.no_grad():
            text_emb = text.encode(list(label_set.names)).float()
        res.fusion = train_site_fusion(
            views, text_emb, steps=cfg.fusion_steps, names=list(label_set.names), lr=cfg.fusion_lr, views_per_step=cfg.fusion_views_per_step,
            temperature=temperature, min_alpha=cfg.min_alpha, seed=cfg.seed, device=cfg.device,
            deadline=t_start + cfg.budget_s if cfg.budget_s else None, progress=cfg.progress,
            val_views=val_views, val_every=cfg.val_every, keep_best=cfg.keep_best,
            prior_input=cfg.fusion_prior_input, flip=cfg.fusion_flip, init=init)
    if out_dir is not None:
        frames = [int(scene.frame_indices[int(p)]) for p in train_positions]
        prov = {"scene": str(scene.root) if scene.root is not None else scene.name, "scene_name": scene.name,
                "views": frames, "train": cfg.train, "targets": cfg.targets,
                "labels_map": dict(scene.labels_map) if scene.labels_map else None,
                "peak_rss_mib": round(res.peak_rss_mib, 1), "config": cfg.to_dict(),
                "absent_classes": [label_set.names[c] for c in res.absent_classes]}
        if res.val_miou is not None:
            prov["validation"] = {"views": [int(scene.frame_indices[int(p)]) for p in val_positions],
                                  "best_step": res.best_step, "best_miou": round(float(res.val_miou), 4),
                                  "kept_best": bool(cfg.keep_best)}
        save_adapted(out_dir, res, checkpoint, meta, prov)
    return res
