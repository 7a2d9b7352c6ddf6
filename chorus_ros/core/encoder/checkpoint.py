"""Encoder checkpoints: ``<dir>/model.safetensors`` + ``<dir>/config.yaml``.

``config.yaml`` is plain YAML (``yaml.safe_dump``, loaded with ``yaml.safe_load``)::

    format: chorus_encoder/1
    encoder: {variant: gaussian, voxel_size: 0.05, channels: [32, 64, 96], ..., heads: [...]}
    meta: {...}   # caller's: label set, teacher specs, text encoder spec, training info

Loading is strict: the weights must have exactly the keys and shapes of a model built from the
stored config, otherwise :class:`CheckpointError` lists the missing keys, the unexpected keys
and the shape mismatches. A config with unknown fields is refused, naming them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from chorus_ros.core.encoder.config import EncoderConfig
from chorus_ros.core.encoder.model import ChorusEncoder
from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.state_dict import load_state_dict_strict

__all__ = ["save_checkpoint", "load_checkpoint", "load_checkpoint_config", "LoadedCheckpoint",
           "average_checkpoints", "WEIGHTS_FILE", "CONFIG_FILE", "FORMAT"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
FORMAT = "chorus_encoder/1"
_TOP_KEYS = ("format", "encoder", "meta")


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns."""

    model: ChorusEncoder
    """The encoder with the stored weights, in eval mode, on the requested device."""
    config: EncoderConfig
    """Its architecture."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The caller's metadata stored with it (label set, teacher specs, text encoder, training)."""


