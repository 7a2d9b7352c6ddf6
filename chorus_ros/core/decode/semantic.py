"""Open-vocabulary semantic decoding: language-head features -> class probabilities -> labels.

Per Gaussian: ``logits = cos(f_i, t_k) / temperature`` between the language-head feature
``f_i`` and the text embedding ``t_k`` of every active class, ``probs = softmax(logits)``.
A view then splats only the K probability channels (K <= 32 is one gsplat pass) and decodes
pixels with :meth:`SemanticDecoder.decode_view`: the composited channels are renormalised by
the accumulated alpha, the label is the argmax, the confidence its probability; pixels with
too little alpha or confidence are :data:`~chorus_ros.core.labels.UNLABELED` (65535).

Changing the label set (:meth:`SemanticDecoder.set_labels`) only encodes the new class names
(cached per string); the map's features are untouched, so nothing is re-encoded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.labels import UNLABELED, LabelSet

__all__ = ["SemanticConfig", "SemanticDecoder", "GaussianLabels", "ViewLabels", "default_colors"]


@dataclass
class SemanticConfig:
    """Semantic decoding settings (ROS parameters ``decode.semantic.*``)."""

    temperature: float = 0.05
    """Softmax temperature on cosine similarities (CLIP's logit scale 100 is 0.01)."""
    min_alpha: float = 0.5
    """Pixels whose accumulated opacity is below this are unlabeled."""
    min_confidence: float = 0.0
    """Pixels / Gaussians whose winning probability is below this are unlabeled."""
    max_channels_per_pass: int = 32
    """Class-score channels splatted per render pass (gsplat's cost steps every 32 channels)."""
    height_prior_weight: float = 0.0
    """Weight of the checkpoint's height prior (``height_prior.json``: per class, the log-likelihood
    ratio of the height above the floor; chorus_ros.core.decode.height) added to the logits. 0: off;
    no effect on a checkpoint without a prior."""
    floor_tolerance_m: float = 0.05
    """The floor is re-estimated at every encode; when it moves by more than this, every Gaussian
    is re-scored and regrouped (otherwise only the re-encoded ones are)."""

    def validate(self) -> None:
        if not self.temperature > 0:
            raise InvalidInputError(f"semantic temperature must be > 0, got {self.temperature}")
        if not 0 <= self.min_alpha <= 1:
            raise InvalidInputError(f"semantic min_alpha must be in [0, 1], got {self.min_alpha}")
        if not 0 <= self.min_confidence <= 1:
            raise InvalidInputError(f"semantic min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.max_channels_per_pass < 1:
            raise InvalidInputError(f"max_channels_per_pass must be >= 1, got {self.max_channels_per_pass}")
        if not self.height_prior_weight >= 0:
            raise InvalidInputError(f"semantic height_prior_weight must be >= 0, got {self.height_prior_weight}")
        if not self.floor_tolerance_m > 0:
            raise InvalidInputError(f"semantic floor_tolerance_m must be > 0, got {self.floor_tolerance_m}")


@dataclass
class GaussianLabels:
    """Per-Gaussian decoding result."""

    probs: torch.Tensor
    """[N, K] float32 class probabilities (rows sum to 1)."""
    label: torch.Tensor
    """[N] int64 class id (argmax), UNLABELED where confidence < min_confidence."""
    confidence: torch.Tensor
    """[N] float32 probability of the argmax class."""


@dataclass
class ViewLabels:
    """Per-pixel decoding result of one view."""

    labels: torch.Tensor
    """[H, W] int32 class id, 65535 (UNLABELED) where not decided (cast to uint16 for ROS)."""
    confidence: torch.Tensor
    """[H, W] float32 winning probability after alpha renormalisation (0 where unlabeled)."""


def default_colors(k: int) -> np.ndarray:
    """``[k, 3]`` uint8 distinct display colours (golden-ratio hue walk)."""
    from chorus_ros.core.labels import instance_palette
    return instance_palette(np.arange(1, k + 1))


class SemanticDecoder:
    """Scores per-Gaussian language features against the active label set's text embeddings.

    Args:
        text_encoder: a :class:`~chorus_ros.core.text.TextEncoder` (anything with
            ``encode(list[str]) -> [K, d]`` unit rows and ``dim``).
        labels: the initial :class:`LabelSet` (or a list of class names).
        config: decoding settings.
    """

    def __init__(self, text_encoder, labels: LabelSet | list[str], config: SemanticConfig | None = None):
        self.text_encoder = text_encoder
        self.config = config or SemanticConfig()
        self.config.validate()
        self.labels: LabelSet
        self.text_embeddings: torch.Tensor
        """[K, d] float32 unit text embeddings of the active classes."""
        self.height_prior = None
        """Optional :class:`~chorus_ros.core.decode.height.HeightPrior` (:meth:`set_height_prior`)."""
        self._height_table: torch.Tensor | None = None
        self.set_labels(labels)

    # ------------------------------------------------------------- labels
    def set_labels(self, labels: LabelSet | list[str], colors=None,
                   embeddings: torch.Tensor | None = None) -> LabelSet:
        """Switch the active label set; only the class names are (cache-)encoded, or
        ``embeddings`` ([K, d], e.g. prompt-ensembled) are used as given."""
        if not isinstance(labels, LabelSet):
            names = [str(n) for n in labels]
            if not names:
                raise InvalidInputError("a label set needs at least one class name")
            cols = default_colors(len(names)) if colors is None else np.asarray(colors)
            labels = LabelSet(names, cols)
        emb = (self.text_encoder.encode(labels.names) if embeddings is None
               else torch.as_tensor(embeddings)).float().cpu()
        if emb.ndim != 2 or emb.shape[0] != len(labels):
            raise InvalidInputError(f"text encoder returned {tuple(emb.shape)} for {len(labels)} names")
        self.labels = labels
        self.text_embeddings = torch.nn.functional.normalize(emb, dim=-1)
        self._height_table = None if self.height_prior is None else self.height_prior.table(labels.names)
        return labels

    def set_height_prior(self, prior) -> None:
        """Use ``prior`` (a :class:`~chorus_ros.core.decode.height.HeightPrior`, or None to drop it)
        for the classes of the active label set (names it lacks get no height term)."""
        self.height_prior = prior
        self._height_table = None if prior is None else prior.table(self.labels.names)

    @property
    def uses_height(self) -> bool:
        """True when decoding adds the height term (a prior is set and its weight is > 0)."""
        return self.height_prior is not None and self.config.height_prior_weight > 0

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    # ---------------------------------------------------------- Gaussians
    def logits(self, lang_feats: torch.Tensor, heights: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, K]`` cosine(feature, text) / temperature, plus ``height_prior_weight`` times the
        height prior's log-likelihood ratios when ``heights [N]`` (metres above the floor) are given
        and :attr:`uses_height`. ``lang_feats``: [N, d]."""
        if lang_feats.ndim != 2 or lang_feats.shape[1] != self.text_embeddings.shape[1]:
            raise InvalidInputError(f"language features must be [N, {self.text_embeddings.shape[1]}], "
                                    f"got {tuple(lang_feats.shape)}")
        f = torch.nn.functional.normalize(lang_feats.float(), dim=-1)
        out = (f @ self.text_embeddings.to(f.device).T) / self.config.temperature
        if heights is not None and self.uses_height:
            if heights.shape != (lang_feats.shape[0],):
                raise InvalidInputError(f"heights must be [{lang_feats.shape[0]}], got {tuple(heights.shape)}")
            bins = self.height_prior.bin_index(heights.to(out.device))
            out = out + self.config.height_prior_weight * self.height_prior.log_ratio_from_table(
                self._height_table, bins).to(out.device)
        return out

    def scores(self, lang_feats: torch.Tensor, chunk: int = 262144, heights: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, K]`` float32 class probabilities (softmax of :meth:`logits`), chunked over N."""
        out = [torch.softmax(self.logits(lang_feats[i:i + chunk], None if heights is None else heights[i:i + chunk]),
                             dim=-1)
               for i in range(0, lang_feats.shape[0], chunk)]
        if not out:
            return lang_feats.new_zeros(0, self.num_classes, dtype=torch.float32)
        return torch.cat(out)

    def labels_from_probs(self, probs: torch.Tensor) -> GaussianLabels:
        """Argmax + confidence of ``[N, K]`` probabilities."""
        conf, lab = probs.max(dim=-1) if probs.shape[0] else (probs.new_zeros(0), probs.new_zeros(0, dtype=torch.long))
        lab = torch.where(conf < self.config.min_confidence, torch.full_like(lab, UNLABELED), lab)
        return GaussianLabels(probs, lab, conf.float())

    def decode(self, lang_feats: torch.Tensor, heights: torch.Tensor | None = None) -> GaussianLabels:
        """Per-Gaussian probabilities, labels and confidences from ``[N, d]`` language features
        (and, with a height prior, ``heights [N]`` above the floor, metres)."""
        return self.labels_from_probs(self.scores(lang_feats, heights=heights))

    # --------------------------------------------------------------- views
    def decode_view(self, score_image: torch.Tensor, alpha: torch.Tensor) -> ViewLabels:
        """Labels of a view from its splatted class probabilities.

        Args:
            score_image: ``[H, W, K]`` alpha-composited per-Gaussian probabilities (no background).
            alpha: ``[H, W]`` accumulated opacity of the same render.
        """
        if score_image.ndim != 3 or score_image.shape[:2] != alpha.shape:
            raise InvalidInputError(f"score image {tuple(score_image.shape)} and alpha {tuple(alpha.shape)} "
                                    "must be [H, W, K] and [H, W]")
        p = score_image / alpha.clamp_min(1e-6).unsqueeze(-1)
        conf, lab = p.max(dim=-1)
        bad = (alpha < self.config.min_alpha) | (conf < self.config.min_confidence) | (alpha <= 0)
        lab = torch.where(bad, torch.full_like(lab, UNLABELED), lab).to(torch.int32)
        conf = torch.where(bad, torch.zeros_like(conf), conf).float()
        return ViewLabels(lab, conf)
