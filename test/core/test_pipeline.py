"""PerceptionPipeline on a hand-built scene with an oracle encoder (exact features from the
ground truth), so decoding, ids, label switching, incremental updates and persistence have
exact expected answers. An integration test with the real encoder runs when it is available."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from chorus_ros.core.decode.instances import InstanceConfig
from chorus_ros.core.decode.semantic import SemanticConfig
from chorus_ros.core.gaussians import GaussianArrays, rgb_to_sh_dc
from chorus_ros.core.geometry import Camera, look_at_pose
from chorus_ros.core.labels import UNLABELED, LabelSet
from chorus_ros.core.map import MapConfig
from chorus_ros.core.pipeline import (ATTR_INSTANCE, ATTR_LABEL, PerceptionPipeline, PipelineConfig)
from chorus_ros.core.render import RenderSettings
from chorus_ros.core.synthetic.groundtruth import render_ground_truth
from chorus_ros.core.text import TextEncoderSpec, build_text_encoder

NAMES = ["floor", "chair", "table", "lamp"]
COLORS = [[150, 120, 80], [40, 160, 40], [250, 130, 20], [250, 230, 50]]
H = 0.05  # sample spacing


def surface_box(lo, hi, label, inst, color, id0):
    """Gaussians on the surface of an axis-aligned box (top and four sides), spacing H."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    xs = np.arange(lo[0], hi[0] + 1e-9, H)
    ys = np.arange(lo[1], hi[1] + 1e-9, H)
    zs = np.arange(lo[2], hi[2] + 1e-9, H)
    pts = [np.array([(x, y, hi[2]) for x in xs for y in ys])]
    if hi[2] - lo[2] > 1e-6:
        pts += [np.array([(x, y, z) for x in xs for z in zs]) for y in (lo[1], hi[1])]
        pts += [np.array([(x, y, z) for y in ys for z in zs]) for x in (lo[0], hi[0])]
    p = torch.tensor(np.unique(np.round(np.concatenate(pts), 6), axis=0), dtype=torch.float32)
    n = len(p)
    return GaussianArrays(
        p, rgb_to_sh_dc(torch.tensor(color, dtype=torch.float32) / 255).expand(n, 1, 3).clone(),
        torch.full((n,), 4.0), torch.full((n, 3), float(np.log(0.7 * H))),
        torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(), torch.arange(n) + id0,
        {"label": torch.full((n,), label), "instance": torch.full((n,), inst)})


def base_scene():
    return GaussianArrays.concat([
        surface_box((0, 0, 0), (3, 3, 0), 0, 1, COLORS[0], 0),
        surface_box((0.3, 0.3, 0.05), (0.7, 0.7, 0.45), 1, 2, COLORS[1], 10000),
        surface_box((2.2, 2.1, 0.05), (2.8, 2.7, 0.6), 2, 3, COLORS[2], 20000),
    ])


def lamp():
    return surface_box((0.4, 1.4, 0.05), (0.6, 1.6, 0.5), 3, 4, COLORS[3], 30000)


class OracleEncoder:
    """Stands in for IncrementalEncoder: features from the ground-truth extras.

    language = text embedding of the Gaussian's class name; object = a fixed random unit vector
    per ground-truth instance. update() re-encodes the dirty blocks plus one block of halo."""

    def __init__(self, gmap, text):
        self.map, self.text = gmap, text
        self.calls = {"update": 0, "encode_full": 0}
        gen = torch.Generator().manual_seed(0)
        self.protos = torch.nn.functional.normalize(torch.randn(64, 8, generator=gen), dim=-1)

    def _write(self, slots):
        g = self.map.arrays()
        lab = g.extras["label"][slots].long()
        emb = self.text.encode(NAMES)
        self.map.set_attribute("feat.language", emb[lab], slots)
        self.map.set_attribute("feat.object", self.protos[g.extras["instance"][slots].long()], slots)

    def encode_full(self):
        self.calls["encode_full"] += 1
        self.map.take_dirty()
        n = len(self.map)
        self._write(torch.arange(n))
        return SimpleNamespace(updated_slots=torch.arange(n), n_encoded=n, full=True)

    def update(self):
        self.calls["update"] += 1
        d = self.map.take_dirty()
        if d.full:
            self.calls["encode_full"] -= 1
            return self.encode_full()
        blocks = self.map.block_of(self.map.arrays().means)
        near = torch.zeros(len(self.map), dtype=torch.bool)
        for b in d.blocks:
            near |= ((blocks - b).abs().max(dim=1).values <= 1)
        slots = torch.nonzero(near).squeeze(1)
        if slots.numel():
            self._write(slots)
        return SimpleNamespace(updated_slots=slots, n_encoded=int(slots.numel()), full=False)


