"""Open-vocabulary semantic decoding with hand-built embeddings and exact expected values."""
import math

import pytest
import torch

from chorus_ros.core.decode.semantic import SemanticConfig, SemanticDecoder
from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.labels import UNLABELED, LabelSet
from chorus_ros.core.text import TextEncoderSpec, build_text_encoder


class FakeText:
    """Axis-aligned text embeddings per name; counts calls and encoded strings."""

    AXES = {"a": 0, "b": 1, "c": 2}

    def __init__(self):
        self.dim = 3
        self.calls = 0
        self.seen = []

    def encode(self, names):
        self.calls += 1
        self.seen += list(names)
        return torch.eye(3)[[self.AXES[n] for n in names]]


def test_scores_exact():
    dec = SemanticDecoder(FakeText(), ["a", "b"], SemanticConfig(temperature=1.0))
    feats = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [1.0, 1.0, 0]])
    p = dec.scores(feats)
    e = 1 / (1 + math.exp(-1))
    torch.testing.assert_close(p, torch.tensor([[e, 1 - e], [1 - e, e], [0.5, 0.5]]))
    out = dec.decode(feats)
    assert out.label.tolist()[:2] == [0, 1]
    torch.testing.assert_close(out.confidence[:2], torch.tensor([e, e]))


def test_temperature_sharpens_and_min_confidence():
    feats = torch.tensor([[1.0, 0.2, 0]])
    soft = SemanticDecoder(FakeText(), ["a", "b"], SemanticConfig(temperature=1.0)).decode(feats)
    sharp = SemanticDecoder(FakeText(), ["a", "b"], SemanticConfig(temperature=0.01)).decode(feats)
    assert sharp.confidence[0] > 0.99 > soft.confidence[0]
    gated = SemanticDecoder(FakeText(), ["a", "b"], SemanticConfig(temperature=1.0, min_confidence=0.9))
    assert gated.decode(feats).label.tolist() == [UNLABELED]


def test_label_set_change_without_reencoding():
    text = FakeText()
    feats = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    before = feats.clone()
    dec = SemanticDecoder(text, LabelSet(["a", "b"], [[255, 0, 0], [0, 255, 0]]))
    assert dec.decode(feats).label.tolist() == [0, 1, 0]  # 'c' maps to a tie -> first
    dec.set_labels(["c", "b", "a"])
    assert dec.decode(feats).label.tolist() == [2, 1, 0]
    assert torch.equal(feats, before)           # the features were not touched
    assert text.seen == ["a", "b", "c", "b", "a"]  # only class names were encoded
    assert dec.labels.names == ["c", "b", "a"] and dec.labels.colors.shape == (3, 3)


def test_decode_view_renormalises_by_alpha_and_gates():
    dec = SemanticDecoder(FakeText(), ["a", "b"], SemanticConfig(min_alpha=0.5, min_confidence=0.6))
    # pixel 0: alpha 0.8, composited probs [0.6, 0.2] -> [0.75, 0.25] -> label 0, conf 0.75
    # pixel 1: alpha 0.4 -> unlabeled; pixel 2: alpha 1, [0.45, 0.55] -> conf 0.55 < 0.6 -> unlabeled
    # pixel 3: alpha 1, [0.1, 0.9] -> label 1
    s = torch.tensor([[[0.6, 0.2], [0.3, 0.1], [0.45, 0.55], [0.1, 0.9]]])
    a = torch.tensor([[0.8, 0.4, 1.0, 1.0]])
    v = dec.decode_view(s, a)
    assert v.labels.tolist() == [[0, UNLABELED, UNLABELED, 1]]
    torch.testing.assert_close(v.confidence, torch.tensor([[0.75, 0.0, 0.0, 0.9]]))


def test_real_tiny_text_encoder_roundtrip():
    enc = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}"))
    names = ["wall", "floor", "chair", "table"]
    dec = SemanticDecoder(enc, names, SemanticConfig(temperature=0.05))
    feats = enc.encode(names) + 0.01 * torch.randn(4, enc.dim, generator=torch.Generator().manual_seed(0))
    assert dec.decode(feats).label.tolist() == [0, 1, 2, 3]
    calls = enc.n_forward_calls
    dec.set_labels(["table", "chair"])
    assert dec.decode(feats[2:]).label.tolist() == [1, 0]
    assert enc.n_forward_calls == calls  # cached names: no network run at all


def test_errors():
    dec = SemanticDecoder(FakeText(), ["a"])
    with pytest.raises(InvalidInputError, match="language features"):
        dec.scores(torch.zeros(2, 5))
    with pytest.raises(InvalidInputError, match="temperature"):
        SemanticDecoder(FakeText(), ["a"], SemanticConfig(temperature=0))
    with pytest.raises(InvalidInputError):
        dec.set_labels([])


def test_set_labels_with_given_embeddings():
    text = FakeText()
    dec = SemanticDecoder(text, ["a", "b"])
    dec.set_labels(["x", "y"], embeddings=torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
    assert text.seen == ["a", "b"]
    assert dec.decode(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])).label.tolist() == [1, 0]
    with pytest.raises(InvalidInputError):
        dec.set_labels(["x"], embeddings=torch.zeros(2, 3))
