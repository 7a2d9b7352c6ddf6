"""Configuration of render-and-distill adaptation (``chorus-adapt``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from chorus_ros.core.errors import InvalidInputError

__all__ = ["AdaptConfig", "LossWeights", "TARGETS", "TRAIN_MODES", "SPLAT_MODES", "LR_SCHEDULES"]

LR_SCHEDULES = ("constant", "cosine")
"""Learning-rate schedules: constant, or cosine decay to zero over the run's steps."""
TARGETS = ("labels", "teachers", "both")
"""What the 2D targets are: label images, teacher feature maps, or both."""
TRAIN_MODES = ("heads", "all", "lora")
"""What is trained: the per-Gaussian decoder after the U-Net, the whole encoder, or low-rank adapters."""
SPLAT_MODES = ("auto", "cached", "render")
"""How training views are rendered (see :class:`AdaptConfig.splat`)."""


@dataclass
class LossWeights:
    """Weights of the adaptation loss terms (0 switches a term off)."""

    label_ce: float = 1.0
    """Cross-entropy of the rendered class probabilities (alpha-normalised) against label images."""
    boundary: float = 1.0
    """Extra cross-entropy weight on pixels within ``boundary_px`` of a label border (the lifting
    baseline's errors sit there), added to their weight of 1."""
    boundary_px: int = 2
    """Distance, pixels, that counts as "near a label border"."""
    teacher_cos: float = 1.0
    """Per-head 1 - cosine between rendered head features and teacher feature maps."""
    teacher_l2: float = 1.0
    """Per-head mean squared error between rendered head features and teacher feature maps."""
    rgb: float = 0.0
    """Self-supervised (DistillNeRF): L1 between the image and the splat of a per-Gaussian colour
    decoded from the shared embedding by an auxiliary linear head (trained with the model,
    not saved)."""
    depth_gate: float = 0.0
    """Self-supervised (DistillNeRF) depth: pixels whose rendered map depth disagrees with the
    image's depth by more than ``depth_tolerance`` (relative) lose this fraction of their weight
    in every 2D term (1: ignored). The map is fixed, so depth cannot move the encoder; it
    decides where the image and the map see the same surface."""
    depth_tolerance: float = 0.1
    """Relative depth difference above which a pixel counts as disagreeing."""
    preserve: float = 1.0
    """Heads without a 2D target are held to the base model's outputs on the scene: relative
    mean squared change, times this weight (keeps e.g. the object head's instance grouping)."""
    absent: float = 1.0
    """Classes of the adaptation label set that no training view's label image shows get no
    positive evidence, yet a class score can drift onto them (one Gaussian of a class absent
    from the held-out views costs that class a whole IoU of 0). This term, on a random batch of
    the scene's Gaussians each step (seen by the pooled pixels or not), is the mean of
    ``-log(1 - sum_{k absent} p_k)`` times this weight (labels targets only; batch size
    ``AdaptConfig.absent_batch``)."""
    replay: float = 1.0
    """Every head is held to the base model's outputs on replay scenes of the training
    distribution (``AdaptConfig.replay_seeds``), times this weight, so adapting to one site
    does not wreck what the checkpoint knew: the language head by the KL divergence of its
    class probabilities over the base label set, the others by relative mean squared change."""


