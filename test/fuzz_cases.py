"""Property-based fuzz targets (hypothesis) shared by the fast tests (test/core/test_fuzz.py,
test/ros/test_fuzz_pointcloud.py) and the long run (benchmarks/bench_fuzz.py).

Each ``check_*`` function takes one generated case and asserts the property; it returns the
outcome ('accepted' or the name of the package exception that refused the input) so the long run
can count them. The property everywhere: a decoder either returns data that satisfy its
contract, or raises one of the package's own exceptions (:class:`ChorusError` subclasses) with a
message -- never anything else (IndexError, struct.error, MemoryError from a huge declared size,
a crash, a hang).

* PointCloud2: random field layouts (names, datatypes, offsets, point_step, byte order flag,
  width/height/row_step, data bytes), some built from real Gaussians and then mutated.
* PLY: valid files written by ``write_ply`` (random Gaussians, three formats) then mutated
  (header lines replaced, bytes flipped, truncated, appended), and fully random headers.
* Saves: a real pipeline save mutated (a file replaced by random bytes or random JSON,
  truncated, the manifest rewritten to match -- a consistent set with hostile content -- or the
  manifest itself fuzzed); ``PerceptionPipeline.read_saved`` must refuse with CheckpointError /
  InvalidInputError, or accept a save that then installs.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from hypothesis import strategies as st

from chorus_ros.core.errors import ChorusError
from chorus_ros.core.gaussians import GaussianArrays

# ------------------------------------------------------------------------------ helpers
_FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)
_SANE = st.floats(min_value=-50.0, max_value=50.0, width=32)


@st.composite
def gaussians(draw, max_n: int = 12, degree: int | None = None, sane: bool = False) -> GaussianArrays:
    """Random Gaussians with unique uint32 ids; ``sane``: finite, moderate values."""
    n = draw(st.integers(0, max_n))
    deg = draw(st.integers(0, 3)) if degree is None else degree
    k = (deg + 1) ** 2
    fl = _SANE if sane else _FLOATS
    vals = draw(st.lists(fl, min_size=n * (14 + 3 * k - 3), max_size=n * (14 + 3 * k - 3)))
    a = torch.tensor(vals, dtype=torch.float32).reshape(n, -1) if n else torch.zeros(0, 11 + 3 * k)
    ids = draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n, unique=True))
    return GaussianArrays(a[:, 0:3].clone(), a[:, 3:3 + 3 * k].reshape(n, k, 3).clone(), a[:, 3 + 3 * k].clone(),
                          a[:, 4 + 3 * k:7 + 3 * k].clone(), a[:, 7 + 3 * k:11 + 3 * k].clone(),
                          torch.tensor(ids, dtype=torch.int64))


def outcome(fn, *args, **kw) -> tuple[str, object]:
    """``('accepted', result)`` or ``(exception class name, None)`` for package exceptions;
    anything else propagates (a bug: the property fails)."""
    try:
        return "accepted", fn(*args, **kw)
    except ChorusError as e:
        assert str(e), f"{type(e).__name__} without a message"
        return type(e).__name__, None


def _finite_params(g: GaussianArrays) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in (g.means, g.sh, g.opacities, g.log_scales, g.quats))


# ---------------------------------------------------------------------------- PointCloud2
_PF = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_NAMES = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
          "rot_0", "rot_1", "rot_2", "rot_3", "id", "f_rest_0", "f_rest_1", "f_rest_2", "label", "",
          "rgb", "r", "g", "b"]   # the last four: plain coloured point clouds (packed PCL rgb, separate channels)


@st.composite
def pointcloud_cases(draw):
    """A PointCloud2 as a plain dict: a valid cloud of random Gaussians with some mutation, a
    plain coloured point cloud (x y z + packed rgb or r g b) with the same mutations, or a random
    layout with random bytes."""
    kind = draw(st.sampled_from(["from_gaussians", "from_gaussians", "plain", "random", "random"]))
    if kind == "plain":
        n = draw(st.integers(0, 8))
        return {"kind": "plain", "xyz": draw(st.lists(_FLOATS, min_size=3 * n, max_size=3 * n)),
                "colour": draw(st.sampled_from(["packed", "u1", "f4"])),
                "rgb": draw(st.lists(st.one_of(st.floats(0.0, 1.0, width=32), _FLOATS), min_size=3 * n,
                                     max_size=3 * n)),
                "ids": draw(st.booleans()), "mutation": draw(st.sampled_from(
                    ["none", "none", "flip_endian", "truncate", "extend", "row_step", "width", "drop_field",
                     "dup_field", "datatype", "offset", "count", "bytes"])), "arg": draw(st.integers(0, 1 << 16)),
                "noise": draw(st.binary(min_size=0, max_size=64))}
    if kind == "from_gaussians":
        g = draw(gaussians(max_n=8))
        return {"kind": "from_gaussians", "g": g, "mutation": draw(st.sampled_from(
            ["none", "flip_endian", "truncate", "extend", "row_step", "width", "drop_field", "dup_field",
             "datatype", "offset", "count", "bytes"])), "arg": draw(st.integers(0, 1 << 16)),
            "noise": draw(st.binary(min_size=0, max_size=64))}
    nf = draw(st.integers(0, 18))
    fields = [(draw(st.sampled_from(_NAMES)), draw(st.integers(0, 80)), draw(st.integers(0, 9)),
               draw(st.sampled_from([1, 1, 1, 0, 2]))) for _ in range(nf)]
    w, h = draw(st.integers(0, 6)), draw(st.integers(0, 3))
    step = draw(st.integers(0, 96))
    row = draw(st.sampled_from([w * step, w * step + 1, 0, step]))
    size = draw(st.sampled_from([w * h * step, w * h * step - 1, w * h * step + 3, 0]))
    data = draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
    return {"kind": "random", "fields": fields, "w": w, "h": h, "step": step, "row": row, "data": data,
            "big": draw(st.booleans())}


def build_cloud(case):
    """The sensor_msgs/PointCloud2 of a :func:`pointcloud_cases` case."""
    import array

    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    from chorus_ros.ros.pointcloud import gaussians_to_pointcloud2
    if case["kind"] == "plain":
        return _mutate(_plain_msg(case), case)
    if case["kind"] == "random":
        msg = PointCloud2(height=case["h"], width=case["w"], point_step=case["step"], row_step=case["row"],
                          is_bigendian=case["big"])
        msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in case["fields"]]
        msg.data = array.array("B", case["data"])
        return msg
    g = case["g"]
    return _mutate(gaussians_to_pointcloud2(g, Header()) if g.ids is not None else PointCloud2(), case)


def _plain_msg(case):
    """The unmutated plain cloud of a 'plain' case: FLOAT32 x y z, then packed FLOAT32 ``rgb``
    (0x00RRGGBB) or UINT8 / FLOAT32 ``r g b``, then UINT32 ``id`` 0..N-1 when ``ids``."""
    import array

    import numpy as np
    from sensor_msgs.msg import PointCloud2, PointField
    n = len(case["xyz"]) // 3
    xyz = np.asarray(case["xyz"], np.float32).reshape(n, 3)
    rgb = np.asarray(case["rgb"], np.float32).reshape(n, 3)
    c8 = np.nan_to_num(np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    cols = [("x", "<f4", xyz[:, 0]), ("y", "<f4", xyz[:, 1]), ("z", "<f4", xyz[:, 2])]
    if case["colour"] == "packed":
        v = (c8[:, 0].astype(np.uint32) << 16) | (c8[:, 1].astype(np.uint32) << 8) | c8[:, 2]
        cols.append(("rgb", "<f4", v.astype("<u4").view("<f4")))
    else:
        cols += [(nm, "<" + case["colour"], c8[:, j] if case["colour"] == "u1" else rgb[:, j])
                 for j, nm in enumerate("rgb")]
    if case["ids"]:
        cols.append(("id", "<u4", np.arange(n, dtype=np.uint32)))
    dt = np.dtype([(nm, code) for nm, code, _ in cols])
    table = np.empty(n, dtype=dt)
    for nm, _, a in cols:
        table[nm] = a
    pf = {"<f4": PointField.FLOAT32, "<u1": PointField.UINT8, "<u4": PointField.UINT32}
    msg = PointCloud2(height=1, width=n, point_step=dt.itemsize, row_step=n * dt.itemsize, is_bigendian=False)
    msg.fields = [PointField(name=nm, offset=dt.fields[nm][1], datatype=pf[code], count=1) for nm, code, _ in cols]
    msg.data = array.array("B", table.tobytes())
    return msg


def _mutate(msg, case):
    """``msg`` with the case's mutation applied."""
    import array
    m, arg = case["mutation"], case["arg"]
    data = bytearray(bytes(msg.data))
    if m == "flip_endian":
        msg.is_bigendian = not msg.is_bigendian
    elif m == "truncate" and data:
        data = data[: arg % len(data)]
    elif m == "extend":
        data += case["noise"] or b"\0"
    elif m == "row_step":
        msg.row_step = arg
    elif m == "width":
        msg.width = arg % 64
    elif m == "drop_field" and msg.fields:
        msg.fields = [f for i, f in enumerate(msg.fields) if i != arg % len(msg.fields)]
    elif m == "dup_field" and msg.fields:
        msg.fields = list(msg.fields) + [msg.fields[arg % len(msg.fields)]]
    elif m in ("datatype", "offset", "count") and msg.fields:
        f = msg.fields[arg % len(msg.fields)]
        if m == "datatype":
            f.datatype = (arg >> 4) % 10
        elif m == "offset":
            f.offset = (arg >> 4) % 300
        else:
            f.count = (arg >> 4) % 3
    elif m == "bytes" and data:
        for i, b in enumerate(case["noise"]):
            data[(arg + 7 * i) % len(data)] = b
    msg.data = array.array("B", bytes(data))
    return msg


