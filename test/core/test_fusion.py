"""VDVI fusion decoder: shapes, open labels, the splat/projection identity, instance snapping,
and the pipeline's per_view.fusion modes (camera with and without an image)."""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
import torch

from chorus_ros.core.decode.fusion import (PRIOR_FLOOR, FusionConfig, FusionDecoder, PerViewConfig, fused_class_logits,
                                           fusion_logits, load_fusion, save_fusion, snap_instances,
                                           warm_start_fusion)
from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.render import RenderSettings, render

_spec = importlib.util.spec_from_file_location("_tp", pathlib.Path(__file__).with_name("test_pipeline.py"))
_tp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tp)


def _decoder(d=16, seed=0, **kw):
    torch.manual_seed(seed)
    return FusionDecoder(FusionConfig(language_dim=d, embed_dim=d, feat_channels=4, channels=(8, 12), decoder_channels=8, **kw)).eval()


def test_output_shape_unit_norm_and_input_checks():
    fd = _decoder()
    rgb, f, a, dep = torch.rand(2, 3, 30, 44), torch.randn(2, 4, 30, 44), torch.rand(2, 1, 30, 44), torch.rand(2, 1, 30, 44)
    emb = fd(rgb, f, a, dep)
    assert emb.shape == (2, 16, 30, 44)  # odd sizes come back at full resolution
    assert torch.allclose(emb.norm(dim=1), torch.ones(2, 30, 44), atol=1e-5)
    with pytest.raises(InvalidInputError, match="feats must be"):
        fd(rgb, f[:, :3], a, dep)
    with pytest.raises(InvalidInputError, match="depth must be"):
        fd(rgb, f, a, None)
    assert _decoder(use_depth=False)(rgb, f, a).shape == (2, 16, 30, 44)


def test_open_labels_subsets_and_new_names_need_no_retraining():
    fd = _decoder()
    emb = fd(torch.rand(1, 3, 20, 20), torch.randn(1, 4, 20, 20), torch.ones(1, 1, 20, 20), torch.rand(1, 1, 20, 20))
    text = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(3)), dim=1)
    full = fusion_logits(emb, text, 0.05)
    assert full.shape == (1, 5, 20, 20)
    # a subset / reordering of the label set gives exactly the corresponding logits
    sub = [4, 1, 2]
    torch.testing.assert_close(fusion_logits(emb, text[sub], 0.05), full[:, sub])
    # labels restricted to the subset = argmax of the full logits over that subset
    a = fusion_logits(emb, text[sub], 0.05).argmax(1)
    b = full[:, sub].argmax(1)
    assert torch.equal(a, b)
    # a label set with more names than the training one works too (no fixed class count)
    more = torch.cat([text, torch.randn(7, 16)])
    assert fusion_logits(emb, more, 0.05).shape == (1, 12, 20, 20)
    with pytest.raises(InvalidInputError):
        fusion_logits(emb, torch.randn(3, 15), 0.05)


def test_projecting_per_gaussian_then_splatting_equals_projecting_the_splat():
    g = _tp.base_scene()
    fd = _decoder(d=12)
    lang = torch.randn(len(g), 12, generator=torch.Generator().manual_seed(0))
    cam = _tp.camera(24, 18)
    rs = RenderSettings(backend="reference")
    with torch.no_grad():
        full = render(g, cam, rs, features=lang).features.permute(2, 0, 1)[None]
        per_g = render(g, cam, rs, features=fd.project_gaussians(lang)).features.permute(2, 0, 1)[None]
        torch.testing.assert_close(fd.project_pixels(full), per_g, rtol=1e-4, atol=1e-5)


def test_snap_instances_hand_case():
    inst = torch.tensor([[1, 1, 2, 2],
                         [1, 1, 2, 2]])
    lab3 = torch.tensor([[5, 5, 7, 7],
                         [5, 5, 7, 7]])
    fused = torch.tensor([[5, 7, 7, 7],     # (0,1) fused says 7: the nearest pixel with 3D label 7 is id 2
                          [5, 5, 9, 7]])    # (1,2) fused 9: no neighbour has 3D label 9 -> keeps id 2
    out = snap_instances(inst, lab3, fused, radius=1)
    assert out.tolist() == [[1, 2, 2, 2], [1, 1, 2, 2]]
    assert torch.equal(snap_instances(inst, lab3, fused, radius=0), inst)
    assert torch.equal(snap_instances(inst, lab3, lab3.clone()), inst)  # agreement: nothing moves


