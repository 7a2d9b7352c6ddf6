"""Launch chorus_ros: the perception node (chorus_node) and the query node (query_node).

    ros2 launch chorus_ros chorus.launch.py namespace:=robot1 checkpoint:=/path/to/ckpt \
        device:=cuda use_sim_time:=true log_level:=info config:=/path/to/params.yaml

The node set, the launch arguments and the per-node ``--ros-args`` come from
``chorus_ros.ros.bringup`` (NODE_SET, LAUNCH_ARGUMENTS, node_cli_args): the single-process
bringup ``chorus-ros up`` starts exactly the same nodes with exactly the same parameters.
Defaults: parameters from this package's config/chorus.yaml; ``checkpoint`` and ``device`` are
applied only when non-empty (otherwise the params file decides).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from chorus_ros.ros.bringup import CONFIG_RELPATH, LAUNCH_ARGUMENTS, NODE_SET, node_cli_args

PACKAGE = "chorus_ros"


def _nodes(context, *args, **kwargs):
    arg = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    config = arg["config"] or os.path.join(get_package_share_directory(PACKAGE), CONFIG_RELPATH)
    nodes = []
    for spec in NODE_SET:
        ros_args = node_cli_args(spec, config=config, checkpoint=arg["checkpoint"],
                                 device=arg["device"], use_sim_time=arg["use_sim_time"],
                                 log_level=arg["log_level"])
        nodes.append(Node(package=PACKAGE, executable=spec.executable, name=spec.name,
                          namespace=arg["namespace"], ros_arguments=ros_args[1:],  # drop '--ros-args'
                          output="screen", emulate_tty=True))
    return nodes


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, (default, text) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
