"""Switching a running pipeline to another checkpoint (e.g. one written by ``chorus-adapt``).

Two steps, so that a caller (the ROS node) can refuse a bad checkpoint before anything changes:

1. :func:`load_switch` loads and checks everything the new checkpoint needs (strict weights,
   text encoder, label set, language head vs text dimension) without touching the pipeline;
   any problem raises :class:`~chorus_ros.core.errors.CheckpointError` naming it.
2. :func:`apply_switch` swaps encoder, text encoder and label set into the pipeline under its
   lock and re-encodes the whole map with the new encoder. The map (Gaussians, ids, instance
   ids) is kept; the scores are recomputed for the new label set.

Example::

    staged = load_switch("checkpoints/site0470", pipe.config)
    summary = apply_switch(pipe, staged)        # full re-encode with the new weights
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chorus_ros.core.errors import CheckpointError, ChorusError, InvalidInputError

__all__ = ["StagedCheckpoint", "load_switch", "apply_switch"]


@dataclass
class StagedCheckpoint:
    """A checkpoint loaded and checked, not yet in use."""

    path: str
    model: object
    """The encoder (eval mode, on the pipeline's device)."""
    text_encoder: object
    labels: object
    """The checkpoint's :class:`~chorus_ros.core.labels.LabelSet`."""
    meta: dict


def load_switch(path: str | Path, config) -> StagedCheckpoint:
    """Load ``path`` for the pipeline configuration ``config`` (device, ``labels_file``).

    Raises:
        CheckpointError: not a checkpoint folder, weights that do not fit the config, missing
            label set or text encoder, or a language head whose dimension differs from the text
            encoder's. Nothing is changed.
    """
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.labels import LabelSet
    from chorus_ros.core.pipeline import labels_from_meta, text_spec_from_meta
    from chorus_ros.core.text import build_text_encoder

    p = Path(str(path)).expanduser()
    if not str(path).strip():
        raise CheckpointError("checkpoint path is empty")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {p}")
    try:
        ck = load_checkpoint(p, device=config.device)
        meta = dict(ck.meta or {})
        spec = text_spec_from_meta(meta, p)
        spec.device = config.device
        text = build_text_encoder(spec)
        labels = LabelSet.from_yaml(config.labels_file) if config.labels_file else labels_from_meta(meta)
    except CheckpointError:
        raise
    except (ChorusError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {p} cannot be used: {type(e).__name__}: {e}") from e
    dims = ck.model.config.head_dims()
    if "language" in dims and dims["language"] != text.dim:
        raise CheckpointError(f"checkpoint {p}: language head dim {dims['language']} != text encoder dim {text.dim}")
    return StagedCheckpoint(str(p), ck.model.eval(), text, labels, meta)


def apply_switch(pipe, staged: StagedCheckpoint):
    """Put ``staged`` into ``pipe`` and re-encode the map; returns the
    :class:`~chorus_ros.core.pipeline.EncodeSummary`. If the re-encode fails, the previous
    encoder, text encoder, label set and features are restored and the error is raised."""
    from chorus_ros.core.decode.semantic import SemanticDecoder
    if not isinstance(staged, StagedCheckpoint):
        raise InvalidInputError(f"apply_switch needs a StagedCheckpoint, got {type(staged).__name__}")
    with pipe.lock:
        old = (pipe.model, pipe.text_encoder, pipe.semantic, pipe._incremental,
               {n: pipe.map.attribute(n).clone() for n in pipe.map.attribute_names()})
        old_names = pipe.labels.names
        try:
            pipe.model = staged.model
            pipe.text_encoder = staged.text_encoder
            pipe.semantic = SemanticDecoder(staged.text_encoder, staged.labels, pipe.config.semantic)
            new_names = pipe.labels.names
            for e in pipe.instances.codebook.entries.values():
                name = old_names[e.label_id] if 0 <= e.label_id < len(old_names) else None
                e.label_id = new_names.index(name) if name in new_names else -1
            pipe._incremental = pipe._incremental_factory(pipe.map)
            pipe._pending_full = True
            return pipe.encode(full=True)
        except BaseException:
            pipe.model, pipe.text_encoder, pipe.semantic, pipe._incremental, attrs = old
            for n, t in attrs.items():
                pipe.map.set_attribute(n, t)
            raise
