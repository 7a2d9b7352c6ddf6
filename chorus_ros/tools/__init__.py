"""Small command-line tools (``chorus-ros``, ``chorus-train``, ``chorus-eval``, ``chorus-demo``,
``chorus-bench``) and what they share.

:func:`isolate_ros_env` keeps DDS traffic of tests, demos and benchmarks on loopback and gives
each run its own ROS domain. Call it before ``rclpy.init()``.
"""
from __future__ import annotations

import os
import tempfile

__all__ = ["isolate_ros_env", "DOMAIN_ID_RANGE"]

DOMAIN_ID_RANGE = range(1, 102)
"""Domain ids handed out by :func:`isolate_ros_env` (0, the ROS default, is avoided)."""

_held_lock = None  # open file whose flock reserves this process's domain id
_held_id: int | None = None


def _try_reserve(domain_id: int):
    """Exclusively flock a per-domain lock file; the open file, or None if the id is taken."""
    import fcntl

    path = os.path.join(tempfile.gettempdir(), f"chorus_ros_domain_{domain_id}.lock")
    try:
        f = open(path, "a")  # noqa: SIM115 (kept open: the lock lives as long as the file)
    except OSError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def isolate_ros_env(env: dict[str, str] | None = None) -> int:
    """Restrict DDS discovery to localhost and pick a ROS domain id unused by other runs.

    Sets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (``ROS_LOCALHOST_ONLY`` is ignored by
    Kilted) and ``ROS_DOMAIN_ID`` in ``env`` (default ``os.environ``; child processes inherit
    it). The id is derived from the process id and reserved with an advisory lock file in the
    temp dir for as long as this process lives, so concurrent test runs, demos and benchmarks
    on one machine get distinct ids (if every id in :data:`DOMAIN_ID_RANGE` is taken, the
    pid-derived id is used unreserved). A child process of a process that called this keeps
    the inherited id (marked by ``CHORUS_ROS_ISOLATED``), so parent and child can talk; calling
    it again in one process returns the same id. Returns the domain id.
    """
    global _held_lock, _held_id
    env = os.environ if env is None else env
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    inherited = env.get("ROS_DOMAIN_ID")
    if _held_id is not None:
        domain_id = _held_id
    elif inherited is not None and env.get("CHORUS_ROS_ISOLATED") == inherited:
        domain_id = int(inherited)
    else:
        n = len(DOMAIN_ID_RANGE)
        start = os.getpid() % n
        domain_id = DOMAIN_ID_RANGE[start]
        try:
            for k in range(n):
                candidate = DOMAIN_ID_RANGE[(start + k) % n]
                lock = _try_reserve(candidate)
                if lock is not None:
                    _held_lock, domain_id = lock, candidate
                    break
        except ImportError:  # no fcntl (not POSIX): use the pid-derived id unreserved
            pass
        _held_id = domain_id
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["CHORUS_ROS_ISOLATED"] = str(domain_id)
    return domain_id
