"""Cached, region-wise evaluation of the :class:`ChorusEncoder` U-Net for incremental encoding.

Re-encoding a change from scratch needs, for *every* layer, the whole context within twice the
receptive field ``R`` of the change (the outputs within ``R`` change, and they read inputs
within ``R`` of themselves). :class:`CachedUNet` instead keeps the map's activations at every
stage boundary of the U-Net -- per level ``l``: the level's input ``x_l``, the skip ``e_l``
(after the encoder blocks) and the level's output ``o_l`` -- in per-level cell tables with
stable slots. After a change, each stage recomputes only the cells whose value can change
(within that tensor's own dependency reach of the dirty blocks, derived from the modules by
:func:`~chorus_ros.core.encoder.model.tensor_intervals`), reading its inputs from the caches
within the stage's small halo (two cells per residual block). Early layers touch a thin band
around the change, and no layer needs the ``2R`` context. Results equal the model's own
forward pass up to float32 rounding (tested to 1e-4 in ``test/core/test_incremental.py``).

The convolutions inside residual blocks run through spconv on the region's cells; the stride-2
down/up convolutions (kernel 2, no padding) are evaluated here directly: a coarse cell ``C``
sums ``W[k] @ e[2C + k]`` over its children ``k in {0,1}^3``, and a fine cell ``2C + k`` reads
``W_up[k] @ o[C]`` -- spconv's convention (KRSC weights, tested against the model's forward).

Memory: the caches hold ``sum_l |cells_l| * 3 * channels_l`` floats (about 0.6 KB per occupied
5 cm voxel with the default channels); every stage splits regions larger than ``max_cells`` into
chunks with halos, so a full pass never holds more than one chunk's activations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from chorus_ros.core.encoder._spconv_compat import import_spconv
from chorus_ros.core.encoder.features import _decode_keys, encode_keys, lookup_keys, voxelize
from chorus_ros.core.encoder.model import (
    ChorusEncoder, EncoderOutput, _blocks_interval, _Stage, interpolate_voxel_features, tensor_intervals,
)
from chorus_ros.core.gaussians import GaussianArrays

__all__ = ["CachedUNet", "CachedStats"]


def _range_positions(keys: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Sorted unique positions in ``keys`` (sorted, from :func:`encode_keys`) of the cells whose
    coords lie in any box ``[lo_b, hi_b]`` (inclusive, ``[B, 3]``). Keys are ordered by (x, y, z),
    so each (x, y) column of a box is one contiguous key range."""
    if keys.numel() == 0 or lo.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=keys.device)
    ext = hi - lo + 1
    nx, ny = int(ext[:, 0].max()), int(ext[:, 1].max())
    ax = lo[:, None, 0] + torch.arange(nx, device=lo.device)[None]  # [B, nx]
    ay = lo[:, None, 1] + torch.arange(ny, device=lo.device)[None]  # [B, ny]
    ok = (ax[:, :, None] <= hi[:, None, None, 0]) & (ay[:, None, :] <= hi[:, None, None, 1])
    x = ax[:, :, None].expand(-1, -1, ny)[ok]
    y = ay[:, None, :].expand(-1, nx, -1)[ok]
    b = torch.arange(lo.shape[0], device=lo.device)[:, None, None].expand(-1, nx, ny)[ok]
    klo = encode_keys(torch.stack([x, y, lo[b, 2]], 1))
    khi = encode_keys(torch.stack([x, y, hi[b, 2]], 1))
    start = torch.searchsorted(keys, klo)
    end = torch.searchsorted(keys, khi, right=True)
    lens = (end - start).clamp_min(0)
    total = int(lens.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=keys.device)
    offs = torch.repeat_interleave(start - (torch.cumsum(lens, 0) - lens), lens)
    return torch.unique(offs + torch.arange(total, device=keys.device))


