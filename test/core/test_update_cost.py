"""Bounded update cost (issue 12, finding 7): the incremental engine estimates an update's cost
from the dirty region and re-encodes the whole map when that is cheaper, so no update costs
more than a full pass (with a margin); the result is the same either way."""
from __future__ import annotations

import pytest
import torch

from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
from chorus_ros.core.encoder.incremental import IncrementalConfig, IncrementalEncoder
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.map import GaussianMap, MapConfig

TINY = dict(voxel_size=0.025, channels=(8, 8, 8), point_hidden=8, head_hidden=16, embed_dim=8,
            heads=[HeadSpec("language", 6), HeadSpec("object", 4)])


def _model() -> ChorusEncoder:
    torch.manual_seed(0)
    return ChorusEncoder(EncoderConfig(**TINY)).eval()


def _floor(n: int, x1: float, seed: int = 0) -> GaussianArrays:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([x1, 2.0])
    means = torch.cat([xy, 0.004 * torch.randn(n, 1, generator=gen)], 1)
    return GaussianArrays(means, torch.randn(n, 1, 3, generator=gen), torch.randn(n, generator=gen),
                          torch.log(0.01 + 0.03 * torch.rand(n, 3, generator=gen)), torch.randn(n, 4, generator=gen),
                          torch.arange(n, dtype=torch.int64))


def _setup(cfg: IncrementalConfig, n=3000, x1=8.0):
    m = GaussianMap(MapConfig(sh_degree=0, block_size=0.25))
    m.add(_floor(n, x1))
    inc = IncrementalEncoder(_model(), m, cfg)
    assert inc.update().full                    # first call: everything
    return m, inc


def _move(m: GaussianMap, rows: torch.Tensor, dx: float = 0.01) -> None:
    g = m.arrays()
    upd = g.index(rows)
    m.update(GaussianArrays(upd.means + torch.tensor([dx, 0, 0]), upd.sh.clone(), upd.opacities.clone(),
                            upd.log_scales.clone(), upd.quats.clone(), upd.ids.clone()))


def _full_reference(m: GaussianMap, model) -> dict[str, torch.Tensor]:
    ref = GaussianMap(MapConfig(sh_degree=0, block_size=0.25))
    g = m.arrays()
    ref.add(GaussianArrays(g.means.clone(), g.sh.clone(), g.opacities.clone(), g.log_scales.clone(),
                           g.quats.clone(), g.ids.clone()))
    IncrementalEncoder(model, ref).encode_full()
    return {h: ref.attribute(f"feat.{h}") for h in ("language", "object")}


def test_huge_dirty_region_takes_the_full_path_with_the_same_result():
    m, inc = _setup(IncrementalConfig(mode="cached"))
    _move(m, torch.arange(len(m)))              # every Gaussian moved: the whole map is dirty
    res = inc.update()
    assert res.full and res.updated_slots.numel() == len(m)
    assert res.stats["estimate"] > inc.config.full_fraction and res.stats["affected"] == len(m)
    ref = _full_reference(m, inc.model)
    for h, t in ref.items():
        torch.testing.assert_close(m.attribute(f"feat.{h}"), t, atol=1e-5, rtol=0)


def test_small_change_stays_incremental_and_matches_the_forced_path():
    m, inc = _setup(IncrementalConfig(mode="cached"))
    near_origin = (m.arrays().means[:, 0] < 0.3).nonzero().squeeze(1)
    _move(m, near_origin)
    res = inc.update()
    assert not res.full and res.stats["estimate"] < inc.config.full_fraction
    assert 0 < res.updated_slots.numel() < len(m)
    ref = _full_reference(m, inc.model)
    for h, t in ref.items():
        torch.testing.assert_close(m.attribute(f"feat.{h}"), t, atol=1e-4, rtol=0)


def test_switch_over_follows_the_configured_fraction():
    """The same half-map change goes through the cached path when the switch is disabled
    (full_fraction = 1, cost_factor = 1: only an estimate above a full pass switches) and
    through the full path with a low threshold; both give the full encode's features."""
    outs = []
    for ff, expect_full in ((1.0, False), (0.2, True)):
        m, inc = _setup(IncrementalConfig(mode="cached", full_fraction=ff, cost_factor=1.0))
        _move(m, (m.arrays().means[:, 0] < 3.0).nonzero().squeeze(1))
        res = inc.update()
        assert res.full == expect_full, (ff, res.stats)
        outs.append(m.attribute("feat.language").clone())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=0)


def test_cost_factor_is_learned_within_bounds():
    m, inc = _setup(IncrementalConfig(mode="cached", full_fraction=1.0))
    seen = []
    learn = inc._learn_cost
    inc._learn_cost = lambda cpu_s, affected: (seen.append((cpu_s, affected)), learn(cpu_s, affected))[1]
    for k in range(3):
        _move(m, (m.arrays().means[:, 0] < 2.0).nonzero().squeeze(1), dx=0.01 * (-1) ** k)
        assert not inc.update().full
    # every cached update hands its own CPU time and affected count to the learning rule, after
    # the first full pass has measured the per-Gaussian unit cost
    assert inc._full_unit is not None and inc._full_unit > 0
    assert len(seen) == 3 and all(c >= 0 and 0 < a <= len(m) for c, a in seen)
    # the learning rule itself, exactly: an exponential average of the measured per-Gaussian cost
    # ratio, clamped to [1, 10], and no learning from updates too small to time
    inc._full_unit, inc._cost_factor = 1e-5, 2.0
    inc._learn_cost(cpu_s=0.12, affected=4000)            # ratio (0.12 / 4000) / 1e-5 = 3
    assert inc.cost_factor == pytest.approx(0.7 * 2.0 + 0.3 * 3.0)
    inc._learn_cost(cpu_s=0.04, affected=4000)            # under 0.05 s: ignored
    inc._learn_cost(cpu_s=1.0, affected=1000)             # under 2000 Gaussians: ignored
    assert inc.cost_factor == pytest.approx(2.3)
    inc._learn_cost(cpu_s=40.0, affected=4000)            # ratio 1000 -> clamped
    assert inc.cost_factor == 10.0
    inc._learn_cost(cpu_s=0.05, affected=1_000_000)       # ratio 0.005 -> 0.7 * 10 + 0.0015 = 7.0015
    assert inc.cost_factor == pytest.approx(7.0015)
    inc._cost_factor = 1.0
    inc._learn_cost(cpu_s=0.05, affected=1_000_000)       # below 1 -> clamped
    assert inc.cost_factor == 1.0
