"""Map ownership (issue 12, finding 8): the node follows one map id; updates of another map are
refused and counted, an empty FULL of another map cannot wipe the map, the owner's deltas keep
applying; ~/load_map keeps, resets or restores the sequence as configured (load_sequence)."""
import pytest
import torch

from chorus_ros.ros.runtime import (UPDATE_DELTA, UPDATE_FULL, ForeignMapError, MapOwnership, SequenceTracker,
                                    guarded)

pytestmark = pytest.mark.ros


# ------------------------------------------------------------------------- pure pieces
def test_ownership_adopts_the_first_full_then_refuses_other_maps():
    o = MapOwnership()
    o.check("a", UPDATE_FULL)
    o.commit("a", UPDATE_FULL)
    for t in (UPDATE_FULL, UPDATE_DELTA):
        with pytest.raises(ForeignMapError, match="map 'b' refused: this node follows map 'a'"):
            o.check("b", t)
    assert o.refused == 2
    o.check("a", UPDATE_DELTA)


def test_ownership_configured_id_and_follow_any():
    o = MapOwnership("a")
    with pytest.raises(ForeignMapError, match="parameter map_id"):
        o.check("b", UPDATE_FULL)
    o.configure("a", True)
    o.check("b", UPDATE_FULL)                  # follow any: a FULL of another map may replace it
    with pytest.raises(ForeignMapError):
        o.check("b", UPDATE_DELTA)             # ... but not a DELTA before that FULL
    o.commit("b", UPDATE_FULL)
    assert o.owner == "b"
    o.configure("c", False)
    assert o.owner == "c" and not o.may_adopt("b") and o.may_adopt("c")
    o.configure("", False)                     # '' keeps the map already followed
    assert o.owner == "c"


class _Node:
    def __init__(self):
        from chorus_ros.ros.runtime import DropCounter, ErrorReporter
        self.errors = ErrorReporter(lambda text: None, 0.0)
        self.drops = DropCounter()

    @guarded("svc", service=True)
    def service(self, req, res):
        return {"ok": res}[req]

    @guarded("cb")
    def callback(self, msg):
        raise ZeroDivisionError("x")


def test_guarded_turns_any_exception_into_a_reported_failure():
    from types import SimpleNamespace
    n = _Node()
    res = n.service("bad", SimpleNamespace(success=True, message=""))
    assert res.success is False and res.message.startswith("svc: unexpected KeyError: 'bad' (at ")
    assert n.errors.last_error == res.message and n.drops.get("service_rejected") == 1
    ok = SimpleNamespace(success=True, message="")
    assert n.service("ok", ok) is ok and ok.success
    assert n.callback(1) is None and "cb: unexpected ZeroDivisionError: x" in n.errors.last_error


# ------------------------------------------------------------------------------ over DDS
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("saves")


@pytest.fixture(scope="module")
def node(harness, pipeline_factory, root):
    from chorus_ros.ros.chorus_node import ChorusNode
    n = harness.add(ChorusNode("chorus_node", pipeline=pipeline_factory(), context=harness.context,
                               cli_args=["--ros-args", "-p", "error_throttle_s:=0.0", "-p", f"save_root:={root}"]))
    yield n
    harness.remove(n)


@pytest.fixture(scope="module")
def pub(harness, node):
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    return harness.publisher(GaussianMapUpdate, "map_updates", qos.latched(16))


def _send(pub, node, wait_until, gaussians, map_id, seq, full, removed=None):
    from chorus_ros.ros.map_updates import map_update_to_msg
    done = node._done                           # updates and views finished by the worker
    pub.publish(map_update_to_msg(gaussians, map_id=map_id, sequence=seq, full=full, removed_ids=removed,
                                  include_extras=True))
    wait_until(lambda: node._done > done and node.wait_idle(0.1), 60, f"update {map_id}/{seq}")


def _param(node, name, value):
    from rclpy.parameter import Parameter
    assert node.set_parameters([Parameter(name, value=value)])[0].successful