@pytest.fixture(scope="module")
def text():
    return build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}"))


def make_pipeline(text):
    cfg = PipelineConfig(map=MapConfig(sh_degree=0, block_size=0.5, initial_capacity=1024),
                         incremental=None, render=RenderSettings(backend="reference"),
                         semantic=SemanticConfig(temperature=0.05, min_alpha=0.5),
                         instances=InstanceConfig(voxel_size=0.1, feature_threshold=0.8, min_gaussians=5))
    labels = LabelSet(NAMES, COLORS, [True, False, False, False])
    return PerceptionPipeline(cfg, None, text, labels, incremental_factory=lambda m: OracleEncoder(m, text))


def camera(w=48, h=36):
    c2w = look_at_pose(np.array([1.5, 0.0, 3.2]), np.array([1.5, 1.4, 0.0]))
    return Camera.from_c2w(c2w, Camera.intrinsics_from_fov(w, h, 70), w, h)


def ids_by_gt(pipe):
    g = pipe.map.arrays()
    inst = pipe.map.attribute(ATTR_INSTANCE)
    return {int(k): set(inst[g.extras["instance"] == k].tolist()) for k in g.extras["instance"].unique()}


@pytest.fixture(scope="module")
def encoded(text):
    pipe = make_pipeline(text)
    pipe.apply_update(base_scene(), None, full=True)
    summary = pipe.encode()
    return pipe, summary


