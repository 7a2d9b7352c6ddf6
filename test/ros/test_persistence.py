"""~/save_map and ~/load_map over DDS (issue 12, findings 1, 3 and 4): crafted and damaged saves
are refused with a clear message and the map unchanged, the executor survives anything a
callback raises, paths stay inside save_root, nothing foreign is overwritten, a save needs free
disk space, and interrupted saves are cleaned at start-up."""
import json
import os
import shutil

import pytest

from chorus_ros.core.persist import write_manifest

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("saves")
    # an interrupted save left from a previous run: cleaned when the node starts
    (r / f".old.chorus-tmp-{'a' * 32}").mkdir()
    (r / f".old.chorus-tmp-{'a' * 32}" / "map.safetensors").write_bytes(b"half a map")
    return r


@pytest.fixture(scope="module")
def node(harness, pipeline_factory, root):
    from chorus_ros.ros.chorus_node import ChorusNode
    n = harness.add(ChorusNode("chorus_node", pipeline=pipeline_factory(), context=harness.context,
                               cli_args=["--ros-args", "-p", "error_throttle_s:=0.0", "-p", f"save_root:={root}"]))
    yield n
    harness.remove(n)


@pytest.fixture(scope="module")
def loaded(harness, node, small_scene, wait_until):
    """The node holds the scene (map 'm', sequence 0), encoded, and a save 'good' of it."""
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    from chorus_ros.ros.map_updates import map_update_to_msg
    from chorus_ros.srv import SaveMap
    pub = harness.publisher(GaussianMapUpdate, "map_updates", qos.latched(16))
    pub.publish(map_update_to_msg(small_scene.gaussians, map_id="m", sequence=0, full=True, include_extras=True))
    wait_until(lambda: node.encoded_version > 0 and node.wait_idle(0.1), 60, "the map")
    res = harness.call(SaveMap, "chorus_node/save_map", SaveMap.Request(path="good"))
    assert res.success, res.message
    return pub


def _state(node):
    p = node.pipeline
    return len(p.map), p.map.version, sorted(p.instances.codebook.entries), p.labels.names


def _save(harness, path):
    from chorus_ros.srv import SaveMap
    return harness.call(SaveMap, "chorus_node/save_map", SaveMap.Request(path=path))


def _load(harness, path):
    from chorus_ros.srv import LoadMap
    return harness.call(LoadMap, "chorus_node/load_map", LoadMap.Request(path=path))


def test_orphans_of_interrupted_saves_are_cleaned_at_start_up(node, root):
    assert not any(".chorus-" in p.name for p in root.iterdir())


def test_save_writes_one_checked_set_inside_the_root(harness, node, loaded, root):
    res = _save(harness, "lab/run1")
    assert res.success and str(root / "lab" / "run1") in res.message
    names = sorted(p.name for p in (root / "lab" / "run1").iterdir())
    assert names == ["codebook.safetensors", "manifest.json", "map.safetensors", "pipeline.json"]
    meta = json.loads((root / "lab" / "run1" / "manifest.json").read_text())["meta"]
    assert meta["map_id"] == "m" and meta["map_sequence"] == 0
    before = _state(node)
    res = _load(harness, str(root / "lab" / "run1"))      # absolute paths inside the root work too
    assert res.success, res.message
    assert _state(node) == before


def _corrupt_codebook(path):
    data = bytearray((path / "codebook.safetensors").read_bytes())
    data[:8] = (10 ** 12).to_bytes(8, "little")
    (path / "codebook.safetensors").write_bytes(bytes(data))


