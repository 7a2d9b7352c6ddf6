"""Chorus encoder: input encodings, voxel grid, interpolation, U-Net, receptive field, and the
spconv CPU backward fix (forward and backward against dense torch references)."""
from __future__ import annotations

import math
import numpy as np
import pytest
import torch

from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
from chorus_ros.core.encoder.features import (
    estimate_voxel_normals, gaussian_features, pointcloud_features, quats_wxyz_to_rotmats, sym_outer, voxelize,
)
from chorus_ros.core.encoder.model import interpolate_voxel_features
from chorus_ros.core.errors import InvalidInputError, RegistryError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.geometry import quat_wxyz_to_rotmat

TINY = dict(channels=(8, 8, 8), point_hidden=8, head_hidden=16, embed_dim=8,
            heads=[HeadSpec("language", 6), HeadSpec("generalist", 5), HeadSpec("object", 4)])


def _gaussians(means: torch.Tensor, seed: int = 0, log_scale: float | None = None) -> GaussianArrays:
    gen = torch.Generator().manual_seed(seed)
    n = means.shape[0]
    ls = (torch.full((n, 3), log_scale) if log_scale is not None
          else torch.log(0.005 + 0.03 * torch.rand(n, 3, generator=gen)))
    return GaussianArrays(means.float(), torch.randn(n, 4, 3, generator=gen), torch.randn(n, generator=gen), ls,
                          torch.randn(n, 4, generator=gen))


def _surface_scene(n: int, seed: int = 0, size: float = 1.5) -> GaussianArrays:
    """A floor and a wall with small noise: surface-like Gaussians in a small room corner."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 2, generator=gen) * size
    on_wall = torch.rand(n, generator=gen) < 0.4
    z = torch.where(on_wall, a[:, 1], 0.003 * torch.randn(n, generator=gen))
    y = torch.where(on_wall, 0.003 * torch.randn(n, generator=gen), a[:, 1])
    return _gaussians(torch.stack([a[:, 0], y, z], 1), seed)


def _randomise(model: torch.nn.Module, seed: int = 0, std: float = 0.4) -> torch.nn.Module:
    """Large random weights so that every path through the net carries signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


# --------------------------------------------------------------------------------- config
def test_config_validation_names_the_field():
    with pytest.raises(InvalidInputError, match="variant"):
        EncoderConfig(variant="mesh")
    with pytest.raises(InvalidInputError, match="encoder_blocks"):
        EncoderConfig(channels=(8, 8), encoder_blocks=(1,), decoder_blocks=(1,))
    with pytest.raises(InvalidInputError, match="decoder_blocks"):
        EncoderConfig(channels=(8, 8), encoder_blocks=(1, 1), decoder_blocks=())
    with pytest.raises(InvalidInputError, match="duplicate"):
        EncoderConfig(heads=[HeadSpec("language", 4), HeadSpec("language", 8)])
    with pytest.raises(InvalidInputError, match="'semantic' unknown"):
        EncoderConfig(heads=[HeadSpec("semantic", 4)])
    with pytest.raises(InvalidInputError, match="unknown fields \\['depth'\\]"):
        EncoderConfig.from_dict({"depth": 3})
    cfg = EncoderConfig(**TINY)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------------------------ encodings
