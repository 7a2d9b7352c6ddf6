"""Synthetic rooms: primitive samplers against exact geometry, scene statistics and ids,
layout, trajectories, ground truth from the renderer, dataset export/load round trip."""
import math

import numpy as np
import pytest
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.geometry import quat_wxyz_to_rotmat, rotmat_to_quat_wxyz
from chorus_ros.core.labels import UNLABELED
from chorus_ros.core.synthetic import THING_CLASSES, SceneConfig, generate_scene
from chorus_ros.core.synthetic.primitives import (Box, ConePatch, Cylinder, DiskPatch, Ellipsoid, RectPatch,
                                                  rotmats_to_quats_wxyz, surfels_from_samples)
from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

SEEDS = (0, 1, 2)
N_SCENE = 20_000


def _random_rot(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _check_frames(frames):
    eye = np.broadcast_to(np.eye(3), frames.shape)
    np.testing.assert_allclose(np.swapaxes(frames, 1, 2) @ frames, eye, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(frames), 1.0, atol=1e-9)


# ------------------------------------------------------------------------ primitives
def test_box_samples_lie_on_faces_with_outward_normals_and_cover_them():
    rng = np.random.default_rng(0)
    rot = _random_rot(rng)
    box = Box([0.3, -0.2, 1.0], [0.4, 0.25, 0.1], rot)
    h = 0.03
    smp = [pa.sample(h, rng) for pa in box.patches()]
    pts = np.concatenate([s.points for s in smp])
    frames = np.concatenate([s.frames for s in smp])
    assert len(pts) == sum(pa.count(h) for pa in box.patches())
    assert box.surface_distance(pts).max() < 1e-12
    local = (pts - box.center) @ rot
    # the normal is the face's outward axis: the local coordinate along it is at +-half
    n_local = frames[:, :, 2] @ rot
    axis = np.argmax(np.abs(n_local), 1)
    np.testing.assert_allclose(np.abs(n_local[np.arange(len(axis)), axis]), 1.0, atol=1e-12)
    sign = np.sign(n_local[np.arange(len(axis)), axis])
    np.testing.assert_allclose(local[np.arange(len(axis)), axis], sign * box.half[axis], atol=1e-12)
    _check_frames(frames)
    # coverage: every point of the surface has a sample within ~one cell
    test = np.concatenate([pa.sample(h / 4, rng).points for pa in box.patches()])
    test = test[rng.choice(len(test), 3000, replace=False)]
    nn = np.sqrt(((test[:, None] - pts[None]) ** 2).sum(-1)).min(1)
    assert nn.max() < 1.2 * h


def test_box_skip_faces_get_no_samples():
    box = Box([0, 0, 0.5], [0.5, 0.5, 0.5], skip=frozenset({"-z", "+y"}))
    pts = np.concatenate([pa.sample(0.1, np.random.default_rng(1)).points for pa in box.patches()])
    assert len(box.patches()) == 4
    assert not np.any(np.isclose(pts[:, 2], 0.0)) and not np.any(np.isclose(pts[:, 1], 0.5))
    with pytest.raises(InvalidInputError, match="unknown box faces"):
        Box([0, 0, 0], [1, 1, 1], skip=frozenset({"top"}))


def test_cone_frustum_samples_on_surface_with_outward_normals():
    rng = np.random.default_rng(2)
    rot = _random_rot(rng)
    cyl = Cylinder([0.1, 0.2, 0.3], 0.2, 0.5, r1=0.1, rot=rot, caps=("bottom", "top"))
    for pa in cyl.patches():
        s = pa.sample(0.02, rng)
        assert len(s) == pa.count(0.02)
        _check_frames(s.frames)
        loc = (s.points - cyl.base) @ rot
        nloc = s.frames[:, :, 2] @ rot
        if isinstance(pa, ConePatch):
            rho = np.hypot(loc[:, 0], loc[:, 1])
            np.testing.assert_allclose(rho, 0.2 + (0.1 - 0.2) * loc[:, 2] / 0.5, atol=1e-12)
            radial = np.stack([loc[:, 0], loc[:, 1]], 1) / rho[:, None]
            assert np.all((nloc[:, :2] * radial).sum(1) > 0.9)  # outward, slanted by the taper
        else:
            assert isinstance(pa, DiskPatch)
            top = loc[:, 2] > 0.25
            np.testing.assert_allclose(loc[:, 2], np.where(top, 0.5, 0.0), atol=1e-12)
            assert np.all(np.hypot(loc[:, 0], loc[:, 1]) <= np.where(top, 0.1, 0.2) + 1e-12)
            np.testing.assert_allclose(nloc[:, 2], np.where(top, 1.0, -1.0), atol=1e-12)
        assert cyl.surface_distance(s.points).max() < 1e-12
    lo, hi = cyl.aabb()
    pts = np.concatenate([pa.sample(0.01, rng).points for pa in cyl.patches()])
    assert np.all(pts >= lo - 1e-12) and np.all(pts <= hi + 1e-12)
    assert np.all(pts.min(0) - lo < 0.02) and np.all(hi - pts.max(0) < 0.02)


def test_disk_covers_its_area_evenly():
    rng = np.random.default_rng(3)
    d = DiskPatch(np.zeros(3), np.eye(3), 0.5)
    s = d.sample(0.025, rng)
    assert abs(len(s) - d.area() / 0.025**2) / (d.area() / 0.025**2) < 0.1
    g = rng.uniform(-0.5, 0.5, (4000, 2))
    g = g[np.hypot(g[:, 0], g[:, 1]) < 0.5]
    nn = np.sqrt(((g[:, None] - s.points[None, :, :2]) ** 2).sum(-1)).min(1)
    assert nn.max() < 0.025 * 1.2


def test_ellipsoid_samples_satisfy_the_equation_and_normals_are_gradients():
    rng = np.random.default_rng(4)
    rot = _random_rot(rng)
    e = Ellipsoid([1, 2, 3], [0.3, 0.2, 0.1], rot)
    s = e.patches()[0].sample(0.02, rng)
    loc = (s.points - e.center) @ rot
    np.testing.assert_allclose(((loc / e.radii) ** 2).sum(1), 1.0, atol=1e-12)
    grad = loc / e.radii**2
    grad /= np.linalg.norm(grad, axis=1, keepdims=True)
    np.testing.assert_allclose(s.frames[:, :, 2] @ rot, grad, atol=1e-9)
    _check_frames(s.frames)
    area = 4 * math.pi * ((0.06**1.6075 + 0.03**1.6075 + 0.02**1.6075) / 3) ** (1 / 1.6075)
    assert len(s) == round(area / 0.02**2)


def test_rect_holes_are_empty():
    rng = np.random.default_rng(5)
    p = RectPatch([0, 0, 0], [0, 0, 2.5], [4.0, 0, 0], holes=((0.0, 0.8, 0.25, 0.5),))
    s = p.sample(0.05, rng)
    u, v = s.points[:, 2] / 2.5, s.points[:, 0] / 4.0
    assert not np.any((u < 0.8) & (v > 0.25) & (v < 0.5))
    assert abs(len(s) - p.count(0.05)) <= 0.02 * p.count(0.05)
    np.testing.assert_allclose(s.frames[:, :, 2], np.tile([0, 1.0, 0], (len(s), 1)), atol=1e-12)  # z x x = +y
    with pytest.raises(InvalidInputError, match="orthogonal"):
        RectPatch([0, 0, 0], [1, 0, 0], [1, 1, 0])


def test_vectorised_quaternions_match_geometry_and_surfels_are_flat():
    rng = np.random.default_rng(6)
    rots = np.stack([_random_rot(rng) for _ in range(200)] + [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]),
                                                               np.diag([-1.0, -1, 1]), np.eye(3)])
    q = rotmats_to_quats_wxyz(rots)
    ref = np.stack([rotmat_to_quat_wxyz(r) for r in rots])
    np.testing.assert_allclose(q, ref, atol=1e-12)
    np.testing.assert_allclose(quat_wxyz_to_rotmat(q), rots, atol=1e-12)
    # surfels: covariance has the thin std along the normal, the in-plane ones along t_u, t_v
    s = Box([0, 0, 0], [0.2, 0.3, 0.1], rots[0]).patches()[0].sample(0.02, rng)
    sf = surfels_from_samples(s, rng, tangent_factor=0.8)
    r = quat_wxyz_to_rotmat(sf.quats)
    cov = r @ (sf.scales[:, :, None] ** 2 * np.swapaxes(r, 1, 2))
    n = s.frames[:, :, 2]
    np.testing.assert_allclose(np.einsum("mi,mij,mj->m", n, cov, n), sf.scales[:, 2] ** 2, rtol=1e-9)
    assert np.all(sf.scales[:, 2] <= 0.003) and np.all(sf.scales[:, 2] >= 0.0005)
    assert np.all(sf.scales[:, 2] < sf.scales[:, :2].min(1))


