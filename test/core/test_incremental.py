"""Incremental encoding: region queries against brute force, chunk plans, and the contract that
matters -- after any sequence of map deltas the incremental features equal a full encode of the
final map (1e-4), and a block-by-block full encode equals a single pass."""
from __future__ import annotations

import pytest
import torch

from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
from chorus_ros.core.encoder import incremental as inc_mod
from chorus_ros.core.encoder.incremental import IncrementalConfig, IncrementalEncoder, near_blocks, plan_chunks
from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.map import GaussianMap, MapConfig

# 2.5 cm voxels: the receptive field (24 voxels) is 0.625 m, small against the 10 m test maps
TINY = dict(voxel_size=0.025, channels=(8, 8, 8), point_hidden=8, head_hidden=16, embed_dim=8,
            heads=[HeadSpec("language", 6), HeadSpec("generalist", 5), HeadSpec("object", 4)])
TOL = 1e-4


def _model(seed: int = 0) -> ChorusEncoder:
    torch.manual_seed(seed)
    m = ChorusEncoder(EncoderConfig(**TINY)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger weights than the default init: every path carries signal
        for p in m.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return m


def _surface(n: int, lo, hi, seed: int, id0: int) -> GaussianArrays:
    """Gaussians on a floor (z=0) and a wall (y=lo_y) inside the box [lo, hi] (x, y ranges)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
    xy = lo + (hi - lo) * torch.rand(n, 2, generator=gen)
    wall = torch.rand(n, generator=gen) < 0.3
    z = torch.where(wall, 1.2 * torch.rand(n, generator=gen), 0.004 * torch.randn(n, generator=gen))
    y = torch.where(wall, lo[1] + 0.004 * torch.randn(n, generator=gen), xy[:, 1])
    means = torch.stack([xy[:, 0], y, z], 1)
    return GaussianArrays(means, torch.randn(n, 1, 3, generator=gen), torch.randn(n, generator=gen),
                          torch.log(0.01 + 0.03 * torch.rand(n, 3, generator=gen)), torch.randn(n, 4, generator=gen),
                          torch.arange(id0, id0 + n, dtype=torch.int64))


def _dense(x0: float, x1: float, y0: float, y1: float, seed: int, id0: int, wall: bool = True,
           pitch: float = 0.025) -> GaussianArrays:
    """One Gaussian per 2.5 cm cell (jittered) on a floor strip and a 0.3 m wall along y = y0:
    every voxel is occupied, so changes propagate as far as the receptive field allows."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.arange(x0 + pitch / 2, x1, pitch)
    ys = torch.arange(y0 + pitch / 2, y1, pitch)
    fx, fy = torch.meshgrid(xs, ys, indexing="ij")
    pts = [torch.stack([fx.flatten(), fy.flatten(), torch.zeros(fx.numel())], 1)]
    if wall:
        zs = torch.arange(pitch / 2, 0.3, pitch)
        wx, wz = torch.meshgrid(xs, zs, indexing="ij")
        pts.append(torch.stack([wx.flatten(), torch.full((wx.numel(),), y0 + 0.001), wz.flatten()], 1))
    means = torch.cat(pts)
    means = means + (torch.rand(means.shape, generator=gen) - 0.5) * 0.6 * pitch
    n = means.shape[0]
    return GaussianArrays(means, torch.randn(n, 1, 3, generator=gen), torch.randn(n, generator=gen),
                          torch.log(0.005 + 0.02 * torch.rand(n, 3, generator=gen)), torch.randn(n, 4, generator=gen),
                          torch.arange(id0, id0 + n, dtype=torch.int64))


def _full_by_id(model: ChorusEncoder, gmap: GaussianMap) -> dict[str, torch.Tensor]:
    """Reference: one full forward pass of the map's current Gaussians."""
    g = gmap.arrays()
    with torch.no_grad():
        out = model(GaussianArrays(g.means.clone(), g.sh.clone(), g.opacities.clone(), g.log_scales.clone(),
                                   g.quats.clone()))
    return dict(out.heads, embedding=out.embedding)


def _assert_tables_exact(enc: IncrementalEncoder, gmap: GaussianMap) -> None:
    """The cached engine's incrementally maintained cell tables equal tables built from scratch."""
    from chorus_ros.core.encoder.features import _decode_keys, encode_keys
    eng = enc._engine
    if eng is None:
        return
    keys = torch.unique(encode_keys(torch.floor(gmap.arrays().means / eng.vs).to(torch.int64)))
    for lvl, t in enumerate(eng.tables):
        if lvl:
            keys = torch.unique(encode_keys(torch.div(_decode_keys(keys)[0], 2, rounding_mode="floor")))
        assert torch.equal(t.keys, keys), lvl
        assert torch.equal(encode_keys(t.coords[t.slots]), keys) and bool(t.alive[t.slots].all())
        assert int(t.alive.sum()) == keys.numel()


def _assert_matches_full(model, gmap, names=("language", "generalist", "object"), enc=None):
    if enc is not None:
        _assert_tables_exact(enc, gmap)
    ref = _full_by_id(model, gmap)
    for h in names:
        got = gmap.attribute(f"feat.{h}")
        err = (got - ref[h]).abs().max().item()
        assert err <= TOL, (h, err)
    assert bool((gmap.attribute("feat.valid") == 1).all())


# ----------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("radius", [0.0, 0.3, 1.7])
def test_near_blocks_matches_brute_force(radius, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    means = (torch.rand(3000, 3, generator=gen) - 0.5) * 12
    blocks = torch.randint(-6, 6, (40, 3), generator=gen)
    bs = 0.5
    lo, hi = blocks * bs, (blocks + 1) * bs
    # L-inf distance from each point to each block box
    d = torch.maximum(lo[None] - means[:, None], means[:, None] - hi[None]).clamp(min=0).max(-1).values
    ref = (d <= radius).any(1)
    got = near_blocks(means, blocks, bs, radius)
    # points exactly on a box's far face count as near (half-open boxes, closed query cube)
    assert torch.equal(got, ref)
    monkeypatch.setattr(inc_mod, "_GRID_LIMIT", 10)  # force the chunked scan
    assert torch.equal(near_blocks(means, blocks, bs, radius), ref)
    assert not near_blocks(means, blocks[:0], bs, radius).any()


def test_plan_chunks_partitions_the_core_and_covers_halos():
    gen = torch.Generator().manual_seed(2)
    means = torch.rand(5000, 3, generator=gen) * torch.tensor([10.0, 6.0, 1.0])
    core = torch.arange(0, 5000, 2)
    allowed = torch.ones(5000, dtype=torch.bool)
    allowed[1::4] = False
    r = 0.7
    chunks = plan_chunks(means, core, allowed, r, max_n=1200, min_extent=r)
    assert len(chunks) > 2
    got = torch.sort(torch.cat([c for c, _ in chunks])).values
    assert torch.equal(got, core)  # every core row exactly once
    for c, ctx in chunks:
        assert ctx.numel() <= 1200
        assert torch.equal(ctx, torch.sort(ctx).values)
        assert bool(torch.isin(c, ctx).all())
        # every allowed Gaussian within r of a core Gaussian is in the context
        need = ((means[None] - means[c][:, None]).abs().max(-1).values <= r).any(0) & allowed
        assert bool(torch.isin(need.nonzero().squeeze(1), ctx).all())


def test_range_positions_match_brute_force():
    from chorus_ros.core.encoder.cached import _range_positions
    from chorus_ros.core.encoder.features import encode_keys
    gen = torch.Generator().manual_seed(3)
    coords = torch.unique(torch.randint(-20, 20, (3000, 3), generator=gen), dim=0)
    keys = torch.sort(encode_keys(coords)).values
    from chorus_ros.core.encoder.features import _decode_keys
    c = _decode_keys(keys)[0]
    lo = torch.tensor([[-5, -3, 0], [2, 2, -10], [-20, 5, 5]])
    hi = torch.tensor([[0, 4, 6], [9, 3, 10], [-15, 9, 5]])
    ref = ((c[:, None] >= lo[None]) & (c[:, None] <= hi[None])).all(-1).any(1).nonzero().squeeze(1)
    assert torch.equal(_range_positions(keys, lo, hi), ref)


def test_config_validation():
    with pytest.raises(InvalidInputError, match="max_gaussians_per_pass"):
        IncrementalConfig(max_gaussians_per_pass=0)
    with pytest.raises(InvalidInputError, match="full_fraction"):
        IncrementalConfig(full_fraction=1.5)


# ------------------------------------------------------------------- the main contract
@pytest.fixture(scope="module")
def model():
    return _model()


def _new_map(g: GaussianArrays, block_size: float = 0.5) -> GaussianMap:
    m = GaussianMap(MapConfig(sh_degree=0, block_size=block_size, initial_capacity=1024))
    m.add(g)
    return m


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-threaded torch: stable timings on shared CI machines (correctness is thread-independent)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("mode,max_pass", [("cached", 300_000), ("cached", 700), ("halo", 300_000)])
def test_incremental_equals_full_after_a_sequence_of_deltas(model, mode, max_pass):
    base = _dense(0.0, 9.0, 0.0, 0.6, seed=3, id0=0)
    gmap = _new_map(base, block_size=0.05)  # fine blocks: little slack between a change and its block
    enc = IncrementalEncoder(model, gmap, IncrementalConfig(mode=mode, write_embedding=True,
                                                            max_gaussians_per_pass=max_pass))
    first = enc.update()
    assert first.full and first.updated_slots.tolist() == list(range(len(base))) and first.passes == 1
    _assert_matches_full(model, gmap, ("language", "generalist", "object", "embedding"))
    n_total = len(gmap)

    # 1) the robot maps a new area beyond x = 9 m
    new = _dense(9.0, 9.5, 0.0, 0.6, seed=4, id0=100_000)
    gmap.apply_delta(new, None)
    slots_new = gmap.slots_of(new.ids)
    assert bool((gmap.attribute("feat.valid")[slots_new] == 0).all())  # not encoded yet
    assert bool((gmap.attribute("feat.language")[slots_new] == 0).all())
    before = {h: gmap.attribute(f"feat.{h}").clone() for h in ("language", "object")}
    r1 = enc.update()
    assert not r1.full and 0 < r1.updated_slots.numel() < len(gmap) // 2
    assert bool(torch.isin(slots_new, r1.updated_slots).all())
    _assert_matches_full(model, gmap, enc=enc)
    # outputs outside updated_slots did not change
    untouched = torch.ones(n_total, dtype=torch.bool)
    untouched[r1.updated_slots[r1.updated_slots < n_total]] = False
    for h in before:
        assert torch.equal(gmap.attribute(f"feat.{h}")[:n_total][untouched], before[h][:n_total][untouched])

    # 2) move some Gaussians near x = 2 m by 4 cm, recolour a few near x = 6 m
    g = gmap.arrays()
    ids_move = g.ids[(g.means[:, 0] > 1.9) & (g.means[:, 0] < 2.1) & (g.means[:, 2] < 0.01)][:40].clone()
    ids_col = g.ids[(g.means[:, 0] > 5.95) & (g.means[:, 0] < 6.05)][:20].clone()
    s_m, s_c = gmap.slots_of(ids_move), gmap.slots_of(ids_col)
    moved = GaussianArrays(g.means[s_m] + torch.tensor([0.04, 0.01, 0.0]), g.sh[s_m].clone(), g.opacities[s_m].clone(),
                           g.log_scales[s_m].clone(), g.quats[s_m].clone(), ids_move)
    recol = GaussianArrays(g.means[s_c].clone(), g.sh[s_c] + 1.0, g.opacities[s_c].clone(), g.log_scales[s_c].clone(),
                           g.quats[s_c].clone(), ids_col)
    gmap.apply_delta(GaussianArrays.concat([moved, recol]), None)
    r2 = enc.update()
    assert not r2.full and r2.updated_slots.numel() < len(gmap) // 2
    _assert_matches_full(model, gmap, enc=enc)

    # 3) remove a patch near x = 4 m (swap-remove reorders slots) and a few of the new ones
    g = gmap.arrays()
    ids_rm = torch.cat([g.ids[(g.means[:, 0] > 3.9) & (g.means[:, 0] < 4.2) & (g.means[:, 1] > 0.3)], new.ids[:50]])
    gmap.apply_delta(None, ids_rm)
    r3 = enc.update()
    assert not r3.full
    _assert_matches_full(model, gmap, enc=enc)
    # nothing changed: nothing to do
    r4 = enc.update()
    assert r4.updated_slots.numel() == 0 and r4.n_encoded == 0 and not r4.full
    assert r4.from_version == r3.to_version == gmap.version


@pytest.mark.parametrize("mode", ["cached", "halo"])
def test_block_by_block_full_encode_equals_single_pass(model, mode):
    g = _surface(5000, (0.0, 0.0), (10.0, 5.0), seed=5, id0=0)
    single = _new_map(g)
    IncrementalEncoder(model, single, IncrementalConfig(mode="halo")).encode_full()
    chunked = _new_map(g)
    enc = IncrementalEncoder(model, chunked, IncrementalConfig(mode=mode, max_gaussians_per_pass=1800))
    if mode == "cached":  # every stage is evaluated chunk by chunk with its own small halo
        from chorus_ros.core.encoder import cached as cached_mod
        calls = []
        orig = cached_mod.CachedUNet._run_blocks
        cached_mod.CachedUNet._run_blocks = lambda self, b, t, s, f: calls.append(s.numel()) or orig(self, b, t, s, f)
        try:
            res = enc.encode_full()
        finally:
            cached_mod.CachedUNet._run_blocks = orig
        assert max(calls) <= 1800 and len(calls) > 6
    else:
        res = enc.encode_full()
        assert res.passes >= 3
        assert res.n_encoded > len(g)  # halos were encoded more than once
    assert res.full
    for h in ("language", "generalist", "object"):
        err = (chunked.attribute(f"feat.{h}") - single.attribute(f"feat.{h}")).abs().max().item()
        assert err <= TOL, (h, err)
    _assert_matches_full(model, chunked)


def test_chunked_incremental_update_and_fallbacks(model):
    g = _surface(5000, (0.0, 0.0), (10.0, 5.0), seed=6, id0=0)
    gmap = _new_map(g)
    enc = IncrementalEncoder(model, gmap, IncrementalConfig(mode="halo", max_gaussians_per_pass=1000,
                                                            full_fraction=1.0))
    assert enc.update().full
    # two separate edits at both ends: the update is split into chunks
    a = _surface(150, (0.5, 0.5), (1.5, 1.5), seed=7, id0=50_000)
    b = _surface(150, (8.5, 3.5), (9.5, 4.5), seed=8, id0=60_000)
    gmap.apply_delta(GaussianArrays.concat([a, b]), None)
    res = enc.update()
    assert not res.full and res.passes >= 2
    _assert_matches_full(model, gmap, enc=enc)
    # an edit whose context is most of the map falls back to a full re-encode
    enc.config.full_fraction = 0.1
    gmap.apply_delta(_surface(100, (4.5, 2.0), (5.5, 3.0), seed=9, id0=70_000), None)
    res = enc.update()
    assert res.full and res.updated_slots.numel() == len(gmap)
    _assert_matches_full(model, gmap, enc=enc)
    # a snapshot replacement is a full encode; then an emptied map encodes nothing
    gmap.replace_all(_surface(800, (0.0, 0.0), (3.0, 3.0), seed=10, id0=0))
    res = enc.update()
    assert res.full and len(gmap) == 800
    _assert_matches_full(model, gmap, enc=enc)
    gmap.clear()
    res = enc.update()
    assert res.updated_slots.numel() == 0 and gmap.attribute("feat.language").shape == (0, 6)


def test_pointcloud_variant_cached_updates_match_full():
    """The point-cloud input reads the 3x3x3 voxel neighbourhood (normals): one more voxel of
    reach, handled by the derived intervals."""
    torch.manual_seed(1)
    pc = ChorusEncoder(EncoderConfig(variant="pointcloud", **TINY)).eval()
    gmap = _new_map(_dense(0.0, 4.0, 0.0, 0.5, seed=12, id0=0), block_size=0.05)
    # full_fraction = 1, cost_factor = 1: never switch to a full pass (the cached path is tested)
    enc = IncrementalEncoder(pc, gmap, IncrementalConfig(max_gaussians_per_pass=900, full_fraction=1.0,
                                                         cost_factor=1.0))
    enc.update()
    _assert_matches_full(pc, gmap, enc=enc)
    g = gmap.arrays()
    sel = (g.means[:, 0] > 1.0) & (g.means[:, 0] < 1.1)
    ids = g.ids[sel].clone()
    s = gmap.slots_of(ids)
    gmap.update(GaussianArrays(g.means[s] + torch.tensor([0.0, 0.0, 0.02]), g.sh[s].clone(), g.opacities[s].clone(),
                               g.log_scales[s].clone(), g.quats[s].clone(), ids))
    gmap.remove(g.ids[(g.means[:, 0] > 3.0) & (g.means[:, 0] < 3.05)].clone())
    res = enc.update()
    assert not res.full
    _assert_matches_full(pc, gmap, enc=enc)


def test_weight_change_triggers_full_reencode():
    m = _model(seed=5)
    gmap = _new_map(_dense(0.0, 1.0, 0.0, 0.3, seed=13, id0=0))
    enc = IncrementalEncoder(m, gmap)
    assert enc.update().full
    assert enc.update().updated_slots.numel() == 0  # nothing changed
    with torch.no_grad():
        m.heads["language"].weight.mul_(2.0)  # e.g. a training step on the same model object
    res = enc.update()
    assert res.full
    _assert_matches_full(m, gmap, enc=enc)
    assert enc.cache_bytes() > 0


def test_encoder_restores_training_mode(model):
    gmap = _new_map(_surface(300, (0.0, 0.0), (1.0, 1.0), seed=11, id0=0))
    model.train()
    try:
        IncrementalEncoder(model, gmap).update()
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize("variant", ["gaussian", "pointcloud"])
def test_branched_encoder_cached_updates_match_full(variant):
    """Modality branches (one point MLP per channel group) keep incremental encoding exact:
    a move (geometry), a recolour (appearance) and a removal, each compared with a full encode."""
    torch.manual_seed(2)
    m = ChorusEncoder(EncoderConfig(variant=variant, branches=True, **TINY)).eval()
    assert set(m.branch_groups) == {"appearance", "geometry"} and not hasattr(m, "point_mlp")
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    gmap = _new_map(_dense(0.0, 4.0, 0.0, 0.5, seed=13, id0=0), block_size=0.05)
    enc = IncrementalEncoder(m, gmap, IncrementalConfig(max_gaussians_per_pass=900, write_embedding=True,
                                                        full_fraction=1.0, cost_factor=1.0))
    enc.update()
    _assert_matches_full(m, gmap, ("language", "object", "embedding"), enc=enc)
    g = gmap.arrays()
    s_m = gmap.slots_of(g.ids[(g.means[:, 0] > 1.0) & (g.means[:, 0] < 1.1)].clone())
    s_c = gmap.slots_of(g.ids[(g.means[:, 0] > 2.5) & (g.means[:, 0] < 2.6)].clone())
    gmap.update(GaussianArrays(g.means[s_m] + torch.tensor([0.0, 0.0, 0.02]), g.sh[s_m].clone(),
                               g.opacities[s_m].clone(), g.log_scales[s_m].clone(), g.quats[s_m].clone(), g.ids[s_m]))
    gmap.update(GaussianArrays(g.means[s_c].clone(), g.sh[s_c] + 0.7, g.opacities[s_c].clone(),
                               g.log_scales[s_c].clone(), g.quats[s_c].clone(), g.ids[s_c]))
    gmap.remove(g.ids[(g.means[:, 0] > 3.0) & (g.means[:, 0] < 3.05)].clone())
    res = enc.update()
    assert not res.full
    _assert_matches_full(m, gmap, ("language", "object", "embedding"), enc=enc)
