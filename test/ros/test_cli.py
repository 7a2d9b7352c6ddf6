"""``chorus-ros``: make-bag in-process; ``up`` and ``replay`` as real separate processes talking
over DDS (loopback, the test run's private domain inherited from test/conftest.py)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[2]


def test_make_bag(tmp_path, capsys):
    from chorus_ros.ros.bag import read_bag
    from chorus_ros.tools.cli import main
    assert main(["make-bag", str(tmp_path / "b"), "--gaussians", "1500", "--steps", "2", "--width", "24",
                 "--height", "18", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "2 map updates" in out
    topics = [m.topic for m in read_bag(tmp_path / "b")]
    assert topics.count("/map_updates") == 2 and "/camera_0/pose" in topics


def test_up_and_replay_in_separate_processes(tmp_path, harness, random_checkpoint, wait_until):
    from sensor_msgs.msg import Image

    from chorus_ros.msg import Status
    from chorus_ros.tools.cli import main
    assert main(["make-bag", str(tmp_path / "bag"), "--gaussians", "1500", "--steps", "2", "--width", "24",
                 "--height", "18"]) == 0
    status = harness.collect(Status, "/cli/chorus_node/status", None)
    images = harness.collect(Image, "/cli/camera_0/semantic/image_raw")
    env = dict(os.environ, PYTHONFAULTHANDLER="1")   # a hung `up` dumps every thread's stack on SIGABRT
    # SIGINT as a terminal's Ctrl-C delivers it: a test run started in the background of a
    # non-interactive shell (`cmd &`) inherits SIGINT ignored, and so would `up`
    up = subprocess.Popen([sys.executable, "-m", "chorus_ros.tools.cli", "up", "--checkpoint",
                           str(random_checkpoint), "--namespace", "cli"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: status or up.poll() is not None, 90, "the status of the `up` process")
        assert up.poll() is None, up.stdout.read()
        rp = subprocess.run([sys.executable, "-m", "chorus_ros.tools.cli", "replay", str(tmp_path / "bag"),
                             "--namespace", "cli", "--rate", "4"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
        assert rp.returncode == 0, rp.stdout + rp.stderr
        assert "replayed" in rp.stdout
        wait_until(lambda: images, 90, "a semantic image from the `up` process")
        wait_until(lambda: any(s.map_size > 0 for s in status), 30, "a status with the map")
        assert images[0].encoding == "16UC1" and images[0].width == 24
    finally:
        up.send_signal(signal.SIGINT)
        try:
            out, _ = up.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # a hung process's stacks go into the failure message instead of a bare -9
            up.send_signal(signal.SIGABRT)
            try:
                out, _ = up.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                up.kill()
                out, _ = up.communicate()
    assert up.returncode == 0, out
    assert "running chorus_node, query_node" in out


def test_parameter_tables_in_docs_are_current(capsys):
    """docs/ros.md's parameter tables equal what the dataclasses generate (one source of truth);
    regenerate with `chorus-ros params --update docs/ros.md`."""
    from chorus_ros.tools.cli import BEGIN, END, main, parameters_markdown
    doc = (ROOT / "docs" / "ros.md").read_text()
    section = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section.strip() == parameters_markdown().strip(), \
        "docs/ros.md is out of date: run `chorus-ros params --update docs/ros.md`"
    assert main(["params"]) == 0
    out = capsys.readouterr().out
    assert "| `semantic.min_alpha` | float | `0.5` |" in out and "### query_node" in out
    assert "| `queue_size` | int | `2` | read-only, [1, 100] |" in out


def test_query_on_a_map_file(tiny_scene_folder, random_checkpoint, capsys):
    """`chorus-ros query --map`: loads (ground-truth properties ignored and named), encodes, answers."""
    import json

    from chorus_ros.tools.cli import main
    ply = tiny_scene_folder / "gaussians.ply"
    assert main(["query", "--map", str(ply), "chair", "a lamp", "--checkpoint", str(random_checkpoint),
                 "--top-k", "2", "--json"]) == 0
    cap = capsys.readouterr()
    assert f"{ply}: ignored PLY properties instance, label" in cap.err
    out = json.loads(cap.out)
    from chorus_ros.core.ply import read_ply
    assert out["gaussians"] == len(read_ply(ply).gaussians)
    assert [r["query"] for r in out["results"]] == ["chair", "a lamp"]
    objs = out["results"][0]["objects"]
    # the CLI answers exactly what the pipeline answers on the stripped map: same objects, same order
    from chorus_ros.core.pipeline import PerceptionPipeline
    from chorus_ros.tools.cli import load_map_file
    pipe = PerceptionPipeline.from_checkpoint(str(random_checkpoint))
    pipe.apply_update(load_map_file(str(ply), log=lambda m: None), None, full=True)
    pipe.encode()
    expect = pipe.query("chair", top_k=2)
    assert len(objs) == len(expect) >= 1
    assert [ob["instance_id"] for ob in objs] == [int(h.record.instance_id) for h in expect]
    assert [ob["score"] for ob in objs] == [round(float(h.score), 4) for h in expect]
    assert [(ob["code_id"], ob["confidence"]) for ob in objs] == [
        (int(h.record.code_id), round(float(h.record.confidence), 4)) for h in expect]
    o = objs[0]
    assert set(o) >= {"instance_id", "score", "class", "centroid", "bbox_min", "bbox_max", "support"}
    assert all(lo <= c <= hi for lo, c, hi in zip(o["bbox_min"], o["centroid"], o["bbox_max"])) and o["support"] > 0
    assert main(["query", "--map", str(ply), "chair", "--checkpoint", str(random_checkpoint), "--top-k", "1"]) == 0
    text = capsys.readouterr().out
    assert "'chair': 1 object(s)" in text and "support" in text and "centroid (" in text and "confidence" in text


def test_query_reports_faint_gaussians_set_aside(tmp_path, small_scene, random_checkpoint, capsys):
    """`chorus-ros query` on a 3DGS map with nearly transparent Gaussians: they are counted as set
    aside (the pipeline's min_opacity), the rest is encoded and queried."""
    import json

    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.core.ply import write_ply
    from chorus_ros.tools.cli import main
    g = small_scene.gaussians
    ops = g.opacities.clone()
    ops[::5] = -5.0
    ply = tmp_path / "faint.ply"
    write_ply(ply, GaussianArrays(g.means, g.sh, ops, g.log_scales, g.quats, g.ids))
    assert main(["query", "--map", str(ply), "chair", "--checkpoint", str(random_checkpoint), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gaussians"] == len(g) and out["faint_set_aside"] == len(ops[::5])
    assert main(["query", "--map", str(ply), "chair", "--checkpoint", str(random_checkpoint)]) == 0
    assert f"({len(ops[::5])} below min_opacity set aside)" in capsys.readouterr().out


def test_query_on_a_plain_point_cloud_map(tmp_path, small_scene, random_checkpoint, capsys):
    """`chorus-ros query --map` on a plain xyz + uchar rgb PLY: read as a point cloud (said so), a
    'gaussian' checkpoint is warned about (recommending checkpoints/pointcloud), the query runs."""
    import json
    from pathlib import Path

    from chorus_ros.core.ply import write_point_cloud_ply
    from chorus_ros.tools.cli import load_map_file, main
    g = small_scene.gaussians
    ply = tmp_path / "cloud.ply"
    write_point_cloud_ply(ply, g.means, g.base_rgb, extras={"label": g.extras["label"]})
    assert main(["query", "--map", str(ply), "chair", "--checkpoint", str(random_checkpoint), "--json"]) == 0
    cap = capsys.readouterr()
    assert f"{ply}: plain point cloud ({len(g)} points, colour from uchar red/green/blue)" in cap.err
    assert "WARNING:" in cap.err and "checkpoints/pointcloud" in cap.err
    assert f"{ply}: ignored PLY properties label" in cap.err
    assert json.loads(cap.out)["gaussians"] == len(g)
    lines = []
    pc = Path(__file__).resolve().parents[2] / "checkpoints" / "pointcloud"
    assert len(load_map_file(str(ply), log=lines.append, checkpoint=str(pc))) == len(g)
    assert not any("WARNING" in m for m in lines) and any("plain point cloud" in m for m in lines)


def test_map_file_errors_name_the_file(tmp_path, tiny_scene_folder, random_checkpoint, capsys):
    from chorus_ros.tools.cli import main
    missing = tmp_path / "missing.ply"
    for cmd in (["query", "--map", str(missing), "chair"], ["up", "--map", str(missing)]):
        assert main(cmd + ["--checkpoint", str(random_checkpoint)]) == 2
        err = capsys.readouterr().err
        assert f"map file not found: {missing}" in err and "Traceback" not in err
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n")
    assert main(["query", "--map", str(bad), "chair", "--checkpoint", str(random_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "missing required" in err


def test_up_with_a_map_file(tiny_scene_folder, harness, random_checkpoint, wait_until, capsys):
    """`chorus-ros up --map` (in this process): the map is published, encoded at start-up, the node's
    object map for the file's map id goes out over DDS; SIGINT ends it cleanly (handlers restored)."""
    import threading

    from chorus_ros.msg import ObjectMap
    from chorus_ros.ros import qos
    from chorus_ros.tools.cli import main
    objects = harness.collect(ObjectMap, "/upmap/objects", qos.latched())

    def interrupt_when_served():
        try:
            wait_until(lambda: any(m.map_id == "file:gaussians.ply" for m in objects), 60, "the object map")
            time.sleep(1.0)   # `up`'s own subscription to the same latched message reports the load
        finally:
            os.kill(os.getpid(), signal.SIGINT)
    handler = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=interrupt_when_served, daemon=True)
    t.start()
    ply = tiny_scene_folder / "gaussians.ply"
    assert main(["up", "--checkpoint", str(random_checkpoint), "--namespace", "upmap", "--map", str(ply),
                 "--log-level", "warn"]) == 0
    t.join(5)
    assert signal.getsignal(signal.SIGINT) is handler
    assert any(m.map_id == "file:gaussians.ply" and len(m.objects) > 0 for m in objects)
    out = capsys.readouterr().out
    from chorus_ros.core.ply import read_ply
    n = len(read_ply(ply).gaussians)
    assert "ignored PLY properties instance, label" in out and f"loaded and encoded: {n} Gaussians" in out


def test_split_map_caps_the_number_of_pieces(small_scene):
    from chorus_ros.ros.map_file import split_map
    g = small_scene.gaussians
    n = len(g)
    parts = split_map(g, max_piece=1000)
    assert [len(p) for p in parts] == [1000, 1000, n - 2000]
    assert sum((p.ids.tolist() for p in parts), []) == g.ids.tolist()     # order and ids kept
    capped = split_map(g, max_piece=100, max_pieces=4)                     # 25 pieces would be too many
    assert len(capped) == 4 and sum(len(p) for p in capped) == n
    assert len(split_map(g)) == 1
    with pytest.raises(ValueError, match="max_piece"):
        split_map(g, max_piece=0)


def test_published_map_reaches_a_node_that_joins_later(small_scene, harness, random_checkpoint, wait_until):
    """publish_map's pieces (FULL + DELTAs) stay latched: a chorus_node started afterwards still
    receives all of them and holds the whole map."""
    from chorus_ros.core.datasets import strip_gaussians
    from chorus_ros.ros.bringup import Bringup
    from chorus_ros.ros.map_file import publish_map
    g = strip_gaussians(small_scene.gaussians)
    pub, pieces = publish_map(harness.probe, g, map_id="late", topic="/late/map_updates", max_piece=1000)
    assert pieces == 3
    with Bringup(checkpoint=str(random_checkpoint), nodes=["chorus_node"], namespace="late", log_level="warn") as b:
        node = b.nodes["chorus_node"]
        wait_until(lambda: node.updates_received >= 3 and node.wait_idle(0.05) and len(node.pipeline.map) == len(g),
                   60, "the whole map in the late node")
        assert sorted(node.pipeline.map.arrays().ids.tolist()) == sorted(g.ids.tolist())
        assert not list(node.errors.recent)
    harness.probe.destroy_publisher(pub)
