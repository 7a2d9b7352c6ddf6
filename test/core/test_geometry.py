"""Round trips and independent checks of the one conventions module (chorus_ros.core.geometry).

transforms3d (wxyz quaternions) is the independent reference for quaternion -> matrix.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transforms3d.quaternions as t3q

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.geometry import (Camera, look_at_pose, normalize_quat, pose_to_viewmat,
                                      quat_wxyz_to_rotmat, quat_wxyz_to_xyzw, quat_xyzw_to_wxyz,
                                      rotmat_to_quat_wxyz, viewmat_to_pose)


def _random_unit_quats(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_xyzw_wxyz_reorder_round_trip_and_meaning():
    q_xyzw = np.array([0.1, 0.2, 0.3, 0.9])
    q_wxyz = quat_xyzw_to_wxyz(q_xyzw)
    np.testing.assert_array_equal(q_wxyz, [0.9, 0.1, 0.2, 0.3])
    np.testing.assert_array_equal(quat_wxyz_to_xyzw(q_wxyz), q_xyzw)
    batch = _random_unit_quats(7)
    np.testing.assert_array_equal(quat_wxyz_to_xyzw(quat_xyzw_to_wxyz(batch)), batch)


def test_rotmat_matches_transforms3d_and_round_trips():
    # include rotations near 180 degrees, which take Shepperd's non-trace branches
    qs = np.concatenate([_random_unit_quats(200, seed=1),
                         [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1e-4, 0.7071, 0.7071, 0]]])
    for q in qs:
        r = quat_wxyz_to_rotmat(q)
        np.testing.assert_allclose(r, t3q.quat2mat(q / np.linalg.norm(q)), atol=1e-12)
        q2 = rotmat_to_quat_wxyz(r)
        assert q2[0] >= 0
        # q and -q are the same rotation
        s = np.sign(np.dot(q2, q)) or 1.0
        np.testing.assert_allclose(q2, s * q / np.linalg.norm(q), atol=1e-9)


def test_batched_rotmat():
    qs = _random_unit_quats(5, seed=2)
    r = quat_wxyz_to_rotmat(qs)
    assert r.shape == (5, 3, 3)
    for i in range(5):
        np.testing.assert_allclose(r[i], t3q.quat2mat(qs[i]), atol=1e-12)


def test_pose_viewmat_round_trip_and_semantics():
    rng = np.random.default_rng(3)
    for q_wxyz in _random_unit_quats(50, seed=4):
        p = rng.uniform(-5, 5, size=3)
        q_xyzw = quat_wxyz_to_xyzw(q_wxyz)
        v = pose_to_viewmat(p, q_xyzw)
        # the camera centre maps to the camera-frame origin
        np.testing.assert_allclose(v @ np.append(p, 1.0), [0, 0, 0, 1], atol=1e-12)
        # a point 2 m along the optical axis (c2w z column) is at camera z = +2
        r_c2w = t3q.quat2mat(q_wxyz)
        np.testing.assert_allclose(v @ np.append(p + 2.0 * r_c2w[:, 2], 1.0), [0, 0, 2, 1], atol=1e-12)
        p2, q2 = viewmat_to_pose(v)
        np.testing.assert_allclose(p2, p, atol=1e-12)
        s = np.sign(np.dot(q2, q_xyzw))
        np.testing.assert_allclose(s * q2, q_xyzw, atol=1e-9)


def test_non_unit_quaternion_is_rejected_strictly_and_normalised_otherwise():
    with pytest.raises(InvalidInputError, match="not unit length"):
        pose_to_viewmat([0, 0, 0], [0, 0, 0, 2.0])
    v = pose_to_viewmat([0, 0, 0], [0, 0, 0, 2.0], strict=False)
    np.testing.assert_allclose(v, np.eye(4), atol=1e-12)
    with pytest.raises(InvalidInputError, match="zero or not finite"):
        normalize_quat([0, 0, 0, 0])
    with pytest.raises(InvalidInputError, match="zero or not finite"):
        pose_to_viewmat([0, 0, 0], [np.nan, 0, 0, 1])
    with pytest.raises(InvalidInputError, match="position"):
        pose_to_viewmat([0, np.inf, 0], [0, 0, 0, 1])


def test_camera_projects_points_where_the_pinhole_model_says():
    K = Camera.intrinsics_from_fov(64, 48, 90.0)
    c2w = look_at_pose(eye=[1.0, 2.0, 1.5], target=[4.0, 2.0, 1.5])
    cam = Camera.from_c2w(c2w, K, 64, 48)
    # the look-at target is straight ahead: principal point, depth 3 m
    x = cam.viewmat.double().numpy() @ np.array([4.0, 2.0, 1.5, 1.0])
    np.testing.assert_allclose(x[:3], [0, 0, 3.0], atol=1e-6)
    # z-up world, optical y down: a point above the target projects above the centre (v < cy)
    xa = cam.viewmat.double().numpy() @ np.array([4.0, 2.0, 2.5, 1.0])
    uv = K @ (xa[:3] / xa[2])
    assert uv[1] < K[1, 2] and abs(uv[0] - K[0, 2]) < 1e-4
    # from_pose with the same pose gives the same camera
    p, q = viewmat_to_pose(cam.viewmat.double().numpy())
    cam2 = Camera.from_pose(p, q, K, 64, 48)
    torch.testing.assert_close(cam2.viewmat, cam.viewmat, atol=1e-6, rtol=0)
    np.testing.assert_allclose(cam2.position, [1.0, 2.0, 1.5], atol=1e-5)


def test_camera_validation_names_the_problem():
    K = Camera.intrinsics_from_fov(64, 48, 60.0)
    with pytest.raises(InvalidInputError, match="image size"):
        Camera(torch.eye(4), torch.as_tensor(K), 0, 48)
    bad = K.copy()
    bad[0, 0] = 0.0
    with pytest.raises(InvalidInputError, match="focal"):
        Camera(torch.eye(4), torch.as_tensor(bad), 64, 48)
    with pytest.raises(InvalidInputError, match="4x4"):
        Camera(torch.eye(3), torch.as_tensor(K), 64, 48)


def test_scaled_camera_keeps_the_view():
    K = Camera.intrinsics_from_fov(64, 48, 60.0)
    cam = Camera.from_c2w(look_at_pose([0, 0, 1], [1, 0, 1]), K, 64, 48).scaled(0.5)
    assert (cam.width, cam.height) == (32, 24)
    np.testing.assert_allclose(cam.K.numpy()[:2, 2], [16, 12])
