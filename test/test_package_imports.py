"""Import hygiene and import resolution of the chorus_ros package.

* chorus_ros.core (and every submodule found on disk) imports without loading rclpy, any ROS
  message package or chorus_ros.msg/srv/ros. Checked in a fresh subprocess, since this test
  process itself may have imported ROS.
* The package name is served by two folders (the sources, and the rosidl-generated msg/srv in
  the venv or a colcon install/); both halves must import, also from outside the source tree.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# argv[1]: modules to import first (comma separated, '' for none) to prove the check can fail.
IMPORT_CORE = r"""
import fnmatch, importlib, json, pkgutil, sys, traceback
for name in filter(None, sys.argv[1].split(',')):
    importlib.import_module(name)
import chorus_ros.core
names, failed = ['chorus_ros.core'], {}

def walk(package):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):
        names.append(info.name)
        try:
            module = importlib.import_module(info.name)
        except Exception:
            failed[info.name] = traceback.format_exc(limit=3)
            continue
        if info.ispkg:
            walk(module)

walk(chorus_ros.core)

def forbidden(name):
    top = name.split('.')[0]
    return (top == 'rclpy' or fnmatch.fnmatch(top, '*_msgs') or fnmatch.fnmatch(top, '*_srvs')
            or name.split('.')[:2] in (['chorus_ros', 'msg'], ['chorus_ros', 'srv'],
                                       ['chorus_ros', 'ros']))

print(json.dumps({'modules': names, 'failed': failed,
                  'forbidden': sorted(m for m in sys.modules if forbidden(m)),
                  'core_path': list(chorus_ros.core.__path__)}))
"""


def _run(code: str, *args: str, cwd: pathlib.Path, pythonpath: str | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_core_imports_without_ros():
    result = _run(IMPORT_CORE, "", cwd=REPO, pythonpath=str(REPO))
    modules = set(result["modules"])
    # the walk really found the package (these modules are part of the fixed contracts)
    for known in ("chorus_ros.core.errors", "chorus_ros.core.geometry",
                  "chorus_ros.core.gaussians", "chorus_ros.core.map", "chorus_ros.core.render.api"):
        assert known in modules, f"{known} not found; walked: {sorted(modules)}"
    assert result["core_path"] == [str(REPO / "chorus_ros" / "core")]
    assert not result["failed"], "core modules failed to import:\n" + "\n".join(
        f"--- {name}\n{tb}" for name, tb in result["failed"].items())
    assert not result["forbidden"], (
        f"importing chorus_ros.core ({len(modules)} modules) loaded ROS modules: "
        f"{result['forbidden']}")


def test_forbidden_import_is_detected():
    """The check above can fail: a ROS message module loaded first is reported."""
    result = _run(IMPORT_CORE, "std_msgs.msg", cwd=REPO, pythonpath=str(REPO))
    assert "std_msgs" in result["forbidden"]
    assert "rclpy" not in result["forbidden"]


RESOLVE = r"""
import json, chorus_ros, chorus_ros.core, chorus_ros.tools
from chorus_ros.msg import GaussianMapUpdate
from chorus_ros.srv import QueryObjects
import chorus_ros.msg
print(json.dumps({'version': chorus_ros.__version__, 'core': chorus_ros.core.__file__,
                  'tools': chorus_ros.tools.__file__, 'msg': chorus_ros.msg.__file__}))
"""


def _editable_install() -> bool:
    try:
        direct_url = importlib.metadata.distribution("chorus_ros").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False
    return bool(direct_url) and json.loads(direct_url).get("dir_info", {}).get("editable", False)


@pytest.mark.parametrize("where", ["source_tree", "elsewhere"])
def test_sources_and_generated_interfaces_both_resolve(where, tmp_path):
    """From the source tree (sources first on sys.path) and from any other folder (installed
    layout: the venv's chorus_ros plus the editable install, or a colcon install/)."""
    if where == "source_tree":
        result = _run(RESOLVE, cwd=REPO, pythonpath=str(REPO))
    else:
        result = _run(RESOLVE, cwd=tmp_path, pythonpath=None)
    import chorus_ros

    assert result["version"] == chorus_ros.__version__
    generated = pathlib.Path(result["msg"]).parents[1]  # .../chorus_ros/msg/__init__.py
    assert generated != REPO / "chorus_ros", "generated msg/ must not live in the sources"
    assert list(generated.glob("chorus_ros_s__rosidl_typesupport_c*.so")), generated
    if where == "source_tree" or _editable_install():
        assert pathlib.Path(result["core"]).parent == REPO / "chorus_ros" / "core"
        assert pathlib.Path(result["tools"]).parent == REPO / "chorus_ros" / "tools"
