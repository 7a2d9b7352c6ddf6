"""The perception pipeline the ROS nodes call: map updates -> incremental encoding -> decoding.

:class:`PerceptionPipeline` owns a :class:`~chorus_ros.core.map.GaussianMap`, the Chorus encoder
(through :class:`~chorus_ros.core.encoder.incremental.IncrementalEncoder`), the text encoder, a
:class:`~chorus_ros.core.decode.SemanticDecoder` and an
:class:`~chorus_ros.core.decode.InstanceDecoder` (with its persistent id tracker,
:class:`~chorus_ros.core.decode.instances.IdTracker`; saved as ``codebook.safetensors``, the
format's historical name).

Per-Gaussian state lives in map attributes, so it moves with its Gaussian:

================  ===============  ==========================================================
attribute         shape / dtype    meaning
================  ===============  ==========================================================
``feat.<head>``   [n, dim] f32     encoder head outputs (written by the incremental encoder)
``sem.probs``     [n, K] f32       class probabilities over the active label set
``sem.label``     [n] int64        argmax class id (65535: below ``min_confidence``)
``sem.conf``      [n] f32          probability of that class
``inst.id``       [n] int64        persistent instance id, 0 = none (ids start at 1)
================  ===============  ==========================================================

Call order: :meth:`~PerceptionPipeline.apply_update` (cheap map mutation; may be called many
times), then :meth:`~PerceptionPipeline.encode` (re-encodes only the changed blocks + halo,
then re-scores those Gaussians and regroups the instances they touch), then any number of
:meth:`~PerceptionPipeline.render_view`, :meth:`~PerceptionPipeline.objects`,
:meth:`~PerceptionPipeline.query`. :meth:`~PerceptionPipeline.set_labels` switches the label
set without re-encoding (only the class names go through the text encoder). All public methods
hold :attr:`PerceptionPipeline.lock`.

Example::

    pipe = PerceptionPipeline.from_checkpoint("checkpoints/demo")
    pipe.apply_update(scene.gaussians, None, full=True)
    pipe.encode()
    view = pipe.render_view(camera)        # view.labels [H, W] uint16, view.instances int32 ...
    hits = pipe.query("a chair", top_k=3)
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from chorus_ros.core.decode.instances import InstanceConfig, InstanceDecoder, ObjectRecord
from chorus_ros.core.objects.support import SupportConfig, support_scores
from chorus_ros.core.decode.semantic import SemanticConfig, SemanticDecoder
from chorus_ros.core.decode.fusion import PerViewConfig
from chorus_ros.core.encoder.incremental import IncrementalConfig
from chorus_ros.core.errors import CheckpointError, EncodeError, InvalidInputError, MapCapacityError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import Camera
from chorus_ros.core.labels import UNLABELED, LabelSet
from chorus_ros.core.map import GaussianMap, MapConfig
from chorus_ros.core.persist import Manifest, verify_save, write_save
from chorus_ros.core.render import RenderSettings, render

__all__ = ["PipelineConfig", "PerceptionPipeline", "ViewResult", "EncodeSummary", "QueryHit",
           "ATTR_PROBS", "ATTR_LABEL", "ATTR_CONF", "ATTR_INSTANCE", "feature_attr",
           "labels_from_meta", "text_spec_from_meta", "SavedState", "SAVE_KIND", "SAVE_FILES"]

ATTR_PROBS, ATTR_LABEL, ATTR_CONF, ATTR_INSTANCE = "sem.probs", "sem.label", "sem.conf", "inst.id"


def feature_attr(head: str) -> str:
    """Map attribute holding a head's per-Gaussian features."""
    return f"feat.{head}"


DEFAULT_MIN_OPACITY = 0.1
"""Default :attr:`PipelineConfig.min_opacity` (also the default of the tools that set faint
Gaussians aside the same way: chorus-adapt, scripts/adapt_tables.py)."""


@dataclass
class PipelineConfig:
    """Everything the perception pipeline needs besides the checkpoint (ROS parameters ``*``)."""

    map: MapConfig = field(default_factory=MapConfig)
    """The Gaussian map store (``map.*``)."""
    incremental: object = field(default_factory=IncrementalConfig)
    """Incremental encoding: halo, memory bound (``incremental.*``; an IncrementalConfig, or None
    when an ``incremental_factory`` that needs no config is given)."""
    render: RenderSettings = field(default_factory=RenderSettings)
    """Renderer settings for output views (``render.*``)."""
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    """Open-vocabulary decoding thresholds (``semantic.*``)."""
    per_view: PerViewConfig = field(default_factory=PerViewConfig)
    """Per-view decoding: the VDVI fusion decoder and its image source (``per_view.*``)."""
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    """Instance grouping and persistent ids (``instances.*``)."""
    support: SupportConfig = field(default_factory=SupportConfig)
    """How an object's support (Gaussian count) weighs into query scores (``support.*``)."""
    device: str = "cpu"
    """Torch device of the encoder, map and renderer ('cpu', 'cuda')."""
    labels_file: str = ""
    """Optional label-set YAML replacing the checkpoint's label set at start-up."""
    overlay_alpha: float = 0.5
    """Weight of the class colour in the overlay image (0: rgb only, 1: colours only)."""
    min_opacity: float = DEFAULT_MIN_OPACITY
    """Opacity below which an incoming Gaussian is set aside instead of entering the map: it is
    not encoded, rendered, grouped or queried, and is kept unchanged in the pipeline's faint store
    (``PerceptionPipeline.faint``, saved with the map). An id that turns faint moves there; one
    that turns opaque again moves back. Photometric 3DGS leaves many nearly transparent Gaussians
    (a real ScanNet 3DGS: 29 % below 0.1); given to the encoder, they corrupt the features of the
    surfaces around them (docs/generalisation.md). 0 keeps every Gaussian in the map."""

    def validate(self) -> None:
        """Raise InvalidInputError for values no view can use (nested configs validate themselves)."""
        if not 0.0 <= float(self.min_opacity) < 1.0:
            raise InvalidInputError(f"min_opacity must be in [0, 1), got {self.min_opacity}")
        if not 0.0 <= float(self.overlay_alpha) <= 1.0:
            raise InvalidInputError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        """Nested plain dict (e.g. YAML) -> config; unknown keys raise naming them."""
        out = cls()
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise InvalidInputError(f"unknown pipeline config keys {bad}; known: {sorted(known)}")
        for k, v in d.items():
            cur = getattr(out, k)
            if isinstance(v, dict) and hasattr(cur, "__dataclass_fields__"):
                sub_known = set(cur.__dataclass_fields__)
                sbad = sorted(set(v) - sub_known)
                if sbad:
                    raise InvalidInputError(f"unknown pipeline config keys {k}.{sbad}; known: {sorted(sub_known)}")
                for kk, vv in v.items():
                    setattr(cur, kk, tuple(vv) if isinstance(getattr(cur, kk), tuple) else vv)
            else:
                setattr(out, k, v)
        return out