def test_full_encode_objects_exact(encoded):
    pipe, s = encoded
    assert s.full and s.updated_gaussians == len(pipe.map) and s.num_objects == 3
    g = pipe.map.arrays()
    assert torch.equal(pipe.map.attribute(ATTR_LABEL), g.extras["label"])
    assert ids_by_gt(pipe) == {1: {1}, 2: {2}, 3: {3}}   # ids in order of the smallest Gaussian id
    recs = {r.instance_id: r for r in pipe.objects()}
    assert [recs[i].label for i in (1, 2, 3)] == ["floor", "chair", "table"]
    chair = g.extras["instance"] == 2
    assert recs[2].gaussian_count == int(chair.sum())
    np.testing.assert_allclose(recs[2].centroid, g.means[chair].double().mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(recs[2].bbox_min, [0.3, 0.3, 0.05], atol=1e-5)
    np.testing.assert_allclose(recs[2].bbox_max, [0.7, 0.7, 0.45], atol=1e-5)
    np.testing.assert_allclose(recs[2].embedding, pipe.text_encoder.encode(["chair"])[0].numpy(), atol=1e-5)
    assert recs[2].score > 0.9


def test_render_view_matches_ground_truth(encoded):
    pipe, _ = encoded
    cam = camera()
    v = pipe.render_view(cam)
    assert v.labels.dtype == np.uint16 and v.instances.dtype == np.int32 and v.rgb.dtype == np.uint8
    assert v.labels.shape == v.depth.shape == v.confidence.shape == (36, 48)
    gt = render_ground_truth(pipe.map.arrays(), cam, RenderSettings(backend="reference"), min_alpha=0.5)
    lab = gt.semantic.numpy()
    m = lab != UNLABELED
    assert m.mean() > 0.5
    assert (v.labels[m] == lab[m]).mean() > 0.97
    # instance image = persistent id of the top-weight Gaussian: exactly the GT instance mapped 1->1, 2->2, 3->3
    gi = gt.instance.numpy()
    assert np.array_equal(v.instances[m], gi[m])
    assert (v.instances[~m] == 0).all()
    np.testing.assert_array_equal(v.color[v.labels == UNLABELED], 0)
    np.testing.assert_array_equal(v.color, pipe.labels.colorize(v.labels))
    np.testing.assert_array_equal(v.overlay[v.labels == UNLABELED], v.rgb[v.labels == UNLABELED])
    np.testing.assert_allclose(v.depth, gt.depth.numpy(), atol=1e-5)


def test_set_labels_changes_labels_without_reencoding(text):
    pipe = make_pipeline(text)
    pipe.apply_update(base_scene(), None, full=True)
    pipe.encode()
    enc = pipe._incremental
    calls = dict(enc.calls)
    feats = pipe.map.attribute("feat.language").clone()
    ids_before = pipe.map.attribute(ATTR_INSTANCE).clone()
    text_calls = text.n_forward_calls
    v0 = pipe.render_view(camera())
    pipe.set_labels(["table", "chair", "floor"])
    assert enc.calls == calls                                   # the encoder did not run
    assert torch.equal(pipe.map.attribute("feat.language"), feats)  # features untouched
    assert text.n_forward_calls == text_calls                   # names were cached
    gt = pipe.map.arrays().extras["label"]
    expect = torch.tensor([2, 1, 0, UNLABELED])[gt]            # floor->2, chair->1, table->0
    got = pipe.map.attribute(ATTR_LABEL)
    keep = gt != 3
    assert torch.equal(got[keep], expect[keep])
    assert torch.equal(pipe.map.attribute(ATTR_INSTANCE), ids_before)  # ids survive the switch
    v1 = pipe.render_view(camera())
    remap = np.array([2, 1, 0], dtype=np.uint16)
    m = v0.labels != UNLABELED
    assert (v1.labels[m] == remap[v0.labels[m]]).mean() > 0.99
    assert {r.label for r in pipe.objects()} == {"floor", "chair", "table"}
    assert {r.instance_id: r.label_id for r in pipe.objects()} == {1: 2, 2: 1, 3: 0}


def test_growth_keeps_ids_incremental_equals_full(text):
    a, b = make_pipeline(text), make_pipeline(text)
    for p in (a, b):
        p.apply_update(base_scene(), None, full=True)
        p.encode()
        # the chair grows (a new top layer), and a lamp appears
        grow = surface_box((0.3, 0.3, 0.5), (0.7, 0.7, 0.5), 1, 2, COLORS[1], 40000)
        p.apply_update(GaussianArrays.concat([grow, lamp()]), None)
    sa = a.encode()
    sb = b.encode(full=True)
    assert not sa.full and sb.full
    assert a._incremental.calls["update"] == 1 and a._incremental.calls["encode_full"] == 1
    assert sa.regrouped_gaussians < len(a.map)
    assert ids_by_gt(a) == {1: {1}, 2: {2}, 3: {3}, 4: {4}}
    ida, idb = a.map.arrays().ids, b.map.arrays().ids
    assert torch.equal(ida, idb)
    assert torch.equal(a.map.attribute(ATTR_INSTANCE), b.map.attribute(ATTR_INSTANCE))
    assert torch.equal(a.map.attribute(ATTR_LABEL), b.map.attribute(ATTR_LABEL))
    # the table was far from every change: its record was not rewritten
    assert 3 not in sa.objects_changed and 4 in sa.objects_changed


def test_removal_retires_and_snapshot_keeps_ids(text):
    pipe = make_pipeline(text)
    scene = base_scene()
    pipe.apply_update(scene, None, full=True)
    pipe.encode()
    table_ids = scene.ids[scene.extras["instance"] == 3]
    pipe.apply_update(None, table_ids)
    s = pipe.encode()
    assert s.objects_retired == [3]
    assert [r.instance_id for r in pipe.objects()] == [1, 2]
    # a full snapshot of the same Gaussians (+ the lamp) keeps the ids; the lamp gets a new one
    keep = scene.extras["instance"] != 3
    snap = GaussianArrays.concat([scene.index(keep), lamp()])
    pipe.apply_update(snap, None, full=True)
    s2 = pipe.encode()
    assert s2.full
    assert ids_by_gt(pipe) == {1: {1}, 2: {2}, 4: {4}}


def test_query_and_relevance(encoded):
    pipe, _ = encoded
    hits = pipe.query("chair", top_k=2)
    assert len(hits) == 2 and hits[0].record.label == "chair" and hits[0].cosine == pytest.approx(1.0, abs=1e-4)
    rec, score = hits[0]
    assert score > hits[1].score
    # the score is the cosine weighted by the object's support (chorus_ros.core.objects.support)
    from chorus_ros.core.objects import support_scores
    recs = [r for r in pipe.objects() if r.embedding.size]
    q = pipe.embed_text(["chair"])[0].numpy()
    ref = support_scores(np.stack([r.embedding for r in recs]) @ q, [r.gaussian_count for r in recs],
                         pipe.config.support)
    assert score == pytest.approx(float(ref.max()), abs=1e-5) and 0 < score <= hits[0].cosine
    assert pipe.query("chair", top_k=5, min_score=score - 1e-6)[0].record.instance_id == 2
    assert len(pipe.query("chair", top_k=5, min_score=score - 1e-6)) == 1
    cam = camera()
    rel = pipe.relevance_view(pipe.embed_text(["chair"])[0].numpy(), cam)
    v = pipe.render_view(cam)
    chair_px = v.instances == 2
    assert chair_px.sum() > 5
    assert np.nanmean(rel[chair_px]) > 0.95
    assert np.nanmean(rel[v.instances == 1]) < np.nanmean(rel[chair_px]) - 0.2
    assert np.isnan(rel[v.alpha < 0.5]).all()


def test_save_load_roundtrip(encoded, tmp_path, text):
    pipe, _ = encoded
    pipe.save(tmp_path / "state")
    other = make_pipeline(text)
    other.load(tmp_path / "state")
    assert [(r.instance_id, r.label, r.gaussian_count) for r in other.objects()] == \
           [(r.instance_id, r.label, r.gaussian_count) for r in pipe.objects()]
    assert other.instances.codebook.next_id == pipe.instances.codebook.next_id
    va, vb = pipe.render_view(camera()), other.render_view(camera())
    np.testing.assert_array_equal(va.labels, vb.labels)
    np.testing.assert_array_equal(va.instances, vb.instances)


def test_render_before_encode_and_empty_map(text):
    pipe = make_pipeline(text)
    v = pipe.render_view(camera())
    assert (v.labels == UNLABELED).all() and (v.instances == 0).all()
    pipe.apply_update(base_scene(), None, full=True)
    with pytest.raises(Exception, match="encode"):
        pipe.render_view(camera())


# ------------------------------------------------------------------ with the real encoder
def real_pipeline(text, model):
    from chorus_ros.core.encoder.incremental import IncrementalConfig
    cfg = PipelineConfig(map=MapConfig(sh_degree=0, block_size=0.25, initial_capacity=1024),
                         incremental=IncrementalConfig(full_fraction=1.0), render=RenderSettings(backend="reference"),
                         instances=InstanceConfig(voxel_size=0.1, feature_threshold=0.8, min_gaussians=5))
    return PerceptionPipeline(cfg, model, text, LabelSet(NAMES, COLORS, [True, False, False, False]))


@pytest.fixture(scope="module")
def tiny_model(text):
    enc = pytest.importorskip("chorus_ros.core.encoder")
    pytest.importorskip("chorus_ros.core.encoder.incremental")
    torch.manual_seed(0)
    cfg = enc.EncoderConfig(voxel_size=0.05, channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,),
                            point_hidden=8, head_hidden=16, embed_dim=16,
                            heads=[enc.HeadSpec("language", text.dim), enc.HeadSpec("object", 8)])
    return enc.ChorusEncoder(cfg).eval()