# ------------------------------------------------------------------------------ scenes
@pytest.fixture(scope="module")
def scenes():
    return {s: generate_scene(SceneConfig(seed=s, target_gaussians=N_SCENE)) for s in SEEDS}


def _same_gaussians(a, b):
    for name in ("means", "sh", "opacities", "log_scales", "quats", "ids"):
        if not torch.equal(getattr(a, name), getattr(b, name)):
            return False
    return set(a.extras) == set(b.extras) and all(torch.equal(a.extras[k], b.extras[k]) for k in a.extras)


def test_determinism_by_seed(scenes):
    again = generate_scene(SceneConfig(seed=1, target_gaussians=N_SCENE))
    assert _same_gaussians(again.gaussians, scenes[1].gaussians)
    assert again.instances == scenes[1].instances
    assert not torch.equal(scenes[0].gaussians.means[:100], scenes[1].gaussians.means[:100])
    # the layout does not depend on the density knob
    denser = generate_scene(SceneConfig(seed=1, target_gaussians=2 * N_SCENE))
    assert denser.instances == scenes[1].instances


@pytest.mark.parametrize("target", [3_000, 20_000, 150_000])
def test_target_count_respected(target):
    sc = generate_scene(SceneConfig(seed=5, target_gaussians=target))
    assert abs(len(sc) - target) <= 0.03 * target