def _map_meta(edit):
    def apply(path):
        from safetensors import safe_open
        from safetensors.torch import save_file
        with safe_open(str(path / "map.safetensors"), "pt") as f:
            meta = json.loads(f.metadata()["chorus_map"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        edit(meta)
        save_file(tensors, str(path / "map.safetensors"), metadata={"chorus_map": json.dumps(meta)})
    return apply


CRAFTED = [  # the five saves of issue 12 that killed the process, re-manifested (consistent sets)
    ("corrupt codebook", _corrupt_codebook, "not a readable safetensors file"),
    ("pipeline.json {}", lambda p: (p / "pipeline.json").write_text("{}"), "format None"),
    ("pipeline.json []", lambda p: (p / "pipeline.json").write_text("[]"), "expected a JSON object"),
    ("map metadata without attributes", _map_meta(lambda m: m.pop("attributes")), "lacks ['attributes']"),
    ("map version 2^70", _map_meta(lambda m: m.update(version=2 ** 70)), "'version' must be an integer"),
]


@pytest.mark.parametrize("case, craft, text", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_saves_are_refused_and_the_node_keeps_running(harness, node, loaded, root, case, craft, text):
    from chorus_ros.srv import SetLabels
    path = root / "crafted"
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(root / "good", path)
    craft(path)
    write_manifest(path, "chorus_ros.PerceptionPipeline")
    before = _state(node)
    res = _load(harness, "crafted")
    assert not res.success and text in res.message, res.message
    assert _state(node) == before
    # the executor still serves calls
    res = harness.call(SetLabels, "chorus_node/set_labels", SetLabels.Request(names=[]))
    assert not res.success and "needs 1..1000 names" in res.message


@pytest.mark.parametrize("damage, text", [
    ("mixed", "content differs from the manifest"),          # new map, old codebook and pipeline.json
    ("truncated", "the manifest says"),
    ("no manifest", "no manifest.json: not a complete"),       # killed before the manifest was written
    ("stale file", "files not in the manifest"),
])
def test_mixed_partial_and_truncated_saves_are_refused(harness, node, loaded, root, small_scene, damage, text):
    path = root / "damaged"
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(root / "good", path)
    if damage == "mixed":
        shutil.copy(root / "lab" / "run1" / "map.safetensors", path / "map.safetensors")
        data = bytearray((path / "map.safetensors").read_bytes())
        data[-1] ^= 0xFF                        # same size, another map's bytes
        (path / "map.safetensors").write_bytes(bytes(data))
    elif damage == "truncated":
        with open(path / "map.safetensors", "r+b") as f:
            f.truncate(os.path.getsize(path / "map.safetensors") // 2)
    elif damage == "no manifest":
        (path / "manifest.json").unlink()
    else:
        (path / "map.safetensors.tmp").write_bytes(b"stale")
    before = _state(node)
    res = _load(harness, "damaged")
    assert not res.success and text in res.message, res.message
    assert _state(node) == before


def test_any_exception_becomes_a_failed_response_and_a_status_error(harness, node, loaded, wait_until,
                                                                    monkeypatch):
    from chorus_ros.msg import Status
    status = harness.collect(Status, "chorus_node/status")

    def boom(path):
        raise RuntimeError("unexpected failure in a dependency")
    monkeypatch.setattr(node.pipeline, "read_saved", boom)
    before = _state(node)
    res = _load(harness, "good")
    assert not res.success and "unexpected RuntimeError: unexpected failure in a dependency" in res.message
    assert "(at test_persistence.py:" in res.message and "in boom)" in res.message   # says where
    wait_until(lambda: status and "unexpected RuntimeError" in status[-1].last_error, 10, "the status error")
    monkeypatch.undo()
    assert _state(node) == before
    res = _load(harness, "good")
    assert res.success, res.message


def test_a_subscription_callback_that_raises_does_not_end_the_executor(harness, node, loaded, small_scene,
                                                                       wait_until, monkeypatch):
    from chorus_ros.ros import chorus_node
    from chorus_ros.ros.map_updates import map_update_to_msg

    def boom(msg, frame, *args, **kwargs):
        raise MemoryError("simulated")
    monkeypatch.setattr(chorus_node, "map_update_from_msg", boom)
    count = node.errors.count
    loaded.publish(map_update_to_msg(None, map_id="m", sequence=1, full=False))
    wait_until(lambda: node.errors.count > count, 10, "the error report")
    assert "map update callback: unexpected MemoryError: simulated" in node.errors.last_error
    monkeypatch.undo()
    assert _load(harness, "good").success


@pytest.mark.parametrize("make, path, text", [
    (None, "/etc/chorus_map", "outside the save root"),
    (None, "../escape", "'..' and '.' are not allowed"),
    (None, "/".join(["d"] * 50), "50 levels deep"),
    (None, "", "empty save path"),
    ("symlink_dir", "link/map", "symbolic link"),
    ("symlink_file", "victim_link", "symbolic link"),
    ("foreign_folder", "foreign", "refusing to overwrite it"),
    ("foreign_file", "note.txt", "refusing to overwrite it"),
])
def test_hostile_save_paths_are_refused(harness, node, loaded, root, tmp_path, make, path, text):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious")
    if make == "symlink_dir":
        (root / "link").symlink_to(outside, target_is_directory=True)
    elif make == "symlink_file":
        (root / "victim_link").symlink_to(outside / "victim")
    elif make == "foreign_folder":
        (root / "foreign").mkdir()
        (root / "foreign" / "pipeline.json").write_text("precious")
    elif make == "foreign_file":
        (root / "note.txt").write_text("precious")
    try:
        res = _save(harness, path)
        assert not res.success and text in res.message, res.message
        assert sorted(p.name for p in outside.iterdir()) == ["victim"]
        assert (outside / "victim").read_text() == "precious"
        if make == "foreign_folder":
            assert (root / "foreign" / "pipeline.json").read_text() == "precious"
        if make == "foreign_file":
            assert (root / "note.txt").read_text() == "precious"
        assert not (root / "d").exists() and not os.path.exists("/etc/chorus_map")
        assert not any(".chorus-" in p.name for p in root.iterdir())
    finally:
        for name in ("link", "victim_link", "foreign", "note.txt"):
            p = root / name
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.exists():
                shutil.rmtree(p)


def test_a_save_needs_free_disk_space(harness, node, loaded, root):
    from rclpy.parameter import Parameter
    assert node.set_parameters([Parameter("save_min_free_mb", value=1e9)])[0].successful
    try:
        res = _save(harness, "too_big")
        assert not res.success and "not enough disk space" in res.message and "save_min_free_mb" in res.message
        assert not (root / "too_big").exists()
    finally:
        node.set_parameters([Parameter("save_min_free_mb", value=256.0)])


def test_save_root_must_be_absolute_and_is_read_only(node):
    from rclpy.parameter import Parameter
    assert not node.set_parameters([Parameter("save_root", value="/")])[0].successful
    assert not node.set_parameters([Parameter("load_sequence", value="sometimes")])[0].successful


@pytest.fixture(scope="module")
def query_node(harness, tiny_text_encoder):
    from chorus_ros.ros.query_node import QueryNode
    q = harness.add(QueryNode("query_node", text_encoder=tiny_text_encoder, context=harness.context))
    yield q
    harness.remove(q)


def test_no_callback_lets_an_exception_escape(harness, node, query_node, loaded):
    """Every subscription, service and timer callback of both nodes is fed junk (an object with
    no fields, as a buggy client library or a future message version could deliver): nothing
    escapes, services answer success = false. A callback added later without the guard fails
    here."""
    from rclpy.parameter import Parameter
    junk = object()
    for n in (node, query_node):
        seen = 0
        for sub in n.subscriptions:
            sub.callback(junk)
            seen += 1
        for srv in n.services:
            if srv.srv_name.startswith("~/"):       # ours (rclpy's parameter services are not)
                res = srv.callback(junk, srv.srv_type.Response())
                assert res.success is False and "unexpected AttributeError" in res.message, (srv.srv_name, res)
                seen += 1
        for t in n.timers:
            t.callback()
        assert seen >= 5, n.get_name()
    assert "unexpected" in node.errors.last_error and "unexpected" in query_node.errors.last_error
    # parameter callbacks: an exception while applying a change is reported, not raised
    before = node._owner.configure

    def boom(map_id, follow_any):
        raise RuntimeError("simulated")
    node._owner.configure = boom
    try:
        node.set_parameters([Parameter("map_id", value="")])
        assert "parameters ['map_id']: unexpected RuntimeError: simulated" in node.errors.last_error
    finally:
        node._owner.configure = before
    assert _load(harness, "good").success
