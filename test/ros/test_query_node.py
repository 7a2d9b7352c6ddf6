"""query_node over DDS: ranking by text embedding, the map sequence it answered from, input
errors as service error fields, and answers while the perception side is busy."""
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros

CLASSES = ["floor", "chair", "table", "lamp", "sofa"]


@pytest.fixture(scope="module")
def text_encoder():
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    return build_text_encoder(TextEncoderSpec(tiny=True, seed=0))


@pytest.fixture(scope="module")
def query(harness, text_encoder):
    from chorus_ros.ros.query_node import QueryNode
    node = harness.add(QueryNode("query_node", text_encoder=text_encoder, context=harness.context,
                                 cli_args=["--ros-args", "-p", "max_text_length:=50"]))
    yield node
    harness.remove(node)


def _object_map(text_encoder, seq, rng):
    from chorus_ros.ros import conversions as cv
    emb = text_encoder.encode(CLASSES).numpy()
    recs = []
    for i, name in enumerate(CLASSES):
        e = emb[i] + rng.normal(0, 0.02, emb.shape[1]).astype(np.float32)
        recs.append(SimpleNamespace(instance_id=10 + i, label_id=i, label=name, score=0.9,
                                    centroid=np.array([i, 0, 0.5]), bbox_min=np.zeros(3),
                                    bbox_max=np.ones(3) + i, gaussian_count=100 + i, code_id=2 * i,
                                    confidence=0.5 + 0.1 * i, embedding=e / np.linalg.norm(e)))
    return cv.objects_to_msg(recs, cv.header(7, "map"), map_id="m", map_sequence=seq, map_version=3)


def _ask(harness, text, top_k=0, min_score=-1.0, target_frame=""):
    from chorus_ros.srv import QueryObjects
    return harness.call(QueryObjects, "query_node/query",
                        QueryObjects.Request(text=text, top_k=top_k, min_score=min_score,
                                             target_frame=target_frame))


def test_query_before_any_map_is_an_error_field(harness, query):
    res = _ask(harness, "chair")
    assert not res.success and "no object map received yet" in res.message and not res.objects


def test_class_name_queries_rank_the_matching_object_first(harness, query, text_encoder, wait_until):
    from chorus_ros.msg import ObjectMap
    from chorus_ros.ros import qos
    pub = harness.publisher(ObjectMap, "objects", qos.latched())
    pub.publish(_object_map(text_encoder, 12, np.random.default_rng(0)))
    wait_until(lambda: query.table is not None, 10, "the object map")
    for i, name in enumerate(CLASSES):
        res = _ask(harness, name, top_k=2)
        assert res.success, res.message
        assert [o.instance_id for o in res.objects][0] == 10 + i and len(res.objects) == 2
        assert res.objects[0].label == name and res.map_sequence == 12 and res.frame_id == "map"
        assert res.scores[0] >= res.scores[1] and res.objects[0].score == pytest.approx(res.scores[0])
        # a hit is the whole object's record: its box, support, code id and confidence
        top = res.objects[0]
        assert (top.bbox_max.x, top.gaussian_count, top.code_id) == (1.0 + i, 100 + i, 2 * i)
        assert top.confidence == pytest.approx(0.5 + 0.1 * i)
        q = text_encoder.encode([name])[0].numpy()
        # scores are cosines weighted by the objects' support (Gaussian counts vs the median)
        from chorus_ros.core.objects import SupportConfig, support_scores
        counts = [o.gaussian_count for o in query.table.msg.objects]
        expect = support_scores(query.table.embeddings @ q, counts,
                                SupportConfig(half=query.config.support_half))[i]
        assert res.scores[0] == pytest.approx(float(expect), abs=1e-5)
    default = _ask(harness, "lamp")                       # top_k = 0 -> default_top_k (5)
    assert len(default.objects) == 5
    none = _ask(harness, "lamp", min_score=1.01)          # nothing scores above 1
    assert none.success and not none.objects
    # a newer map replaces the old one; answers report its sequence
    pub.publish(_object_map(text_encoder, 13, np.random.default_rng(1)))
    wait_until(lambda: query.table.msg.map_sequence == 13, 10, "the second object map")
    assert _ask(harness, "sofa").map_sequence == 13


