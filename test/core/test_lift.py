"""Lift: per-Gaussian teacher targets via the renderer's autograd, against a per-pixel brute
force (the explicit weight image of every Gaussian), occlusion, multi-view aggregation, cache."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.geometry import Camera, look_at_pose
from chorus_ros.core.lift import LiftConfig, LiftedTargets, lift_scene, lift_view, upsample_map
from chorus_ros.core.render import RenderSettings, render
from chorus_ros.core.teachers import FrameContext, TeacherSpec

SETTINGS = RenderSettings(backend="reference", sh_degree=0)


def _camera(eye=(0.0, -3.0, 0.0), target=(0.0, 0.0, 0.0), w=24, h=16, fov=60.0):
    K = Camera.intrinsics_from_fov(w, h, fov)
    return Camera.from_c2w(look_at_pose(np.array(eye), np.array(target)), K, w, h)


def _gaussians(means, scale=0.15, opacity=0.8, seed=0):
    means = torch.as_tensor(means, dtype=torch.float32)
    n = len(means)
    g = torch.Generator().manual_seed(seed)
    return GaussianArrays(
        means=means,
        sh=rgb_to_sh_dc(torch.rand(n, 3, generator=g))[:, None, :],
        opacities=torch.full((n,), math.log(opacity / (1 - opacity))),
        log_scales=torch.full((n, 3), math.log(scale)) + 0.3 * torch.randn(n, 3, generator=g),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
        ids=torch.arange(n),
    )


def _random_scene(n=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([2.0, 1.0, 1.2])
    return _gaussians(means, seed=seed)


class _MapTeacher:
    """A teacher returning fixed maps (one per call, cycling), counting its calls."""

    def __init__(self, kind, maps, name="fixed"):
        self.spec = TeacherSpec(kind, "oracle_generalist", {"seed": hash(name) % 1000})
        self.kind, self.dim, self.maps, self.calls = kind, maps[0].shape[-1], maps, 0

    def __call__(self, image, context=None):
        m = self.maps[self.calls % len(self.maps)]
        self.calls += 1
        return m


def _brute_force(g, cam, fmap):
    """Per pixel: every Gaussian's blending weight w_i(p) from an identity-feature render."""
    eye = torch.eye(len(g))
    w_img = render(g, cam, SETTINGS, features=eye).features      # [H, W, N] = w_i(p)
    up = upsample_map(fmap, cam.height, cam.width)
    sums = torch.einsum("hwn,hwc->nc", w_img.double(), up.double())
    return sums, w_img.double().sum(dim=(0, 1))


def test_lift_view_matches_per_pixel_brute_force():
    g = _random_scene()
    cam = _camera()
    fmap = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(1))
    sums, w = lift_view(g, cam, fmap, SETTINGS)
    ref_sums, ref_w = _brute_force(g, cam, fmap)
    assert float(ref_w.sum()) > 50 and int((ref_w > 1e-3).sum()) >= 8     # the scene is really seen
    torch.testing.assert_close(sums.double(), ref_sums, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w.double(), ref_w, rtol=1e-4, atol=1e-4)
    # the weights equal what the renderer reports directly
    torch.testing.assert_close(w, render(g, cam, SETTINGS, return_weights=True).weights, rtol=1e-5, atol=1e-5)


def test_occluded_gaussian_gets_no_target_and_constant_maps_lift_exactly():
    # two large opaque Gaussians in front hide a small one right behind them
    g = _gaussians([[0.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 1.0, 0.0], [1.6, 0.0, 0.0]], scale=0.05,
                   opacity=0.999)
    g.log_scales[:2] = math.log(0.6)
    g.quats[:] = torch.tensor([1.0, 0, 0, 0])
    cam = _camera()
    const = torch.tensor([0.3, -2.0, 1.5])
    targets = lift_scene(g, [cam], [_MapTeacher("generalist", [const.expand(3, 3, 3).clone()])],
                         config=LiftConfig(backend="reference", eps=0.01))
    assert targets.valid.tolist() == [True, True, False, True]
    assert float(targets.weight[2]) < 0.01 and float(targets.weight[3]) > 1.0
    # without the occluders the hidden one is seen
    alone = lift_scene(g.index(torch.tensor([2, 3])), [cam], [_MapTeacher("generalist", [const.expand(3, 3, 3).clone()])],
                       config=LiftConfig(backend="reference", eps=0.01))
    assert float(alone.weight[0]) > 1.0 and alone.valid.all()
    # a constant map lifts to exactly that constant on every valid Gaussian, zeros elsewhere
    for i in (0, 1, 3):
        torch.testing.assert_close(targets.features["generalist"][i], const)
    torch.testing.assert_close(targets.features["generalist"][2], torch.zeros(3))


