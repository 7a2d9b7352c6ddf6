#!/usr/bin/env python3
"""Build chorus_ros with colcon as a robot would, then import it from the colcon install/.

Used by ``make colcon-check`` (CI) and ``test/test_colcon_build.py`` (``CHORUS_COLCON_TEST=1``).
Run it with the venv's python (it holds colcon and the ROS 2 wheels' ament prefix)::

    .venv/bin/python scripts/colcon_check.py --work-dir build/colcon

Steps, all inside ``--work-dir`` (its src/, build/, install/ and log/ are wiped first):

1. ``src/chorus_ros`` is a symlink to the repository, so colcon's only base path holds this one
   package (colcon stops descending at a package, so .venv/ and build/ are never crawled).
2. ``colcon build`` against the wheel prefix (``AMENT_PREFIX_PATH``/``CMAKE_PREFIX_PATH`` = the
   prefix holding ``ament_package``), build/install/log dirs in the work dir.
3. A child python sources ``install/setup.sh`` and checks that ``chorus_ros``, its generated
   ``msg``/``srv`` and the hand-written ``core``/``ros``/``tools`` all come from install/, that
   the installed ``__init__.py`` is ours (not rosidl's empty one), that a message round-trips
   through rclpy serialization using install/'s C libraries, and that the node wrappers,
   package.xml and ament index entry are in place.

Exit status 0 when everything holds; otherwise the failing step's output and a non-zero status.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Runs in the child, after `. install/setup.sh`; argv[1] = install dir, argv[2] = repo.
CHECK = r"""
import importlib, os, pathlib, sys
install, repo = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2])
failures = []

def check(ok, what):
    print(('ok   ' if ok else 'FAIL ') + what)
    if not ok:
        failures.append(what)

def under_install(module):
    f = pathlib.Path(module.__file__).resolve()
    check(install in f.parents, f'{module.__name__} from install/ ({f})')

import chorus_ros
under_install(chorus_ros)
check(hasattr(chorus_ros, '__version__'),
      "installed chorus_ros/__init__.py is the package's own (has __version__), not rosidl's")
for sub in ('msg', 'srv', 'core', 'ros', 'tools'):
    under_install(importlib.import_module('chorus_ros.' + sub))

import chorus_ros.msg as msg, chorus_ros.srv as srv
for folder, mod in (('msg', msg), ('srv', srv)):
    for f in sorted((repo / folder).glob('*.' + folder)):
        check(hasattr(mod, f.stem), f'chorus_ros.{folder}.{f.stem} exists')

from rclpy.serialization import deserialize_message, serialize_message
m = msg.GaussianMapUpdate(map_id='m', sequence=7, update_type=msg.GaussianMapUpdate.UPDATE_DELTA,
                          removed_ids=[3, 4000000000])
back = deserialize_message(serialize_message(m), msg.GaussianMapUpdate)
check(back == m, 'GaussianMapUpdate round-trips through rclpy serialization')
libs = sorted({line.split()[-1] for line in open('/proc/self/maps') if 'libchorus_ros' in line})
check(bool(libs) and all(install in pathlib.Path(p).resolve().parents for p in libs),
      f'libchorus_ros*.so loaded from install/ ({libs})')

prefix = install / 'chorus_ros'
for node in ('chorus_node', 'query_node'):
    p = prefix / 'lib' / 'chorus_ros' / node
    check(p.is_file() and os.access(p, os.X_OK), f'node wrapper {p.relative_to(install)}')
check((prefix / 'share' / 'chorus_ros' / 'package.xml').is_file(), 'share/chorus_ros/package.xml')
marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'chorus_ros'
check(marker.is_file() and marker.read_bytes() == (repo / 'resource' / 'chorus_ros').read_bytes(),
      'ament resource marker installed from resource/chorus_ros')
from ament_index_python.packages import get_package_prefix
check(pathlib.Path(get_package_prefix('chorus_ros')).resolve() == prefix,
      'ament index finds chorus_ros in install/')
sys.exit(1 if failures else 0)
"""


def wheel_prefix() -> pathlib.Path:
    """The ament prefix the ROS 2 wheels installed (the venv), found from ament_package."""
    import ament_package

    return pathlib.Path(ament_package.__file__).resolve().parents[4]


def run(cmd: list[str], **kw) -> None:
    shown = [a if len(a) < 200 else "<script>" for a in cmd]
    print("+", " ".join(shown), flush=True)
    subprocess.run(cmd, check=True, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", type=pathlib.Path, default=REPO / "build" / "colcon",
                    help="scratch folder for src/, build/, install/, log/ (those are wiped first)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                    help="parallel jobs for the CMake build")
    args = ap.parse_args(argv)

    work = args.work_dir.resolve()
    if work == REPO or work in REPO.parents:
        ap.error(f"--work-dir {work} must not be the repository or one of its parents")
    for sub in ("src", "build", "install", "log"):  # only what this script creates
        p = work / sub
        if p.is_symlink() or p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    (work / "src" / "chorus_ros").symlink_to(REPO, target_is_directory=True)

    prefix = str(wheel_prefix())
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLCON_PREFIX_PATH", "PYTHONPATH", "AMENT_CURRENT_PREFIX")}
    env.update(AMENT_PREFIX_PATH=prefix, CMAKE_PREFIX_PATH=prefix,
               MAKEFLAGS=f"-j{args.jobs}")
    colcon = str(pathlib.Path(sys.executable).parent / "colcon")
    run([colcon, "--log-base", "log", "build", "--base-paths", "src",
         "--build-base", "build", "--install-base", "install",
         "--event-handlers", "console_cohesion+", "summary+",
         "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=work, env=env)

    # The venv's bootstrapper would put its own lib dirs on LD_LIBRARY_PATH in arbitrary (set)
    # order, possibly ahead of install/'s, where a dev install left same-named libraries. Do its
    # job here instead, install/ first, and mark it done.
    import ros_wheels_bootstrapper

    saved = os.environ.pop("LD_LIBRARY_PATH", None)
    venv_ld = ros_wheels_bootstrapper.get_ros_paths()
    if saved is not None:
        os.environ["LD_LIBRARY_PATH"] = saved
    child_env = {k: v for k, v in env.items() if k not in ("LD_LIBRARY_PATH", "MAKEFLAGS")}
    child_env.update(AMENT_PREFIX_PATH=prefix, VENV_LD=venv_ld, _ROS_WHEELS_BOOTSTRAP_COMPLETE="1")
    script = ('. install/setup.sh && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$VENV_LD"'
              ' && cd / && exec "$0" -c "$1" "$2" "$3"')
    try:
        run(["bash", "-c", script, sys.executable, CHECK, str(work / "install"), str(REPO)],
            cwd=work, env=child_env)
    except subprocess.CalledProcessError:
        print("colcon-check: the colcon install/ failed the import checks above", file=sys.stderr)
        return 1
    print(f"colcon-check: ok ({work / 'install'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
