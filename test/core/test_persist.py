"""Crash-safe, confined saves (chorus_ros.core.persist) and the pipeline's save/load on top of
them: manifests, atomic replacement, interrupted saves, mixed/partial/truncated sets, hostile
paths, the disk-space check, and the crafted saves that used to kill the node (issue 12)."""
import json
import os
import shutil
import types

import pytest
import torch

from chorus_ros.core import persist
from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.labels import LabelSet
from chorus_ros.core.persist import (MANIFEST, SaveRefusedError, check_free_space, clean_orphans,
                                     resolve_in_root, verify_save, write_manifest, write_save)

KIND = "test.kind"


def _writer(**files):
    def write(folder):
        for name, data in files.items():
            (folder / name).write_bytes(data)
    return write


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".chorus-" in p.name]


# ------------------------------------------------------------------------------ format
def test_write_then_verify_lists_every_file_with_size_and_hash(tmp_path):
    m = write_save(tmp_path / "s", _writer(a=b"aaa", b=b""), kind=KIND, meta={"map_id": "x"})
    assert sorted(m.files) == ["a", "b"] and m.files["a"].size == 3
    back = verify_save(tmp_path / "s", kind=KIND, required=["a"])
    assert back.files == m.files and back.meta == {"map_id": "x"}
    assert json.loads((tmp_path / "s" / MANIFEST).read_text())["format_version"] == persist.SAVE_FORMAT_VERSION
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic_exchange", "rename_aside"])
def test_replacing_a_save_swaps_the_whole_set(tmp_path, monkeypatch, exchange):
    if exchange:
        assert persist._exchange((tmp_path / "x"), (tmp_path / "y")) is False   # both missing: refused
        (tmp_path / "x").mkdir()
        (tmp_path / "y").mkdir()
        (tmp_path / "x" / "in_x").write_text("")
        if not persist._exchange(tmp_path / "x", tmp_path / "y"):
            pytest.skip("renameat2(RENAME_EXCHANGE) not available here")
        assert (tmp_path / "y" / "in_x").exists() and not (tmp_path / "x" / "in_x").exists()
        shutil.rmtree(tmp_path / "x")
        shutil.rmtree(tmp_path / "y")
    else:
        monkeypatch.setattr(persist, "_exchange", lambda a, b: False)
    write_save(tmp_path / "s", _writer(a=b"old", old_only=b"x"), kind=KIND)
    write_save(tmp_path / "s", _writer(a=b"new"), kind=KIND)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["a", MANIFEST]
    assert (tmp_path / "s" / "a").read_bytes() == b"new"
    verify_save(tmp_path / "s", kind=KIND)
    assert _leftovers(tmp_path) == []


def test_a_failing_writer_leaves_the_previous_save_intact(tmp_path):
    write_save(tmp_path / "s", _writer(a=b"old"), kind=KIND)

    def crash(folder):
        (folder / "a").write_bytes(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_save(tmp_path / "s", crash, kind=KIND)
    assert (tmp_path / "s" / "a").read_bytes() == b"old"
    verify_save(tmp_path / "s", kind=KIND)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("what", ["file", "foreign_folder", "symlink"])
def test_never_overwrites_what_is_not_our_save(tmp_path, what):
    target = tmp_path / "s"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "pipeline.json").write_text("precious")
    if what == "file":
        target.write_text("precious")
    elif what == "foreign_folder":
        target.mkdir()
        (target / "pipeline.json").write_text("precious")
    else:
        target.symlink_to(victim, target_is_directory=True)
    with pytest.raises(SaveRefusedError, match="refusing"):
        write_save(target, _writer(**{"pipeline.json": b"{}"}), kind=KIND)
    assert (victim / "pipeline.json").read_text() == "precious"
    if what == "file":
        assert target.read_text() == "precious"
    if what == "foreign_folder":
        assert (target / "pipeline.json").read_text() == "precious"
    assert _leftovers(tmp_path) == []


def test_an_empty_folder_may_be_used(tmp_path):
    (tmp_path / "s").mkdir()
    write_save(tmp_path / "s", _writer(a=b"1"), kind=KIND)
    verify_save(tmp_path / "s", kind=KIND)