def test_real_encoder_incremental_equals_full_outside_changes(text, tiny_model):
    """Incremental vs full re-encode of the same final map: Gaussians outside the re-encoded
    region keep their features (within 1e-4 of a full encode) and identical labels and ids."""
    a, b, c = (real_pipeline(text, tiny_model) for _ in range(3))
    wide = GaussianArrays.concat([base_scene(), surface_box((5.0, 0.0, 0.0), (6.0, 1.0, 0.0), 0, 5, COLORS[0], 50000)])
    for p in (a, b):
        p.apply_update(wide, None, full=True)
        p.encode()
    before = a.map.attribute("feat.language").clone()
    for p in (a, b):
        p.apply_update(lamp(), None)
    sa, sb = a.encode(), b.encode(full=True)
    assert not sa.full and sb.full and 0 < sa.updated_gaussians < len(a.map)
    assert torch.equal(a.map.arrays().ids, b.map.arrays().ids)
    outside = torch.ones(len(a.map), dtype=torch.bool)
    outside[sa.updated_slots] = False
    assert int(outside.sum()) > 1000
    fa, fb = a.map.attribute("feat.language"), b.map.attribute("feat.language")
    nb = len(before)  # the lamp was appended: old Gaussians keep their slots
    assert not outside[nb:].any()
    assert torch.equal(fa[:nb][outside[:nb]], before[outside[:nb]])  # outside: not recomputed at all
    assert float((fa - fb).abs().max()) <= 1e-4
    assert torch.equal(a.map.attribute(ATTR_LABEL), b.map.attribute(ATTR_LABEL))
    assert torch.equal(a.map.attribute(ATTR_INSTANCE), b.map.attribute(ATTR_INSTANCE))
    # a pipeline that only ever saw the final map: same features, labels and partition
    c.apply_update(a.map.arrays().index(torch.arange(len(a.map))), None, full=True)
    c.encode()
    ids_a = a.map.arrays().ids
    order_c = torch.argsort(c.map.arrays().ids)
    pos = order_c[torch.searchsorted(c.map.arrays().ids[order_c], ids_a)]
    assert float((c.map.attribute("feat.language")[pos] - fa).abs().max()) <= 1e-4
    assert torch.equal(c.map.attribute(ATTR_LABEL)[pos], a.map.attribute(ATTR_LABEL))
    pairs = set(zip(a.map.attribute(ATTR_INSTANCE).tolist(), c.map.attribute(ATTR_INSTANCE)[pos].tolist()))
    assert len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


