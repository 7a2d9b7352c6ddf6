"""The trained demo checkpoint on the built-in default scene, through the live nodes: class-name
queries return an object of that class, placed where the scene has one (the demo's claim).
Skipped until checkpoints/demo exists (`chorus-train --config config/train/demo.yaml`)."""
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if not (CHECKPOINT / "config.yaml").is_file():
        pytest.skip("no demo checkpoint (checkpoints/demo)")
    from chorus_ros.core.synthetic import generate_scene
    from chorus_ros.tools.demo import demo_scene_config
    from chorus_ros.tools.live_demo import QUERY_CLASSES, LiveDemoConfig, run_live_demo
    scene = generate_scene(demo_scene_config())
    lines = []
    cfg = LiveDemoConfig(steps=3, views_per_step=1, final_views=1, width=96, height=72,
                         queries=len(QUERY_CLASSES), top_k=3)
    res = run_live_demo(tmp_path_factory.mktemp("demo"), scene, CHECKPOINT, cfg, log=lines.append)
    return scene, res, lines


def test_class_name_queries_return_the_right_objects(demo_run):
    scene, res, lines = demo_run
    assert len(res.queries) >= 4, lines
    top1 = {q: r[0] for q, r in res.queries.items() if r}

    def inside_an_instance_of(name, c):
        return any(((np.array(i.aabb_min) - 0.2) <= c).all() and (c <= (np.array(i.aabb_max) + 0.2)).all()
                   for i in scene.instances.values() if i.class_name == name)
    right = [q for q, (_, label, _, c) in top1.items() if label == q and inside_an_instance_of(q, np.array(c))]
    assert len(right) >= len(res.queries) - 1, (top1, lines)


def test_live_demo_on_the_default_scene_has_no_node_errors(demo_run):
    _, _, lines = demo_run
    replay = next(line for line in lines if line.startswith("[replay]"))
    assert "errors: 0" in replay, lines