@pytest.mark.parametrize("text, error", [("", "query text is empty"), ("   ", "query text is empty"),
                                         ("x" * 51, "has 51 characters; the limit is 50"),
                                         ("chair " * 2000, "the limit is 50")])
def test_empty_and_huge_texts_get_an_error_field(harness, query, text, error):
    res = _ask(harness, text)
    assert not res.success and error in res.message and not res.objects
    assert error in query.errors.last_error


def test_unknown_target_frame_is_an_error_field(harness, query):
    res = _ask(harness, "chair", target_frame="base_link")
    assert not res.success and "target_frame 'base_link'" in res.message
    assert _ask(harness, "chair", target_frame="map").success


def test_embed_service_returns_the_text_encoders_unit_embeddings(harness, query, text_encoder):
    from chorus_ros.srv import EmbedText
    res = harness.call(EmbedText, "query_node/embed", EmbedText.Request(texts=["chair", "red lamp"]))
    assert res.success and res.dim == text_encoder.dim
    emb = np.asarray(res.embeddings, np.float32).reshape(2, res.dim)
    np.testing.assert_array_equal(emb, text_encoder.encode(["chair", "red lamp"]).numpy())
    bad = harness.call(EmbedText, "query_node/embed", EmbedText.Request(texts=["ok", ""]))
    assert not bad.success and "empty" in bad.message and len(bad.embeddings) == 0
    assert not harness.call(EmbedText, "query_node/embed", EmbedText.Request(texts=[])).success


def test_relative_ranking_uses_the_label_table_as_negatives(harness, query, text_encoder, wait_until):
    """An object whose embedding is close to 'wall' but happens to have a high raw cosine with
    'sofa' loses to the sofa under 'relative' ranking (the query's softmax probability against
    the other class names)."""
    from rclpy.parameter import Parameter

    from chorus_ros.core.labels import LabelSet
    from chorus_ros.msg import LabelInfo
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros import qos
    from chorus_ros.ros.query_node import rank_objects
    names = ["wall", "sofa", "floor"]
    t = text_encoder.encode(names).numpy()
    wallish = t[0] + 0.9 * t[1]                 # mostly wall, but a large raw cosine with 'sofa'
    sofaish = t[1] + 0.25 * t[2]
    emb = np.stack([wallish / np.linalg.norm(wallish), sofaish / np.linalg.norm(sofaish)]).astype(np.float32)
    table = cv.ObjectTable(None, emb, np.ones(2, bool))
    cos_idx, _ = rank_objects(table, t[1], 2, -1.0)
    rel_idx, rel = rank_objects(table, t[1], 2, -1.0, negatives=t[[0, 2]], temperature=0.05)
    assert rel_idx[0] == 1 and 0 <= rel[1] < rel[0] <= 1
    if cos_idx[0] == 0:                          # the case relative ranking exists for
        assert rel_idx[0] != cos_idx[0]
    # over DDS: 'relative' needs the label table; a bad ranking value is refused
    assert not query.set_parameters([Parameter("ranking", value="magic")])[0].successful
    assert query.set_parameters([Parameter("ranking", value="relative")])[0].successful
    try:
        pub = harness.publisher(LabelInfo, "semantic/label_info", qos.latched())
        pub.publish(cv.labelset_to_msg(LabelSet(CLASSES, np.zeros((len(CLASSES), 3), int)), 0))
        wait_until(lambda: query._label_names == CLASSES, 10, "the label table")
        res = _ask(harness, "lamp", top_k=5)
        assert res.success and res.objects[0].label == "lamp"
        assert all(0.0 <= s <= 1.0 for s in res.scores) and list(res.scores) == sorted(res.scores, reverse=True)
    finally:
        query.set_parameters([Parameter("ranking", value="cosine")])
