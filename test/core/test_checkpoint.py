"""Encoder checkpoints: round trip (weights, config, meta, identical outputs) and strict loading
with messages that name what is wrong."""
from __future__ import annotations

import os

import pytest
import torch
import yaml

from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig, HeadSpec
from chorus_ros.core.encoder.checkpoint import (
    CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, load_checkpoint_config, save_checkpoint,
)
from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays

TINY = dict(channels=(8, 8), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=8, head_hidden=8,
            embed_dim=8, heads=[HeadSpec("language", 6), HeadSpec("object", 3)])
META = {"label_set": {"names": ["wall", "floor", "chair"], "colors": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]},
        "teachers": [{"kind": "language", "type": "oracle_language", "options": {"noise": 0.1}}],
        "text_encoder": {"type": "open_clip", "model": "tiny"}, "training": {"steps": 2, "seed": 0}}


def _scene(n: int = 200) -> GaussianArrays:
    gen = torch.Generator().manual_seed(0)
    return GaussianArrays(torch.rand(n, 3, generator=gen) * 0.5, torch.randn(n, 1, 3, generator=gen),
                          torch.randn(n, generator=gen), torch.full((n, 3), -3.5), torch.randn(n, 4, generator=gen))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(1)
    model = ChorusEncoder(EncoderConfig(variant="pointcloud", voxel_size=0.04, **TINY)).eval()
    save_checkpoint(tmp_path / "ckpt", model, META)
    return tmp_path / "ckpt", model


def test_round_trip_gives_identical_outputs(saved):
    path, model = saved
    assert sorted(os.listdir(path)) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.meta == META
    assert not loaded.model.training
    g = _scene()
    with torch.no_grad():
        a, b = model(g), loaded.model(g)
    assert torch.equal(a.embedding, b.embedding)
    assert all(torch.equal(a.heads[k], b.heads[k]) for k in a.heads)
    doc = yaml.safe_load((path / CONFIG_FILE).read_text())
    assert doc["format"] == "chorus_encoder/1"
    assert doc["encoder"]["channels"] == [8, 8] and doc["encoder"]["variant"] == "pointcloud"
    assert doc["encoder"]["heads"] == [{"name": "language", "dim": 6}, {"name": "object", "dim": 3}]
    cfg, meta = load_checkpoint_config(path)
    assert cfg.voxel_size == 0.04 and meta["training"]["steps"] == 2


def test_missing_and_unexpected_keys_are_listed(saved):
    from safetensors.torch import load_file, save_file
    path, _ = saved
    state = load_file(str(path / WEIGHTS_FILE))
    del state["heads.object.weight"]
    state["heads.extra.weight"] = torch.zeros(2, 2)
    save_file(state, str(path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "missing keys ['heads.object.weight']" in msg
    assert "unexpected keys ['heads.extra.weight']" in msg


def test_shape_mismatch_is_named(saved):
    path, _ = saved
    doc = yaml.safe_load((path / CONFIG_FILE).read_text())
    doc["encoder"]["heads"][0]["dim"] = 7  # config says 7, weights hold 6
    (path / CONFIG_FILE).write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match=r"heads.language.weight: checkpoint \(6, 8\) vs model \(7, 8\)"):
        load_checkpoint(path)


def test_unknown_config_fields_are_refused(saved):
    path, _ = saved
    doc = yaml.safe_load((path / CONFIG_FILE).read_text())
    doc["encoder"]["attention_heads"] = 4
    (path / CONFIG_FILE).write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match=r"unknown fields \['attention_heads'\]"):
        load_checkpoint(path)
    doc["encoder"].pop("attention_heads")
    doc["optimizer"] = {}
    (path / CONFIG_FILE).write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match=r"unknown top-level keys \['optimizer'\]"):
        load_checkpoint(path)


