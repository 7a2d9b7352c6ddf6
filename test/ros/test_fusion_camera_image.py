"""Camera images for per_view.fusion = 'camera': pure conversions and stamp pairing (no rclpy.init)."""
from __future__ import annotations

import numpy as np
import pytest

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.ros import conversions as cv


def test_camera_rgb_reorders_and_replicates_channels():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(cv.camera_rgb(cv.numpy_to_image(rgb, "rgb8"), 5, 4), rgb)
    assert np.array_equal(cv.camera_rgb(cv.numpy_to_image(rgb[..., ::-1].copy(), "bgr8"), 5, 4), rgb)
    mono = rgb[..., 0].copy()
    out = cv.camera_rgb(cv.numpy_to_image(mono, "mono8"), 5, 4)
    assert out.shape == (4, 5, 3) and np.array_equal(out[..., 2], mono)
    with pytest.raises(InvalidInputError, match="5x4 but the view"):
        cv.camera_rgb(cv.numpy_to_image(rgb, "rgb8"), 10, 8)
    with pytest.raises(InvalidInputError, match="not 8-bit"):
        cv.camera_rgb(cv.numpy_to_image(np.zeros((4, 5), np.float32), "32FC1"), 5, 4)


def test_pick_by_stamp_pairs_within_tolerance_never_latest():
    buf = {100: "a", 200: "b", 1000: "c"}
    assert cv.pick_by_stamp(buf, 200, 0) == "b"
    assert cv.pick_by_stamp(buf, 150, 0) is None              # exact pairing: nothing
    assert cv.pick_by_stamp(buf, 160, 50) == "b"
    assert cv.pick_by_stamp(buf, 150, 50) == "a"              # tie: the older one
    assert cv.pick_by_stamp(buf, 5000, 100) is None           # not "the latest"