def test_class_coverage_and_plausible_sizes(scenes):
    # (long horizontal side, height) ranges in metres for each thing class
    plausible = {
        "door": ((0.85, 1.1), (2.0, 2.2)), "window": ((0.95, 1.8), (1.05, 1.5)),
        "table": ((0.95, 1.85), (0.7, 0.8)), "chair": ((0.38, 0.5), (0.75, 1.0)),
        "sofa": ((1.55, 2.25), (0.7, 0.95)), "bed": ((1.95, 2.2), (0.85, 1.15)),
        "shelf": ((0.65, 1.25), (1.45, 2.05)), "cabinet": ((0.55, 1.25), (0.65, 1.15)),
        "lamp": ((0.2, 0.55), (0.3, 1.9)), "plant": ((0.12, 1.1), (0.2, 1.4)),
        "monitor": ((0.45, 0.75), (0.4, 0.6)), "rug": ((1.0, 3.5), (0.005, 0.015)),
        "picture": ((0.3, 1.05), (0.3, 0.8)), "book": ((0.1, 0.25), (0.1, 0.31)),
        "pillow": ((0.3, 0.7), (0.08, 0.4)),
    }
    assert set(plausible) == set(THING_CLASSES)
    present = set()
    for sc in scenes.values():
        for info in sc.instances.values():
            if info.stuff:
                continue
            present.add(info.class_name)
            ext = np.subtract(info.aabb_max, info.aabb_min)
            (l0, l1), (h0, h1) = plausible[info.class_name]
            assert l0 <= ext[:2].max() <= l1 and h0 <= ext[2] <= h1, (info.name, ext)
    assert len(present) >= 12, present
    # and the Gaussians carry those classes
    labels = torch.cat([sc.gaussians.extras["label"] for sc in scenes.values()]).unique().tolist()
    names = scenes[0].labels.names
    assert len({names[i] for i in labels} & set(THING_CLASSES)) >= 12


