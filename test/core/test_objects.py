"""Object-centric learning: slot attention, the prototype codebook, GOCL, support-aware scores."""
import numpy as np
import pytest
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.objects import (GOCL, CodebookConfig, GOCLConfig, PrototypeCodebook,
                                     SlotAttentionConfig, SupportConfig, support_scores, support_weight)
from chorus_ros.core.objects.scores import adjusted_rand_index

COLOURS = torch.tensor([[1., 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]])


def toy_shapes(batch: int, g: torch.Generator, size: int = 16):
    """Grey images with three shapes (discs and squares) of distinct colours; segment ids 0..3."""
    img = torch.full((batch, size, size, 3), 0.5)
    seg = torch.zeros(batch, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(batch):
        cols = torch.randperm(len(COLOURS), generator=g)[:3]
        for j in range(3):
            cy, cx = torch.randint(3, size - 3, (2,), generator=g).tolist()
            r = int(torch.randint(2, 4, (1,), generator=g))
            m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if j % 2 == 0 else \
                (((yy - cy).abs() <= r) & ((xx - cx).abs() <= r))
            img[i][m] = COLOURS[cols[j]]
            seg[i][m] = j + 1
    return img, seg


def tiny_gocl(in_dim=3, slots=4):
    return GOCL(GOCLConfig(in_dim=in_dim, slots=SlotAttentionConfig(num_slots=slots, dim=32, iters=3, mlp_hidden=64),
                           codebook=CodebookConfig(num_codes=8, dim=16), decoder_hidden=32))


def test_slot_attention_separates_coloured_shapes():
    torch.manual_seed(0)
    model = tiny_gocl()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    x, seg = toy_shapes(16, torch.Generator().manual_seed(99))
    with torch.no_grad():
        before = model(x, generator=torch.Generator().manual_seed(0)).masks.argmax(1)
    for _ in range(250):
        xb, _ = toy_shapes(8, g)
        out = model(xb, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model(x, generator=torch.Generator().manual_seed(0)).masks.argmax(1)
    ari = np.mean([adjusted_rand_index(seg[i], pred[i]) for i in range(len(x))])
    ari0 = np.mean([adjusted_rand_index(seg[i], before[i]) for i in range(len(x))])
    assert ari > 0.85, (ari, ari0)
    assert ari0 < 0.5
    # every shape is mostly covered by one slot that covers little else
    for i in range(len(x)):
        for j in range(1, 4):
            m = seg[i] == j
            best = torch.bincount(pred[i][m], minlength=4).max()
            assert best >= 0.7 * m.sum()


def test_codebook_assignment_permutation_invariant_over_slots():
    torch.manual_seed(0)
    cb = PrototypeCodebook(CodebookConfig(num_codes=6, dim=8))
    e = torch.randn(2, 5, 8)
    w = torch.rand(2, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a, b = cb.assign(e, w), cb.assign(e[:, perm], w[:, perm])
    assert torch.equal(b.code, a.code[:, perm])
    assert torch.allclose(b.probs, a.probs[:, perm])
    assert torch.allclose(b.loss, a.loss)
    assert sorted(b.code.flatten().tolist()) == sorted(a.code.flatten().tolist())
    assert torch.allclose(cb.usage_entropy(b.probs, w[:, perm]), cb.usage_entropy(a.probs, w))


def test_gocl_equivariant_to_slot_order():
    torch.manual_seed(0)
    model = tiny_gocl(in_dim=5, slots=4).eval()
    feats = torch.randn(2, 6, 7, 5)
    init = model.slot_attention.initial_slots(2, torch.Generator().manual_seed(3))
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a, b = model(feats, slots=init), model(feats, slots=init[:, perm])
    assert torch.allclose(b.masks, a.masks[:, perm], atol=1e-5)
    assert torch.equal(b.codes.code, a.codes.code[:, perm])
    assert torch.allclose(b.recon, a.recon, atol=1e-5)
    assert torch.allclose(b.loss, a.loss, atol=1e-6)


def test_gocl_identity_map_and_save_load(tmp_path):
    torch.manual_seed(0)
    model = tiny_gocl(in_dim=5).eval()
    feats = torch.randn(6, 7, 5)
    ident, out = model.identity_map(feats, seed=4)
    assert ident.shape == (6, 7, 16)
    # identity = mask-weighted unit slot embeddings, so its norm is at most 1
    assert float(ident.norm(dim=-1).max()) <= 1 + 1e-5
    ref = sum(out.masks[0, s, :, :, None] * out.codes.embedding[0, s] for s in range(4))
    assert torch.allclose(ident, ref, atol=1e-6)
    model.save(tmp_path / "g", meta={"note": "x"})
    again = GOCL.load(tmp_path / "g")
    assert torch.allclose(again.identity_map(feats, seed=4)[0], ident, atol=1e-6)
    with pytest.raises(InvalidInputError):
        model(torch.randn(1, 4, 4, 3))
    with pytest.raises(InvalidInputError):
        model(torch.full((1, 4, 4, 5), float("nan")))


def test_codebook_revive_reseeds_dead_codes():
    cb = PrototypeCodebook(CodebookConfig(num_codes=4, dim=3))
    before = cb.unit_prototypes().clone()
    n = cb.revive(torch.tensor([[0., 0, 2]]), torch.tensor([5, 0, 3, 0]))
    assert n == 2
    p = cb.unit_prototypes()
    assert torch.allclose(p[1], torch.tensor([0., 0, 1])) and torch.allclose(p[3], torch.tensor([0., 0, 1]))
    assert torch.allclose(p[0], before[0]) and torch.allclose(p[2], before[2])


def _slow_ari(t, p):
    t, p = t.reshape(-1).tolist(), p.reshape(-1).tolist()
    n = len(t)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    a = sum(t[i] == t[j] for i, j in pairs)
    b = sum(p[i] == p[j] for i, j in pairs)
    both = sum(t[i] == t[j] and p[i] == p[j] for i, j in pairs)
    exp = a * b / len(pairs)
    return (both - exp) / ((a + b) / 2 - exp)


def test_adjusted_rand_index_against_pair_counting():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        t = torch.randint(0, 3, (30,), generator=g)
        p = torch.randint(0, 4, (30,), generator=g)
        assert adjusted_rand_index(t, p) == pytest.approx(_slow_ari(t, p), abs=1e-9)
    t = torch.tensor([0, 0, 1, 1, 2])
    assert adjusted_rand_index(t, torch.tensor([5, 5, 7, 7, 9])) == pytest.approx(1.0)


def test_fragment_cannot_outrank_whole_object_score():
    # a 15-Gaussian fragment whose noisy mean embedding matches the query almost perfectly
    # against a whole chair (600 Gaussians) with an ordinary match, among objects of usual size
    counts = np.array([15, 600, 800, 400, 1200, 500])
    cos = np.array([0.99, 0.45, 0.1, -0.2, 0.05, 0.2])
    s = support_scores(cos, counts)
    assert int(np.argmax(s)) == 1
    assert s[0] < s[1]
    # density does not matter: the same map ten times denser ranks the same
    assert np.allclose(support_scores(cos, counts * 10), s)
    # switched off, the raw cosine comes back
    assert np.allclose(support_scores(cos, counts, SupportConfig(half=0.0)), cos)
    w = support_weight(counts)
    assert np.all(np.diff(w[np.argsort(counts)]) >= 0) and np.all((w > 0) & (w <= 1))
    # saturating: objects of a tenth of the median support or more keep their raw cosine (a lamp
    # with a slightly better match still outranks a sofa), a fragment is scaled down linearly
    assert np.allclose(support_weight([50, 400, 500, 600, 2000]), 1.0)
    assert support_weight([15, 500, 500, 500])[0] == pytest.approx(15 / 50)
    with pytest.raises(InvalidInputError):
        support_scores(cos, counts[:3])


def test_gocl_stage_trains_in_the_trainer_and_saves(tmp_path):
    from chorus_ros.core.train import Trainer
    from chorus_ros.core.train.config import TrainConfig
    from chorus_ros.core.objects import GOCL
    cfg = TrainConfig()
    cfg.stage = "gocl"
    cfg.stage_options = {"gocl": {"num_slots": 4, "slot_dim": 16, "num_codes": 6, "code_dim": 8,
                                  "views_per_step": 2, "revive_every": 1,
                                  "teacher": {"kind": "generalist", "type": "oracle_generalist",
                                              "options": {"dim": 8, "patch_size": 8, "seed": 1}}}}
    cfg.data.train_seeds = [3]
    cfg.data.scene = {"target_gaussians": 3000}
    cfg.data.views = {"loop_views": 2, "random_views": 0, "width": 48, "height": 32}
    cfg.encoder = {"channels": [8, 8], "encoder_blocks": [1, 1], "decoder_blocks": [1], "embed_dim": 8}
    cfg.augment.enabled = False
    cfg.log.dir, cfg.log.progress, cfg.log.tensorboard = str(tmp_path / "run"), False, False
    cfg.checkpoint.dir, cfg.checkpoint.resume = str(tmp_path / "ckpt"), False
    cfg.optim.steps = 2
    tr = Trainer(cfg)
    assert tr.scenes[0].feats.shape == (2, 4, 6, 8)
    before = {k: v.clone() for k, v in tr.stage.modules.state_dict().items()}
    tr.fit()
    after = tr.stage.modules.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    g = GOCL.load(tmp_path / "ckpt" / "gocl")
    assert g.config.codebook.num_codes == 6
    ident, _ = g.identity_map(tr.scenes[0].feats[0])
    assert ident.shape == (4, 6, 8)


def test_gocl_taught_training_ships_the_codebook_and_objects_get_code_ids(tmp_path):
    """An encoder whose object head is taught by the 'gocl' teacher carries that GOCL model in its
    checkpoint (gocl/), so the pipeline loads the codebook and object records get code ids."""
    import filecmp

    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.train import Trainer
    from chorus_ros.core.train.config import TrainConfig
    base = {"kind": "generalist", "type": "oracle_generalist", "options": {"dim": 5, "patch_size": 4, "seed": 1}}
    torch.manual_seed(0)
    tiny_gocl(in_dim=5).save(tmp_path / "g", meta={"teacher": base})
    cfg = TrainConfig()
    cfg.teachers = [{"kind": "language", "type": "oracle_language", "options": {"patch_size": 4, "seed": 0}},
                    {"kind": "object", "type": "gocl", "options": {"checkpoint": str(tmp_path / "g")}}]
    cfg.data.train_seeds = [3]
    cfg.data.scene = {"target_gaussians": 2000}
    cfg.data.views = {"loop_views": 2, "random_views": 0, "width": 32, "height": 24}
    cfg.data.cache_dir = str(tmp_path / "lift")
    cfg.encoder = {"channels": [8, 8], "encoder_blocks": [1, 1], "decoder_blocks": [1], "embed_dim": 8}
    cfg.augment.enabled = False
    cfg.log.dir, cfg.log.progress, cfg.log.tensorboard = str(tmp_path / "run"), False, False
    cfg.checkpoint.dir, cfg.checkpoint.resume = str(tmp_path / "ckpt"), False
    cfg.optim.steps = 1
    Trainer(cfg).fit()
    for f in ("gocl.json", "gocl.safetensors"):
        assert filecmp.cmp(tmp_path / "g" / f, tmp_path / "ckpt" / "gocl" / f, shallow=False)
    pipe = PerceptionPipeline.from_checkpoint(tmp_path / "ckpt", PipelineConfig(device="cpu"))
    pipe.apply_update(generate_scene(SceneConfig(seed=4, target_gaussians=1500)).gaussians, full=True)
    pipe.encode()
    recs = pipe.objects()
    assert recs and all(0 <= r.code_id < 8 for r in recs)


def test_gocl_teacher_paints_slot_identities_and_tracks_weights(tmp_path):
    from chorus_ros.core.labels import LabelSet
    from chorus_ros.core.teachers import FrameContext, TeacherSpec, build_teacher
    from chorus_ros.core.lift import _teacher_token
    base = {"kind": "generalist", "type": "oracle_generalist", "options": {"dim": 5, "patch_size": 2, "seed": 1}}
    torch.manual_seed(0)
    model = tiny_gocl(in_dim=5)
    model.save(tmp_path / "g", meta={"teacher": base})
    t = build_teacher(TeacherSpec("object", "gocl", {"checkpoint": str(tmp_path / "g")}))
    assert t.dim == 16 and t.needs_context
    labels = LabelSet(["floor", "chair"], [[1, 2, 3], [4, 5, 6]])
    lab = torch.zeros(8, 12, dtype=torch.long)
    lab[2:6, 3:8] = 1
    ctx = FrameContext(labels=lab, label_set=labels)
    img = torch.rand(8, 12, 3, generator=torch.Generator().manual_seed(0))
    f = t(img, ctx)
    assert f.shape == (4, 6, 16)
    out = t.slots(img, ctx)
    ref = torch.einsum("shw,sd->hwd", out.masks[0], out.codes.embedding[0])
    torch.testing.assert_close(f, ref)
    # a retrained GOCL at the same path changes the lift cache token
    tok = _teacher_token(t)
    with torch.no_grad():
        model.codebook.prototypes.add_(1.0)
    model.save(tmp_path / "g", meta={"teacher": base})
    t2 = build_teacher(TeacherSpec("object", "gocl", {"checkpoint": str(tmp_path / "g")}))
    assert _teacher_token(t2)["spec"] == tok["spec"] and _teacher_token(t2)["weights"] != tok["weights"]
    from chorus_ros.core.errors import CheckpointError
    with pytest.raises(CheckpointError, match="no GOCL model"):
        build_teacher(TeacherSpec("object", "gocl", {"checkpoint": str(tmp_path)}))
