"""Weighted instance images (per_view.instance_image 'weighted'): the object of the pixel's class
with the most blending weight, by rendered random codes, held to the exact one-hot reference."""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
import torch

from chorus_ros.core.decode.fusion import PerViewConfig
from chorus_ros.core.decode.instance_image import (CODE_DIM, class_object_pairs, exact_weighted_instance_image,
                                                   gaussian_instance_codes, instance_codes, weighted_instance_image)
from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.labels import UNLABELED
from chorus_ros.core.pipeline import ATTR_INSTANCE, ATTR_LABEL

_spec = importlib.util.spec_from_file_location("_tp", pathlib.Path(__file__).with_name("test_pipeline.py"))
_tp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tp)


def test_codes_are_fixed_unit_vectors_per_id_and_zero_without_an_object():
    a = instance_codes(torch.tensor([3, 7, 3]))
    assert a.shape == (3, CODE_DIM)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    assert torch.equal(a[0], a[2]) and not torch.allclose(a[0], a[1])
    assert torch.equal(instance_codes(torch.tensor([7]))[0], a[1])     # the same in every call
    g = gaussian_instance_codes(torch.tensor([0, 7, -1, 3]))
    assert torch.equal(g[0], torch.zeros(CODE_DIM)) and torch.equal(g[2], torch.zeros(CODE_DIM))
    assert torch.equal(g[1], a[1]) and torch.equal(g[3], a[0])
    pc, pid = class_object_pairs(torch.tensor([1, 1, 2, UNLABELED, 2]), torch.tensor([3, 3, 7, 9, 0]))
    assert pc.tolist() == [1, 2] and pid.tolist() == [3, 7]
    # one pair per object, its majority class (ties: the smaller class id)
    pc, pid = class_object_pairs(torch.tensor([4, 4, 2, 0, 5, 5, 3, 1]), torch.tensor([9, 9, 9, 9, 2, 2, 6, 6]))
    assert pid.tolist() == [2, 6, 9] and pc.tolist() == [5, 1, 4]


def test_a_faint_floater_in_front_does_not_take_the_object_behind():
    """Hand case: a wall floater (object 7, weight 0.6) is the strongest Gaussian of a pixel whose
    composited class is chair; chairs 3 (0.36 in all) and 4 (0.2) lie behind it."""
    code = instance_codes(torch.tensor([7, 3, 4]))
    pix = 0.6 * code[0] + 0.36 * code[1] + 0.2 * code[2]
    img = torch.stack([pix, pix, 0.01 * code[1], pix])[None]          # [1, 4, D]
    labels = torch.tensor([[1, 5, 1, UNLABELED]])                     # chair, a class without objects, chair (faint), none
    top = torch.tensor([[7, 7, 7, 7]])
    pc, pid = torch.tensor([1, 1, 0]), torch.tensor([3, 4, 7])       # chairs 3 and 4, wall 7
    out = weighted_instance_image(img, labels, pc, pid, top)
    assert out.tolist() == [[3, 7, 7, 7]]   # chair 3; no candidates: top; under min_weight: top; unlabeled: top


def _floater_scene():
    """The pipeline test room plus semi-transparent floor-class floaters hovering over the chair."""
    g = _tp.base_scene()
    xs = torch.linspace(0.32, 0.68, 4)
    p = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    n = len(p)
    means = torch.cat([p, torch.full((n, 1), 0.75)], 1)
    fl = GaussianArrays(means, rgb_to_sh_dc(torch.tensor([0.6, 0.5, 0.3])).expand(n, 1, 3).clone(),
                        torch.full((n,), -0.4), torch.full((n, 3), float(np.log(0.06))),
                        torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(), torch.arange(n) + 50000,
                        {"label": torch.zeros(n, dtype=torch.long), "instance": torch.ones(n, dtype=torch.long)})
    return GaussianArrays.concat([g, fl])


def test_fast_path_matches_the_exact_one_hot_reference_and_the_pipeline_mode(text):
    pipe = _tp.make_pipeline(text)
    pipe.apply_update(_floater_scene(), None, full=True)
    pipe.encode()
    cam = _tp.camera(64, 48)
    pipe.config.per_view = PerViewConfig(instance_image="top")
    v_top = pipe.render_view(cam)
    pipe.config.per_view = PerViewConfig(instance_image="weighted")
    v_w = pipe.render_view(cam)
    inst, gl = pipe._attr(ATTR_INSTANCE).long(), pipe._attr(ATTR_LABEL).long()
    labels = torch.from_numpy(v_w.labels.astype(np.int64))
    top = torch.from_numpy(v_top.instances.astype(np.int64))
    pc, pid = class_object_pairs(gl, inst)
    exact = exact_weighted_instance_image(lambda f: pipe._render(cam, f.contiguous(), False).features, inst, labels,
                                          pc, pid, top)
    m = labels != UNLABELED
    assert m.float().mean() > 0.5
    got = torch.from_numpy(v_w.instances.astype(np.int64))
    assert (got[m] == exact[m]).float().mean() > 0.99           # the codes' cross-talk changes almost nothing
    # where a floater (floor object) is the strongest Gaussian of a chair pixel, the chair takes it
    chair_ids = inst[gl == 1].unique()
    assert len(chair_ids) == 1
    chair_id = int(chair_ids[0])
    hit = m & (labels == 1) & (top != chair_id)       # chair pixels whose strongest Gaussian is a floater's
    assert int(hit.sum()) >= 8, int(hit.sum())
    assert bool((got[hit] == chair_id).all())
    # elsewhere the two modes agree where the strongest Gaussian's class is the pixel's
    same = m & ~hit
    assert (got[same] == top[same]).float().mean() > 0.95


def test_unknown_instance_image_mode_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="instance_image"):
        PerViewConfig(instance_image="best").validate()


@pytest.fixture(scope="module")
def text():
    return _tp.build_text_encoder(_tp.TextEncoderSpec(tiny=True, prompt_template="{}"))