def test_left_right_halves_lift_to_their_side():
    # two Gaussians at the left and right of the view; a map that is +1 left, -1 right
    g = _gaussians([[-0.8, 0.0, 0.0], [0.8, 0.0, 0.0]], scale=0.12, opacity=0.9)
    cam = _camera()
    fmap = torch.zeros(1, 8, 1)
    fmap[0, :4, 0], fmap[0, 4:, 0] = 1.0, -1.0
    t = lift_scene(g, [cam], [_MapTeacher("object", [fmap])], config=LiftConfig(backend="reference"))
    f = t.features["object"][:, 0]
    assert float(f[0]) > 0.9 and float(f[1]) < -0.9


def test_multi_view_aggregation_and_several_teachers():
    g = _random_scene(n=10, seed=3)
    cams = [_camera(eye=(0.3, -3.0, 0.2)), _camera(eye=(-2.5, -2.0, 0.5)), _camera(eye=(0.0, 3.0, -0.3))]
    gen = torch.Generator().manual_seed(7)
    maps_a = [torch.randn(3, 4, 4, generator=gen) for _ in cams]
    maps_b = [torch.randn(2, 2, 2, generator=gen) for _ in cams]
    ta, tb = _MapTeacher("language", maps_a, "a"), _MapTeacher("object", maps_b, "b")
    out = lift_scene(g, cams, [ta, tb], images=[torch.zeros(16, 24, 3)] * 3,
                     config=LiftConfig(backend="reference"))
    s_a, s_b, w = 0, 0, 0
    for cam, ma, mb in zip(cams, maps_a, maps_b):
        sa, wv = _brute_force(g, cam, ma)
        sb, _ = _brute_force(g, cam, mb)
        s_a, s_b, w = s_a + sa, s_b + sb, w + wv
    valid = w > 1e-3
    assert out.valid.tolist() == valid.tolist() and out.n_views == 3
    torch.testing.assert_close(out.weight.double(), w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.features["language"][valid].double(), (s_a / w[:, None])[valid],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.features["object"][valid].double(), (s_b / w[:, None])[valid],
                               rtol=1e-4, atol=1e-4)


def test_gaussian_behind_camera_is_invalid():
    g = _gaussians([[0.0, 0.0, 0.0], [0.0, -5.0, 0.0]])
    out = lift_scene(g, [_camera()], [_MapTeacher("generalist", [torch.ones(2, 2, 2)])],
                     config=LiftConfig(backend="reference"))
    assert out.valid.tolist() == [True, False] and float(out.weight[1]) == 0.0


def test_cache_roundtrip_and_keys(tmp_path):
    g = _random_scene(n=8, seed=5)
    cams = [_camera(), _camera(eye=(1.0, -3.0, 0.5))]
    cfg = LiftConfig(backend="reference", cache_dir=str(tmp_path))
    t = _MapTeacher("generalist", [torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(0))])
    a = lift_scene(g, cams, [t], config=cfg, scene_id="s1")
    assert t.calls == 2 and a.key and len(list(tmp_path.glob("lift-*.safetensors"))) == 1
    b = lift_scene(g, cams, [t], config=cfg, scene_id="s1")
    assert t.calls == 2                                              # served from disk
    assert torch.equal(a.features["generalist"], b.features["generalist"]) and torch.equal(a.valid, b.valid)
    # a different view set, scene id or teacher spec is a different entry
    lift_scene(g, cams[:1], [t], config=cfg, scene_id="s1")
    lift_scene(g, cams, [t], config=cfg, scene_id="s2")
    t2 = _MapTeacher("generalist", t.maps, "other")
    lift_scene(g, cams, [t2], config=cfg, scene_id="s1")
    assert len(list(tmp_path.glob("lift-*.safetensors"))) == 4
    loaded = LiftedTargets.load(next(iter(tmp_path.glob(f"lift-{a.key}*"))))
    assert torch.equal(loaded.weight, a.weight)
    sub = a.index(torch.tensor([0, 2]))
    assert len(sub) == 2 and torch.equal(sub.features["generalist"][1], a.features["generalist"][2])


def test_lift_with_oracle_teacher_and_contexts():
    from chorus_ros.core.teachers import build_teacher
    g = _gaussians([[-0.8, 0.0, 0.0], [0.8, 0.0, 0.0]], scale=0.12, opacity=0.9)
    cam = _camera()
    inst = torch.zeros(16, 24, dtype=torch.long)
    inst[:, 12:] = 1
    t = build_teacher(TeacherSpec("object", "oracle_object", {"dim": 8, "patch_size": 4}))
    out = lift_scene(g, [cam], [t], contexts=[FrameContext(instances=inst)], config=LiftConfig(backend="reference"))
    v = t.instance_vectors([0, 1])
    cos = torch.nn.functional.cosine_similarity(out.features["object"], v, dim=1)
    assert float(cos.min()) > 0.99


def test_lift_rejects_bad_input():
    g = _random_scene(n=4)
    t = _MapTeacher("generalist", [torch.ones(2, 2, 2)])
    with pytest.raises(InvalidInputError, match="at least one camera"):
        lift_scene(g, [], [t])
    with pytest.raises(InvalidInputError, match="distinct kinds"):
        lift_scene(g, [_camera()], [t, t])
    with pytest.raises(InvalidInputError, match="contexts has 2 entries"):
        lift_scene(g, [_camera()], [t], contexts=[None, None])