class _LevelTable:
    """Occupied cells of one level: sorted keys -> stable slots; per-slot feature caches."""

    def __init__(self, level: int, device: torch.device) -> None:
        self.level = level
        self.device = device
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)
        self.slots = torch.zeros(0, dtype=torch.int64, device=device)
        self.coords = torch.zeros(0, 3, dtype=torch.int64, device=device)
        self.alive = torch.zeros(0, dtype=torch.bool, device=device)
        self.caches: dict[str, torch.Tensor] = {}

    @property
    def cap(self) -> int:
        return int(self.alive.shape[0])

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self.cap, 1024)
        extra = cap - self.cap
        self.coords = torch.cat([self.coords, self.coords.new_zeros(extra, 3)])
        self.alive = torch.cat([self.alive, self.alive.new_zeros(extra)])
        for k, v in self.caches.items():
            self.caches[k] = torch.cat([v, v.new_zeros(extra, v.shape[1])])

    def sync(self, new_keys: torch.Tensor) -> None:
        """Make the occupied cells exactly ``new_keys`` (sorted, unique); surviving cells keep
        their slot (and cached features), new cells get free slots."""
        pos = torch.searchsorted(self.keys, new_keys).clamp_max(max(self.keys.numel() - 1, 0))
        found = (self.keys[pos] == new_keys) if self.keys.numel() else torch.zeros_like(new_keys, dtype=torch.bool)
        slots = torch.where(found, self.slots[pos] if self.keys.numel() else torch.zeros_like(new_keys),
                            torch.full_like(new_keys, -1))
        keep = torch.zeros(self.cap, dtype=torch.bool, device=self.device)
        keep[slots[found]] = True
        self.alive &= keep
        n_add = int((~found).sum())
        if n_add:
            free = (~self.alive).nonzero().squeeze(1)
            if free.numel() < n_add:
                self._grow(self.cap + n_add - free.numel())
                free = (~self.alive).nonzero().squeeze(1)
            new_slots = free[:n_add]
            slots[~found] = new_slots
            self.alive[new_slots] = True
            self.coords[new_slots] = _decode_keys(new_keys[~found])[0]
        self.keys, self.slots = new_keys, slots

    def apply(self, removed: torch.Tensor, added: torch.Tensor) -> None:
        """Remove the (occupied) cells ``removed`` and add the (new) cells ``added``; both sorted
        unique key lists. O(cells) array work, no sort of the whole table."""
        if removed.numel():
            pos = torch.searchsorted(self.keys, removed)
            self.alive[self.slots[pos]] = False
            keep = torch.ones(self.keys.numel(), dtype=torch.bool, device=self.device)
            keep[pos] = False
            self.keys, self.slots = self.keys[keep], self.slots[keep]
        if added.numel():
            free = (~self.alive).nonzero().squeeze(1)
            if free.numel() < added.numel():
                self._grow(self.cap + added.numel() - free.numel())
                free = (~self.alive).nonzero().squeeze(1)
            new_slots = free[:added.numel()]
            self.alive[new_slots] = True
            self.coords[new_slots] = _decode_keys(added)[0]
            ins = torch.searchsorted(self.keys, added) + torch.arange(added.numel(), device=self.device)
            total = self.keys.numel() + added.numel()
            is_new = torch.zeros(total, dtype=torch.bool, device=self.device)
            is_new[ins] = True
            keys = torch.empty(total, dtype=torch.int64, device=self.device)
            slots = torch.empty(total, dtype=torch.int64, device=self.device)
            keys[ins], slots[ins] = added, new_slots
            keys[~is_new], slots[~is_new] = self.keys, self.slots
            self.keys, self.slots = keys, slots

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Slot of each key, -1 where the cell is not occupied."""
        pos = lookup_keys(self.keys, keys)
        return torch.where(pos >= 0, self.slots[pos.clamp_min(0)], pos)

    def cache(self, name: str, dim: int) -> torch.Tensor:
        t = self.caches.get(name)
        if t is None or t.shape[1] != dim:
            t = torch.zeros(self.cap, dim, device=self.device)
            self.caches[name] = t
        return t


class _SlotGrid:
    """Duck-typed stand-in for a Voxelization in :func:`interpolate_voxel_features`: looks up
    level-0 slots, so features can be read straight from a cache."""

    def __init__(self, table: _LevelTable, voxel_size: float) -> None:
        self.table = table
        self.voxel_size = voxel_size

    def lookup(self, coords: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        return self.table.lookup(encode_keys(coords))


class _Region:
    """Candidate cells of one level near the change (slots and keys in sorted-key order) and a
    :class:`BlockIndex` of the dirty blocks to select those within a radius; ``index=None``
    means everything (a full pass)."""

    def __init__(self, slots: torch.Tensor, keys: torch.Tensor, centres: torch.Tensor | None = None,
                 half: float = 0.0, index=None) -> None:
        self.slots, self.keys, self.centres, self.half, self.index = slots, keys, centres, half, index
        self._memo: dict[float, torch.Tensor] = {}

    def mask(self, radius: float) -> torch.Tensor:
        """Cells whose box is within L-infinity ``radius`` of the dirty blocks."""
        if self.index is None:
            return torch.ones(self.slots.numel(), dtype=torch.bool, device=self.slots.device)
        m = self._memo.get(radius)
        if m is None:
            m = self.index.near(self.centres, radius + self.half)
            self._memo[radius] = m
        return m

    def within(self, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask(radius)
        return self.slots[m], self.keys[m]


@dataclass
class CachedStats:
    """Work done by one :meth:`CachedUNet.run` (cells recomputed per level, Gaussians)."""

    cells: dict[str, int] = field(default_factory=dict)
    gaussians_stem: int = 0
    gaussians_out: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds (this thread) per phase: 'tables', 'regions', 'stem', 'encoder', 'decoder', 'outputs'."""

    def tick(self, name: str, since: float) -> float:
        now = time.thread_time()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since
        return now


