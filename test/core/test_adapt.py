"""Render-and-distill adaptation (chorus_ros.core.adapt).

* the cached blending weights (the CPU fast path) against the renderer, forward and backward;
* low-rank adapters: identity at start, merged weights = parametrised forward, adapter round trip;
* the cached U-Net trunk against the model's own forward; the boundary mask on a hand-made image;
* a tiny checkpoint adapted on a tiny scene folder in seconds: loss falls, held-out mIoU rises
  (held-out views never give targets), and the written checkpoint loads in the pipeline.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.geometry import Camera
from chorus_ros.core.render import RenderSettings, render

pytest.importorskip("spconv")


def _scene(n: int, seed: int, dtype=torch.float64) -> GaussianArrays:
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(n, 3, dtype=dtype)
    means[:, 2].uniform_(1.5, 3.5, generator=gen)
    means[:, :2] = (torch.rand(n, 2, generator=gen, dtype=dtype) * 2 - 1) * 0.5 * means[:, 2:3]
    sh = rgb_to_sh_dc(torch.rand(n, 1, 3, generator=gen, dtype=dtype))
    return GaussianArrays(means=means, sh=sh, opacities=torch.empty(n, dtype=dtype).uniform_(-1, 4, generator=gen),
                          log_scales=torch.empty(n, 3, dtype=dtype).uniform_(-3.0, -1.8, generator=gen),
                          quats=torch.randn(n, 4, generator=gen, dtype=dtype))


def _camera(w=40, h=30) -> Camera:
    return Camera.from_c2w(np.eye(4), Camera.intrinsics_from_fov(w, h, 60.0), w, h)


# ----------------------------------------------------------------------- cached blending weights
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blend_weights_match_render_forward_and_backward(dtype, monkeypatch):
    from chorus_ros.core.adapt import splat
    g = _scene(400, seed=1, dtype=dtype)
    cam = _camera()
    settings = RenderSettings(backend="reference")
    feats = torch.randn(len(g), 5, generator=torch.Generator().manual_seed(2), dtype=dtype)
    pix = torch.randperm(cam.width * cam.height, generator=torch.Generator().manual_seed(3))[:500]
    monkeypatch.setattr(splat, "_MAX_PAIRS", 2000)  # several pixel chunks
    pb = splat.blend_weights(g, cam, pix, settings)
    f1 = feats.clone().requires_grad_(True)
    out = render(g, cam, settings, features=f1)
    assert float(out.alpha.detach().max()) > 0.99, "the scene should saturate some pixels (early termination)"
    f2 = feats.clone().requires_grad_(True)
    comp = pb.composite(f2)
    ref = out.features.reshape(-1, 5)[pix]
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    assert float((comp.double() - ref.double()).abs().max()) < tol
    assert float((pb.alpha.double() - out.alpha.reshape(-1)[pix].double()).abs().max()) < max(tol, 1e-6)
    hit = pb.alpha > 0.1
    assert float((pb.depth[hit].double() - out.depth.reshape(-1)[pix][hit].double()).abs().max()) < 1e-4
    probe = torch.randn(len(pix), 5, generator=torch.Generator().manual_seed(4), dtype=dtype)
    (g1,) = torch.autograd.grad((ref * probe).sum(), f1)
    (g2,) = torch.autograd.grad((comp * probe).sum(), f2)
    assert float(g1.abs().max()) > 0
    assert float((g1.double() - g2.double()).abs().max()) < tol * 10
    # a subset of pixels keeps exactly their pairs
    rows = torch.tensor([7, 3, 250, 0])
    sub = pb.select(rows)
    assert torch.allclose(sub.composite(feats), pb.composite(feats)[rows])
    uniq, inv = pb.gaussians_used()
    assert torch.allclose(pb.composite(feats[uniq], inv), pb.composite(feats))


def test_blend_weights_rejects_bad_pixels():
    from chorus_ros.core.adapt import blend_weights
    with pytest.raises(InvalidInputError, match="pixel indices"):
        blend_weights(_scene(10, 0), _camera(), torch.tensor([40 * 30]))


def test_boundary_mask_hand_made():
    from chorus_ros.core.adapt.losses import boundary_mask
    lab = torch.zeros(6, 8, dtype=torch.long)
    lab[:, 4:] = 1
    m = boundary_mask(lab, 1)
    expect = torch.zeros(6, 8, dtype=torch.bool)
    expect[:, 3:5] = True
    assert torch.equal(m, expect)
    assert not boundary_mask(lab, 0).any()


def test_label_loss_is_zero_for_perfect_and_weights_borders():
    from chorus_ros.core.adapt.losses import label_loss
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 65535])
    w = torch.ones(3)
    assert float(label_loss(probs[:1], labels[:1], w[:1], torch.tensor([False]), 1.0)) < 1e-5
    plain = float(label_loss(probs, labels, w, torch.tensor([False, False, False]), 1.0))
    border = float(label_loss(probs, labels, w, torch.tensor([False, True, False]), 1.0))
    # unlabeled pixel skipped; the border pixel (loss log 2) gets weight 2 of 3 instead of 1 of 2
    assert plain == pytest.approx(np.log(2) / 2, rel=1e-5)
    assert border == pytest.approx(2 * np.log(2) / 3, rel=1e-5)


# ----------------------------------------------------------------------------- the encoder side
def _tiny_encoder(seed=0):
    from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
    torch.manual_seed(seed)
    cfg = EncoderConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=16,
                        head_hidden=64, embed_dim=32, voxel_size=0.1,
                        heads=[HeadSpec("language", 64), HeadSpec("object", 8)])
    return ChorusEncoder(cfg).eval()


def _room(n=1500, seed=3):
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    return generate_scene(SceneConfig(seed=seed, target_gaussians=n))


def test_runner_trunk_cache_matches_model_forward():
    from chorus_ros.core.adapt import AdaptConfig
    from chorus_ros.core.adapt.loop import EncoderRunner
    from chorus_ros.core.datasets import strip_gaussians
    model = _tiny_encoder()
    g = strip_gaussians(_room().gaussians)
    with torch.no_grad():
        ref = model(g)
        runner = EncoderRunner(model, g, AdaptConfig(train="heads"))
        emb, heads = runner()
        idx = torch.tensor([5, 0, 17])
        emb_i, heads_i = runner(idx)
    assert torch.allclose(emb, ref.embedding, atol=1e-5)
    assert torch.allclose(heads["language"], ref.heads["language"], atol=1e-5)
    assert torch.allclose(heads_i["object"], ref.heads["object"][idx], atol=1e-5)
    assert runner._trunk is not None  # cached after the first call


def test_lora_identity_merge_and_adapter_round_trip():
    from chorus_ros.core.adapt import lora
    from chorus_ros.core.datasets import strip_gaussians
    g = strip_gaussians(_room().gaussians)
    model = _tiny_encoder()
    with torch.no_grad():
        base = model(g).heads["language"]
    names = lora.lora_targets(model, convs=True)
    assert any(n.startswith("unet") for n in names) and "heads.language" in names
    params = lora.add_adapters(model, names, rank=2, alpha=4.0, seed=1)
    with torch.no_grad():
        assert torch.allclose(model(g).heads["language"], base, atol=1e-6)  # B = 0: the base model
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        adapted = model(g).heads["language"]
    assert float((adapted - base).abs().max()) > 1e-3
    state = lora.adapter_state(model)
    n_adapter = sum(v.numel() for v in state.values())
    assert n_adapter < 0.2 * sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    lora.merge_adapters(model)
    assert not lora.has_adapters(model)
    assert set(model.state_dict()) == set(_tiny_encoder().state_dict())
    with torch.no_grad():
        assert torch.allclose(model(g).heads["language"], adapted, atol=1e-5)
    fresh = _tiny_encoder()
    lora.apply_adapter(fresh, state, alpha=4.0)
    lora.merge_adapters(fresh)
    with torch.no_grad():
        assert torch.allclose(fresh(g).heads["language"], adapted, atol=1e-5)
    with pytest.raises(CheckpointError, match="do not fit"):
        bad = {k: (v[:, :-1] if k.endswith("lora_A") else v) for k, v in state.items()}
        lora.apply_adapter(_tiny_encoder(), bad, alpha=4.0)


def test_config_errors_name_the_field():
    from chorus_ros.core.adapt import AdaptConfig, LossWeights
    with pytest.raises(InvalidInputError, match="train"):
        AdaptConfig(train="everything")
    with pytest.raises(InvalidInputError, match="depth_gate"):
        AdaptConfig(loss=LossWeights(depth_gate=2.0))
    with pytest.raises(InvalidInputError, match="targets"):
        AdaptConfig(targets="pixels")


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny random checkpoint and a tiny synthetic scene exported as a scene folder."""
    from chorus_ros.core.datasets import open_scene
    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.synthetic.dataset import export_dataset
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder

    base = tmp_path_factory.mktemp("adapt")
    spec = TextEncoderSpec(tiny=True, prompt_template="{}")
    te = spec.to_dict()
    te["weights"] = "text_encoder.safetensors"
    room = _room(1500, seed=5)
    teachers = [{"kind": "object", "type": "oracle_object", "options": {"dim": 8, "patch_size": 2, "seed": 2}}]
    save_checkpoint(base / "ckpt", _tiny_encoder(), {"label_set": room.labels.to_dict(), "text_encoder": te,
                                                     "teachers": teachers})
    build_text_encoder(spec).save_weights(base / "ckpt" / "text_encoder.safetensors")
    traj = make_trajectory(room, TrajectoryConfig(loop_views=6, random_views=2, width=40, height=30))
    export_dataset(room, traj, base / "room", settings=RenderSettings(backend="reference"))
    return base, open_scene(base / "room")