def test_rotmats_match_geometry_module():
    q = torch.randn(20, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = quat_wxyz_to_rotmat(q.numpy())
    np.testing.assert_allclose(quats_wxyz_to_rotmats(q).numpy(), ref, atol=1e-12)


def test_gaussian_features_hand_built():
    vs = 0.05
    mean = torch.tensor([[0.12, -0.03, 1.01]])  # voxel (2, -1, 20); offset (0.4, 0.4, 0.2) - 0.5
    rgb = torch.tensor([[0.2, 0.5, 0.9]])
    sh = torch.zeros(1, 1, 3)
    sh[:, 0] = rgb_to_sh_dc(rgb)
    scales = torch.tensor([[0.02, 0.1, 0.001]])  # middle, largest, smallest along x, y, z
    g = GaussianArrays(mean, sh, torch.tensor([0.0]), scales.log(), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    f = gaussian_features(g, voxelize(g.means, vs))[0]
    assert f.shape == (24,)
    torch.testing.assert_close(f[0:3], rgb[0])
    assert f[3] == pytest.approx(0.5)
    ls = torch.tensor([0.1, 0.02, 0.001]).log() - math.log(vs)
    torch.testing.assert_close(f[4:7], ls.clamp(-6, 4) / 2)
    torch.testing.assert_close(f[7:9], torch.tensor([0.2, 0.05]))
    # normal = z (smallest axis), weight 1 - 0.05; major = y, weight 1 - 0.2
    torch.testing.assert_close(f[9:15], torch.tensor([0, 0, 0.95, 0, 0, 0]))
    torch.testing.assert_close(f[15:21], torch.tensor([0, 0.8, 0, 0, 0, 0]))
    torch.testing.assert_close(f[21:24], torch.tensor([-0.1, -0.1, -0.3]), atol=1e-5, rtol=0)


def test_gaussian_features_invariant_to_equivalent_parameterisations():
    """The same covariance written with permuted axes, a negated quaternion, or the Gaussian
    moved by whole voxels gives the same encoding."""
    gen = torch.Generator().manual_seed(3)
    n = 50
    g = _gaussians(torch.rand(n, 3, generator=gen), seed=3)
    rot = quats_wxyz_to_rotmats(g.unit_quats)
    perm = torch.tensor([2, 0, 1])
    # R' = R P, s' = s[perm]: column i of R' is column perm[i] of R -> same covariance
    rot_p = rot[:, :, perm]
    det = torch.linalg.det(rot_p)
    rot_p[:, :, 0] *= det[:, None]  # keep a proper rotation (the column's sign is irrelevant)
    from chorus_ros.core.geometry import rotmat_to_quat_wxyz
    q_p = torch.tensor(np.stack([rotmat_to_quat_wxyz(r) for r in rot_p.double().numpy()]), dtype=torch.float32)
    variants = [
        GaussianArrays(g.means, g.sh, g.opacities, g.log_scales[:, perm], q_p),
        GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, -g.quats),
        GaussianArrays(g.means + 0.05 * torch.tensor([3.0, -7.0, 11.0]), g.sh, g.opacities, g.log_scales, g.quats),
    ]
    f0 = gaussian_features(g, voxelize(g.means, 0.05))
    for v in variants:
        torch.testing.assert_close(gaussian_features(v, voxelize(v.means, 0.05)), f0, atol=2e-5, rtol=0)


def _slow_voxel_normals(means: np.ndarray, vs: float):
    coords = np.floor(means / vs).astype(np.int64)
    keys = {tuple(c) for c in coords}
    out = {}
    for c in keys:
        nb = np.all(np.abs(coords - np.array(c)) <= 1, axis=1)
        p = means[nb]
        cov = np.cov(p.T, bias=True)
        w, v = np.linalg.eigh(cov)
        out[c] = (v[:, 0], 1 - w[0] / w[1] if w[1] > 1e-9 * vs * vs else 0.0)
    return out


def test_voxel_normals_match_slow_reference_far_from_origin():
    gen = torch.Generator().manual_seed(4)
    n = 600
    uv = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.4
    t = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, -0.5]], dtype=torch.float64)
    normal = torch.linalg.cross(t[0], t[1])
    normal = normal / normal.norm()
    pts = uv @ t + 0.002 * torch.randn(n, 1, generator=gen, dtype=torch.float64) * normal
    pts = pts + torch.tensor([250.0, -130.0, 7.0], dtype=torch.float64)  # far away: float32 must stay exact
    vs = 0.05
    vox = voxelize(pts.float(), vs)
    normals, planarity = estimate_voxel_normals(pts.float(), vox)
    ref = _slow_voxel_normals(pts.numpy(), vs)
    for i, c in enumerate(vox.coords.tolist()):
        rn, rp = ref[tuple(c)]
        assert abs(float(planarity[i]) - rp) < 2e-3
        if rp > 0.5:
            assert abs(abs(float(normals[i].double() @ torch.from_numpy(rn))) - 1.0) < 1e-3
    # on a plane the estimates are the true normal
    good = planarity > 0.9
    assert good.float().mean() > 0.8
    assert (normals[good].double() @ normal).abs().min() > 0.99


