"""Training configuration: nested dataclasses loaded from YAML plus dotted ``key=value`` overrides.

``config/train/demo.yaml`` is the real configuration of the demo checkpoint; the CI smoke test
shrinks it with overrides (``optim.steps=2 data.train_seeds=[0] ...``). Every field has a
docstring line below it (the single source of truth for its meaning).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chorus_ros.core.errors import InvalidInputError

__all__ = ["DataConfig", "AugmentConfig", "LossConfig", "CalibrationConfig", "OptimConfig", "LogConfig",
           "CheckpointConfig", "TrainConfig", "load_train_config", "apply_overrides", "config_from_dict"]


@dataclass
class DataConfig:
    """Which scenes to train on and how their teacher targets are lifted."""

    source: str = "synthetic"
    """Scene source: 'synthetic' (chorus_ros.core.synthetic scenes generated from seeds)."""
    train_seeds: list[int] = field(default_factory=lambda: list(range(8)))
    """Seeds of the training scenes (held-out evaluation seeds must not appear here)."""
    scene: dict = field(default_factory=dict)
    """Overrides of the synthetic scene generator config (e.g. Gaussian density, room size)."""
    density_range: list[int] = field(default_factory=list)
    """Optional [lo, hi]: each scene's target Gaussian count is drawn (deterministically from its seed) in this range, so the encoder sees varied densities; empty uses data.scene."""
    views: dict = field(default_factory=dict)
    """Overrides of the synthetic camera trajectory used for lifting (count, width, height, fov)."""
    cache_dir: str = ".cache/lift"
    """Directory of the lifted-target cache (safetensors), shared by runs with the same teachers and views."""
    lift_eps: float = 1e-3
    """Minimum total blending weight for a Gaussian to carry a target."""
    render_backend: str = "auto"
    """Render backend used while lifting."""
    photometric_fraction: float = 0.0
    """Share of the training rooms replaced by their photometric 3DGS fit (the shift suite's 'photometric' recipe, chorus_ros.core.synthetic.photometric; chosen per seed, deterministically; fits cached under .cache/shifts, about 12 CPU minutes per room)."""
    mesh_fraction: float = 0.0
    """Share of the training rooms (of those not fitted photometrically) built by the second room
    source instead (mesh-sampled furniture of other shapes, equal-size Gaussians on every surface:
    chorus_ros.core.synthetic.meshrooms, the shift suite's 'mesh' source; chosen per seed,
    deterministically). A checkpoint trained with it has seen that source: its 'mesh' shift score
    is then no longer one on an unseen source."""
    photometric_fit: dict = field(default_factory=dict)
    """Overrides of the fit's ShiftConfig fields (photometric_steps, photometric_views, photometric_size, photometric_options); empty: the shift suite's."""
    folders: list[str] = field(default_factory=list)
    """Scene folders (the evaluation folder layout: a 3DGS map plus posed, labelled camera images)
    trained on beside the synthetic rooms, e.g. real scans (:func:`~chorus_ros.core.lift.lift_folder_scene`;
    ``scripts/scannet/build_votenet_rooms.py`` builds some). Never list a scene you report as held out."""
    folders_labels_map: str = ""
    """YAML mapping the folders' class names to the training label set (null: ignored); empty: equal names."""
    folders_views: str = ""
    """Which frames of each folder lift targets, as a slice (``::2``); empty: all."""
    folders_weight: float = 0.0
    """Share of the training steps that draw a folder rather than a synthetic room (0: every scene,
    folder or room, is drawn equally often)."""