def check_pointcloud(case) -> str:
    """Decoding returns finite, plausible Gaussians with unique ids, one per point, or raises a
    package exception; an unmutated cloud of finite, plausible Gaussians round-trips exactly; an
    unmutated plain cloud is accepted exactly when its positions are finite and plausible and its
    float colours in [0, 1], and then keeps its positions and colours."""
    from chorus_ros.ros.pointcloud import implausible_values, pointcloud2_to_gaussians
    msg = build_cloud(case)
    res, g = outcome(pointcloud2_to_gaussians, msg)
    if res == "accepted":
        assert len(g) == int(msg.width) * int(msg.height)
        assert _finite_params(g) and g.ids is not None and g.ids.dtype == torch.int64
        from chorus_ros.core.ply import gaussians_to_structured
        assert implausible_values(gaussians_to_structured(g, write_normals=False, write_ids=False)) == {}
    if case["kind"] == "plain" and case["mutation"] == "none":
        import numpy as np
        xyz = torch.tensor(case["xyz"], dtype=torch.float32).reshape(-1, 3)
        rgb = torch.tensor(case["rgb"], dtype=torch.float32).reshape(-1, 3)
        with np.errstate(over="ignore", invalid="ignore"):
            a = xyz.abs().double()
            clean = bool(torch.isfinite(xyz).all()) and not bool((((a > 0) & (a < 1e-30)) | (a > 1e15)).any())
        if case["colour"] == "f4":
            clean = clean and bool((torch.isfinite(rgb) & (rgb >= 0) & (rgb <= 1)).all())
        assert (res == "accepted") == clean, (res, clean)
        if clean:
            assert torch.equal(g.means, xyz)
            # 8-bit colours were written as _plain_msg writes them: NaN became 0
            want = rgb if case["colour"] == "f4" else torch.round(torch.nan_to_num(rgb.clamp(0, 1) * 255)) / 255
            assert torch.allclose(g.base_rgb, want, atol=1e-6)
    if case["kind"] == "from_gaussians" and case["mutation"] == "none":
        src = case["g"]
        from chorus_ros.core.ply import gaussians_to_structured
        clean = _finite_params(src) and not implausible_values(
            gaussians_to_structured(src, write_normals=False, write_ids=False))
        assert (res == "accepted") == clean, (res, clean)
        if clean:
            for f in ("means", "sh", "opacities", "log_scales", "quats", "ids"):
                assert torch.equal(getattr(g, f), getattr(src, f)), f
    return res


