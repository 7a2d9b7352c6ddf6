"""The Chorus scene encoder: a sparse-convolution U-Net over voxelised Gaussians.

Pipeline (``N`` Gaussians, ``V`` occupied voxels of edge ``voxel_size``)::

    GaussianArrays --features.py--> [N, F] input encoding (local, no absolute coordinates)
      --point MLP--> [N, P] --scatter-mean per voxel (+ log count)--> [V, P+1] --stem--> [V, C0]
        (``branches=True``: the point MLP's first layer splits into one branch per channel
         group of the encoding -- 'appearance', 'geometry' -- ``Linear + GELU`` each; their
         [N, P] outputs are concatenated and joined by one linear layer into the [N, P]
         features: the modality branches, joined before the shared U-Net)
      --sparse U-Net (SubMConv3d blocks, SparseConv3d stride-2 down, SparseInverseConv3d up,
        skip connections, per-voxel norms)--> [V, C0]
      --trilinear interpolation at each Gaussian's centre from the (existing) surrounding
        voxel centres--> [N, C0] ++ [N, P] --MLP + LayerNorm--> embedding [N, D]
      --one linear head per teacher--> {'language': [N, d_l], 'generalist': ..., 'object': ...}

Every operation is local (no global pooling, attention, or cross-voxel statistics at
inference), so a Gaussian's outputs depend only on the Gaussians within the receptive field
returned by :func:`receptive_field`, which walks the modules (kernel sizes, strides, paddings,
dilations, levels) instead of trusting a constant. The voxel indices handed to spconv are the
absolute grid indices shifted by a multiple of ``2**(levels-1)``, so every coarse level stays
aligned to the absolute grid whichever subset of the map is encoded.

spconv is imported lazily (with the CPU backward fix of :mod:`._spconv_compat`) when a model is
built, so importing this module needs only torch.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from chorus_ros.core.encoder._spconv_compat import import_spconv
from chorus_ros.core.encoder.config import EncoderConfig
from chorus_ros.core.encoder.features import Voxelization, get_feature_variant, voxelize
from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays

__all__ = ["ChorusEncoder", "EncoderOutput", "ReceptiveField", "receptive_field", "interpolate_voxel_features",
           "tensor_intervals", "BranchCalibration", "equalise_branch_gradients"]


@dataclass
class EncoderOutput:
    """Per-Gaussian outputs of :class:`ChorusEncoder`, in the input order."""

    embedding: torch.Tensor
    """[N, embed_dim] shared embedding (LayerNorm-ed)."""
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    """head name -> [N, dim] projection for that teacher."""

    def to(self, device: torch.device | str) -> "EncoderOutput":
        return EncoderOutput(self.embedding.to(device), {k: v.to(device) for k, v in self.heads.items()})

    def cpu(self) -> "EncoderOutput":
        return self.to("cpu")

    def index(self, idx: torch.Tensor) -> "EncoderOutput":
        """Rows ``idx`` of every output."""
        return EncoderOutput(self.embedding[idx], {k: v[idx] for k, v in self.heads.items()})


@dataclass(frozen=True)
class ReceptiveField:
    """How far a change can reach, derived from the modules by :func:`receptive_field`."""

    network_lo: tuple[int, int, int]
    """Per axis, the most negative offset (finest voxels) of an input voxel that a U-Net output voxel depends on."""
    network_hi: tuple[int, int, int]
    """Per axis, the most positive such offset."""
    input_voxels: int
    """Chebyshev radius (voxels) of the input encoding's neighbourhood (0 for 'gaussian', 1 for 'pointcloud')."""
    interpolation_voxels: int
    """Chebyshev radius (voxels) of the voxels a Gaussian interpolates from (1: the 8 surrounding centres)."""
    voxel_size: float
    """Finest voxel edge, metres."""

    @property
    def network_voxels(self) -> int:
        """Chebyshev radius of the U-Net alone, finest voxels."""
        return max(max(-v for v in self.network_lo), max(self.network_hi))

    @property
    def voxels(self) -> int:
        """Chebyshev radius, in voxels, between a Gaussian's voxel and the voxels of every
        Gaussian that can change its outputs."""
        return self.network_voxels + self.input_voxels + self.interpolation_voxels

    @property
    def metres(self) -> float:
        """Bound on the L-infinity distance between a Gaussian's centre and the centre of any
        Gaussian that can change its outputs: ``(voxels + 1) * voxel_size`` (two points whose
        voxels are ``r`` apart are less than ``r + 1`` voxel edges apart)."""
        return (self.voxels + 1) * self.voxel_size