def test_stuff_instances_and_label_set(scenes):
    for sc in scenes.values():
        ls = sc.labels
        names = [sc.instances[i].name for i in range(1, 7)]
        assert names == ["floor", "wall_south", "wall_east", "wall_north", "wall_west", "ceiling"]
        assert all(sc.instances[i].stuff for i in range(1, 7))
        assert not any(info.stuff for i, info in sc.instances.items() if i > 6)
        assert [ls.names[i] for i in np.flatnonzero(ls.stuff)] == ["floor", "wall", "ceiling"]
    no_ceiling = generate_scene(SceneConfig(seed=0, target_gaussians=5000, ceiling=False))
    assert "ceiling" not in {i.class_name for i in no_ceiling.instances.values()}
    # same layout (the flag does not touch the layout's random stream), thing ids shifted by one
    sc5k = generate_scene(SceneConfig(seed=0, target_gaussians=5000))
    assert [(i.name, i.aabb_min) for i in no_ceiling.instances.values() if not i.stuff] == \
        [(i.name, i.aabb_min) for i in sc5k.instances.values() if not i.stuff]
    assert min(i for i, info in no_ceiling.instances.items() if not info.stuff) == 6


def test_instance_ids_unique_and_consistent_with_class(scenes):
    for sc in scenes.values():
        g = sc.gaussians
        lab, inst = g.extras["label"], g.extras["instance"]
        assert lab.dtype == torch.int64 and inst.dtype == torch.int64
        assert sorted(sc.instances) == list(range(1, len(sc.instances) + 1))
        assert len({i.name for i in sc.instances.values()}) == len(sc.instances)
        lut = torch.from_numpy(sc.instance_to_class())
        assert torch.equal(lut[inst], lab)  # one class per instance, the table's
        assert set(inst.unique().tolist()) == set(sc.instances)  # every instance has Gaussians
        for info in sc.instances.values():
            assert sc.labels.names[info.class_id] == info.class_name
            if info.parent:
                assert info.parent in sc.instances and info.parent < info.id
        # every Gaussian lies inside its instance's box
        lo = torch.tensor([sc.instances[i].aabb_min for i in range(1, len(sc.instances) + 1)])
        hi = torch.tensor([sc.instances[i].aabb_max for i in range(1, len(sc.instances) + 1)])
        m = g.means.double()
        assert torch.all(m >= lo[inst - 1] - 1e-5) and torch.all(m <= hi[inst - 1] + 1e-5)
        assert torch.equal(g.ids, torch.arange(len(g)))


def test_every_gaussian_lies_on_its_objects_surface(scenes):
    sc = scenes[2]
    means = sc.gaussians.means.double().numpy()
    inst = sc.gaussians.extras["instance"].numpy()
    for obj in sc.objects:
        pts = means[inst == obj.instance_id]
        d = np.min([p.prim.surface_distance(pts) for p in obj.parts], axis=0)
        assert d.max() < 2e-5, (obj.name, d.max())  # float32 rounding of metre-scale coordinates


def test_no_floor_gaussians_under_rugs(scenes):
    for sc in scenes.values():
        g = sc.gaussians
        floor = g.means[g.extras["instance"] == 1].double()
        for info in sc.instances.values():
            if info.class_name == "rug":
                lo, hi = torch.tensor(info.aabb_min), torch.tensor(info.aabb_max)
                inside = ((floor[:, :2] > lo[:2] + 1e-3) & (floor[:, :2] < hi[:2] - 1e-3)).all(1)
                assert not inside.any()


