"""ROS 2 layer of chorus_ros: thin rclpy nodes and pure message conversions.

The only subpackage that imports rclpy and ``*_msgs``; :mod:`chorus_ros.core` never imports it.
Node executables (``ros2 run chorus_ros chorus_node`` / ``query_node``) call
``chorus_ros.ros.<node>.main``; each node module documents its topics, services, parameters
and QoS in its docstring.
"""
