"""Per-site VDVI fusion decoder: correct the adapted 3D labels with the camera images.

Per-Gaussian labels have a ceiling: a pixel's rendered class is a blend of the Gaussians that
cover it, and where large or faint Gaussians straddle a class border no per-Gaussian labelling
renders the border right (docs/adaptation.md, "the ceiling of per-Gaussian labels"). The camera
image of a view shows that border. After the per-Gaussian adaptation (:func:`~.loop.adapt`),
``chorus-adapt --fusion-steps N`` trains RT-GS2's view-dependent / view-independent fusion
decoder (:class:`~chorus_ros.core.decode.fusion.FusionDecoder`) on the *training views* of the
site, with ``prior=True``: its logits are the cosine logits of the fused embedding plus the log
of the view's 3D class probabilities, so it starts from the 3D labels and learns where the image
says otherwise.

Per training view (rendered once, the map and the adapted encoder being fixed): the camera image
``[3, H, W]``, the rendered depth and alpha, the splatted language features ``[D, H, W]`` (the
decoder projects them with its own linear ``proj``) and the splatted class probabilities
``[K, H, W]``, which the decoder also reads as input channels of its 3D branch
(``prior_input``, :attr:`~chorus_ros.core.decode.fusion.FusionConfig.prior_names`); the target
is the view's label image (mapped into the adaptation label set). Views are mirrored left to
right at random (``flip``).
Loss: cross-entropy over pixels with a label and rendered alpha >= ``min_alpha``. Held-out
views never enter training; :func:`evaluate_fused` scores them the way the pipeline labels a view
with ``per_view.fusion: camera`` (the same decoder, inputs and rule; tested against it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from chorus_ros.core.decode.fusion import FusionConfig, FusionDecoder, decoder_class_logits, view_class_probabilities
from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.labels import UNLABELED, LabelSet
from chorus_ros.core.metrics.semantic import ConfusionMatrix, SemanticScores
from chorus_ros.core.render import RenderSettings, render

__all__ = ["SiteViews", "render_site_views", "train_site_fusion", "fused_labels", "evaluate_fused", "FusionRun",
           "score_adapted_fusion", "prior_labels"]


@dataclass
class SiteViews:
    """Views of one site rendered for the fusion decoder (CPU tensors, ``V`` views of ``H x W``)."""

    positions: list[int]
    """Positions of the views in the scene's selected frames."""
    rgb: torch.Tensor
    """[V, 3, H, W] float32 camera image in [0, 1]."""
    depth: torch.Tensor
    """[V, 1, H, W] float32 rendered depth, metres."""
    alpha: torch.Tensor
    """[V, 1, H, W] float32 rendered alpha."""
    splat: torch.Tensor
    """[V, D, H, W] float16 splatted per-Gaussian language features."""
    probs: torch.Tensor
    """[V, K, H, W] float32 splatted class probabilities divided by alpha (the 3D labels' scores)."""
    labels: torch.Tensor | None
    """[V, H, W] int64 class ids in the adaptation label set (65535: none); None without label images."""


@torch.no_grad()
def render_site_views(gaussians: GaussianArrays, scene, positions: Sequence[int], language: torch.Tensor,
                      probs: torch.Tensor, lut: np.ndarray | None, backend: str = "auto") -> SiteViews:
    """Render the views ``positions`` of ``scene`` with the per-Gaussian ``language [N, D]`` features
    and class ``probs [N, K]`` splatted; the camera image and (with ``lut``) the label image come
    from the scene folder."""
    if language.shape[0] != len(gaussians) or probs.shape[0] != len(gaussians):
        raise InvalidInputError(f"language {tuple(language.shape)} and probs {tuple(probs.shape)} must have one "
                                f"row per Gaussian ({len(gaussians)})")
    settings = RenderSettings(backend=backend)
    d = language.shape[1]
    feats = torch.cat([language.float(), probs.float()], 1).contiguous()
    rgb, depth, alpha, splat, pr, labels = [], [], [], [], [], []
    for pos in positions:
        fr = scene.frame(int(pos))
        if fr.rgb is None:
            raise InvalidInputError(f"frame {fr.index} of {scene.name} has no image: the fusion decoder needs the "
                                    "camera images")
        out = render(gaussians, fr.camera, settings, features=feats)
        if tuple(fr.rgb.shape[:2]) != tuple(out.alpha.shape):
            raise InvalidInputError(f"frame {fr.index}: image {fr.rgb.shape[:2]} is not the camera's "
                                    f"{tuple(out.alpha.shape)}")
        a = out.alpha.detach().float().cpu()
        f = out.features.detach().float().cpu()
        rgb.append(torch.from_numpy(np.ascontiguousarray(fr.rgb)).permute(2, 0, 1).float() / 255.0)
        depth.append(out.depth.detach().float().cpu()[None])
        alpha.append(a[None])
        splat.append(f[..., :d].permute(2, 0, 1).half())
        pr.append(view_class_probabilities(f[..., d:], a))
        if lut is not None:
            if fr.semantic is None:
                raise InvalidInputError(f"frame {fr.index} of {scene.name} has no label image")
            labels.append(torch.from_numpy(lut[fr.semantic.astype(np.int64)].astype(np.int64)))
    st = torch.stack
    return SiteViews([int(p) for p in positions], st(rgb), st(depth), st(alpha), st(splat), st(pr),
                     st(labels) if labels else None)