# ------------------------------------------------------------------------------------ PLY
_HEADER_LINES = ["format ascii 1.0", "format binary_big_endian 1.0", "format binary_little_endian 2.0",
                 "element vertex -1", "element vertex 99999999999", "element face 3", "property float x",
                 "property list uchar int vertex_indices", "property double id", "property uint id",
                 "property float x", "property foo y", "comment hi", "end_header", "", "element vertex 1"]


@st.composite
def ply_cases(draw):
    g = draw(gaussians(max_n=6))
    return {"g": g, "format": draw(st.sampled_from(["binary_little_endian", "binary_big_endian", "ascii"])),
            "mutation": draw(st.sampled_from(["none", "header_line", "truncate", "append", "bytes", "random"])),
            "arg": draw(st.integers(0, 1 << 16)), "line": draw(st.sampled_from(_HEADER_LINES)),
            "noise": draw(st.binary(min_size=1, max_size=64)),
            "plain": draw(st.sampled_from([None, None, "uchar", "float"]))}   # a plain point cloud PLY


def build_ply(case, path: Path) -> bytes:
    from chorus_ros.core.ply import write_ply, write_point_cloud_ply
    g, arg = case["g"], case["arg"]
    if case["mutation"] == "random":
        data = b"ply\n" + case["noise"] + b"\nend_header\n" + case["noise"][::-1]
        path.write_bytes(data)
        return data
    if case.get("plain"):
        rgb = torch.nan_to_num(g.base_rgb, nan=0.5).clamp(0.0, 1.0)
        write_point_cloud_ply(path, g.means, rgb, colour_type=case["plain"], format=case["format"])
    else:
        write_ply(path, g, format=case["format"])
    data = bytearray(path.read_bytes())
    m = case["mutation"]
    if m == "header_line":
        end = data.find(b"end_header")
        lines = bytes(data[:end]).split(b"\n")
        i = 1 + arg % max(len(lines) - 1, 1)
        lines[min(i, len(lines) - 1)] = case["line"].encode()
        data = bytearray(b"\n".join(lines)) + data[end:]
    elif m == "truncate":
        data = data[: arg % max(len(data), 1)]
    elif m == "append":
        data += case["noise"]
    elif m == "bytes":
        for i, b in enumerate(case["noise"]):
            data[(arg + 13 * i) % len(data)] = b
    path.write_bytes(bytes(data))
    return bytes(data)


