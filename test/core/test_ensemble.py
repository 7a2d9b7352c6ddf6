"""Rotation ensemble (chorus_ros.core.encoder.ensemble): one member is the plain encoder bit for
bit; K members equal a slow reference (each rotated copy built with the geometry module's
rotation matrices, encoded, averaged); the widened receptive field keeps incremental updates
equal to a full encode; the configuration refuses what it cannot run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
from chorus_ros.core.encoder.ensemble import MAX_ROTATIONS, RotationEnsemble, member_offset
from chorus_ros.core.encoder.incremental import IncrementalConfig, IncrementalEncoder, max_supported_coordinate
from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.geometry import quat_wxyz_to_rotmat, rotmat_to_quat_wxyz
from chorus_ros.core.map import GaussianMap, MapConfig

TINY = dict(voxel_size=0.025, channels=(8, 8, 8), point_hidden=8, head_hidden=16, embed_dim=8,
            heads=[HeadSpec("language", 6), HeadSpec("object", 4)])
TOL = 1e-4


@pytest.fixture(scope="module")
def model() -> ChorusEncoder:
    torch.manual_seed(0)
    m = ChorusEncoder(EncoderConfig(**TINY)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger weights than the default init: every path carries signal
        for p in m.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return m


def _room(n: int, seed: int, id0: int = 0, x0: float = 0.0, x1: float = 3.0) -> GaussianArrays:
    """A floor strip and a wall of flat, oriented Gaussians (jittered on a 2.5 cm pitch)."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([x1 - x0, 1.0]) + torch.tensor([x0, 0.0])
    wall = torch.rand(n, generator=gen) < 0.3
    z = torch.where(wall, 1.0 * torch.rand(n, generator=gen), 0.003 * torch.randn(n, generator=gen))
    y = torch.where(wall, 0.003 * torch.randn(n, generator=gen), xy[:, 1])
    means = torch.stack([xy[:, 0], y, z], 1)
    return GaussianArrays(means, torch.randn(n, 1, 3, generator=gen), torch.randn(n, generator=gen),
                          torch.log(0.005 + 0.02 * torch.rand(n, 3, generator=gen)), torch.randn(n, 4, generator=gen),
                          torch.arange(id0, id0 + n, dtype=torch.int64))


def _reference(model: ChorusEncoder, g: GaussianArrays, k_total: int) -> dict[str, torch.Tensor]:
    """Slow path: member k's map built Gaussian by Gaussian with rotation matrices (geometry
    module), each encoded on its own, the outputs averaged."""
    vs = model.config.voxel_size
    acc: dict[str, torch.Tensor] = {}
    for k in range(k_total):
        a = 2 * math.pi * k / k_total
        rz = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        t = member_offset(k, vs).numpy()
        means = g.means.double().numpy() @ rz.T + t
        quats = np.stack([rotmat_to_quat_wxyz(rz @ quat_wxyz_to_rotmat(q / np.linalg.norm(q)))
                          for q in g.quats.double().numpy()])
        gk = GaussianArrays(torch.from_numpy(means).float(), g.sh[:, :1].clone(), g.opacities.clone(),
                            g.log_scales.clone(), torch.from_numpy(quats).float())
        with torch.no_grad():
            out = model(gk)
        for name, v in dict(out.heads, embedding=out.embedding).items():
            acc[name] = acc.get(name, 0) + v.double() / k_total
    return acc


def test_one_rotation_is_the_plain_encoder(model):
    g = _room(1500, seed=1)
    with torch.no_grad():
        a, b = model(g), RotationEnsemble(model, 1)(g)
    assert torch.equal(a.embedding, b.embedding)
    assert all(torch.equal(a.heads[h], b.heads[h]) for h in a.heads)
    assert RotationEnsemble(model, 1).receptive_field_m == model.receptive_field_m