def test_real_encoder_label_switch_does_not_run_the_encoder(text, tiny_model, monkeypatch):
    pipe = real_pipeline(text, tiny_model)
    pipe.apply_update(base_scene(), None, full=True)
    pipe.encode()
    calls = []
    monkeypatch.setattr(type(tiny_model), "forward", lambda self, *a, **k: calls.append(1))
    before = pipe.map.attribute(ATTR_LABEL).clone()
    probs = pipe.map.attribute("sem.probs").clone()
    pipe.set_labels(list(reversed(NAMES)))
    assert calls == []
    expect = torch.where(before == UNLABELED, before, 3 - before)
    assert torch.equal(pipe.map.attribute(ATTR_LABEL), expect)
    torch.testing.assert_close(pipe.map.attribute("sem.probs"), probs.flip(1))


def _checkpoint_with_gocl(tmp_path, text, tiny_model, code_dim):
    """tiny_model saved as a checkpoint, with a random GOCL codebook of width ``code_dim`` in gocl/."""
    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.objects.codebook import CodebookConfig
    from chorus_ros.core.objects.gocl import GOCL, GOCLConfig
    from chorus_ros.core.objects.slots import SlotAttentionConfig
    text.save_weights(tmp_path / "text_encoder.safetensors")
    spec = text.spec.to_dict()
    spec["weights"] = "text_encoder.safetensors"
    labels = LabelSet(NAMES, COLORS, [True, False, False, False])
    save_checkpoint(tmp_path, tiny_model, {"labels": labels.to_dict(), "text_encoder": spec})
    torch.manual_seed(3)
    gocl = GOCL(GOCLConfig(in_dim=4, slots=SlotAttentionConfig(num_slots=3, dim=8, iters=1, mlp_hidden=8),
                           codebook=CodebookConfig(num_codes=6, dim=code_dim), decoder_hidden=8))
    gocl.save(tmp_path / "gocl")
    return tmp_path, gocl.codebook.unit_prototypes().detach()


