"""Incremental encoding of a live :class:`~chorus_ros.core.map.GaussianMap`.

The encoder is local: a Gaussian's outputs depend only on the Gaussians within L-infinity
distance ``R`` of it, where ``R`` is derived from the modules
(:attr:`ChorusEncoder.receptive_field_m <chorus_ros.core.encoder.model.ChorusEncoder.receptive_field_m>`).
When the map changes, the map's dirty blocks (old *and* new blocks of every added / moved /
updated / removed Gaussian, from :meth:`GaussianMap.take_dirty`, plus the blocks of Gaussians
never encoded) bound what can change: only the outputs of the Gaussians within ``R`` of a dirty
block ("affected"). Two exact ways to recompute them (:class:`IncrementalConfig` ``mode``):

* ``'cached'`` (default, :mod:`.cached`): keep every stage's activations for the whole map and
  recompute each stage only on the cells within *its own* reach of the dirty blocks, reading
  inputs from the caches. Early layers touch a thin band around the change; nothing needs a
  ``2R`` context. Costs about 0.6 KB of cache per occupied voxel.
* ``'halo'``: encode, from scratch, the Gaussians within ``2R`` of the dirty blocks (the
  "context" -- everything the affected outputs depend on) and keep the outputs of the affected
  ones. No cache memory, but every layer works on the ``2R`` context.

Outputs go into the map attributes ``feat.<head>`` (``[n, dim]`` float32; ``feat.embedding``
too when configured) and ``feat.valid`` (``[n]`` uint8, 1 once a Gaussian has been encoded; new
Gaussians start at 0 with zero features). Because every coarse level of the U-Net stays aligned
to the absolute voxel grid, the result equals a full re-encode of the final map up to float32
rounding (tested to 1e-4 in ``test/core/test_incremental.py``).

Memory stays bounded: in 'halo' mode a full encode, or an update whose context holds more than
``max_gaussians_per_pass`` Gaussians, is split by a k-d partition of the Gaussians to write
("cores") into chunks, each encoded with its own halo (the Gaussians within ``R`` of the chunk's
bounding box), writing only its core's outputs; in 'cached' mode every stage splits its region
into chunks of at most that many cells, each with the stage's own small halo.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from chorus_ros.core.encoder.model import ChorusEncoder, EncoderOutput
from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays

__all__ = ["IncrementalConfig", "IncrementalEncoder", "EncodeResult", "BlockIndex", "near_blocks", "plan_chunks",
           "max_supported_coordinate"]

_log = logging.getLogger(__name__)
MODES = ("cached", "halo")
_GRID_LIMIT = 1 << 25
"""Largest dense block grid (cells) used by :func:`near_blocks`; beyond it, a chunked scan."""


@dataclass
class IncrementalConfig:
    """Incremental encoding (ROS parameters ``incremental.*``)."""

    mode: str = "cached"
    """'cached': keep per-level U-Net activations of the whole map and recompute each layer only where it can change (fast; about 0.6 KB per occupied voxel); 'halo': re-encode the changed blocks with a context of twice the receptive field (no cache memory)."""
    max_gaussians_per_pass: int = 300_000
    """Most Gaussians (written ones plus halo) sent through the network in one pass; larger maps and updates are encoded chunk by chunk."""
    full_fraction: float = 0.7
    """Bounded update cost: when an update's estimated cost exceeds this fraction of a full re-encode, the whole map is re-encoded instead (same result). 'cached': estimate = cost_factor x (Gaussians within the receptive field of the change) / (map size); 'halo': the fraction of the map in the update's 2R context."""
    cost_factor: float = 1.5
    """Initial cost of the 'cached' path per affected Gaussian relative to a full pass per Gaussian (measured: 1.0-1.9, benchmarks/bench_encoder.py); refined from the measured times of later updates and full passes, kept in [1, 10]."""
    halo_margin: float = 0.0
    """Extra halo in metres on top of the derived receptive field (0 is already exact)."""
    write_embedding: bool = False
    """Also store the shared embedding as the attribute 'feat.embedding' ([n, embed_dim] float32)."""
    attribute_prefix: str = "feat."
    """Prefix of the map attributes written: '<prefix><head>' and '<prefix>valid'."""
    rotations: int = 1
    """Rotation ensemble: average the encoder's outputs over this many copies of the map rotated about the vertical (chorus_ros.core.encoder.ensemble; 1 = off). Costs that many forward passes per encode; more than 1 needs mode 'halo'."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InvalidInputError` naming the first bad field (also run at construction;
        the encoder runs it again, since fields may have been set after construction)."""
        if self.mode not in MODES:
            raise InvalidInputError(f"IncrementalConfig.mode {self.mode!r} unknown; known: {list(MODES)}")
        if int(self.max_gaussians_per_pass) < 1:
            raise InvalidInputError(f"IncrementalConfig.max_gaussians_per_pass must be >= 1, got {self.max_gaussians_per_pass}")
        if not 0.0 <= float(self.full_fraction) <= 1.0:
            raise InvalidInputError(f"IncrementalConfig.full_fraction must be in [0, 1], got {self.full_fraction}")
        if not 1.0 <= float(self.cost_factor) <= 10.0:
            raise InvalidInputError(f"IncrementalConfig.cost_factor must be in [1, 10], got {self.cost_factor}")
        if not float(self.halo_margin) >= 0.0:
            raise InvalidInputError(f"IncrementalConfig.halo_margin must be >= 0, got {self.halo_margin}")
        if not self.attribute_prefix:
            raise InvalidInputError("IncrementalConfig.attribute_prefix must not be empty")
        from chorus_ros.core.encoder.ensemble import MAX_ROTATIONS
        if not 1 <= int(self.rotations) <= MAX_ROTATIONS:
            raise InvalidInputError(f"IncrementalConfig.rotations must be in [1, {MAX_ROTATIONS}], got {self.rotations}")
        if int(self.rotations) > 1 and self.mode != "halo":
            raise InvalidInputError(f"IncrementalConfig.rotations {self.rotations} needs mode 'halo' (the 'cached' engine "
                                    f"keeps the activations of one unrotated grid), got mode {self.mode!r}")


@dataclass
class EncodeResult:
    """What one :meth:`IncrementalEncoder.update` / :meth:`IncrementalEncoder.encode_full` did."""

    updated_slots: torch.Tensor
    """[k] int64 map slots whose features were rewritten (valid until the map next changes)."""
    n_encoded: int
    """Gaussians sent through the network (written + halo, summed over passes)."""
    full: bool
    """True when every Gaussian was rewritten (``updated_slots`` is then ``arange(n)``)."""
    from_version: int
    """Map version of the previous encode."""
    to_version: int
    """Map version now encoded."""
    seconds: float
    """Wall time of the call."""
    passes: int = 0
    """Forward passes run (1 for a single pass, more when chunked)."""
    dirty_blocks: int = 0
    """Dirty blocks that triggered the update."""
    stats: dict[str, float] = field(default_factory=dict)
    """Timing breakdown (seconds): 'plan', 'forward', 'write'."""


def max_supported_coordinate(model: ChorusEncoder, block_size: float) -> float:
    """Largest |x|, |y|, |z| (metres) of a Gaussian mean that the encoder can handle exactly.

    Voxel indices ``floor(mean / voxel_size)`` are packed into int64 keys with
    :data:`~chorus_ros.core.encoder.features.COORD_LIMIT` per axis; the incremental engines also
    form keys for the cells around a change (up to twice the receptive field plus one dirty
    block and a few voxels of rounding away from any Gaussian), so that margin is subtracted.
    Beyond this bound keys would wrap around and the caches would be corrupted."""
    from chorus_ros.core.encoder.features import COORD_LIMIT

    vs = float(model.config.voxel_size)
    margin = 2.0 * model.receptive_field_m + 2.0 * float(block_size) + 8.0 * vs
    # a rotation ensemble's members see coordinates up to xy_gain x larger (and shifted by under a voxel)
    gain = getattr(model, "xy_gain", None)
    if gain is None:
        return COORD_LIMIT * vs - margin
    return (COORD_LIMIT * vs - margin - vs) / float(gain)


def _check_extent(model: ChorusEncoder, gmap, block_size: float) -> None:
    """Raise :class:`EncodeError` naming the Gaussians beyond :func:`max_supported_coordinate`."""
    from chorus_ros.core.errors import EncodeError

    lim = max_supported_coordinate(model, block_size)
    cfg_lim = getattr(getattr(gmap, "config", None), "max_abs_coordinate", None)
    if len(gmap) == 0 or (cfg_lim is not None and float(cfg_lim) <= lim):
        return      # the map itself refuses anything beyond its (smaller) limit: nothing to scan
    g = gmap.arrays()
    far = g.means.abs().amax(1) > lim
    if bool(far.any()):
        ids = g.ids[far][:20].tolist()
        raise EncodeError(f"{int(far.sum())} Gaussians lie beyond +-{lim:.0f} m, outside the encoder's voxel "
                          f"key range (voxel_size {model.config.voxel_size} m); ids {ids}", ids)


# -------------------------------------------------------------------------- region queries
class BlockIndex:
    """Answers "is the L-infinity distance from each point to the union of these blocks at most
    r?" for many points and radii: a summed-area table over the blocks' bounding grid makes each
    query O(1) per point (a very sparse spread of blocks falls back to a chunked scan).

    ``blocks: [B, 3]`` int64, block ``b`` covering ``[b, b+1) * block_size`` (metres)."""

    def __init__(self, blocks: torch.Tensor, block_size: float) -> None:
        self.blocks = blocks.to(torch.int64)
        self.block_size = float(block_size)
        self.sat = None
        if self.blocks.shape[0] == 0:
            return
        self.bmin = self.blocks.min(0).values
        self.bmax = self.blocks.max(0).values
        self.dims = self.bmax - self.bmin + 1
        if int(torch.prod(self.dims)) <= _GRID_LIMIT:
            grid = torch.zeros(tuple(int(d) + 1 for d in self.dims), dtype=torch.int32, device=self.blocks.device)
            b = self.blocks - self.bmin + 1
            grid[b[:, 0], b[:, 1], b[:, 2]] = 1
            self.sat = grid.cumsum(0).cumsum(1).cumsum(2)  # counts of blocks in cells < (i, j, k), shifted

    def near(self, points: torch.Tensor, radius: float) -> torch.Tensor:
        """``[N]`` bool: the cube of half-edge ``radius`` around each point (``[N, 3]`` metres)
        meets a block, i.e. the L-infinity distance to the blocks is <= ``radius``."""
        n = points.shape[0]
        dev = points.device
        if n == 0 or self.blocks.shape[0] == 0:
            return torch.zeros(n, dtype=torch.bool, device=dev)
        # cheap pre-filter: only points within the blocks' bounding box (+ radius) can be near
        bs = self.block_size
        lo_m = self.bmin.to(dev, torch.float64) * bs - radius
        hi_m = (self.bmax.to(dev, torch.float64) + 1) * bs + radius
        box = ((points >= (lo_m - 1e-3).to(points.dtype)) & (points <= (hi_m + 1e-3).to(points.dtype))).all(1)
        idx = box.nonzero().squeeze(1)
        res = torch.zeros(n, dtype=torch.bool, device=dev)
        if idx.numel():
            res[idx] = self._near_exact(points[idx], radius)
        return res

    def _near_exact(self, points: torch.Tensor, radius: float) -> torch.Tensor:
        n = points.shape[0]
        dev = points.device
        p = points.double()
        qlo = torch.floor((p - radius) / self.block_size).to(torch.int64)
        qhi = torch.floor((p + radius) / self.block_size).to(torch.int64)
        if self.sat is not None:
            bmin, bmax, dims = self.bmin.to(dev), self.bmax.to(dev), self.dims.to(dev)
            overlap = ((qhi >= bmin) & (qlo <= bmax)).all(1)
            lo = (qlo - bmin).clamp(min=0).clamp(max=dims)
            hi = (torch.minimum(qhi - bmin, dims - 1) + 1).clamp(min=0)
            sat = self.sat.to(dev)
            total = torch.zeros(n, dtype=torch.int64, device=dev)
            for corner in range(8):
                sel = [(corner >> (2 - a)) & 1 for a in range(3)]
                idx = [hi[:, a] if sel[a] else lo[:, a] for a in range(3)]
                sign = (-1) ** (3 - sum(sel))
                total += sign * sat[idx[0], idx[1], idx[2]].to(torch.int64)
            return overlap & (total > 0)
        out = torch.zeros(n, dtype=torch.bool, device=dev)
        blocks = self.blocks.to(dev)
        step = max(1, (1 << 24) // max(n, 1))
        for s in range(0, blocks.shape[0], step):
            b = blocks[s:s + step][None]
            out |= ((qlo[:, None] <= b) & (b <= qhi[:, None])).all(-1).any(1)
        return out


def near_blocks(means: torch.Tensor, blocks: torch.Tensor, block_size: float, radius: float) -> torch.Tensor:
    """``[N]`` bool: the cube of half-edge ``radius`` around each position (``means: [N, 3]``
    world, metres) meets at least one of the blocks (``[B, 3]`` int64, block ``b`` covers
    ``[b, b+1) * block_size``), i.e. the L-infinity distance to a block is <= ``radius``.
    One-shot form of :class:`BlockIndex`."""
    return BlockIndex(blocks.to(means.device), block_size).near(means, radius)


def plan_chunks(means: torch.Tensor, core: torch.Tensor, allowed: torch.Tensor | None, radius: float,
                max_n: int, min_extent: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split the Gaussians ``core`` ([k] int64 rows of ``means``) into chunks whose context --
    the ``allowed`` Gaussians ([N] bool, None: all) within L-infinity ``radius`` of the chunk's
    bounding box -- holds at most ``max_n`` Gaussians. k-d splits at the median of the longest
    axis; a chunk narrower than ``min_extent`` is not split further (its halo alone is too big).
    Returns ``[(core_rows, context_rows)]`` with sorted context rows that contain the core."""
    leaves: list[tuple[torch.Tensor, torch.Tensor]] = []
    stack = [core]
    while stack:
        ci = stack.pop()
        if ci.numel() == 0:
            continue
        p = means[ci]
        lo, hi = p.min(0).values, p.max(0).values
        ctx = ((means >= lo - radius) & (means <= hi + radius)).all(1)
        if allowed is not None:
            ctx &= allowed
        ctx[ci] = True
        n_ctx = int(ctx.sum())
        ext = hi - lo
        if n_ctx <= max_n or ci.numel() <= 1 or float(ext.max()) <= min_extent:
            if n_ctx > max_n:
                _log.warning("an encoder chunk needs %d Gaussians (max_gaussians_per_pass=%d): the receptive "
                             "field's halo alone exceeds the bound here", n_ctx, max_n)
            leaves.append((ci, ctx.nonzero().squeeze(1)))
            continue
        axis = int(ext.argmax())
        order = torch.argsort(p[:, axis], stable=True)
        half = ci.numel() // 2
        stack.append(ci[order[half:]])
        stack.append(ci[order[:half]])
    return leaves