# ---------------------------------------------------------------------------- building blocks
def _make_norm(kind: str, c: int) -> nn.Module:
    return nn.LayerNorm(c) if kind == "layer" else nn.BatchNorm1d(c)


class _ResBlock(nn.Module):
    """x -> act(x + norm(conv(act(norm(conv(x)))))) with two submanifold convolutions."""

    def __init__(self, sp, c: int, k: int, norm: str, key: str) -> None:
        super().__init__()
        self.conv1 = sp.SubMConv3d(c, c, k, padding=k // 2, bias=False, indice_key=key)
        self.norm1 = _make_norm(norm, c)
        self.conv2 = sp.SubMConv3d(c, c, k, padding=k // 2, bias=False, indice_key=key)
        self.norm2 = _make_norm(norm, c)

    def convs(self) -> list[nn.Module]:
        """The convolutions on the residual branch, in order (the skip branch is the identity)."""
        return [self.conv1, self.conv2]

    def forward(self, x):
        h = self.conv1(x)
        h = h.replace_feature(F.gelu(self.norm1(h.features)))
        h = self.conv2(h)
        return h.replace_feature(F.gelu(self.norm2(h.features) + x.features))


class _Stage(nn.Module):
    """One U-Net level: encoder blocks, then (unless the bottleneck) down -> child -> up, a
    per-voxel merge with the skip, and decoder blocks."""

    def __init__(self, sp, cfg: EncoderConfig, level: int) -> None:
        super().__init__()
        c, k = cfg.channels[level], cfg.kernel_size
        self.level = level
        key = f"subm{level}"
        self.enc = nn.ModuleList([_ResBlock(sp, c, k, cfg.norm, key) for _ in range(cfg.encoder_blocks[level])])
        self.child: _Stage | None = None
        if level + 1 < cfg.levels:
            cn = cfg.channels[level + 1]
            self.down = sp.SparseConv3d(c, cn, 2, stride=2, bias=False, indice_key=f"down{level}")
            self.down_norm = _make_norm(cfg.norm, cn)
            self.child = _Stage(sp, cfg, level + 1)
            self.up = sp.SparseInverseConv3d(cn, c, 2, indice_key=f"down{level}", bias=False)
            self.up_norm = _make_norm(cfg.norm, c)
            self.merge = nn.Linear(2 * c, c)
            self.merge_norm = _make_norm(cfg.norm, c)
            self.dec = nn.ModuleList([_ResBlock(sp, c, k, cfg.norm, key) for _ in range(cfg.decoder_blocks[level])])
        else:
            self.dec = nn.ModuleList()

    def forward(self, x):
        for b in self.enc:
            x = b(x)
        if self.child is None:
            return x
        y = self.down(x)
        y = y.replace_feature(F.gelu(self.down_norm(y.features)))
        y = self.child(y)
        y = self.up(y)
        # the inverse convolution outputs exactly the rows of its paired downsampling's input
        y = y.replace_feature(F.gelu(self.up_norm(y.features)))
        x = x.replace_feature(F.gelu(self.merge_norm(self.merge(torch.cat([x.features, y.features], 1)))))
        for b in self.dec:
            x = b(x)
        return x


# ------------------------------------------------------------------------ receptive field walk
_Interval = tuple[list[int], list[int]]


def _conv_interval(conv: nn.Module, iv: _Interval, s: int) -> tuple[_Interval, int]:
    """Dependency interval after one spconv layer applied at a level of stride ``s`` (finest
    voxels per cell). Intervals are offsets, in finest voxels, from the output cell's origin
    ``cell * stride`` to the finest voxels it depends on. Returns (interval, output stride)."""
    lo, hi = list(iv[0]), list(iv[1])
    for a in range(3):
        k, d, p = conv.kernel_size[a], conv.dilation[a], conv.padding[a]
        if conv.subm:  # centred kernel, same grid
            r = (k - 1) // 2 * d * s
            lo[a] -= r
            hi[a] += r
        elif conv.inverse:  # fine cell i reads coarse cells C with C*st = i + p - j*d, j in [0, k)
            lo[a] += (p - (k - 1) * d) * s
            hi[a] += p * s
        else:  # coarse cell C reads fine cells C*st - p + j*d, j in [0, k)
            lo[a] += -p * s
            hi[a] += (-p + (k - 1) * d) * s
    if conv.subm:
        s_out = s
    elif conv.inverse:
        s_out = s  # caller passes the *fine* stride for inverse convolutions
    else:
        assert len(set(conv.stride)) == 1, "anisotropic strides are not used"
        s_out = s * conv.stride[0]
    return (lo, hi), s_out


def _union(a: _Interval, b: _Interval) -> _Interval:
    return [min(x, y) for x, y in zip(a[0], b[0])], [max(x, y) for x, y in zip(a[1], b[1])]


def _blocks_interval(blocks, iv: _Interval, s: int) -> _Interval:
    for b in blocks:
        branch = iv
        for conv in b.convs():
            branch, _ = _conv_interval(conv, branch, s)
        iv = _union(iv, branch)  # residual: identity path joins the conv path
    return iv


def _stage_interval(stage: _Stage, iv: _Interval, s: int, record: dict | None = None) -> _Interval:
    level = stage.level
    if record is not None:
        record[("x", level)] = iv
    iv = _blocks_interval(stage.enc, iv, s)
    if record is not None:
        record[("e", level)] = iv
    if stage.child is not None:
        deep, s_child = _conv_interval(stage.down, iv, s)
        deep = _stage_interval(stage.child, deep, s_child, record)
        deep, _ = _conv_interval(stage.up, deep, s)
        iv = _union(iv, deep)  # the merge reads the skip and the upsampled path at the same voxel
        iv = _blocks_interval(stage.dec, iv, s)
    if record is not None:
        record[("o", level)] = iv
    return iv


def tensor_intervals(model: "ChorusEncoder") -> dict[tuple[str, int], _Interval]:
    """Dependency interval of every stage tensor, for the cached incremental engine.

    Keys ``('x', l)`` (a level's input: the stem output or the downsampling output),
    ``('e', l)`` (after the encoder blocks: the skip) and ``('o', l)`` (the level's output).
    Intervals are per-axis offsets in finest voxels from a cell's origin ``cell * 2**l`` to the
    voxels whose Gaussians it depends on, including the input encoding's neighbourhood."""
    record: dict = {}
    n0 = model.variant.neighbourhood_voxels
    _stage_interval(model.unet, ([-n0] * 3, [n0] * 3), 1, record)
    return record


def receptive_field(model: "ChorusEncoder") -> ReceptiveField:
    """Derive the receptive field by walking the U-Net's modules (see :class:`ReceptiveField`).

    Pointwise layers (MLPs, norms, the merge) add nothing; every SubMConv3d widens the
    dependency interval by ``(k-1)/2 * dilation * stride``; a strided SparseConv3d /
    SparseInverseConv3d pair adds the offsets of the cells it reads, including the alignment of a
    fine voxel within its coarse cell, so the bound is exact for a dense line of voxels.
    """
    iv = _stage_interval(model.unet, ([0, 0, 0], [0, 0, 0]), 1)
    return ReceptiveField(tuple(iv[0]), tuple(iv[1]), model.variant.neighbourhood_voxels, 1,
                          model.config.voxel_size)


# ----------------------------------------------------------------------------- interpolation
def interpolate_voxel_features(feats: torch.Tensor, vox: Voxelization, means: torch.Tensor,
                               batch: torch.Tensor | None = None) -> torch.Tensor:
    """Trilinear interpolation of voxel features at Gaussian centres.

    ``feats: [V, C]`` rows of ``vox``; ``means: [N, 3] world, metres``. Each Gaussian blends the
    up to 8 voxel centres around it that exist, with trilinear weights renormalised over the
    existing ones (its own voxel always exists and has weight >= 1/8). Returns ``[N, C]``.
    """
    u = means.detach().float() / vox.voxel_size - 0.5  # voxel centres at integer coordinates
    base = torch.floor(u)
    frac = u - base
    base = base.to(torch.int64)
    out = feats.new_zeros(means.shape[0], feats.shape[1])
    wsum = feats.new_zeros(means.shape[0], 1)
    for corner in range(8):
        bits = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=means.device)
        w = torch.where(bits.bool(), frac, 1.0 - frac).prod(1, keepdim=True)
        j = vox.lookup(base + bits, batch)
        w = w * (j >= 0).unsqueeze(1).to(w.dtype)
        out = out + w * feats[j.clamp_min(0)]
        wsum = wsum + w
    return out / wsum


# --------------------------------------------------------------- modality branches, level two
class BranchCalibration:
    """Second level of gradient calibration: equal gradient norms across input branches.

    Forward is the identity on the branch outputs. While :meth:`active` (the trainer turns it on
    only while back-propagating the *calibrated task gradient*), the backward pass rescales the
    gradient reaching each branch output ``b`` to the mean of the branches' norms
    ``g_b <- g_b * mean_c |g_c| / |g_b|`` (branches with a zero gradient are left alone), so no
    input modality dominates the update of the shared stem. Outside :meth:`active` gradients
    pass unchanged. ``last_norms`` holds the raw per-branch norms of the last calibrated
    backward (for logs); ``last_scaled`` the norms after rescaling.
    """

    def __init__(self) -> None:
        self.is_active = False
        self.last_norms: dict[str, float] = {}
        self.last_scaled: dict[str, float] = {}

    @contextmanager
    def active(self):
        """Context manager: calibrate branch gradients during backward passes run inside it."""
        prev, self.is_active = self.is_active, True
        self.last_norms, self.last_scaled = {}, {}
        try:
            yield self
        finally:
            self.is_active = prev


class _EqualiseBranches(torch.autograd.Function):
    @staticmethod
    def forward(ctx, calib, names, *xs):
        ctx.calib, ctx.names = calib, names
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx, *gs):
        calib = ctx.calib
        if calib is None or not calib.is_active:
            return (None, None, *gs)
        out = equalise_branch_gradients(dict(zip(ctx.names, gs)))
        calib.last_norms = {k: float(g.norm()) if g is not None else 0.0 for k, g in zip(ctx.names, gs)}
        calib.last_scaled = {k: float(v.norm()) if v is not None else 0.0 for k, v in out.items()}
        return (None, None, *[out[k] for k in ctx.names])


