"""The one module for pose, quaternion and camera conventions.

Conventions used everywhere else in chorus_ros:

* **ROS quaternions are xyzw** (``geometry_msgs/Quaternion``); **3DGS / gsplat quaternions are
  wxyz** (PLY ``rot_0..3`` = w, x, y, z). Convert only with :func:`quat_xyzw_to_wxyz` and
  :func:`quat_wxyz_to_xyzw`.
* A ROS camera pose (``PoseStamped`` in the camera *optical* frame: x right, y down, z forward)
  is **camera-to-world**. The renderer (like gsplat's ``viewmats``) wants **world-to-camera**.
  Convert only with :func:`pose_to_viewmat` / :func:`viewmat_to_pose`.
* Intrinsics follow ``sensor_msgs/CameraInfo.k`` (row-major 3x3, pixel units, pixel centres at
  integer + 0.5 as in gsplat and OpenCV).

Everything here is pure numpy/torch; ROS message conversion lives in ``chorus_ros.ros``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError

__all__ = [
    "Camera",
    "quat_xyzw_to_wxyz",
    "quat_wxyz_to_xyzw",
    "quat_wxyz_to_rotmat",
    "rotmat_to_quat_wxyz",
    "pose_to_viewmat",
    "viewmat_to_pose",
    "look_at_pose",
    "normalize_quat",
    "quat_multiply",
    "rotate_about_axis",
    "transform_gaussians",
]

_QUAT_NORM_TOL = 1e-3


def quat_xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """Reorder ``[..., 4]`` quaternions from ROS xyzw to 3DGS/gsplat wxyz."""
    q = np.asarray(q)
    return np.concatenate([q[..., 3:4], q[..., 0:3]], axis=-1)


def quat_wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Reorder ``[..., 4]`` quaternions from 3DGS/gsplat wxyz to ROS xyzw."""
    q = np.asarray(q)
    return np.concatenate([q[..., 1:4], q[..., 0:1]], axis=-1)


def normalize_quat(q: np.ndarray, *, strict: bool = False, name: str = "quaternion") -> np.ndarray:
    """Return unit quaternions ``[..., 4]`` (any component order).

    Args:
        q: quaternions, any order.
        strict: if True, raise :class:`InvalidInputError` when a norm differs from 1 by more
            than 1e-3 (a ROS pose with a non-unit quaternion is a bug in the sender); if False,
            only zero or non-finite quaternions raise.
        name: what to call the value in the error message.
    """
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(n < 1e-12):
        raise InvalidInputError(f"{name} is zero or not finite: {q.tolist()}")
    if strict and np.any(np.abs(n - 1.0) > _QUAT_NORM_TOL):
        raise InvalidInputError(
            f"{name} is not unit length (norm {n.ravel().tolist()}, tolerance {_QUAT_NORM_TOL})"
        )
    return q / n


