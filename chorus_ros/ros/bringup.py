"""The node set of chorus_ros, and a single-process bringup of it.

:data:`NODE_SET` and :data:`LAUNCH_ARGUMENTS` are the one description of what runs:
``launch/chorus.launch.py`` builds its ``launch_ros`` Node actions from them (robots), and
:class:`Bringup` (``chorus-ros up``, the tests and the demo) runs the same nodes with the same
parameters in one process and one multi-threaded executor
(:class:`~chorus_ros.ros.executor.NodeExecutor`), where ``launch`` is not installable.

Parameters come from a ROS 2 params file (``config/chorus.yaml``: a ``/**`` section shared by
both nodes, then ``/**/chorus_node`` and ``/**/query_node``) plus the launch arguments
``checkpoint`` and ``device`` (applied when non-empty) and ``use_sim_time``.

Example::

    with Bringup(config="config/chorus.yaml", checkpoint="checkpoints/demo") as b:
        b.wait_ready()
        ...                     # talk to b.nodes["chorus_node"] over DDS
"""
from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.logging import LoggingSeverity
from rclpy.parameter import Parameter

from chorus_ros.ros.executor import NodeExecutor

__all__ = ["NodeSpec", "NODE_SET", "LAUNCH_ARGUMENTS", "CONFIG_RELPATH", "default_config_path",
           "node_cli_args", "Bringup", "run_nodes"]


@dataclass(frozen=True)
class NodeSpec:
    """One node of the set."""

    name: str
    """Node name (also its key in the params file)."""
    executable: str
    """``ros2 run chorus_ros <executable>`` (installed to lib/chorus_ros by CMakeLists.txt)."""
    module: str
    """Python module holding the node class and ``main``."""
    cls: str
    """Node class name in ``module``."""

    def node_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.cls)


NODE_SET: tuple[NodeSpec, ...] = (
    NodeSpec("chorus_node", "chorus_node", "chorus_ros.ros.chorus_node", "ChorusNode"),
    NodeSpec("query_node", "query_node", "chorus_ros.ros.query_node", "QueryNode"),
)
"""Every node chorus_ros starts, in start order."""

_SEVERITY = {"debug": LoggingSeverity.DEBUG, "info": LoggingSeverity.INFO, "warn": LoggingSeverity.WARN,
             "warning": LoggingSeverity.WARN, "error": LoggingSeverity.ERROR, "fatal": LoggingSeverity.FATAL}

CONFIG_RELPATH = "config/chorus.yaml"
"""Default params file, relative to the package's share directory (or the source tree)."""

LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "namespace": ("", "Namespace of both nodes (e.g. a robot name); '' = none."),
    "config": ("", f"ROS 2 params file; '' = the package's {CONFIG_RELPATH}."),
    "checkpoint": ("", "Checkpoint directory; '' = the value in the params file."),
    "device": ("", "Torch device ('cpu', 'cuda', 'cuda:0'); '' = the value in the params file."),
    "use_sim_time": ("false", "Use /clock (bag replays)."),
    "log_level": ("info", "Log level of both nodes (debug, info, warn, error)."),
}
"""Launch argument -> (default, description), shared by the launch file and ``chorus-ros up``."""


def default_config_path() -> Path:
    """``config/chorus.yaml`` of the source tree, else of the installed package's share dir."""
    src = Path(__file__).resolve().parents[2] / CONFIG_RELPATH
    if src.is_file():
        return src
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("chorus_ros")) / CONFIG_RELPATH
    except Exception:  # not installed as an ament package
        return src


def node_cli_args(spec: NodeSpec, *, config: str | os.PathLike | None = None, checkpoint: str = "",
                  device: str = "", use_sim_time: bool | str = False, log_level: str = "info") -> list[str]:
    """The ``--ros-args`` of one node: params file, overrides, log level (launch uses the same).

    ``checkpoint``/``device`` are ``-p`` rules after the file: they override the file's ``/**``
    section (rcl: the later of two equally specific rules wins) but not a node-specific section,
    so the shipped config keeps both keys in ``/**``."""
    args = ["--ros-args", "--params-file", str(config or default_config_path())]
    if checkpoint:
        args += ["-p", f"checkpoint:={checkpoint}"]
    if device:
        args += ["-p", f"device:={device}"]
    sim = str(use_sim_time).lower() in ("1", "true", "yes")
    args += ["-p", f"use_sim_time:={'true' if sim else 'false'}"]
    if log_level:
        args += ["--log-level", log_level]
    return args