def test_objects_do_not_overlap_and_stay_in_the_room(scenes):
    for sc in scenes.values():
        things = [i for i in sc.instances.values() if not i.stuff]
        for a in things:
            lo, hi = np.array(a.aabb_min), np.array(a.aabb_max)
            if a.class_name not in ("door", "window"):  # openings reach into the wall
                assert np.all(lo >= sc.room_min - 1e-9) and np.all(hi <= sc.room_max + 1e-9), a.name
            for b in things:
                if b.id <= a.id or b.parent == a.id or a.parent == b.id:
                    continue
                blo, bhi = np.array(b.aabb_min), np.array(b.aabb_max)
                overlap = np.minimum(hi, bhi) - np.maximum(lo, blo)
                assert not np.all(overlap > 1e-6), (a.name, b.name, overlap)


def test_scales_quaternions_and_opacities_in_range(scenes):
    sc = scenes[0]
    g = sc.gaussians
    s = g.scales.sort(dim=1).values
    assert torch.all(s[:, 0] >= 0.0004) and torch.all(s[:, 0] <= 0.0031)  # thin along the normal
    assert torch.all(s[:, 2] <= 0.25) and 0.005 < s[:, 2].median() < 0.08  # mm to cm in plane
    assert torch.allclose(g.quats.norm(dim=1), torch.ones(len(g)), atol=1e-5)
    op = g.opacity
    assert torch.all(op > 0.15) and torch.all(op < 0.995)
    assert (op > 0.8).float().mean() > 0.85  # mostly opaque
    window = g.extras["label"] == sc.labels.index_of("window")
    glass = window & (op < 0.5)
    assert glass.sum() > 0 and torch.all(op[glass] >= 0.199)
    assert torch.all(torch.isfinite(g.sh)) and torch.all(g.base_rgb > 0.0)
    # floor Gaussians lie flat: their thinnest axis is the world z axis
    floor = g.extras["instance"] == 1
    r = torch.from_numpy(quat_wxyz_to_rotmat(g.quats[floor].double().numpy()))
    thin = g.log_scales[floor].argmin(1)
    normal = r[torch.arange(len(thin)), :, thin]
    assert torch.allclose(normal[:, 2].abs(), torch.ones(len(thin), dtype=torch.float64), atol=1e-5)


def test_config_validation_names_the_field():
    with pytest.raises(InvalidInputError, match="target_gaussians"):
        generate_scene(SceneConfig(target_gaussians=10))
    with pytest.raises(InvalidInputError, match="room_x"):
        generate_scene(SceneConfig(room_x=(5.0, 4.0)))
    with pytest.raises(InvalidInputError, match="sh_degree"):
        generate_scene(SceneConfig(sh_degree=5))


def test_sh_degree_padding():
    sc = generate_scene(SceneConfig(seed=0, target_gaussians=3000, sh_degree=2))
    assert sc.gaussians.sh_degree == 2 and torch.all(sc.gaussians.sh[:, 1:] == 0)


# ------------------------------------------------------------------------- trajectory
def test_trajectory_inside_room_and_outside_objects(scenes):
    cfg = TrajectoryConfig(loop_views=16, random_views=10, width=64, height=48)
    for sc in scenes.values():
        tr = make_trajectory(sc, cfg)
        assert len(tr) == 26 and tr.kinds == ["loop"] * 16 + ["random"] * 10
        pos = tr.c2w[:, :3, 3]
        assert np.all(pos >= sc.room_min + cfg.clearance - 1e-9) and np.all(pos <= sc.room_max - cfg.clearance + 1e-9)
        lo, hi = sc.obstacles()
        inside = np.all((pos[:, None] > lo[None] - cfg.clearance) & (pos[:, None] < hi[None] + cfg.clearance), axis=2)
        assert not inside.any()
        for cam, c2w in zip(tr.cameras, tr.c2w):
            np.testing.assert_allclose(cam.viewmat.double().numpy() @ c2w, np.eye(4), atol=1e-5)
            np.testing.assert_allclose(np.linalg.det(c2w[:3, :3]), 1.0, atol=1e-9)
            assert cam.width == 64 and cam.height == 48
        loop = pos[:16]
        np.testing.assert_allclose(loop[:, 2], 1.6, atol=0.051)  # head height
        step = np.linalg.norm(np.diff(np.vstack([loop, loop[:1]]), axis=0), axis=1)
        assert step.max() < 1.5 * step.mean()  # a smooth, evenly sampled loop
        fwd = tr.c2w[:16, :3, 2]
        assert np.all(fwd[:, 2] < 0) and np.all(fwd[:, 2] > -0.6)  # looking slightly down
    again = make_trajectory(scenes[0], cfg)
    np.testing.assert_array_equal(again.c2w, make_trajectory(scenes[0], cfg).c2w)