class CachedUNet:
    """Per-level activation caches of ``model`` over a whole map; see the module docstring."""

    def __init__(self, model: ChorusEncoder, max_cells: int = 300_000) -> None:
        self.model = model
        cfg = model.config
        self.vs = float(cfg.voxel_size)
        self.levels = cfg.levels
        self.max_cells = int(max_cells)
        self.device = next(model.parameters()).device
        self.tables = [_LevelTable(l, self.device) for l in range(self.levels)]
        self.stages: list[_Stage] = []
        st: _Stage | None = model.unet
        while st is not None:
            self.stages.append(st)
            st = st.child
        self.n0 = model.variant.neighbourhood_voxels
        # reach (metres) of each cached tensor: a cell can change only if its box is within this
        # L-inf distance of a changed Gaussian
        self.reach: dict[tuple[str, int], float] = {}
        for (name, l), (lo, hi) in tensor_intervals(model).items():
            ext = max(max(-v for v in lo), max(v + 1 - 2 ** l for v in hi), 0)
            self.reach[(name, l)] = ext * self.vs
        self.out_reach = model.receptive_field.metres
        self.eps = 1e-3 * self.vs
        self.valid = False

    # ------------------------------------------------------------------ helpers
    def cell_size(self, level: int) -> float:
        return self.vs * 2 ** level

    def _blocks_halo(self, blocks, level: int) -> float:
        """Metres of input needed around a region to evaluate ``blocks`` on it."""
        lo, hi = _blocks_interval(blocks, ([0] * 3, [0] * 3), 2 ** level)
        return max(max(-v for v in lo), max(hi)) * self.vs

    def _centres(self, table: _LevelTable, slots: torch.Tensor) -> torch.Tensor:
        return (table.coords[slots].double() + 0.5) * self.cell_size(table.level)

    def _run_blocks(self, blocks, table: _LevelTable, in_slots: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Residual blocks on the cells ``in_slots`` (features ``feats``); rows follow ``in_slots``.
        Only cells at least the blocks' halo inside the set come out exact."""
        if len(blocks) == 0:
            return feats
        sp = import_spconv()
        coords = table.coords[in_slots]
        local = coords - coords.min(0).values
        shape = [int(v) + 1 for v in local.max(0).values]
        idx = torch.cat([torch.zeros_like(local[:, :1]), local], 1).to(torch.int32)
        x = sp.SparseConvTensor(feats, idx, shape, 1)
        for b in blocks:
            x = b(x)
        return x.features

    def _chunks(self, table: _LevelTable, region: _Region, out_r: float, halo: float):
        """Yield (out_slots, in_slots) with in_slots = cells within ``halo`` of the output cells,
        split spatially so that no chunk has more than ``max_cells`` input cells."""
        from chorus_ros.core.encoder.incremental import plan_chunks

        out_s, out_k = region.within(out_r + self.eps)
        in_s, in_k = region.within(out_r + halo + self.eps)
        if out_s.numel() == 0:
            return
        if in_s.numel() <= self.max_cells:
            yield out_s, in_s
            return
        centres = self._centres(table, in_s).float()
        core = torch.searchsorted(in_k, out_k)
        for c_rows, ctx_rows in plan_chunks(centres, core, None, halo + self.cell_size(table.level) / 2 + self.eps,
                                            self.max_cells, min_extent=max(halo, self.cell_size(table.level))):
            yield in_s[torch.sort(c_rows).values], in_s[ctx_rows]

    @staticmethod
    def _positions(keys_all: torch.Tensor, slots: torch.Tensor, table: _LevelTable) -> torch.Tensor:
        """Rows of the cells ``slots`` within the sorted keys ``keys_all`` of a superset."""
        return torch.searchsorted(keys_all, encode_keys(table.coords[slots]))

    # ------------------------------------------------------------------ the run
    def run(self, g: GaussianArrays, blocks: torch.Tensor | None, block_size: float,
            max_gaussians: int | None = None) -> tuple[torch.Tensor, EncoderOutput, CachedStats]:
        """Bring the caches up to date with the map ``g`` (all Gaussians, light fields) after the
        Gaussians in ``blocks`` (``[B, 3]``, block edge ``block_size``) changed, or everything
        when ``blocks`` is None. Returns (rows of ``g`` whose outputs may have changed, their
        outputs, stats)."""
        model = self.model
        stats = CachedStats()
        full = blocks is None or not self.valid
        means = g.means.to(self.device).float()
        n = means.shape[0]
        tick = time.thread_time()
        if full:
            # ---- occupied cells of every level, from scratch; fresh tables, so that the caches
            # of a once much larger map are released (a full pass recomputes every cache anyway)
            self.tables = [_LevelTable(l, self.device) for l in range(self.levels)]
            keys = torch.unique(encode_keys(torch.floor(means / self.vs).to(torch.int64)))
            for l, t in enumerate(self.tables):
                if l:
                    keys = torch.unique(encode_keys(torch.div(_decode_keys(keys)[0], 2, rounding_mode="floor")))
                t.sync(keys)
            tick = stats.tick("tables", tick)
            regions = [_Region(t.slots, t.keys, torch.zeros(t.slots.numel(), dtype=torch.float64, device=self.device))
                       for t in self.tables]
            gcand = torch.arange(n, device=self.device)
            gnear = lambda r: torch.ones(n, dtype=torch.bool, device=self.device)  # noqa: E731
        else:
            from chorus_ros.core.encoder.incremental import BlockIndex

            blocks = blocks.to(self.device)
            # one query on the Gaussians covers every level: a cell within r of the change holds
            # only Gaussians within r + its size
            r_g = max([self.out_reach + (self.n0 + 2) * self.vs]
                      + [self._region_radius(l) + self.cell_size(l) for l in range(self.levels)]) + self.eps
            gcand = BlockIndex(blocks, block_size).near(means, r_g).nonzero().squeeze(1)
            gvox = torch.floor(means[gcand] / self.vs).to(torch.int64)
            index = BlockIndex(blocks, block_size)
            self._update_tables(blocks, block_size, gvox, index)
            tick = stats.tick("tables", tick)
            gnear = lambda r: index.near(means[gcand], r)  # noqa: E731
            regions = []
            ckeys = torch.unique(encode_keys(gvox))
            for l, t in enumerate(self.tables):
                if l:
                    ckeys = torch.unique(encode_keys(torch.div(_decode_keys(ckeys)[0], 2, rounding_mode="floor")))
                cslots = t.lookup(ckeys)
                assert bool((cslots >= 0).all()), "candidate cell missing from its table"
                centres = (_decode_keys(ckeys)[0].double() + 0.5) * self.cell_size(l)
                reg = _Region(cslots, ckeys, centres, self.cell_size(l) / 2, index)
                near = reg.mask(self._region_radius(l))
                regions.append(_Region(cslots[near], ckeys[near], centres[near], self.cell_size(l) / 2, index))
        light = GaussianArrays(means, g.sh[:, :1].to(self.device), g.opacities.to(self.device),
                               g.log_scales.to(self.device), g.quats.to(self.device))
        t0 = self.tables[0]
        c0 = model.config.channels[0]
        tick = stats.tick("regions", tick)
        # ---- stem: x_0 of the voxels whose Gaussians may have changed
        r_x0 = self.reach[("x", 0)]
        s_x0, k_x0 = regions[0].within(r_x0 + self.eps)
        if s_x0.numel():
            sel = gcand[gnear(r_x0 + (self.n0 + 1) * self.vs + self.eps)]
            sub = light.index(sel)
            vox = voxelize(sub.means, self.vs)
            x = model.voxel_stem(model.point_features(sub, vox), vox)
            want = torch.isin(vox.keys, k_x0)
            slots = t0.lookup(vox.keys[want])
            assert slots.numel() == s_x0.numel() and bool((slots >= 0).all()), "stem region incomplete"
            t0.cache("x", c0)[slots] = x[want]
            stats.gaussians_stem = int(sel.numel())
            stats.cells["x0"] = int(s_x0.numel())
        tick = stats.tick("stem", tick)
        # ---- encoder path
        for l, stage in enumerate(self.stages):
            t = self.tables[l]
            c = model.config.channels[l]
            xs = t.cache("x", c)
            es = t.cache("e", c)
            halo = self._blocks_halo(stage.enc, l)
            for out_s, in_s in self._chunks(t, regions[l], self.reach[("e", l)], halo):
                y = self._run_blocks(stage.enc, t, in_s, xs[in_s])
                pos = self._positions(encode_keys(t.coords[in_s]), out_s, t)
                es[out_s] = y[pos]
                stats.cells[f"e{l}"] = stats.cells.get(f"e{l}", 0) + int(out_s.numel())
            if stage.child is not None:
                self._down(stage, l, regions, stats)
        tick = stats.tick("encoder", tick)
        # ---- decoder path (bottleneck output = its encoder output)
        last = self.levels - 1
        tl = self.tables[last]
        cl = model.config.channels[last]
        s_o, _ = regions[last].within(self.reach[("o", last)] + self.eps)
        tl.cache("o", cl)[s_o] = tl.cache("e", cl)[s_o]
        for l in range(last - 1, -1, -1):
            self._up(self.stages[l], l, regions, stats)
        tick = stats.tick("decoder", tick)
        # ---- per-Gaussian outputs
        r_out = self.out_reach
        rows = gcand[gnear(r_out + self.eps)]
        pool = gcand[gnear(r_out + (self.n0 + 1) * self.vs + self.eps)] if self.n0 else rows
        out = self._outputs(light, rows, pool, max_gaussians)
        stats.gaussians_out = int(rows.numel())
        stats.tick("outputs", tick)
        self.valid = True
        return rows, out, stats

    def _region_radius(self, l: int) -> float:
        """Largest distance from the change at which a level-``l`` cell is read or written."""
        return max(v for (name, lv), v in self.reach.items() if lv == l) + self._level_halo(l) + \
            2 * self.cell_size(l + 1 if l + 1 < self.levels else l)

    def _update_tables(self, blocks: torch.Tensor, block_size: float, gvox: torch.Tensor, index) -> None:
        """Incremental table update: only voxels near the dirty blocks can appear or vanish.

        ``gvox``: [k, 3] voxel coords of (at least) every Gaussian within a few voxels of the
        blocks. Q = voxels within one voxel of a dirty block's voxel range; old cells in Q come
        from range queries on the sorted keys, current ones from ``gvox``."""
        vs = self.vs
        # Q: voxels whose centre is within 1.5 voxels of a dirty block (every voxel that meets a
        # block has its centre within half a voxel). Old cells in Q: a range query on the sorted
        # keys (expanded voxel ranges of the blocks) filtered by the same test as the Gaussians.
        lo = torch.floor(blocks.double() * block_size / vs).to(torch.int64) - 2
        hi = torch.floor((blocks.double() + 1) * block_size / vs).to(torch.int64) + 2
        t0 = self.tables[0]
        old_q = t0.keys[_range_positions(t0.keys, lo, hi)]
        old_q = old_q[index.near((_decode_keys(old_q)[0].double() + 0.5) * vs, 1.5 * vs)]
        gv = torch.unique(encode_keys(gvox))
        new_q = gv[index.near((_decode_keys(gv)[0].double() + 0.5) * vs, 1.5 * vs)]
        removed = old_q[~torch.isin(old_q, new_q)]
        added = new_q[~torch.isin(new_q, old_q)]
        t0.apply(removed, added)
        for l in range(1, self.levels):
            fine, t = self.tables[l - 1], self.tables[l]
            changed = torch.cat([removed, added])
            if changed.numel() == 0:
                break
            parents = torch.unique(encode_keys(torch.div(_decode_keys(changed)[0], 2, rounding_mode="floor")))
            pc = _decode_keys(parents)[0]
            alive = torch.zeros(parents.numel(), dtype=torch.bool, device=parents.device)
            for k in range(8):
                off = torch.tensor([(k >> 2) & 1, (k >> 1) & 1, k & 1], device=pc.device)
                alive |= fine.lookup(encode_keys(2 * pc + off)) >= 0
            existed = t.lookup(parents) >= 0
            removed, added = parents[existed & ~alive], parents[~existed & alive]
            t.apply(removed, added)

    def _level_halo(self, l: int) -> float:
        st = self.stages[l]
        return max(self._blocks_halo(st.enc, l), self._blocks_halo(st.dec, l))

    def _down(self, stage: _Stage, l: int, regions: list[_Region], stats: CachedStats) -> None:
        """x_{l+1} = act(norm(sum_k W[k] e_l[2C + k])) on the coarse cells that may change."""
        tf, tc = self.tables[l], self.tables[l + 1]
        c, cn = self.model.config.channels[l], self.model.config.channels[l + 1]
        r = self.reach[("x", l + 1)]
        s_c, k_c = regions[l + 1].within(r + self.eps)
        if s_c.numel() == 0:
            return
        # children lie inside their parent's box: within r + the parent's size of the change
        cand, _ = regions[l].within(r + self.cell_size(l + 1) + self.eps)
        fc = tf.coords[cand]
        parent = torch.div(fc, 2, rounding_mode="floor")
        pk = encode_keys(parent)
        keep = torch.isin(pk, k_c)
        cand, fc, parent, pk = cand[keep], fc[keep], parent[keep], pk[keep]
        pos = torch.searchsorted(k_c, pk)
        kidx = ((fc - 2 * parent) * torch.tensor([4, 2, 1], device=fc.device)).sum(1)
        w = stage.down.weight.reshape(cn, 8, c)
        e = tf.cache("e", c)[cand]
        acc = e.new_zeros(s_c.numel(), cn)
        for k in range(8):
            m = kidx == k
            if bool(m.any()):
                acc.index_add_(0, pos[m], e[m] @ w[:, k].T)
        tc.cache("x", cn)[s_c] = F.gelu(stage.down_norm(acc))
        stats.cells[f"x{l + 1}"] = int(s_c.numel())

    def _up(self, stage: _Stage, l: int, regions: list[_Region], stats: CachedStats) -> None:
        """o_l = dec(act(norm(merge(e_l, act(norm(W_up[k] o_{l+1}[parent])))))) where it may change."""
        t, tc = self.tables[l], self.tables[l + 1]
        c, cn = self.model.config.channels[l], self.model.config.channels[l + 1]
        e_cache, oc = t.cache("e", c), tc.cache("o", cn)
        o_cache = t.cache("o", c)
        w = stage.up.weight.reshape(c, 8, cn)
        halo = self._blocks_halo(stage.dec, l)
        for out_s, in_s in self._chunks(t, regions[l], self.reach[("o", l)], halo):
            fc = t.coords[in_s]
            parent = torch.div(fc, 2, rounding_mode="floor")
            ps = tc.lookup(encode_keys(parent))
            assert bool((ps >= 0).all()), "a fine cell without a parent cell"
            kidx = ((fc - 2 * parent) * torch.tensor([4, 2, 1], device=fc.device)).sum(1)
            src = oc[ps]
            u = src.new_zeros(in_s.numel(), c)
            for k in range(8):
                m = kidx == k
                if bool(m.any()):
                    u[m] = src[m] @ w[:, k].T
            u = F.gelu(stage.up_norm(u))
            mrg = F.gelu(stage.merge_norm(stage.merge(torch.cat([e_cache[in_s], u], 1))))
            y = self._run_blocks(stage.dec, t, in_s, mrg)
            pos = self._positions(encode_keys(fc), out_s, t)
            o_cache[out_s] = y[pos]
            stats.cells[f"o{l}"] = stats.cells.get(f"o{l}", 0) + int(out_s.numel())

    def _outputs(self, light: GaussianArrays, rows: torch.Tensor, pool: torch.Tensor,
                 max_gaussians: int | None) -> EncoderOutput:
        """Per-Gaussian outputs of ``rows`` from the level-0 output cache."""
        from chorus_ros.core.encoder.incremental import plan_chunks

        model = self.model
        c0 = model.config.channels[0]
        grid = _SlotGrid(self.tables[0], self.vs)
        o0 = self.tables[0].cache("o", c0)
        embs, heads = [], {k: [] for k in model.config.head_dims()}
        if rows.numel() == 0:
            return EncoderOutput(torch.zeros(0, model.config.embed_dim, device=self.device),
                                 {k: torch.zeros(0, d, device=self.device) for k, d in model.config.head_dims().items()})
        halo = (self.n0 + 1) * self.vs if self.n0 else 0.0
        limit = max_gaussians or self.max_cells
        if self.n0 == 0:
            parts = [rows[i:i + limit] for i in range(0, rows.numel(), limit)]
            plan = [(p, p) for p in parts]
        else:  # the input encoding reads neighbouring voxels: give each chunk a halo of Gaussians
            pool = torch.sort(pool).values
            if pool.numel() <= limit:
                plan = [(rows, pool)]
            else:
                core = torch.searchsorted(pool, rows)
                plan = [(pool[cr], pool[cx]) for cr, cx in
                        plan_chunks(light.means[pool], core, None, halo + self.eps, limit, min_extent=halo)]
        order = []
        for core, ctx in plan:
            ctx = torch.sort(ctx).values
            sub = light.index(ctx)
            vox = voxelize(sub.means, self.vs)
            h = model.point_features(sub, vox)
            pos = torch.searchsorted(ctx, core)
            h = h[pos]
            interp = interpolate_voxel_features(o0, grid, light.means[core])
            emb, hd = model.gaussian_head(interp, h)
            embs.append(emb)
            for k in heads:
                heads[k].append(hd[k])
            order.append(core)
        if len(order) == 1:
            return EncoderOutput(embs[0], {k: v[0] for k, v in heads.items()})
        got = torch.cat(order)
        perm = torch.argsort(got)
        # callers index by ``rows`` (sorted): reorder the chunked results to match
        assert torch.equal(got[perm], torch.sort(rows).values)
        emb = torch.cat(embs)[perm]
        return EncoderOutput(emb, {k: torch.cat(v)[perm] for k, v in heads.items()})