@pytest.mark.parametrize("k_total", [3, 8])
def test_ensemble_matches_the_slow_reference(model, k_total):
    g = _room(1500, seed=2)
    ens = RotationEnsemble(model, k_total).eval()
    with torch.no_grad():
        out = ens(g)
    ref = _reference(model, g, k_total)
    for name, v in dict(out.heads, embedding=out.embedding).items():
        err = (v.double() - ref[name]).abs().max().item()
        assert err <= TOL, (name, err)
    # and it is not the plain encoder: the members do differ
    with torch.no_grad():
        plain = model(g)
    assert (plain.heads["language"] - out.heads["language"]).abs().max().item() > 1e-2


def test_receptive_field_and_coordinate_range_widen_with_the_rotation(model):
    r = model.receptive_field_m
    assert RotationEnsemble(model, 4).receptive_field_m == pytest.approx(r)          # quarter turns
    assert RotationEnsemble(model, 8).receptive_field_m == pytest.approx(r * math.sqrt(2))   # 45 degrees
    assert RotationEnsemble(model, 3).receptive_field_m == pytest.approx(
        r * (abs(math.cos(2 * math.pi / 3)) + abs(math.sin(2 * math.pi / 3))))
    lim1 = max_supported_coordinate(model, 1.0)
    lim8 = max_supported_coordinate(RotationEnsemble(model, 8), 1.0)
    assert lim8 < lim1 / math.sqrt(2) + 1e-6 and lim8 > 0.6 * lim1


def test_incremental_updates_of_an_ensemble_equal_a_full_encode(model):
    """Halo updates with the ensemble's (widened) receptive field equal a full ensemble encode:
    if the radius were too small, Gaussians near a change would keep stale outputs."""
    gmap = GaussianMap(MapConfig(sh_degree=0, block_size=0.05, initial_capacity=8192))
    gmap.apply_delta(_room(5000, seed=3, x0=0.0, x1=5.0), None)
    enc = IncrementalEncoder(model, gmap, IncrementalConfig(mode="halo", rotations=8, full_fraction=1.0))
    assert isinstance(enc.model, RotationEnsemble) and enc.base_model is model
    assert enc.update().full
    ens = RotationEnsemble(model, 8).eval()

    def check():
        g = gmap.arrays()
        with torch.no_grad():
            ref = ens(GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats))
        for h in ("language", "object"):
            err = (gmap.attribute(f"feat.{h}") - ref.heads[h]).abs().max().item()
            assert err <= TOL, (h, err)

    check()
    gmap.apply_delta(_room(300, seed=4, id0=100_000, x0=2.0, x1=2.5), None)        # new Gaussians mid-map
    res = enc.update()
    assert not res.full and 0 < res.updated_slots.numel() < len(gmap)
    check()
    g = gmap.arrays()
    gone = g.ids[(g.means[:, 0] > 4.0) & (g.means[:, 0] < 4.3)]
    gmap.apply_delta(None, gone)                                                      # a patch removed
    assert not enc.update().full
    check()


def test_configuration_refuses_what_it_cannot_run(model):
    for bad in (0, MAX_ROTATIONS + 1):
        with pytest.raises(InvalidInputError, match="rotations"):
            IncrementalConfig(mode="halo", rotations=bad)
        with pytest.raises(InvalidInputError, match="rotations"):
            RotationEnsemble(model, bad)
    with pytest.raises(InvalidInputError, match="needs mode 'halo'"):
        IncrementalConfig(rotations=4)                     # the default mode is 'cached'
    cfg = IncrementalConfig()
    cfg.rotations = 4                                      # set after construction (as a CLI does): checked on use
    gmap = GaussianMap(MapConfig(sh_degree=0))
    with pytest.raises(InvalidInputError, match="needs mode 'halo'"):
        IncrementalEncoder(model, gmap, cfg)
    with pytest.raises(InvalidInputError, match="ChorusEncoder"):
        RotationEnsemble(torch.nn.Linear(2, 2), 2)
