"""Real image teachers: open_clip dense features, a timm generalist ViT and a SAM image encoder.

Nothing here downloads: weights come from a local checkpoint file (or, for open_clip, a
pretrained tag whose weights already sit in the local cache). ``random_init=True`` builds the
architecture with seeded random weights - for tests only. Models are imported lazily.

Every teacher resizes the image to its square input size, normalises it with the model's mean
and std and returns patch-resolution features ``[h, w, dim]`` (``h = w = size / patch``).
The lifting step bilinearly resamples the map back to the view's own aspect and size.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.state_dict import load_state_dict_strict
from chorus_ros.core.teachers.base import FrameContext, Teacher, TeacherSpec, option
from chorus_ros.core.teachers.registry import register_teacher

__all__ = ["OpenClipDenseTeacher", "VitGeneralistTeacher", "SamImageEncoderTeacher",
           "load_state_dict_file"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file (``.safetensors`` or a torch file loaded with ``weights_only=True``).

    Unwraps the usual ``{'state_dict': ...}`` / ``{'model': ...}`` containers.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"teacher checkpoint file not found: {p} (nothing is downloaded at run time)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd: Any = load_file(str(p))
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling refused or corrupt file
            raise CheckpointError(f"could not read teacher checkpoint {p}: {e}") from e
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"teacher checkpoint {p} does not hold a state dict of tensors")
    return sd


def _preprocess(image: torch.Tensor, size: tuple[int, int], mean, std, device) -> torch.Tensor:
    """``[H, W, 3]`` in [0, 1] -> ``[1, 3, size]`` normalised (bilinear, antialiased resize)."""
    x = image.to(device).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def _seeded(seed: int):
    """Context manager: run model construction under a fixed torch seed, restoring the RNG."""
    class _Ctx:
        def __enter__(self):
            self.state = torch.random.get_rng_state()
            torch.manual_seed(int(seed))

        def __exit__(self, *exc):
            torch.random.set_rng_state(self.state)
            return False
    return _Ctx()


def _size2(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise InvalidInputError(f"image_size must be an int or (h, w), got {v}")
    return v


# ------------------------------------------------------------------ open_clip
def _open_clip_model_name(opts: dict) -> str:
    """Built-in open_clip name, or a tiny config registered under a content-hash name."""
    import open_clip
    if opts["model_cfg"] is None:
        return opts["model"]
    cfg = opts["model_cfg"]
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise InvalidInputError("open_clip_dense model_cfg must be an open_clip model config with "
                                "'embed_dim', 'vision_cfg' and 'text_cfg'")
    blob = json.dumps(cfg, sort_keys=True)
    name = "chorus-custom-" + hashlib.sha256(blob.encode()).hexdigest()[:12]
    if name not in open_clip.list_models():
        d = Path(tempfile.gettempdir()) / "chorus_open_clip_cfgs"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{name}.json"
        f.write_text(blob)
        open_clip.add_model_config(f)  # public open_clip API: register a config file
    return name


def build_open_clip_model(opts: dict):
    """Create the open_clip model named by ``opts`` offline; returns the full CLIP module.

    ``opts['pretrained']`` is a local checkpoint file or a tag already in the local cache;
    ``opts['random_init']`` allows no weights (tests).
    """
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover
        raise CheckpointError(f"teacher 'open_clip_dense' needs open_clip_torch: {e}") from e
    from chorus_ros.core.text import _offline, _pretrained_available
    name = _open_clip_model_name(opts)
    pretrained = opts["pretrained"]
    if name.startswith("hf-hub:"):
        raise CheckpointError(f"open_clip_dense model {name!r}: 'hf-hub:' would download; use "
                              "'local-dir:/path' or pretrained=<local checkpoint file>")
    if not name.startswith("local-dir:") and name.replace("/", "-") not in open_clip.list_models():
        from chorus_ros.core.errors import RegistryError
        raise RegistryError(f"unknown open_clip model {name!r}; known: {open_clip.list_models()}")
    if pretrained is None and not name.startswith("local-dir:") and not opts["random_init"]:
        raise CheckpointError(f"open_clip_dense model {name!r} has no weights: set options.pretrained to a "
                              "local checkpoint file (or a cached tag); random_init=true is for tests only")
    if pretrained and not os.path.isfile(pretrained):
        ok, where = _pretrained_available(name, pretrained)
        if not ok:
            raise CheckpointError(
                f"open_clip weights for model {name!r} pretrained={pretrained!r} are not available "
                f"locally ({where}); nothing is downloaded at run time. Give a local checkpoint file "
                f"(options.pretrained=/path/to/open_clip_model.safetensors) or pre-populate the cache.")
        pretrained = where
    with _offline(), _seeded(opts["seed"]):
        try:
            model = open_clip.create_model(name, pretrained=pretrained, device="cpu",
                                           pretrained_image=False, pretrained_text=False)
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"could not build open_clip model {name!r} (pretrained={pretrained!r}): {e}") from e
    return model


@register_teacher("open_clip_dense")
class OpenClipDenseTeacher(Teacher):
    """Language-aligned dense features from an open_clip image tower.

    The patch tokens of the final transformer block go through the tower's output norm and
    visual projection, so each patch lives in the joint image-text space and compares with
    text embeddings by cosine (MaskCLIP-style dense CLIP). Options: ``model`` (open_clip name or
    'local-dir:/path'), ``pretrained`` (local file or cached tag), ``model_cfg`` (a custom
    architecture dict, e.g. tiny test models), ``image_size``, ``project`` (False keeps the raw
    tower width), ``mean``/``std``, ``device``, ``random_init`` and ``seed`` (tests).
    """

    name = "open_clip_dense"
    DEFAULTS = {"model": "ViT-B-16", "pretrained": None, "model_cfg": None, "image_size": None,
                "project": True, "mean": None, "std": None, "device": "cpu", "random_init": False,
                "seed": 0}

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__(spec)
        o = option(spec, self.DEFAULTS)
        model = build_open_clip_model(o)
        self.visual = model.visual.eval().to(o["device"])
        del model  # the text tower is not needed
        self.device = torch.device(o["device"])
        mean = getattr(self.visual, "image_mean", None) or o["mean"] or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(self.visual, "image_std", None) or o["std"] or (0.26862954, 0.26130258, 0.27577711)
        self.mean, self.std = tuple(o["mean"] or mean), tuple(o["std"] or std)
        self.project = bool(o["project"])
        from open_clip.transformer import VisionTransformer
        self._native = isinstance(self.visual, VisionTransformer)
        if self._native:
            if self.visual.attn_pool is not None:
                raise InvalidInputError("open_clip_dense: towers with attentional pooling are not supported")
            self.size = _size2(o["image_size"] or self.visual.image_size)
            if self.size != tuple(self.visual.image_size):
                raise InvalidInputError(f"open_clip_dense: image_size {self.size} differs from the tower's "
                                        f"{tuple(self.visual.image_size)} (fixed positional embedding)")
            self.patch = tuple(self.visual.patch_size)
            width = self.visual.proj.shape[0] if self.visual.proj is not None else self.visual.transformer.width
            out_dim = self.visual.proj.shape[1] if self.visual.proj is not None else width
        elif hasattr(self.visual, "trunk"):  # open_clip TimmModel tower
            trunk = self.visual.trunk
            self.size = _size2(o["image_size"] or trunk.patch_embed.img_size)
            self.patch = tuple(trunk.patch_embed.patch_size)
            width = trunk.num_features
            with torch.no_grad():
                out_dim = self.visual.head(torch.zeros(1, width, device=self.device)).shape[-1]
        else:
            raise InvalidInputError(f"open_clip_dense: unsupported image tower {type(self.visual).__name__}")
        self.dim = int(out_dim if self.project else width)

    @property
    def grid(self) -> tuple[int, int]:
        """Output feature map size ``(h, w)``."""
        return (self.size[0] // self.patch[0], self.size[1] // self.patch[1])

    def features(self, image: torch.Tensor, context: FrameContext | None) -> torch.Tensor:
        x = _preprocess(image, self.size, self.mean, self.std, self.device)
        h, w = self.grid
        v = self.visual
        if self._native:
            t = v.transformer(v._embeds(x))[:, 1:]          # drop the class token
            if self.project:
                t = v.ln_post(t)
                if v.proj is not None:
                    t = t @ v.proj
        else:
            t = v.trunk.forward_features(x)[:, v.trunk.num_prefix_tokens:]
            if self.project:
                t = v.head(t)
        return t.reshape(h, w, -1)


# ------------------------------------------------------------------------ timm
def build_timm_model(opts: dict, who: str):
    """Create a timm model (no download) and load ``opts['checkpoint']`` strictly.

    The model module's own ``checkpoint_filter_fn`` (timm's converter from the original
    release format, e.g. SAM's ``image_encoder.*`` keys) is applied before loading, and
    positional embeddings are resampled to ``image_size`` where timm supports it.
    """
    try:
        import timm
    except ImportError as e:  # pragma: no cover
        raise CheckpointError(f"teacher {who!r} needs timm: {e}") from e
    if opts["checkpoint"] is None and not opts["random_init"]:
        raise CheckpointError(f"teacher {who!r} (model {opts['model']!r}) needs options.checkpoint = a local "
                              "weights file; nothing is downloaded at run time (random_init=true is for tests)")
    if opts["checkpoint"] is not None and not Path(opts["checkpoint"]).is_file():
        raise CheckpointError(f"teacher {who!r}: checkpoint file not found: {opts['checkpoint']}")
    if opts["model"] not in timm.list_models():
        from chorus_ros.core.errors import RegistryError
        raise RegistryError(f"teacher {who!r}: unknown timm model {opts['model']!r}")
    kwargs = dict(opts["model_kwargs"] or {})
    if opts["image_size"] is not None:
        kwargs.setdefault("img_size", opts["image_size"])
    with _seeded(opts["seed"]):
        try:
            model = timm.create_model(opts["model"], pretrained=False, num_classes=0, **kwargs)
        except TypeError as e:
            raise InvalidInputError(f"teacher {who!r}: bad model_kwargs for {opts['model']!r}: {e}") from e
    if opts["checkpoint"] is not None:
        sd = load_state_dict_file(opts["checkpoint"])
        filt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filt is not None:
            sd = filt(sd, model)
        own = model.state_dict()
        # classifier weights are not needed for dense features
        sd = {k: v for k, v in sd.items() if not (k.startswith("head.") and k not in own)}
        load_state_dict_strict(model, sd, f"teacher {who!r}: checkpoint {opts['checkpoint']} "
                                          f"does not match {opts['model']!r}")
    return model.eval().to(opts["device"])


class _TimmTeacher(Teacher):
    DEFAULTS = {"model": "", "checkpoint": None, "model_kwargs": None, "image_size": None,
                "mean": None, "std": None, "device": "cpu", "random_init": False, "seed": 0}

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__(spec)
        o = option(spec, self.DEFAULTS)
        self.model = build_timm_model(o, self.name)
        self.device = torch.device(o["device"])
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        self.mean = tuple(o["mean"] or cfg.get("mean", _IMAGENET_MEAN))
        self.std = tuple(o["std"] or cfg.get("std", _IMAGENET_STD))
        pe = self.model.patch_embed
        self.size = _size2(o["image_size"] or pe.img_size)
        self.patch = _size2(pe.patch_size)


@register_teacher("vit_generalist")
class VitGeneralistTeacher(_TimmTeacher):
    """Generalist ViT patch features (a DINO-style timm ViT, e.g. ``vit_small_patch14_dinov2``).

    Output: the final block's normed patch tokens (prefix/register tokens dropped),
    ``[size/patch, size/patch, embed_dim]``. Options: ``model`` (timm name), ``checkpoint``
    (local file), ``model_kwargs`` (architecture overrides), ``image_size``, ``mean``/``std``,
    ``device``, ``random_init``/``seed`` (tests).
    """

    name = "vit_generalist"
    DEFAULTS = dict(_TimmTeacher.DEFAULTS, model="vit_small_patch14_dinov2")

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__(spec)
        self.dim = int(self.model.num_features)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.size[0] // self.patch[0], self.size[1] // self.patch[1])

    def features(self, image: torch.Tensor, context: FrameContext | None) -> torch.Tensor:
        x = _preprocess(image, self.size, self.mean, self.std, self.device)
        t = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        h, w = self.grid
        return t.reshape(h, w, -1)


@register_teacher("sam_image_encoder")
class SamImageEncoderTeacher(_TimmTeacher):
    """Object-aware features from a SAM-style image encoder (timm ``samvit_*``).

    Output: the encoder's neck features ``[size/16, size/16, neck_chans]`` (256 for SAM).
    Original SAM checkpoints (``image_encoder.*`` keys) load directly. Options as
    :class:`VitGeneralistTeacher`; default model ``samvit_base_patch16`` (1024 px input).
    """

    name = "sam_image_encoder"
    DEFAULTS = dict(_TimmTeacher.DEFAULTS, model="samvit_base_patch16")

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__(spec)
        with torch.no_grad():
            y = self.model.forward_features(torch.zeros(1, 3, *self.size, device=self.device))
        self.dim = int(y.shape[1])
        self._grid = (int(y.shape[2]), int(y.shape[3]))

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    def features(self, image: torch.Tensor, context: FrameContext | None) -> torch.Tensor:
        x = _preprocess(image, self.size, self.mean, self.std, self.device)
        y = self.model.forward_features(x)              # [1, C, h, w] neck output
        return y[0].permute(1, 2, 0)