def check_ply(case) -> str:
    """``read_ply`` returns sanitised Gaussians (finite) or raises a package exception; an
    unmutated file of Gaussians round-trips (raw values, ``sanitize=False``); an unmutated plain
    point cloud keeps its positions (ids 0..N-1)."""
    from chorus_ros.core.ply import read_ply
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.ply"
        build_ply(case, p)
        res, r = outcome(read_ply, p)
        if res == "accepted":
            assert _finite_params(r.gaussians)
        if case["mutation"] == "none" and case.get("plain"):
            raw = read_ply(p, sanitize=False)
            assert raw.layout == "pointcloud" and len(raw.gaussians) == len(case["g"])
            a, b = raw.gaussians.means, case["g"].means
            assert torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0))
            assert torch.equal(raw.gaussians.ids, torch.arange(len(b)))
        elif case["mutation"] == "none":
            raw = read_ply(p, sanitize=False).gaussians
            src = case["g"]
            assert len(raw) == len(src)
            for f in ("means", "opacities", "log_scales", "quats"):
                a, b = getattr(raw, f), getattr(src, f)
                assert torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0)), f
            assert torch.equal(raw.ids, src.ids)
    return res


# ----------------------------------------------------------------------------------- saves
@st.composite
def json_values(draw, depth: int = 2):
    base = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                     st.text(max_size=8))
    if depth <= 0:
        return draw(base)
    return draw(st.one_of(base, st.lists(json_values(depth - 1), max_size=3),
                          st.dictionaries(st.sampled_from(["format", "version", "labels", "codebook", "files",
                                                           "kind", "meta", "names", "colors", "n", "attributes",
                                                           "x", "size", "sha256", "next_id"]),
                                          json_values(depth - 1), max_size=4)))


