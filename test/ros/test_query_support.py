"""query_node ranking: a fragment cannot outrank a whole object (pure function, no rclpy.init)."""
from types import SimpleNamespace

import numpy as np


def test_rank_objects_weighs_support():
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros.query_node import rank_objects
    rng = np.random.default_rng(0)
    q = rng.standard_normal(8).astype(np.float32)
    q /= np.linalg.norm(q)
    other = rng.standard_normal((4, 8)).astype(np.float32)
    other -= np.outer(other @ q, q)                          # orthogonal to the query
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    emb = np.stack([q,                                       # fragment: a perfect match, 15 Gaussians
                    0.6 * q + 0.8 * other[0],               # the whole chair: cosine 0.6, 900 Gaussians
                    other[1], other[2], other[3]]).astype(np.float32)
    counts = [15, 900, 700, 1200, 500]
    msg = SimpleNamespace(objects=[SimpleNamespace(gaussian_count=c) for c in counts])
    table = cv.ObjectTable(msg, emb, np.ones(5, bool))
    raw_idx, raw = rank_objects(table, q, 2, -1.0)
    assert raw_idx[0] == 0                                   # by cosine alone, the fragment wins
    from chorus_ros.ros.query_node import QueryNodeConfig
    half = QueryNodeConfig().support_half
    idx, sc = rank_objects(table, q, 2, -1.0, support_half=half)
    assert idx[0] == 1 and sc[0] > sc[1]
    # the node's ranking is the core's support score
    from chorus_ros.core.objects import SupportConfig, support_scores
    ref = support_scores(emb @ q, counts, SupportConfig(half=half))
    np.testing.assert_allclose(sc, ref[idx], rtol=1e-6)