@dataclass
class FusionRun:
    """What :func:`train_site_fusion` returns."""

    decoder: FusionDecoder
    text: torch.Tensor
    """[K, E] unit text embeddings of the label set the decoder was trained against."""
    history: list[dict] = field(default_factory=list)
    """Per step: ``step``, ``loss`` (cross-entropy) and ``acc`` (pixel accuracy of the batch)."""
    steps: int = 0
    seconds: float = 0.0
    stopped_by_budget: bool = False
    val_history: list[dict] = field(default_factory=list)
    """With validation views: per check, ``step`` and ``miou`` (fraction) of the fused labels."""
    prior_val_miou: float | None = None
    """mIoU of the validation views' 3D labels alone (what the pipeline serves without the decoder)."""
    best_step: int | None = None
    """The validation check whose weights ``decoder`` holds (with ``keep_best``)."""
    val_miou: float | None = None
    """Validation mIoU of ``decoder``."""
    rejected: bool = False
    """True when no check beat ``prior_val_miou``: the decoder would make the site's labels worse,
    so it is not used (not saved with the adapted checkpoint)."""
    warm_start: dict | None = None
    """With ``init``: what :func:`~chorus_ros.core.decode.fusion.warm_start_fusion` copied; None: from scratch."""

    @property
    def used(self) -> bool:
        """Whether the decoder serves the site (trained at least one step and not rejected)."""
        return self.steps > 0 and not self.rejected


def _logits(fd: FusionDecoder, v: SiteViews, idx: torch.Tensor, text_emb: torch.Tensor, temperature: float,
            dev: torch.device, flip: bool = False) -> torch.Tensor:
    """``[B, K, H, W]`` fused logits of views ``idx``; with ``flip`` the inputs are mirrored left to
    right and the logits mirrored back (training augmentation: the same pixels, another layout)."""
    ins = [v.rgb[idx], v.splat[idx].float(), v.alpha[idx], v.depth[idx], v.probs[idx]]
    if flip:
        ins = [t.flip(-1) for t in ins]
    rgb, splat, alpha, depth, probs = (t.to(dev) for t in ins)
    out = decoder_class_logits(fd, rgb, fd.project_pixels(splat), alpha, depth, text_emb, temperature, probs)
    return out.flip(-1) if flip else out


def prior_labels(views: SiteViews, min_alpha: float = 0.5) -> np.ndarray:
    """``[V, H, W]`` uint16 labels of ``views`` from their splatted 3D class probabilities alone
    (65535 where the rendered alpha is below ``min_alpha``): what the site gets without a decoder."""
    lab = views.probs.argmax(1)
    bad = views.alpha[:, 0] < min_alpha
    return torch.where(bad, torch.full_like(lab, UNLABELED), lab).numpy().astype(np.uint16)


def _miou(pred: np.ndarray, labels: torch.Tensor, k: int) -> float:
    cm = ConfusionMatrix(k)
    for p, t in zip(pred, labels.numpy()):
        cm.update(p, t)
    return float(cm.compute([str(i) for i in range(k)]).miou)


