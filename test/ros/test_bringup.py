"""Single-process bringup (the node set of the launch file): parameters from config/chorus.yaml
with descriptors from the config dataclasses, read-only and validated changes, the status
heartbeat, and query answers while the perception node is busy."""
import threading
from pathlib import Path

import pytest
import yaml

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bringup(pipeline_factory, tiny_text_encoder):
    from chorus_ros.ros.bringup import Bringup
    b = Bringup(ROOT / "config" / "chorus.yaml", namespace="robot1",
                node_kwargs={"chorus_node": {"pipeline": pipeline_factory()},
                             "query_node": {"text_encoder": tiny_text_encoder}},
                parameters={"chorus_node": {"max_rate_hz": 25.0}})
    b.start()
    yield b
    b.shutdown()


@pytest.fixture(scope="module")
def probe(bringup):
    import rclpy
    node = rclpy.create_node("bringup_probe", context=bringup.context)
    bringup.executor.add_node(node)
    return node


def _call(probe, srv, name, req, wait_until):
    c = probe.create_client(srv, name)
    assert c.wait_for_service(timeout_sec=20), name
    fut = c.call_async(req)
    wait_until(fut.done, 30, name)
    return fut.result()


def test_both_nodes_run_in_one_executor_under_the_namespace(bringup):
    assert list(bringup.nodes) == ["chorus_node", "query_node"]
    assert {n.get_namespace() for n in bringup.nodes.values()} == {"/robot1"}
    assert bringup.nodes["chorus_node"].get_fully_qualified_name() == "/robot1/chorus_node"


def test_parameters_come_from_the_config_file_and_overrides(bringup):
    doc = yaml.safe_load((ROOT / "config" / "chorus.yaml").read_text())
    chorus, query = bringup.nodes["chorus_node"], bringup.nodes["query_node"]
    for key, value in doc["/**/chorus_node"]["ros__parameters"].items():
        if not isinstance(value, dict) and key != "max_rate_hz":
            assert chorus.get_parameter(key).value == value, key
    for key, value in doc["/**/query_node"]["ros__parameters"].items():
        if not isinstance(value, dict):
            assert query.get_parameter(key).value == value, key
    for node in (chorus, query):
        assert node.get_parameter("map_frame").value == doc["/**"]["ros__parameters"]["map_frame"]
    assert chorus.get_parameter("max_rate_hz").value == 25.0 == chorus.config.max_rate_hz


def test_descriptors_mirror_the_dataclass_docstrings(bringup):
    from chorus_ros.ros.params import field_docstrings
    from chorus_ros.ros.chorus_node import ChorusNodeConfig
    from chorus_ros.core.render import RenderSettings
    chorus = bringup.nodes["chorus_node"]
    d = chorus.describe_parameter("queue_size")
    assert d.description == field_docstrings(ChorusNodeConfig)["queue_size"] and d.read_only
    assert d.integer_range[0].from_value == 1
    d = chorus.describe_parameter("render.eps2d")
    assert d.description == field_docstrings(RenderSettings)["eps2d"] and not d.read_only
    assert chorus.describe_parameter("map.capacity").read_only          # needs a reload
    names = set(chorus._parameters)
    assert {"render.near", "semantic.min_alpha", "instances.voxel_size", "overlay_alpha",
            "device"} <= names
    assert any(n.startswith("qos_overrides./robot1/map_updates.subscription") for n in names)


def test_parameter_changes_are_validated_and_applied(bringup):
    from rclpy.parameter import Parameter
    chorus = bringup.nodes["chorus_node"]
    res = chorus.set_parameters([Parameter("cameras", value=["x"])])[0]
    assert not res.successful and "read-only" in res.reason
    res = chorus.set_parameters([Parameter("semantic.min_alpha", value=1.5)])[0]
    assert not res.successful and "min_alpha must be in [0, 1]" in res.reason
    res = chorus.set_parameters([Parameter("pose_source", value="gps")])[0]
    assert not res.successful
    res = chorus.set_parameters([Parameter("queue_size", value=0)])[0]
    assert not res.successful
    assert chorus.pipeline.config.semantic.min_alpha == 0.5
    res = chorus.set_parameters([Parameter("semantic.min_alpha", value=0.25),
                                 Parameter("pair_tolerance_s", value=0.02)])
    assert all(r.successful for r in res)
    # applied in place: the pipeline's decoder sees it, the pairer uses the new tolerance
    assert chorus.pipeline.semantic.config.min_alpha == 0.25 == chorus.pipeline.config.semantic.min_alpha
    assert chorus._pairer.tolerance_ns == 20_000_000
    chorus.set_parameters([Parameter("semantic.min_alpha", value=0.5)])