def quat_wxyz_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` from (normalised here) wxyz quaternions ``[..., 4]``."""
    q = normalize_quat(q)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    r = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return r.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat_wxyz(r: np.ndarray) -> np.ndarray:
    """wxyz unit quaternion with w >= 0 from a single 3x3 rotation matrix (Shepperd's method)."""
    r = np.asarray(r, dtype=np.float64)
    if r.shape != (3, 3):
        raise InvalidInputError(f"rotation matrix must be 3x3, got {r.shape}")
    tr = np.trace(r)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    return -q if q[0] < 0 else q


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of wxyz quaternions ``a [.., 4]`` and ``b [.., 4]``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def rotate_about_axis(angle: float, axis: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R [3, 3], q [4] wxyz)`` (``dtype``) for a rotation by ``angle`` radians about world ``axis``."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = torch.eye(3, dtype=dtype)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    q = torch.zeros(4, dtype=dtype)
    q[0], q[1 + axis] = math.cos(angle / 2), math.sin(angle / 2)
    return R, q


def transform_gaussians(g, R: torch.Tensor, q: torch.Tensor, t: torch.Tensor, dtype: torch.dtype | None = None):
    """Gaussians ``g`` (:class:`~chorus_ros.core.gaussians.GaussianArrays`) moved rigidly: means
    ``R x + t`` (``R [3, 3]``, ``t [3]``, computed in ``dtype``, default the means' own, then
    stored in the means' dtype), orientations ``q * q_g`` (``q [4]`` wxyz, the same rotation as
    ``R``); sizes, opacities, colours, ids and extras unchanged. SH bands above DC are dropped:
    they would need rotating."""
    from chorus_ros.core.gaussians import GaussianArrays
    dt = dtype or g.means.dtype
    dev = g.means.device
    means = (g.means.to(dt) @ R.to(dev, dt).T + t.to(dev, dt)).to(g.means.dtype)
    quats = quat_multiply(q.to(g.quats.device, g.quats.dtype).expand_as(g.quats), g.quats)
    return GaussianArrays(means, g.sh[:, :1], g.opacities, g.log_scales, quats, g.ids, dict(g.extras))


def pose_to_viewmat(position: np.ndarray, quat_xyzw: np.ndarray, *, strict: bool = True) -> np.ndarray:
    """World-to-camera 4x4 matrix from a ROS camera-to-world pose in the optical frame.

    Args:
        position: ``[3]`` camera centre in the world (map) frame, metres.
        quat_xyzw: ``[4]`` orientation of the optical frame in the world frame, ROS xyzw order.
        strict: reject quaternions that are not unit length (see :func:`normalize_quat`).

    Returns:
        ``[4, 4]`` float64 world-to-camera matrix (gsplat ``viewmats`` convention).
    """
    p = np.asarray(position, dtype=np.float64).reshape(-1)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise InvalidInputError(f"camera position must be 3 finite numbers, got {p.tolist()}")
    q = normalize_quat(np.asarray(quat_xyzw, dtype=np.float64).reshape(4), strict=strict,
                       name="camera orientation")
    r_c2w = quat_wxyz_to_rotmat(quat_xyzw_to_wxyz(q))
    v = np.eye(4)
    v[:3, :3] = r_c2w.T
    v[:3, 3] = -r_c2w.T @ p
    return v


def viewmat_to_pose(viewmat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pose_to_viewmat`: ``(position [3], quat_xyzw [4])`` camera-to-world."""
    v = np.asarray(viewmat, dtype=np.float64)
    r_c2w = v[:3, :3].T
    p = -r_c2w @ v[:3, 3]
    return p, quat_wxyz_to_xyzw(rotmat_to_quat_wxyz(r_c2w))


def look_at_pose(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world 4x4 (optical frame: z forward, y down) looking from ``eye`` at ``target``.

    ``up`` is the world up direction (z-up for REP-103 ``map`` frames).
    """
    eye = np.asarray(eye, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    up = np.asarray(up, dtype=np.float64)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-8:  # looking straight along up: pick any right vector
        right = np.cross(fwd, np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye
    return c2w


@dataclass
class Camera:
    """A pinhole camera for one view.

    Attributes:
        viewmat: ``[4, 4]`` world-to-camera (optical frame), float32 tensor.
        K: ``[3, 3]`` intrinsics in pixels, float32 tensor.
        width: image width in pixels.
        height: image height in pixels.
        frame_id: the optical frame's name (copied into outputs' headers).
    """

    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    frame_id: str = "camera_optical_frame"

    def __post_init__(self) -> None:
        self.viewmat = torch.as_tensor(self.viewmat, dtype=torch.float32)
        self.K = torch.as_tensor(self.K, dtype=torch.float32)
        if tuple(self.viewmat.shape) != (4, 4):
            raise InvalidInputError(f"viewmat must be 4x4, got {tuple(self.viewmat.shape)}")
        if tuple(self.K.shape) != (3, 3):
            raise InvalidInputError(f"K must be 3x3, got {tuple(self.K.shape)}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise InvalidInputError(f"image size must be positive, got {self.width}x{self.height}")
        if not torch.isfinite(self.K).all() or float(self.K[0, 0]) <= 0 or float(self.K[1, 1]) <= 0:
            raise InvalidInputError(f"intrinsics need finite positive focal lengths, got K={self.K.tolist()}")
        if not torch.isfinite(self.viewmat).all():
            raise InvalidInputError("viewmat has non-finite values")
        self.width, self.height = int(self.width), int(self.height)

    @classmethod
    def from_pose(cls, position: np.ndarray, quat_xyzw: np.ndarray, K: np.ndarray, width: int,
                  height: int, frame_id: str = "camera_optical_frame", *, strict: bool = True) -> "Camera":
        """Build from a ROS-style camera-to-world pose (xyzw) and a row-major 3x3 ``K``."""
        return cls(torch.from_numpy(pose_to_viewmat(position, quat_xyzw, strict=strict)).float(),
                   torch.as_tensor(np.asarray(K, dtype=np.float64).reshape(3, 3)).float(),
                   width, height, frame_id)

    @classmethod
    def from_c2w(cls, c2w: np.ndarray, K: np.ndarray, width: int, height: int,
                 frame_id: str = "camera_optical_frame") -> "Camera":
        """Build from a ``[4, 4]`` camera-to-world matrix (optical frame)."""
        return cls(torch.as_tensor(np.linalg.inv(np.asarray(c2w, dtype=np.float64))).float(),
                   torch.as_tensor(np.asarray(K, dtype=np.float64).reshape(3, 3)).float(),
                   width, height, frame_id)

    @staticmethod
    def intrinsics_from_fov(width: int, height: int, fov_x_deg: float) -> np.ndarray:
        """Square-pixel ``[3, 3]`` K with the principal point at the image centre."""
        fx = 0.5 * width / np.tan(np.deg2rad(fov_x_deg) / 2)
        return np.array([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1]], dtype=np.float64)

    @property
    def c2w(self) -> np.ndarray:
        """``[4, 4]`` camera-to-world (float64)."""
        return np.linalg.inv(self.viewmat.double().numpy())

    @property
    def position(self) -> np.ndarray:
        """``[3]`` camera centre in the world frame."""
        return self.c2w[:3, 3]

    def to(self, device: torch.device | str) -> "Camera":
        """Copy with tensors on ``device``."""
        return Camera(self.viewmat.to(device), self.K.to(device), self.width, self.height, self.frame_id)

    def scaled(self, factor: float) -> "Camera":
        """Same view at ``factor`` times the resolution (intrinsics scaled accordingly)."""
        K = self.K.clone()
        K[:2] *= factor
        return Camera(self.viewmat, K, max(1, round(self.width * factor)),
                      max(1, round(self.height * factor)), self.frame_id)
