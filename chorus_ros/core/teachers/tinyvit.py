"""TinyViT image encoder of MobileSAM, written for chorus_ros, and the ``mobilesam`` teacher.

Architecture (Wu et al., TinyViT; MobileSAM distils SAM's ViT-H encoder into it):

* *stem*: two 3x3 stride-2 conv + BN (GELU between): ``[3, H, W] -> [c0, H/4, W/4]``;
* *stage 0*: MBConv blocks (1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU);
* *stages 1..3*: TinyViT blocks - windowed multi-head attention with a learned bias per relative
  offset ``(|dy|, |dx|)`` inside the window (padded windows), a residual, a 3x3 depthwise conv + BN,
  and a residual MLP (LayerNorm first);
* between stages a *merge*: 1x1 conv, 3x3 depthwise conv (stride 2, but stride 1 into the last
  stage in MobileSAM, so the output stays at 1/16), 1x1 conv, each conv + BN, GELU between;
* *neck*: 1x1 conv, channel LayerNorm, 3x3 conv, channel LayerNorm -> ``[256, H/16, W/16]``.

Parameter names follow the MobileSAM release so its ``image_encoder.*`` weights load strictly
(:func:`chorus_ros.core.state_dict.load_state_dict_strict`); the classifier head of the release
(``head.*``, ``norm_head.*``) is not part of the image encoder and is dropped by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.state_dict import load_state_dict_strict
from chorus_ros.core.teachers.base import FrameContext, Teacher, TeacherSpec, option
from chorus_ros.core.teachers.registry import register_teacher

__all__ = ["TinyViTConfig", "TinyViTEncoder", "MobileSamTeacher", "MOBILE_SAM_SHA256", "load_mobilesam_encoder"]

MOBILE_SAM_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
"""SHA-256 of the official ``mobile_sam.pt`` (40,728,226 bytes)."""

_SAM_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
_SAM_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)


@dataclass
class TinyViTConfig:
    """TinyViT-5M as in MobileSAM by default."""

    widths: list[int] = field(default_factory=lambda: [64, 128, 160, 320])
    """Channels of the four stages."""
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    """Blocks per stage (stage 0: MBConv, others: attention blocks)."""
    heads: list[int] = field(default_factory=lambda: [2, 4, 5, 10])
    """Attention heads per stage (stage 0 has none)."""
    windows: list[int] = field(default_factory=lambda: [7, 7, 14, 7])
    """Attention window edge per stage."""
    mlp_ratio: float = 4.0
    """MLP hidden width / stage width."""
    mbconv_expand: float = 4.0
    """MBConv hidden width / stage width."""
    neck_dim: int = 256
    """Output channels of the neck."""

    def validate(self) -> None:
        if not (len(self.widths) == len(self.depths) == len(self.heads) == len(self.windows) == 4):
            raise InvalidInputError(f"TinyViT needs four stages, got {self}")
        for w, h in zip(self.widths[1:], self.heads[1:]):
            if w % h:
                raise InvalidInputError(f"TinyViT stage width {w} is not divisible by its {h} heads")


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (names ``c`` and ``bn``)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class Stem(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, width // 2, 3, 2), nn.GELU(), ConvBN(width // 2, width, 3, 2))

    def forward(self, x):
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block on ``[B, C, H, W]``."""

    def __init__(self, dim: int, expand: float) -> None:
        super().__init__()
        hid = int(dim * expand)
        self.conv1 = ConvBN(dim, hid, 1)
        self.conv2 = ConvBN(hid, hid, 3, groups=hid)
        self.conv3 = ConvBN(hid, dim, 1)

    def forward(self, x):
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class Merge(nn.Module):
    """Downsampling between stages: ``[B, C, H, W] -> [B, C', H/s, W/s]``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, cout, 1)
        self.conv2 = ConvBN(cout, cout, 3, stride, groups=cout)
        self.conv3 = ConvBN(cout, cout, 1)

    def forward(self, x):
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Multi-head attention inside ``window x window`` tokens with a learned bias per
    ``(|dy|, |dx|)`` offset and head (``attention_biases [heads, #offsets]``)."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # offsets numbered in order of first appearance over (token a, token b) pairs, row-major
        pts = [(i, j) for i in range(window) for j in range(window)]
        ids: dict[tuple[int, int], int] = {}
        idx = torch.empty(len(pts), len(pts), dtype=torch.long)
        for a, (ya, xa) in enumerate(pts):
            for b, (yb, xb) in enumerate(pts):
                idx[a, b] = ids.setdefault((abs(ya - yb), abs(xa - xb)), len(ids))
        self.attention_biases = nn.Parameter(torch.zeros(heads, len(ids)))
        self.register_buffer("bias_index", idx, persistent=False)

    def forward(self, x):                               # [B', N, C] with N = window^2
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.heads, 3, self.hd)   # per head: q | k | v
        q, k, v = qkv.permute(3, 0, 2, 1, 4)                               # each [B', heads, N, hd]
        bias = self.attention_biases[:, self.bias_index]                   # [heads, N, N]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention + depthwise local conv + MLP on ``[B, C, H, W]``."""

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, heads, window)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        b, c, h, w = x.shape
        ws = self.window
        t = x.permute(0, 2, 3, 1)                                          # [B, H, W, C]
        ph, pw = (-h) % ws, (-w) % ws
        tp = F.pad(t, (0, 0, 0, pw, 0, ph)) if (ph or pw) else t
        H, W = h + ph, w + pw
        win = tp.view(b, H // ws, ws, W // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        win = self.attn(win)
        y = win.view(b, H // ws, W // ws, ws, ws, c).transpose(2, 3).reshape(b, H, W, c)[:, :h, :w]
        t = t + y
        t = self.local_conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        t = t + self.mlp(t)
        return t.permute(0, 3, 1, 2)


class Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of ``[B, C, H, W]`` (eps 1e-6)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, 1e-6).permute(0, 3, 1, 2)


class TinyViTEncoder(nn.Module):
    """``[B, 3, H, W]`` (normalised) -> ``[B, neck_dim, ceil(H/16), ceil(W/16)]``; H, W multiples of 32
    give exact 1/16 grids (MobileSAM uses 1024 x 1024)."""

    def __init__(self, config: TinyViTConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or TinyViTConfig()
        c.validate()
        self.patch_embed = Stem(c.widths[0])
        layers = []
        for i in range(4):
            if i == 0:
                blocks = [MBConv(c.widths[0], c.mbconv_expand) for _ in range(c.depths[0])]
            else:
                blocks = [TinyViTBlock(c.widths[i], c.heads[i], c.windows[i], c.mlp_ratio) for _ in range(c.depths[i])]
            down = Merge(c.widths[i], c.widths[i + 1], 1 if i == 2 else 2) if i < 3 else None
            layers.append(Stage(blocks, down))
        self.layers = nn.ModuleList(layers)
        n = c.neck_dim
        self.neck = nn.Sequential(nn.Conv2d(c.widths[-1], n, 1, bias=False), ChannelNorm(n),
                                  nn.Conv2d(n, n, 3, padding=1, bias=False), ChannelNorm(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidInputError(f"TinyViT expects [B, 3, H, W] images, got {tuple(x.shape)}")
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)


_DROPPED = ("head.", "norm_head.")
"""Release keys outside the image encoder (ImageNet classifier), dropped by name."""


def load_mobilesam_encoder(path: str, config: TinyViTConfig | None = None) -> TinyViTEncoder:
    """A :class:`TinyViTEncoder` with the ``image_encoder.*`` weights of a local MobileSAM file.

    Accepts the full release (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) or an
    encoder-only state dict. Keys and shapes are checked strictly; nothing is downloaded.
    """
    from chorus_ros.core.teachers.real import load_state_dict_file
    sd = load_state_dict_file(path)
    if any(k.startswith("image_encoder.") for k in sd):
        sd = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    sd = {k: v for k, v in sd.items() if not k.startswith(_DROPPED)}
    if not sd:
        raise CheckpointError(f"{path} holds no TinyViT image-encoder weights")
    model = TinyViTEncoder(config)
    load_state_dict_strict(model, sd, f"teacher 'mobilesam': checkpoint {path}")
    return model.eval()


@register_teacher("mobilesam")
class MobileSamTeacher(Teacher):
    """Object-aware features of MobileSAM's TinyViT image encoder (the neck output, 256 channels).

    The image is resized to ``image_size`` (an int for a square, or ``[h, w]``; multiples of 32;
    MobileSAM was trained at 1024, smaller sizes trade detail for CPU time), normalised with SAM's
    pixel mean/std, and encoded to ``[h/16, w/16, 256]``. Options: ``checkpoint`` (local
    ``mobile_sam.pt``), ``image_size`` (1024), ``device``, ``check_hash`` (verify the official
    SHA-256 when the file is the full release), ``random_init``/``seed``/``config`` (tests: a tiny
    random-init TinyViT from a :class:`TinyViTConfig` dict).
    """

    name = "mobilesam"
    DEFAULTS = {"checkpoint": None, "image_size": 1024, "device": "cpu", "check_hash": False,
                "random_init": False, "seed": 0, "config": None}

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__(spec)
        o = option(spec, self.DEFAULTS)
        cfg = TinyViTConfig(**o["config"]) if o["config"] else TinyViTConfig()
        size = o["image_size"]
        self.size = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
        if len(self.size) != 2 or any(s < 32 or s % 32 for s in self.size):
            raise InvalidInputError(f"mobilesam image_size must be multiples of 32 (>= 32), got {size}")
        if o["checkpoint"] is None:
            if not o["random_init"]:
                raise CheckpointError("teacher 'mobilesam' needs options.checkpoint = a local mobile_sam.pt "
                                      "(nothing is downloaded at run time; random_init=true is for tests)")
            from chorus_ros.core.teachers.real import _seeded
            with _seeded(o["seed"]):
                self.model = TinyViTEncoder(cfg).eval()
        else:
            if o["check_hash"]:
                _check_sha256(o["checkpoint"])
            self.model = load_mobilesam_encoder(o["checkpoint"], cfg)
        self.device = torch.device(o["device"])
        self.model.to(self.device)
        self.dim = cfg.neck_dim

    @property
    def grid(self) -> tuple[int, int]:
        return (self.size[0] // 16, self.size[1] // 16)

    def features(self, image: torch.Tensor, context: FrameContext | None) -> torch.Tensor:
        from chorus_ros.core.teachers.real import _preprocess
        x = _preprocess(image, self.size, _SAM_MEAN, _SAM_STD, self.device)
        return self.model(x)[0].permute(1, 2, 0)


def _check_sha256(path: str) -> None:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != MOBILE_SAM_SHA256:
        raise CheckpointError(f"{path}: sha256 {h.hexdigest()} is not the official mobile_sam.pt ({MOBILE_SAM_SHA256})")