@dataclass
class AdaptConfig:
    """Render-and-distill adaptation of an encoder checkpoint to one scene."""

    targets: str = "labels"
    """'labels' (label images), 'teachers' (2D teacher feature maps through the teacher
    registry), or 'both'."""
    train: str = "heads"
    """'heads': only the per-Gaussian decoder after the U-Net (out_mlp, embed_norm and the
    teacher heads); the U-Net's outputs are computed once and cached. 'all': every weight.
    'lora': low-rank adapters on the decoder's linear layers (and the sparse convolutions when
    ``lora_convs``), base weights frozen."""
    steps: int = 300
    """Optimiser steps (the run stops earlier at ``budget_s``); ignored when ``epochs > 0``."""
    epochs: float = 0.0
    """If > 0, the number of steps scales with the training views: ``ceil(epochs *
    ceil(views / views_per_step))`` (an epoch is ``ceil(views / views_per_step)`` batches), so
    every view is visited ``epochs`` times whatever the view count.
    Views are drawn epoch by epoch (a shuffled pass over all of them, then the next), never
    at random with repeats."""
    lr_schedule: str = "constant"
    """'constant' or 'cosine' (decay to zero over the run's steps)."""
    budget_s: float = 0.0
    """Wall-clock budget in seconds for the training loop (0: none)."""
    lr: float = 3e-3
    """AdamW learning rate (heads, adapters); ``all`` uses ``lr * lr_all_factor``."""
    lr_all_factor: float = 0.3
    """Learning-rate factor for ``train='all'``."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    widen: int = 0
    """'heads' and 'all': hidden units added to the per-Gaussian decoder before adapting
    (function-preserving: new output weights zero, :mod:`chorus_ros.core.adapt.widen`), a site
    head with more capacity; the checkpoint's ``head_hidden`` grows by this. 0: none."""
    widen_only: bool = False
    """With ``train='heads'`` and ``widen``: train only the added units (their input weights and
    biases and their output weights); with ``weight_decay`` 0 (the default) the base decoder
    stays exactly as it was, so the site enters as a residual that starts at zero."""
    lora_rank: int = 8
    """Rank of the low-rank adapters."""
    lora_alpha: float = 8.0
    """Adapter scale numerator: the update is ``(alpha / rank) B A``."""
    lora_convs: bool = False
    """Also put adapters on the sparse convolutions (then the U-Net runs every step)."""
    val_every: int = 50
    """With validation views (carved from the training views, :func:`~chorus_ros.core.adapt.adapt`
    ``val_positions``): score them every this many steps (0: only at the end) on their own
    uniformly pooled pixels (mIoU of the composited class probabilities). The site fusion decoder
    (``fusion_steps``) is checked every this many of its own steps on the same views' images."""
    keep_best: bool = True
    """With validation views: return the trained weights of the step with the best validation
    mIoU rather than the last (for the encoder and for the site fusion decoder; a decoder that never
    beats the adapted 3D labels on the validation views is not used)."""
    views_per_step: int = 4
    """Training views sampled per step."""
    pixels_per_view: int = 4096
    """Pixels per training view kept for training (half of them near label borders when labels
    are used), sampled once; their blending weights are cached with ``splat='cached'``."""
    splat: str = "auto"
    """'cached': per-pixel blending weights of the fixed map computed once
    (:mod:`chorus_ros.core.adapt.splat`), each step is one sparse product; 'render': call the
    renderer every step (gsplat on CUDA); 'auto': 'render' on CUDA, else 'cached'."""
    render_backend: str = "auto"
    """Renderer backend for 'render' splatting, for the cache's checks and for evaluation."""
    min_alpha: float = 0.5
    """Pixels whose rendered alpha is below this give no target (and are unlabeled in evaluation)."""
    temperature: float | None = None
    """Softmax temperature of the class scores; None: the decoder's (pipeline default 0.05)."""
    replay_seeds: list[int] = field(default_factory=lambda: [0])
    """Synthetic training-distribution scenes (chorus_ros.core.synthetic seeds; the demo checkpoint
    trained on seeds 0-31) on which the base model's outputs are kept (``loss.replay``); empty:
    no replay."""
    replay_site_classes: bool = True
    """The replay KL of the language head covers the base label set *and* the site's class names
    (the adapted checkpoint ships with the site's label set; on training-distribution scenes
    its probabilities over those names should stay the base's); False: the base names only."""
    replay_gaussians: int = 20000
    """Gaussians per replay scene."""
    replay_batch: int = 4096
    """Replay Gaussians per step."""
    absent_batch: int = 4096
    """Scene Gaussians per step for the ``absent`` loss term."""
    seed: int = 0
    """Seed of view/pixel sampling and of the adapters' initialisation."""
    device: str = "cpu"
    """Torch device."""
    fusion_steps: int = 0
    """After the per-Gaussian adaptation, train a per-site VDVI fusion decoder this many steps on
    the training views' camera images (:mod:`chorus_ros.core.adapt.fusion`): it corrects the
    adapted 3D labels where the image shows a border the Gaussians blur; saved as the adapted
    checkpoint's ``fusion/``, used by the pipeline with ``per_view.fusion: camera``. Needs label
    targets and images. Counts against ``budget_s``. 0: none."""
    fusion_lr: float = 2e-3
    """Peak AdamW learning rate of the fusion decoder (5 % warm-up, then cosine decay to zero)."""
    fusion_views_per_step: int = 4
    """Whole training views per fusion step."""
    fusion_prior_input: bool = True
    """The fusion decoder also reads the view's adapted 3D class probabilities as input channels
    (:attr:`~chorus_ros.core.decode.fusion.FusionConfig.prior_names`), not only adds their log
    to its logits (False: the decoder of the first measurements)."""
    fusion_flip: bool = True
    """Mirror the fusion decoder's training views left to right with probability 1/2."""
    fusion_init: str = ""
    """Where the fusion decoder starts: '' from scratch; 'base' the base checkpoint's own
    feed-forward decoder (its ``fusion/``; an error when it has none); or a decoder directory.
    Its weights are copied, class channels matched by name
    (:func:`~chorus_ros.core.decode.fusion.warm_start_fusion`)."""
    loss: LossWeights = field(default_factory=LossWeights)
    """Loss weights."""
    progress: bool = True
    """Show a progress bar."""

    @property
    def score_temperature(self) -> float:
        """``temperature``, or the semantic decoder's default (0.05) when it is None."""
        if self.temperature is not None:
            return self.temperature
        from chorus_ros.core.decode.semantic import SemanticConfig
        return SemanticConfig.temperature

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = LossWeights(**self.loss)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InvalidInputError` naming the first bad field."""
        for name, allowed in (("targets", TARGETS), ("train", TRAIN_MODES), ("splat", SPLAT_MODES),
                              ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise InvalidInputError(f"AdaptConfig.{name} {getattr(self, name)!r} unknown; known: {list(allowed)}")
        if self.steps < 0:
            raise InvalidInputError(f"AdaptConfig.steps must be >= 0, got {self.steps}")
        if self.epochs < 0:
            raise InvalidInputError(f"AdaptConfig.epochs must be >= 0, got {self.epochs}")
        if self.val_every < 0:
            raise InvalidInputError(f"AdaptConfig.val_every must be >= 0, got {self.val_every}")
        if self.budget_s < 0:
            raise InvalidInputError(f"AdaptConfig.budget_s must be >= 0, got {self.budget_s}")
        if not self.lr > 0:
            raise InvalidInputError(f"AdaptConfig.lr must be > 0, got {self.lr}")
        if self.widen < 0:
            raise InvalidInputError(f"AdaptConfig.widen must be >= 0, got {self.widen}")
        if self.widen and self.train == "lora":
            raise InvalidInputError("AdaptConfig.widen needs train 'heads' or 'all' (adapters keep the base shapes)")
        if self.widen_only and not (self.widen and self.train == "heads"):
            raise InvalidInputError("AdaptConfig.widen_only needs widen > 0 and train 'heads'")
        if self.fusion_steps < 0 or self.fusion_views_per_step < 1 or not self.fusion_lr > 0:
            raise InvalidInputError(f"AdaptConfig.fusion_steps must be >= 0, fusion_views_per_step >= 1 and fusion_lr "
                                    f"> 0, got {self.fusion_steps}, {self.fusion_views_per_step}, {self.fusion_lr}")
        if self.fusion_steps and self.targets == "teachers":
            raise InvalidInputError("AdaptConfig.fusion_steps needs label targets (targets 'labels' or 'both')")
        if self.lora_rank < 1:
            raise InvalidInputError(f"AdaptConfig.lora_rank must be >= 1, got {self.lora_rank}")
        if self.views_per_step < 1 or self.pixels_per_view < 1:
            raise InvalidInputError("AdaptConfig.views_per_step and pixels_per_view must be >= 1")
        if not 0 <= self.min_alpha <= 1:
            raise InvalidInputError(f"AdaptConfig.min_alpha must be in [0, 1], got {self.min_alpha}")
        if self.temperature is not None and not self.temperature > 0:
            raise InvalidInputError(f"AdaptConfig.temperature must be > 0, got {self.temperature}")
        lw = self.loss
        for f in fields(lw):
            v = getattr(lw, f.name)
            if v < 0:
                raise InvalidInputError(f"AdaptConfig.loss.{f.name} must be >= 0, got {v}")
        if lw.depth_gate > 1:
            raise InvalidInputError(f"AdaptConfig.loss.depth_gate must be in [0, 1], got {lw.depth_gate}")

    def to_dict(self) -> dict:
        """Plain YAML-safe dict (stored in the adapted checkpoint's provenance)."""
        return asdict(self)
