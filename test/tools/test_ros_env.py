"""isolate_ros_env: loopback discovery, distinct domain ids for concurrent processes, the
inherited id kept in child processes."""
from __future__ import annotations

import os
import subprocess
import sys

from chorus_ros.tools import DOMAIN_ID_RANGE, isolate_ros_env

CHILD = "from chorus_ros.tools import isolate_ros_env; print(isolate_ros_env(), flush=True)"
HOLD = CHILD.replace("flush=True)", "flush=True); import sys; sys.stdin.read()")


def test_sets_loopback_and_a_stable_id():
    env: dict[str, str] = {}
    domain = isolate_ros_env(env)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["ROS_DOMAIN_ID"] == str(domain) and domain in DOMAIN_ID_RANGE and domain != 0
    assert isolate_ros_env({}) == domain  # one id per process
    # conftest already isolated this process
    assert os.environ["ROS_DOMAIN_ID"] == str(domain)


def test_child_keeps_inherited_id():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, env=dict(os.environ))
    assert int(out.stdout) == int(os.environ["ROS_DOMAIN_ID"])


def test_unrelated_processes_get_distinct_ids():
    env = {k: v for k, v in os.environ.items() if k != "CHORUS_ROS_ISOLATED"}
    procs = [subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    try:
        ids = [int(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.communicate("", timeout=60)
    mine = int(os.environ["ROS_DOMAIN_ID"])
    assert len(set(ids + [mine])) == 4, (ids, mine)