def test_an_empty_full_of_another_map_cannot_wipe_the_map(harness, node, pub, small_scene, wait_until):
    from chorus_ros.msg import Status
    status = harness.collect(Status, "chorus_node/status")
    g = small_scene.gaussians
    _send(pub, node, wait_until, g.index(torch.arange(2000)), "m", 0, True)
    assert len(node.pipeline.map) == 2000 and node._owner.owner == "m"
    _send(pub, node, wait_until, None, "intruder", 0, True)            # the takeover of the issue
    _send(pub, node, wait_until, g.index(torch.arange(5)), "intruder", 1, False)
    assert len(node.pipeline.map) == 2000
    assert node.drops.get("update_foreign_map") == 2 and "follows map 'm'" in node.errors.last_error
    # the real publisher's deltas still apply
    _send(pub, node, wait_until, g.index(torch.arange(2000, 2100)), "m", 1, False)
    assert len(node.pipeline.map) == 2100 and node._tracker.last_sequence == 1

    def counted():
        if not status:
            return False
        d = dict(zip(status[-1].drop_reasons, status[-1].drop_counts))
        return d.get("update_foreign_map") == 2
    wait_until(counted, 10, "update_foreign_map in ~/status")


def test_map_id_parameter_and_follow_any_map(harness, node, pub, small_scene, wait_until):
    g = small_scene.gaussians
    _param(node, "follow_any_map", True)
    try:
        _send(pub, node, wait_until, g.index(torch.arange(300)), "other", 0, True)
        assert len(node.pipeline.map) == 300 and node._owner.owner == "other"
    finally:
        _param(node, "follow_any_map", False)
    _param(node, "map_id", "m")
    try:
        refused = node.drops.get("update_foreign_map")
        _send(pub, node, wait_until, g.index(torch.arange(10)), "other", 1, False)
        assert node.drops.get("update_foreign_map") == refused + 1 and len(node.pipeline.map) == 300
        _send(pub, node, wait_until, g.index(torch.arange(2100)), "m", 10, True)
        assert len(node.pipeline.map) == 2100 and node._tracker.map_id == "m"
    finally:
        _param(node, "map_id", "")


def _save(harness, path):
    from chorus_ros.srv import SaveMap
    return harness.call(SaveMap, "chorus_node/save_map", SaveMap.Request(path=path))


def _load(harness, path):
    from chorus_ros.srv import LoadMap
    return harness.call(LoadMap, "chorus_node/load_map", LoadMap.Request(path=path))


def test_load_map_keeps_resets_or_restores_the_sequence(harness, node, pub, small_scene, wait_until):
    g = small_scene.gaussians
    _send(pub, node, wait_until, g.index(torch.arange(1000)), "m", 20, True)
    assert _save(harness, "at20").success
    _send(pub, node, wait_until, g.index(torch.arange(1000, 1100)), "m", 21, False)
    # keep (default): the loaded map is the save's, the owner's next delta applies on top
    res = _load(harness, "at20")
    assert res.success and "sequence keep: last applied 21" in res.message, res.message
    assert len(node.pipeline.map) == 1000
    _send(pub, node, wait_until, g.index(torch.arange(1100, 1200)), "m", 22, False)
    assert len(node.pipeline.map) == 1100 and node._tracker.last_sequence == 22
    # reset: deltas wait for the next FULL
    _param(node, "load_sequence", "reset")
    try:
        assert _load(harness, "at20").success
        _send(pub, node, wait_until, g.index(torch.arange(1200, 1300)), "m", 23, False)
        assert len(node.pipeline.map) == 1000 and "before any FULL" in node.errors.last_error
        # restore: the save's sequence, so the publisher's delta after it (21) applies
        _param(node, "load_sequence", "restore")
        res = _load(harness, "at20")
        assert res.success and "last applied 20" in res.message, res.message
        _send(pub, node, wait_until, g.index(torch.arange(1000, 1100)), "m", 21, False)
        assert len(node.pipeline.map) == 1100 and node._tracker.last_sequence == 21
        # restore refuses a save of a map this node does not follow
        _param(node, "follow_any_map", True)
        _send(pub, node, wait_until, g.index(torch.arange(50)), "other", 0, True)
        assert _save(harness, "other0").success
        _param(node, "follow_any_map", False)
        _param(node, "map_id", "m")            # back to 'm' (it had followed 'other')
        _send(pub, node, wait_until, g.index(torch.arange(1000)), "m", 30, True)
        before = (len(node.pipeline.map), node.pipeline.map.version)
        res = _load(harness, "other0")
        assert not res.success and "save of map 'other'; this node follows map 'm'" in res.message
        assert (len(node.pipeline.map), node.pipeline.map.version) == before
    finally:
        _param(node, "load_sequence", "keep")
        _param(node, "follow_any_map", False)
        _param(node, "map_id", "")


def test_sequence_tracker_is_unchanged_by_ownership():
    t = SequenceTracker()
    t.commit("m", 3, UPDATE_FULL)
    t.check("m", 4, UPDATE_DELTA)
