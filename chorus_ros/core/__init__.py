"""Pure torch/numpy core of chorus_ros. Never imports rclpy or any ``*_msgs`` module
(``test/core/test_no_ros_imports.py`` proves it). Heavy optional backends (gsplat, spconv,
open_clip) are imported lazily inside the functions that need them."""