def _light(g: GaussianArrays) -> GaussianArrays:
    """The fields the encoder reads (DC colour only), as views."""
    return GaussianArrays(g.means, g.sh[:, :1], g.opacities, g.log_scales, g.quats)


# ------------------------------------------------------------------------------- the encoder
class IncrementalEncoder:
    """Keeps the map's ``feat.*`` attributes equal to a full encode of the current map.

    Example::

        inc = IncrementalEncoder(model, gmap)
        inc.update()                 # first call: encodes everything
        gmap.apply_delta(new, removed_ids)
        res = inc.update()           # recomputes only what the change can reach
        res.updated_slots            # decode just these

    The model is run in eval mode (its mode is restored afterwards). Changing its weights in
    place is detected (parameter version counters) and triggers a full re-encode.
    """

    def __init__(self, model: ChorusEncoder, gmap, config: IncrementalConfig | None = None) -> None:
        if not isinstance(model, ChorusEncoder):
            raise InvalidInputError(f"IncrementalEncoder needs a ChorusEncoder, got {type(model).__name__}")
        self.map = gmap
        self.config = config if config is not None else IncrementalConfig()
        self.config.validate()
        self.base_model = model
        """The checkpoint's encoder (``model`` is it, or its rotation ensemble when ``rotations`` > 1)."""
        if int(self.config.rotations) > 1:
            from chorus_ros.core.encoder.ensemble import RotationEnsemble
            model = RotationEnsemble(model, int(self.config.rotations))
        self.model = model
        self._initialised = False
        self._version = 0
        self._params_seen: tuple | None = None
        self._engine = None
        self._cost_factor = float(self.config.cost_factor)
        self._full_unit: float | None = None     # CPU seconds per Gaussian of the last full pass
        if self.config.mode == "cached":
            from chorus_ros.core.encoder.cached import CachedUNet

            self._engine = CachedUNet(model, max_cells=int(self.config.max_gaussians_per_pass))

    # ------------------------------------------------------------------ properties
    @property
    def radius_m(self) -> float:
        """Halo radius used: the derived receptive field plus ``halo_margin`` (metres)."""
        return self.model.receptive_field_m + float(self.config.halo_margin)

    def attribute_names(self) -> dict[str, str]:
        """``{head or 'embedding'/'valid': map attribute name}`` written by this encoder."""
        p = self.config.attribute_prefix
        names = {h: p + h for h in self.model.config.head_dims()}
        if self.config.write_embedding:
            names["embedding"] = p + "embedding"
        names["valid"] = p + "valid"
        return names

    def reset(self) -> None:
        """Forget all state: the next :meth:`update` re-encodes the whole map."""
        self._initialised = False
        if self._engine is not None:
            self._engine.valid = False

    def cache_bytes(self) -> int:
        """Memory held by the activation caches ('cached' mode; 0 for 'halo')."""
        if self._engine is None:
            return 0
        return sum(v.numel() * v.element_size() for t in self._engine.tables for v in t.caches.values())

    # ------------------------------------------------------------------ public API
    def encode_full(self) -> EncodeResult:
        """Re-encode the whole map (chunked when larger than ``max_gaussians_per_pass``)."""
        t0 = time.perf_counter()
        with self.map.lock:
            _check_extent(self.model, self.map, self.map.config.block_size)
            d = self.map.take_dirty()
            return self._encode_all(d.from_version, d.to_version, t0, int(d.blocks.shape[0]))

    def update(self) -> EncodeResult:
        """Re-encode what changed since the last call (everything on the first call, after the
        map was replaced, or after the model's weights changed). Returns which slots were
        rewritten."""
        t0 = time.perf_counter()
        with self.map.lock:
            _check_extent(self.model, self.map, self.map.config.block_size)
            d = self.map.take_dirty()
            names = self.attribute_names()
            have = set(self.map.attribute_names())
            params = self._param_versions()
            if (d.full or not self._initialised or params != self._params_seen
                    or any(v not in have for v in names.values())):
                return self._encode_all(d.from_version, d.to_version, t0, int(d.blocks.shape[0]))
            n = len(self.map)
            g = self.map.arrays()
            blocks = d.blocks.to(g.means.device)
            never = (self.map.attribute(names["valid"]) == 0).nonzero().squeeze(1)
            if never.numel():
                blocks = torch.cat([blocks, self.map.block_of(g.means[never]).to(blocks.device)])
            if blocks.shape[0] == 0 or n == 0:
                return EncodeResult(torch.zeros(0, dtype=torch.int64), 0, False, d.from_version, d.to_version,
                                    time.perf_counter() - t0, 0, 0)
            if self.config.mode == "cached":
                affected = int(BlockIndex(blocks, d.block_size).near(
                    g.means, self.radius_m + 1e-3 * self.model.config.voxel_size).sum())
                estimate = self._cost_factor * affected / n
                if estimate > self.config.full_fraction:   # cheaper (and bounded) to start over
                    res = self._encode_all(d.from_version, d.to_version, t0, int(d.blocks.shape[0]))
                    res.stats.update(estimate=estimate, affected=float(affected))
                    return res
                tc = time.thread_time()
                res = self._update_cached(g, blocks, d, t0)
                self._learn_cost(time.thread_time() - tc, affected)
                res.stats.update(estimate=estimate, affected=float(affected))
                return res
            return self._update_halo(g, blocks, d, t0)

    # ------------------------------------------------------------------ internals
    @property
    def cost_factor(self) -> float:
        """Current estimate of the 'cached' path's cost per affected Gaussian relative to a full
        pass (starts at ``config.cost_factor``, refined by measurement)."""
        return self._cost_factor

    def _learn_cost(self, cpu_s: float, affected: int) -> None:
        """Refine :attr:`cost_factor` from a cached update's CPU time (only for updates large
        enough to time reliably; an exponential average, clamped to [1, 10])."""
        if self._full_unit is None or affected < 2000 or cpu_s < 0.05:
            return
        ratio = (cpu_s / affected) / self._full_unit
        self._cost_factor = min(10.0, max(1.0, 0.7 * self._cost_factor + 0.3 * ratio))

    def _param_versions(self) -> tuple:
        return tuple(p._version for p in self.model.parameters()) + (id(self.model),)

    def _write(self, slots: torch.Tensor, outs: EncoderOutput) -> None:
        for key, name in self.attribute_names().items():
            vals = torch.ones(slots.numel(), dtype=torch.uint8) if key == "valid" else \
                (outs.embedding if key == "embedding" else outs.heads[key])
            self.map.set_attribute(name, vals, slots.to(self.map.device))

    def _update_cached(self, g: GaussianArrays, blocks: torch.Tensor, d, t0: float) -> EncodeResult:
        tf = time.perf_counter()
        with self._eval():
            rows, outs, st = self._engine.run(g, blocks, d.block_size, int(self.config.max_gaussians_per_pass))
        stats = {"forward": time.perf_counter() - tf}
        tw = time.perf_counter()
        if rows.numel():
            self._write(rows, outs)
        stats["write"] = time.perf_counter() - tw
        stats.update({f"cells_{k}": float(v) for k, v in st.cells.items()})
        stats.update({f"cpu_{k}": v for k, v in st.seconds.items()})
        self._version = d.to_version
        return EncodeResult(rows.cpu(), st.gaussians_stem + st.gaussians_out, False, d.from_version, d.to_version,
                            time.perf_counter() - t0, 1, int(d.blocks.shape[0]), stats)

    def _update_halo(self, g: GaussianArrays, blocks: torch.Tensor, d, t0: float) -> EncodeResult:
        n = len(g)
        r = self.radius_m
        eps = 1e-3 * self.model.config.voxel_size
        tp = time.perf_counter()
        # candidates within 2R first, then the exact sets on the candidates only
        context = near_blocks(g.means, blocks, d.block_size, 2 * r + eps)
        n_ctx = int(context.sum())
        if n_ctx > self.config.full_fraction * n:
            return self._encode_all(d.from_version, d.to_version, t0, int(d.blocks.shape[0]))
        cidx = context.nonzero().squeeze(1)
        core = cidx[near_blocks(g.means[cidx], blocks, d.block_size, r + eps)]
        if n_ctx <= self.config.max_gaussians_per_pass:
            chunks = [(core, cidx)]
        else:
            chunks = plan_chunks(g.means, core, context, r + eps, int(self.config.max_gaussians_per_pass),
                                 min_extent=r)
        stats = {"plan": time.perf_counter() - tp}
        slots, outs, n_enc = self._run(g, chunks, stats)
        tw = time.perf_counter()
        if slots.numel():
            self._write(slots, outs)
        stats["write"] = time.perf_counter() - tw
        self._version = d.to_version
        return EncodeResult(slots.cpu(), n_enc, False, d.from_version, d.to_version,
                            time.perf_counter() - t0, len(chunks), int(d.blocks.shape[0]), stats)

    def _encode_all(self, from_version: int, to_version: int, t0: float, n_blocks: int) -> EncodeResult:
        names = self.attribute_names()
        n = len(self.map)
        g = self.map.arrays()
        stats: dict[str, float] = {}
        tc = time.thread_time()
        if self.config.mode == "cached":
            tf = time.perf_counter()
            with self._eval():
                self._engine.valid = False
                slots, outs, st = self._engine.run(g, None, 1.0, int(self.config.max_gaussians_per_pass))
            stats["forward"] = time.perf_counter() - tf
            n_enc, passes = n, 1
        else:
            tp = time.perf_counter()
            if n <= self.config.max_gaussians_per_pass:
                chunks = [(torch.arange(n, device=g.means.device),) * 2] if n else []
            else:
                chunks = plan_chunks(g.means, torch.arange(n, device=g.means.device), None,
                                     self.radius_m + 1e-3 * self.model.config.voxel_size,
                                     int(self.config.max_gaussians_per_pass), min_extent=self.radius_m)
            stats["plan"] = time.perf_counter() - tp
            slots, outs, n_enc = self._run(g, chunks, stats)
            passes = len(chunks)
        tw = time.perf_counter()
        dims = dict(self.model.config.head_dims(), embedding=self.model.config.embed_dim)
        for key, name in names.items():
            if key == "valid":
                self.map.set_attribute(name, torch.ones(n, dtype=torch.uint8))
                continue
            full = torch.zeros(n, dims[key], dtype=torch.float32, device=self.map.device)
            if slots.numel():
                src = outs.embedding if key == "embedding" else outs.heads[key]
                full[slots.to(full.device)] = src.to(full.device, torch.float32)
            self.map.set_attribute(name, full)
        stats["write"] = time.perf_counter() - tw
        if n >= 2000:
            self._full_unit = max(time.thread_time() - tc, 1e-9) / n
        self._initialised = True
        self._params_seen = self._param_versions()
        self._version = to_version
        return EncodeResult(torch.arange(n, dtype=torch.int64), n_enc, True, from_version, to_version,
                            time.perf_counter() - t0, passes, n_blocks, stats)

    def _eval(self):
        """Context manager: the model in eval mode and no autograd, mode restored afterwards."""
        model = self.model

        class _Ctx:
            def __enter__(self_inner):
                self_inner.was = model.training
                self_inner.ng = torch.no_grad()
                self_inner.ng.__enter__()
                model.eval()  # the locality argument needs per-voxel (inference-mode) norms

            def __exit__(self_inner, *exc):
                model.train(self_inner.was)
                self_inner.ng.__exit__(*exc)
                return False

        return _Ctx()

    def _run(self, g: GaussianArrays, chunks, stats: dict[str, float]):
        """Encode each (core, context) chunk; returns (core slots, their outputs, n encoded)."""
        light = _light(g)
        slots, embs, heads = [], [], {k: [] for k in self.model.config.head_dims()}
        n_enc = 0
        tf = time.perf_counter()
        with self._eval():
            for core, ctx in chunks:
                sub = light.index(ctx) if ctx.numel() != len(g) else light
                out: EncoderOutput = self.model(sub)
                pos = torch.searchsorted(ctx, core).to(out.embedding.device)
                slots.append(core)
                embs.append(out.embedding[pos])
                for k in heads:
                    heads[k].append(out.heads[k][pos])
                n_enc += int(ctx.numel())
        stats["forward"] = time.perf_counter() - tf
        if not slots:
            d = self.model.config.embed_dim
            return (torch.zeros(0, dtype=torch.int64),
                    EncoderOutput(torch.zeros(0, d), {k: torch.zeros(0, v) for k, v in self.model.config.head_dims().items()}),
                    0)
        return (torch.cat(slots), EncoderOutput(torch.cat(embs), {k: torch.cat(v) for k, v in heads.items()}), n_enc)