def save_checkpoint(path_dir: str | os.PathLike, model: ChorusEncoder, meta: dict[str, Any] | None = None) -> None:
    """Write ``model``'s weights and config plus ``meta`` into directory ``path_dir`` (created).

    ``meta`` must be YAML-safe (dicts, lists, str, int, float, bool, None); anything else raises
    :class:`InvalidInputError` before a file is written.
    """
    from safetensors.torch import save_file

    if not isinstance(model, ChorusEncoder):
        raise InvalidInputError(f"save_checkpoint needs a ChorusEncoder, got {type(model).__name__}")
    doc = {"format": FORMAT, "encoder": model.config.to_dict(), "meta": dict(meta or {})}
    try:
        text = yaml.safe_dump(doc, sort_keys=False)
    except yaml.YAMLError as e:
        raise InvalidInputError(f"checkpoint meta is not plain YAML data (dicts/lists/str/numbers): {e}") from e
    os.makedirs(path_dir, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    # write to temporary names first so a crash never leaves a half-written checkpoint
    wtmp = os.path.join(path_dir, WEIGHTS_FILE + ".tmp")
    ctmp = os.path.join(path_dir, CONFIG_FILE + ".tmp")
    save_file(state, wtmp, metadata={"format": FORMAT})
    with open(ctmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(wtmp, os.path.join(path_dir, WEIGHTS_FILE))
    os.replace(ctmp, os.path.join(path_dir, CONFIG_FILE))


def load_checkpoint_config(path_dir: str | os.PathLike) -> tuple[EncoderConfig, dict[str, Any]]:
    """Read only ``config.yaml``: the encoder config and the meta dict."""
    cpath = os.path.join(path_dir, CONFIG_FILE)
    if not os.path.isfile(cpath):
        raise CheckpointError(f"no {CONFIG_FILE} in checkpoint directory {os.fspath(path_dir)!r}")
    try:
        with open(cpath, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise CheckpointError(f"{cpath} is not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise CheckpointError(f"{cpath} must hold a mapping with keys {list(_TOP_KEYS)}")
    unknown = sorted(set(doc) - set(_TOP_KEYS))
    if unknown:
        raise CheckpointError(f"{cpath} has unknown top-level keys {unknown}; known: {list(_TOP_KEYS)}")
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{cpath} has format {doc.get('format')!r}, expected {FORMAT!r}")
    if "encoder" not in doc:
        raise CheckpointError(f"{cpath} has no 'encoder' section")
    try:
        cfg = EncoderConfig.from_dict(doc["encoder"])
    except (InvalidInputError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cpath}: invalid encoder config: {e}") from e
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cpath}: 'meta' must be a mapping, got {type(meta).__name__}")
    return cfg, meta


def load_checkpoint(path_dir: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Build the encoder from ``config.yaml`` and load ``model.safetensors`` strictly.

    Raises :class:`CheckpointError` when a file is missing or unreadable, the config is invalid
    or has unknown fields, or the weights' keys/shapes differ from the model's (the message
    lists missing keys, unexpected keys and shape mismatches).
    """
    from safetensors.torch import load_file

    cfg, meta = load_checkpoint_config(path_dir)
    wpath = os.path.join(path_dir, WEIGHTS_FILE)
    if not os.path.isfile(wpath):
        raise CheckpointError(f"no {WEIGHTS_FILE} in checkpoint directory {os.fspath(path_dir)!r}")
    try:
        state = load_file(wpath, device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {wpath}: {e}") from e
    model = ChorusEncoder(cfg)
    load_state_dict_strict(model, state, f"checkpoint {wpath} does not match its config")
    return LoadedCheckpoint(model.to(device).eval(), cfg, meta)


def _side_files(path_dir: str) -> dict[str, bytes]:
    """Every file of a checkpoint folder other than the weights and the config (text encoder,
    label set, codebook folder...), as relative path -> content."""
    out: dict[str, bytes] = {}
    for root, _dirs, files in os.walk(path_dir):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path_dir)
            if rel in (WEIGHTS_FILE, CONFIG_FILE) or rel.endswith(".tmp"):
                continue
            with open(full, "rb") as f:
                out[rel] = f.read()
    return out


def average_checkpoints(sources: list[str | os.PathLike], out_dir: str | os.PathLike,
                        weights: list[float] | None = None) -> LoadedCheckpoint:
    """Average the weights of checkpoints of one architecture into ``out_dir`` (a "model soup").

    The sources must be fine-tunes of one starting point (e.g. one recipe run with two seeds from
    the same parent checkpoint), so that their weights lie in one basin. Every floating-point
    tensor becomes ``sum_i w_i * t_i`` (``weights`` normalised to sum to 1; uniform when ``None``),
    every other tensor must be equal in all sources. The sources must agree on the encoder
    config, on the meta apart from ``training`` (label set, teachers, text encoder) and on every
    side file (text encoder weights, label set, codebook), which are copied. The meta's
    ``training`` becomes ``{"average": {"sources", "weights"}, "ingredients": [each source's
    training record]}``, so the recipe of every ingredient stays recorded.

    Returns the averaged checkpoint as :func:`load_checkpoint` reads it back from ``out_dir``.

    Raises:
        InvalidInputError: fewer than two sources, bad weights, or ``out_dir`` among the sources.
        CheckpointError: a source that cannot be loaded, or sources that disagree (named).
    """
    srcs = [os.fspath(s) for s in sources]
    if len(srcs) < 2:
        raise InvalidInputError(f"averaging needs at least two checkpoints, got {len(srcs)}")
    out = os.fspath(out_dir)
    if any(os.path.abspath(s) == os.path.abspath(out) for s in srcs):
        raise InvalidInputError(f"the output folder {out!r} is one of the sources; write the average elsewhere")
    w = [1.0] * len(srcs) if weights is None else [float(x) for x in weights]
    if len(w) != len(srcs) or any(not x > 0 for x in w):
        raise InvalidInputError(f"averaging needs one positive weight per checkpoint ({len(srcs)}), got {weights}")
    total = sum(w)
    w = [x / total for x in w]
    loaded = [load_checkpoint(s) for s in srcs]
    first = loaded[0]
    side = _side_files(srcs[0])
    for s, ck in zip(srcs[1:], loaded[1:]):
        if ck.config.to_dict() != first.config.to_dict():
            raise CheckpointError(f"checkpoint {s!r} has another encoder config than {srcs[0]!r}")
        a = {k: v for k, v in first.meta.items() if k != "training"}
        b = {k: v for k, v in ck.meta.items() if k != "training"}
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise CheckpointError(f"checkpoint {s!r} differs from {srcs[0]!r} in meta {keys}")
        other = _side_files(s)
        if set(other) != set(side):
            raise CheckpointError(f"checkpoint {s!r} has the files {sorted(other)}, {srcs[0]!r} has {sorted(side)}")
        for rel, data in side.items():
            if other[rel] != data:
                raise CheckpointError(f"checkpoint {s!r} differs from {srcs[0]!r} in {rel}")
    states = [ck.model.state_dict() for ck in loaded]
    avg = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            avg[k] = sum(wi * st[k].double() for wi, st in zip(w, states)).to(v.dtype)
        else:
            for s, st in zip(srcs[1:], states[1:]):
                if not torch.equal(st[k], v):
                    raise CheckpointError(f"checkpoint {s!r} differs from {srcs[0]!r} in the non-float tensor {k}")
            avg[k] = v
    model = ChorusEncoder(first.config)
    load_state_dict_strict(model, avg, "averaged weights")
    meta = dict(first.meta)
    meta["training"] = {"average": {"sources": srcs, "weights": w},
                        "ingredients": [ck.meta.get("training") for ck in loaded]}
    save_checkpoint(out, model, meta)
    for rel, data in side.items():
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst) or out, exist_ok=True)
        with open(dst + ".tmp", "wb") as f:
            f.write(data)
        os.replace(dst + ".tmp", dst)
    return load_checkpoint(out)