class Bringup:
    """Runs :data:`NODE_SET` in one process, one context and one :class:`NodeExecutor`.

    Args:
        config: params file ('' / None = :func:`default_config_path`).
        checkpoint, device, use_sim_time, log_level, namespace: the launch arguments.
        nodes: names of the nodes to start (default: all of NODE_SET).
        node_kwargs: extra constructor kwargs per node name (tests inject a pipeline).
        parameters: extra ``{node name: {param: value}}`` overrides (beat the params file).
        num_threads: executor threads.
        context: an initialised rclpy Context to use; by default a private one is created.
    """

    def __init__(self, config: str | os.PathLike | None = None, *, checkpoint: str = "", device: str = "",
                 use_sim_time: bool = False, log_level: str = "info", namespace: str = "",
                 nodes: Sequence[str] | None = None, node_kwargs: dict[str, dict] | None = None,
                 parameters: dict[str, dict[str, Any]] | None = None, num_threads: int = 4,
                 context: rclpy.Context | None = None) -> None:
        self._own_context = context is None
        self.context = context or rclpy.Context()
        if self._own_context:
            rclpy.init(context=self.context)
        self.executor = NodeExecutor(num_threads=num_threads, context=self.context)
        self.nodes: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        wanted = list(nodes) if nodes is not None else [s.name for s in NODE_SET]
        unknown = sorted(set(wanted) - {s.name for s in NODE_SET})
        if unknown:
            self.shutdown()
            raise ValueError(f"unknown nodes {unknown}; known: {[s.name for s in NODE_SET]}")
        try:
            for spec in NODE_SET:
                if spec.name not in wanted:
                    continue
                args = node_cli_args(spec, config=config, checkpoint=checkpoint, device=device,
                                     use_sim_time=use_sim_time, log_level=log_level)
                # constructor overrides beat the params file's node-specific sections (-p does not)
                overrides = [Parameter(k, value=v) for k, v in (parameters or {}).get(spec.name, {}).items()]
                node = spec.node_class()(spec.name, namespace=namespace or None, context=self.context,
                                         cli_args=args, parameter_overrides=overrides,
                                         **(node_kwargs or {}).get(spec.name, {}))
                if log_level:  # --log-level in a node's own cli_args does not reach its logger
                    node.get_logger().set_level(_SEVERITY.get(log_level.lower(), LoggingSeverity.INFO))
                self.nodes[spec.name] = node
                self.executor.add_node(node)
        except BaseException:
            self.shutdown()
            raise

    def start(self) -> "Bringup":
        """Spin the executor in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._spin, name="chorus_bringup", daemon=True)
            self._thread.start()
        return self

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except (ExternalShutdownException, rclpy.executors.ShutdownException):
            pass

    def spin(self) -> None:
        """Spin in the calling thread until shutdown (Ctrl-C raises KeyboardInterrupt)."""
        self._spin()

    def shutdown(self) -> None:
        """Destroy the nodes and shut the private context down (idempotent)."""
        for node in list(self.nodes.values()):
            try:
                self.executor.remove_node(node)
            except Exception:
                pass
            node.destroy_node()
        self.nodes.clear()
        self.executor.shutdown(timeout_sec=5.0)
        if self._own_context and self.context.ok():
            rclpy.shutdown(context=self.context)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> "Bringup":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def run_nodes(classes: Sequence[type], args: list[str] | None = None) -> int:
    """``ros2 run`` entry: init, run the node classes in a :class:`NodeExecutor`, shut down."""
    rclpy.init(args=args)
    nodes = []
    try:
        executor = NodeExecutor()
        for cls in classes:
            node = cls()
            nodes.append(node)
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:  # a node failed to start: say why, non-zero exit
        import sys
        print(f"[chorus_ros] fatal: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        for n in nodes:
            n.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