# ------------------------------------------------------------------- interrupted saves
def test_start_up_cleanup_after_kills_at_each_step(tmp_path):
    # kill while writing: a temporary folder with half the files, no manifest
    write_save(tmp_path / "a", _writer(x=b"old"), kind=KIND)
    tmp = tmp_path / f".a.chorus-tmp-{'0' * 32}"
    tmp.mkdir()
    (tmp / "x").write_bytes(b"half")
    # kill between "old aside" and "new in": the save is missing, its aside copy is complete
    write_save(tmp_path / "sub" / "b", _writer(x=b"prev"), kind=KIND)
    os.rename(tmp_path / "sub" / "b", tmp_path / "sub" / f".b.chorus-old-{'1' * 32}")
    # kill after "new in", before the aside copy was removed
    write_save(tmp_path / "c", _writer(x=b"new"), kind=KIND)
    shutil.copytree(tmp_path / "c", tmp_path / f".c.chorus-old-{'2' * 32}")
    # names that only look similar are left alone
    (tmp_path / ".a.chorus-tmp-notours").mkdir()
    actions = clean_orphans(tmp_path)
    assert len(actions) == 3, actions
    assert not tmp.exists() and (tmp_path / ".a.chorus-tmp-notours").exists()
    assert (tmp_path / "sub" / "b" / "x").read_bytes() == b"prev"
    verify_save(tmp_path / "sub" / "b", kind=KIND)
    assert (tmp_path / "c" / "x").read_bytes() == b"new"
    assert sorted(_leftovers(tmp_path)) == [".a.chorus-tmp-notours"] and _leftovers(tmp_path / "sub") == []
    assert clean_orphans(tmp_path) == []


# --------------------------------------------------------------- partial / mixed / damaged
@pytest.fixture
def two_saves(tmp_path):
    write_save(tmp_path / "one", _writer(a=b"A" * 100, b=b"B" * 50), kind=KIND)
    write_save(tmp_path / "two", _writer(a=b"a" * 100, b=b"b" * 60), kind=KIND)
    return tmp_path / "one", tmp_path / "two"


def test_partial_save_without_manifest_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a").write_bytes(b"data")
    with pytest.raises(CheckpointError, match="no manifest.json: not a complete"):
        verify_save(tmp_path / "s", kind=KIND)


def test_truncated_file_is_refused(two_saves):
    one, _ = two_saves
    with open(one / "a", "r+b") as f:
        f.truncate(40)
    with pytest.raises(CheckpointError, match="40 bytes, the manifest says 100"):
        verify_save(one, kind=KIND)


def test_mixed_set_same_sizes_is_refused(two_saves):
    one, two = two_saves
    shutil.copy(two / "a", one / "a")           # same size, other content: a new map, old rest
    with pytest.raises(CheckpointError, match="content differs from the manifest"):
        verify_save(one, kind=KIND)


@pytest.mark.parametrize("change", ["missing", "extra", "stale_manifest", "bad_json", "version", "kind"])
def test_other_inconsistent_sets_are_refused(two_saves, change):
    one, two = two_saves
    if change == "missing":
        (one / "b").unlink()
        match = r"missing files \['b'\]"
    elif change == "extra":
        (one / "c").write_bytes(b"stale")
        match = r"files not in the manifest \['c'\]"
    elif change == "stale_manifest":
        shutil.copy(two / MANIFEST, one / MANIFEST)
        match = "content differs from the manifest"   # a.bin first: same size, other bytes
    elif change == "bad_json":
        (one / MANIFEST).write_text("{not json")
        match = "not valid JSON"
    elif change == "version":
        d = json.loads((one / MANIFEST).read_text())
        d["format_version"] = 99
        (one / MANIFEST).write_text(json.dumps(d))
        match = "unsupported save format version 99"
    else:
        match = "expected 'other'"
    with pytest.raises(CheckpointError, match=match):
        verify_save(one, kind="other" if change == "kind" else KIND)


# ------------------------------------------------------------------------- hostile paths
@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


def test_names_inside_the_root_resolve(root):
    assert resolve_in_root(root, "lab/run1") == root.resolve() / "lab" / "run1"
    assert resolve_in_root(root, str(root / "x")) == root.resolve() / "x"
    assert resolve_in_root(root, "a/b/c/d", max_depth=4) == root.resolve() / "a/b/c/d"


@pytest.mark.parametrize("path, match", [
    ("", "empty save path"),
    ("../escape", r"'\.\.' and '\.'"),
    ("a/../../escape", r"'\.\.' and '\.'"),
    ("/etc/chorus", "outside the save root"),
    (".hidden", "reserved"),
    ("/".join(["d"] * 50), "50 levels deep"),
    ("a\0b", "NUL"),
    ("/", "outside the save root"),
])
def test_hostile_paths_are_refused(root, path, match):
    with pytest.raises(SaveRefusedError, match=match):
        resolve_in_root(root, path, max_depth=4)


