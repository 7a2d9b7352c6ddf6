"""chorus_ros.core.render.parity on the CPU: the statistics the GPU tests and scripts/gpu_check.py
report, checked on outputs with known differences (the gsplat side runs only on a GPU)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from chorus_ros.core.geometry import Camera
from chorus_ros.core.render import RenderSettings, render
from chorus_ros.core.render.parity import (compare_backends, gradient_differences, output_differences,
                                           random_gaussians)


def _cam(w: int = 32, h: int = 24) -> Camera:
    return Camera.from_c2w(np.eye(4), Camera.intrinsics_from_fov(w, h, 60.0), w, h)


def test_output_differences_known_perturbation():
    g = random_gaussians(300, seed=1, degree=1)
    feats = torch.randn(len(g), 3, generator=torch.Generator().manual_seed(2))
    ref = render(g, _cam(), RenderSettings(backend="reference"), features=feats, return_weights=True,
                 return_top_index=True)
    rgb = ref.rgb.clone()
    rgb[5, 7, 1] += 0.25                     # one pixel, one channel
    feat = ref.features.clone()
    feat[0, 0, 2] -= 1.0
    radii = ref.radii.clone()
    radii[:3] += 1                           # 3 of 300 Gaussians differ
    test = replace(ref, rgb=rgb, features=feat, radii=radii)
    d = output_differences(test, ref, feature_scale=2.0)
    assert set(d["outputs"]) == {"rgb", "alpha", "depth(alpha>0.5)", "features", "weights(rel)"}
    assert d["outputs"]["rgb"]["max"] == pytest.approx(0.25, abs=1e-6)
    assert d["outputs"]["features"]["max"] == pytest.approx(0.5, abs=1e-6)
    assert 0 < d["outputs"]["rgb"]["p999"] < 0.25   # one pixel of 768 sits above the 99.9th percentile
    assert d["outputs"]["alpha"] == {"max": 0.0, "p999": 0.0}
    assert d["radii_equal"] == pytest.approx(297 / 300)
    assert d["top_index_equal"] == 1.0
    assert d["ref_alpha_mean"] == pytest.approx(float(ref.alpha.mean()))


def test_compare_and_gradients_same_backend_agree_exactly():
    g = random_gaussians(200, seed=3, degree=1)
    feats = torch.randn(len(g), 2, generator=torch.Generator().manual_seed(4))
    d, ref, test = compare_backends(g, _cam(), RenderSettings(), feats, backend="reference", device="cpu")
    assert ref.backend == test.backend == "reference"
    assert all(v == {"max": 0.0, "p999": 0.0} for v in d["outputs"].values())
    rel = gradient_differences(g, _cam(), feats, backend="reference", device="cpu")
    assert set(rel) == {"means", "quats", "log_scales", "opacities", "sh", "features"}
    assert max(rel.values()) == 0.0


def test_random_gaussians_rejects_bad_arguments():
    with pytest.raises(ValueError, match="degree"):
        random_gaussians(10, seed=0, degree=4)