def test_save_load_roundtrip_and_strict(tmp_path):
    fd = _decoder()
    save_fusion(tmp_path / "fusion", fd, {"step": 3})
    fd2 = load_fusion(tmp_path / "fusion")
    for (k, v), (k2, v2) in zip(fd.state_dict().items(), fd2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(CheckpointError, match="no fusion decoder"):
        load_fusion(tmp_path / "nothing")


@pytest.fixture(scope="module")
def fused_pipe():
    text = _tp.build_text_encoder(_tp.TextEncoderSpec(tiny=True, prompt_template="{}"))
    pipe = _tp.make_pipeline(text)
    pipe.apply_update(_tp.base_scene())
    pipe.encode()
    torch.manual_seed(0)
    pipe.fusion = FusionDecoder(FusionConfig(language_dim=text.dim, embed_dim=text.dim, feat_channels=4,
                                             channels=(8, 12), decoder_channels=8)).eval()
    return pipe


def test_pipeline_fusion_modes_camera_with_and_without_image(fused_pipe):
    pipe, cam = fused_pipe, _tp.camera()
    pipe.config.per_view = PerViewConfig(fusion="off")
    off = pipe.render_view(cam)
    assert off.fused == "off"
    pipe.config.per_view = PerViewConfig(fusion="rendered")
    ren = pipe.render_view(cam)
    assert ren.fused == "rendered" and ren.labels.shape == off.labels.shape
    # ids still come from 3D: every fused-view id is an id of the 3D view
    assert set(np.unique(ren.instances)) <= set(np.unique(off.instances))
    pipe.config.per_view = PerViewConfig(fusion="camera")
    no_img = pipe.render_view(cam)  # no camera image yet: falls back to the rendered RGB
    assert no_img.fused == "rendered" and np.array_equal(no_img.labels, ren.labels)
    same = pipe.render_view(cam, image=torch.from_numpy(ren.rgb).float().numpy() / 255.0)
    assert same.fused == "camera"
    assert (same.labels == ren.labels).mean() > 0.99  # the camera sees what was rendered
    other = pipe.render_view(cam, image=np.zeros_like(ren.rgb))
    assert other.fused == "camera"
    assert not np.array_equal(other.confidence, ren.confidence)  # the image is used
    with pytest.raises(InvalidInputError, match="camera image must be"):
        pipe.render_view(cam, image=np.zeros((5, 5, 3), np.uint8))
    # open labels in the pipeline: set_labels changes the fused label space without retraining
    names = list(pipe.labels.names)
    pipe.set_labels(names[::-1])
    rev = pipe.render_view(cam)
    lab = ren.labels.astype(np.int64)
    ok = lab != 65535
    k = len(names)
    assert np.array_equal(rev.labels[ok], (k - 1 - lab[ok]).astype(np.uint16))
    pipe.set_labels(names)
    pipe.config.per_view = PerViewConfig()


def test_prior_decoder_adds_the_log_of_the_3d_probabilities():
    emb = torch.nn.functional.normalize(torch.randn(1, 16, 5, 6), dim=1)
    text = torch.randn(4, 16)
    prior = torch.softmax(torch.randn(1, 4, 5, 6), dim=1)
    prior[0, 2, 0, 0] = 0.0                                   # a zero probability is floored, not -inf
    plain, with_prior = _decoder(), _decoder(prior=True)
    assert torch.equal(fused_class_logits(plain, emb, text, 0.1, prior), fusion_logits(emb, text, 0.1))
    got = fused_class_logits(with_prior, emb, text, 0.1, prior)
    assert torch.allclose(got, fusion_logits(emb, text, 0.1) + torch.log(prior.clamp_min(PRIOR_FLOOR)))
    assert torch.isfinite(got).all()
    with pytest.raises(InvalidInputError, match="corrects the 3D labels"):
        fused_class_logits(with_prior, emb, text, 0.1, None)
    with pytest.raises(InvalidInputError, match="corrects the 3D labels"):
        fused_class_logits(with_prior, emb, text, 0.1, prior[:, :3])


def test_prior_names_feed_the_3d_probabilities_into_the_decoder():
    """A decoder with prior_names reads the 3D class probabilities as input channels: its
    embeddings change with them (a plain prior decoder's do not), a missing or mis-shaped prior is
    a clear error, and prior_names without prior (or with duplicates) is refused."""
    rgb, f = torch.rand(1, 3, 20, 24), torch.randn(1, 4, 20, 24)
    a, dep = torch.rand(1, 1, 20, 24), torch.rand(1, 1, 20, 24)
    p1 = torch.softmax(torch.randn(1, 5, 20, 24), dim=1)
    p2 = torch.softmax(torch.randn(1, 5, 20, 24), dim=1)
    fed, plain = _decoder(prior=True, prior_names=list("abcde")), _decoder(prior=True)
    assert fed.config.prior_classes == 5 and plain.config.prior_classes == 0
    with torch.no_grad():
        assert not torch.allclose(fed(rgb, f, a, dep, p1), fed(rgb, f, a, dep, p2))
        assert torch.equal(plain(rgb, f, a, dep, p1), plain(rgb, f, a, dep, p2))
        assert torch.equal(plain(rgb, f, a, dep, p1), plain(rgb, f, a, dep))
    with pytest.raises(InvalidInputError, match="reads the 3D class probabilities"):
        fed(rgb, f, a, dep)
    with pytest.raises(InvalidInputError, match="reads the 3D class probabilities"):
        fed(rgb, f, a, dep, p1[:, :4])
    with pytest.raises(InvalidInputError, match="prior_names needs prior"):
        FusionConfig(prior_names=("a", "b"))
    with pytest.raises(InvalidInputError, match="duplicates"):
        FusionConfig(prior=True, prior_names=("a", "a"))
    back = FusionConfig.from_dict(FusionConfig(prior=True, prior_names=("a", "b")).to_dict())
    assert back.prior_names == ("a", "b") and back.prior_classes == 2


def test_warm_start_copies_weights_and_matches_class_channels_by_name():
    """A warm start copies every weight of an equal decoder (same outputs); with another label set
    the class channels of the first 3D convolution follow the class names (a permuted set gives
    the same embeddings for the permuted probabilities; a new class keeps its fresh weights);
    another architecture is refused."""
    rgb, f = torch.rand(1, 3, 20, 24), torch.randn(1, 4, 20, 24)
    a, dep = torch.rand(1, 1, 20, 24), torch.rand(1, 1, 20, 24)
    p = torch.softmax(torch.randn(1, 5, 20, 24), dim=1)
    init = _decoder(seed=1, prior=True, prior_names=list("abcde"))
    same = _decoder(seed=2, prior=True, prior_names=list("abcde"))
    info = warm_start_fusion(same, init)
    assert info["copied"] == info["total"] and info["prior_classes_matched"] == 5
    with torch.no_grad():
        assert torch.equal(same(rgb, f, a, dep, p), init(rgb, f, a, dep, p))
    perm = [4, 2, 0, 3, 1]
    other = _decoder(seed=3, prior=True, prior_names=[list("abcde")[i] for i in perm])
    info = warm_start_fusion(other, init)
    assert info["prior_classes_matched"] == 5 and info["copied"] == info["total"] - 1
    with torch.no_grad():
        assert torch.allclose(other(rgb, f, a, dep, p[:, perm]), init(rgb, f, a, dep, p), atol=1e-5)
    new = _decoder(seed=4, prior=True, prior_names=["c", "zebra"])
    fresh = new.feature_encoder.stages[0][0].weight.detach().clone()
    info = warm_start_fusion(new, init)
    w, w0 = new.feature_encoder.stages[0][0].weight, init.feature_encoder.stages[0][0].weight
    assert info["prior_classes_matched"] == 1 and info["prior_classes"] == 2
    assert torch.equal(w[:, :5], w0[:, :5]) and torch.equal(w[:, 5], w0[:, 5 + 2])   # features + alpha; 'c'
    assert torch.equal(w[:, 6], fresh[:, 6])                                          # 'zebra': its own
    assert torch.equal(new.head[0].weight, init.head[0].weight)
    with pytest.raises(InvalidInputError, match="channels"):
        warm_start_fusion(FusionDecoder(FusionConfig(language_dim=16, embed_dim=16, feat_channels=4, channels=(8, 16),
                                                     decoder_channels=8, prior=True)), init)


def test_pipeline_gives_a_prior_decoder_the_views_3d_probabilities(fused_pipe):
    """With a prior decoder whose cosine logits are flattened (huge temperature), the fused labels
    are the 3D labels: the pipeline passes the splatted class probabilities of the right view,
    channels and normalisation."""
    pipe, cam = fused_pipe, _tp.camera()
    keep = pipe.fusion
    try:
        pipe.config.per_view = PerViewConfig(fusion="off")
        off = pipe.render_view(cam)
        torch.manual_seed(1)
        pipe.fusion = FusionDecoder(FusionConfig(language_dim=keep.config.language_dim, embed_dim=keep.config.embed_dim,
                                                 feat_channels=4, channels=(8, 12), decoder_channels=8,
                                                 prior=True)).eval()
        pipe.config.per_view = PerViewConfig(fusion="rendered", temperature=1e6, snap_radius=0)
        fused = pipe.render_view(cam)
        ok = off.labels != 65535
        assert ok.mean() > 0.3
        assert np.array_equal(fused.labels[ok], off.labels[ok])
        pipe.config.per_view = PerViewConfig(fusion="rendered", temperature=0.05, snap_radius=0)
        assert not np.array_equal(pipe.render_view(cam).labels, off.labels)   # the image branch does act
    finally:
        pipe.fusion = keep
        pipe.config.per_view = PerViewConfig()


def test_fusion_mode_without_decoder_and_bad_mode_are_clear_errors(fused_pipe):
    with pytest.raises(InvalidInputError, match="unknown"):
        PerViewConfig(fusion="sometimes").validate()
    dec = fused_pipe.fusion
    try:
        fused_pipe.fusion = None
        fused_pipe.config.per_view = PerViewConfig(fusion="rendered")
        with pytest.raises(InvalidInputError, match="no fusion decoder"):
            fused_pipe.render_view(_tp.camera())
    finally:
        fused_pipe.fusion = dec
        fused_pipe.config.per_view = PerViewConfig()
