"""``chorus-eval --bag``: a scene bag of a tiny folder played into the nodes and scored; the offline
path (``--dataset``) on the same folder must agree within 0.5 mIoU (with the demo checkpoint, so
that the labels are not trivially one class as with a random-initialised one); ROS measurements in
the JSON; malformed inputs get one clear error."""
import json
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def scene_bag(tiny_scene_folder, tmp_path_factory):
    from chorus_ros.core.datasets import open_scene
    from chorus_ros.ros.bag import SceneBagConfig, make_scene_bag
    return make_scene_bag(tmp_path_factory.mktemp("bags") / "room", open_scene(tiny_scene_folder),
                          SceneBagConfig(pieces=3)).path


@pytest.mark.skipif(not (DEMO / "config.yaml").is_file(), reason="checkpoints/demo not built")
def test_through_the_nodes_agrees_with_offline(scene_bag, tiny_scene_folder):
    from chorus_ros.core.datasets import open_scene
    from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.ros.bag_eval import BagEvalConfig, evaluate_bag

    lines = []
    res = evaluate_bag(scene_bag, BagEvalConfig(checkpoint=str(DEMO), timeout_s=120, progress=False),
                       log=lines.append)
    off = evaluate_scenes(lambda: PerceptionPipeline.from_checkpoint(DEMO, PipelineConfig()),
                          [open_scene(tiny_scene_folder)], SceneEvalConfig(), progress=False)
    node, ref = res.dataset.total, off.total
    assert ref.semantic.miou > 0.05 and ref.semantic.macc > 0.1    # not a trivial agreement
    assert abs(node.semantic.miou - ref.semantic.miou) <= 0.005, (node.semantic.miou, ref.semantic.miou)
    assert abs(node.semantic.miou_present - ref.semantic.miou_present) <= 0.005
    assert node.n_views == ref.n_views == 4 and node.n_gt_instances == ref.n_gt_instances
    assert node.min_alpha == ref.min_alpha
    r = res.ros
    assert r.replay == "lock-step" and r.views_sent == r.views_received == 4 and r.dropped_views == 0
    assert len(r.latency_s) == 4 and all(t > 0 for t in r.latency_s)
    assert len(r.encoder_lag_s) == 3 and all(t > 0 for t in r.encoder_lag_s)   # one per map piece
    assert r.node_encode_s > 0 and r.peak_rss_mb > 50 and not r.node_errors
    assert node.encode_s == r.node_encode_s
    assert "[replay] lock-step: 4 of 4 views came back" in "\n".join(lines)


def test_chorus_eval_bag_cli(scene_bag, random_checkpoint, tmp_path, capsys):
    from chorus_ros.core.metrics.scenes import JSON_KEYS
    from chorus_ros.tools.evaluate import main
    j, md = tmp_path / "r.json", tmp_path / "report.md"
    assert main(["--bag", str(scene_bag), "--checkpoint", str(random_checkpoint), "--rate", "50", "--json", str(j),
                 "--out", str(md), "--plots", str(tmp_path / "plots"), "--no-progress"]) == 0
    out = json.loads(j.read_text())
    assert all(k in out for k in JSON_KEYS) and out["mIoU"] is not None
    ros = out["ros"]
    assert ros["replay"] == "rate 50" and ros["views_sent"] == 4
    assert ros["views_received"] + ros["dropped_views"] == 4 and ros["latency_ms"]["n"] == ros["views_received"]
    assert set(ros["latency_ms"]) >= {"p50", "p90", "p99", "max"} and ros["peak_rss_mb"] > 0
    assert ros["encoder_lag_s"]["n"] >= 1
    text = md.read_text()
    assert "## Through the nodes" in text and "latency p50 ms" in text and "per_class_iou.png" in text
    assert (tmp_path / "plots" / "confusion.png").is_file()


def test_malformed_bags_get_one_clear_error(tmp_path, small_scene, random_checkpoint, capsys):
    from chorus_ros.ros.bag import DemoBagConfig, make_demo_bag
    from chorus_ros.tools.evaluate import main
    missing = tmp_path / "missing_bag"
    assert main(["--bag", str(missing), "--checkpoint", str(random_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert f"bag not found: {missing}" in err and "Traceback" not in err
    demo = make_demo_bag(tmp_path / "demo", small_scene, DemoBagConfig(steps=1, final_views=1, clutter=0, width=8,
                                                                         height=6))
    assert main(["--bag", str(demo.path), "--checkpoint", str(random_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert f"{demo.path}: no ground-truth topics" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["--bag", str(demo.path), "--dataset", "x", "--checkpoint", str(random_checkpoint)])
    assert "--bag cannot be combined" in capsys.readouterr().err