def equalise_branch_gradients(grads: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """Rescale every non-zero gradient to the mean norm of the non-zero ones (the level-two rule).

    ``grads``: branch name -> gradient at that branch's output (any shape) or None.
    """
    norms = {k: g.double().norm() for k, g in grads.items() if g is not None}
    live = [k for k, n in norms.items() if float(n) > 0]
    if not live:
        return dict(grads)
    target = sum(norms[k] for k in live) / len(live)
    return {k: (g * (target / norms[k]).to(g.dtype) if k in live else g) for k, g in grads.items()}


# ------------------------------------------------------------------------------------ model
class ChorusEncoder(nn.Module):
    """Feed-forward per-Gaussian features from a sparse U-Net (see the module docstring).

    Example::

        model = ChorusEncoder(EncoderConfig()).eval()
        with torch.no_grad():
            out = model(gaussians)          # EncoderOutput
        out.heads["language"]               # [N, 64]
        model.receptive_field.metres        # 1.25 with the defaults
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        sp = import_spconv()
        self.config = config if config is not None else EncoderConfig()
        self.config.validate()
        cfg = self.config
        self.variant = get_feature_variant(cfg.variant, cfg.feature_version)
        ph, c0 = cfg.point_hidden, cfg.channels[0]
        self.branch_calibration = BranchCalibration()
        self.branch_groups: dict[str, tuple[int, ...]] = {}
        if cfg.branches and len(self.variant.groups) > 1:
            self.branch_groups = {k: tuple(int(i) for i in v) for k, v in self.variant.groups.items()}
            self.branches = nn.ModuleDict({k: nn.Sequential(nn.Linear(len(v), ph), nn.GELU())
                                           for k, v in self.branch_groups.items()})
            self.branch_join = nn.Linear(ph * len(self.branch_groups), ph)
        else:  # one stem over all channels (the original architecture; old checkpoints)
            self.point_mlp = nn.Sequential(nn.Linear(self.variant.dim, ph), nn.GELU(), nn.Linear(ph, ph))
        self.stem = nn.Linear(ph + 1, c0)
        self.stem_norm = _make_norm(cfg.norm, c0)
        self.unet = _Stage(sp, cfg, 0)
        self.out_mlp = nn.Sequential(nn.Linear(c0 + ph, cfg.head_hidden), nn.GELU(),
                                     nn.Linear(cfg.head_hidden, cfg.embed_dim))
        self.embed_norm = nn.LayerNorm(cfg.embed_dim)
        self.heads = nn.ModuleDict({h.name: nn.Linear(cfg.embed_dim, h.dim) for h in cfg.heads})

    # ------------------------------------------------------------------ introspection
    @property
    def receptive_field(self) -> ReceptiveField:
        """Derived from the modules; see :func:`receptive_field`."""
        return receptive_field(self)

    @property
    def receptive_field_m(self) -> float:
        """L-infinity distance (metres) beyond which a Gaussian cannot affect another's outputs."""
        return self.receptive_field.metres

    @property
    def head_dims(self) -> dict[str, int]:
        return self.config.head_dims()

    def shared_last_layer(self) -> nn.Linear:
        """The last layer shared by all heads (for gradient calibration across heads)."""
        return self.out_mlp[-1]

    # ------------------------------------------------------------------------ forward
    def forward(self, g: GaussianArrays) -> EncoderOutput:
        """Encode one scene. ``g``: N Gaussians (world frame). Returns per-Gaussian outputs in
        the order of ``g``. An empty input gives empty outputs."""
        return self._forward([g])[0]

    def forward_batch(self, scenes: list[GaussianArrays]) -> list[EncoderOutput]:
        """Encode several scenes in one pass (scenes never interact); one output per scene."""
        if not scenes:
            raise InvalidInputError("forward_batch needs at least one scene")
        return self._forward(list(scenes))

    def _forward(self, scenes: list[GaussianArrays]) -> list[EncoderOutput]:
        for i, g in enumerate(scenes):
            if not isinstance(g, GaussianArrays):
                raise InvalidInputError(f"scene {i} is a {type(g).__name__}, expected GaussianArrays")
        dev = next(self.parameters()).device
        sizes = [len(g) for g in scenes]
        if len(scenes) == 1:
            g, batch = scenes[0].to(dev), None
        else:
            g = GaussianArrays(
                torch.cat([s.means for s in scenes]).to(dev), torch.cat([s.sh[:, :1] for s in scenes]).to(dev),
                torch.cat([s.opacities for s in scenes]).to(dev), torch.cat([s.log_scales for s in scenes]).to(dev),
                torch.cat([s.quats for s in scenes]).to(dev))
            batch = torch.repeat_interleave(torch.arange(len(scenes), device=dev), torch.tensor(sizes, device=dev))
        n = len(g)
        if n == 0 or not bool(g.finite_mask().all()):
            if n == 0:
                emb = torch.zeros(0, self.config.embed_dim, device=dev)
                return [EncoderOutput(emb, {k: torch.zeros(0, d, device=dev) for k, d in self.head_dims.items()})
                        for _ in scenes]
            bad = int((~g.finite_mask()).nonzero()[0])
            raise InvalidInputError(f"Gaussian {bad} has non-finite parameters; filter with finite_mask() first")
        means = g.means.float()
        vox = voxelize(means, self.config.voxel_size, batch)
        h = self.point_features(g, vox)
        v = self.voxel_stem(h, vox)
        st = self._sparse_tensor(v, vox, len(scenes))
        y = self.unet(st)
        interp = interpolate_voxel_features(y.features, vox, means, vox.batch[vox.inverse] if batch is not None else None)
        emb, heads = self.gaussian_head(interp, h)
        out = EncoderOutput(emb, heads)
        if batch is None:
            return [out]
        starts = [0]
        for s in sizes:
            starts.append(starts[-1] + s)
        return [out.index(slice(a, b)) for a, b in zip(starts[:-1], starts[1:])]

    # pieces of the forward pass, shared with the cached incremental engine (cached.py)
    def point_features(self, g: GaussianArrays, vox: Voxelization) -> torch.Tensor:
        """``[N, point_hidden]`` per-Gaussian MLP of the input encoding (with branches: one
        ``Linear + GELU`` per channel group, through the level-two :class:`BranchCalibration`,
        concatenated and joined by a linear layer)."""
        x = self.variant.fn(g, vox)
        if not self.branch_groups:
            return self.point_mlp(x)
        names = list(self.branch_groups)
        outs = [self.branches[k](x[:, list(self.branch_groups[k])]) for k in names]
        if torch.is_grad_enabled():
            outs = _EqualiseBranches.apply(self.branch_calibration, tuple(names), *outs)
        return self.branch_join(torch.cat(list(outs), 1))

    def voxel_stem(self, h: torch.Tensor, vox: Voxelization) -> torch.Tensor:
        """``[V, C0]`` voxel features: scatter-mean of ``h`` per voxel plus log count, then the stem."""
        pooled = h.new_zeros(len(vox), h.shape[1]).index_add_(0, vox.inverse, h) / vox.counts[:, None].to(h.dtype)
        count_feat = torch.log1p(vox.counts.to(h.dtype))[:, None] / 3.0
        return F.gelu(self.stem_norm(self.stem(torch.cat([pooled, count_feat], 1))))

    def gaussian_head(self, interp: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Shared embedding and head outputs from interpolated voxel features and ``h``."""
        emb = self.embed_norm(self.out_mlp(torch.cat([interp, h], 1)))
        return emb, {name: head(emb) for name, head in self.heads.items()}

    def _sparse_tensor(self, feats: torch.Tensor, vox: Voxelization, batch_size: int):
        """spconv input whose indices are the absolute voxel indices shifted by a multiple of
        ``2**(levels-1)``: every strided level then coarsens exactly like the absolute grid."""
        align = 2 ** (self.config.levels - 1)
        offset = torch.div(vox.coords.min(0).values, align, rounding_mode="floor") * align
        local = vox.coords - offset
        extent = local.max(0).values + 1
        shape = [int(math.ceil(int(e) / align) * align) for e in extent]
        indices = torch.cat([vox.batch[:, None], local], 1).to(torch.int32)
        return import_spconv().SparseConvTensor(feats, indices, shape, batch_size)