def test_root_itself_and_dotdot_inside_an_absolute_path_are_refused(root):
    with pytest.raises(SaveRefusedError, match="save root itself"):
        resolve_in_root(root, str(root))
    with pytest.raises(SaveRefusedError, match=r"'\.\.'"):
        resolve_in_root(root, str(root / ".." / "x"))


def test_symlink_escape_is_refused(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "inner").mkdir()
    (root / "inner" / "save").symlink_to(outside / "victim")
    for p in ("link/s", "inner/save", "link"):
        with pytest.raises(SaveRefusedError, match="symbolic link"):
            resolve_in_root(root, p)
    assert list(outside.iterdir()) == []


def test_free_space_check(tmp_path):
    free = check_free_space(tmp_path / "new" / "s", 1, 0)
    assert free > 0
    with pytest.raises(SaveRefusedError, match="not enough disk space"):
        check_free_space(tmp_path / "s", 10, free)
    with pytest.raises(SaveRefusedError, match="save_min_free_mb"):
        check_free_space(tmp_path / "s", 2 * free, 0)


def test_default_root_under_ros_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ROS_HOME", str(tmp_path))
    assert persist.default_save_root() == tmp_path / "chorus_ros" / "maps"
    monkeypatch.delenv("ROS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert persist.default_save_root() == tmp_path / ".ros" / "chorus_ros" / "maps"


# ------------------------------------------------------------------ pipeline save / load
NAMES = ["floor", "chair", "table"]


class _Features:
    """Deterministic features from the Gaussian ids (a stand-in encoder)."""

    def __init__(self, gmap, dim):
        self.map, self.dim = gmap, dim

    def encode_full(self):
        ids = self.map.arrays().ids
        g = torch.Generator().manual_seed(0)
        table = torch.nn.functional.normalize(torch.randn(8, self.dim, generator=g), dim=-1)
        self.map.set_attribute("feat.language", table[(ids // 100) % 3])
        self.map.set_attribute("feat.object", table[(ids // 100) % 8])
        self.map.take_dirty()
        n = len(self.map)
        return types.SimpleNamespace(full=True, updated_slots=torch.arange(n), n_encoded=n)

    update = encode_full


def _pipeline(text):
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    cfg = PipelineConfig(incremental=None)
    cfg.instances.voxel_size = 0.2
    labels = LabelSet(NAMES, torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]]).numpy())
    return PerceptionPipeline(cfg, None, text, labels, incremental_factory=lambda m: _Features(m, text.dim))


def _scene(n=300):
    from chorus_ros.core.gaussians import GaussianArrays
    g = torch.Generator().manual_seed(1)
    means = torch.rand(n, 3, generator=g) * 2
    means[:, 0] += (torch.arange(n) // 100).float() * 3     # three blobs, 100 ids each
    return GaussianArrays(means, torch.rand(n, 1, 3, generator=g), torch.full((n,), 2.0),
                          torch.full((n, 3), -3.0), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.arange(n))


@pytest.fixture(scope="module")
def text():
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    return build_text_encoder(TextEncoderSpec(tiny=True, seed=0))


@pytest.fixture
def saved(text, tmp_path):
    pipe = _pipeline(text)
    pipe.apply_update(_scene(), None, full=True)
    pipe.encode()
    assert len(pipe.objects()) >= 2
    pipe.save(tmp_path / "s", meta={"map_id": "m", "map_sequence": 7})
    return pipe, tmp_path / "s"


def _state(pipe):
    return (len(pipe.map), pipe.map.version, sorted(pipe.instances.codebook.entries),
            pipe.instances.codebook.next_id)


def test_pipeline_roundtrip_with_manifest_meta(saved, text):
    pipe, path = saved
    other = _pipeline(text)
    state = other.load(path)
    assert state.manifest.meta == {"map_id": "m", "map_sequence": 7}
    assert _state(other) == _state(pipe)
    assert [(r.instance_id, r.gaussian_count) for r in other.objects()] == \
           [(r.instance_id, r.gaussian_count) for r in pipe.objects()]
    assert pipe.instances.spacing and other.instances.spacing == pipe.instances.spacing   # support scale kept
    pipe.save(path)                              # replacing our own save works
    verify_save(path, kind="chorus_ros.PerceptionPipeline")


def _craft(path, name, content):
    """Write a crafted file into a save and re-manifest it: the set is consistent, the content
    is hostile (what a tampering client or a buggy writer could produce)."""
    (path / name).write_bytes(content)
    write_manifest(path, "chorus_ros.PerceptionPipeline")


def _map_with_meta(path, edit):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path / "map.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["chorus_map"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    save_file(tensors, str(path / "map.safetensors"), metadata={"chorus_map": json.dumps(meta)})
    write_manifest(path, "chorus_ros.PerceptionPipeline")


@pytest.mark.parametrize("case, match", [
    ("corrupt_codebook", "codebook.safetensors is not a readable safetensors file"),
    ("pipeline_json_object", "pipeline.json: format None"),
    ("pipeline_json_list", "pipeline.json: expected a JSON object, got list"),
    ("map_without_attributes", r"map metadata lacks \['attributes'\]"),
    ("map_version_2_70", r"'version' must be an integer in \[0, 9223372036854775807\]"),
    ("codebook_bad_shapes", "wrong shapes"),
    ("codebook_next_id", "integer 'next_id'"),
    ("labels_not_a_set", "'labels' must be a label set"),
    ("instance_spacing", "'instance_spacing' must be a finite number > 0 or null"),
])
def test_crafted_saves_are_refused_and_the_pipeline_is_unchanged(saved, text, case, match):
    """The five crafted saves of issue 12 (and three more): a clear CheckpointError, nothing
    swapped in (they used to raise KeyError/OverflowError/SafetensorError through the node)."""
    pipe, path = saved
    if case == "corrupt_codebook":
        data = bytearray((path / "codebook.safetensors").read_bytes())
        data[:8] = (10 ** 12).to_bytes(8, "little")
        _craft(path, "codebook.safetensors", bytes(data))
    elif case == "pipeline_json_object":
        _craft(path, "pipeline.json", b"{}")
    elif case == "pipeline_json_list":
        _craft(path, "pipeline.json", b"[]")
    elif case == "map_without_attributes":
        _map_with_meta(path, lambda m: m.pop("attributes"))
    elif case == "map_version_2_70":
        _map_with_meta(path, lambda m: m.update(version=2 ** 70))
    elif case == "codebook_bad_shapes":
        from safetensors.torch import load_file, save_file
        t = load_file(str(path / "codebook.safetensors"))
        t["centroid"] = t["centroid"][:, :2].contiguous()
        save_file(t, str(path / "codebook.safetensors"))
        write_manifest(path, "chorus_ros.PerceptionPipeline")
    else:
        d = json.loads((path / "pipeline.json").read_text())
        if case == "codebook_next_id":
            d["codebook"] = {"next_id": "x"}
        elif case == "instance_spacing":
            d["instance_spacing"] = -1.0
        else:
            d["labels"] = ["floor"]
        _craft(path, "pipeline.json", json.dumps(d).encode())
    target = _pipeline(text)
    target.apply_update(_scene(50), None, full=True)
    target.encode()
    before = _state(target)
    with pytest.raises(CheckpointError, match=match):
        target.load(path)
    assert _state(target) == before


def test_load_refuses_a_mixed_set_from_two_saves(saved, text, tmp_path):
    """Issue 12 finding 4: a kill after map.safetensors was replaced left a new map with the old
    codebook and pipeline.json; that mix used to load silently."""
    pipe, path = saved
    pipe.apply_update(_scene(150), None, full=True)
    pipe.encode()
    pipe.save(tmp_path / "newer")
    shutil.copy(tmp_path / "newer" / "map.safetensors", path / "map.safetensors")
    target = _pipeline(text)
    with pytest.raises(CheckpointError, match="map.safetensors: .* bytes, the manifest says"):
        target.load(path)
    assert len(target.map) == 0


def test_install_restores_the_previous_state_when_rescoring_fails(saved, text, monkeypatch):
    pipe, path = saved
    target = _pipeline(text)
    target.apply_update(_scene(50), None, full=True)
    target.encode()
    before, old_map = _state(target), target.map
    state = target.read_saved(path)
    monkeypatch.setattr(target, "_rescore", lambda slots: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(CheckpointError, match="RuntimeError: boom"):
        target.install(state)
    assert target.map is old_map and _state(target) == before


def test_errors_are_chorus_errors():
    assert issubclass(SaveRefusedError, CheckpointError) and issubclass(SaveRefusedError, InvalidInputError)