def test_missing_files_and_bad_meta(tmp_path, saved):
    with pytest.raises(CheckpointError, match="no config.yaml"):
        load_checkpoint(tmp_path / "nowhere")
    path, model = saved
    os.remove(path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(path)
    with pytest.raises(InvalidInputError, match="meta"):
        save_checkpoint(tmp_path / "bad", model, {"x": object()})
    assert not (tmp_path / "bad").exists()


def _ingredient(path, seed, meta=META, side=b"text-weights"):
    torch.manual_seed(seed)
    model = ChorusEncoder(EncoderConfig(variant="pointcloud", voxel_size=0.04, **TINY)).eval()
    save_checkpoint(path, model, {**meta, "training": {"steps": 2, "seed": seed}})
    (path / "text_encoder.safetensors").write_bytes(side)
    return model


def test_average_checkpoints_is_the_weighted_mean_and_records_its_ingredients(tmp_path):
    from chorus_ros.core.encoder.checkpoint import average_checkpoints
    from chorus_ros.tools.average import main
    a = _ingredient(tmp_path / "a", 1)
    b = _ingredient(tmp_path / "b", 2)
    ck = average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "avg", weights=[3, 1])
    sa, sb, got = a.state_dict(), b.state_dict(), ck.model.state_dict()
    for k, v in got.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * sa[k] + 0.25 * sb[k])
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)       # the ingredients really differ
    assert ck.meta["training"]["average"] == {"sources": [str(tmp_path / "a"), str(tmp_path / "b")],
                                              "weights": [0.75, 0.25]}
    assert [t["seed"] for t in ck.meta["training"]["ingredients"]] == [1, 2]
    assert ck.meta["label_set"] == META["label_set"]
    assert (tmp_path / "avg" / "text_encoder.safetensors").read_bytes() == b"text-weights"
    with torch.no_grad():                                        # it loads and runs like any checkpoint
        out = load_checkpoint(tmp_path / "avg").model(_scene())
    assert all(bool(torch.isfinite(v).all()) for v in out.heads.values())
    # the CLI: uniform weights by default
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cli")]) == 0
    assert load_checkpoint(tmp_path / "cli").meta["training"]["average"]["weights"] == [0.5, 0.5]


def test_average_checkpoints_refuses_what_does_not_match(tmp_path, capsys):
    from chorus_ros.core.encoder.checkpoint import average_checkpoints
    from chorus_ros.tools.average import main
    _ingredient(tmp_path / "a", 1)
    _ingredient(tmp_path / "b", 2)
    _ingredient(tmp_path / "labels", 3, meta={**META, "label_set": {"names": ["wall"], "colors": [[1, 2, 3]]}})
    _ingredient(tmp_path / "text", 4, side=b"other text weights")
    torch.manual_seed(5)
    save_checkpoint(tmp_path / "arch", ChorusEncoder(EncoderConfig(variant="pointcloud", voxel_size=0.08, **TINY)), META)
    (tmp_path / "arch" / "text_encoder.safetensors").write_bytes(b"text-weights")
    cases = [([tmp_path / "a"], None, InvalidInputError, "at least two"),
             ([tmp_path / "a", tmp_path / "b"], [1, 0], InvalidInputError, "positive weight"),
             ([tmp_path / "a", tmp_path / "b"], [1], InvalidInputError, "positive weight"),
             ([tmp_path / "a", tmp_path / "labels"], None, CheckpointError, r"in meta \['label_set'\]"),
             ([tmp_path / "a", tmp_path / "text"], None, CheckpointError, "in text_encoder.safetensors"),
             ([tmp_path / "a", tmp_path / "arch"], None, CheckpointError, "another encoder config"),
             ([tmp_path / "a", tmp_path / "missing"], None, CheckpointError, "no config.yaml")]
    for srcs, w, err, msg in cases:
        with pytest.raises(err, match=msg):
            average_checkpoints(srcs, tmp_path / "out", w)
    with pytest.raises(InvalidInputError, match="one of the sources"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "a")
    assert not (tmp_path / "out").exists()                       # nothing written on a refusal
    assert main([str(tmp_path / "a"), str(tmp_path / "text"), "--out", str(tmp_path / "out")]) == 2
    assert "chorus-average: error:" in capsys.readouterr().err