@dataclass
class ViewResult:
    """Everything one view produces. Images are numpy ``[H, W, ...]`` in the camera's pixel grid."""

    labels: np.ndarray
    """[H, W] uint16 class id; 65535 = unlabeled (too little alpha or confidence)."""
    confidence: np.ndarray
    """[H, W] float32 winning class probability (0 where unlabeled)."""
    instances: np.ndarray
    """[H, W] int32 persistent instance id of the highest-weight Gaussian; 0 = none."""
    rgb: np.ndarray
    """[H, W, 3] uint8 rendered colour."""
    depth: np.ndarray
    """[H, W] float32 expected camera-z depth, metres (0 where nothing was rendered)."""
    color: np.ndarray
    """[H, W, 3] uint8 class colours (LabelSet.colorize; black = unlabeled)."""
    overlay: np.ndarray
    """[H, W, 3] uint8 rgb blended with ``color`` on labelled pixels."""
    alpha: np.ndarray
    """[H, W] float32 accumulated opacity."""
    map_version: int
    """Map version the view was rendered from."""
    fused: str = "off"
    """Where the labels came from: 'off' (3D scores splatted), 'rendered' or 'camera' (the fusion
    decoder on the rendered or the camera image)."""


@dataclass
class EncodeSummary:
    """What one :meth:`PerceptionPipeline.encode` call did."""

    full: bool
    """Whether the whole map was re-encoded."""
    updated_gaussians: int
    """Gaussians whose features (and scores) were rewritten."""
    n_encoded: int
    """Gaussians the network ran on (changed blocks + halo)."""
    regrouped_gaussians: int
    """Gaussians whose instance grouping was recomputed."""
    objects_changed: list[int]
    """Instance ids created or updated."""
    objects_retired: list[int]
    """Instance ids retired (no Gaussians left)."""
    num_objects: int
    """Active objects after the call."""
    map_version: int
    seconds_encode: float
    seconds_semantic: float
    seconds_instances: float
    updated_slots: torch.Tensor | None = None
    """[k] int64 map slots whose features, scores and labels were rewritten (valid until the map
    next changes)."""


@dataclass
class QueryHit:
    """One ranked answer of :meth:`PerceptionPipeline.query`."""

    record: ObjectRecord
    score: float
    """Support-aware score: ``cosine`` x the object's support weight
    (:func:`chorus_ros.core.objects.support_scores`), so a fragment cannot outrank a whole object."""
    cosine: float = 0.0
    """Cosine between the query's text embedding and the object's mean language embedding."""

    def __iter__(self):  # allows ``for record, score in pipe.query(...)``
        return iter((self.record, self.score))


def labels_from_meta(meta: dict) -> LabelSet:
    """The label set stored in checkpoint metadata (``labels`` or ``label_set``: LabelSet.to_dict()
    or a list of names)."""
    d = meta.get("labels", meta.get("label_set"))
    if d is None:
        raise CheckpointError("checkpoint metadata has no label set ('labels'); keys: "
                              f"{sorted(meta)}")
    if isinstance(d, list):
        from chorus_ros.core.decode.semantic import default_colors
        return LabelSet([str(n) for n in d], default_colors(len(d)))
    return LabelSet.from_dict(d, source="checkpoint labels")


def text_spec_from_meta(meta: dict, ckpt_dir: str | Path):
    """The text encoder spec in checkpoint metadata (``text_encoder``), with a relative
    ``weights`` path resolved against the checkpoint folder (default
    ``<dir>/text_encoder.safetensors`` when that file exists)."""
    from chorus_ros.core.text import TextEncoderSpec
    d = meta.get("text_encoder", meta.get("text"))
    if d is None:
        raise CheckpointError(f"checkpoint metadata has no 'text_encoder' spec; keys: {sorted(meta)}")
    spec = TextEncoderSpec.from_dict(dict(d))
    ckpt_dir = Path(ckpt_dir)
    if spec.weights:
        p = Path(spec.weights)
        if not p.is_absolute():
            spec.weights = str(ckpt_dir / p)
    elif (ckpt_dir / "text_encoder.safetensors").is_file():
        spec.weights = str(ckpt_dir / "text_encoder.safetensors")
    return spec


SAVE_KIND = "chorus_ros.PerceptionPipeline"
"""``kind`` of a pipeline save in its manifest (and ``format`` of its pipeline.json)."""
SAVE_FILES = ("map.safetensors", "codebook.safetensors", "pipeline.json")
"""The data files of a pipeline save."""
FAINT_FILE = "faint.safetensors"
"""Optional file of a save: the faint store (Gaussians below ``PipelineConfig.min_opacity``)."""
_CODEBOOK_KEYS = {"ids": 1, "label": 1, "prototype": 2, "centroid": 2, "bbox_min": 2, "bbox_max": 2,
                  "count": 1, "score": 1, "active": 1, "embedding": 2}
"""Codebook tensor name -> number of dimensions (all share the first: one row per entry)."""


@dataclass
class SavedState:
    """A save read and checked by :meth:`PerceptionPipeline.read_saved`, not yet in use."""

    map: GaussianMap
    codebook: "IdTracker"
    labels: LabelSet
    """The label set the save was written with (codebook label ids refer to it)."""
    instance_voxel_size: float | None
    manifest: Manifest
    instance_spacing: float | None = None
    """The instance decoder's measured sample spacing, metres (None: not measured or older save)."""
    faint: GaussianMap | None = None
    """The faint store saved with the map (None: the save held no faint Gaussians)."""


def _store_like(gmap: GaussianMap) -> GaussianMap:
    """An empty map with ``gmap``'s configuration (the faint store beside the map)."""
    return GaussianMap(replace(gmap.config))