def test_pointcloud_variant_uses_only_centres_and_colours():
    g = _surface_scene(400, seed=5, size=0.6)
    vox = voxelize(g.means, 0.05)
    f = pointcloud_features(g, vox)
    assert f.shape == (400, 13)
    other = GaussianArrays(g.means, torch.cat([g.sh[:, :1], 5 * torch.randn_like(g.sh[:, 1:])], 1),
                           g.opacities + 3.0, g.log_scales - 1.0, torch.randn_like(g.quats))
    torch.testing.assert_close(pointcloud_features(other, vox), f)
    model = ChorusEncoder(EncoderConfig(variant="pointcloud", **TINY)).eval()
    with torch.no_grad():
        a, b = model(g), model(other)
    torch.testing.assert_close(a.embedding, b.embedding)


def test_sym_outer_is_sign_invariant_isometry():
    v = torch.randn(10, 3)
    torch.testing.assert_close(sym_outer(v), sym_outer(-v))
    outer = v[:, :, None] * v[:, None, :]
    torch.testing.assert_close(sym_outer(v).norm(dim=1), outer.flatten(1).norm(dim=1))


# ------------------------------------------------------------------------------ voxel grid
def test_voxels_are_absolute_and_lookups_exact():
    means = torch.tensor([[-0.01, 0.0, 0.049], [0.051, -0.26, 3.0], [-0.01, 0.001, 0.0]])
    vox = voxelize(means, 0.05)
    assert vox.coords.tolist() == [[-1, 0, 0], [1, -6, 60]]
    assert vox.inverse.tolist() == [0, 1, 0] and vox.counts.tolist() == [2, 1]
    sub = voxelize(means[1:2], 0.05)  # a subset maps to the same absolute voxel
    assert sub.coords.tolist() == [[1, -6, 60]]
    assert vox.lookup(torch.tensor([[1, -6, 60], [0, 0, 0], [-1, 0, 0]])).tolist() == [1, -1, 0]
    with pytest.raises(InvalidInputError, match="beyond the voxel grid"):
        voxelize(torch.tensor([[1e6, 0.0, 0.0]]), 0.05)


def test_interpolation_matches_slow_reference():
    gen = torch.Generator().manual_seed(6)
    means = torch.rand(300, 3, generator=gen) * 0.3
    vox = voxelize(means, 0.05)
    feats = torch.randn(len(vox), 4, generator=gen)
    got = interpolate_voxel_features(feats, vox, means)
    table = {tuple(c): i for i, c in enumerate(vox.coords.tolist())}
    for k in range(0, 300, 7):
        u = means[k].double() / 0.05 - 0.5
        base = torch.floor(u)
        acc, wsum = torch.zeros(4, dtype=torch.float64), 0.0
        for corner in np.ndindex(2, 2, 2):
            c = base + torch.tensor(corner, dtype=torch.float64)
            w = float(torch.prod(1 - (u - c).abs()))
            i = table.get(tuple(int(x) for x in c))
            if i is not None:
                acc += w * feats[i].double()
                wsum += w
        torch.testing.assert_close(got[k].double(), acc / wsum, atol=1e-5, rtol=0)
    # exact case: two voxels along x, a point a quarter of the way between their centres
    vox2 = voxelize(torch.tensor([[0.025, 0.025, 0.025], [0.075, 0.025, 0.025]]), 0.05)
    f2 = torch.tensor([[0.0], [4.0]])
    p = torch.tensor([[0.0375, 0.025, 0.025], [0.01, 0.025, 0.025]])
    torch.testing.assert_close(interpolate_voxel_features(f2, vox2, p), torch.tensor([[1.0], [0.0]]))


# -------------------------------------------------------------------------------- model
def test_model_outputs_shapes_and_differ_within_a_voxel():
    model = ChorusEncoder(EncoderConfig(**TINY)).eval()
    g = _surface_scene(300, seed=7, size=0.5)
    # two extra Gaussians in one voxel, differing only in position
    extra = _gaussians(torch.tensor([[0.205, 0.205, 0.01], [0.245, 0.24, 0.01]]), seed=8)
    extra = GaussianArrays(extra.means, extra.sh[[0, 0]], extra.opacities[[0, 0]], extra.log_scales[[0, 0]],
                           extra.quats[[0, 0]])
    g = GaussianArrays.concat([g, extra])
    with torch.no_grad():
        out = model(g)
    assert out.embedding.shape == (302, 8)
    assert {k: tuple(v.shape) for k, v in out.heads.items()} == {"language": (302, 6), "generalist": (302, 5),
                                                                   "object": (302, 4)}
    assert torch.isfinite(out.embedding).all()
    assert (out.embedding[-1] - out.embedding[-2]).abs().max() > 1e-3
    with torch.no_grad():
        empty = model(g.index(slice(0, 0)))
    assert empty.embedding.shape == (0, 8) and empty.heads["object"].shape == (0, 4)