def test_checkpoint_gocl_codebook_gives_each_object_its_nearest_code(text, tiny_model, tmp_path):
    """A checkpoint with gocl/ names every object's code: the prototype nearest to the unit mean
    object feature of the object's Gaussians (recomputed here from the map), and a confidence in
    [0, 1]; a codebook whose width is not the object head's is refused at load time."""
    from chorus_ros.core.errors import CheckpointError
    path, protos = _checkpoint_with_gocl(tmp_path / "ok", text, tiny_model, code_dim=8)
    cfg = PipelineConfig(map=MapConfig(sh_degree=0, block_size=0.5, initial_capacity=1024),
                         render=RenderSettings(backend="reference"),
                         instances=InstanceConfig(voxel_size=0.1, feature_threshold=0.8, min_gaussians=5))
    pipe = PerceptionPipeline.from_checkpoint(path, cfg)
    pipe.apply_update(base_scene(), None, full=True)
    pipe.encode()
    recs = pipe.objects()
    assert recs
    inst = pipe.map.attribute(ATTR_INSTANCE)
    feats = pipe.map.attribute("feat.object").float()
    for r in recs:
        mean = torch.nn.functional.normalize(feats[inst == r.instance_id].mean(0), dim=0)
        cos = protos @ mean
        assert 0 <= r.code_id < 6
        assert float(cos[r.code_id]) == pytest.approx(float(cos.max()), abs=1e-5)   # ties: any nearest
        assert 0.0 <= r.confidence <= 1.0
    no_codes = PerceptionPipeline(cfg, tiny_model, text, LabelSet(NAMES, COLORS, [True, False, False, False]))
    no_codes.apply_update(base_scene(), None, full=True)
    no_codes.encode()
    assert all(r.code_id == -1 for r in no_codes.objects())
    bad, _ = _checkpoint_with_gocl(tmp_path / "bad", text, tiny_model, code_dim=5)
    with pytest.raises(CheckpointError, match="codebook width 5 != the checkpoint's object head width 8"):
        PerceptionPipeline.from_checkpoint(bad, cfg)