def test_trajectory_config_validation(scenes):
    with pytest.raises(InvalidInputError, match="at least one view"):
        make_trajectory(scenes[0], TrajectoryConfig(loop_views=0, random_views=0))
    with pytest.raises(InvalidInputError, match="fov"):
        make_trajectory(scenes[0], TrajectoryConfig(fov_x_deg=179))


# ------------------------------------------------------------------ ground truth (renderer)
@pytest.fixture(scope="module")
def small_scene():
    return generate_scene(SceneConfig(seed=4, target_gaussians=8000))


def _free_spot(sc, radius, z_above):
    """An (x, y) at least ``radius`` from the walls and from every object box reaching above ``z_above``."""
    lo, hi = sc.obstacles()
    for x in np.arange(radius, sc.room_max[0] - radius, 0.05):
        for y in np.arange(radius, sc.room_max[1] - radius, 0.05):
            dx = np.maximum(np.maximum(lo[:, 0] - x, x - hi[:, 0]), 0)
            dy = np.maximum(np.maximum(lo[:, 1] - y, y - hi[:, 1]), 0)
            near = (np.hypot(dx, dy) < radius) & (hi[:, 2] > z_above)
            if not near.any():
                return x, y
    pytest.skip("no free spot in this room")


@pytest.mark.parametrize("where", ["ceiling", "floor"])
def test_ground_truth_of_a_plane_is_exact(small_scene, where):
    from chorus_ros.core.geometry import Camera, look_at_pose
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth

    sc = small_scene
    z = 1.5 if where == "ceiling" else 1.0
    # narrow view: footprint (< 0.5 m) plus 3 sigma of the largest Gaussians stays clear of objects
    x, y = _free_spot(sc, 0.9, z if where == "ceiling" else -1.0)
    eye = np.array([x, y, z])
    target = eye + np.array([0, 0, 1.0 if where == "ceiling" else -1.0])
    cam = Camera.from_c2w(look_at_pose(eye, target), Camera.intrinsics_from_fov(24, 18, 30.0), 24, 18)
    gt = render_ground_truth(sc.gaussians, cam)
    cls = sc.labels.index_of(where)
    inst = 6 if where == "ceiling" else 1
    assert torch.all(gt.semantic == cls) and torch.all(gt.instance == inst)
    assert torch.all(gt.alpha > 0.97)  # opaque surface (3 % of Gaussians are semi-transparent)
    # every Gaussian of the plane lies exactly on it, so the expected depth is the distance
    expect = sc.room_max[2] - z if where == "ceiling" else z
    assert torch.allclose(gt.depth, torch.full_like(gt.depth, expect), atol=2e-4)