def train_site_fusion(views: SiteViews, text_emb: torch.Tensor, *, steps: int, names: Sequence[str] | None = None,
                      lr: float = 2e-3, views_per_step: int = 4, temperature: float = 0.05, min_alpha: float = 0.5,
                      seed: int = 0,
                      deadline: float | None = None, device: str = "cpu", config: FusionConfig | None = None,
                      progress: bool = False, val_views: SiteViews | None = None, val_every: int = 50,
                      keep_best: bool = True, prior_input: bool = True, flip: bool = True,
                      init: FusionDecoder | None = None) -> FusionRun:
    """Train a ``prior`` fusion decoder on the labelled ``views`` (module docstring).

    Args:
        text_emb: ``[K, E]`` text embeddings of the adaptation label set (normalised here).
        steps: optimiser steps (AdamW, 5 % linear warm-up, then cosine decay to zero).
        deadline: ``time.perf_counter()`` value at which training stops (None: no budget).
        config: the decoder's architecture; default :class:`FusionConfig` with ``prior=True``, the
            dimensions of ``views`` / ``text_emb`` and, with ``prior_input``, ``prior_names`` = ``names``.
        names: the K class names of ``text_emb`` (required with ``prior_input``: the decoder then
            serves only that label set).
        flip: mirror each step's views left to right with probability 1/2 (augmentation).
        init: a trained decoder to start from (:func:`~chorus_ros.core.decode.fusion.warm_start_fusion`:
            its architecture, its weights, its class channels matched by name); None: from scratch.
        val_views: labelled views that never train the decoder (the adaptation's validation
            views). Their fused mIoU is checked every ``val_every`` steps (0: only at the end) and
            at the last step; with ``keep_best`` the best check's weights are kept. If no check
            beats their 3D labels alone (:func:`prior_labels`), the run is marked ``rejected``.
    """
    from chorus_ros.core.train.trainer import lr_factor
    if views.labels is None:
        raise InvalidInputError("the site fusion decoder needs label images for its training views")
    if steps < 1 or views_per_step < 1:
        raise InvalidInputError(f"fusion steps and views per step must be >= 1, got {steps}, {views_per_step}")
    if val_every < 0:
        raise InvalidInputError(f"fusion val_every must be >= 0, got {val_every}")
    if val_views is not None and val_views.labels is None:
        raise InvalidInputError("the fusion decoder's validation views need label images")
    dev = torch.device(device)
    text = F.normalize(text_emb.float(), dim=-1).to(dev)
    if views.probs.shape[1] != text.shape[0]:
        raise InvalidInputError(f"views carry {views.probs.shape[1]} class probabilities, the label set has "
                                f"{text.shape[0]} classes")
    if config is None and prior_input and (names is None or len(names) != text.shape[0]):
        raise InvalidInputError(f"a fusion decoder that reads the 3D class probabilities needs the {text.shape[0]} "
                                f"class names of text_emb, got {None if names is None else len(names)}")
    if config is None and init is not None:
        config = FusionConfig.from_dict(dict(init.config.to_dict(), prior=True,
                                             prior_names=list(names) if prior_input else []))
    cfg = config or FusionConfig(language_dim=views.splat.shape[1], embed_dim=text.shape[1], prior=True,
                                 prior_names=tuple(names) if prior_input else ())
    if cfg.language_dim != views.splat.shape[1] or cfg.embed_dim != text.shape[1]:
        raise InvalidInputError(f"the fusion decoder reads {cfg.language_dim}-d language features and writes "
                                f"{cfg.embed_dim}-d embeddings; the views carry {views.splat.shape[1]}-d features "
                                f"and the text embeddings are {text.shape[1]}-d")
    torch.manual_seed(seed)
    fd = FusionDecoder(cfg)
    warm_info = None
    if init is not None:
        from chorus_ros.core.decode.fusion import warm_start_fusion
        warm_info = warm_start_fusion(fd, init)
    fd = fd.to(dev).train()
    opt = torch.optim.AdamW(fd.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, steps, warm, 0.0))
    gen = torch.Generator().manual_seed(seed + 7)
    n = views.rgb.shape[0]
    ok_all = (views.labels != UNLABELED) & (views.alpha[:, 0] >= min_alpha)
    run = FusionRun(fd, text.cpu())
    run.warm_start = warm_info
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, desc="fusion", unit="step")
    k = text.shape[0]
    best_state = None
    if val_views is not None:
        run.prior_val_miou = _miou(prior_labels(val_views, min_alpha), val_views.labels, k)

    def check(step: int) -> None:
        nonlocal best_state
        m = _miou(fused_labels(fd, val_views, text, temperature, min_alpha), val_views.labels, k)
        fd.train()
        run.val_history.append({"step": step, "miou": m})
        if run.val_miou is None or m > run.val_miou or not keep_best:
            run.val_miou, run.best_step = m, step
            if keep_best:
                best_state = {n_: t.detach().clone() for n_, t in fd.state_dict().items()}

    order = torch.randperm(n, generator=gen)
    at = 0
    for step in range(1, steps + 1):
        if deadline is not None and time.perf_counter() > deadline:
            run.stopped_by_budget = True
            break
        if val_views is not None and val_every and run.steps and run.steps % val_every == 0 \
                and (not run.val_history or run.val_history[-1]["step"] != run.steps):
            check(run.steps)
        if at + views_per_step > n:                         # epoch by epoch: every view equally often
            order, at = torch.randperm(n, generator=gen), 0
        idx = order[at: at + views_per_step]
        at += views_per_step
        ok = ok_all[idx].to(dev)
        if not bool(ok.any()):
            continue
        mirror = flip and bool(torch.rand(1, generator=gen) < 0.5)
        logits = _logits(fd, views, idx, text, temperature, dev, mirror)
        lab = views.labels[idx].to(dev)
        flat = logits.permute(0, 2, 3, 1)[ok]
        loss = F.cross_entropy(flat, lab[ok])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run.steps = step
        run.history.append({"step": step, "loss": float(loss.detach()),
                            "acc": float((flat.argmax(1) == lab[ok]).float().mean())})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{run.history[-1]['loss']:.4f}")
    if bar is not None:
        bar.close()
    if val_views is not None and run.steps and (not run.val_history or run.val_history[-1]["step"] != run.steps):
        check(run.steps)
    if best_state is not None:
        fd.load_state_dict(best_state)
    if run.val_miou is not None and run.prior_val_miou is not None:
        run.rejected = run.val_miou <= run.prior_val_miou
    run.seconds = time.perf_counter() - t0
    fd.eval()
    return run