def test_model_translation_by_aligned_voxels_and_batching():
    """Moving the scene by a multiple of 2**(levels-1) voxels (so that every coarse level
    coarsens the same way) leaves the outputs unchanged: no absolute coordinate enters, and the
    spconv indices stay aligned to the absolute grid. A batched pass equals separate passes."""
    model = _randomise(ChorusEncoder(EncoderConfig(**TINY)).eval(), std=0.3)
    g = _surface_scene(500, seed=9, size=0.8)
    shift = 0.05 * 4 * torch.tensor([7.0, -13.0, 2.0])
    g2 = GaussianArrays(g.means + shift, g.sh, g.opacities, g.log_scales, g.quats)
    with torch.no_grad():
        a, b = model(g), model(g2)
        both = model.forward_batch([g, _surface_scene(200, seed=10)])
        c = model(_surface_scene(200, seed=10))
    torch.testing.assert_close(b.embedding, a.embedding, atol=1e-4, rtol=0)
    torch.testing.assert_close(both[0].embedding, a.embedding, atol=1e-4, rtol=0)
    torch.testing.assert_close(both[1].heads["language"], c.heads["language"], atol=1e-4, rtol=0)


def test_receptive_field_derived_from_modules():
    # default: enc 2 convs (+-2) | down [0,+1] | enc1 +-4 | down [0,+2] | bottleneck +-8 |
    # up [-2,0] | dec1 +-4 | up [-1,0] | dec0 +-2  ->  [-23, 23]
    rf = ChorusEncoder(EncoderConfig(**TINY, feature_version=1)).receptive_field
    assert rf.network_lo == (-23, -23, -23) and rf.network_hi == (23, 23, 23)
    assert rf.voxels == 24 and rf.metres == pytest.approx(25 * 0.05)
    # feature version 2 reads the 3x3x3 neighbourhood (relative scales): one voxel more
    assert ChorusEncoder(EncoderConfig(**TINY, feature_version=2)).receptive_field.voxels == 25
    # one level, one block: two 3x3x3 convolutions
    one = ChorusEncoder(EncoderConfig(channels=(4,), encoder_blocks=(1,), decoder_blocks=(), point_hidden=4,
                                      head_hidden=4, embed_dim=4, voxel_size=0.1, feature_version=1))
    assert one.receptive_field.network_voxels == 2 and one.receptive_field_m == pytest.approx(0.4)
    # two levels, 5x5x5 kernels, point-cloud input (+1 for the normal neighbourhood)
    two = ChorusEncoder(EncoderConfig(variant="pointcloud", channels=(4, 4), encoder_blocks=(1, 2),
                                      decoder_blocks=(0,), kernel_size=5, point_hidden=4, head_hidden=4,
                                      embed_dim=4))
    # enc0 +-4 | down [0,1] -> [-4,5] | 2 blocks at stride 2: +-16 -> [-20,21] | up [-1,0] -> [-21,21]
    assert two.receptive_field.network_lo == (-21,) * 3 and two.receptive_field.network_hi == (21,) * 3
    assert two.receptive_field.voxels == 21 + 1 + 1


def _line_scene(length: int, offset: float, seed: int = 0) -> GaussianArrays:
    x = (torch.arange(length).float() + offset) * 0.05
    means = torch.stack([x, torch.full_like(x, 0.025), torch.full_like(x, 0.025)], 1)
    return _gaussians(means, seed=seed, log_scale=-3.0)