def _check_pipeline_json(path: Path) -> dict:
    """Parse ``pipeline.json`` and check its schema (CheckpointError naming the bad field)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != SAVE_KIND or meta.get("version") != 1:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} v{meta.get('version')!r}, expected "
                              f"{SAVE_KIND!r} v1")
    if not isinstance(meta.get("labels"), dict):
        raise CheckpointError(f"{path}: 'labels' must be a label set mapping")
    cb = meta.get("codebook")
    nid = cb.get("next_id", 1) if isinstance(cb, dict) else None
    if not (isinstance(nid, int) and not isinstance(nid, bool) and 1 <= nid < (1 << 62)):
        raise CheckpointError(f"{path}: 'codebook' must be a mapping with an integer 'next_id' >= 1, got {cb!r}")
    v = meta.get("instance_voxel_size")
    if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0):
        raise CheckpointError(f"{path}: 'instance_voxel_size' must be a finite number >= 0 or null, got {v!r}")
    v = meta.get("instance_spacing")
    if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0):
        raise CheckpointError(f"{path}: 'instance_spacing' must be a finite number > 0 or null, got {v!r}")
    return meta


def _load_codebook(path: Path, meta: dict):
    """Read and check ``codebook.safetensors``; returns a filled IdTracker (formerly ObjectCodebook)."""
    from safetensors.torch import load_file

    from chorus_ros.core.decode.instances import IdTracker
    try:
        t = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    t.pop("empty", None)
    unknown = sorted(set(t) - set(_CODEBOOK_KEYS))
    missing = sorted(set(_CODEBOOK_KEYS) - {"embedding"} - set(t)) if t else []
    if unknown or missing:
        raise CheckpointError(f"{path}: missing tensors {missing}, unexpected tensors {unknown}")
    if t:
        k = t["ids"].shape[0] if t["ids"].dim() == 1 else -1
        bad = [n for n, v in t.items() if v.dim() != _CODEBOOK_KEYS[n] or v.shape[0] != k]
        bad += [n for n in ("centroid", "bbox_min", "bbox_max") if t[n].dim() == 2 and t[n].shape[1] != 3]
        if bad:
            raise CheckpointError(f"{path}: tensors {sorted(set(bad))} have wrong shapes "
                                  f"({ {n: list(t[n].shape) for n in sorted(set(bad))} }) for {k} entries")
        if not all(t[n].dtype == torch.int64 for n in ("ids", "label", "count")):
            raise CheckpointError(f"{path}: 'ids', 'label' and 'count' must be int64")
        ids = t["ids"]
        if k and (int(ids.min()) < 1 or torch.unique(ids).numel() != k):
            raise CheckpointError(f"{path}: codebook ids must be distinct and >= 1")
        floats = [n for n in ("prototype", "centroid", "bbox_min", "bbox_max", "score", "embedding")
                  if n in t and not (t[n].is_floating_point() and bool(torch.isfinite(t[n]).all()))]
        if floats:
            raise CheckpointError(f"{path}: tensors {floats} must hold finite floats")
    cb = IdTracker()
    cb.load_state_dict(t, meta)
    return cb


class PerceptionPipeline:
    """Map + incremental encoder + decoders (see the module docstring).

    Args:
        config: pipeline configuration.
        model: a :class:`~chorus_ros.core.encoder.ChorusEncoder` (eval mode is set here).
        text_encoder: a :class:`~chorus_ros.core.text.TextEncoder` whose ``dim`` equals the
            language head's.
        labels: the initial label set.
        gmap: an existing map (default: a new empty map from ``config.map``).
        incremental_factory: ``f(gmap) -> encoder`` with ``update()`` / ``encode_full()``
            returning an EncodeResult (default: an IncrementalEncoder over ``model``); called
            again whenever the map object is replaced (:meth:`load`).
    """

    def __init__(self, config: PipelineConfig, model, text_encoder, labels: LabelSet,
                 gmap: GaussianMap | None = None, incremental_factory=None) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.model = model
        if model is not None:
            model.eval()
        self.text_encoder = text_encoder
        if gmap is None:
            config.map.device = config.device
            gmap = GaussianMap(config.map)
        self.map = gmap
        self.faint = _store_like(gmap)
        """Gaussians below ``config.min_opacity``: kept (and saved), never encoded or rendered."""
        self._incremental_factory = incremental_factory or self._default_incremental
        self._incremental = self._incremental_factory(self.map)
        enc = getattr(self._incremental, "model", model)   # a rotation ensemble when incremental.rotations > 1
        if hasattr(enc, "receptive_field_m") and hasattr(enc, "config"):
            from chorus_ros.core.encoder.incremental import max_supported_coordinate
            lim = max_supported_coordinate(enc, gmap.config.block_size)
            if float(gmap.config.max_abs_coordinate) > lim:
                raise InvalidInputError(f"map.max_abs_coordinate {gmap.config.max_abs_coordinate} m is beyond what "
                                        f"the encoder's voxel keys cover ({lim:.0f} m at voxel_size "
                                        f"{enc.config.voxel_size} m); lower it")
        self.semantic = SemanticDecoder(text_encoder, labels, config.semantic)
        self.fusion = None
        """Optional :class:`~chorus_ros.core.decode.fusion.FusionDecoder` (``<checkpoint>/fusion/``)."""
        self.instances = InstanceDecoder(config.instances)
        self._touched: set[int] = set()
        self._pending_full = False
        self._suspects: list[int] = []     # ids upserted since the last good encode (first 100)
        self.floor_z: float | None = None
        """Floor height (map frame, metres) the height prior last used; None without one."""

    # ------------------------------------------------------------------ building
    def _default_incremental(self, gmap: GaussianMap):
        from chorus_ros.core.encoder.incremental import IncrementalEncoder
        return IncrementalEncoder(self.model, gmap, self.config.incremental)

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: PipelineConfig | None = None) -> "PerceptionPipeline":
        """Load ``<path>/model.safetensors`` + ``config.yaml`` (encoder, label set, text encoder spec;
        the text tower's weights from ``<path>/text_encoder.safetensors`` when the spec names none;
        the GOCL codebook from ``<path>/gocl/`` when present, for the objects' code ids)."""
        from chorus_ros.core.encoder.checkpoint import load_checkpoint
        from chorus_ros.core.text import build_text_encoder
        config = config or PipelineConfig()
        ck = load_checkpoint(str(path), device=config.device)
        meta = dict(ck.meta or {})
        spec = text_spec_from_meta(meta, path)
        spec.device = config.device
        text = build_text_encoder(spec)
        labels = (LabelSet.from_yaml(config.labels_file) if config.labels_file else labels_from_meta(meta))
        dims = ck.model.head_dims if isinstance(ck.model.head_dims, dict) else ck.model.config.head_dims()
        if "language" in dims and dims["language"] != text.dim:
            raise CheckpointError(f"language head dim {dims['language']} != text encoder dim {text.dim}")
        if not config.instances.voxel_size > 0 and not config.instances.voxel_quantum > 0:
            # The automatic grouping voxel is measured on the Gaussians seen first, so a map grown
            # by deltas grouped differently from the same map received whole (demo scene: 37 vs 43
            # objects). Snapping it to power-of-two multiples of a quantum fixed by the checkpoint
            # (the encoder's voxel) removes that history while still adapting to map density.
            q = config.instances.auto_voxel_factor * float(ck.config.voxel_size)
            config = replace(config, instances=replace(config.instances, voxel_quantum=q))
        pipe = cls(config, ck.model.to(config.device), text, labels)
        from chorus_ros.core.decode.fusion import FUSION_DIR, load_fusion
        if (Path(path) / FUSION_DIR / "fusion.json").is_file():
            pipe.fusion = load_fusion(Path(path) / FUSION_DIR, config.device)
        elif config.per_view.fusion != "off":
            raise CheckpointError(f"per_view.fusion is {config.per_view.fusion!r} but {path} has no "
                                  f"{FUSION_DIR}/ decoder (train one with chorus-train stage fusion)")
        gd = Path(path) / "gocl"
        if (gd / "gocl.json").is_file():
            # the scene-agnostic GOCL codebook the object head was trained from: records get code ids
            from chorus_ros.core.objects.gocl import GOCL
            protos = GOCL.load(gd).codebook.unit_prototypes().detach()
            if dims.get("object") != protos.shape[1]:
                # a codebook of another width cannot name the objects: refuse rather than publish -1
                raise CheckpointError(f"{gd}: GOCL codebook width {protos.shape[1]} != the checkpoint's "
                                      f"object head width {dims.get('object')} (heads: {dims})")
            pipe.instances.set_code_prototypes(protos)
        from chorus_ros.core.decode.height import HEIGHT_PRIOR_FILE, HeightPrior
        if (Path(path) / HEIGHT_PRIOR_FILE).is_file():
            pipe.semantic.set_height_prior(HeightPrior.load(Path(path) / HEIGHT_PRIOR_FILE))
        return pipe

    # ------------------------------------------------------------------ helpers
    @property
    def labels(self) -> LabelSet:
        return self.semantic.labels

    def _heads(self) -> list[str]:
        """Heads whose features the map holds (``feat.<head>``; not ``feat.valid``/``feat.embedding``)."""
        return [n[len("feat."):] for n in self.map.attribute_names()
                if n.startswith("feat.") and n not in ("feat.valid", "feat.embedding")]

    def _attr(self, name: str) -> torch.Tensor | None:
        return self.map.attribute(name) if name in self.map.attribute_names() else None

    def _object_features(self) -> torch.Tensor | None:
        for head in ("object", "generalist"):
            t = self._attr(feature_attr(head))
            if t is not None:
                return t
        return None

    def _stuff_ids(self, all_classes: bool = False) -> list[int]:
        labels = self.labels
        if all_classes:
            return list(range(len(labels)))
        names = set(self.config.instances.stuff_classes)
        return [i for i, n in enumerate(labels.names) if n in names or bool(labels.stuff[i])]

    # ------------------------------------------------------------------ updates
    def apply_update(self, upserts: GaussianArrays | None, removed_ids: torch.Tensor | None = None,
                     full: bool = False) -> int:
        """Mutate the map only (cheap). ``full``: the map becomes exactly ``upserts`` (a snapshot;
        Gaussians keeping their ids keep their instance ids). Returns the new map version."""
        with self.lock:
            inst = self._attr(ATTR_INSTANCE)
            if full:
                if upserts is None:
                    raise InvalidInputError("a full update needs the snapshot in 'upserts'")
                if upserts.ids is None:   # replace_all's default ids, fixed before the split
                    upserts = GaussianArrays(upserts.means, upserts.sh, upserts.opacities, upserts.log_scales,
                                             upserts.quats, torch.arange(len(upserts), dtype=torch.int64),
                                             upserts.extras)
                opaque, faint = self._split_faint(upserts, "full update", snapshot=True)
                if faint is not None and len(faint) > int(self.faint.config.capacity):
                    raise MapCapacityError(f"full update: {len(faint)} faint Gaussians (opacity < min_opacity "
                                           f"{self.config.min_opacity}) exceed the faint store's capacity "
                                           f"{self.faint.config.capacity}; nothing changed")
                old_ids = self.map.arrays().ids.clone() if len(self.map) else None
                old_inst = inst.clone() if inst is not None and len(self.map) else None
                self.map.replace_all(opaque)
                if faint is None:
                    self.faint.clear()
                else:
                    self.faint.replace_all(faint)
                if old_inst is not None:
                    self._restore_instances(old_ids, old_inst)
                self._touched |= set(self.instances.codebook.active_ids())
                self._pending_full = True
            else:
                opaque, faint = self._split_faint(upserts, "map update")
                rm = (torch.zeros(0, dtype=torch.long) if removed_ids is None
                      else torch.as_tensor(removed_ids, dtype=torch.long).reshape(-1).cpu())
                # ids that cross the threshold leave the store they were in
                faint_ids = torch.zeros(0, dtype=torch.long) if faint is None else faint.ids.long().cpu()
                opaque_ids = torch.zeros(0, dtype=torch.long) if opaque is None else opaque.ids.long().cpu()
                map_rm = torch.cat([rm, faint_ids[self.map.contains(faint_ids).cpu()]]) if len(faint_ids) else rm
                faint_rm = (torch.cat([rm, opaque_ids[self.faint.contains(opaque_ids).cpu()]])
                            if len(self.faint) and len(opaque_ids) else rm)
                if faint is not None:
                    new = int((~self.faint.contains(faint_ids)).sum())
                    cap = int(self.faint.config.capacity)
                    if len(self.faint) + new > cap:
                        raise MapCapacityError(f"map update: {new} new faint Gaussians (opacity < min_opacity "
                                               f"{self.config.min_opacity}) would exceed the faint store's capacity "
                                               f"{cap} ({len(self.faint)} held); nothing changed")
                removed_ids = map_rm if len(map_rm) else None
                upserts = opaque if opaque is not None and len(opaque) else None
                if inst is not None and len(self.map):
                    if removed_ids is not None and len(removed_ids):
                        rid = torch.as_tensor(removed_ids, dtype=torch.long)
                        present = self.map.contains(rid)
                        if bool(present.any()):
                            slots = self.map.slots_of(rid[present])
                            self._touched |= {int(i) for i in inst[slots].unique().tolist() if i > 0}
                    if upserts is not None and upserts.ids is not None and len(upserts):
                        present = self.map.contains(upserts.ids.long())
                        if bool(present.any()):
                            slots = self.map.slots_of(upserts.ids.long()[present])
                            self._touched |= {int(i) for i in inst[slots].unique().tolist() if i > 0}
                self.map.apply_delta(upserts, removed_ids, missing="ignore")
                if faint is not None or (len(self.faint) and len(faint_rm)):
                    self.faint.apply_delta(faint, faint_rm if len(faint_rm) else None, missing="ignore")
            if upserts is not None and upserts.ids is not None and len(self._suspects) < 100:
                self._suspects += upserts.ids[:100 - len(self._suspects)].tolist()
            return self.map.version

    def _split_faint(self, g: GaussianArrays | None, what: str, *, snapshot: bool = False
                     ) -> tuple[GaussianArrays | None, GaussianArrays | None]:
        """``(opaque, faint)`` parts of ``g`` by ``config.min_opacity``: ``(g, None)`` when nothing
        is faint, else the opaque part (possibly empty) and the faint part. A split update is
        checked whole first, so a bad Gaussian in either part refuses it before either store
        changes. A non-finite opacity counts as opaque, and the map refuses it by name."""
        tau = float(self.config.min_opacity)
        if g is None or tau <= 0.0 or len(g) == 0:
            return g, None
        faint = g.faint_mask(tau)
        if not bool(faint.any()):
            return g, None
        self.map.check(g, what, snapshot=snapshot)
        return g.index(~faint), g.index(faint)

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        """``[len(ids)]`` bool: the id is held, in the map or in the faint store."""
        with self.lock:
            return self.map.contains(ids) | self.faint.contains(ids)

    def _restore_instances(self, old_ids: torch.Tensor, old_inst: torch.Tensor) -> None:
        new_ids = self.map.arrays().ids
        order = torch.argsort(old_ids)
        s_ids, s_inst = old_ids[order], old_inst[order]
        pos = torch.searchsorted(s_ids, new_ids).clamp_max(max(len(s_ids) - 1, 0))
        hit = s_ids[pos] == new_ids
        vals = torch.where(hit, s_inst[pos], torch.zeros_like(pos))
        self.map.set_attribute(ATTR_INSTANCE, vals.to(torch.long))

    # ------------------------------------------------------------------ encoding
    def encode(self, full: bool = False) -> EncodeSummary:
        """Incrementally re-encode what changed, re-score those Gaussians, regroup their objects."""
        with self.lock:
            t0 = time.perf_counter()
            full = full or self._pending_full
            try:
                res = self._incremental.encode_full() if full else self._incremental.update()
            except Exception as e:  # noqa: BLE001 - named, and the next encode starts over
                self._pending_full = True   # the failed call may have consumed the dirty region
                if isinstance(e, EncodeError):
                    raise
                raise EncodeError(f"the encoder failed ({type(e).__name__}: {e}); Gaussians changed since the "
                                  f"last good encode (first {len(self._suspects)}): {self._suspects[:20]}",
                                  self._suspects) from e
            self._suspects = []
            full = full or bool(getattr(res, "full", False))
            t1 = time.perf_counter()
            n = len(self.map)
            slots = torch.arange(n) if full else res.updated_slots.long().cpu()
            # the floor moved (height prior): every Gaussian was re-scored, so every one is regrouped
            rescored_all = self._rescore(None if full else slots)
            if rescored_all:
                slots = torch.arange(n)
            t2 = time.perf_counter()
            r = self._regroup(None if full or rescored_all else slots)
            t3 = time.perf_counter()
            self._pending_full = False
            return EncodeSummary(full, int(slots.numel()), int(getattr(res, "n_encoded", n)),
                                 int(r.region.sum()) if r is not None else 0,
                                 r.changed if r is not None else [], r.retired if r is not None else [],
                                 len(self.instances.codebook.active_ids()), self.map.version,
                                 t1 - t0, t2 - t1, t3 - t2, slots)

    def _floor_heights(self) -> tuple[torch.Tensor | None, bool]:
        """Heights above the floor of every map Gaussian for the height prior (None without one),
        and whether the floor moved by more than ``semantic.floor_tolerance_m`` since it was last
        used (then every Gaussian must be re-scored). The floor is re-estimated from the whole map
        each time (:func:`~chorus_ros.core.decode.height.estimate_floor`, O(N))."""
        if not self.semantic.uses_height or len(self.map) == 0:
            return None, False
        from chorus_ros.core.decode.height import estimate_floor
        g = self.map.arrays()
        est = estimate_floor(g.means[:, 2], g.opacity)
        if est is None:
            return None, False
        moved = self.floor_z is None or abs(est.z - self.floor_z) > self.config.semantic.floor_tolerance_m
        if moved:
            self.floor_z = est.z
        return (g.means[:, 2].double() - self.floor_z).float(), moved

    def _rescore(self, slots: torch.Tensor | None) -> bool:
        """Scores, labels and confidences of ``slots`` (None: all) from the language features
        (and the heights above the floor, with a height prior). Returns True when every Gaussian
        was re-scored although ``slots`` were given (the floor moved)."""
        n = len(self.map)
        k = len(self.labels)
        lang = self._attr(feature_attr("language"))
        cur = self._attr(ATTR_PROBS)
        need_all = slots is None or cur is None or cur.shape[1] != k
        if lang is None:  # no language head: nothing is labelled
            self.map.set_attribute(ATTR_PROBS, torch.zeros(n, k, device=self.map.device))
            self.map.set_attribute(ATTR_LABEL, torch.full((n,), UNLABELED, dtype=torch.long, device=self.map.device))
            self.map.set_attribute(ATTR_CONF, torch.zeros(n, device=self.map.device))
            return False
        heights, moved = self._floor_heights()
        forced = moved and not need_all and slots.numel() < n
        if need_all or moved:
            out = self.semantic.decode(lang, heights=heights)
            self.map.set_attribute(ATTR_PROBS, out.probs.to(self.map.device))
            self.map.set_attribute(ATTR_LABEL, out.label.to(self.map.device))
            self.map.set_attribute(ATTR_CONF, out.confidence.to(self.map.device))
            return forced
        if slots.numel() == 0:
            return False
        s = slots.to(self.map.device)
        out = self.semantic.decode(lang[s], heights=None if heights is None else heights.to(s.device)[s])
        self.map.set_attribute(ATTR_PROBS, out.probs, s)
        self.map.set_attribute(ATTR_LABEL, out.label, s)
        self.map.set_attribute(ATTR_CONF, out.confidence, s)
        return False

    def _regroup(self, slots: torch.Tensor | None):
        n = len(self.map)
        g = self.map.arrays()
        prev = self._attr(ATTR_INSTANCE)
        prev = torch.zeros(n, dtype=torch.long) if prev is None else prev.long().cpu()
        obj = self._object_features()
        no_obj = obj is None
        if no_obj:
            obj = torch.zeros(n, 1)
        region = None
        if slots is not None:
            region = torch.zeros(n, dtype=torch.bool)
            region[slots] = True
        touched = self._touched
        self._touched = set()
        if slots is not None and not bool(region.any()) and not touched:
            return None
        r = self.instances.regroup(
            g.means.cpu(), obj.cpu(), self.map.attribute(ATTR_LABEL).cpu(), prev, region=region,
            touched_ids=touched, stuff_label_ids=self._stuff_ids(all_classes=no_obj),
            lang_feats=None if self._attr(feature_attr("language")) is None
            else self.map.attribute(feature_attr("language")).cpu(),
            confidence=self.map.attribute(ATTR_CONF).cpu(), gaussian_ids=g.ids.cpu(), scales=g.scales.cpu())
        if prev.numel() == 0 or ATTR_INSTANCE not in self.map.attribute_names():
            self.map.set_attribute(ATTR_INSTANCE, r.instance_ids.to(self.map.device))
        else:
            idx = torch.nonzero(r.region).squeeze(1)
            if idx.numel():
                self.map.set_attribute(ATTR_INSTANCE, r.instance_ids[idx].to(self.map.device),
                                       idx.to(self.map.device))
        return r

    # ------------------------------------------------------------------ labels
    def set_labels(self, names: list[str] | LabelSet, colors=None) -> LabelSet:
        """Switch the active label set: re-scores every Gaussian from its stored language feature
        and regroups objects; the encoder does not run."""
        with self.lock:
            old = self.labels.names
            labels = self.semantic.set_labels(names, colors)
            remap = {i: (labels.names.index(n) if n in labels.names else -1) for i, n in enumerate(old)}
            for e in self.instances.codebook.entries.values():
                e.label_id = remap.get(e.label_id, -1)
            if len(self.map) and ATTR_INSTANCE in self.map.attribute_names():
                self._rescore(None)
                self._regroup(None)
            return labels

    # ------------------------------------------------------------------ views
    def _render(self, camera: Camera, feats: torch.Tensor | None, top: bool):
        g = self.map.arrays()
        g = GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids)
        with torch.no_grad():
            return render(g, camera, self.config.render, features=feats, return_top_index=top)

    def _render_channels(self, camera: Camera, feats: torch.Tensor):
        """First render (with top index) + extra passes of at most max_channels_per_pass channels."""
        step = self.config.semantic.max_channels_per_pass
        out = self._render(camera, feats[:, :step].contiguous(), True)
        parts = [out.features]
        for i in range(step, feats.shape[1], step):
            parts.append(self._render(camera, feats[:, i:i + step].contiguous(), False).features)
        return out, torch.cat(parts, dim=-1)

    def render_view(self, camera: Camera, image: np.ndarray | torch.Tensor | None = None) -> ViewResult:
        """Render and decode one view: labels, confidence, instance ids, rgb, depth, colours.

        ``image``: optional live camera image of this view (``[H, W, 3]`` uint8 or float in
        [0, 1], same pixel grid as ``camera``), used when ``per_view.fusion`` is 'camera'; without
        one that mode fuses with the rendered RGB (``ViewResult.fused`` says which was used).
        """
        with self.lock:
            if not isinstance(camera, Camera):
                raise InvalidInputError(f"render_view needs a Camera, got {type(camera).__name__}")
            h, w = camera.height, camera.width
            if len(self.map) == 0:
                z = np.zeros((h, w), np.float32)
                return ViewResult(np.full((h, w), UNLABELED, np.uint16), z, np.zeros((h, w), np.int32),
                                  np.zeros((h, w, 3), np.uint8), z.copy(), np.zeros((h, w, 3), np.uint8),
                                  np.zeros((h, w, 3), np.uint8), z.copy(), self.map.version)
            probs = self._attr(ATTR_PROBS)
            if probs is None or probs.shape[1] != len(self.labels):
                raise InvalidInputError("the map has not been encoded yet: call encode() before render_view()")
            pv = self.config.per_view
            pv.validate()
            fuse = pv.fusion != "off"
            k = probs.shape[1]
            chans = probs.float()
            if fuse:
                if self.fusion is None:
                    raise InvalidInputError(f"per_view.fusion is {pv.fusion!r} but no fusion decoder is loaded "
                                            "(the checkpoint has no fusion/ folder)")
                want = self.fusion.config.prior_names
                if want and tuple(want) != tuple(self.labels.names):
                    raise InvalidInputError(f"the fusion decoder reads the 3D class probabilities of the label set it "
                                            f"was trained on ({len(want)} classes: {list(want)[:6]}...), but the "
                                            f"active label set differs ({len(self.labels)} classes: "
                                            f"{list(self.labels.names)[:6]}...): restore that label set or set "
                                            "per_view.fusion to 'off'")
                lang = self._attr(feature_attr("language"))
                with torch.no_grad():
                    chans = torch.cat([chans, self.fusion.project_gaussians(lang.float())], 1)
            out, score_img = self._render_channels(camera, chans)
            sem = self.semantic.decode_view(score_img[..., :k].cpu(), out.alpha.cpu())
            labels = sem.labels.numpy().astype(np.uint16)
            confidence = sem.confidence
            used = "off"
            if fuse:
                used = "camera" if (pv.fusion == "camera" and image is not None) else "rendered"
                fused, confidence = self._fuse_view(out, score_img[..., k:], image if used == "camera" else None,
                                                    score_img[..., :k])
                labels3d = torch.from_numpy(labels.astype(np.int64))
                labels = fused.numpy().astype(np.uint16)
            inst_attr = self._attr(ATTR_INSTANCE)
            top = out.top_index.cpu().long()
            ok = (top >= 0) & (out.alpha.cpu() >= self.config.semantic.min_alpha)
            if inst_attr is None:
                inst = torch.zeros_like(top)
            else:
                inst = torch.where(ok, inst_attr.cpu()[top.clamp_min(0)], torch.zeros_like(top))
                if pv.instance_image == "weighted":
                    inst = self._weighted_instances(camera, inst_attr, labels, inst, ok)
            if fuse and pv.snap_radius > 0:
                from chorus_ros.core.decode.fusion import snap_instances
                inst = snap_instances(inst, labels3d, fused, int(pv.snap_radius), UNLABELED)
            rgb = (out.rgb.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            color = self.labels.colorize(labels)
            a = float(self.config.overlay_alpha)
            lab = (labels != UNLABELED)[..., None]
            blend = (rgb.astype(np.float32) * (1 - a) + color.astype(np.float32) * a).round().astype(np.uint8)
            overlay = np.where(lab, blend, rgb)
            return ViewResult(labels, confidence.numpy().astype(np.float32), inst.numpy().astype(np.int32),
                              rgb, out.depth.detach().cpu().numpy().astype(np.float32), color, overlay,
                              out.alpha.detach().cpu().numpy().astype(np.float32), self.map.version, used)

    def _weighted_instances(self, camera: Camera, inst_attr: torch.Tensor, labels: np.ndarray, top_inst: torch.Tensor,
                            ok: torch.Tensor) -> torch.Tensor:
        """``per_view.instance_image`` 'weighted': one render pass of the objects' codes, then per
        pixel the object of the pixel's class with the most blending weight
        (:mod:`chorus_ros.core.decode.instance_image`)."""
        from chorus_ros.core.decode.instance_image import (class_object_pairs, gaussian_instance_codes,
                                                           weighted_instance_image)
        inst_attr = inst_attr.cpu().long()
        gl = self._attr(ATTR_LABEL)          # set with the class scores render_view requires
        codes = gaussian_instance_codes(inst_attr).to(self.map.device)
        code_img = self._render(camera, codes, False).features.cpu()
        pc, pid = class_object_pairs(gl.cpu(), inst_attr)
        lab = torch.from_numpy(labels.astype(np.int64))
        out = weighted_instance_image(code_img, lab, pc, pid, top_inst)
        return torch.where(ok, out, torch.zeros_like(out))

    def _fuse_view(self, out, feat_img: torch.Tensor, image, score_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused ``(labels [H, W] int64, confidence [H, W] f32)`` of one rendered view (``out``) with
        its splatted projected language features ``feat_img [H, W, c]``; ``image`` (camera, or None
        for the rendered RGB) as ``[H, W, 3]`` uint8 / float; ``score_img [H, W, K]`` the splatted
        class probabilities (the 3D labels a ``prior`` decoder corrects)."""
        from chorus_ros.core.decode.fusion import decoder_class_logits, view_class_probabilities
        h, w = out.alpha.shape
        if image is None:
            rgb = out.rgb.detach().float().clamp(0, 1)
        else:
            rgb = torch.as_tensor(np.asarray(image))
            if tuple(rgb.shape) != (h, w, 3):
                raise InvalidInputError(f"camera image must be [{h}, {w}, 3] (the view's size), got {tuple(rgb.shape)}")
            rgb = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb.float().clamp(0, 1)
        dev = next(self.fusion.parameters()).device
        alpha = out.alpha.detach().float()
        with torch.no_grad():
            prior = (view_class_probabilities(score_img, alpha)[None].to(dev)
                     if self.fusion.config.prior else None)
            logits = decoder_class_logits(self.fusion, rgb.permute(2, 0, 1)[None].to(dev),
                                          feat_img.permute(2, 0, 1)[None].float().to(dev), alpha[None, None].to(dev),
                                          out.depth.detach().float()[None, None].to(dev),
                                          self.semantic.text_embeddings.to(dev), self.config.per_view.temperature,
                                          prior)
            p = torch.softmax(logits, dim=1)[0].cpu()
        conf, lab = p.max(0)
        bad = (alpha.cpu() < self.config.semantic.min_alpha) | (conf < self.config.semantic.min_confidence)
        lab = torch.where(bad, torch.full_like(lab, UNLABELED), lab)
        conf = torch.where(bad, torch.zeros_like(conf), conf)
        return lab, conf

    def relevance_view(self, embedding, camera: Camera) -> np.ndarray:
        """``[H, W]`` float32 rendered cosine between ``embedding`` ([d], e.g. a text embedding) and
        the language features: per-Gaussian cosines composited and divided by alpha; NaN where
        alpha < ``semantic.min_alpha`` (no surface)."""
        with self.lock:
            lang = self._attr(feature_attr("language"))
            if lang is None:
                raise InvalidInputError("the map has no language features: call encode() first")
            e = torch.as_tensor(np.asarray(embedding, dtype=np.float32)).reshape(-1).to(lang.device)
            if e.numel() != lang.shape[1]:
                raise InvalidInputError(f"embedding has {e.numel()} values, language features have {lang.shape[1]}")
            bad = int((~torch.isfinite(e)).sum())
            if bad:
                raise InvalidInputError(f"embedding has {bad} non-finite values (NaN/Inf): no relevance can be computed")
            if not float(e.norm()) > 1e-12:
                raise InvalidInputError("embedding is zero (norm 0): its direction, hence the relevance, is undefined")
            rel = torch.nn.functional.normalize(lang.float(), dim=-1) @ torch.nn.functional.normalize(e, dim=0)
            out = self._render(camera, rel[:, None], False)
            alpha = out.alpha.detach().cpu()
            img = out.features[..., 0].detach().cpu() / alpha.clamp_min(1e-6)
            img = torch.where(alpha >= self.config.semantic.min_alpha, img, torch.full_like(img, float("nan")))
            return img.numpy().astype(np.float32)

    # ------------------------------------------------------------------ objects
    def objects(self) -> list[ObjectRecord]:
        """Records of the active objects, sorted by instance id."""
        with self.lock:
            return self.instances.records(self.labels.names)

    def query(self, text: str, top_k: int = 5, min_score: float = -1.0) -> list[QueryHit]:
        """Whole objects ranked by the support-aware score (cosine between ``text``'s embedding and
        their mean language embedding, weighted by their Gaussian count relative to the median
        object, :class:`~chorus_ros.core.objects.SupportConfig`); at most ``top_k`` hits with
        score >= ``min_score``. Each hit's record carries its box and ``gaussian_count``."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"query text must be a non-empty string, got {text!r}")
        if top_k < 1:
            raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
        with self.lock:
            q = self.text_encoder.encode([text])[0].float()
            recs = [r for r in self.objects() if r.embedding.size == q.numel()]
            if not recs:
                return []
            emb = torch.from_numpy(np.stack([r.embedding for r in recs])).float()
            cos = (emb @ q).numpy()
            scores = support_scores(cos, [r.gaussian_count for r in recs], self.config.support)
            order = np.argsort(-scores, kind="stable").tolist()
            return [QueryHit(recs[i], float(scores[i]), float(cos[i])) for i in order
                    if float(scores[i]) >= min_score][:top_k]

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """``[T, d]`` unit text embeddings (for ``relevance_view`` or an ``~/embed`` service)."""
        return self.text_encoder.encode(texts)

    # ------------------------------------------------------------------ persistence
    def saved_nbytes(self) -> int:
        """About how many bytes :meth:`save` writes now (map tensors + codebook + headers)."""
        with self.lock:
            t, _ = self.instances.codebook.state_dict()
            faint = self.faint.saved_nbytes() if len(self.faint) else 0
            return self.map.saved_nbytes() + faint + sum(v.numel() * v.element_size() for v in t.values()) + (1 << 16)

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Write the state as one save folder (:mod:`chorus_ros.core.persist`: written aside,
        fsync'ed, manifest last, renamed into place): ``map.safetensors`` (Gaussians + features +
        scores + instance ids), ``codebook.safetensors``, ``pipeline.json`` (label set, codebook
        counter) and, when it holds any, ``faint.safetensors`` (the faint store: Gaussians below
        ``config.min_opacity``). ``meta`` (JSON-able) is stored in the manifest. An existing save at ``path`` is
        replaced as a whole; anything else there is refused (SaveRefusedError)."""
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            self.map.save(str(tmp / "map.safetensors"))
            if len(self.faint):
                self.faint.save(str(tmp / FAINT_FILE))
            t, cb_meta = self.instances.codebook.state_dict()
            save_file(t or {"empty": torch.zeros(0)}, str(tmp / "codebook.safetensors"))
            (tmp / "pipeline.json").write_text(json.dumps(
                {"format": SAVE_KIND, "version": 1, "labels": self.labels.to_dict(),
                 "codebook": cb_meta, "instance_voxel_size": self.instances.voxel_size,
                 "instance_spacing": self.instances.spacing}, indent=1), encoding="utf-8")

        with self.lock:
            write_save(Path(path), write, kind=SAVE_KIND, meta=meta)

    def read_saved(self, path: str | Path) -> "SavedState":
        """Read and check a whole save without touching this pipeline: manifest (sizes, hashes,
        no missing or extra files), ``pipeline.json`` schema, map metadata and tensors, codebook
        tensors, feature sizes against this pipeline's heads. Any problem raises
        CheckpointError naming the file; :meth:`install` then swaps it in."""
        p = Path(path)
        manifest = verify_save(p, kind=SAVE_KIND, required=SAVE_FILES)
        try:
            meta = _check_pipeline_json(p / "pipeline.json")
            gmap = GaussianMap.load(str(p / "map.safetensors"), MapConfig(**{**self.map.config.__dict__}))
            faint = (GaussianMap.load(str(p / FAINT_FILE), replace(self.map.config))
                     if FAINT_FILE in manifest.files else None)
            cb = _load_codebook(p / "codebook.safetensors", meta["codebook"])
            saved = LabelSet.from_dict(meta["labels"], source=str(p / "pipeline.json"))
            lang = feature_attr("language")
            dim = getattr(self.text_encoder, "dim", None)
            if len(gmap) and lang in gmap.attribute_names() and dim is not None \
                    and gmap.attribute(lang).reshape(len(gmap), -1).shape[1] != dim:
                raise CheckpointError(f"{p / 'map.safetensors'}: language features of size "
                                      f"{gmap.attribute(lang).reshape(len(gmap), -1).shape[1]}, this pipeline's "
                                      f"text encoder has {dim}: saved by another model")
            emb = [e.embedding for e in cb.entries.values() if e.embedding is not None]
            if emb and dim is not None and emb[0].numel() != dim:
                raise CheckpointError(f"{p / 'codebook.safetensors'}: object embeddings of size {emb[0].numel()}, "
                                      f"the text encoder has {dim}")
        except (CheckpointError, InvalidInputError):
            raise
        except Exception as e:  # a crafted or damaged file must not raise anything unexpected
            raise CheckpointError(f"saved state {p} cannot be read: {type(e).__name__}: {e}") from e
        return SavedState(gmap, cb, saved, meta.get("instance_voxel_size"), manifest, meta.get("instance_spacing"),
                          faint)

    def install(self, state: "SavedState") -> None:
        """Swap a checked saved state in: map, codebook and label mapping change together;
        features are kept (no re-encoding) and scores are recomputed for the current label set.
        If re-scoring fails the previous state is restored and CheckpointError raised."""
        with self.lock:
            old = (self.map, self.faint, self._incremental, self.instances, self._touched, self._pending_full)
            try:
                incremental = self._incremental_factory(state.map)
                instances = InstanceDecoder(self.config.instances)
                instances.set_code_prototypes(self.instances.code_prototypes)
                instances.codebook.entries = state.codebook.entries
                instances.codebook.next_id = state.codebook.next_id
                if state.instance_voxel_size and self.config.instances.voxel_size <= 0:
                    instances.voxel_size = float(state.instance_voxel_size)
                if state.instance_spacing and self.config.instances.spacing == 0:
                    # the measured spacing sets the minimum support: keep it, so a reloaded map
                    # regroups like the map that was saved
                    instances.spacing = float(state.instance_spacing)
                remap = {i: (self.labels.names.index(n) if n in self.labels.names else -1)
                         for i, n in enumerate(state.labels.names)}
                for e in instances.codebook.entries.values():
                    e.label_id = remap.get(e.label_id, -1)
                state.map.take_dirty()
                self.map, self._incremental, self.instances = state.map, incremental, instances
                self.faint = state.faint if state.faint is not None else _store_like(state.map)
                self._touched = set()
                self._pending_full = False
                if len(self.map) and feature_attr("language") in self.map.attribute_names():
                    self._rescore(None)
                    if state.labels.names != self.labels.names:
                        self._regroup(None)
            except Exception as e:
                self.map, self.faint, self._incremental, self.instances, self._touched, self._pending_full = old
                if isinstance(e, (CheckpointError, InvalidInputError)):
                    raise
                raise CheckpointError(f"saved state cannot be used: {type(e).__name__}: {e}") from e

    def load(self, path: str | Path) -> "SavedState":
        """:meth:`read_saved` then :meth:`install`: the pipeline is unchanged unless the whole
        save is valid. Returns the state read (``manifest.meta`` holds the writer's metadata)."""
        state = self.read_saved(path)
        self.install(state)
        return state
