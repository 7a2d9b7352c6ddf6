"""The height prior (chorus_ros.core.decode.height): floor estimate, counting, the decoder's term
against a slow reference, files, and the pipeline's rescoring when the floor moves."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from chorus_ros.core.decode.height import HEIGHT_PRIOR_FILE, HeightPrior, estimate_floor, fit_height_prior
from chorus_ros.core.decode.semantic import SemanticConfig, SemanticDecoder
from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.pipeline import ATTR_PROBS, feature_attr
from test.core.test_pipeline import NAMES, base_scene, make_pipeline, text  # noqa: F401  (fixture)

EDGES = np.arange(-0.5, 4.0001, 0.1)


def _room(rng, floor=0.3, n=4000):
    """Heights of a room: a floor layer, walls up to 2.5 m above it, a few floaters far below."""
    fl = floor + rng.normal(0, 0.005, n)
    walls = floor + rng.uniform(0, 2.5, n)
    floaters = floor - rng.uniform(0.5, 1.5, 20)
    return np.concatenate([fl, walls, floaters])


def test_floor_skips_floaters_and_follows_the_room():
    rng = np.random.default_rng(0)
    for floor in (-1.2, 0.0, 0.3, 2.0):
        est = estimate_floor(_room(rng, floor))
        assert abs(est.z - floor) <= 0.05, (floor, est)
        assert est.fraction > 0.2
    z = _room(rng, 0.0)
    z[-20:] = -0.8 + rng.normal(0, 0.005, 20)   # 20 floaters in one layer 80 cm below the floor
    w = np.ones_like(z)
    assert abs(estimate_floor(z, w).z) <= 0.05   # under 2 % of the mass: passed over
    w[-20:] = 20.0                               # a layer with 5 % of the mass (a lower storey) is the floor
    assert abs(estimate_floor(z, w).z + 0.8) <= 0.05
    assert estimate_floor(np.zeros(0)) is None
    assert estimate_floor(np.ones(3), np.zeros(3)) is None
    with pytest.raises(InvalidInputError, match="weights"):
        estimate_floor(np.ones(3), np.ones(2))


CLASSES = ["floor", "ceiling", "wall", "lamp"]


def _maps(rng, n_maps=6):
    """Rooms of floor (at 0), ceiling (2.4-2.6 m) and wall (0-2.6 m) Gaussians; no lamp."""
    for _ in range(n_maps):
        floor = rng.uniform(-0.5, 0.5)
        z = floor + np.concatenate([rng.normal(0, 0.01, 500), rng.uniform(2.4, 2.6, 300), rng.uniform(0, 2.6, 800)])
        lab = np.concatenate([np.zeros(500, int), np.full(300, 1), np.full(800, 2)])
        yield z, lab, None


def _bin(h):
    return int(np.searchsorted(EDGES, h, side="right") - 1)


def test_fit_counts_heights_per_class():
    prior = fit_height_prior(_maps(np.random.default_rng(1)), CLASSES, edges=EDGES, blur_m=0.0)
    assert prior.llr[0, _bin(0.0)] > 0 > prior.llr[1, _bin(0.0)]
    assert prior.llr[1, _bin(2.5)] > 0 > prior.llr[0, _bin(2.5)]
    assert prior.llr[2, _bin(1.2)] > 0.5 > -1.0 > prior.llr[0, _bin(1.2)]   # mid-height: only walls
    # heights no map reached and a class no map contains carry no evidence
    assert np.all(prior.llr[:, _bin(3.5)] == 0) and np.all(prior.llr[:, _bin(-0.4)] == 0)
    assert np.all(prior.llr[3] == 0)
    # the penalty of a height a class never reached is bounded by the pseudo-count
    assert prior.llr[0, _bin(2.5)] == pytest.approx(np.log(1.0 / (6 + 1.0)), abs=1e-9)
    assert prior.provenance["maps"] == 6 and prior.provenance["maps_per_class"]["lamp"] == 0
    # the blur spreads a class to nearby heights: the floor is less unlikely 20 cm up
    blurred = fit_height_prior(_maps(np.random.default_rng(1)), CLASSES, edges=EDGES, blur_m=0.2)
    assert blurred.llr[0, _bin(0.25)] > prior.llr[0, _bin(0.25)] + 1.0
    with pytest.raises(InvalidInputError, match="no map"):
        fit_height_prior([], ["floor"])


def _random_prior(names, seed=0):
    rng = np.random.default_rng(seed)
    return HeightPrior(EDGES, list(names), rng.normal(0, 2, (len(names), EDGES.size - 1)))


def test_log_ratio_matches_a_slow_reference():
    prior = _random_prior(["floor", "wall", "chair"])
    names = ["chair", "sky", "floor"]                       # reordered, one unknown name
    h = torch.tensor([-0.7, -0.5, -0.45, 0.0, 0.05, 1.234, 3.99, 4.0, 9.0], dtype=torch.float32)
    fast = prior.log_ratio(h, names)
    slow = torch.zeros(len(h), len(names))
    for i, x in enumerate(h.tolist()):
        for k, n in enumerate(names):
            if n not in prior.names or not EDGES[0] <= x < EDGES[-1]:
                continue
            b = max(j for j in range(EDGES.size - 1) if EDGES[j] <= x)
            slow[i, k] = prior.llr[prior.names.index(n), b]
    torch.testing.assert_close(fast, slow)


def test_files_round_trip_and_bad_files_are_named(tmp_path):
    prior = _random_prior(["floor", "wall"])
    prior.provenance = {"synthetic_seeds": [0, 1]}
    p = prior.save(tmp_path)
    assert p == tmp_path / HEIGHT_PRIOR_FILE
    back = HeightPrior.load(tmp_path)
    assert back.names == prior.names and back.provenance == prior.provenance
    np.testing.assert_allclose(back.llr, prior.llr, atol=1e-5)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InvalidInputError, match="bad.json"):
        HeightPrior.load(bad)
    doc = json.loads(p.read_text())
    doc["llr"] = doc["llr"][:1]
    bad.write_text(json.dumps(doc))
    with pytest.raises(InvalidInputError, match="classes, bins"):
        HeightPrior.load(bad)


def test_decoder_adds_the_weighted_term(text):  # noqa: F811
    feats = torch.nn.functional.normalize(torch.randn(50, text.dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    h = torch.linspace(-0.2, 3.0, 50)
    plain = SemanticDecoder(text, NAMES, SemanticConfig())
    prior = _random_prior(["floor", "chair", "table"])      # no 'lamp'
    for w in (0.0, 0.5):
        dec = SemanticDecoder(text, NAMES, SemanticConfig(height_prior_weight=w))
        dec.set_height_prior(prior)
        expect = plain.logits(feats) + w * prior.log_ratio(h, NAMES)
        torch.testing.assert_close(dec.logits(feats, h), expect)
        torch.testing.assert_close(dec.decode(feats, h).probs, torch.softmax(expect, -1))
        assert dec.uses_height == (w > 0)
    dec.set_labels(["lamp", "table"])                       # open vocabulary: the table follows the names
    torch.testing.assert_close(dec.logits(feats, h) - dec.logits(feats), 0.5 * prior.log_ratio(h, ["lamp", "table"]))
    assert torch.all(prior.log_ratio(h, ["lamp", "table"])[:, 0] == 0)
    with pytest.raises(InvalidInputError, match="heights"):
        dec.logits(feats, h[:3])
    with pytest.raises(InvalidInputError, match="height_prior_weight"):
        SemanticConfig(height_prior_weight=-1.0).validate()


def _expected_probs(pipe):
    g = pipe.map.arrays()
    fl = estimate_floor(g.means[:, 2], g.opacity)
    h = (g.means[:, 2].double() - fl.z).float()
    return pipe.semantic.decode(pipe.map.attribute(feature_attr("language")), heights=h).probs, fl.z


def test_pipeline_rescores_everything_when_the_floor_moves(text):  # noqa: F811
    prior = _random_prior(NAMES, seed=4)
    pipe = make_pipeline(text)
    pipe.config.semantic.height_prior_weight = 1.0
    pipe.semantic.set_height_prior(prior)
    scene = base_scene()
    pipe.apply_update(scene, None, full=True)
    pipe.encode()
    probs, floor = _expected_probs(pipe)
    assert pipe.floor_z == pytest.approx(floor) and abs(floor) < 0.05
    torch.testing.assert_close(pipe.map.attribute(ATTR_PROBS), probs)
    plain = make_pipeline(text)
    plain.apply_update(scene, None, full=True)
    plain.encode()
    assert not torch.allclose(plain.map.attribute(ATTR_PROBS), probs)   # the prior changes the scores

    # a local edit that leaves the floor: only the re-encoded Gaussians are re-scored
    n = len(pipe.map)
    chair = scene.index((scene.extras["label"] == 1).nonzero().squeeze(1))
    pipe.apply_update(dataclasses.replace(chair, means=chair.means + torch.tensor([0.0, 0.0, 0.05])), None)
    s = pipe.encode()
    assert s.updated_gaussians < n
    torch.testing.assert_close(pipe.map.attribute(ATTR_PROBS), _expected_probs(pipe)[0])

    # the whole map lifted by 1 m: the floor moves, every Gaussian is re-scored and regrouped,
    # and the scores equal a fresh pipeline's on the lifted map
    up = pipe.map.arrays()
    pipe.apply_update(dataclasses.replace(up, means=up.means + torch.tensor([0.0, 0.0, 1.0])), None)
    s = pipe.encode()
    assert s.updated_gaussians == n and s.regrouped_gaussians == n
    assert pipe.floor_z == pytest.approx(floor + 1.0, abs=0.02)
    fresh = make_pipeline(text)
    fresh.config.semantic.height_prior_weight = 1.0
    fresh.semantic.set_height_prior(prior)
    fresh.apply_update(pipe.map.arrays(), None, full=True)
    fresh.encode()
    torch.testing.assert_close(pipe.map.attribute(ATTR_PROBS), fresh.map.attribute(ATTR_PROBS))


def test_shipped_demo_prior_counts_the_training_rooms(text):  # noqa: F811
    """checkpoints/demo/height_prior.json is `chorus-height-prior --checkpoint checkpoints/demo
    --seeds 0-47`: the generator rooms of the demo recipe (never the held-out or suite seeds), over
    the checkpoint's label set; the pipeline loads it, and uses it only with a weight > 0."""
    from pathlib import Path

    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.train.config import load_train_config
    ckpt = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"
    if not (ckpt / HEIGHT_PRIOR_FILE).exists():
        pytest.skip("checkpoints/demo has no height prior")
    prior = HeightPrior.load(ckpt)
    seeds = load_train_config("config/train/demo_boundary.yaml").to_dict()["data"]["train_seeds"]
    assert prior.provenance["synthetic_seeds"] == list(seeds) and not prior.provenance["datasets"]
    assert max(seeds) < 1000
    pipe = PerceptionPipeline.from_checkpoint(ckpt, PipelineConfig())
    assert prior.names == pipe.labels.names
    assert pipe.semantic.height_prior is not None and not pipe.semantic.uses_height   # off by default
    # floors are likely at 0 m and unlikely at 1.5 m; ceilings the other way round
    assert prior.llr[0, _bin(0.0)] > 1 > -1 > prior.llr[0, _bin(1.5)]
    assert prior.llr[2, _bin(2.7)] > 1 > -1 > prior.llr[2, _bin(0.0)]


def test_cli_counts_rooms_and_names_errors(tmp_path, capsys):
    from pathlib import Path

    from chorus_ros.tools.height_prior import main
    ckpt = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"
    if not (ckpt / "config.yaml").exists():
        pytest.skip("checkpoints/demo not present")
    out = tmp_path / "prior.json"
    assert main(["--checkpoint", str(ckpt), "--seeds", "0-1", "--out", str(out)]) == 0
    prior = HeightPrior.load(out)
    assert prior.provenance["synthetic_seeds"] == [0, 1] and prior.provenance["maps"] == 2
    assert main(["--checkpoint", str(ckpt)]) == 2
    assert "nothing to count" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing"), "--seeds", "0"]) == 2
    assert "chorus-height-prior: error:" in capsys.readouterr().err