# ------------------------------------------------------------------ faint Gaussians (min_opacity)
def faint_blobs(n=40, id0=90000, logit=-4.0, seed=3):
    """Nearly transparent (opacity ~0.018), wrongly coloured blobs over the chair and the floor:
    what photometric 3DGS leaves around real surfaces."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(n, 3, generator=gen) * torch.tensor([2.0, 2.0, 0.5])
    return GaussianArrays(p, rgb_to_sh_dc(torch.rand(n, 3, generator=gen)).reshape(n, 1, 3),
                          torch.full((n,), logit), torch.full((n, 3), float(np.log(0.1))),
                          torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(), torch.arange(n) + id0,
                          {"label": torch.zeros(n, dtype=torch.long), "instance": torch.ones(n, dtype=torch.long)})


def test_faint_gaussians_are_set_aside_not_lost(text, tmp_path):
    """Below min_opacity a Gaussian goes to the faint store: not in the map (so not encoded,
    rendered or grouped), still held (contains), moved back and forth as its opacity crosses the
    threshold, removable, and saved and loaded with the map."""
    pipe = make_pipeline(text)
    scene, faint = base_scene(), faint_blobs()
    pipe.apply_update(GaussianArrays.concat([scene, faint]), None, full=True)
    assert len(pipe.map) == len(scene) and len(pipe.faint) == len(faint)
    assert not pipe.map.contains(faint.ids).any() and pipe.contains(faint.ids).all()
    assert pipe.contains(scene.ids).all()
    pipe.encode()
    assert len(pipe.objects()) == 3
    # an opaque Gaussian fades: it leaves the map for the faint store
    fade = scene.index(torch.arange(5))
    fade.opacities[:] = -4.0
    pipe.apply_update(fade, None)
    assert not pipe.map.contains(fade.ids).any() and pipe.faint.contains(fade.ids).all()
    # a faint one becomes opaque: back in the map, out of the faint store
    back = faint.index(torch.arange(3))
    back.opacities[:] = 4.0
    pipe.apply_update(back, None)
    assert pipe.map.contains(back.ids).all() and not pipe.faint.contains(back.ids).any()
    # removal reaches the faint store too
    pipe.apply_update(None, faint.ids[3:6])
    assert not pipe.contains(faint.ids[3:6]).any()
    assert len(pipe.map) + len(pipe.faint) == len(scene) + len(faint) - 3
    pipe.encode()
    pipe.save(tmp_path / "s")
    other = make_pipeline(text)
    other.load(tmp_path / "s")
    assert torch.equal(torch.sort(other.faint.arrays().ids).values, torch.sort(pipe.faint.arrays().ids).values)
    assert len(other.map) == len(pipe.map)
    # a save without faint Gaussians has no faint file, and loading it empties the store
    clean = make_pipeline(text)
    clean.apply_update(scene, None, full=True)
    clean.encode()
    clean.save(tmp_path / "clean")
    assert not (tmp_path / "clean" / "faint.safetensors").exists()
    other.load(tmp_path / "clean")
    assert len(other.faint) == 0 and len(other.map) == len(scene)


def test_faint_threshold_zero_keeps_everything_in_the_map(text):
    pipe = make_pipeline(text)
    pipe.config.min_opacity = 0.0
    pipe.apply_update(GaussianArrays.concat([base_scene(), faint_blobs()]), None, full=True)
    assert len(pipe.faint) == 0 and len(pipe.map) == len(base_scene()) + len(faint_blobs())
    with pytest.raises(Exception, match="min_opacity"):
        PipelineConfig(min_opacity=1.0).validate()


def test_bad_faint_gaussian_refuses_the_whole_update(text):
    """A non-finite value in the faint part refuses the update before either store changes."""
    pipe = make_pipeline(text)
    pipe.apply_update(base_scene(), None, full=True)
    pipe.encode()
    v0, n0 = pipe.map.version, len(pipe.map)
    bad = faint_blobs()
    bad.means[7, 1] = float("nan")
    upd = GaussianArrays.concat([lamp(), bad])
    with pytest.raises(Exception, match="non-finite"):
        pipe.apply_update(upd, None)
    with pytest.raises(Exception, match="non-finite"):
        pipe.apply_update(upd, None, full=True)
    assert pipe.map.version == v0 and len(pipe.map) == n0 and len(pipe.faint) == 0


def test_faint_gaussians_do_not_change_what_the_encoder_says(text, tiny_model):
    """The real encoder's outputs for the opaque Gaussians are the same with and without faint
    blobs in the update (they never reach it); with min_opacity 0 the blobs do change them."""
    a, b, c = (real_pipeline(text, tiny_model) for _ in range(3))
    c.config.min_opacity = 0.0
    a.apply_update(base_scene(), None, full=True)
    b.apply_update(GaussianArrays.concat([base_scene(), faint_blobs(200)]), None, full=True)
    c.apply_update(GaussianArrays.concat([base_scene(), faint_blobs(200)]), None, full=True)
    for p in (a, b, c):
        p.encode()
    assert torch.equal(a.map.arrays().ids, b.map.arrays().ids)
    assert torch.equal(a.map.attribute("feat.language"), b.map.attribute("feat.language"))
    n = len(a.map)
    assert float((c.map.attribute("feat.language")[:n] - a.map.attribute("feat.language")).abs().max()) > 1e-3


def test_faint_mask_is_the_one_rule():
    """GaussianArrays.faint_mask: below the threshold is faint, a NaN opacity is not (the map
    refuses it by name), and threshold 0 marks nothing."""
    g = faint_blobs(4)
    g.opacities[:] = torch.tensor([-5.0, 0.0, float("nan"), -2.0])   # 0.0067, 0.5, nan, 0.119
    assert g.faint_mask(0.1).tolist() == [True, False, False, False]
    assert not g.faint_mask(0.0).any()