def test_receptive_field_is_exact_on_a_dense_line():
    """Perturbing one Gaussian's colour changes outputs only within the derived radius, and
    (on a dense line of voxels, where every path exists) some output at the radius does change."""
    model = _randomise(ChorusEncoder(EncoderConfig(**TINY)).eval())
    rf = model.receptive_field
    g = _line_scene(110, offset=0.3)  # off-centre: interpolation reaches the neighbouring voxel
    with torch.no_grad():
        base = model(g).embedding
    reach = 0
    for c in range(50, 58):  # every alignment modulo 4 (and then some)
        sh = g.sh.clone()
        sh[c, 0] += 1.0
        ls = g.log_scales.clone()
        ls[c] += 0.5  # (feature v2: sizes enter relative to the neighbours', so they reach one voxel further)
        with torch.no_grad():
            e = model(GaussianArrays(g.means, sh, g.opacities, ls, g.quats)).embedding
        changed = (e != base).any(1).nonzero().squeeze(1)
        dist = (changed - c).abs()
        assert int(dist.max()) <= rf.voxels  # bit-exact beyond the radius
        dist_m = (g.means[changed] - g.means[c]).abs().max(1).values
        assert float(dist_m.max()) < rf.metres
        reach = max(reach, int(dist.max()))
    assert reach == rf.voxels  # not conservative at all on this input


def test_removing_a_gaussian_changes_nothing_beyond_the_radius():
    """Structural change (a voxel disappears, coarse cells may disappear): outputs beyond the
    radius stay unchanged."""
    model = _randomise(ChorusEncoder(EncoderConfig(**TINY)).eval(), std=0.3)
    g = _surface_scene(1000, seed=11, size=2.6)
    r = model.receptive_field_m
    with torch.no_grad():
        base = model(g).embedding
    for victim in (3,):
        keep = torch.ones(len(g), dtype=torch.bool)
        # remove every Gaussian of the victim's voxel so that the voxel itself disappears
        vox = voxelize(g.means, 0.05)
        keep &= vox.inverse != vox.inverse[victim]
        with torch.no_grad():
            e = model(g.index(keep)).embedding
        far = (g.means[keep] - g.means[victim]).abs().max(1).values >= r
        assert far.sum() > 100
        # not bit-exact: spconv's gemms change size with the pair counts (float32 rounding)
        assert (e[far] - base[keep][far]).abs().max() <= 1e-4
        assert (e[~far] - base[keep][~far]).abs().max() > 1e-2  # the change did propagate


# --------------------------------------------------------------------------- spconv on CPU
def test_spconv_patch_is_applied_and_idempotent():
    from chorus_ros.core.encoder import _spconv_compat
    import spconv.pytorch.cppcore as cppcore
    import spconv.pytorch.ops as ops
    ChorusEncoder(EncoderConfig(**TINY))
    assert _spconv_compat.is_applied()
    assert ops.get_current_stream is cppcore.get_current_stream
    assert _spconv_compat.apply() is False
    if not torch.cuda.is_available():
        assert cppcore.get_current_stream() == 0


def test_cpu_backward_through_the_whole_encoder():
    model = ChorusEncoder(EncoderConfig(**TINY)).train()
    g = _surface_scene(400, seed=12, size=0.8)
    out = model(g)
    loss = sum(v.square().mean() for v in out.heads.values()) + out.embedding[:, 0].sum()
    loss.backward()
    convs = [(n, p) for n, p in model.named_parameters() if p.dim() == 5]
    assert len(convs) == 2 * (1 + 1 + 1 + 1 + 1) + 4  # 5 res blocks + 2 down + 2 up
    for name, p in convs:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_subm_conv_matches_dense_conv3d_forward_and_backward():
    from chorus_ros.core.encoder._spconv_compat import import_spconv
    sp = import_spconv()
    gen = torch.Generator().manual_seed(13)
    d, cin, cout = 6, 3, 4
    coords = (torch.rand(d, d, d, generator=gen) < 0.4).nonzero()
    v = len(coords)
    f = torch.randn(v, cin, generator=gen, requires_grad=True)
    conv = sp.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key="t")
    x = sp.SparseConvTensor(f, torch.cat([torch.zeros(v, 1, dtype=torch.long), coords], 1).int(), [d] * 3, 1)
    y = conv(x)
    assert torch.equal(y.indices.long()[:, 1:], coords)
    fd = f.detach().clone().requires_grad_(True)
    w = conv.weight.detach().clone().requires_grad_(True)  # spconv KRSC: [out, kx, ky, kz, in]
    grid = torch.zeros(d, d, d, cin).index_put((coords[:, 0], coords[:, 1], coords[:, 2]), fd)
    dense = torch.nn.functional.conv3d(grid.permute(3, 0, 1, 2)[None], w.permute(0, 4, 1, 2, 3), padding=1)
    ref = dense[0].permute(1, 2, 3, 0)[coords[:, 0], coords[:, 1], coords[:, 2]]
    torch.testing.assert_close(y.features, ref, atol=1e-5, rtol=1e-5)
    r = torch.randn(v, cout, generator=gen)
    (y.features * r).sum().backward()
    (ref * r).sum().backward()
    torch.testing.assert_close(f.grad, fd.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.weight.grad, w.grad, atol=1e-4, rtol=1e-5)