@dataclass
class AugmentConfig:
    """Random scene augmentation (applied to the Gaussians; targets move with their Gaussian)."""

    enabled: bool = True
    """Switch all augmentation off (evaluation-like training)."""
    up_axis: int = 2
    """World axis that points up (2 = z, REP-103); rotations turn about it."""
    rotate: bool = True
    """Random rotation about the up axis by an angle uniform in [0, 2 pi)."""
    translate: float = 1.0
    """Random translation, uniform in [-t, t] metres per axis."""
    scale: float = 0.1
    """Random global scale factor uniform in [1 - s, 1 + s] (positions and Gaussian sizes)."""
    color_brightness: float = 0.15
    """Additive brightness jitter of the base colour, uniform in [-b, b]."""
    color_contrast: float = 0.15
    """Contrast jitter: colours scaled about their mean by a factor in [1 - c, 1 + c]."""
    color_saturation: float = 0.15
    """Saturation jitter: blend with the grey value by a factor in [1 - s, 1 + s]."""
    drop_max: float = 0.3
    """Random Gaussian dropout: a fraction uniform in [0, drop_max] of the Gaussians is removed."""
    crop_prob: float = 0.3
    """Probability of cropping the scene to a random horizontal box."""
    crop_min_fraction: float = 0.5
    """Smallest side of the crop box as a fraction of the scene's extent."""
    min_gaussians: int = 256
    """Augmentations never leave fewer valid Gaussians than this (they are skipped instead)."""
    densify_max: float = 1.0
    """Random densification: every step the map grows by a factor uniform in [1, densify_max] by
    3DGS's split (a Gaussian becomes two, each at a point drawn from it, with sizes / 1.6), so the
    encoder sees denser maps of smaller Gaussians than the lifted rooms; children take their
    parent's targets. 1: off."""
    densify_prob: float = 1.0
    """Probability that a step densifies at all (``densify_max`` > 1); the other steps keep the
    lifted room's own density. 1: every step (no extra random draw, so runs made before this
    option existed replay exactly)."""
    shift: dict = field(default_factory=dict)
    """Domain randomisation: per-Gaussian options of chorus_ros.core.synthetic.shifts.ShiftConfig (size_jitter, isotropic_fraction, tilt_deg, white_balance, exposure, shading, palette_deg, position_noise, low_opacity_fraction, floater_fraction, dead_fraction); every step each option's strength is drawn uniformly in [0, the given value]; added Gaussians take the targets of the Gaussian they copy. Empty: off."""
    min_opacity: float = 0.0
    """Gaussians below this opacity (after the shifts) leave the training input, as the perception
    pipeline sets them aside before encoding (PipelineConfig.min_opacity, 0.1); skipped when fewer
    than ``min_gaussians`` valid ones would remain. 0: off."""


@dataclass
class LossConfig:
    """Per-head distillation loss: (1 - cosine) + l2_weight * mean squared error."""

    cosine_weight: float = 1.0
    """Weight of the (1 - cosine similarity) term."""
    l2_weight: float = 1.0
    """Weight (lambda) of the per-channel mean squared error term."""
    weight_power: float = 0.5
    """Gaussians are weighted by (lift weight) ** power, normalised over valid Gaussians (0: uniform)."""
    balance_clusters: int = 0
    """Rarity balancing: cluster each head's targets per scene into this many groups (cosine k-means; 0 = off) and up-weight Gaussians of rare groups, so small objects are not drowned by walls and floors. Uses the targets only (teacher-agnostic)."""
    balance_power: float = 0.5
    """Balancing weight = (loss-mass share of the Gaussian's group) ** -power."""
    head_weights: dict = field(default_factory=dict)
    """Optional per-head loss multipliers, e.g. {object: 0.5}; missing heads use 1."""


@dataclass
class CalibrationConfig:
    """Multi-task gradient calibration across heads at the shared embedding (the seed method)."""

    enabled: bool = True
    """Calibrate (True) or plainly sum the head losses (False)."""
    project_conflicts: bool = True
    """Remove the component of each head's gradient that conflicts with another head's (PCGrad-style)."""
    equalize: bool = True
    """Rescale every head's (projected) gradient to the mean norm of the heads' gradients."""
    branches: bool = False
    """Level two: rescale the calibrated task gradient, where it reaches the encoder's input branches (encoder.branches), to the same norm in every branch (their mean), so no input modality dominates. No effect on a single-stem encoder."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    steps: int = 2000
    """Total optimisation steps."""
    lr: float = 2e-3
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.05
    """Final learning rate as a fraction of the peak."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    scenes_per_step: int = 1
    """Scenes whose gradients are accumulated per step (per process)."""


@dataclass
class LogConfig:
    """Where and how often training reports."""

    dir: str = ".cache/runs/demo"
    """Run directory: CSV log, TensorBoard events, resumable trainer state."""
    every: int = 10
    """Log every this many steps."""
    tensorboard: bool = True
    """Also write TensorBoard events when the tensorboard package is installed."""
    progress: bool = True
    """Show tqdm progress bars."""