def test_tiny_adaptation_loss_falls_and_heldout_miou_rises(tiny_setup):
    import torch.nn.functional as F

    from chorus_ros.core.adapt import AdaptConfig, adapt_checkpoint, adaptation_label_set, evaluate_views
    from chorus_ros.core.adapt.loop import class_probabilities
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.pipeline import PerceptionPipeline, labels_from_meta, text_spec_from_meta
    from chorus_ros.core.text import build_text_encoder

    base, scene = tiny_setup
    train, held = list(range(0, 8, 2)), list(range(1, 8, 2))
    ck = load_checkpoint(base / "ckpt")
    ls = adaptation_label_set(scene, labels_from_meta(ck.meta))
    lut = scene.class_map_to(ls)
    text = build_text_encoder(text_spec_from_meta(ck.meta, base / "ckpt"))
    temb = F.normalize(text.encode(ls.names).float(), dim=-1)
    with torch.no_grad():
        before_scores = class_probabilities(ck.model(scene.gaussians).heads["language"], temb, 0.05)
    before = evaluate_views(scene.gaussians, scene, held, before_scores, lut, ls, 0.5, "reference")

    cfg = AdaptConfig(train="all", steps=60, lr=3e-2, views_per_step=2, pixels_per_view=500, progress=False,
                      replay_gaussians=1000, replay_batch=512)
    res = adapt_checkpoint(base / "ckpt", scene, train, cfg, out_dir=base / "site")
    after = evaluate_views(scene.gaussians, scene, held, res.scores, lut, ls, 0.5, "reference")
    first = np.mean([r["labels"] for r in res.history[:5]])
    last = np.mean([r["labels"] for r in res.history[-5:]])
    print(f"held-out mIoU {100 * before.miou:.1f} -> {100 * after.miou:.1f}; label loss {first:.3f} -> {last:.3f}")
    assert last < 0.7 * first
    assert after.miou > before.miou + 0.15
    assert "preserve" in res.history[-1]  # the object head has no target: held to the base
    assert res.history[-1]["replay"] < 1.0  # and every head stays near the base on a replay scene

    # the written checkpoint: loads strictly, in the pipeline too, and says where it came from
    new = load_checkpoint(base / "site")
    prov = new.meta["adaptation"]
    assert prov["views"] == [scene.frame_indices[p] for p in train] and prov["steps"] == 60
    assert prov["base_checkpoint"] == str((base / "ckpt").resolve()) and len(prov["base_digest"]) == 16
    assert prov["losses"]["last"]["loss"] < prov["losses"]["first"]["loss"]
    assert new.meta["label_set"]["classes"][0]["name"] == ls.names[0]
    with torch.no_grad():
        lang = new.model(scene.gaussians).heads["language"]
    assert torch.allclose(class_probabilities(lang, temb, 0.05), res.scores, atol=1e-4)
    pipe = PerceptionPipeline.from_checkpoint(base / "site")
    assert pipe.labels.names == ls.names