def test_multithreaded_cpu_convolution_is_correct_and_deterministic():
    """spconv's CPU scatter-add races with >1 OpenMP thread (see _spconv_compat); with the
    patch, repeated 2-thread convolutions of a plane equal the dense reference every time."""
    from chorus_ros.core.encoder._spconv_compat import import_spconv
    sp = import_spconv()
    gen = torch.Generator().manual_seed(14)
    side, c = 60, 8
    g2 = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
    coords = torch.cat([g2, torch.zeros(len(g2), 1, dtype=torch.long)], 1)
    v = len(coords)
    f = torch.randn(v, c, generator=gen)
    conv = sp.SubMConv3d(c, c, 3, padding=1, bias=False, indice_key="p")
    w = conv.weight.detach()
    grid = torch.zeros(side, side, 1, c).index_put((coords[:, 0], coords[:, 1], coords[:, 2]), f)
    dense = torch.nn.functional.conv3d(grid.permute(3, 0, 1, 2)[None], w.permute(0, 4, 1, 2, 3), padding=1)
    ref = dense[0].permute(1, 2, 3, 0)[coords[:, 0], coords[:, 1], coords[:, 2]]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(10):
            x = sp.SparseConvTensor(f, torch.cat([torch.zeros(v, 1, dtype=torch.long), coords], 1).int(),
                                    [side, side, 1], 1)
            with torch.no_grad():
                y = conv(x)
            torch.testing.assert_close(y.features, ref, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_unknown_variant_lists_known():
    from chorus_ros.core.encoder.features import get_feature_variant
    with pytest.raises(RegistryError, match="gaussian"):
        get_feature_variant("mesh")


# ------------------------------------------------------------------ feature version 2 (issue 8)
def _slow_neighbourhood_sums(means: np.ndarray, values: np.ndarray, vs: float) -> dict:
    coords = np.floor(means / vs).astype(np.int64)
    return {tuple(c): values[np.all(np.abs(coords - c) <= 1, axis=1)].sum(0) for c in {tuple(c) for c in coords}}


def test_neighbourhood_sums_match_slow_reference():
    from chorus_ros.core.encoder.features import neighbourhood_sums
    g = _surface_scene(400, seed=5, size=0.6)
    vox = voxelize(g.means, 0.05)
    vals = torch.randn(len(g), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = neighbourhood_sums(vals, vox)
    ref = _slow_neighbourhood_sums(g.means.double().numpy(), vals.numpy(), 0.05)
    for row, c in enumerate(vox.coords.tolist()):
        np.testing.assert_allclose(got[row].numpy(), ref[tuple(c)], atol=1e-9)


def test_gaussian_features_v2_hand_built():
    from chorus_ros.core.encoder.features import gaussian_features_v2
    vs = 0.05
    # two Gaussians in one voxel, opacity 0.5 each: the reference largest log-scale is their mean
    means = torch.tensor([[0.12, -0.03, 1.01], [0.13, -0.02, 1.02]])
    rgb = torch.tensor([[0.2, 0.5, 0.9], [0.1, 0.1, 0.1]])
    sh = rgb_to_sh_dc(rgb)[:, None, :]
    scales = torch.tensor([[0.02, 0.1, 0.001], [0.4, 0.4, 0.4]])
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    g = GaussianArrays(means, sh, torch.zeros(2), scales.log(), q)
    f = gaussian_features_v2(g, voxelize(g.means, vs))
    assert f.shape == (2, 16)
    torch.testing.assert_close(f[0, 0:3], rgb[0])
    assert f[0, 3] == pytest.approx(0.5)
    ref = 0.5 * (math.log(0.1) + math.log(0.4))
    ls = torch.tensor([0.1, 0.02, 0.001]).log() - ref
    torch.testing.assert_close(f[0, 4:7], ls.clamp(-4, 4) / 2)
    torch.testing.assert_close(f[0, 7:9], torch.tensor([0.2, 0.05]))
    # normal = z (vertical), weight 0.95; major = y (horizontal), weight 0.8
    torch.testing.assert_close(f[0, 9:11], torch.tensor([0.95, 0.0]))
    torch.testing.assert_close(f[0, 11:13], torch.tensor([0.0, 0.8]))
    torch.testing.assert_close(f[0, 13:16], torch.tensor([-0.1, -0.1, -0.3]), atol=1e-5, rtol=0)
    # the isotropic Gaussian has no distinct axes: no orientation signal
    torch.testing.assert_close(f[1, 9:13], torch.zeros(4))


def test_feature_v2_ignores_density_scale_and_yaw():
    """v2 encodings do not change when every Gaussian is scaled by a common factor (a denser or
    sparser fit of the same surfaces) and, but for the in-voxel offset, when the scene turns
    about the vertical axis by 90 degrees (which maps the voxel grid onto itself)."""
    from chorus_ros.core.encoder.features import gaussian_features_v2, pointcloud_features_v2
    g = _surface_scene(300, seed=2)
    f0 = gaussian_features_v2(g, voxelize(g.means, 0.05))
    big = GaussianArrays(g.means, g.sh, g.opacities, g.log_scales + math.log(2.5), g.quats)
    torch.testing.assert_close(gaussian_features_v2(big, voxelize(big.means, 0.05)), f0, atol=1e-5, rtol=0)
    from chorus_ros.core.train.augment import quat_multiply, rotate_about_axis
    R, q = rotate_about_axis(math.pi / 2, 2)
    rot = GaussianArrays(g.means @ R.T, g.sh, g.opacities, g.log_scales, quat_multiply(q.expand_as(g.quats), g.quats))
    f1 = gaussian_features_v2(rot, voxelize(rot.means, 0.05))
    torch.testing.assert_close(f1[:, :13], f0[:, :13], atol=1e-4, rtol=0)
    p0 = pointcloud_features_v2(g, voxelize(g.means, 0.05))
    p1 = pointcloud_features_v2(rot, voxelize(rot.means, 0.05))
    torch.testing.assert_close(p1[:, [0, 1, 2, 6, 7, 8]], p0[:, [0, 1, 2, 6, 7, 8]], atol=1e-4, rtol=0)
    # the v1 encoding reads world-frame normals: the same turn changes it
    v1 = gaussian_features(g, voxelize(g.means, 0.05))[:, 9:15]
    assert (gaussian_features(rot, voxelize(rot.means, 0.05))[:, 9:15] - v1).abs().max() > 0.3


def test_feature_variant_groups_cover_every_channel_once():
    from chorus_ros.core.encoder.features import FEATURE_VERSIONS
    for version, variants in FEATURE_VERSIONS.items():
        for v in variants.values():
            g = _surface_scene(50, seed=1)
            assert v.fn(g, voxelize(g.means, 0.05)).shape[1] == v.dim
            idx = sorted(i for ch in v.groups.values() for i in ch)
            assert idx == list(range(v.dim)), (version, v.name)
            assert set(v.groups) == {"appearance", "geometry"}
            if version >= 2:
                a, b = v.group_range("appearance")
                assert (a, b) == (0, len(v.groups["appearance"]))


def test_feature_version_in_config_and_old_checkpoints():
    from chorus_ros.core.encoder.features import get_feature_variant
    assert EncoderConfig().feature_version == 2
    d = EncoderConfig(**TINY).to_dict()
    d.pop("feature_version")  # a config written before feature versions existed
    old = EncoderConfig.from_dict(d)
    assert old.feature_version == 1 and ChorusEncoder(old).variant.dim == 24
    assert ChorusEncoder(EncoderConfig(**TINY)).variant.dim == 16
    with pytest.raises(InvalidInputError, match="feature_version 7 unknown"):
        EncoderConfig(feature_version=7)
    with pytest.raises(RegistryError, match="feature version"):
        get_feature_variant("gaussian", 9)