@dataclass
class CheckpointConfig:
    """Checkpoint output and resume."""

    dir: str = "checkpoints/demo"
    """Checkpoint directory (model.safetensors + config.yaml + text encoder weights + label set)."""
    every: int = 500
    """Write a checkpoint (and the resumable state) every this many steps (and at the end)."""
    resume: bool = True
    """Resume from the run directory's trainer state when present."""


@dataclass
class TrainConfig:
    """Everything ``chorus-train`` needs."""

    stage: str = "align"
    """Training stage (chorus_ros.core.train.stages registry): 'align' (lift-then-align distillation), 'contrastive' (self-supervised PointContrast), 'fusion' (2D fusion decoder), ..."""
    stage_options: dict = field(default_factory=dict)
    """Per-stage options, keyed by stage name (e.g. {contrastive: {pairs: 4096}}); each stage validates its own section."""
    init_from: str = ""
    """Optional checkpoint directory to initialise the encoder from (e.g. a contrastive pre-training run); its backbone must match."""
    seed: int = 0
    """Seed of model initialisation, scene sampling and augmentation."""
    device: str = "cpu"
    """Torch device ('cpu', 'cuda'); with torchrun each process uses cuda:LOCAL_RANK when CUDA is available."""
    threads: int = 0
    """torch intra-op threads (0 keeps torch's default)."""
    label_set: str = "config/labels/synthetic.yaml"
    """Label set the checkpoint ships with (its class names are decoded with the text encoder)."""
    text_encoder: dict = field(default_factory=lambda: {"tiny": True, "prompt_template": "{}"})
    """Text encoder spec (chorus_ros.core.text.TextEncoderSpec fields); its weights are saved beside the checkpoint."""
    teachers: list[dict] = field(default_factory=list)
    """Teacher specs ({kind, type, options}); one encoder head per teacher kind."""
    heads: list[str] = field(default_factory=list)
    """Heads to train, a subset of the teachers' kinds (empty = all). Ablations drop a head here, so they share the lifted-target cache."""
    encoder: dict = field(default_factory=dict)
    """Encoder architecture (chorus_ros.core.encoder.config.EncoderConfig fields); head dims come from the teachers."""
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _convert(tp, value, path: str):
    """Coerce ``value`` to annotation ``tp`` (dataclasses recursively); raise naming ``path``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value, path)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"config {path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidInputError(f"config {path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InvalidInputError(f"config {path}: expected a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InvalidInputError(f"config {path}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_convert(inner, v, f"{path}[{i}]") if inner is not Any else v for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidInputError(f"config {path}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def config_from_dict(cls, d: dict | None, path: str = ""):
    """Build dataclass ``cls`` from a nested dict; unknown keys raise naming their dotted path."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise InvalidInputError(f"config {path or cls.__name__}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        where = f"{path}." if path else ""
        raise InvalidInputError(f"unknown config keys {[where + u for u in unknown]}; known under "
                                f"{path or 'the top level'}: {names}")
    kw = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in d.items()}
    return cls(**kw)


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for ov in overrides:
        if "=" not in ov:
            raise InvalidInputError(f"override {ov!r} is not key=value")
        key, raw = ov.split("=", 1)
        key = key.strip()
        if not key:
            raise InvalidInputError(f"override {ov!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise InvalidInputError(f"override {ov!r}: value is not valid YAML: {e}") from e
        parts = key.split(".")
        cur = d
        for p in parts[:-1]:
            if isinstance(cur, list):
                try:
                    cur = cur[int(p)]
                    continue
                except (ValueError, IndexError):
                    raise InvalidInputError(f"override {ov!r}: {p!r} is not an index of a {len(cur)}-entry list") from None
            nxt = cur.get(p)
            if nxt is None:
                nxt = cur[p] = {}
            if not isinstance(nxt, (dict, list)):
                raise InvalidInputError(f"override {ov!r}: {p!r} is not a section")
            cur = nxt
        last = parts[-1]
        if isinstance(cur, list):
            try:
                cur[int(last)] = value
            except (ValueError, IndexError):
                raise InvalidInputError(f"override {ov!r}: {last!r} is not an index of a {len(cur)}-entry list") from None
        else:
            cur[last] = value
    return d


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config (or the defaults when ``path`` is None) and apply overrides."""
    d: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InvalidInputError(f"training config not found: {p}")
        d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(d, dict):
            raise InvalidInputError(f"training config {p} must be a mapping at the top level")
    apply_overrides(d, list(overrides or []))
    return config_from_dict(TrainConfig, d)