def test_status_heartbeat(bringup, probe, wait_until):
    from chorus_ros.msg import Status
    got = []
    probe.create_subscription(Status, "/robot1/chorus_node/status", got.append, 10)
    wait_until(lambda: got, 10, "a status message")
    s = got[-1]
    assert s.state == "waiting_for_map" and s.map_size == 0 and s.header.frame_id == "map"


def test_queries_are_answered_while_the_perception_node_is_busy(bringup, probe, wait_until):
    """Hold the perception node's pipeline lock (as a long encode does): ~/query still answers."""
    from chorus_ros.srv import QueryObjects
    chorus = bringup.nodes["chorus_node"]
    release = threading.Event()
    held = threading.Event()

    def busy():
        with chorus._lock:
            held.set()
            release.wait(30)
    t = threading.Thread(target=busy)
    t.start()
    try:
        held.wait(5)
        res = _call(probe, QueryObjects, "/robot1/query_node/query", QueryObjects.Request(text="chair"),
                    wait_until)
        assert not release.is_set()                 # answered while the lock was still held
        assert not res.success and "no object map" in res.message
    finally:
        release.set()
        t.join()


def test_unknown_node_names_are_refused():
    from chorus_ros.ros.bringup import Bringup
    with pytest.raises(ValueError, match="unknown nodes"):
        Bringup(nodes=["nope"])


def test_tf_pose_source_falls_back_to_pose_topics_without_tf2(bringup, pipeline_factory):
    """tf2_ros is not installable here: pose_source 'tf' says so and keeps the PoseStamped input."""
    import importlib.util

    from chorus_ros.ros.chorus_node import ChorusNode
    if importlib.util.find_spec("tf2_ros") is not None:
        pytest.skip("tf2_ros is installed: the TF path is used instead")
    node = ChorusNode("tf_node", namespace="tf", pipeline=pipeline_factory(), context=bringup.context,
                      cli_args=["--ros-args", "-p", "pose_source:=tf"])
    try:
        assert node._tf is None and node.config.pose_source == "tf"
        subs = {s.topic_name for s in node.subscriptions}
        assert "/tf/camera_0/pose" in subs and "/tf/camera_0/camera_info" in subs
    finally:
        node.destroy_node()


def test_invalid_start_up_parameters_stop_the_node_with_a_clear_error(bringup, pipeline_factory, tmp_path):
    from chorus_ros.ros.chorus_node import ChorusNode
    with pytest.raises(ValueError, match="pose_source must be 'topic' or 'tf', got 'gps'"):
        ChorusNode("bad", pipeline=pipeline_factory(), context=bringup.context,
                   cli_args=["--ros-args", "-p", "pose_source:=gps"])
    with pytest.raises(ValueError, match="min_alpha must be in"):
        ChorusNode("bad2", pipeline=pipeline_factory(), context=bringup.context,
                   cli_args=["--ros-args", "-p", "semantic.min_alpha:=3.0"])
    from chorus_ros.core.errors import InvalidInputError
    with pytest.raises(InvalidInputError, match="parameter 'checkpoint' is empty"):
        ChorusNode("bad3", context=bringup.context)


def test_bringup_spins_the_nodes_in_the_node_executor(bringup):
    """Not rclpy's MultiThreadedExecutor, whose busy loop starved the worker under load
    (chorus_ros.ros.executor; docs/reliability.md, "The load benchmark's stall")."""
    from chorus_ros.ros.executor import NodeExecutor
    assert type(bringup.executor) is NodeExecutor
    assert set(bringup.executor.get_nodes()) >= set(bringup.nodes.values())


def test_the_node_pins_glibcs_mmap_threshold_at_start_up(bringup, pipeline_factory, monkeypatch):
    """malloc_mmap_threshold_kib (default 256) is applied once at start-up; 0 leaves glibc's
    dynamic threshold (chorus_ros.core.memory.pin_mmap_threshold; docs/reliability.md)."""
    from chorus_ros.ros import chorus_node as cn
    calls = []
    monkeypatch.setattr(cn, "pin_mmap_threshold", lambda n: calls.append(n) or True)
    for name, args, want in (("pin_default", [], [256 * 1024]),
                             ("pin_off", ["--ros-args", "-p", "malloc_mmap_threshold_kib:=0"], [])):
        calls.clear()
        node = cn.ChorusNode(name, namespace=name, pipeline=pipeline_factory(), context=bringup.context, cli_args=args)
        try:
            assert calls == want
        finally:
            node.destroy_node()
