"""LabelSet: construction checks, YAML round trip, colourising, lookups, shipped configs."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from chorus_ros.core.errors import InvalidInputError, RegistryError
from chorus_ros.core.labels import UNLABELED, LabelSet, colorize_instances, instance_palette

REPO = Path(__file__).resolve().parents[2]


def _small() -> LabelSet:
    return LabelSet(["floor", "chair", "table"], np.array([[10, 20, 30], [200, 0, 0], [0, 255, 7]]),
                    np.array([True, False, False]), "tiny")


def test_unlabeled_constant():
    assert UNLABELED == LabelSet.UNLABELED == 65535


def test_colorize_exact_values_and_unlabeled_black():
    ls = _small()
    img = np.array([[0, 1], [2, UNLABELED]], dtype=np.uint16)
    rgb = ls.colorize(img)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb, [[[10, 20, 30], [200, 0, 0]], [[0, 255, 7], [0, 0, 0]]])
    # torch int64 input gives the same answer
    np.testing.assert_array_equal(ls.colorize(torch.from_numpy(img.astype(np.int64))), rgb)


@pytest.mark.parametrize("bad", [3, -1, 65534])
def test_colorize_rejects_unknown_ids(bad):
    with pytest.raises(InvalidInputError, match=str(bad)):
        _small().colorize(np.array([[0, bad]]))


def test_colorize_rejects_float_images():
    with pytest.raises(InvalidInputError, match="integers"):
        _small().colorize(np.zeros((2, 2), np.float32))


def test_index_of_and_unknown_name_lists_known():
    ls = _small()
    assert ls.index_of("table") == 2 and len(ls) == ls.num_classes == 3
    with pytest.raises(RegistryError, match="floor, chair, table"):
        ls.index_of("sofa")
    assert ls.is_stuff(0) and not ls.is_stuff(1)


def test_yaml_round_trip(tmp_path):
    ls = _small()
    ls.to_yaml(tmp_path / "l.yaml")
    back = LabelSet.from_yaml(tmp_path / "l.yaml")
    assert back == ls
    assert back.colors.dtype == np.uint8
    d = yaml.safe_load((tmp_path / "l.yaml").read_text())
    assert d["unlabeled_id"] == 65535 and d["classes"][0] == {"name": "floor", "color": [10, 20, 30], "stuff": True}


@pytest.mark.parametrize("names,colors,match", [
    ([], np.zeros((0, 3)), "at least one"),
    (["a", "a"], np.zeros((2, 3)), "duplicate"),
    (["a", "b"], np.zeros((3, 3)), r"\[2, 3\]"),
    (["a"], np.array([[0, 0, 300]]), "0, 255"),
    (["a", ""], np.zeros((2, 3)), "non-empty"),
])
def test_constructor_validation(names, colors, match):
    with pytest.raises(InvalidInputError, match=match):
        LabelSet(names, colors)


def test_from_dict_errors_name_the_entry():
    with pytest.raises(InvalidInputError, match="entry 1"):
        LabelSet.from_dict({"classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "b"}]})
    with pytest.raises(InvalidInputError, match="'b' colour"):
        LabelSet.from_dict({"classes": [{"name": "b", "color": [1, 2]}]})
    with pytest.raises(InvalidInputError, match="unlabeled_id"):
        LabelSet.from_dict({"unlabeled_id": 255, "classes": [{"name": "b", "color": [1, 2, 3]}]})
    with pytest.raises(InvalidInputError, match="not found"):
        LabelSet.from_yaml("/nonexistent/labels.yaml")


def test_shipped_synthetic_yaml_matches_generator_classes():
    from chorus_ros.core.synthetic.classes import CLASSES, synthetic_label_set

    ls = LabelSet.from_yaml(REPO / "config/labels/synthetic.yaml")
    assert ls == synthetic_label_set()
    assert ls.names == [c.name for c in CLASSES]
    assert [ls.names[i] for i in np.flatnonzero(ls.stuff)] == ["floor", "wall", "ceiling"]
    assert len(set(map(tuple, ls.colors.tolist()))) == len(ls)  # distinct display colours


def test_shipped_indoor_yaml_loads():
    ls = LabelSet.from_yaml(REPO / "config/labels/indoor.yaml")
    assert ls.name == "indoor" and ls.names[:3] == ["wall", "floor", "ceiling"]
    assert len(set(map(tuple, ls.colors.tolist()))) == len(ls)


def test_instance_palette_deterministic_distinct_and_black_for_unlabeled():
    ids = np.arange(1, 41)
    pal = instance_palette(ids)
    assert pal.shape == (40, 3) and pal.dtype == np.uint8
    np.testing.assert_array_equal(pal, instance_palette(ids))
    assert len({tuple(c) for c in pal.tolist()}) == 40
    assert np.all(pal.max(1) >= 150)  # bright enough to tell from the black "unlabeled"
    img = np.array([[UNLABELED, 3]])
    out = colorize_instances(img)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], pal[2])
