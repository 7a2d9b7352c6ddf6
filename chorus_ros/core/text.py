"""Text encoder for open-vocabulary decoding: class names and queries -> unit embeddings.

One registry (:data:`TEXT_ENCODERS`, key ``spec.type``) with one backend, ``'open_clip'``:

* a real open_clip model (``model='ViT-B-32'`` + ``pretrained`` = a tag whose weights are
  *already* in the local cache, or a path to a local checkpoint file; or
  ``model='local-dir:/path'`` holding ``open_clip_config.json`` + weights). Nothing is ever
  downloaded: a tag that is not cached raises :class:`~chorus_ros.core.errors.CheckpointError`
  saying how to provide a local checkpoint.
* a *tiny* random-initialised open_clip text tower (``tiny=True``; width 64, 2 layers, 2 heads,
  context 32, embed 64, a 4096-entry vocabulary) for tests and the demo checkpoint. By default
  it subtracts the empty prompt's embedding (``subtract_null``) so that class names come out
  well separated; use ``prompt_template='{}'`` with it for the best spread. Its
  weights are saved next to the checkpoint (:meth:`TextEncoder.save_weights`) and loaded from
  ``spec.weights`` so results never depend on the RNG.

Example::

    enc = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}", seed=0))
    emb = enc.encode(["chair", "table"])   # [2, 64] float32, unit rows
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from chorus_ros.core.errors import CheckpointError, InvalidInputError, RegistryError
from chorus_ros.core.state_dict import load_state_dict_strict

__all__ = ["TextEncoderSpec", "TextEncoder", "build_text_encoder", "register_text_encoder",
           "TEXT_ENCODERS", "TINY_TEXT_CFG"]

TINY_TEXT_CFG: dict = {"embed_dim": 64, "context_length": 32, "vocab_size": 4096, "width": 64,
                       "heads": 2, "layers": 2}
"""Default architecture of the tiny text tower (open_clip ``CLIPTextCfg`` fields + embed_dim)."""

# open_clip's SimpleTokenizer ids: start/end of text; padding is 0.
_SOT_ID, _EOT_ID = 49406, 49407


@dataclass
class TextEncoderSpec:
    """Which text encoder to build (stored in checkpoint metadata as a plain dict)."""

    type: str = "open_clip"
    """Registry key of the backend; known: 'open_clip'."""
    model: str = "ViT-B-32"
    """open_clip architecture name, or 'local-dir:/path' (a folder with open_clip_config.json and weights)."""
    pretrained: str | None = None
    """open_clip pretrained tag (only if already in the local cache) or a local checkpoint file path."""
    tiny: bool = False
    """Build a tiny random-initialised text tower instead of ``model`` (tests, demo checkpoint)."""
    model_cfg: dict | None = None
    """Overrides of the tiny architecture (keys of TINY_TEXT_CFG); ignored unless ``tiny``."""
    weights: str | None = None
    """Optional safetensors file with the text tower's weights (written by save_weights)."""
    prompt_template: str = "a photo of a {}."
    """Template applied to every text before encoding; '{}' is replaced by the text."""
    seed: int = 0
    """Seed of the random initialisation (tiny towers without ``weights``)."""
    subtract_null: bool | None = None
    """Subtract the raw embedding of the empty prompt before normalising (removes the component
    every prompt shares; random-init towers are otherwise nearly collinear). None: on for tiny
    towers, off for real models."""
    cache_size: int = 4096
    """Number of strings whose embeddings are kept (LRU)."""
    device: str = "cpu"
    """Torch device running the text tower."""

    @classmethod
    def from_dict(cls, d: dict | "TextEncoderSpec") -> "TextEncoderSpec":
        """Build from a plain dict (e.g. checkpoint metadata); unknown keys raise naming them."""
        if isinstance(d, TextEncoderSpec):
            return d
        if not isinstance(d, dict):
            raise InvalidInputError(f"text encoder spec must be a dict or TextEncoderSpec, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise InvalidInputError(f"unknown text encoder spec keys {bad}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain, YAML-safe dict."""
        return asdict(self)


class TextEncoder:
    """Encodes strings into unit embeddings with a per-string LRU cache.

    Attributes:
        dim: embedding dimension.
        spec: the spec it was built from.
        n_forward_calls: number of times the network ran (tests use it to prove caching /
            that a label-set change does not re-encode the map).
    """

    def __init__(self, module: nn.Module, tokenize: Callable[[list[str]], torch.Tensor], dim: int,
                 spec: TextEncoderSpec) -> None:
        self.module = module.eval()
        self._tokenize = tokenize
        self.dim = int(dim)
        self.spec = spec
        self.device = torch.device(spec.device)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.n_forward_calls = 0
        self._subtract_null = spec.tiny if spec.subtract_null is None else bool(spec.subtract_null)

    def _prompt(self, text: str) -> str:
        t = self.spec.prompt_template
        return t.replace("{}", text) if "{}" in t else (text or t)

    # ------------------------------------------------------------------ encode
    def encode(self, texts: list[str] | str) -> torch.Tensor:
        """``[T, dim]`` float32 unit embeddings (CPU) of ``texts`` after the prompt template.

        Identical strings give bit-identical rows; cached strings do not run the network.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InvalidInputError(f"texts to encode must be non-empty strings, got {t!r}")
        if not texts:
            return torch.zeros(0, self.dim)
        missing = list(OrderedDict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            prompts = [self._prompt(t) for t in missing]
            if self._subtract_null:
                prompts.append(self._prompt(""))
            with torch.no_grad():
                tokens = self._tokenize(prompts).to(self.device)
                emb = self.module(tokens).float()
                if self._subtract_null:
                    emb = emb[:-1] - emb[-1:]
                emb = torch.nn.functional.normalize(emb, dim=-1).cpu()
            self.n_forward_calls += 1
            for t, e in zip(missing, emb):
                self._cache[t] = e.clone()
        out = []
        for t in texts:
            self._cache.move_to_end(t)
            out.append(self._cache[t])
        while len(self._cache) > max(1, self.spec.cache_size):
            self._cache.popitem(last=False)
        return torch.stack(out)

    def clear_cache(self) -> None:
        self._cache.clear()

    # ----------------------------------------------------------------- weights
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the text tower's weights as safetensors (loaded back via ``spec.weights``)."""
        from safetensors.torch import save_file
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(path))

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load weights strictly; :class:`CheckpointError` names missing/unexpected keys."""
        from safetensors.torch import load_file
        if not Path(path).is_file():
            raise CheckpointError(f"text encoder weights file not found: {path}")
        sd = load_file(str(path), device=str(self.device))
        load_state_dict_strict(self.module, sd, f"text encoder weights {path} do not match the architecture")
        self.clear_cache()


# --------------------------------------------------------------------- registry
TEXT_ENCODERS: dict[str, Callable[[TextEncoderSpec], TextEncoder]] = {}


def register_text_encoder(name: str):
    """Decorator registering a builder ``fn(spec) -> TextEncoder`` under ``name``."""
    def deco(fn):
        TEXT_ENCODERS[name] = fn
        return fn
    return deco


def build_text_encoder(spec: TextEncoderSpec | dict) -> TextEncoder:
    """Build the text encoder named by ``spec.type``; weights from ``spec.weights`` if given."""
    spec = TextEncoderSpec.from_dict(spec)
    if spec.type not in TEXT_ENCODERS:
        raise RegistryError(f"unknown text encoder type {spec.type!r}; known: {sorted(TEXT_ENCODERS)}")
    enc = TEXT_ENCODERS[spec.type](spec)
    if spec.weights:
        enc.load_weights(spec.weights)
    return enc


# --------------------------------------------------------------------- open_clip
@contextlib.contextmanager
def _offline():
    """Force huggingface_hub / transformers offline while open_clip builds things."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _TinyTokenizer:
    """open_clip's BPE tokenizer with ids folded into a small vocabulary.

    Regular tokens map to ``1 + id % (V - 3)``, start-of-text to ``V - 2`` and end-of-text to
    ``V - 1`` so the end token keeps the largest id (open_clip's 'argmax' pooling finds it).
    """

    def __init__(self, context_length: int, vocab_size: int) -> None:
        from open_clip.tokenizer import SimpleTokenizer
        if vocab_size < 16:
            raise InvalidInputError(f"tiny text vocab_size must be >= 16, got {vocab_size}")
        self._tok = SimpleTokenizer(context_length=context_length)
        self.v = int(vocab_size)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids = self._tok(texts)
        v = self.v
        folded = 1 + ids % (v - 3)
        folded = torch.where(ids == _SOT_ID, torch.full_like(ids, v - 2), folded)
        folded = torch.where(ids == _EOT_ID, torch.full_like(ids, v - 1), folded)
        return torch.where(ids == 0, torch.zeros_like(ids), folded)


class _ClipTextOnly(nn.Module):
    """A full open_clip model with its image tower dropped; forward = ``encode_text``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if hasattr(model, "visual"):
            model.visual = nn.Identity()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def _pretrained_available(model: str, tag: str) -> tuple[bool, str]:
    """Whether open_clip's weights for ``(model, tag)`` are already on disk (no network)."""
    from open_clip import pretrained as ocp
    cfg = ocp.get_pretrained_cfg(model, tag)
    if not cfg:
        return False, (f"{tag!r} is neither a known open_clip pretrained tag for {model!r} "
                       f"(known: {ocp.list_pretrained_tags_by_model(model)}) nor an existing file")
    if "file" in cfg:
        return os.path.isfile(cfg["file"]), cfg["file"]
    where = []
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
            repo, fname = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
            names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            if fname.endswith(".bin"):
                names.insert(0, fname[:-4] + ".safetensors")
            for n in names:
                p = try_to_load_from_cache(repo_id=repo, filename=n)
                if isinstance(p, str) and os.path.isfile(p):
                    return True, p
            where.append(f"hf-hub {hub}")
        except ImportError:
            pass
    url = cfg.get("url", "")
    if url:
        p = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(p):
            return True, p
        where.append(p)
    return False, " or ".join(where) or "nowhere"


@register_text_encoder("open_clip")
def _build_open_clip(spec: TextEncoderSpec) -> TextEncoder:
    try:
        import open_clip
        from open_clip.model import CLIPTextCfg, _build_text_tower
    except ImportError as e:  # pragma: no cover - depends on the install
        raise CheckpointError(f"text encoder type 'open_clip' needs the open_clip_torch package: {e}") from e
    device = torch.device(spec.device)
    if spec.tiny:
        cfg = dict(TINY_TEXT_CFG)
        bad = sorted(set(spec.model_cfg or {}) - set(cfg) - {f.name for f in fields(CLIPTextCfg)})
        if bad:
            raise InvalidInputError(f"unknown tiny text model_cfg keys {bad}")
        cfg.update(spec.model_cfg or {})
        embed_dim = int(cfg.pop("embed_dim"))
        text_cfg = CLIPTextCfg(**cfg)
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(int(spec.seed))
            module = _build_text_tower(embed_dim, text_cfg)
        finally:
            torch.random.set_rng_state(gen_state)
        tok = _TinyTokenizer(text_cfg.context_length, text_cfg.vocab_size)
        return TextEncoder(module.to(device), tok, embed_dim, spec)

    # A real model: never download.
    name = spec.model
    pretrained = spec.pretrained
    if name.startswith("hf-hub:"):
        raise CheckpointError(f"text encoder model {name!r}: 'hf-hub:' would download; use "
                              "'local-dir:/path' with open_clip_config.json and weights, or a built-in "
                              "model name with pretrained=<local checkpoint file>")
    if name.startswith("local-dir:"):
        d = Path(name[len("local-dir:"):])
        if not (d / "open_clip_config.json").is_file():
            raise CheckpointError(f"text encoder model {name!r}: {d}/open_clip_config.json not found")
        pretrained = None
    elif name.replace("/", "-") not in open_clip.list_models():
        raise RegistryError(f"unknown open_clip model {name!r}; known: {open_clip.list_models()}")
    elif pretrained and not os.path.isfile(pretrained):
        ok, where = _pretrained_available(name, pretrained)
        if not ok:
            raise CheckpointError(
                f"open_clip weights for model {name!r} pretrained={pretrained!r} are not available "
                f"locally ({where}); nothing is downloaded at run time. Provide a local checkpoint: "
                f"pretrained='/path/to/open_clip_pytorch_model.bin' (or .safetensors), or "
                f"model='local-dir:/path' with open_clip_config.json and weights, or pre-populate "
                f"the cache on a machine with network access.")
    with _offline():
        try:
            model = open_clip.create_model(name, pretrained=pretrained, device=device,
                                           pretrained_image=False, pretrained_text=False)
            tokenizer = open_clip.get_tokenizer(name)
        except (RuntimeError, OSError, ValueError) as e:
            raise CheckpointError(f"could not build open_clip model {name!r} (pretrained={pretrained!r}) "
                                  f"offline: {e}") from e
    module = _ClipTextOnly(model).to(device)
    with torch.no_grad():
        dim = int(module(tokenizer(["a"]).to(device)).shape[-1])
    return TextEncoder(module, tokenizer, dim, spec)
