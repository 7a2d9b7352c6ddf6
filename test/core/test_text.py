"""Text encoder: tiny random-init open_clip towers, determinism through saved weights, cache."""
import pytest
import torch

from chorus_ros.core.errors import CheckpointError, InvalidInputError, RegistryError
from chorus_ros.core.text import TextEncoderSpec, build_text_encoder

NAMES = ["wall", "floor", "ceiling", "chair", "table", "sofa", "bed", "lamp"]


@pytest.fixture(scope="module")
def enc():
    return build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}", seed=0))


def test_unit_norm_shape_dtype(enc):
    e = enc.encode(NAMES)
    assert e.shape == (len(NAMES), 64) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(NAMES)), atol=1e-5, rtol=0)


def test_identical_strings_identical_and_different_names_differ(enc):
    e = enc.encode(["chair", "table", "chair"])
    assert torch.equal(e[0], e[2])
    sims = enc.encode(NAMES) @ enc.encode(NAMES).T
    off = sims[~torch.eye(len(NAMES), dtype=torch.bool)]
    assert off.max() < 0.99  # every pair of class names is distinguishable


def test_cache_avoids_forward_and_is_lru():
    enc = build_text_encoder(TextEncoderSpec(tiny=True, seed=0, cache_size=2))
    enc.encode(["a", "b"])
    assert enc.n_forward_calls == 1
    enc.encode(["b", "a"])
    assert enc.n_forward_calls == 1
    enc.encode(["c"])  # evicts the least recently used ("b")
    assert enc.n_forward_calls == 2
    enc.encode(["a"])
    assert enc.n_forward_calls == 2
    enc.encode(["b"])
    assert enc.n_forward_calls == 3


def test_batch_and_single_agree(enc):
    single = torch.stack([build_text_encoder(enc.spec).encode([n])[0] for n in NAMES[:3]])
    torch.testing.assert_close(single, enc.encode(NAMES[:3]), atol=1e-5, rtol=0)


def test_saved_weights_reproduce_embeddings(tmp_path, enc):
    p = tmp_path / "text.safetensors"
    enc.save_weights(p)
    other = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}", seed=123))
    assert not torch.allclose(other.encode(NAMES), enc.encode(NAMES))
    loaded = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}", seed=123, weights=str(p)))
    assert torch.equal(loaded.encode(NAMES), enc.encode(NAMES))
    # same seed -> same random init, without weights
    same = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}", seed=0))
    assert torch.equal(same.encode(NAMES), enc.encode(NAMES))


def test_prompt_template_changes_embedding():
    a = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}")).encode(["chair"])
    b = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="a photo of a {}.")).encode(["chair"])
    assert not torch.allclose(a, b)


def test_weights_mismatch_names_keys(tmp_path, enc):
    p = tmp_path / "w.safetensors"
    enc.save_weights(p)
    with pytest.raises(CheckpointError, match="shape mismatch|missing"):
        build_text_encoder(TextEncoderSpec(tiny=True, model_cfg={"width": 32}, weights=str(p)))
    with pytest.raises(CheckpointError, match="not found"):
        build_text_encoder(TextEncoderSpec(tiny=True, weights=str(tmp_path / "nope.safetensors")))


def test_errors():
    with pytest.raises(RegistryError, match="open_clip"):
        build_text_encoder({"type": "bert"})
    with pytest.raises(InvalidInputError, match="bogus"):
        TextEncoderSpec.from_dict({"bogus": 1})
    enc = build_text_encoder(TextEncoderSpec(tiny=True))
    with pytest.raises(InvalidInputError):
        enc.encode([""])


def test_uncached_pretrained_tag_raises_without_download(monkeypatch, tmp_path):
    from chorus_ros.core.text import _pretrained_available
    if _pretrained_available("ViT-B-32", "laion2b_s34b_b79k")[0]:
        pytest.skip("these weights happen to be cached on this machine")
    with pytest.raises(CheckpointError, match="local checkpoint"):
        build_text_encoder(TextEncoderSpec(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    with pytest.raises(CheckpointError, match="hf-hub"):
        build_text_encoder(TextEncoderSpec(model="hf-hub:org/x"))


def test_tiny_tower_separates_synthetic_class_names():
    names = ["floor", "wall", "ceiling", "door", "window", "table", "chair", "sofa", "bed", "shelf",
             "cabinet", "lamp", "plant", "monitor", "rug", "picture", "book", "pillow"]
    e = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}", seed=0)).encode(names)
    off = (e @ e.T)[~torch.eye(len(names), dtype=torch.bool)]
    assert off.mean() < 0.5 and off.max() < 0.9
    raw = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}", seed=0,
                                             subtract_null=False)).encode(names)
    assert (raw @ raw.T)[~torch.eye(len(names), dtype=torch.bool)].mean() > off.mean()