@st.composite
def save_cases(draw):
    return {"file": draw(st.sampled_from(["map.safetensors", "codebook.safetensors", "pipeline.json",
                                          "manifest.json", "extra.bin"])),
            "mutation": draw(st.sampled_from(["json", "bytes", "truncate", "flip", "json_field", "delete"])),
            "remanifest": draw(st.booleans()), "json": draw(json_values()),
            "noise": draw(st.binary(min_size=0, max_size=96)), "arg": draw(st.integers(0, 1 << 20)),
            "key": draw(st.sampled_from(["format", "version", "labels", "codebook", "files", "kind", "meta",
                                         "instance_voxel_size", "n", "attributes"]))}


class SaveFixture:
    """A real pipeline save (made once) and a factory of fresh pipelines to load it into."""

    def __init__(self, make_pipeline, scene: GaussianArrays) -> None:
        self.make_pipeline = make_pipeline
        self.root = Path(tempfile.mkdtemp(prefix="chorus_fuzz_"))
        pipe = make_pipeline()
        pipe.apply_update(scene, None, full=True)
        pipe.encode()
        pipe.save(self.root / "good", meta={"map_id": "m", "map_sequence": 3})
        self.reader = make_pipeline()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def mutate_save(case, folder: Path) -> None:
    from chorus_ros.core.persist import write_manifest
    p = folder / case["file"]
    m = case["mutation"]
    if m == "delete":
        if p.exists():
            p.unlink()
    elif m == "json":
        p.write_text(json.dumps(case["json"]))
    elif m == "json_field" and p.suffix == ".json" and p.exists():
        try:
            d = json.loads(p.read_text())
        except ValueError:
            d = {}
        if isinstance(d, dict):
            d[case["key"]] = case["json"]
        p.write_text(json.dumps(d))
    elif m == "bytes":
        p.write_bytes(case["noise"])
    elif m == "truncate" and p.exists():
        data = p.read_bytes()
        p.write_bytes(data[: case["arg"] % max(len(data), 1)])
    elif m == "flip" and p.exists():
        data = bytearray(p.read_bytes())
        if data:
            for i, b in enumerate(case["noise"][:8] or b"\xff"):
                data[(case["arg"] + 97 * i) % len(data)] ^= b or 1
        p.write_bytes(bytes(data))
    if case["remanifest"] and case["file"] != "manifest.json":
        write_manifest(folder, "chorus_ros.PerceptionPipeline")


def check_save(case, fx: SaveFixture) -> str:
    """``read_saved`` of a mutated save refuses it with a package exception (naming a file) or
    returns a state that installs into a pipeline; the reader pipeline is never changed."""
    work = fx.root / "work"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(fx.root / "good", work)
    mutate_save(case, work)
    before = (len(fx.reader.map), fx.reader.map.version)
    res, state = outcome(fx.reader.read_saved, work)
    assert (len(fx.reader.map), fx.reader.map.version) == before
    if res == "accepted":
        target = fx.make_pipeline()
        target.install(state)
        assert len(target.map) == len(state.map)
    return res
