"""The launch file, read statically (``launch`` is not installable here): every executable,
parameter and config path it uses exists, and it uses the same node set as ``chorus-ros up``."""
import ast
import importlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch" / "chorus.launch.py"


def _launch_tree():
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _assigned_str(tree, name):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not assigned in {LAUNCH.name}")


def test_launch_file_imports_the_bringup_description_and_defines_entry_point():
    tree = _launch_tree()
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module == "chorus_ros.ros.bringup" for a in n.names}
    assert {"NODE_SET", "LAUNCH_ARGUMENTS", "node_cli_args", "CONFIG_RELPATH"} <= imported
    bringup = importlib.import_module("chorus_ros.ros.bringup")
    for name in imported:
        assert hasattr(bringup, name), name
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    # the launch file never imports chorus_ros internals beyond the bringup description
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m for m in mods if m.startswith("chorus_ros")} == {"chorus_ros.ros.bringup"}
    pkg = ET.parse(ROOT / "package.xml").getroot().findtext("name")
    assert _assigned_str(tree, "PACKAGE") == pkg == "chorus_ros"


def test_launch_arguments_are_the_documented_ones():
    from chorus_ros.ros.bringup import LAUNCH_ARGUMENTS
    assert set(LAUNCH_ARGUMENTS) == {"namespace", "config", "checkpoint", "device", "use_sim_time",
                                     "log_level"}
    assert all(text for _, text in LAUNCH_ARGUMENTS.values())


def test_every_executable_is_installed_and_importable():
    from chorus_ros.ros.bringup import NODE_SET
    cmake = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"set\(CHORUS_NODES ([^)]*)\)", cmake)
    assert m, "CMakeLists.txt must list the node executables in CHORUS_NODES"
    installed = set(m.group(1).split())
    assert {s.executable for s in NODE_SET} <= installed
    for s in NODE_SET:
        mod = importlib.import_module(s.module)
        assert callable(getattr(mod, "main")) and isinstance(s.node_class(), type)
        # the wrapper CMake writes runs chorus_ros.ros.<executable>:main
        assert s.module == f"chorus_ros.ros.{s.executable}"


def test_config_paths_exist_and_are_installed():
    from chorus_ros.ros.bringup import CONFIG_RELPATH, default_config_path
    assert (ROOT / CONFIG_RELPATH).is_file()
    assert default_config_path() == ROOT / CONFIG_RELPATH
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"foreach\(_dir[^)]*\bconfig\b[^)]*\)", cmake) and "install(DIRECTORY ${_dir}" in cmake
    assert re.search(r"foreach\(_dir[^)]*\blaunch\b[^)]*\)", cmake)
    labels = sorted((ROOT / "config" / "labels").glob("*.yaml"))
    assert labels, "config/labels/*.yaml holds the label sets"
    from chorus_ros.core.labels import LabelSet
    for f in labels:
        assert len(LabelSet.from_yaml(f)) > 0


def _declared(node_name):
    from chorus_ros.ros.bringup import NODE_SET
    spec = next(s for s in NODE_SET if s.name == node_name)
    return importlib.import_module(spec.module).parameter_names() | {"use_sim_time"}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, name))
        else:
            out[name] = v
    return out


def test_every_parameter_in_the_config_file_is_declared_by_its_node():
    from chorus_ros.ros.bringup import CONFIG_RELPATH, NODE_SET
    doc = yaml.safe_load((ROOT / CONFIG_RELPATH).read_text())
    names = {s.name for s in NODE_SET}
    seen = set()
    for key, section in doc.items():
        params = _flatten(section["ros__parameters"])
        if key == "/**":
            targets = names
        else:
            m = re.fullmatch(r"/\*\*/(\w+)", key)
            assert m and m.group(1) in names, f"section {key!r} names no node of the set"
            targets = {m.group(1)}
        for node in targets:
            unknown = sorted(p for p in params if p not in _declared(node) and not p.startswith("qos_overrides."))
            assert not unknown, f"{key}: parameters {unknown} are not declared by {node}"
            seen.add(node)
        for p, v in params.items():   # every referenced file exists
            if isinstance(v, str) and v.endswith((".yaml", ".yml")):
                assert (ROOT / v).is_file() or Path(v).is_file(), f"{key}: {p} = {v!r} does not exist"
    assert seen == names


def test_launch_and_bringup_give_nodes_the_same_ros_args(tmp_path):
    from chorus_ros.ros.bringup import NODE_SET, node_cli_args
    args = node_cli_args(NODE_SET[0], config=tmp_path / "p.yaml", checkpoint="ck", device="cuda",
                         use_sim_time="true", log_level="warn")
    assert args == ["--ros-args", "--params-file", str(tmp_path / "p.yaml"), "-p", "checkpoint:=ck",
                    "-p", "device:=cuda", "-p", "use_sim_time:=true", "--log-level", "warn"]
    # empty launch arguments leave the params file in charge
    plain = node_cli_args(NODE_SET[1], checkpoint="", device="")
    assert not any(a.startswith(("checkpoint:=", "device:=")) for a in plain)