def test_lora_adaptation_saves_small_adapter_that_rebuilds_the_model(tiny_setup):
    from chorus_ros.core.adapt import AdaptConfig, adapt_checkpoint, load_with_adapter
    from chorus_ros.core.adapt.loop import ADAPTER_FILE
    from chorus_ros.core.encoder.checkpoint import load_checkpoint

    base, scene = tiny_setup
    cfg = AdaptConfig(train="lora", lora_convs=True, lora_rank=2, steps=4, views_per_step=1,
                      pixels_per_view=200, targets="both", progress=False, loss={"rgb": 0.5},
                      replay_seeds=[])
    res = adapt_checkpoint(base / "ckpt", scene, [0, 3], cfg, out_dir=base / "lora")
    assert (base / "lora" / ADAPTER_FILE).is_file()
    assert {"labels", "teacher.object", "rgb"} <= set(res.history[-1])
    rebuilt = load_with_adapter(base / "ckpt", base / "lora")
    saved = load_checkpoint(base / "lora").model
    for k, v in saved.state_dict().items():
        assert torch.allclose(rebuilt.state_dict()[k], v, atol=1e-6), k
    n_adapter = load_checkpoint(base / "lora").meta["adaptation"]["adapter"]["parameters"]
    assert 0 < n_adapter < 0.2 * sum(v.numel() for v in saved.state_dict().values())