def test_mesh_training_rooms_come_from_the_second_source(tmp_path):
    """data.mesh_fraction: the selected training rooms are the mesh source's rooms (same seed and
    Gaussian count), the others the generator's; photometric selection wins where both pick a
    seed; selection is deterministic per seed and follows the fraction."""
    from chorus_ros.core.lift import lift_synthetic_scenes, mesh_selected, synthetic_room, synthetic_room_specs
    from chorus_ros.core.synthetic.meshrooms import MeshRoomConfig, generate_mesh_room
    from chorus_ros.core.teachers import build_teacher
    assert [mesh_selected(s, 0.0) for s in range(5)] == [False] * 5
    assert [mesh_selected(s, 1.0) for s in range(5)] == [True] * 5
    share = sum(mesh_selected(s, 0.3) for s in range(2000)) / 2000
    assert 0.25 < share < 0.35 and mesh_selected(7, 0.3) == mesh_selected(7, 0.3)
    specs = synthetic_room_specs(range(40), scene={"stuff_density_range": [0.35, 1.0]}, density_range=[2000, 3000],
                                 photometric_fraction=0.5, mesh_fraction=0.5)
    for seed, sc, photo in specs:
        if photo is not None:      # fitted rooms stay generator rooms
            assert "source" not in sc
        elif mesh_selected(seed, 0.5):
            assert sc == {"source": "mesh", "target_gaussians": sc["target_gaussians"]}
        else:
            assert sc["stuff_density_range"] == [0.35, 1.0] and "source" not in sc
    assert sum(sc.get("source") == "mesh" for _, sc, _ in specs) > 0
    with pytest.raises(InvalidInputError, match="only 'target_gaussians'"):
        synthetic_room(3, {"source": "mesh", "stuff_density": 0.5})
    with pytest.raises(InvalidInputError, match="unknown room source"):
        synthetic_room(3, {"source": "castle"})
    with pytest.raises(InvalidInputError, match="mesh_fraction"):
        mesh_selected(3, 1.5)
    t = build_teacher(TeacherSpec("generalist", "oracle_generalist", {"dim": 4, "patch_size": 4}))
    kw = dict(scene={"target_gaussians": 1500}, views={"loop_views": 1, "random_views": 0, "width": 32, "height": 24},
              config=LiftConfig(cache_dir=str(tmp_path / "lift"), backend="reference"))
    plain, = lift_synthetic_scenes([3], [t], **kw)
    mesh, = lift_synthetic_scenes([3], [t], mesh_fraction=1.0, **kw)
    ref = generate_mesh_room(MeshRoomConfig(seed=3, target_gaussians=1500))
    assert torch.equal(mesh.gaussians.means, ref.gaussians.means) and len(mesh.targets.valid) == 1500
    assert mesh.scene_id != plain.scene_id and not torch.equal(plain.gaussians.means[:10], mesh.gaussians.means[:10])


def test_photometric_training_rooms_are_fitted_rooms(tmp_path):
    """data.photometric_fraction: the selected training rooms are lifted on their photometric fit
    (the shift suite's recipe, here shortened), the others on the generated room; selection is
    deterministic per seed and follows the fraction."""
    from chorus_ros.core.lift import lift_synthetic_scenes, photometric_selected
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.teachers import build_teacher
    assert [photometric_selected(s, 0.0) for s in range(5)] == [False] * 5
    assert [photometric_selected(s, 1.0) for s in range(5)] == [True] * 5
    share = sum(photometric_selected(s, 0.3) for s in range(2000)) / 2000
    assert 0.25 < share < 0.35 and photometric_selected(7, 0.3) == photometric_selected(7, 0.3)
    t = build_teacher(TeacherSpec("generalist", "oracle_generalist", {"dim": 4, "patch_size": 4}))
    kw = dict(scene={"target_gaussians": 1200}, views={"loop_views": 1, "random_views": 0, "width": 32, "height": 24},
              config=LiftConfig(cache_dir=str(tmp_path / "lift"), backend="reference"))
    fit = {"photometric_steps": 2, "photometric_views": 1, "photometric_size": [16, 12],
           "photometric_options": {"floater_fraction": 0.0}, "cache_dir": str(tmp_path / "fits")}
    plain, = lift_synthetic_scenes([3], [t], **kw)
    fitted, = lift_synthetic_scenes([3], [t], photometric_fraction=1.0, photometric_fit=fit, **kw)
    n = len(generate_scene(SceneConfig(seed=3, target_gaussians=1200)).gaussians)
    assert len(plain.gaussians) == n and len(fitted.gaussians) == round(0.7 * n)
    assert fitted.scene_id != plain.scene_id and len(fitted.targets.valid) == len(fitted.gaussians)
    assert len(list((tmp_path / "fits").glob("photometric_*.safetensors"))) == 1
    with pytest.raises(InvalidInputError, match="photometric_"):
        lift_synthetic_scenes([3], [t], photometric_fraction=1.0, photometric_fit={"steps": 2}, **kw)