@torch.no_grad()
def fused_labels(fd: FusionDecoder, views: SiteViews, text_emb: torch.Tensor, temperature: float = 0.05,
                 min_alpha: float = 0.5, min_confidence: float = 0.0) -> np.ndarray:
    """``[V, H, W]`` uint16 labels of ``views`` from the fusion decoder (65535 where the rendered
    alpha is below ``min_alpha`` or the fused probability below ``min_confidence``), as the
    pipeline labels a view in ``camera`` mode."""
    fd = fd.eval()
    dev = next(fd.parameters()).device
    text = F.normalize(text_emb.float(), dim=-1).to(dev)
    out = []
    for i in range(views.rgb.shape[0]):
        idx = torch.tensor([i])
        p = torch.softmax(_logits(fd, views, idx, text, temperature, dev), dim=1)[0].cpu()
        conf, lab = p.max(0)
        bad = (views.alpha[i, 0] < min_alpha) | (conf < min_confidence)
        out.append(torch.where(bad, torch.full_like(lab, UNLABELED), lab).numpy().astype(np.uint16))
    return np.stack(out)


def evaluate_fused(fd: FusionDecoder, views: SiteViews, text_emb: torch.Tensor, label_set: LabelSet,
                   temperature: float = 0.05, min_alpha: float = 0.5) -> SemanticScores:
    """mIoU etc. of the fused labels of (held-out) ``views`` against their label images; pixels
    with a label but rendered alpha below ``min_alpha`` count as misses (as
    :func:`~chorus_ros.core.adapt.loop.evaluate_views`)."""
    if views.labels is None:
        raise InvalidInputError("scoring needs the views' label images")
    pred = fused_labels(fd, views, text_emb, temperature, min_alpha)
    cm = ConfusionMatrix(len(label_set))
    for p, t in zip(pred, views.labels.numpy()):
        cm.update(p, t)
    return cm.compute(label_set.names)


def score_adapted_fusion(result, scene, positions: Sequence[int], lut: np.ndarray, temperature: float = 0.05,
                         min_alpha: float = 0.5, backend: str = "auto") -> SemanticScores:
    """Held-out scores of an :class:`~chorus_ros.core.adapt.loop.AdaptResult` with a site fusion
    decoder: its adapted language features and class scores rendered into ``positions``, corrected
    by ``result.fusion`` with those views' camera images (what ``chorus-adapt`` and
    ``scripts/adapt_tables.py`` report)."""
    if result.fusion is None or result.language is None or result.scores is None:
        raise InvalidInputError("the adaptation result has no site fusion decoder (fusion_steps 0) or no class scores")
    views = render_site_views(scene.gaussians, scene, positions, result.language, result.scores, lut, backend)
    return evaluate_fused(result.fusion.decoder, views, result.fusion.text, result.label_set, temperature, min_alpha)