def test_render_splatting_gives_the_cached_losses(tiny_setup):
    """splat='render' (the renderer every step, gsplat on CUDA) and splat='cached' train the same."""
    from chorus_ros.core.adapt import AdaptConfig, adapt_checkpoint
    base, scene = tiny_setup
    hist = {}
    for mode in ("cached", "render"):
        cfg = AdaptConfig(train="heads", steps=3, views_per_step=2, pixels_per_view=300, splat=mode,
                          render_backend="reference", progress=False, loss={"rgb": 0.5},
                          replay_seeds=[])
        hist[mode] = adapt_checkpoint(base / "ckpt", scene, [0, 2, 4], cfg).history
    # ('preserve' is taken over the Gaussians a step sees when cached, over all when rendering)
    for a, b in zip(hist["cached"], hist["render"]):
        for k in ("labels", "rgb"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (k, a, b)


# ----------------------------------------------------------------------------- coverage and selection
def test_epoch_batches_visit_every_view_equally_and_steps_scale_with_views():
    from chorus_ros.core.adapt import AdaptConfig
    from chorus_ros.core.adapt.loop import epoch_batches, planned_steps
    gen = torch.Generator().manual_seed(0)
    it = epoch_batches(7, 3, gen)
    batches = [next(it) for _ in range(3 * 4)]  # 4 epochs of ceil(7/3) = 3 batches
    assert [len(b) for b in batches[:3]] == [3, 3, 1]
    assert all(len(set(b)) == len(b) for b in batches)
    counts = np.bincount(np.concatenate(batches), minlength=7)
    assert counts.tolist() == [4] * 7
    assert planned_steps(AdaptConfig(steps=123), 30) == 123
    assert planned_steps(AdaptConfig(epochs=10, views_per_step=4), 30) == 80
    assert planned_steps(AdaptConfig(epochs=2.5, views_per_step=4), 10) == 8
    with pytest.raises(InvalidInputError, match="epochs"):
        AdaptConfig(epochs=-1)
    with pytest.raises(InvalidInputError, match="lr_schedule"):
        AdaptConfig(lr_schedule="linear")


def test_absent_classes_are_found_and_held_off(tiny_setup):
    """Classes that no training label image shows are exactly the ones the term holds off, and
    the term lowers their probability mass on the scene's Gaussians."""
    from chorus_ros.core.adapt import AdaptConfig, adapt_checkpoint, adaptation_label_set
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.pipeline import labels_from_meta

    base, scene = tiny_setup
    train = [0, 2]
    ls = adaptation_label_set(scene, labels_from_meta(load_checkpoint(base / "ckpt").meta))
    lut = scene.class_map_to(ls)
    shown = set()
    for p in train:
        lab = lut[scene.frame(p).semantic.astype(np.int64)]
        shown |= set(np.unique(lab[lab != 65535]).tolist())
    expect = sorted(set(range(len(ls))) - shown)
    assert expect, "the tiny room's two views should miss some classes"
    mass = {}
    for w in (0.0, 1.0):
        cfg = AdaptConfig(train="heads", steps=25, lr=3e-2, views_per_step=2, pixels_per_view=300, progress=False,
                          replay_seeds=[], absent_batch=500, loss={"absent": w})
        res = adapt_checkpoint(base / "ckpt", scene, train, cfg)
        assert res.absent_classes == (expect if w > 0 else [])
        mass[w] = float(res.scores[:, expect].sum(1).mean())
        if w > 0:
            assert "absent" in res.history[-1]
    assert mass[1.0] < 0.75 * mass[0.0], mass


def test_validation_views_keep_the_best_step(tiny_setup):
    """With validation views the returned weights are those of the best-scoring step: scoring
    them again on the same validation pool gives the best recorded mIoU; overlap is refused."""
    from chorus_ros.core.adapt import AdaptConfig, adapt_checkpoint
    from chorus_ros.core.adapt.loop import EncoderRunner, _validation_miou, prepare_views
    from chorus_ros.core.render import RenderSettings
    import torch.nn.functional as F
    from chorus_ros.core.text import build_text_encoder
    from chorus_ros.core.pipeline import text_spec_from_meta
    from chorus_ros.core.encoder.checkpoint import load_checkpoint

    base, scene = tiny_setup
    cfg = AdaptConfig(train="heads", steps=12, lr=1e-1, views_per_step=2, pixels_per_view=300, progress=False,
                      replay_seeds=[], val_every=1, lr_schedule="cosine")
    with pytest.raises(InvalidInputError, match="overlap"):
        adapt_checkpoint(base / "ckpt", scene, [0, 2], cfg, val_positions=[2, 5])
    res = adapt_checkpoint(base / "ckpt", scene, [0, 2, 4], cfg, val_positions=[6])
    curve = [h["val_miou"] for h in res.history]
    assert len(curve) == 12 and res.val_miou == max(curve)
    assert res.history[res.best_step - 1]["val_miou"] == res.val_miou
    ck = load_checkpoint(base / "ckpt")
    text = build_text_encoder(text_spec_from_meta(ck.meta, base / "ckpt"))
    temb = F.normalize(text.encode(list(res.label_set.names)).float(), dim=-1)
    lut = scene.class_map_to(res.label_set)
    g = scene.gaussians
    val = prepare_views(scene, g, [6], cfg, lut, res.label_set, (), "cached", border_share=0.0)
    runner = EncoderRunner(res.model, g, cfg, adapters=False)
    again = _validation_miou(runner, val, temb, 0.05, "cached", g, RenderSettings())
    assert again == pytest.approx(res.val_miou, abs=1e-9)


def test_widened_decoder_computes_the_base_and_round_trips(tmp_path):
    """Widening adds hidden units without changing any output; the gradient reaches the new
    output weights; the widened model saves and loads as an ordinary checkpoint."""
    from chorus_ros.core.adapt import AdaptConfig
    from chorus_ros.core.adapt.widen import widen_decoder
    from chorus_ros.core.datasets import strip_gaussians
    from chorus_ros.core.encoder.checkpoint import load_checkpoint, save_checkpoint
    g = strip_gaussians(_room().gaussians)
    model = _tiny_encoder()
    with torch.no_grad():
        base = model(g)
    widen_decoder(model, 40, seed=3)
    assert model.out_mlp[0].out_features == 64 + 40 and model.config.head_hidden == 104
    out = model(g)
    assert torch.allclose(out.heads["language"], base.heads["language"], atol=1e-6)
    out.heads["language"].pow(2).sum().backward()
    assert float(model.out_mlp[2].weight.grad[:, 64:].abs().max()) > 0
    save_checkpoint(tmp_path / "w", model, {})
    with torch.no_grad():
        again = load_checkpoint(tmp_path / "w").model(g).heads["language"]
    assert torch.allclose(again, out.heads["language"].detach(), atol=1e-6)
    with pytest.raises(InvalidInputError, match="widen"):
        AdaptConfig(train="lora", widen=8)


def test_widen_only_moves_only_the_new_units(tiny_setup):
    """--widen-only: after adaptation the base decoder's rows/columns, the layer norm and the heads
    are exactly the base ones; the new units moved and the labels loss fell."""
    from chorus_ros.core.adapt import AdaptConfig, adapt_checkpoint
    from chorus_ros.core.encoder.checkpoint import load_checkpoint

    base, scene = tiny_setup
    cfg = AdaptConfig(train="heads", widen=16, widen_only=True, steps=20, lr=3e-2, views_per_step=2,
                      pixels_per_view=300, progress=False, replay_seeds=[])
    res = adapt_checkpoint(base / "ckpt", scene, [0, 2, 4], cfg)
    ref = load_checkpoint(base / "ckpt").model.state_dict()
    new = res.model.state_dict()
    h = ref["out_mlp.0.weight"].shape[0]
    assert torch.equal(new["out_mlp.0.weight"][:h], ref["out_mlp.0.weight"])
    assert torch.equal(new["out_mlp.0.bias"][:h], ref["out_mlp.0.bias"])
    assert torch.equal(new["out_mlp.2.weight"][:, :h], ref["out_mlp.2.weight"])
    for k in ref:
        if not k.startswith("out_mlp.0") and k != "out_mlp.2.weight":
            assert torch.equal(new[k], ref[k]), k
    assert float(new["out_mlp.2.weight"][:, h:].abs().max()) > 0
    assert np.mean([r["labels"] for r in res.history[-3:]]) < np.mean([r["labels"] for r in res.history[:3]])


def test_replay_class_names_cover_the_site_classes():
    from chorus_ros.core.adapt.loop import replay_class_names
    from chorus_ros.core.labels import LabelSet
    base = LabelSet(["floor", "wall", "chair"], np.zeros((3, 3)), np.zeros(3, bool), "base")
    site = LabelSet(["wall", "whiteboard", "floor", "bag"], np.zeros((4, 3)), np.zeros(4, bool), "site")
    assert replay_class_names(base, site) == ["floor", "wall", "chair", "whiteboard", "bag"]
    assert replay_class_names(base, site, include_site=False) == ["floor", "wall", "chair"]


def test_site_fusion_decoder_trains_saves_and_labels_views_as_the_pipeline_does(tiny_setup):
    """chorus-adapt --fusion-steps: the per-site fusion decoder's loss falls, it is saved with its
    provenance as the adapted checkpoint's fusion/, and the pipeline (per_view.fusion: camera, the
    folder's image) labels a held-out view exactly as evaluate_fused does."""
    import torch.nn.functional as F

    from chorus_ros.core.adapt import AdaptConfig, adapt_checkpoint
    from chorus_ros.core.adapt.fusion import evaluate_fused, fused_labels, render_site_views
    from chorus_ros.core.decode.fusion import FUSION_DIR, PerViewConfig, load_fusion
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig, text_spec_from_meta
    from chorus_ros.core.text import build_text_encoder

    base, scene = tiny_setup
    train, held = list(range(0, 8, 2)), list(range(1, 8, 2))
    cfg = AdaptConfig(train="heads", steps=10, lr=3e-2, views_per_step=2, pixels_per_view=300, progress=False,
                      replay_gaussians=1000, replay_batch=256, fusion_steps=60, fusion_views_per_step=2,
                      fusion_lr=5e-3)
    out = base / "site_fused"
    res = adapt_checkpoint(base / "ckpt", scene, train, cfg, out_dir=out)
    hist = res.fusion.history
    assert res.fusion.steps == 60 and len(hist) == 60
    first, last = np.mean([r["loss"] for r in hist[:5]]), np.mean([r["loss"] for r in hist[-5:]])
    print(f"fusion loss {first:.3f} -> {last:.3f}")
    assert last < 0.7 * first
    prov = load_checkpoint(out).meta["adaptation"]["fusion"]
    assert prov["steps"] == 60 and prov["dir"] == FUSION_DIR and prov["loss_last"] == pytest.approx(hist[-1]["loss"], abs=1e-5)
    fd = load_fusion(out / FUSION_DIR)
    assert fd.config.prior

    ck = load_checkpoint(out)
    text = build_text_encoder(text_spec_from_meta(ck.meta, out))
    temb = text.encode(list(res.label_set.names)).float()
    lut = scene.class_map_to(res.label_set)
    with torch.no_grad():
        lang = ck.model(scene.gaussians).heads["language"]
    views = render_site_views(scene.gaussians, scene, held, lang, res.scores, lut, "reference")
    scores = evaluate_fused(fd, views, temb, res.label_set)
    assert 0.0 <= scores.miou <= 1.0
    ref = fused_labels(fd, views, temb)

    pcfg = PipelineConfig(min_opacity=0.0, per_view=PerViewConfig(fusion="camera", snap_radius=0))
    pcfg.render.backend = "reference"
    pipe = PerceptionPipeline.from_checkpoint(out, pcfg)
    assert pipe.fusion is not None and pipe.fusion.config.prior
    pipe.apply_update(scene.gaussians, full=True)
    pipe.encode()
    fr = scene.frame(held[0])
    view = pipe.render_view(fr.camera, image=fr.rgb)
    assert view.fused == "camera"
    agree = (view.labels == ref[0]).mean()
    print(f"pipeline vs evaluate_fused: {100 * agree:.2f} % of pixels agree")
    assert agree > 0.995
    # the decoder reads the 3D probabilities of its own label set: another active set is a clear
    # error, not labels read through the wrong channels; restoring the set restores the fused view
    assert fd.config.prior_names == tuple(res.label_set.names)
    pipe.set_labels(list(res.label_set.names)[::-1])
    with pytest.raises(InvalidInputError, match="active label set differs"):
        pipe.render_view(fr.camera, image=fr.rgb)
    pipe.set_labels(list(res.label_set.names))
    assert np.array_equal(pipe.render_view(fr.camera, image=fr.rgb).labels, view.labels)

    # an adaptation without fusion into the same folder removes the stale decoder
    res2 = adapt_checkpoint(base / "ckpt", scene, train, AdaptConfig(train="heads", steps=2, progress=False,
                                                                     pixels_per_view=200, replay_seeds=[]), out_dir=out)
    assert res2.fusion is None and not (out / FUSION_DIR).exists()
    assert "fusion" not in load_checkpoint(out).meta["adaptation"]

    # with validation views: a decoder that loses to the adapted 3D labels there is not saved
    # (forced here by a validation view whose 3D labels score 1.0 on its own label image)
    import chorus_ros.core.adapt.fusion as fusion_mod
    real = fusion_mod.train_site_fusion

    def perfect_prior(views, text_emb, **kw):
        v = kw["val_views"]
        assert v is not None and v.positions == [held[0]]
        v.labels = v.probs.argmax(1)
        return real(views, text_emb, **kw)
    fusion_mod.train_site_fusion = perfect_prior
    try:
        res3 = adapt_checkpoint(base / "ckpt", scene, train, AdaptConfig(
            train="heads", steps=2, progress=False, pixels_per_view=200, replay_seeds=[], fusion_steps=4,
            fusion_views_per_step=2, val_every=2), out_dir=out, val_positions=[held[0]])
    finally:
        fusion_mod.train_site_fusion = real
    assert res3.fusion.rejected and res3.fusion.prior_val_miou == pytest.approx(1.0)
    assert not (out / FUSION_DIR).exists()
    prov3 = load_checkpoint(out).meta["adaptation"]["fusion"]
    assert prov3["dir"] is None and prov3["validation"]["rejected"] and prov3["steps"] == 4


def test_gocl_teacher_spec_falls_back_to_the_checkpoints_own_codebook(tmp_path):
    """A checkpoint taught by the 'gocl' teacher records a training-time GOCL path; where that path
    is missing, teacher targets use the copy inside the checkpoint (gocl/), and otherwise nothing changes."""
    from chorus_ros.core.adapt.loop import _with_own_codebook
    spec = {"kind": "object", "type": "gocl", "options": {"checkpoint": str(tmp_path / "gone"), "seed": 3}}
    assert _with_own_codebook(spec, tmp_path) == spec                     # no copy either: unchanged (clear error later)
    (tmp_path / "gocl").mkdir()
    (tmp_path / "gocl" / "gocl.json").write_text("{}")
    got = _with_own_codebook(spec, tmp_path)
    assert got["options"] == {"checkpoint": str(tmp_path / "gocl"), "seed": 3} and spec["options"]["seed"] == 3
    (tmp_path / "gone").mkdir()
    assert _with_own_codebook(spec, tmp_path) == spec                     # the recorded path exists: used as is
    other = {"kind": "object", "type": "oracle_object", "options": {}}
    assert _with_own_codebook(other, tmp_path) is other


def _striped_site_views(v: int, seed: int, prior_noise: float):
    """V views of three vertical class stripes whose colours tell the class; the 3D class
    probabilities agree with the labels except in a band where they name the next class."""
    from chorus_ros.core.adapt.fusion import SiteViews
    g = torch.Generator().manual_seed(seed)
    h, w, k, d = 24, 30, 3, 8
    labels = torch.zeros(v, h, w, dtype=torch.int64)
    rgb = torch.zeros(v, 3, h, w)
    for i in range(v):
        cut = sorted(torch.randint(4, w - 4, (2,), generator=g).tolist())
        labels[i, :, cut[0]:] = 1
        labels[i, :, cut[1]:] = 2
    for c in range(k):
        rgb[:, c] = (labels == c).float() * 0.8 + 0.1 * torch.rand(v, h, w, generator=g)
    wrong = (labels + 1) % k
    band = torch.rand(v, h, w, generator=g) < prior_noise
    lab3d = torch.where(band, wrong, labels)
    probs = F.one_hot(lab3d, k).permute(0, 3, 1, 2).float() * 0.7 + 0.1
    alpha = torch.ones(v, 1, h, w)
    depth = torch.full((v, 1, h, w), 2.0)
    splat = torch.randn(v, d, h, w, generator=g).half()
    return SiteViews(list(range(v)), rgb, depth, alpha, splat, probs, labels)


def test_site_fusion_flip_mirrors_the_inputs_and_mirrors_the_logits_back():
    """The flip augmentation scores the same pixels: the logits of a mirrored step, mirrored back,
    equal the plain logits of the views mirrored by hand (and the default decoder reads the 3D
    class probabilities as input)."""
    import dataclasses

    from chorus_ros.core.adapt.fusion import _logits, train_site_fusion
    text = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    views = _striped_site_views(4, 0, 0.25)
    run = train_site_fusion(views, text, steps=3, names=["a", "b", "c"], lr=1e-2, views_per_step=2)
    fd = run.decoder
    assert fd.config.prior_names == ("a", "b", "c")
    assert train_site_fusion(views, text, steps=1, prior_input=False).decoder.config.prior_classes == 0
    with pytest.raises(InvalidInputError, match="needs the 3 class names"):
        train_site_fusion(views, text, steps=1)
    mirrored = dataclasses.replace(views, **{k: getattr(views, k).flip(-1) for k in ("rgb", "depth", "alpha", "splat",
                                                                                     "probs", "labels")})
    idx = torch.tensor([0, 2])
    with torch.no_grad():
        got = _logits(fd, views, idx, run.text, 0.05, torch.device("cpu"), flip=True)
        ref = _logits(fd, mirrored, idx, run.text, 0.05, torch.device("cpu")).flip(-1)
        plain = _logits(fd, views, idx, run.text, 0.05, torch.device("cpu"))
    assert torch.allclose(got, ref, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)          # the decoder is not mirror-symmetric: flipping does act


def test_site_fusion_validation_keeps_the_best_check_and_rejects_a_decoder_that_loses_to_the_3d_labels():
    """With validation views the fusion decoder keeps the weights of its best check (its fused
    labels there score exactly the recorded mIoU), scores the 3D labels alone as the bar, and is
    rejected (not used) when it cannot beat that bar, here 3D labels that are already perfect."""
    from chorus_ros.core.adapt.fusion import _miou, fused_labels, prior_labels, train_site_fusion
    text = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    train, val = _striped_site_views(6, 0, 0.25), _striped_site_views(2, 1, 0.25)
    run = train_site_fusion(train, text, steps=40, names=["a", "b", "c"], lr=1e-2, views_per_step=2, val_views=val,
                            val_every=10)
    steps = [h["step"] for h in run.val_history]
    assert steps == [10, 20, 30, 40]
    best = max(run.val_history, key=lambda h: h["miou"])
    assert run.best_step == best["step"] and run.val_miou == pytest.approx(best["miou"])
    again = _miou(fused_labels(run.decoder, val, run.text), val.labels, 3)
    assert again == pytest.approx(run.val_miou, abs=1e-9)                 # the best check's weights are the ones kept
    assert run.prior_val_miou == pytest.approx(_miou(prior_labels(val), val.labels, 3))
    assert run.prior_val_miou < 0.9
    print(f"val mIoU: 3D labels {run.prior_val_miou:.3f}, fused {run.val_miou:.3f} at step {run.best_step}")
    assert run.used == (run.val_miou > run.prior_val_miou)

    perfect = _striped_site_views(2, 1, 0.0)
    assert _miou(prior_labels(perfect), perfect.labels, 3) == pytest.approx(1.0)
    run2 = train_site_fusion(train, text, steps=10, names=["a", "b", "c"], lr=1e-2, views_per_step=2,
                             val_views=perfect, val_every=5)
    assert run2.rejected and not run2.used and run2.steps == 10
    with pytest.raises(InvalidInputError, match="val_every"):
        train_site_fusion(train, text, steps=10, names=["a", "b", "c"], val_views=val, val_every=-1)


def test_site_fusion_decoder_warm_starts_from_a_trained_decoder(tiny_setup):
    """AdaptConfig.fusion_init: the site decoder starts from the named decoder (its first step's
    loss is that decoder's, not a fresh one's), the provenance says what was copied, and 'base'
    on a checkpoint without fusion/ is a clear error before any decoder trains."""
    from chorus_ros.core.adapt import AdaptConfig, adapt_checkpoint
    from chorus_ros.core.decode.fusion import FusionConfig, FusionDecoder, save_fusion
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.errors import CheckpointError

    base, scene = tiny_setup
    train = list(range(0, 8, 2))
    lang = load_checkpoint(base / "ckpt").model.config.head_dims()["language"]
    # a trained decoder stands in: one fitted on this site's views by a first adaptation
    kw = dict(train="heads", steps=4, views_per_step=2, pixels_per_view=200, progress=False, replay_seeds=[],
              fusion_views_per_step=2, fusion_lr=5e-3)
    first = adapt_checkpoint(base / "ckpt", scene, train, AdaptConfig(fusion_steps=40, **kw),
                             out_dir=base / "warm_first")
    init_dir = base / "warm_init"
    save_fusion(init_dir, first.fusion.decoder)
    scratch = adapt_checkpoint(base / "ckpt", scene, train, AdaptConfig(fusion_steps=3, **kw))
    warm = adapt_checkpoint(base / "ckpt", scene, train, AdaptConfig(fusion_steps=3, fusion_init=str(init_dir), **kw),
                            out_dir=base / "warm_out")
    w0, s0 = warm.fusion.history[0]["loss"], scratch.fusion.history[0]["loss"]
    print(f"first fusion step: warm {w0:.3f}, scratch {s0:.3f}, trained decoder's last {first.fusion.history[-1]['loss']:.3f}")
    assert w0 < 0.7 * s0
    info = warm.fusion.warm_start
    assert info["copied"] == info["total"] and info["prior_classes_matched"] == len(first.label_set.names)
    prov = load_checkpoint(base / "warm_out").meta["adaptation"]["fusion"]
    assert prov["init"] == str(init_dir) and prov["warm_start"] == info
    with pytest.raises(CheckpointError, match="base checkpoint has none"):
        adapt_checkpoint(base / "ckpt", scene, train, AdaptConfig(fusion_steps=3, fusion_init="base", **kw))
    # the site decoder takes the init's architecture; one that reads other language features is refused
    other = base / "warm_other"
    save_fusion(other, FusionDecoder(FusionConfig(language_dim=lang + 1, embed_dim=warm.fusion.text.shape[1],
                                                  channels=(8, 16), prior=True)))
    with pytest.raises(InvalidInputError, match="language features"):
        adapt_checkpoint(base / "ckpt", scene, train, AdaptConfig(fusion_steps=3, fusion_init=str(other), **kw))