def test_ground_truth_labels_come_from_the_top_weight_gaussian(small_scene):
    from chorus_ros.core.render import render
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth

    sc = small_scene
    g = sc.gaussians
    tr = make_trajectory(sc, TrajectoryConfig(loop_views=2, random_views=1, width=48, height=36))
    seen = set()
    for cam in tr.cameras:
        gt = render_ground_truth(g, cam, min_alpha=0.3)
        out = render(g, cam, return_top_index=True)
        assert torch.equal(out.top_index, gt.top_index)
        top = gt.top_index
        valid = (top >= 0) & (gt.alpha >= 0.3)
        assert torch.equal(gt.semantic == UNLABELED, ~valid) and torch.equal(gt.instance == UNLABELED, ~valid)
        assert valid.float().mean() > 0.95  # a room view is almost fully covered
        assert torch.equal(gt.semantic[valid], g.extras["label"][top[valid]])
        assert torch.equal(gt.instance[valid], g.extras["instance"][top[valid]])
        # the pixel is covered by that Gaussian: its projected centre is within its screen radius
        vm, K = cam.viewmat.double(), cam.K.double()
        pc = g.means.double() @ vm[:3, :3].T + vm[:3, 3]
        uv = pc[:, :2] / pc[:, 2:3] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
        ys, xs = torch.nonzero(valid, as_tuple=True)
        idx = top[ys, xs]
        d = (uv[idx] - torch.stack([xs + 0.5, ys + 0.5], 1).double()).abs().max(1).values
        assert torch.all(pc[idx, 2] > 0) and torch.all(d <= out.radii[idx].double() + 1e-6)
        seen |= set(gt.semantic[valid].unique().tolist())
    assert len(seen) >= 3
    # the threshold decides what is unlabeled
    gt1 = render_ground_truth(g, tr.cameras[0], min_alpha=1.0)
    assert torch.all(gt1.semantic == UNLABELED)


def test_dataset_export_load_round_trip_is_exact(small_scene, tmp_path):
    from chorus_ros.core.synthetic.dataset import export_dataset, load_dataset, quantize_view
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth

    sc = small_scene
    tr = make_trajectory(sc, TrajectoryConfig(loop_views=1, random_views=1, width=40, height=30))
    calls = []
    summary = export_dataset(sc, tr, tmp_path / "ds", progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 2), (2, 2)] and summary.frames == 2 and summary.labelled_fraction > 0.9
    root = tmp_path / "ds"
    for f in ("README.md", "camera.yaml", "labels.yaml", "instances.yaml", "scene.yaml", "scene.ply",
              "traj_w_c.txt", "rgb/rgb_0.png", "depth/depth_1.png", "semantic_class/semantic_class_1.png",
              "semantic_instance/semantic_instance_1.png"):
        assert (root / f).is_file(), f
    with pytest.raises(InvalidInputError, match="exists"):
        export_dataset(sc, tr, root)

    ds = load_dataset(root)
    assert len(ds) == 2 and ds.width == 40 and ds.height == 30
    np.testing.assert_array_equal(ds.K, tr.K)
    np.testing.assert_array_equal(ds.c2w, tr.c2w)  # repr() floats round-trip exactly
    assert ds.labels == sc.labels and ds.instances == sc.instances
    assert ds.meta["seed"] == 4 and ds.meta["gaussians"] == len(sc)
    for i, frame in enumerate(ds):
        gt = render_ground_truth(sc.gaussians, tr.cameras[i])
        q = quantize_view(gt)
        assert frame.index == i
        np.testing.assert_array_equal(frame.rgb, q.rgb)
        np.testing.assert_array_equal(frame.depth_raw, q.depth)
        np.testing.assert_array_equal(frame.semantic, q.semantic.astype(np.int64))
        np.testing.assert_array_equal(frame.instance, q.instance.astype(np.int64))
        np.testing.assert_array_equal(frame.depth, (q.depth / 1000.0).astype(np.float32))
        assert torch.equal(frame.camera.viewmat, tr.cameras[i].viewmat)
        assert frame.rgb.dtype == np.uint8 and frame.semantic.dtype == np.int64
        # the loaded RGB is RGB (not OpenCV's BGR): compare with the float render
        assert np.abs(frame.rgb / 255.0 - gt.rgb.numpy()).max() <= 0.5 / 255 + 1e-6
        assert np.all((frame.depth_raw == 0) == (gt.alpha.numpy() < 0.3))
    g = ds.load_gaussians()
    assert _same_gaussians(g, sc.gaussians)
    with pytest.raises(IndexError):
        ds[2]
